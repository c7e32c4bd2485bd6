#!/usr/bin/env bash
# Stop a training job for good: it checkpoints and ends, and is not requeued.
#
#   launch/stop.sh JOBID
#
# A plain `scancel` sends SIGTERM, which the training scripts treat as a preemption (checkpoint,
# then requeue; unless the job was submitted with REQUEUE_ON_TERM=0), and `scancel --signal=KILL`
# does not stop them either: SLURM still sends SIGTERM first and waits KillWait. This marks the job
# (its comment becomes dtr-stop, which launch/slurm/lib.sh reads before it would requeue), then
# cancels it: the training processes finish their step, checkpoint and exit. A pending job is
# simply cancelled. The same submit command later resumes the run from its last checkpoint.
set -euo pipefail
if (( $# != 1 )) || [[ ! "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: launch/stop.sh JOBID" >&2
    exit 2
fi
scontrol update "JobId=$1" Comment=dtr-stop
scancel "$1"
echo "[stop] job $1: asked to checkpoint and stop; it will not be requeued"
