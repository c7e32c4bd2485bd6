# Shared helpers for the sbatch scripts (sourced, not run). Bash only.
#
# Environment knobs the scripts honour (all optional):
#   PYTHON           interpreter that has dtr_scale installed (default: python, else python3)
#   MASTER_ADDR      rendezvous host (default: first host of SLURM_JOB_NODELIST). Set it when node
#                    names do not resolve from the compute nodes (or, in the tests, to 127.0.0.1).
#   MASTER_PORT      rendezvous port (default: 20000 + SLURM_JOB_ID % 20000, the same rule as
#                    dtr_scale/parallel/process_group.py, so two jobs on one node do not collide)
#   NPROC_PER_NODE   processes per node (default: SLURM_GPUS_ON_NODE, else 1 = CPU-only)
#   REQUEUE_ON_TERM  1 (default): requeue after SIGTERM too (preemption); 0: only after USR1
#                    (to stop one job for good whatever it was submitted with: launch/stop.sh JOBID)
#   MAX_REQUEUES     stop requeueing after this many restarts (default 50; SLURM_RESTART_COUNT)
#   FORWARD_WITH_SCANCEL  1: forward signals with `scancel --signal` instead of signalling srun
#
# shellcheck shell=bash

dtr_log() { printf '[launch %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
dtr_die() { printf '[launch] error: %s\n' "$*" >&2; exit 2; }

dtr_python() {
    if [[ -n "${PYTHON:-}" ]]; then printf '%s' "$PYTHON"
    elif command -v python >/dev/null 2>&1; then printf 'python'
    else printf 'python3'; fi
}

# dtr_check VERB [WORLD_SIZE] -- ARGS...: validate the CLI's inputs (see launch/check_inputs.py).
dtr_check() {
    local verb="$1" world="$2"; shift 2
    [[ "${1:-}" == "--" ]] && shift
    local extra=()
    [[ -n "$world" ]] && extra=(--world-size "$world")
    "$(dtr_python)" "$DTR_SCALE_ROOT/launch/check_inputs.py" "$verb" "${extra[@]}" -- "$@" \
        || dtr_die "input check failed for dtr_scale.$verb (see above); nothing was launched"
}

dtr_require_slurm() {
    [[ -n "${SLURM_JOB_ID:-}" && -n "${SLURM_JOB_NODELIST:-}" ]] || dtr_die \
        "SLURM_JOB_ID/SLURM_JOB_NODELIST are not set: submit with launch/submit.sh (or sbatch); " \
        "validate only with --check; on one machine use launch/local.sh"
}

# One hostname per line for the job's nodes.
dtr_hosts() {
    if command -v scontrol >/dev/null 2>&1; then
        scontrol show hostnames "$SLURM_JOB_NODELIST"
    else
        "$(dtr_python)" "$DTR_SCALE_ROOT/launch/slurm/hostlist.py" "$SLURM_JOB_NODELIST"
    fi
}

dtr_master_addr() {
    if [[ -n "${MASTER_ADDR:-}" ]]; then printf '%s' "$MASTER_ADDR"
    else dtr_hosts | head -n 1; fi
}

# dtr_check_host HOST: the rendezvous host must resolve here; a name that does not makes every
# node retry its rendezvous for minutes before anything says why.
dtr_check_host() {
    local ok=0
    if command -v getent >/dev/null 2>&1; then getent ahosts "$1" >/dev/null 2>&1 && ok=1
    else "$(dtr_python)" -c 'import socket, sys; socket.getaddrinfo(sys.argv[1], None)' "$1" 2>/dev/null && ok=1
    fi
    (( ok )) || dtr_die "rendezvous host '$1' (MASTER_ADDR; default: the first node of SLURM_JOB_NODELIST) does" \
        "not resolve on $(hostname): set MASTER_ADDR to an address (or a name) the nodes resolve"
    dtr_log "rendezvous host $1 resolves"
}

# --check on the login node: MASTER_ADDR, when given, must resolve (the nodes' names are only
# known, and checked, once the job starts).
dtr_check_master_addr_if_set() {
    if [[ -n "${MASTER_ADDR:-}" ]]; then dtr_check_host "$MASTER_ADDR"
    else dtr_log "rendezvous host: the job's first node (checked when the job starts)"; fi
}

dtr_master_port() {
    printf '%s' "${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
}

dtr_procs_per_node() {
    local n="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
    n="${n%%[^0-9]*}"  # SLURM can report "4(x2)"-style counts
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || dtr_die "NPROC_PER_NODE/SLURM_GPUS_ON_NODE must be a positive integer, got '$n'"
    printf '%s' "$n"
}

dtr_show_env() {
    dtr_log "host $(hostname) pid $$ cwd $(pwd)"
    local v
    for v in SLURM_JOB_ID SLURM_JOB_NAME SLURM_JOB_NODELIST SLURM_NNODES SLURM_NTASKS \
             SLURM_NTASKS_PER_NODE SLURM_CPUS_PER_TASK SLURM_GPUS_ON_NODE SLURM_RESTART_COUNT \
             CUDA_VISIBLE_DEVICES MASTER_ADDR MASTER_PORT NPROC_PER_NODE OMP_NUM_THREADS \
             NCCL_SOCKET_IFNAME PYTHON PYTHONPATH DTR_SCALE_ROOT; do
        dtr_log "  $v=${!v-<unset>}"
    done
    dtr_log "  python: $(command -v "$(dtr_python)") ($("$(dtr_python)" --version 2>&1))"
}

dtr_show_cmd() {
    local quoted
    printf -v quoted '%q ' "$@"
    dtr_log "command: ${quoted% }"
}

# srun options shared by every step: a bad exit anywhere kills the step (otherwise the other
# ranks wait for a collective until the NCCL/gloo timeout), and the job's CPUs per task are
# passed on explicitly (srun stopped inheriting --cpus-per-task from sbatch in SLURM 22.05).
dtr_srun_opts() {
    local opts=(--kill-on-bad-exit=1)
    [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && opts+=("--cpus-per-task=$SLURM_CPUS_PER_TASK")
    printf '%s\n' "${opts[@]}"
}

# --- preemption -------------------------------------------------------------------------------
# `#SBATCH --signal=B:USR1@120` signals only this batch shell; SLURM preemption and `scancel`
# send it SIGTERM. The trap records the signal and passes USR1 on to the srun step; srun
# forwards it to every task (launch/slurm/node_run.sh), which relays it to the training
# processes: they finish the step, checkpoint and exit 75. Once the step has ended, the job is
# requeued and resumes from `latest` (checkpoint.resume=auto).
DTR_SIGNAL=""
DTR_TRAPS=0
DTR_STEP_PID=""

dtr_on_signal() {
    DTR_SIGNAL="$1"
    DTR_TRAPS=$((DTR_TRAPS + 1))
    dtr_log "batch shell got SIG$1: asking the training processes to checkpoint and stop"
    if [[ "${FORWARD_WITH_SCANCEL:-0}" == 1 ]]; then
        scancel --signal=USR1 "$SLURM_JOB_ID" || true  # steps only, not this batch shell
    elif [[ -n "$DTR_STEP_PID" ]]; then
        kill -s USR1 "$DTR_STEP_PID" 2>/dev/null || true
    fi
}

# Run one srun step in the background (bash runs traps only between commands, so a foreground
# srun would delay the trap until the job ended) and wait for it; sets DTR_STEP_RC.
dtr_run_step() {
    trap 'dtr_on_signal USR1' USR1
    trap 'dtr_on_signal TERM' TERM
    "$@" </dev/null &
    DTR_STEP_PID=$!
    local before rc
    while :; do
        before=$DTR_TRAPS
        set +e; wait "$DTR_STEP_PID"; rc=$?; set -e
        if (( DTR_TRAPS != before && rc > 128 )); then
            # wait was interrupted by a trapped signal: keep waiting while the step runs
            kill -0 "$DTR_STEP_PID" 2>/dev/null && continue
            set +e; wait "$DTR_STEP_PID"; local again=$?; set -e
            (( again != 127 )) && rc=$again  # 127: already reaped, rc was the step's own status
        fi
        break
    done
    DTR_STEP_RC=$rc
    dtr_log "step finished with exit code $rc${DTR_SIGNAL:+ (after SIG$DTR_SIGNAL)}"
}

# One field of `scontrol show job` for this job ("" when scontrol is missing or fails).
dtr_job_field() {
    { scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null || true; } | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1
}

# After the step: requeue when it exited 75 (REQUEUE_EXIT_CODE: the training processes
# checkpointed after a signal; every launcher path passes the code on), or when it failed after a
# signal without it (killed before its checkpoint: the requeued job resumes from the previous
# one). Not when the job was already requeued from outside (`scontrol requeue`), when a stop was
# asked for (launch/stop.sh sets the job's comment to dtr-stop), after SIGTERM with
# REQUEUE_ON_TERM=0, or after MAX_REQUEUES restarts. Exits the batch script.
dtr_finish() {
    local rc="$DTR_STEP_RC" restarts="${SLURM_RESTART_COUNT:-0}" now
    if [[ "$rc" != 75 ]]; then
        [[ -n "$DTR_SIGNAL" && "$rc" != 0 ]] || exit "$rc"
        dtr_log "the step failed with $rc after SIG$DTR_SIGNAL, before its checkpoint (exit 75):" \
            "requeueing anyway; the run resumes from its previous checkpoint"
    fi
    now="$(dtr_job_field Restarts)"
    if [[ "$now" =~ ^[0-9]+$ ]] && (( now > restarts )); then
        dtr_log "job $SLURM_JOB_ID was already requeued from outside (scontrol requeue; restart $now);" \
            "it resumes from the latest checkpoint"
        exit 0
    fi
    if [[ "$(dtr_job_field Comment)" == dtr-stop ]]; then
        dtr_log "stop requested (launch/stop.sh): not requeueing; the same submit command resumes the run"
        exit "$rc"
    fi
    if [[ "$DTR_SIGNAL" == TERM && "${REQUEUE_ON_TERM:-1}" == 0 ]]; then
        dtr_log "SIGTERM and REQUEUE_ON_TERM=0: not requeueing; the same submit command resumes the run"
        exit "$rc"
    fi
    local limit="${MAX_REQUEUES:-50}"
    if (( restarts >= limit )); then
        dtr_log "not requeueing: already restarted $restarts times (MAX_REQUEUES=$limit)"
        exit "$rc"
    fi
    dtr_log "requeueing job $SLURM_JOB_ID (restart $((restarts + 1))); it resumes from the latest checkpoint"
    if scontrol requeue "$SLURM_JOB_ID"; then
        exit 0
    fi
    dtr_log "scontrol requeue failed (was the job submitted with --requeue?); resubmit by hand"
    exit "$rc"
}

# --- one srun task per process (prep, sample, evaluate) ---------------------------------------
# dtr_srun_verb VERB ARGS...: validate, then `srun python -m dtr_scale.VERB ARGS` with the job's
# task layout (--nodes/--ntasks-per-node of the allocation). Each task finds its rank from
# SLURM_PROCID/SLURM_NTASKS (dtr_scale/parallel/process_group.py); MASTER_ADDR/MASTER_PORT are
# exported so that every task meets at the same address (and the override reaches them).
dtr_srun_verb() {
    local verb="$1"; shift
    local py
    py="$(dtr_python)"
    if (( CHECK_ONLY )); then
        dtr_check_master_addr_if_set
        dtr_check "$verb" "" -- "$@"
        dtr_show_cmd "$py" -m "dtr_scale.$verb" "$@"
        exit 0
    fi
    dtr_require_slurm
    MASTER_ADDR="$(dtr_master_addr)"
    MASTER_PORT="$(dtr_master_port)"
    export MASTER_ADDR MASTER_PORT
    dtr_show_env
    dtr_check_host "$MASTER_ADDR"
    dtr_check "$verb" "" -- "$@"
    local srun_opts cmd
    mapfile -t srun_opts < <(dtr_srun_opts)
    cmd=(srun "${srun_opts[@]}" "$py" -m "dtr_scale.$verb" "$@")
    dtr_log "${SLURM_NTASKS:-?} task(s) on ${SLURM_NNODES:-?} node(s), rendezvous $MASTER_ADDR:$MASTER_PORT"
    dtr_show_cmd "${cmd[@]}"
    "${cmd[@]}"
}
