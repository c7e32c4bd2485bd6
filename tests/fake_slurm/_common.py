"""Shared bits of the fake SLURM tools (tests only): call log, host list, process trees.

Every fake tool appends one line per call to $FAKE_SLURM_DIR/calls.log ("<tool> <args>"), so a
test can tell whether sbatch was reached. The fake nodes are named node01, node02, ...; they all
run on this machine, so the tests set MASTER_ADDR=127.0.0.1 (the launch scripts honour it).
"""
from __future__ import annotations

import os
import re
import shlex
import signal


def log_call(tool: str, args: list[str]) -> None:
    root = os.environ.get("FAKE_SLURM_DIR")
    if not root:
        return
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "calls.log"), "a") as f:
        f.write(f"{tool} {shlex.join(args)}\n")


def fake_nodelist(nnodes: int) -> str:
    return f"node[01-{nnodes:02d}]" if nnodes > 1 else "node01"


def expand(nodelist: str) -> list[str]:
    """Only the forms the fake sbatch produces: 'node01' and 'node[01-NN]'."""
    m = re.fullmatch(r"([A-Za-z]+)\[(\d+)-(\d+)\]", nodelist.strip())
    if m:
        prefix, lo, hi = m.group(1), m.group(2), m.group(3)
        return [f"{prefix}{n:0{len(lo)}d}" for n in range(int(lo), int(hi) + 1)]
    return [h for h in nodelist.split(",") if h]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process and all its descendants (torchrun puts workers in new sessions, so a
    process-group kill would miss them)."""
    kids = _children()
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo += kids.get(p, [])
    for p in found:
        try:
            os.kill(p, sig)
        except OSError:
            pass
