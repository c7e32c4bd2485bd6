"""Per-rank memory and step time of the parallel engines, activation checkpointing, and EMA cost.

One run on this machine. Each engine (DDP, DeepSpeed ZeRO-1/2/3, FSDP2) trains a routed DiT for a
few steps in its own `torch.distributed.run --standalone --nproc_per_node=2` job (gloo, one
thread per rank), with a timeout. Measured per rank:

  (a) bytes the rank actually holds for parameters, fp32 master copies and optimizer state:
      the distinct storages under the module's local tensors (`to_local()` of FSDP2 DTensors,
      `ds_tensor` under ZeRO-3, the flat bit16 buffers under ZeRO-1/2), the optimizer's own
      parameters (DeepSpeed's fp32 partitions) and its state tensors; plus the EMA and peak RSS.
      Target: ZeRO-3 and FSDP hold <= 1.10 x (DDP's bytes / N).
  (b) median step time (forward + backward + engine.step).
  (d) EMA update time as a fraction of the step (update included). Target <= 3 %.

Then, single process (1 thread), activation checkpointing off vs on (`checkpointing` 0.0 vs 1.0):

  (c) activation memory = unique storage bytes saved for backward (saved_tensors_hooks,
      parameters excluded) and the interleaved median step time.
      Target: >= 50 % less activation memory for <= 35 % more step time.

    python benchmarks/engines.py [--model DiT-S/2] [--batch 4] [--steps 5] [--ckpt-batch 8]

Prints a table and writes benchmarks/results/engines.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from common import (RESULTS_DIR, command_line, machine_info, median, peak_rss_bytes, run_torchrun, storage_key,
                    unique_storage_bytes, verdict, write_json)

ENGINES = {
    "ddp": ["parallel.engine=ddp"],
    "zero1": ["parallel.engine=deepspeed", "parallel.zero_stage=1"],
    "zero2": ["parallel.engine=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.engine=deepspeed", "parallel.zero_stage=3"],
    "fsdp": ["parallel.engine=fsdp"],
}
NPROC = 2
TARGETS = {"sharded_vs_ddp_over_n": 1.10, "ckpt_mem_saving": 0.50, "ckpt_time_cost": 0.35, "ema_fraction": 0.03}
EMA_DECAY = 0.9999


def build(args, overrides, env, checkpointing=0.0, device=None):
    """Config -> routed DiT (same weights on every rank) -> objective -> engine, by train.py's
    builder, on `device` (default the CPU)."""
    from dtr_scale.config import load_config
    from dtr_scale.train import build_training

    cfg = load_config(None, [f"model.name={args.model}", "train.precision=fp32", "model.routing.sharing_ratio=0.8",
                             f"model.checkpointing={checkpointing}",
                             f"train.global_batch_size={args.batch * env.world_size}", *overrides])
    latent_shape = (args.channels, args.input_size, args.input_size)
    return build_training(cfg, env, device or torch.device("cpu"), latent_shape, num_classes=1000)[1]


def make_batch(args, batch_size, gen, device=None):
    n, c, s = batch_size, args.channels, args.input_size
    batch = (torch.randn(n, c, s, s, generator=gen), torch.randint(0, 1000, (n,), generator=gen),
             torch.randint(0, 1000, (n,), generator=gen), torch.randn(n, c, s, s, generator=gen))
    return tuple(t.to(device) for t in batch) if device is not None else batch


def train_step(engine, batch, before_update=None) -> float:
    """Seconds of one step; `before_update` runs between backward and the optimizer step, where
    the training loop waits for a background checkpoint's staging copy."""
    t0 = time.perf_counter()
    loss, _ = engine.module(*batch)
    engine.backward(loss)
    if before_update is not None:
        before_update()
    engine.step()
    if batch[0].is_cuda:
        torch.cuda.synchronize()  # the step's kernels are queued: time them, not their launch
    return time.perf_counter() - t0


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def held_bytes(engine) -> dict:
    """What this rank holds: module parameters, optimizer master copies, optimizer state, EMA.

    Distinct storages only: ZeRO and FSDP make parameters views of flat buffers, and DeepSpeed
    ZeRO-3 in fp32 aliases its fp32 partition to the module's partition (no second copy).
    """
    params = list(engine.objective.parameters())
    if engine.name == "deepspeed":
        base = engine.ds.optimizer.optimizer  # the torch AdamW inside the ZeRO optimizer
        module = [p.ds_tensor if hasattr(p, "ds_tensor") else p.data for p in params]
    else:
        base = engine.optimizer
        module = [_local(p).data for p in params]
    master = [_local(p).data for g in base.param_groups for p in g["params"]]
    state = [_local(v) for s in base.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    module_keys = {storage_key(t) for t in module} - {None}
    master_keys = {storage_key(t) for t in master} - {None}
    out = {
        "params": unique_storage_bytes(module),
        "master_copy": unique_storage_bytes(master, exclude=module_keys),
        "optimizer_state": unique_storage_bytes(state, exclude=module_keys | master_keys),
        "ema": unique_storage_bytes(engine.ema.shadow),
        "peak_rss": peak_rss_bytes(),
    }
    out["params_plus_optimizer"] = out["params"] + out["master_copy"] + out["optimizer_state"]
    return out


def engine_worker(args) -> None:
    """Runs on every rank under torch.distributed.run; rank 0 writes the gathered result."""
    import torch.distributed as dist

    from dtr_scale.parallel.process_group import init_distributed, shutdown

    torch.set_num_threads(1)  # 2 ranks on 2 cores
    env = init_distributed()
    engine = build(args, ENGINES[args.worker], env)
    gen = torch.Generator().manual_seed(1000 + env.rank)
    steps, emas = [], []
    for i in range(args.warmup + args.steps):
        batch = make_batch(args, args.batch, gen)
        dist.barrier()  # start together, so a step's time is not another rank's lateness
        dt = train_step(engine, batch)
        t0 = time.perf_counter()
        engine.update_ema(EMA_DECAY)
        ema = time.perf_counter() - t0
        if i >= args.warmup:
            steps.append(dt)
            emas.append(ema)
    mine = {"rank": env.rank, "step_s": steps, "ema_s": emas, "bytes": held_bytes(engine)}
    gathered = [None] * env.world_size
    dist.all_gather_object(gathered, mine)
    if env.rank == 0:
        write_json(args.result, {"engine": args.worker, "world_size": env.world_size, "ranks": gathered})
    del engine  # freed before the group goes: see process_group.shutdown
    shutdown()


def run_engine(args, name: str) -> dict:
    """One torchrun job for one engine; a failure or timeout is recorded, not fatal."""
    # Rank 0 writes its result before tearing down, so a crash in teardown would not void the
    # measurements; it is recorded all the same.
    data = run_torchrun(__file__, ["--worker", name, *worker_flags(args)], NPROC, args.timeout)
    return {"engine": name, **data} if "error" in data else data


def worker_flags(args) -> list[str]:
    return ["--model", args.model, "--batch", str(args.batch), "--input-size", str(args.input_size),
            "--channels", str(args.channels), "--steps", str(args.steps), "--warmup", str(args.warmup)]


def checkpointing_worker(args) -> None:
    """Single process: activation bytes saved for backward, and interleaved step times,
    with activation checkpointing on no block vs on every block."""
    from dtr_scale.parallel.process_group import DistEnv

    # One thread, like each rank above: with two threads on two shared cores every parallel region
    # waits for a scheduler slice whenever someone else runs, which swamps the ratio measured.
    torch.set_num_threads(1)
    engines = {f: build(args, ["parallel.engine=single"], DistEnv(), checkpointing=f) for f in (0.0, 1.0)}
    gen = torch.Generator().manual_seed(0)
    saved = {}
    for frac, engine in engines.items():
        batch = make_batch(args, args.ckpt_batch, gen)
        param_keys = {storage_key(p) for p in engine.objective.parameters()}
        keys: set = set()

        def pack(t):
            key = storage_key(t)
            if key is not None and key not in param_keys:
                keys.add(key)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = engine.module(*batch)
        engine.backward(loss)
        engine.step()
        saved[frac] = {"bytes": sum(n for _, n in keys), "storages": len(keys)}
    times = {f: [] for f in engines}
    for r in range(args.warmup + args.steps):
        batch = make_batch(args, args.ckpt_batch, gen)
        for frac in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            dt = train_step(engines[frac], batch)
            if r >= args.warmup:
                times[frac].append(dt)
    write_json(args.result, {"saved": {str(k): v for k, v in saved.items()},
                             "step_s": {str(k): v for k, v in times.items()}})


def run_checkpointing(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "checkpointing", "--result", result,
               *worker_flags(args), "--ckpt-batch", str(args.ckpt_batch)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {args.timeout} s"}
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        with open(result) as f:
            return json.load(f)


def summarize_engine(data: dict) -> dict:
    """Medians per rank; the step time of the job is the slowest rank's median."""
    ranks = sorted(data["ranks"], key=lambda r: r["rank"])
    step = max(median(r["step_s"]) for r in ranks)
    ema = max(median(r["ema_s"]) for r in ranks)
    b = ranks[0]["bytes"]
    return {
        "step_s": round(step, 4), "ema_s": round(ema, 5), "ema_fraction": round(ema / (step + ema), 4),
        "bytes_rank0": b, "bytes_per_rank": [r["bytes"] for r in ranks],
        "step_s_per_rank": [[round(x, 4) for x in r["step_s"]] for r in ranks],
        "job_wall_s": data.get("job_wall_s"), "exit_code": data.get("exit_code"),
        **({"teardown_stderr_tail": data["teardown_stderr_tail"]} if "teardown_stderr_tail" in data else {}),
    }


def mib(n: int) -> str:
    return f"{n / 2**20:8.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--batch", type=int, default=4, help="per-rank batch")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per engine")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ckpt-batch", type=int, default=8, help="batch of the single-process checkpointing run")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--timeout", type=int, default=300, help="seconds per subprocess")
    p.add_argument("--out", default=str(RESULTS_DIR / "engines.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scratch", default=None, help=argparse.SUPPRESS)  # given by run_torchrun, unused
    args = p.parse_args()
    if args.worker == "checkpointing":
        return checkpointing_worker(args)
    if args.worker:
        return engine_worker(args)

    names = [n for n in args.engines.split(",") if n]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        p.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")
    info = machine_info()
    t_start = time.perf_counter()
    raw = {}
    for name in names:
        print(f"running {name} ({NPROC} ranks) ...", flush=True)
        raw[name] = run_engine(args, name)
        if "error" in raw[name]:
            print(f"  {name} failed: {raw[name]['error']}\n{raw[name].get('stderr_tail', '')}", flush=True)
    print("running activation checkpointing (single process) ...", flush=True)
    ckpt = run_checkpointing(args)

    engines = {n: summarize_engine(d) for n, d in raw.items() if "error" not in d}
    errors = {n: d for n, d in raw.items() if "error" in d}
    print(f"\n{args.model}, {NPROC} ranks x batch {args.batch}, fp32, gloo, 1 thread per rank; "
          f"{args.steps} timed steps (+{args.warmup} warm-up), medians; MiB per rank (rank 0)")
    print(f"{'engine':7s} {'params':>8s} {'master':>8s} {'optim':>8s} {'p+opt':>8s} {'EMA':>8s} {'peakRSS':>8s}"
          f" {'step s':>7s} {'EMA ms':>7s} {'EMA %':>6s}")
    for n, e in engines.items():
        b = e["bytes_rank0"]
        print(f"{n:7s} {mib(b['params'])} {mib(b['master_copy'])} {mib(b['optimizer_state'])} "
              f"{mib(b['params_plus_optimizer'])} {mib(b['ema'])} {mib(b['peak_rss'])} {e['step_s']:7.3f} "
              f"{e['ema_s'] * 1e3:7.1f} {e['ema_fraction']:6.1%}")

    checks = {}
    if "ddp" in engines:
        per_n = engines["ddp"]["bytes_rank0"]["params_plus_optimizer"] / NPROC
        for n in ("zero3", "fsdp"):
            if n in engines:
                held = max(b["params_plus_optimizer"] for b in engines[n]["bytes_per_rank"])
                ratio = held / per_n
                checks[f"a_{n}_vs_ddp_over_n"] = {"value": round(ratio, 4), "target": f"<= {TARGETS['sharded_vs_ddp_over_n']}",
                                                   "pass": ratio <= TARGETS["sharded_vs_ddp_over_n"]}
                print(f"(a) {n}: {held / 2**20:.1f} MiB = {ratio:.3f} x DDP/{NPROC} ({per_n / 2**20:.1f} MiB), "
                      f"target <= 1.10: {verdict(ratio <= TARGETS['sharded_vs_ddp_over_n'])}")
    for n, e in engines.items():
        ok = e["ema_fraction"] <= TARGETS["ema_fraction"]
        checks[f"d_ema_fraction_{n}"] = {"value": e["ema_fraction"], "target": f"<= {TARGETS['ema_fraction']}", "pass": ok}
    print("(d) EMA fraction: " + ", ".join(f"{n} {e['ema_fraction']:.2%}" for n, e in engines.items())
          + f"; target <= 3%: {verdict(all(checks[f'd_ema_fraction_{n}']['pass'] for n in engines))}")

    if "error" not in ckpt:
        mem0, mem1 = ckpt["saved"]["0.0"]["bytes"], ckpt["saved"]["1.0"]["bytes"]
        t0, t1 = median(ckpt["step_s"]["0.0"]), median(ckpt["step_s"]["1.0"])
        saving, cost = 1 - mem1 / mem0, t1 / t0 - 1
        ckpt["summary"] = {"activation_bytes_off": mem0, "activation_bytes_on": mem1, "step_s_off": round(t0, 4),
                           "step_s_on": round(t1, 4), "memory_saving": round(saving, 4), "time_cost": round(cost, 4)}
        ok = saving >= TARGETS["ckpt_mem_saving"] and cost <= TARGETS["ckpt_time_cost"]
        checks["c_checkpointing"] = {"memory_saving": round(saving, 4), "time_cost": round(cost, 4),
                                     "target": ">= 0.50 saving for <= 0.35 cost", "pass": ok}
        print(f"(c) checkpointing (single process, batch {args.ckpt_batch}, 1 thread): activations "
              f"{mem0 / 2**20:.1f} -> {mem1 / 2**20:.1f} MiB ({saving:.1%} less), step {t0:.3f} -> {t1:.3f} s "
              f"({cost:+.1%}); target >= 50% less for <= +35%: {verdict(ok)}")
    else:
        print(f"(c) checkpointing run failed: {ckpt['error']}\n{ckpt.get('stderr_tail', '')}")

    result = {
        "benchmark": "engines", "command": command_line(), "machine": info,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "total_wall_s": round(time.perf_counter() - t_start, 1),
        "model": args.model, "ranks": NPROC, "batch_per_rank": args.batch, "precision": "fp32", "backend": "gloo",
        "latent_shape": [args.channels, args.input_size, args.input_size], "steps": args.steps, "warmup": args.warmup,
        "bytes_definition": "distinct storages: params = module's local tensors (FSDP to_local, ZeRO-3 ds_tensor, "
                            "ZeRO-1/2 flat bit16 buffers); master_copy = optimizer params not aliasing them "
                            "(DeepSpeed fp32 partitions); optimizer_state = AdamW state tensors",
        "ema_fraction_definition": "ema_s / (step_s + ema_s), slowest rank's medians",
        "engines": engines, "errors": errors, "checkpointing": ckpt, "checks": checks,
    }
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
