"""The storage under `checkpoint.dir`: checked at start-up, cleaned of our own leftovers, and a
failed save explained.

Start-up (rank 0, before the model is built): the folder exists or can be created, is a
directory, takes a test file, and has room for one more checkpoint (the size of the newest one,
or an estimate from the parameter count); a shortfall is a warning with the numbers, a folder
that cannot be used is a one-line error. Leftovers of an interrupted save (`.tmp-step_*`
folders, temp files of `latest` and `config.yaml`) are removed, each named in the log.

A save that fails (no space, read-only, I/O error) is reported by `save_failure` in one line:
the folder, the cause, the space one checkpoint needs and the space free.
"""
from __future__ import annotations

import copy
import errno
import json
import logging
import os
import shutil

from .checkpoint_errors import CheckpointRefused

log = logging.getLogger("dtr_scale")

TMP_PREFIX = ".tmp-step_"
_OWN_TEMP_FILES = (".latest.tmp-", ".config.yaml.tmp-", ".write-test-")  # atomic.py's temp names
# Bytes per trained parameter in a checkpoint: fp32 master, EMA, Adam's two moments.
BYTES_PER_PARAM = 16


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def folder_bytes(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def check_usable(root: str) -> None:
    """`root` exists or can be created, is a directory, and takes a test file; else one line."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise CheckpointRefused(f"checkpoint.dir {root} is a file, not a directory: choose another checkpoint.dir")
    if not os.path.isdir(root):
        blocker = _first_non_directory(root)
        if blocker is not None:
            raise CheckpointRefused(f"checkpoint.dir {root} cannot be created: {blocker} is a file, not a "
                                    "directory; choose another checkpoint.dir")
        try:
            os.makedirs(root)
        except OSError as exc:
            raise CheckpointRefused(f"checkpoint.dir {root} cannot be created: {exc.strerror or exc}; "
                                    "choose a writable location for checkpoint.dir") from None
        log.info("created checkpoint.dir %s", root)
    probe = os.path.join(root, f".write-test-{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise CheckpointRefused(f"checkpoint.dir {root} is not writable: {exc.strerror or exc}; "
                                "choose a writable location for checkpoint.dir") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def check_reachable(root: str) -> None:
    """What `check_usable` checks, without creating or writing anything (the checks before any
    process group, and launch/check_inputs.py at submit time); the same one-line messages."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise CheckpointRefused(f"checkpoint.dir {root} is a file, not a directory: choose another checkpoint.dir")
    if os.path.isdir(root):
        if not os.access(root, os.W_OK):
            raise CheckpointRefused(f"checkpoint.dir {root} is not writable: {_why_not_writable(root)}; "
                                    "choose a writable location for checkpoint.dir")
        return
    blocker = _first_non_directory(root)
    if blocker is not None:
        raise CheckpointRefused(f"checkpoint.dir {root} cannot be created: {blocker} is a file, not a "
                                "directory; choose another checkpoint.dir")
    parent = os.path.abspath(root)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        raise CheckpointRefused(f"checkpoint.dir {root} cannot be created: {_why_not_writable(parent)} "
                                f"({parent}); choose a writable location for checkpoint.dir")


def _why_not_writable(path: str) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "Read-only file system"
    except OSError:
        pass
    return "Permission denied"


def _first_non_directory(path: str) -> str | None:
    """The nearest existing ancestor of `path` when it is not a directory (a file in the way)."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up
    return None if os.path.isdir(parent) else parent


def remove_leftovers(root: str) -> list[str]:
    """Remove what an interrupted save of ours left in `root`; returns the removed paths."""
    removed = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(TMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path)
            log.info("removed %s, the partial checkpoint of an interrupted save", path)
        elif name.startswith(_OWN_TEMP_FILES) and os.path.isfile(path):
            os.remove(path)
            log.info("removed %s, a temp file of an interrupted write", path)
        else:
            continue
        removed.append(path)
    return removed


def estimate_checkpoint_bytes(cfg) -> int | None:
    """One checkpoint's size from the model's parameter count (built on the meta device, with
    the data's shape from its manifest), or None when the model cannot be described yet."""
    import torch

    from .objective import dit_from_config

    c = copy.deepcopy(cfg)
    m = c.model
    try:
        with open(os.path.join(cfg.data.path, "dataset.json")) as f:
            manifest = json.load(f)
        channels, height = manifest["latent_shape"][0], manifest["latent_shape"][1]
        m.in_channels = m.in_channels or channels
        m.input_size = m.input_size or height
        m.num_classes = m.num_classes or manifest["num_classes"]
        with torch.device("meta"):
            dit = dit_from_config(c)
    except Exception:  # the real build reports a bad model or manifest with its own message
        return None
    params = sum(p.numel() for p in dit.parameters())
    buffers = sum(b.numel() * b.element_size() for b in dit.buffers())
    return int(BYTES_PER_PARAM * params + buffers + (1 << 20))  # + the index and the trainer files


def needed_bytes(root: str, latest: str | None, cfg) -> tuple[int | None, str]:
    """(bytes one more checkpoint needs, where the number comes from)."""
    if latest is not None:
        return folder_bytes(latest), f"the size of {os.path.basename(latest)}"
    estimate = estimate_checkpoint_bytes(cfg)
    return estimate, f"estimated from the parameter count ({BYTES_PER_PARAM} bytes each)"


def warn_if_short(root: str, needed: int | None, source: str) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(root).free
    if free < needed:
        log.warning("checkpoint.dir %s has %s free, one more checkpoint needs about %s (%s): "
                    "free space, or the run will stop at its next checkpoint", root, human(free),
                    human(needed), source)


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.EACCES, errno.EFBIG}


def failure_cause(exc: BaseException, root: str, needed: int | None) -> str:
    """The cause of a failed save in a few words, found in the exception or, when the writer
    hid the OSError behind its own message (DCP, torch's zip writer), in the free space."""
    from torch.distributed.checkpoint.api import CheckpointException

    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            return os.strerror(e.errno)
        if isinstance(e, CheckpointException):
            stack += [wrapped[0] for wrapped in e.failures.values()]
        stack += [e.__cause__, e.__context__]
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    if free is not None and (free < (needed or 0) or free < (1 << 20)):
        return os.strerror(errno.ENOSPC)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def save_failure(final: str, tmp: str, root: str, exc: BaseException, needed: int | None,
                 latest: str | None, remove: bool = True) -> CheckpointRefused:
    """Remove the partial `tmp` of a failed save (rank 0; `remove`) and describe the failure in
    one line. Every rank builds the same description: whichever rank's reaches the console first
    (one line per run), it names the folder, the cause and the space needed and free."""
    cause = failure_cause(exc, root, needed)
    if remove and os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("removed %s, the partial checkpoint of the failed save", tmp)
    try:
        free = human(shutil.disk_usage(root).free)
    except OSError:
        free = "unknown"
    need = human(needed) if needed else "unknown"
    kept = f"latest still names {os.path.basename(latest)}" if latest else "no earlier checkpoint"
    return CheckpointRefused(
        f"checkpoint save failed: {final} could not be written ({cause}); its partial folder was removed, "
        f"{kept}; one checkpoint needs about {need}, {free} free in {root}. Free space, then rerun "
        "with --resume auto")
