"""How many intra-op CPU threads each process uses, chosen once at the start of every CLI.

Why: torch's default is one thread per core of the whole machine, without regard to the cores
this process may actually run on (a container's or SLURM job's CPU set) or to the other ranks on
the node. A plain `python -m dtr_scale.train` on a shared 2-core machine then ran 2-5x slower than
with one thread; torchrun sets `OMP_NUM_THREADS=1` for several processes, a single process gets
nothing. The rule here:

    threads = max(1, cores this process may run on (sched_getaffinity) // local ranks)

with local ranks from `LOCAL_WORLD_SIZE` (torchrun), `LOCAL_SIZE` (the deepspeed launcher) or
`SLURM_NTASKS_PER_NODE`, so the ranks of a node never ask for more threads than it has. An explicit
choice wins: `OMP_NUM_THREADS` in the environment, or a `torch.set_num_threads(n)` made after this
module was imported (a script that calls `main(argv)` after choosing its own count).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

# What torch had when dtr_scale first looked; a different value later means someone chose one.
_THREADS_AT_IMPORT = torch.get_num_threads()
_announced = False


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # human-readable: where the number came from

    def describe(self) -> str:
        return f"threads: {self.threads} intra-op CPU thread(s) per process ({self.reason})"


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's total."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # not on Linux
        return max(os.cpu_count() or 1, 1)


def local_ranks(environ: Mapping[str, str]) -> int:
    """Processes of this job on this node, as the launcher says (1 when none does)."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = environ.get(key, "")
        head = value.split("(")[0].split(",")[0]  # SLURM may write e.g. "2(x3)"
        if head.strip().isdigit() and int(head) > 0:
            return int(head)
    return 1


def choose_threads(environ: Optional[Mapping[str, str]] = None, cores: Optional[int] = None,
                   current: Optional[int] = None) -> ThreadChoice:
    """The thread count to use, without setting anything (pure: the tests call it directly)."""
    environ = os.environ if environ is None else environ
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp:
        if omp.isdigit() and int(omp) > 0:
            return ThreadChoice(int(omp), "OMP_NUM_THREADS is set")
        # A malformed value: OpenMP ignores it too, so say so and fall through to our rule.
        bad = f"OMP_NUM_THREADS={omp!r} is not a positive integer, ignored; "
    else:
        bad = ""
    current = torch.get_num_threads() if current is None else current
    if current != _THREADS_AT_IMPORT:
        return ThreadChoice(current, "chosen with torch.set_num_threads")
    cores = available_cores() if cores is None else cores
    ranks = local_ranks(environ)
    n = max(1, cores // ranks)
    return ThreadChoice(n, f"{bad}{cores} core(s) available to this process / {ranks} local rank(s); "
                           "set OMP_NUM_THREADS to choose")


def configure_threads(announce: bool = True) -> ThreadChoice:
    """Apply the choice to torch and print it once per process (rank 0 only when launched)."""
    global _announced, _THREADS_AT_IMPORT
    choice = choose_threads()
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _THREADS_AT_IMPORT = torch.get_num_threads()  # our own choice is not a user's explicit one
    if announce and not _announced and os.environ.get("RANK", "0") == "0":
        print(choice.describe(), flush=True)
        _announced = True
    return choice
