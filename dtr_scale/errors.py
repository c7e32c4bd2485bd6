"""User errors: the one type for mistakes in what a user gave, and the one way every CLI ends on one.

A `UserError` is a bad path, option, config value or data file: something the user fixes, not
the code. Its message names the key or flag, the file (the shard and the sample where they
apply) and the fix. Every CLI's `main` runs its work through `run_cli` (or, once a process group
is up, hands a failure to `exit_after_start`), which turns a user error into ONE line on stderr,

    error: <what is wrong, where, and the fix>

printed by rank 0 alone, and exit code 2 in every process of a distributed run, without a
traceback. Any other exception is a bug and keeps its traceback.

A user error that only one rank meets after start-up (a NaN sample that rank 3 reads at step
900) leaves the other ranks blocked in a collective. The failing rank therefore writes its
message into the process group's key-value store before it exits; the collective then fails on
the other ranks, which find the message there instead of reporting a bug, and exit 2 too, rank
0 printing the line.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

EXIT_USER_ERROR = 2
_STORE_KEY = "dtr_scale/user_error"
_GROUP: dict = {}  # the process group's store and this rank, kept by `remember_process_group`


class UserError(ValueError):
    """A mistake in the input (path, option, config value, data); the message says how to fix it.

    A ValueError, so code that caught the ValueErrors these checks raised before still works."""


# A missing file the user named is theirs to fix as well; the OS message names the path.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def one_line(exc: BaseException) -> str:
    """The message as one line. An error raised in a DataLoader worker reaches the main process
    with the worker's traceback folded into its text: keep only the worker's own message."""
    text = str(exc) or type(exc).__name__
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def env_rank() -> int:
    """This process's rank before (or without) a process group: from the launcher's variables."""
    for key in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "")
        if value.isdigit():
            return int(value)
    return 0


def print_error(message: str, rank: int | None = None) -> None:
    if (env_rank() if rank is None else rank) == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)


def run_cli(body: Callable[..., int], *args, **kwargs) -> int:
    """`body(*args, **kwargs)`; a user error becomes one line on stderr (rank 0) and exit code 2.

    For work that runs before a process group exists, or in one process: every rank meets the
    same error (the checks are deterministic) and returns 2 by itself. Inside a process group
    (evaluate, sample, prep under torchrun) the failure also goes through `exit_after_start`,
    so that a rank whose peer failed exits 2 as well instead of reporting a broken collective."""
    try:
        return body(*args, **kwargs)
    except BaseException as exc:
        if (_group_initialized() or _GROUP) and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            exit_after_start(exc)  # does not return when it is a user error (here or on a peer)
        if isinstance(exc, USER_ERRORS):
            print_error(one_line(exc))
            return EXIT_USER_ERROR
        raise


def exit_after_start(exc: BaseException) -> None:
    """In a process group: end this process with code 2 if `exc` is a user error, or the echo of a
    peer's (a collective that failed because that peer left). Returns for real bugs, which the
    caller reports with their traceback. Exits hard (`os._exit`): a clean teardown would wait on
    peers that have already gone."""
    store = _store()
    rank = _group_rank()
    if isinstance(exc, USER_ERRORS):
        message = one_line(exc)
        if store is not None and rank != 0:
            try:  # the first rank to fail names the problem; rank 0 prints it
                store.compare_set(_STORE_KEY, "", message)
            except Exception:  # noqa: BLE001 - a dead store must not hide the user's message
                print_error(message, rank=0)
        else:
            print_error(message, rank=0)
            _store_set(store, message)
        _hard_exit(EXIT_USER_ERROR)
    peer = _peer_message(store)
    if peer is not None:
        print_error(peer, rank=rank)
        _hard_exit(EXIT_USER_ERROR)


def remember_process_group() -> None:
    """Keep the store and rank of the current process group, so that a failure reported after
    code in a `finally` has torn the group down still reaches (and hears from) the other ranks."""
    if _group_initialized():
        import torch.distributed as dist

        _GROUP.update(store=_store(), rank=dist.get_rank())


def _group_initialized() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized()


def _group_rank() -> int:
    import torch.distributed as dist

    if _group_initialized():
        return dist.get_rank()
    return _GROUP.get("rank", env_rank())


def _store():
    if not _group_initialized():
        return _GROUP.get("store")
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: each rank reports for itself
        return None


def _store_set(store, message: str) -> None:
    if store is not None:
        try:
            store.set(_STORE_KEY, message)
        except Exception:  # noqa: BLE001
            pass


def _peer_message(store, wait_s: float = 3.0) -> str | None:
    """A user error another rank wrote, waiting briefly: the peer writes before it exits, and a
    collective fails here only once the peer is gone, so the key is normally there already."""
    if store is None:
        return None
    import datetime

    try:
        store.wait([_STORE_KEY], datetime.timedelta(seconds=wait_s))
        value = store.get(_STORE_KEY).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - no key (a real failure) or the store went with its host
        return None
    return value or None


def _hard_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
