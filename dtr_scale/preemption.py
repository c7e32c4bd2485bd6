"""Preemption: SIGTERM / SIGUSR1 ask the run to finish its step, checkpoint and exit.

SLURM sends SIGUSR1 ahead of the time limit with `--signal=USR1@120` and SIGTERM on preemption.
The handler only sets a flag; the loop polls it after each step (all-reduced, so every rank
stops at the same step) and exits with REQUEUE_EXIT_CODE, which the sbatch scripts turn into
`scontrol requeue`.
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"


class PreemptionFlag:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.requested = False
        self.signum = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.requested = True
        self.signum = signum

    def any_rank(self, device: torch.device) -> bool:
        """True if any rank got a signal; a collective so that all ranks agree on the step."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
