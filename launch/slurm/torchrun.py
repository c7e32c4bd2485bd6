"""torchrun that reports the workers' exit code: `python launch/slurm/torchrun.py TORCHRUN_ARGS`.

torchrun turns any worker failure into its own exit code 1, so a preempted run's 75 ("checkpointed,
requeue me", dtr_scale/preemption.py) would look like a crash. This runs torchrun's own
`run(args)` and exits with the workers' code when every failed worker exited with the same code
(75 after a preemption checkpoint), else with 1 as torchrun does. It also leaves SIGTERM and
SIGUSR1 to the workers: `--signals-to-handle` (PET_SIGNALS_TO_HANDLE) defaults to SIGINT, SIGHUP and
SIGQUIT here, because torchrun forwards a SIGTERM to its workers and SIGKILLs them 30 s later,
possibly in the middle of a checkpoint.
"""
from __future__ import annotations

import os
import sys

# Before torch reads it (its argparse takes defaults from PET_* variables).
os.environ.setdefault("PET_SIGNALS_TO_HANDLE", "SIGINT,SIGHUP,SIGQUIT")

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: E402
from torch.distributed.run import parse_args, run  # noqa: E402


def workers_code(exc: ChildFailedError) -> int:
    """The failed workers' common exit code, or 1 (torchrun's own) when they differ or one died
    from a signal (negative code)."""
    codes = {failure.exitcode for failure in exc.failures.values()}
    if len(codes) == 1 and (code := codes.pop()) > 0:
        return code
    return 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as exc:
        code = workers_code(exc)
        first_rank, first = exc.get_first_failure()
        print(f"[torchrun] worker(s) {sorted(exc.failures)} exited with "
              f"{sorted({f.exitcode for f in exc.failures.values()})} (first: rank {first_rank}, "
              f"code {first.exitcode}); exiting with {code}", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The workers have exited and their output is flushed: skip the seconds of interpreter
    # teardown (torch's modules) that would only delay the job's end or requeue.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
