"""The one error a checkpoint command stops with when it refuses to read, write or remove
something: its message is a single line that names the file or folder, the cause and the way
on. The CLIs print it as `error: ...` and exit 2; `train` does the same on every rank."""
from __future__ import annotations

from .errors import UserError


class CheckpointRefused(UserError):
    """A checkpoint file or folder a command will not read, write or remove (one-line reason)."""
