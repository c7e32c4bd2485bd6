#!/usr/bin/env python3
"""Expand a SLURM host list (``gpu[001-003,7],cpu1``) into one hostname per line.

The sbatch scripts prefer ``scontrol show hostnames``; this is their fallback for containers and
login nodes without the SLURM client tools. Plain Python (no imports from dtr_scale, no torch) so
that it starts in milliseconds.

Usage: python launch/slurm/hostlist.py [NODELIST]     (default: $SLURM_JOB_NODELIST)
"""
from __future__ import annotations

import itertools
import os
import sys


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in host list {text!r}")
    parts.append(text[start:])
    return [p for p in (s.strip() for s in parts) if p]


def _expand_range(spec: str) -> list[str]:
    """'001-003,7' -> ['001', '002', '003', '7'] (zero padding kept from the lower bound)."""
    out = []
    for item in spec.split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {item!r} in host list")
            out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
        elif item.isdigit():
            out.append(item)
        else:
            raise ValueError(f"bad range item {item!r} in host list")
    return out


def _expand_one(pattern: str) -> list[str]:
    """One host pattern, possibly with several bracket groups ('r[1-2]n[3-4]')."""
    pieces: list[list[str]] = []
    rest = pattern
    while rest:
        open_at = rest.find("[")
        if open_at < 0:
            pieces.append([rest])
            break
        close_at = rest.index("]", open_at)
        pieces.append([rest[:open_at]])
        pieces.append(_expand_range(rest[open_at + 1:close_at]))
        rest = rest[close_at + 1:]
    return ["".join(combo) for combo in itertools.product(*pieces)]


def expand(nodelist: str) -> list[str]:
    hosts = [h for part in _split_top_level(nodelist.strip()) for h in _expand_one(part)]
    if not hosts:
        raise ValueError("empty host list")
    return hosts


def main(argv: list[str]) -> int:
    nodelist = argv[1] if len(argv) > 1 else os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist.strip():
        print("hostlist.py: no host list given and SLURM_JOB_NODELIST is empty", file=sys.stderr)
        return 2
    try:
        print("\n".join(expand(nodelist)))
    except ValueError as exc:
        print(f"hostlist.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
