"""Asynchronous checkpoint writes (`checkpoint.async=true`): what a save in flight holds and how
it is started and awaited.

A save stages the canonical training state (a host-memory copy, so that the optimizer steps after
it may change the training tensors) and hands it to DCP's `async_save`, which writes it from a
background thread while training continues. The copy itself is taken on a thread of its own (on
its own CUDA stream on GPUs) while the next forward and backward passes run, since they read the
training tensors but do not change them: the loop waits only before the next optimizer step, and
only if the copy is still running (`CheckpointManager.wait_for_staging`). The
checkpoint is *committed* (meta.json written, `.tmp-step_*` renamed, `latest` moved, old ones
pruned) by `CheckpointManager.finish`, the collective that the next save, the last step and
preemption call: only when every rank's write has completed. A job killed before that leaves
`latest` naming the previous checkpoint and the half-written folder as a leftover, which the
next start-up removes, exactly as after a kill during a synchronous save.

At most one write is in flight: a save first waits for the previous one and commits it. The
staging buffers are kept from one save to the next (`reusable_stager`).

Why a thread and not DCP's process executor: the write is file I/O (torch's serialization
releases the GIL while copying bytes), and a thread needs no second process group rendezvous
nor a second copy of the staged state through shared memory. Its collectives (DCP's plan
exchange and final gather) run on a process group of their own (gloo, the CPU backend DCP's
async save needs), so that they can never interleave with the training loop's collectives on
the default group.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class PendingWrite:
    """A checkpoint whose state is being written in the background, not yet committed."""
    name: str  # step_000001000
    tmp: str  # its .tmp-step_* folder
    final: str  # the folder it is renamed to when committed
    meta: dict  # meta.json, written at commit
    config_yaml: str
    staged: Future  # done when the host copy is complete: the training tensors may change again
    future: Future  # DCP's: done when this rank's part of the state is written
    started: float = field(default_factory=time.monotonic)

    def wait_staged(self) -> None:
        """Block until the staging copy has finished. Raises nothing: a failed copy fails the
        write too, and `CheckpointManager.finish` reports it on every rank."""
        wait([self.staged])

    def wait(self) -> None:
        """Block until this rank's write has finished; raises what the write raised."""
        self.future.result()


def writer_group(distributed: bool):
    """Collective (every rank, at the same point): the process group the background writes
    use, or None without a process group (one process: DCP writes without collectives)."""
    if not (distributed and dist.is_available() and dist.is_initialized()):
        return None
    return dist.new_group(backend="gloo")


def reusable_stager():
    """DCP's default stager, kept for the whole run: it copies each tensor, on a thread of its
    own, into a host buffer it keeps per source storage, so the second and later saves allocate
    nothing (pinned memory and non-blocking copies on a side stream on CUDA, for fast
    device-to-host copies). Safe because the copy of one save is written before the next save
    stages into the same buffers (one write in flight)."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    cuda = torch.cuda.is_available()
    return DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                        use_async_staging=True, use_non_blocking_copy=cuda))
