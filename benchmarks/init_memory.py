"""Peak memory per rank while building a large DiT, with and without `parallel.meta_init`.

For each engine (FSDP2, DeepSpeed ZeRO-3) and each init path (eager: the whole model on every rank
first; meta: meta device / zero.Init), 2 CPU ranks under torchrun build DiT-XL/2 + DTR and wrap it
in the engine. A sampler thread reads each rank's resident set (/proc/self/statm) every 2 ms; the
build's peak is the highest reading minus the reading before the build started. It is compared
with what the rank must hold anyway once training runs: its shard of the fp32 parameters plus
AdamW's two moments (3 × shard bytes). Goal: meta-init peak ≤ 1.3 × that.

    python benchmarks/init_memory.py [--model DiT-XL/2] [--nproc 2]

Prints a table and writes benchmarks/results/init_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time

ENGINES = {"fsdp": ["parallel.engine=fsdp"], "zero3": ["parallel.engine=deepspeed", "parallel.zero_stage=3"]}
GOAL = 1.3


class RssSampler:
    """Highest resident set seen while the context is open, above the level at its start."""

    def __init__(self, period: float = 0.002):
        self.period = period
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period)

    def __enter__(self):
        self.start = self.rss()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def worker(args) -> None:
    """One rank: build the objective and the engine, report the build's peak and the shard size."""
    import torch

    import torch.distributed as dist

    from dtr_scale.config import load_config
    from dtr_scale.parallel.process_group import init_distributed, shutdown
    from dtr_scale.train import build_training

    env = init_distributed()
    torch.set_num_threads(1)
    cfg = load_config(None, [f"model.name={args.model}", f"train.global_batch_size={2 * env.world_size}",
                             f"parallel.meta_init={args.meta}", *ENGINES[args.engine]])
    with RssSampler() as sampler:
        _, engine = build_training(cfg, env, torch.device("cpu"), latent_shape=(4, 32, 32), num_classes=1000)
    shard = sum(t.numel() * t.element_size() for t in engine.local_parameters())
    row = {"rank": env.rank, "build_peak_bytes": sampler.growth, "param_shard_bytes": shard,
           "params_plus_adam_bytes": 3 * shard}
    rows = [None] * env.world_size
    dist.all_gather_object(rows, row)
    if env.rank == 0:
        with open(args.result, "w") as f:
            json.dump({"ranks": rows}, f)
    del engine  # freed before the group goes: see process_group.shutdown
    shutdown()


def launch(args, engine: str, meta: bool) -> list[dict]:
    from common import run_torchrun

    flags = ["--worker", "--engine", engine, "--meta", str(meta).lower(), "--model", args.model]
    data = run_torchrun(__file__, flags, args.nproc, timeout=1800)
    if "error" in data or data["exit_code"]:
        raise SystemExit(f"{engine} meta={meta} failed ({data.get('error', data['exit_code'])}):\n"
                         f"{data.get('stderr_tail', data.get('teardown_stderr_tail', ''))[-4000:]}")
    return data["ranks"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiT-XL/2")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="fsdp", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--meta", default="true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)  # given by run_torchrun, unused
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from common import RESULTS_DIR, command_line, machine_info, verdict, write_json

    info = machine_info()
    rows = []
    for engine in ENGINES:
        for meta in (False, True):
            for r in launch(args, engine, meta):
                rows.append({"engine": engine, "meta_init": meta, **r,
                             "ratio": round(r["build_peak_bytes"] / r["params_plus_adam_bytes"], 3)})
    gib = 2**30
    print(f"\n{args.model} + DTR, {args.nproc} CPU ranks: peak RSS growth while building (objective + engine) "
          f"vs the rank's fp32 parameter shard + AdamW moments (3 × shard)")
    print(f"{'engine':7s} {'init':6s} {'rank':>4s} {'build peak GiB':>15s} {'shard+Adam GiB':>15s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['engine']:7s} {'meta' if r['meta_init'] else 'eager':6s} {r['rank']:4d} "
              f"{r['build_peak_bytes'] / gib:15.3f} {r['params_plus_adam_bytes'] / gib:15.3f} {r['ratio']:6.3f}")
    checks = {}
    for engine in ENGINES:
        worst = max(r["ratio"] for r in rows if r["engine"] == engine and r["meta_init"])
        checks[f"{engine}_meta_build_peak_ratio"] = {"value": worst, "target": f"<= {GOAL}", "pass": worst <= GOAL}
        print(f"{engine}: meta-init build peak = {worst:.3f} × shard+Adam (worst rank), target <= {GOAL}: "
              f"{verdict(worst <= GOAL)}")
    out = args.out or str(RESULTS_DIR / "init_memory.json")
    result = {"benchmark": "init_memory", "command": command_line(), "machine": info, "model": args.model,
              "nproc": args.nproc, "rows": rows, "checks": checks}
    print(f"wrote {write_json(out, result)}")


if __name__ == "__main__":
    main()
