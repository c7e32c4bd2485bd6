#!/usr/bin/env bash
# N processes on this machine (CPU or GPUs) for any dtr_scale verb.
#
#   launch/local.sh [--check] NPROC VERB [ARGS...]
#
#   VERB = train | prep | sample | evaluate | export
#          -> torchrun --standalone --nproc_per_node=NPROC -m dtr_scale.VERB ARGS
#             (NPROC=1: plain `python -m dtr_scale.VERB ARGS`)
#   VERB = deepspeed-train
#          -> the deepspeed launcher on localhost (hostfile `localhost slots=NPROC`, --no_ssh)
#             running dtr_scale.train ARGS parallel.engine=deepspeed
#   --check  validate the inputs and print the command, run nothing
#
# e.g. launch/local.sh 2 train --config configs/digits-tiny.yaml parallel.engine=ddp
#      launch/local.sh 2 deepspeed-train --config configs/digits-tiny.yaml parallel.zero_stage=2
#
# Inputs are validated first (launch/check_inputs.py). On GPUs use NPROC = number of GPUs.
# `kill -USR1 <pid of this script>` (or -TERM) makes a training run checkpoint and stop with exit
# code 75, on every path (launch/slurm/torchrun.py passes the workers' code on); rerunning the
# same command resumes.
# Environment: PYTHON (interpreter), MASTER_PORT (deepspeed-train; default: a free port).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DTR_SCALE_ROOT="${DTR_SCALE_ROOT:-$(cd "$here/.." && pwd)}"
export PYTHONPATH="$DTR_SCALE_ROOT${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck source=slurm/lib.sh
source "$DTR_SCALE_ROOT/launch/slurm/lib.sh"

check_only=0
if [[ "${1:-}" == "--check" ]]; then check_only=1; shift; fi
if (( $# < 2 )); then
    echo "usage: launch/local.sh [--check] NPROC train|deepspeed-train|prep|sample|evaluate|export [ARGS...]" >&2
    exit 2
fi
nproc="$1" verb="$2"
shift 2
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || dtr_die "NPROC must be a positive integer, got '$nproc'"
PY="$(dtr_python)"

case "$verb" in
    train|prep|sample|evaluate|export)
        args=("$@")
        if [[ "$verb" == train ]]; then dtr_check train "$nproc" -- "${args[@]}"
        else dtr_check "$verb" "" -- "${args[@]}"; fi
        if (( nproc == 1 )); then
            cmd=("$PY" -m "dtr_scale.$verb" "${args[@]}")
        else
            cmd=("$PY" "$DTR_SCALE_ROOT/launch/slurm/torchrun.py" --standalone "--nproc_per_node=$nproc" -m "dtr_scale.$verb" "${args[@]}")
        fi
        ;;
    deepspeed-train)
        args=("$@" "parallel.engine=deepspeed")
        dtr_check train "$nproc" -- "${args[@]}"
        port="${MASTER_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
        # node_run.sh writes the hostfile and fills in {HOSTFILE}.
        export DTR_HOSTFILE_HOSTS=localhost DTR_HOSTFILE_SLOTS="$nproc"
        cmd=("$PY" "$DTR_SCALE_ROOT/launch/slurm/deepspeed_launcher.py" --hostfile "{HOSTFILE}" --no_ssh --node_rank=0
             --master_addr=127.0.0.1 "--master_port=$port" --module dtr_scale.train "${args[@]}")
        ;;
    *) dtr_die "unknown verb '$verb': use train, deepspeed-train, prep, sample, evaluate or export" ;;
esac

dtr_log "$nproc local process(es): dtr_scale.${verb#deepspeed-}"
dtr_show_cmd "${cmd[@]}"
(( check_only )) && exit 0
# node_run.sh: the same signal relay as on a cluster node (USR1/TERM -> checkpoint and stop).
exec bash "$DTR_SCALE_ROOT/launch/slurm/node_run.sh" "${cmd[@]}"
