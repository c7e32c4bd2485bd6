"""User errors: the one type for mistakes in what a user gave, and the one way every CLI ends on one.

A `UserError` is a bad path, option, config value or data file: something the user fixes, not
the code. Its message names the key or flag, the file (the shard and the sample where they
apply) and the fix. Every CLI's `main` runs its work through `run_cli` (or, once a process group
is up, hands a failure to `exit_after_start`), which turns a user error into ONE line on stderr,

    error: <what is wrong, where, and the fix>

printed by rank 0 alone, and exit code 2 in every process of a distributed run, without a
traceback. Any other exception is a bug and keeps its traceback.

A user error that only one rank meets after start-up (a NaN sample that rank 3 reads at step
900) leaves the other ranks blocked in a collective, where no exception reaches them. The
failing rank therefore writes its message, with a deadline a few seconds ahead, into the process
group's key-value store; a watcher thread on every rank (started by `remember_process_group`)
looks for that key once a second, rank 0 prints the line, and every rank exits 2 at the
deadline. Leaving together matters: a launcher (torchrun) that sees one rank exit kills the rest
with SIGTERM, and they would not exit 2.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

EXIT_USER_ERROR = 2
_STORE_KEY = "dtr_scale/user_error"
_GROUP: dict = {}  # the process group's store and this rank, kept by `remember_process_group`
_LOCK = threading.Lock()
_WATCH_S = 1.0  # how often each rank looks for a peer's user error (one small store request)
_GRACE_S = 3.0  # every rank exits this long after the first report: all watchers see it by then


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
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "".join(line + ("" if i == len(lines) - 1 else " " if line.endswith(":") else "; ")
                   for i, line in enumerate(lines))


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
    peers that are blocked in a collective."""
    store = _store()
    if isinstance(exc, USER_ERRORS):
        _GROUP["failing"] = True  # this rank's watcher must not answer its own message
        _leave_together(store, one_line(exc))
    found = _read_key(store, wait_s=3.0)
    if found is not None:
        _leave_together(store, None, found)


def _leave_together(store, message: str | None, found: tuple[float, str] | None = None) -> None:
    """Publish `message` (the first rank to fail names the problem), let rank 0 print it, and exit
    2 at the shared deadline. The other ranks are blocked in a collective and cannot see an
    exception: their watcher threads find the key within `_WATCH_S`. All exit at one moment,
    because a launcher that sees one rank exit kills the rest (with SIGTERM, not exit 2)."""
    if found is None and store is not None and message is not None:
        try:
            store.compare_set(_STORE_KEY, "", f"{time.time() + _GRACE_S:.3f}|{message}")
        except Exception:  # noqa: BLE001 - a dead store must not hide the user's message
            store = None
        found = _read_key(store, wait_s=0.0)
    deadline, text = found if found is not None else (time.time(), message or "")
    _print_once(text)
    if _GROUP.get("world", 2) <= 1:
        deadline = 0.0  # nobody to wait for
    time.sleep(max(0.0, deadline - time.time()))
    _hard_exit(EXIT_USER_ERROR)


def _print_once(message: str) -> None:
    with _LOCK:
        if not _GROUP.get("printed") and _group_rank() == 0:
            _GROUP["printed"] = True
            print_error(message, rank=0)


def _watch(store, interval_s: float) -> None:
    """Daemon thread: a peer's user error ends this rank too, whatever its main thread waits on."""
    while True:
        time.sleep(interval_s)
        if _GROUP.get("failing"):
            return
        found = _read_key(store, wait_s=0.0)
        if found is not None:
            _leave_together(store, None, found)


def remember_process_group() -> None:
    """Call once after the process group starts. Keeps its store and this rank (so that a failure
    reported after a `finally` has torn the group down still reaches the other ranks) and starts
    the watcher thread that ends this rank when another one reports a user error."""
    if not _group_initialized() or "store" in _GROUP:
        return
    import torch.distributed as dist

    _GROUP.update(store=_store(), rank=dist.get_rank(), world=dist.get_world_size())
    if _GROUP["store"] is not None and dist.get_world_size() > 1:
        threading.Thread(target=_watch, args=(_GROUP["store"], _WATCH_S), daemon=True,
                         name="dtr_scale-user-error-watch").start()


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


def _read_key(store, wait_s: float) -> tuple[float, str] | None:
    """(deadline, message) of a user error some rank published, or None (none, or no store)."""
    if store is None:
        return None
    import datetime

    try:
        if wait_s > 0:
            store.wait([_STORE_KEY], datetime.timedelta(seconds=wait_s))
        elif not store.check([_STORE_KEY]):
            return None
        value = store.get(_STORE_KEY).decode("utf-8", "replace")
        deadline, _, message = value.partition("|")
        return float(deadline), message
    except Exception:  # noqa: BLE001 - no key (a real failure) or the store went with its host
        return None


def _hard_exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
