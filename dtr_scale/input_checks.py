"""Small checks every CLI runs on its arguments before any cost (model, process group, data).

Each raises `UserError` naming the flag or key, the value and the fix, so the CLIs and
launch/check_inputs.py (which calls the CLIs' own check functions) say the same thing. Number
checks are written so that NaN fails them (NaN compares false: `not (x >= 0)` refuses it where
`x < 0` would let it through).
"""
from __future__ import annotations

import math
import os

from .errors import UserError


def existing(path: str, flag: str, what: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"{flag} {path}: {what} not found (checked from {os.getcwd()})")


def writable_dir(path: str, flag: str) -> None:
    """`path` is (or can be created as) a directory we can write into."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: exists and is not a directory; pass a directory path")
    _writable_parent(path, flag)


def writable_file(path: str, flag: str) -> None:
    """`path` names a file we can (over)write: not a directory, its folder creatable."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a directory; pass a file path (e.g. {os.path.join(path, 'out')})")
    _writable_parent(os.path.dirname(os.path.abspath(path)), flag, shown=path)


def _writable_parent(path: str, flag: str, shown: str | None = None) -> None:
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {shown or path}: cannot create it, {parent} is not a writable directory")


def at_least(value, minimum, flag: str, note: str = "") -> None:
    if not (value >= minimum):
        raise UserError(f"{flag}: got {value!r}; must be >= {minimum}{note}")


def finite(value: float, flag: str, minimum: float | None = None, note: str = "") -> None:
    if not math.isfinite(value) or (minimum is not None and not (value >= minimum)):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise UserError(f"{flag}: got {value!r}; must be a finite number{bound}{note}")
