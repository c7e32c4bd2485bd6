"""Fault injection for the robustness tests (environment variables, off unless set).

DTR_SCALE_INJECT_NAN_STEPS="3,4"  multiply the loss of these (0-based) steps by NaN on rank 0
DTR_SCALE_CRASH_IN_SAVE_STEP=6    hard-exit every rank in the middle of writing this checkpoint
DTR_SCALE_SIGNAL_AT_STEP=5        send SIGTERM to this process after this (0-based) step
DTR_SCALE_KILL_IN_ASYNC_WRITE_STEP=4  SIGKILL every rank once its background write of this
                                  checkpoint (checkpoint.async=true) is under way

They exercise the real code paths (a NaN travelling through backward and the optimizer's
skip logic, a half-written checkpoint directory, a real signal) instead of mocking them.
`install` wraps the pieces the loop already calls (the objective's forward, the engine's `save`,
`save_async` and `step`) and only for the variables that are set, so neither the training loop nor the
checkpoint code contains a test hook, and a normal run carries no wrapper at all.
"""
from __future__ import annotations

import os
import signal

NAN_STEPS = "DTR_SCALE_INJECT_NAN_STEPS"
CRASH_IN_SAVE_STEP = "DTR_SCALE_CRASH_IN_SAVE_STEP"
SIGNAL_AT_STEP = "DTR_SCALE_SIGNAL_AT_STEP"
KILL_IN_ASYNC_WRITE_STEP = "DTR_SCALE_KILL_IN_ASYNC_WRITE_STEP"
CRASH_EXIT_CODE = 17


def _steps(name: str) -> set[int]:
    raw = os.environ.get(name, "")
    return {int(s) for s in raw.split(",") if s.strip()}


def install(trainer) -> list[str]:
    """Install the requested faults on `trainer` (anything with `.step`, `.env` and `.engine`,
    whose `step` is the 0-based optimizer step in progress). Returns the variables acted on."""
    engine, installed = trainer.engine, []

    nan_steps = _steps(NAN_STEPS)
    if nan_steps and trainer.env.rank == 0:
        def nan_loss(module, args, output):  # noqa: ARG001 - forward-hook signature
            if trainer.step not in nan_steps:
                return output
            loss, per_sample = output
            return loss * float("nan"), per_sample

        # A hook on the unwrapped objective: every engine's wrapper (DDP, FSDP2, DeepSpeed) calls it.
        engine.objective.register_forward_hook(nan_loss)
        installed.append(NAN_STEPS)

    crash_steps = _steps(CRASH_IN_SAVE_STEP)
    if crash_steps:
        save = engine.save

        def save_then_crash(path: str) -> None:
            save(path)
            if trainer.step in crash_steps:
                os._exit(CRASH_EXIT_CODE)  # die with a half-finished checkpoint on disk

        engine.save = save_then_crash
        installed.append(CRASH_IN_SAVE_STEP)

    kill_steps = _steps(KILL_IN_ASYNC_WRITE_STEP)
    if kill_steps:
        save_async = engine.save_async

        def save_async_then_kill(path: str, process_group=None, stager=None):
            staged, written = save_async(path, process_group, stager)
            if trainer.step in kill_steps:
                # The background threads are copying or writing the state; nothing has been committed.
                print(f"rank {trainer.env.rank}: SIGKILL with the write of {path} "
                      f"{'finished' if written.done() else 'in flight'}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return staged, written

        engine.save_async = save_async_then_kill
        installed.append(KILL_IN_ASYNC_WRITE_STEP)

    signal_steps = _steps(SIGNAL_AT_STEP)
    if signal_steps:
        step = engine.step

        def step_then_signal():
            result = step()
            if trainer.step in signal_steps:
                os.kill(os.getpid(), signal.SIGTERM)  # the real handler only sets a flag
            return result

        engine.step = step_then_signal
        installed.append(SIGNAL_AT_STEP)
    return installed

