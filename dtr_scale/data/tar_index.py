"""Where each sample's bytes lie in a tar shard, found from the tar headers.

`data.mode=global` reads single samples by position, which a streaming tar reader cannot do. It
reads the positions from the sample index (`sample_index`), which prep writes from the member
lists below as it writes each shard; for datasets written before that, the index is built once
from the headers (reading each shard's 512-byte member headers and seeking over the payloads,
see benchmarks/RESULTS.md for the cost). Samples are numbered 0..N-1: shard by shard as the
manifest lists them, members in tar order within a shard.
"""
from __future__ import annotations

import os
import tarfile

from .shard_format import CLASS_FIELD, IMAGE_FIELD, DataError

NO_MEMBER = (-1, 0)  # (offset, size) of a member the sample does not have (no stored image)


def _split_member(name: str) -> tuple[str, str]:
    """'dir/000001_000002.moments.npy' -> ('dir/000001_000002', 'moments.npy') (WebDataset's rule:
    the key ends at the first dot of the base name)."""
    head, _, base = name.rpartition("/")
    stem, dot, field = base.partition(".")
    return (f"{head}/{stem}" if head else stem), field if dot else ""


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """'LEN key=value\\n' records of a pax extended header."""
    out, i = {}, 0
    while i < len(data) and data[i:i + 1] not in (b"", b"\0"):
        length = int(data[i:data.index(b" ", i)])
        key, _, value = data[data.index(b" ", i) + 1:i + length - 1].partition(b"=")
        out[key] = value
        i += length
    return out


def _scan_headers(path: str) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each regular member, reading only the headers.

    Several times faster than `tarfile` (which builds a TarInfo per member): one 4 KiB positioned
    read usually covers a small member's headers and the next one's. Understands ustar headers
    and the pax extended headers TarWriter puts before each member; returns None for anything
    else (GNU long names, sparse files), and `tarfile` then does it."""
    out, pending = [], {}
    fd = os.open(path, os.O_RDONLY)
    try:
        buf, buf_at, offset = b"", 0, 0

        def block(at: int, size: int = 512) -> bytes:
            nonlocal buf, buf_at
            if not (buf_at <= at and at + size <= buf_at + len(buf)):
                buf, buf_at = os.pread(fd, max(_READ, size), at), at
            return buf[at - buf_at:at - buf_at + size]

        while True:
            header = block(offset)
            if len(header) < 512 or header == _ZERO_BLOCK:
                return out
            if header[257:262] != b"ustar":
                return None
            kind = header[156:157]
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
            data_offset, offset = offset + 512, offset + 512 + (size + 511) // 512 * 512
            if kind == b"x":  # applies to the next member only; TarWriter's hold just mtime/owner
                records = block(data_offset, size)
                pending = _pax_records(records) if b"path=" in records or b"size=" in records else {}
                continue
            if kind in (b"g", b"5", b"2", b"1"):
                pending = {}  # global header, directory, links: nothing to index
                continue
            if kind not in (b"0", b"\0"):
                return None
            name = header[:100].split(b"\0", 1)[0]
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
            name = pending.get(b"path", name)
            size = int(pending.get(b"size", size))
            out.append((name.decode("utf-8"), data_offset, size))
            offset = data_offset + (size + 511) // 512 * 512
            pending = {}
    finally:
        os.close(fd)


_READ = 4096
_ZERO_BLOCK = bytes(512)


def _tarfile_members(path: str) -> list[tuple[str, int, int]]:
    with tarfile.open(path, mode="r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


def tar_members(path: str) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member of one tar, in tar order."""
    try:
        members = _scan_headers(path)
        return _tarfile_members(path) if members is None else members
    except (tarfile.TarError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"shard {path} cannot be indexed ({exc}); re-copy it or rerun prep") from None


def samples_from_members(members, field: str, path: str) -> list[tuple[str, int, int, int, int, int, int]]:
    """(key, data offset, data size, cls offset, cls size, image offset, image size) per sample,
    tar order, from the shard's member list (`tar_members`, or the list prep recorded when it
    wrote the shard); the image is NO_MEMBER for a sample without one (prep without
    --store-images)."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    for name, offset, size in members:
        key, member_field = _split_member(name)
        samples.setdefault(key, {})[member_field] = (int(offset), int(size))
    rows = []
    for key, fields in samples.items():
        if field not in fields or CLASS_FIELD not in fields:
            raise DataError(f"sample {key!r} in shard {path} lacks {field!r} or {CLASS_FIELD!r} "
                            f"(fields present: {sorted(fields)})")
        rows.append((key, *fields[field], *fields[CLASS_FIELD], *fields.get(IMAGE_FIELD, NO_MEMBER)))
    return rows


def index_shard(path: str, field: str) -> list[tuple[str, int, int, int, int, int, int]]:
    """`samples_from_members`'s rows for one shard, found by reading its headers."""
    return samples_from_members(tar_members(path), field, path)
