"""Checkpoint save and load time per engine, relative to a plain torch.save / torch.load.

One run on this machine. Each engine (DDP, DeepSpeed ZeRO-1/2/3, FSDP2) builds a routed DiT in
its own `torch.distributed.run --standalone --nproc_per_node=2` job (gloo, one thread per rank),
takes one training step (so the optimizer holds its moments) and then, interleaved, `--reps`
times each:

  save: the engine's canonical state written with DCP, every rank its part
        (`dcp.save(engine.state_dict())`, what a checkpoint does), vs
        baseline: rank 0 `torch.save`s the same state, consolidated to full tensors beforehand
        (not timed), into one file.
  load: `engine.state_template()` + `dcp.load` + `engine.load_state_dict` (resharding included), vs
        baseline: rank 0 `torch.load`s that one file.

Times are medians over the repetitions of the slowest rank (a collective checkpoint is as slow
as its slowest rank); the ratio is canonical / baseline.

    python benchmarks/checkpoint.py [--model DiT-S/2] [--reps 3] [--engines ddp,fsdp,...]

Prints a table and writes benchmarks/results/checkpoint.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

import torch

from common import RESULTS_DIR, command_line, machine_info, median, run_torchrun, write_json
from engines import ENGINES, build, make_batch, train_step

NPROC = 2


def consolidated(state):
    """The same structure with full plain tensors (DTensors gathered): what one torch.save holds."""
    from torch.distributed.tensor import DTensor

    if isinstance(state, dict):
        return {k: consolidated(v) for k, v in state.items()}
    if isinstance(state, DTensor):
        return state.full_tensor()
    return state


def timed(fn) -> float:
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def worker(args) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from dtr_scale.parallel.process_group import init_distributed, shutdown

    torch.set_num_threads(1)
    env = init_distributed()
    engine = build(args, ENGINES[args.worker], env)
    train_step(engine, make_batch(args, args.batch, torch.Generator().manual_seed(env.rank)))
    engine.update_ema(0.9999)
    root = args.scratch
    plain = consolidated(engine.state_dict())
    plain_file = os.path.join(root, "plain.pt")
    nbytes = sum(t.numel() * t.element_size() for t in _tensors(plain))
    times = {"save": [], "save_baseline": [], "load": [], "load_baseline": []}

    def save():
        dcp.save(engine.state_dict(), checkpoint_id=os.path.join(root, "state"))

    def load():
        state = engine.state_template()
        dcp.load(state, checkpoint_id=os.path.join(root, "state"))
        engine.load_state_dict(state)

    def save_plain():
        if env.rank == 0:
            torch.save(plain, plain_file)

    def load_plain():
        if env.rank == 0:
            torch.load(plain_file, map_location="cpu", weights_only=False)

    for _ in range(args.reps):
        times["save"].append(timed(save))
        times["save_baseline"].append(timed(save_plain))
        times["load"].append(timed(load))
        times["load_baseline"].append(timed(load_plain))
        if env.rank == 0:
            shutil.rmtree(os.path.join(root, "state"), ignore_errors=True)
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, times)
    if env.rank == 0:
        slowest = {k: [max(r[k][i] for r in gathered) for i in range(args.reps)] for k in times}
        write_json(args.result, {"engine": args.worker, "state_mib": nbytes / 2**20, "times_s": slowest})
    engine = None  # freed before the group goes (see process_group.shutdown); the closures share it
    shutdown()


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)


def run_engine(args, name: str) -> dict:
    flags = ["--worker", name, "--model", args.model, "--batch", str(args.batch), "--input-size",
             str(args.input_size), "--channels", str(args.channels), "--reps", str(args.reps)]
    data = run_torchrun(__file__, flags, NPROC, args.timeout)
    return {"engine": name, **data} if "error" in data else data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--batch", type=int, default=2, help="per-rank batch of the one training step")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--timeout", type=int, default=600, help="seconds per engine job")
    p.add_argument("--out", default=str(RESULTS_DIR / "checkpoint.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args) or 0
    t0 = time.perf_counter()
    rows = [run_engine(args, name) for name in args.engines.split(",")]
    print(f"{args.model}, {NPROC} ranks, gloo, medians of {args.reps} interleaved repetitions (slowest rank)\n")
    print("| engine | state (MiB) | save (s) | torch.save (s) | save ratio | load (s) | torch.load (s) | load ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['engine']} | error: {row['error']} | | | | | | |")
            continue
        m = {k: median(v) for k, v in row["times_s"].items()}
        row["median_s"] = m
        row["save_ratio"] = m["save"] / m["save_baseline"]
        row["load_ratio"] = m["load"] / m["load_baseline"]
        print(f"| {row['engine']} | {row['state_mib']:.1f} | {m['save']:.3f} | {m['save_baseline']:.3f} | "
              f"{row['save_ratio']:.2f} | {m['load']:.3f} | {m['load_baseline']:.3f} | {row['load_ratio']:.2f} |")
    wall = time.perf_counter() - t0
    write_json(args.out, {"command": command_line(), "machine": machine_info(), "wall_s": round(wall, 1),
                          "model": args.model, "nproc": NPROC, "reps": args.reps, "engines": rows})
    print(f"\nwrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
