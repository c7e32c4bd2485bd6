"""Which code produced a result: the package version and, inside a git checkout, its commit.

Recorded in every sample set's protocol and every evaluation report. Outside a checkout (an
installed wheel, a copied tree) or without git, the commit is None: never an error, since a
missing version must not stop an evaluation that took hours to sample for.
"""
from __future__ import annotations

import functools
import os
import subprocess

from . import __version__

_HERE = os.path.dirname(os.path.abspath(__file__))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", _HERE, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """{"package": "0.1.0", "git_commit": sha or None, "git_dirty": bool or None}."""
    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"package": __version__, "git_commit": commit, "git_dirty": dirty}
