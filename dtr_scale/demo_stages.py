"""The demo's stage runner: one CLI step as a subprocess, its log, its progress, its time.

Each stage's output goes whole to `OUT/logs/<stage>.log`; the console gets one line per stage
with its progress (the training log line's `step N/M ... eta ...`), rewritten in place on a
terminal and repeated at most every `PLAIN_EVERY_S` seconds otherwise.

Times are the whole run's, across resumes: every pass of the demo over the same OUT records its
stages' seconds in `OUT/demo_times.json` (rewritten atomically every few seconds while a stage
runs, so a killed pass keeps what it spent), and `times` sums all passes. A rerun that finds a
stage already done spends a few seconds on it, and those count too: that is what the run cost.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

from .atomic import atomic_write_json

TIMES_FILE = "demo_times.json"
PLAIN_EVERY_S = 30.0
SAVE_EVERY_S = 5.0
_PROGRESS = re.compile(r"step \d+/\d+ \(\d+%\) elapsed \S+ eta \S+")


def load_times(out: str) -> dict:
    path = os.path.join(out, TIMES_FILE)
    if not os.path.isfile(path):
        return {"passes": []}
    with open(path) as f:
        return json.load(f)


class Stage:
    """Runs the demo's stages; `times` (stage -> seconds) and `wall_seconds()` span every pass."""

    def __init__(self, out: str, stream=None):
        self.out = out
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.state = load_times(out)
        self.current = {"stages": {}, "wall": 0.0}
        self.state["passes"].append(self.current)
        self.start = time.perf_counter()
        self._lock = threading.Lock()

    @property
    def passes(self) -> int:
        return len(self.state["passes"])

    @property
    def times(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for p in self.state["passes"]:
            for name, sec in p["stages"].items():
                total[name] = total.get(name, 0.0) + sec
        return total

    def wall_seconds(self) -> float:
        self.current["wall"] = time.perf_counter() - self.start
        return sum(p["wall"] for p in self.state["passes"])

    def save(self) -> None:
        with self._lock:
            self.current["wall"] = time.perf_counter() - self.start
            atomic_write_json(os.path.join(self.out, TIMES_FILE), self.state)

    def _say(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def run(self, name: str, args: list[str], nproc: int = 1) -> None:
        cmd = [sys.executable, "-m"]
        if nproc > 1:
            cmd += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
        cmd += args
        log_path = os.path.join(self.out, "logs", name.replace(" ", "_") + ".log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        env = dict(os.environ)
        if nproc > 1:
            env["OMP_NUM_THREADS"] = "1"  # several ranks on a small machine; one process picks its own
        self._say(f"[demo] {name}: {' '.join(cmd[1:])}", final=True)
        tic = time.perf_counter()
        last_plain = float("-inf")  # the first progress line shows at once
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                    bufsize=1)
            last_save = tic
            for line in proc.stdout:  # the child's lines as they come
                log.write(line)
                now = time.perf_counter()
                self.current["stages"][name] = now - tic
                if now - last_save > SAVE_EVERY_S:
                    self.save()
                    last_save = now
                found = _PROGRESS.search(line)
                if found and (self.tty or now - last_plain >= PLAIN_EVERY_S):
                    self._say(f"[demo] {name}: {found.group(0)}")
                    last_plain = now
            code = proc.wait()
        self.current["stages"][name] = time.perf_counter() - tic
        self.save()
        if code != 0:
            with open(log_path) as f:
                tail = f.read()[-3000:]
            if self.tty:
                self.stream.write("\n")
            raise SystemExit(f"[demo] {name} failed (exit {code}); log: {log_path}\n{tail}")
        self._say(f"[demo] {name}: done in {self.current['stages'][name]:.1f} s", final=True)
