"""Preemption: SIGTERM / SIGUSR1 ask the run to finish its step, checkpoint and exit.

SLURM sends SIGUSR1 ahead of the time limit with `--signal=USR1@120` and SIGTERM on preemption.
The handler only sets a flag; the loop polls it after each step (all-reduced, so every rank
stops at the same step) and exits with REQUEUE_EXIT_CODE, which the sbatch scripts turn into
`scontrol requeue`.

The launchers (torchrun, the deepspeed launcher) are started by launch/slurm/node_run.sh with
these signals *blocked*, so that their own handlers (which kill the workers) never run. A blocked
mask is inherited by the workers: installing the handlers here unblocks the signals again, and a
signal that arrived while this process was still starting up is delivered at that moment.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    def __init__(self, signals=SIGNALS):
        self.requested = False
        self.signum = None
        for sig in signals:
            signal.signal(sig, self._handle)
        # After the handlers: a pending signal is delivered now, to the handler.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.requested = True
        self.signum = signum

    def any_rank(self, device: torch.device) -> bool:
        """True if any rank got a signal; a collective so that all ranks agree on the step."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def ignore_preemption_signals() -> None:
    """Ignore both signals from now on: the run has checkpointed and is exiting. Python resets
    its handlers to the default action (terminate) while the interpreter shuts down, so a late
    SIGTERM (SLURM signals every process of a step) would turn the exit code into -15."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def exit_now(code: int) -> None:
    """End the process with `code` once its work is written: flush, then skip the interpreter's
    teardown (freeing every module of torch and its libraries takes seconds, several of them on a
    busy node, and a job's exit, requeue or next step waits for it)."""
    import logging
    import os
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
