"""Training stall per checkpoint, `checkpoint.async=true` vs the synchronous save, and the step
time while a background write runs.

One run on this machine. Per model, one `torch.distributed.run --standalone --nproc_per_node=N`
job (`--nproc`, default 2; gloo and one thread per rank on the CPU, NCCL and one GPU per rank
with `--device cuda`) builds a routed DiT on the chosen engine (default FSDP2), takes
one training step (so the optimizer holds its moments), and then, interleaved, `--reps` times:

  sync:  `CheckpointManager.save` with async off: the loop waits for the whole write (the stall);
  async: `CheckpointManager.save` with async on: the call returns once the state dict is
         taken and the staging copy and the background write are started; then `--steps`
         training steps run while the write is in flight, each waiting before its optimizer step
         for the copy if it is still running (`wait_for_staging`, as the training loop does);
         then `finish()` waits for the rest and commits. The stall = the save call + those
         waits;
  plain: `--steps` training steps with no write running (the step-time baseline).

Every save goes through the real checkpoint code (folder, DCP shards, trainer files, meta.json,
rename, `latest`, pruning), into a scratch folder on the local disk. Times are of the slowest
rank (a collective save is as slow as its slowest rank), medians over the repetitions:

  stall ratio     = async stall / sync stall                  (goal <= 0.1)
  step slowdown   = median step time while a write runs / median step time without
  time lost       = what a save costs the run in all: sync, its stall; async, its stall plus the
                    extra time of the steps that ran during the write (steps during the write per
                    rank and save x (median step during the write - median step without))

A step is counted as "during the write" only if the write was still in flight when it began.

    python benchmarks/async_checkpoint.py [--models DiT-S/2,DiT-B/2] [--reps 3] [--steps 4]
    python benchmarks/async_checkpoint.py --device cuda --nproc 1 --models DiT-B/2,DiT-XL/2   # a GPU

Prints a table and writes benchmarks/results/async_checkpoint.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from common import RESULTS_DIR, command_line, machine_info, median, run_torchrun, write_json
from engines import ENGINES, build, make_batch, train_step

GOAL_STALL_RATIO = 0.1


def worker(args) -> None:
    import torch.distributed as dist

    from dtr_scale.checkpoint import CheckpointManager
    from dtr_scale.parallel.process_group import barrier, init_distributed, local_device, shutdown

    torch.set_num_threads(1)
    env = init_distributed()
    device = local_device(env) if args.device == "cuda" else torch.device("cpu")
    engine = build(args, ENGINES[args.engine], env, device=device)
    gen = torch.Generator().manual_seed(env.rank)
    batch = make_batch(args, args.batch, gen, device)
    train_step(engine, batch)
    engine.update_ema(0.9999)
    sync = CheckpointManager(os.path.join(args.scratch, "sync"), 1, env)
    asyn = CheckpointManager(os.path.join(args.scratch, "async"), 1, env, async_save=True)
    fingerprint = {"model": {}, "routing": {}, "objective": {}}
    times = {"sync_stall": [], "async_stall": [], "async_call": [], "staging_wait": [], "async_finish": [],
             "step_plain": [], "step_during_write": [], "steps_after_write": []}
    waits: list[float] = []

    def wait_for_staging() -> None:
        t0 = time.perf_counter()
        asyn.wait_for_staging()
        waits.append(time.perf_counter() - t0)

    def timed(fn) -> float:
        barrier()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0  # no barrier after: each rank's own wait

    step = 0
    for _ in range(args.reps):
        step += 1
        times["sync_stall"].append(timed(lambda: sync.save(step, engine, {"step": step}, "", fingerprint)))
        barrier()
        times["step_plain"] += [train_step(engine, batch) for _ in range(args.steps)]
        times["async_call"].append(timed(lambda: asyn.save(step, engine, {"step": step}, "", fingerprint)))
        after, waits[:] = 0, []
        for _ in range(args.steps):
            in_flight = not asyn.pending.future.done()
            seconds = train_step(engine, batch, wait_for_staging)
            if in_flight:
                times["step_during_write"].append(seconds)
            else:
                after += 1
        times["staging_wait"].append(sum(waits))
        times["async_stall"].append(times["async_call"][-1] + times["staging_wait"][-1])
        times["steps_after_write"].append(after)
        times["async_finish"].append(timed(asyn.finish))
    nbytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(args.scratch, "sync"))
                 for f in fs)
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, times)
    if env.rank == 0:
        slowest = {k: [max(r[k][i] for r in gathered) for i in range(len(times[k]))]
                   for k in ("sync_stall", "async_stall", "async_call", "staging_wait", "async_finish")}
        steps = {k: [t for r in gathered for t in r[k]] for k in ("step_plain", "step_during_write")}
        write_json(args.result, {"model": args.model, "engine": args.engine, "checkpoint_mib": nbytes / 2**20,
                                 "times_s": {**slowest, **steps},
                                 "steps_after_write": [r["steps_after_write"] for r in gathered]})
    engine = sync = asyn = None  # freed before the group goes (see process_group.shutdown)
    shutdown()


def run_model(args, model: str) -> dict:
    flags = ["--worker", "--model", model, "--engine", args.engine, "--device", args.device,
             "--batch", str(args.batch), "--input-size", str(args.input_size), "--channels", str(args.channels),
             "--reps", str(args.reps), "--steps", str(args.steps)]
    data = run_torchrun(__file__, flags, args.nproc, args.timeout)
    return {"model": model, **data} if "error" in data else data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="DiT-S/2,DiT-B/2")
    p.add_argument("--engine", default="fsdp", choices=list(ENGINES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one GPU per rank (NCCL)")
    p.add_argument("--nproc", type=int, default=2, help="ranks (on CUDA at most the GPUs there are)")
    p.add_argument("--batch", type=int, default=1, help="per-rank batch of each training step")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="training steps after each async save (and plain)")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per model job")
    p.add_argument("--out", default=str(RESULTS_DIR / "async_checkpoint.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args) or 0
    t0 = time.perf_counter()
    rows = [run_model(args, model) for model in args.models.split(",")]
    backend = "gloo" if args.device == "cpu" else "nccl"
    print(f"{args.engine}, {args.nproc} rank(s) on {args.device}, {backend}, {args.reps} interleaved repetitions, "
          "slowest rank, medians\n")
    print("| model | checkpoint (MiB) | sync stall (s) | async stall (s) = save call + wait for the copy | stall ratio "
          "| rest of write at finish (s) | step (s) | step during write (s) | step slowdown | time lost per save, "
          "sync / async (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | error: {row['error']} | | | | | | | | |")
            continue
        t = row["times_s"]
        m = {k: median(v) if v else float("nan") for k, v in t.items()}
        row["median_s"] = m
        row["stall_ratio"] = m["async_stall"] / m["sync_stall"]
        row["step_slowdown"] = m["step_during_write"] / m["step_plain"]
        during_per_save = len(t["step_during_write"]) / (args.reps * args.nproc)
        row["lost_s"] = {"sync": m["sync_stall"],
                         "async": m["async_stall"] + during_per_save * (m["step_during_write"] - m["step_plain"])}
        row["meets_goal"] = row["stall_ratio"] <= GOAL_STALL_RATIO
        print(f"| {row['model']} | {row['checkpoint_mib']:.0f} | {m['sync_stall']:.3f} | {m['async_stall']:.3f} = "
              f"{m['async_call']:.3f} + {m['staging_wait']:.3f} | "
              f"{row['stall_ratio']:.3f} | {m['async_finish']:.3f} | {m['step_plain']:.3f} | "
              f"{m['step_during_write']:.3f} ({len(t['step_during_write'])} steps) | {row['step_slowdown']:.2f} | "
              f"{row['lost_s']['sync']:.2f} / {row['lost_s']['async']:.2f} |")
    wall = time.perf_counter() - t0
    write_json(args.out, {"command": command_line(), "machine": machine_info(), "wall_s": round(wall, 1),
                          "engine": args.engine, "device": args.device, "nproc": args.nproc, "reps": args.reps,
                          "steps": args.steps,
                          "goal_stall_ratio": GOAL_STALL_RATIO, "models": rows})
    print(f"\nwrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
