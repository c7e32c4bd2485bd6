"""Helpers shared by the benchmark scripts: machine description, medians, byte counting, JSON out.

Benchmarks compare variants measured in ONE run on the same machine, so these
helpers are about making such comparisons fair: interleaved repetitions, medians (robust to the
other users of a shared CPU), and counting memory as unique storages (views of one flat buffer,
as ZeRO and FSDP make, must not be counted twice).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, load at start, library versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line() -> str:
    return " ".join([os.path.basename(sys.executable)] + sys.argv)


def step_parser(description: str, out_name: str, reps: int = 5, channels: bool = True):
    """The options every side-by-side step benchmark takes (model, batch, latent shape, rounds,
    threads, result file); a script adds its own after this."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256 px, 16 × 16 tokens)")
    if channels:
        p.add_argument("--channels", type=int, default=4)
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS_DIR / out_name))
    return p


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def peak_rss_bytes() -> int:
    """Peak resident set of this process (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    """(data_ptr, nbytes) of the storage under `t`; None for tensors without one (meta, empty)."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if s.nbytes() == 0:
        return None
    return s.data_ptr(), s.nbytes()


def unique_storage_bytes(tensors: Iterable[torch.Tensor], exclude: set | None = None) -> int:
    """Sum of the bytes of the distinct storages under `tensors` (each storage counted once),
    skipping storages whose key is in `exclude`."""
    seen: set = set()
    for t in tensors:
        key = storage_key(t)
        if key is None or key in seen or (exclude and key in exclude):
            continue
        seen.add(key)
    return sum(nbytes for _, nbytes in seen)


def _system_busy_seconds() -> float | None:
    """CPU seconds all processes spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ContentionMeter:
    """Share of the machine's cores that OTHER processes kept busy during a timed interval.

    The machine is shared: a benchmark sample taken while someone else's tests run is slower for
    reasons that have nothing to do with the code measured. Recording this per sample lets the
    reader (and the report) see how much of the noise is contention. Resolution: one clock tick
    (10 ms), so it is only meaningful for samples of a second or more.
    """

    def __enter__(self):
        self.busy0, self.own0, self.wall0 = _system_busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy1 = _system_busy_seconds()
        wall = time.perf_counter() - self.wall0
        own = time.process_time() - self.own0
        if self.busy0 is None or busy1 is None or wall <= 0:
            self.others = None
        else:
            self.others = max(0.0, (busy1 - self.busy0 - own) / (wall * (os.cpu_count() or 1)))
        return False


def write_json(path: str | Path, data: dict) -> Path:
    """Atomic write: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def run_torchrun(script: str, flags: list[str], nproc: int, timeout: float) -> dict:
    """Run `script` on `nproc` CPU ranks (`torch.distributed.run --standalone`, gloo, one thread
    each) with `--result FILE --scratch DIR` added to `flags`: the worker writes its JSON result to
    FILE and may use DIR, which is removed afterwards. Returns that result plus "job_wall_s" and
    "exit_code" (and the stderr tail when a rank failed after writing it, e.g. in teardown), or
    {"error", "stderr_tail"} when no result came: a failure or timeout is recorded, not fatal."""
    with tempfile.TemporaryDirectory() as scratch:
        result = os.path.join(scratch, "result.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               os.path.abspath(script), *flags, "--result", result, "--scratch", scratch]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        wall = time.perf_counter() - t0
        if not os.path.exists(result):
            return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        with open(result) as f:
            data = json.load(f)
    data["job_wall_s"] = round(wall, 1)
    data["exit_code"] = proc.returncode
    if proc.returncode != 0:
        data["teardown_stderr_tail"] = proc.stderr[-1500:]
    return data


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
