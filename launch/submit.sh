#!/usr/bin/env bash
# Validate a job's inputs on the login node, then hand it to sbatch: a typo in a config or data
# path fails here in seconds instead of after the job has waited in the queue for its nodes.
#
#   launch/submit.sh [--check] [SBATCH_OPTIONS...] launch/slurm/NAME.sbatch [SCRIPT_ARGS...]
#
#   --check          validate and print the resolved command, do not submit
#   SBATCH_OPTIONS   passed to sbatch (use the --opt=value form), e.g. --nodes=4 --gpus-per-node=8
#   SCRIPT_ARGS      the script's arguments (for train*.sbatch: --config FILE [key=value ...])
#
# The first argument ending in `.sbatch` is the script. Validation runs the script itself with
# --check (launch/check_inputs.py under it), in this shell's environment, which sbatch then
# exports to the job (CONFIG, ENGINE, ZERO_STAGE, NPROC_PER_NODE, ... keep their meaning).
# SBATCH=/path/to/sbatch overrides the sbatch command.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DTR_SCALE_ROOT="${DTR_SCALE_ROOT:-$(cd "$here/.." && pwd)}"

check_only=0
sbatch_opts=()
script=""
while (( $# )); do
    case "$1" in
        --check) check_only=1; shift ;;
        *.sbatch) script="$1"; shift; break ;;
        *) sbatch_opts+=("$1"); shift ;;
    esac
done
if [[ -z "$script" ]]; then
    echo "usage: launch/submit.sh [--check] [SBATCH_OPTIONS...] launch/slurm/NAME.sbatch [ARGS...]" >&2
    echo "error: no .sbatch script named; scripts: $(cd "$DTR_SCALE_ROOT" && ls launch/slurm/*.sbatch | tr '\n' ' ')" >&2
    exit 2
fi
[[ -f "$script" ]] || { echo "error: batch script $script not found" >&2; exit 2; }

echo "[submit] validating: $script $*"
if ! bash "$script" --check "$@"; then
    echo "[submit] error: input check failed (see above); the job was NOT submitted" >&2
    exit 2
fi
if (( check_only )); then
    echo "[submit] --check: inputs are valid; not submitting"
    exit 0
fi

sbatch_cmd=("${SBATCH:-sbatch}" "${sbatch_opts[@]}" "$script" "$@")
printf -v shown '%q ' "${sbatch_cmd[@]}"
echo "[submit] ${shown% }"
exec "${sbatch_cmd[@]}"
