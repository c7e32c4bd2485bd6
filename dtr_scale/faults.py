"""Fault injection for the robustness tests (environment variables, off unless set).

DTR_SCALE_INJECT_NAN_STEPS="3,4"  multiply the loss of these (0-based) steps by NaN on rank 0
DTR_SCALE_CRASH_IN_SAVE_STEP=6    hard-exit every rank in the middle of writing this checkpoint
DTR_SCALE_SIGNAL_AT_STEP=5        send SIGTERM to this process after this step (preemption test)

They exercise the real code paths (a NaN travelling through backward and the optimizer's
skip logic, a half-written checkpoint directory, a real signal) instead of mocking them.
"""
from __future__ import annotations

import os


def _steps(name: str) -> set[int]:
    raw = os.environ.get(name, "")
    return {int(s) for s in raw.split(",") if s.strip()}


def nan_step(step: int, rank: int) -> bool:
    return rank == 0 and step in _steps("DTR_SCALE_INJECT_NAN_STEPS")


def crash_in_save(step: int) -> bool:
    return step in _steps("DTR_SCALE_CRASH_IN_SAVE_STEP")


def signal_after(step: int) -> bool:
    return step in _steps("DTR_SCALE_SIGNAL_AT_STEP")
