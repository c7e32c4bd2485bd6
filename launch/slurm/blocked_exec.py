"""Run a command with SIGTERM and SIGUSR1 blocked: `python blocked_exec.py COMMAND [ARGS...]`.

launch/slurm/node_run.sh starts the launchers (torchrun, the deepspeed launcher) through this. A
blocked signal mask survives exec and is inherited by every child, so a launcher's own SIGTERM
handler never runs (the deepspeed launcher's kills the workers and exits 1; torchrun's SIGKILLs
them 30 s later) and a SIGUSR1 does not kill it. The training processes unblock both signals once
their handlers are installed (dtr_scale/preemption.py); a signal sent to one before that waits,
pending, instead of killing it or being lost.
"""
import os
import signal
import sys

if len(sys.argv) < 2:
    sys.exit("usage: blocked_exec.py COMMAND [ARGS...]")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
os.execvp(sys.argv[1], sys.argv[1:])
