"""Atomic file writes, used for every file the project writes that a crash could leave half done.

The data goes to `.NAME.tmp-PID` beside the target, is fsynced, then renamed over the target
(`os.replace` is atomic on one filesystem): readers see the old file or the new one, never a
part. A killed writer leaves only a `.NAME.tmp-*` file, which the resumable jobs delete
(`stale_temp_files`).
"""
from __future__ import annotations

import glob
import json
import os
from typing import BinaryIO, Callable


def temp_name(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")


def stale_temp_files(path: str | os.PathLike) -> list[str]:
    """Temp files a killed writer of `path` left behind."""
    path = os.fspath(path)
    return glob.glob(os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-*"))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a binary temp file, then move it over `path`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
