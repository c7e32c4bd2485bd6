#!/usr/bin/env bash
# Per-node wrapper: srun starts one of these per node; it runs the launcher (torchrun or the
# deepspeed launcher) and makes preemption signals reach the training processes.
#
#   node_run.sh COMMAND [ARGS...]
#
# - `{SLURM_NODEID}` in ARGS becomes this node's index (deepspeed --node_rank needs it per node).
# - With DTR_HOSTFILE_HOSTS="h1 h2 ..." and DTR_HOSTFILE_SLOTS=N it writes an MPI-style hostfile
#   (`h1 slots=N`) on this node's local disk and replaces `{HOSTFILE}` in ARGS with its path, so
#   the deepspeed launcher needs no shared filesystem for it.
# - The launcher starts with SIGTERM and SIGUSR1 blocked (launch/slurm/blocked_exec.py; the mask
#   is inherited across exec and fork), so neither its default action nor its own handler runs:
#   torchrun would forward a TERM and SIGKILL its workers 30 s later, the deepspeed launcher kills
#   them at once and exits 1. torchrun is also told not to handle SIGTERM (PET_SIGNALS_TO_HANDLE,
#   the variable torch reads; launch/slurm/torchrun.py sets the same default). The training
#   processes install their handlers and unblock the signals (dtr_scale/preemption.py).
# - On USR1/TERM this wrapper sends USR1 once to every descendant of the launcher that catches or
#   blocks USR1 (/proc/PID/status), and looks again every RELAY_INTERVAL seconds (default 2) for
#   processes started since, until the launcher exits. A process that is exiting has its handler
#   reset to the default action and is never signalled twice, so the relay cannot kill it.
# Exits with the launcher's exit code.
set -euo pipefail

node_id="${SLURM_NODEID:-0}"
hostfile=""
if [[ -n "${DTR_HOSTFILE_HOSTS:-}" ]]; then
    hostfile="${TMPDIR:-/tmp}/dtr_scale-hostfile-${SLURM_JOB_ID:-local}-${node_id}-$$"
    tmp="$hostfile.tmp"
    for h in $DTR_HOSTFILE_HOSTS; do printf '%s slots=%s\n' "$h" "${DTR_HOSTFILE_SLOTS:-1}"; done >"$tmp"
    mv -f "$tmp" "$hostfile"
fi
cleanup() {
    [[ -n "$hostfile" ]] && rm -f "$hostfile"
    if [[ -n "${relay_pid:-}" ]]; then  # the relay loop and its sleep
        local kids
        kids=$(pgrep -P "$relay_pid" 2>/dev/null || true)
        kill "$relay_pid" 2>/dev/null || true
        # shellcheck disable=SC2086 # word splitting intended: a list of pids
        [[ -n "$kids" ]] && kill $kids 2>/dev/null
    fi
    true
}
trap cleanup EXIT

cmd=()
for arg in "$@"; do
    arg="${arg//\{SLURM_NODEID\}/$node_id}"
    [[ -n "$hostfile" ]] && arg="${arg//\{HOSTFILE\}/$hostfile}"
    cmd+=("$arg")
done
[[ ${#cmd[@]} -gt 0 ]] || { echo "node_run.sh: no command given" >&2; exit 2; }
printf -v shown '%q ' "${cmd[@]}"
echo "[node $node_id $(hostname)] ${shown% }"

descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

# True when PID catches or blocks USR1 (bit 10 of SigCgt/SigBlk): a USR1 cannot kill it.
usr1_safe() {
    local key value
    while read -r key value; do
        case "$key" in
            SigBlk:|SigCgt:) (( (16#$value >> 9) & 1 )) && return 0 ;;
        esac
    done <"/proc/$1/status" 2>/dev/null
    return 1
}

relay_loop() {
    local -A signalled=()
    local pid
    while kill -0 "$launcher_pid" 2>/dev/null; do
        for pid in $(descendants "$launcher_pid"); do
            [[ -n "${signalled[$pid]:-}" ]] && continue
            usr1_safe "$pid" || continue
            signalled[$pid]=1
            kill -s USR1 "$pid" 2>/dev/null || true
        done
        sleep "${RELAY_INTERVAL:-2}"
    done
}

on_signal() {
    echo "[node $node_id] got SIG$1: relaying USR1 to the training processes"
    if [[ -z "${relay_pid:-}" ]]; then
        relay_loop &
        relay_pid=$!
    fi
}

traps=0
trap 'traps=$((traps + 1)); on_signal USR1' USR1
trap 'traps=$((traps + 1)); on_signal TERM' TERM

PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGINT,SIGHUP,SIGQUIT}" \
    "${PYTHON:-$(command -v python || command -v python3)}" "$(dirname "${BASH_SOURCE[0]}")/blocked_exec.py" \
    "${cmd[@]}" &
launcher_pid=$!

while :; do
    before=$traps
    set +e; wait "$launcher_pid"; rc=$?; set -e
    if (( traps != before && rc > 128 )); then
        kill -0 "$launcher_pid" 2>/dev/null && continue
        set +e; wait "$launcher_pid"; again=$?; set -e
        (( again != 127 )) && rc=$again
    fi
    break
done
echo "[node $node_id] launcher exited with $rc"
exit "$rc"
