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
# - The launcher starts with SIGUSR1 and SIGTERM ignored (inherited across exec), and torchrun is
#   told not to handle SIGTERM: otherwise torchrun dies on USR1 (default action) or kills its
#   workers 30 s after a TERM, possibly in the middle of a checkpoint. The training processes
#   install their own handlers (dtr_scale/preemption.py), which override the inherited SIG_IGN.
# - On USR1/TERM this wrapper sends USR1 to every descendant of the launcher, and again every
#   RELAY_INTERVAL seconds (default 10) until the launcher exits: a worker that was still starting
#   up (handler not installed yet) gets the message on a later round. The launchers ignore it.
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

relay_loop() {
    while kill -0 "$launcher_pid" 2>/dev/null; do
        for pid in $(descendants "$launcher_pid"); do kill -s USR1 "$pid" 2>/dev/null || true; done
        sleep "${RELAY_INTERVAL:-10}"
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

(
    trap '' USR1 TERM
    export TORCHELASTIC_SIGNALS_TO_HANDLE="SIGINT,SIGHUP,SIGQUIT"
    exec "${cmd[@]}"
) &
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
