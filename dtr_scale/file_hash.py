"""The content hash every part of the project records and checks: sha256 of a file, read in blocks
(data shards in the manifest, Inception weights, reference batches)."""
from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
