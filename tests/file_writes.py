"""Which files a process tree writes, seen by `strace` (tests only).

`traced(cmd, log)` wraps a command so that every process it starts has its file-creating system
calls logged (seccomp-bpf filtering keeps the slowdown small); `written_files(log, under)` reads
the log back: the paths opened for writing or renamed onto, below `under`. Multi-node tests use it
to show that two nodes never write the same file. Attempts count as writes, failed ones too.
"""
from __future__ import annotations

import os
import re
import shutil

SYSCALLS = "openat,open,creat,rename,renameat,renameat2,link,linkat,symlink,symlinkat"
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT")
_OPEN = re.compile(r'\b(?:open|openat)\((?:AT_FDCWD|\d+), "([^"]+)", ([A-Z_|]+)|\bopen\("([^"]+)", ([A-Z_|]+)')
_CREAT = re.compile(r'\bcreat\("([^"]+)"')
_TARGET = re.compile(r'\b(?:rename|renameat2?|link|linkat|symlink|symlinkat)\(.*"([^"]+)"')


def strace_available() -> bool:
    return shutil.which("strace") is not None


def traced(cmd: list[str], log: str) -> list[str]:
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", f"trace={SYSCALLS}", "-o", log, *cmd]


def written_files(log: str, under: str) -> set[str]:
    """Absolute paths below `under` that the traced processes opened for writing or renamed onto."""
    root = os.path.realpath(under) + os.sep
    out = set()
    with open(log) as f:
        for line in f:
            paths = []
            m = _OPEN.search(line)
            if m:
                path, flags = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
                if any(flag in flags.split("|") for flag in _WRITE_FLAGS):
                    paths.append(path)
            elif (m := _CREAT.search(line)) or (m := _TARGET.search(line)):
                paths.append(m.group(1))
            for p in paths:
                p = os.path.realpath(p)
                if p.startswith(root):
                    out.add(p)
    return out
