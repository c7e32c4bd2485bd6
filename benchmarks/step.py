"""Training-step cost of routing, and how close a DiT step runs to the machine's matmul rate.

One run, one machine, variants interleaved: each round times one training step (forward,
backward, optimizer step through the `single` engine, exactly as `dtr_scale.train` runs it) of

  - `beta0.8`     the DiT with DTR routing, β = 0.8
  - `beta1.0`     the DiT with routing configured at β = 1.0 (must take the plain-DiT path)
  - `no_routing`  the DiT built with `routing=None`
  - `matmul`      a plain fp32 matmul (B·L)×C @ C×4C, the shape of the MLP's first layer

in a rotating order, so that load from other users of the machine hits every variant alike.
Medians over the rounds are compared. Targets:

  (a) step(β=0.8) ≤ 1.02 × step(β=1.0)
  (b) step(β=1.0) ≤ 1.01 × step(routing=None)
  (c) model FLOP/s of the plain step (3 × forward FLOPs, `dit_train_flops`) ≥ 0.85 × matmul FLOP/s

    python benchmarks/step.py [--model DiT-B/2] [--batch 4] [--reps 9] [--threads 2[,1]] [--profile]

Prints a table and writes benchmarks/results/step.json (`--profile` adds a torch.profiler
breakdown of one step of each model variant).

`--compile` measures regional torch.compile instead (`model.compile=true`), with the variants
`beta0.8` (eager), `beta0.8_compiled` and `beta1.0_compiled`, and the compile time of each
compiled variant (its first step, untimed in the medians). Targets:

  (d) step(β=0.8, compiled) ≤ 0.85 × step(β=0.8, eager) for DiT-S/2, ≤ 0.90 for DiT-B/2
  (e) step(β=0.8, compiled) ≤ 1.02 × step(β=1.0, compiled)

    python benchmarks/step.py --compile --model DiT-S/2 --out benchmarks/results/step_compile_S2.json
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from common import RESULTS_DIR, ContentionMeter, command_line, machine_info, median, verdict, write_json

from dtr_scale.config import load_config
from dtr_scale.models import RoutingConfig, dit_train_flops
from dtr_scale.parallel.parallelize import CompileWatch
from dtr_scale.parallel.process_group import DistEnv
from dtr_scale.train import build_training

MODEL_VARIANTS = {
    "beta0.8": RoutingConfig(sharing_ratio=0.8),
    "beta1.0": RoutingConfig(sharing_ratio=1.0),
    "no_routing": None,
}
# name -> (routing, compiled)
COMPILE_VARIANTS = {
    "beta0.8": (RoutingConfig(sharing_ratio=0.8), False),
    "beta0.8_compiled": (RoutingConfig(sharing_ratio=0.8), True),
    "beta1.0_compiled": (RoutingConfig(sharing_ratio=1.0), True),
}
TARGETS = {"routing_overhead": 0.02, "identity_overhead": 0.01, "matmul_fraction": 0.85}
COMPILE_TARGETS = {"DiT-S/2": 0.85, "DiT-B/2": 0.90}  # compiled / eager step time


def build_variant(args, routing, compiled=False):
    """A DiT (same initial weights for every variant) wrapped by the single-process engine."""
    cfg = load_config(None, [f"model.name={args.model}", "parallel.engine=single", "train.precision=fp32",
                             f"model.compile={str(compiled).lower()}"])
    cfg.model.routing = routing
    latent_shape = (args.channels, args.input_size, args.input_size)
    objective, engine = build_training(cfg, DistEnv(), torch.device("cpu"), latent_shape, num_classes=1000)
    return objective.dit, engine


def make_batch(args, gen: torch.Generator):
    n, c, s = args.batch, args.channels, args.input_size
    x = torch.randn(n, c, s, s, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    y = torch.randint(0, 1000, (n,), generator=gen)
    noise = torch.randn(n, c, s, s, generator=gen)
    return x, t, y, noise


def timed_step(engine, batch) -> dict:
    """Wall and process-CPU seconds of one step, split into its phases."""
    x, t, y, noise = batch
    c0, w0 = time.process_time(), time.perf_counter()
    loss, _ = engine.module(x, t, y, noise)
    w1 = time.perf_counter()
    engine.backward(loss)
    w2 = time.perf_counter()
    engine.step()
    w3 = time.perf_counter()
    return {"wall": w3 - w0, "cpu": time.process_time() - c0,
            "forward": w1 - w0, "backward": w2 - w1, "optimizer": w3 - w2}


class MatmulProbe:
    """The reference rate: `count` back-to-back fp32 matmuls of the MLP's fc1 shape."""

    def __init__(self, rows: int, hidden: int):
        gen = torch.Generator().manual_seed(1)
        self.a = torch.randn(rows, hidden, generator=gen)
        self.b = torch.randn(hidden, 4 * hidden, generator=gen)
        self.out = torch.empty(rows, 4 * hidden)
        self.flops = 2 * rows * hidden * 4 * hidden
        self.count = 1
        self.shape = [rows, hidden, 4 * hidden]

    def calibrate(self, seconds: float) -> None:
        """Pick the repeat count so that one timed sample lasts about `seconds`."""
        t0 = time.perf_counter()
        for _ in range(3):
            torch.matmul(self.a, self.b, out=self.out)
        per = (time.perf_counter() - t0) / 3
        self.count = max(3, int(seconds / per))

    def run(self) -> dict:
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(self.count):
            torch.matmul(self.a, self.b, out=self.out)
        wall = time.perf_counter() - w0
        return {"wall": wall, "cpu": time.process_time() - c0, "flops_per_s": self.count * self.flops / wall}


def profile_step(engine, batch, top: int = 15) -> dict:
    """torch.profiler over one step: top ops by self CPU time, and the share of matmul kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_step(engine, batch)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    matmul_names = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "flash_attention",
                    "_scaled_dot_product", "mkldnn", "gemm")
    matmul = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in matmul_names))
    return {
        "total_self_cpu_ms": round(total / 1e3, 1),
        "matmul_like_share": round(matmul / total, 4) if total else None,
        "top_ops": [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
                     "share": round(e.self_cpu_time_total / total, 4)} for e in events[:top]],
    }


def summarize(samples: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rows in samples.items():
        out[name] = {key: round(median(r[key] for r in rows), 5) for key in rows[0] if r_is_number(rows[0][key])}
        out[name]["wall_min"] = round(min(r["wall"] for r in rows), 5)
        out[name]["wall_all"] = [round(r["wall"], 4) for r in rows]
        out[name]["others_busy_all"] = [None if r["others_busy"] is None else round(r["others_busy"], 3) for r in rows]
    return out


def r_is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def paired_ratio(samples, num: str, den: str, key: str = "wall") -> float:
    """Median over rounds of num/den measured in the same round (cancels slow drifts in load)."""
    return median(a[key] / b[key] for a, b in zip(samples[num], samples[den]))


def measure(args, threads: int, variants: dict, probe: MatmulProbe, gen: torch.Generator) -> dict[str, list[dict]]:
    """Interleaved rounds: every variant once per round, in an order rotated each round."""
    torch.set_num_threads(threads)
    order = list(variants) + ["matmul"]
    probe.calibrate(0.5)
    samples: dict[str, list[dict]] = {name: [] for name in order}
    for r in range(args.warmup + args.reps):
        batch = make_batch(args, gen)  # same inputs for every variant within a round
        rotated = order[r % len(order):] + order[: r % len(order)]
        for name in rotated:
            with ContentionMeter() as meter:
                row = probe.run() if name == "matmul" else timed_step(variants[name][1], batch)
            row["others_busy"] = meter.others
            if r >= args.warmup:
                samples[name].append(row)
        if r >= args.warmup:
            print(f"  [{threads} thr] round {r + 1 - args.warmup}/{args.reps}: "
                  + ", ".join(f"{n} {samples[n][-1]['wall']:.3f}s" for n in order), flush=True)
    return samples


def evaluate(args, threads: int, samples: dict, plain, probe: MatmulProbe) -> dict:
    """Medians, the three target checks, and the same ratios from best-of-N and CPU time."""
    med = summarize(samples)
    train_flops = dit_train_flops(plain, args.batch)
    achieved = train_flops / med["no_routing"]["wall"]
    matmul_rate = median(s["flops_per_s"] for s in samples["matmul"])
    best_fraction = (train_flops / med["no_routing"]["wall_min"]) / max(s["flops_per_s"] for s in samples["matmul"])

    def overhead(num, den, limit):
        value = med[num]["wall"] / med[den]["wall"] - 1
        return {"value": round(value, 4), "target": f"<= {limit}", "pass": value <= limit,
                "paired_median": round(paired_ratio(samples, num, den) - 1, 4),
                "best_of_n": round(med[num]["wall_min"] / med[den]["wall_min"] - 1, 4),
                "cpu_time": round(med[num]["cpu"] / med[den]["cpu"] - 1, 4)}

    fraction = achieved / matmul_rate
    others = [s["others_busy"] for rows in samples.values() for s in rows if s["others_busy"] is not None]
    return {
        "threads": threads,
        "other_processes_busy_median": round(median(others), 3) if others else None,
        "medians_s": med,
        "matmul_repeats": probe.count,
        "checks": {
            "a_routing_overhead": overhead("beta0.8", "beta1.0", TARGETS["routing_overhead"]),
            "b_identity_overhead": overhead("beta1.0", "no_routing", TARGETS["identity_overhead"]),
            "c_matmul_fraction": {"value": round(fraction, 4), "target": f">= {TARGETS['matmul_fraction']}",
                                  "pass": fraction >= TARGETS["matmul_fraction"],
                                  "achieved_gflops": round(achieved / 1e9, 2),
                                  "matmul_gflops": round(matmul_rate / 1e9, 2),
                                  "best_of_n": round(best_fraction, 4)},
        },
    }


def print_run(args, run: dict, probe: MatmulProbe) -> None:
    med, checks = run["medians_s"], run["checks"]
    print(f"\n{args.model} batch {args.batch}, {args.channels}x{args.input_size}x{args.input_size} latents, fp32, "
          f"{run['threads']} threads, {args.reps} rounds (+{args.warmup} warm-up), medians; other processes kept "
          f"{run['other_processes_busy_median']:.0%} of the cores busy (median over samples)")
    print(f"{'variant':12s} {'step s':>8s} {'best s':>8s} {'fwd s':>7s} {'bwd s':>7s} {'opt s':>7s} {'cpu s':>7s}")
    for name in MODEL_VARIANTS:
        m = med[name]
        print(f"{name:12s} {m['wall']:8.3f} {m['wall_min']:8.3f} {m['forward']:7.3f} {m['backward']:7.3f} "
              f"{m['optimizer']:7.3f} {m['cpu']:7.3f}")
    c = checks["c_matmul_fraction"]
    print(f"{'matmul':12s} {med['matmul']['wall']:8.3f} {med['matmul']['wall_min']:8.3f}  "
          f"({run['matmul_repeats']} x {probe.shape}, {c['matmul_gflops']:.1f} GFLOP/s)")
    for key, label, limit in (("a_routing_overhead", "(a) beta0.8 vs beta1.0", "+2%"),
                              ("b_identity_overhead", "(b) beta1.0 vs routing=None", "+1%")):
        ch = checks[key]
        print(f"{label}: {ch['value']:+.2%} (paired {ch['paired_median']:+.2%}, best-of-N {ch['best_of_n']:+.2%}, "
              f"CPU time {ch['cpu_time']:+.2%}), target <= {limit}: {verdict(ch['pass'])}")
    print(f"(c) plain step {c['achieved_gflops']:.1f} GFLOP/s = {c['value']:.1%} of matmul {c['matmul_gflops']:.1f} "
          f"GFLOP/s (best-of-N {c['best_of_n']:.1%}), target >= 85%: {verdict(c['pass'])}")


def compile_first_steps(args, variants: dict, gen: torch.Generator) -> dict:
    """Run each compiled variant's first step (where compilation happens), outside the medians."""
    out = {}
    for name, (_, engine) in variants.items():
        if not name.endswith("_compiled"):
            continue
        watch = CompileWatch(True)
        row = timed_step(engine, make_batch(args, gen))
        report = watch.report()
        out[name] = {"first_step_s": round(row["wall"], 2), "compile_s": round(report["compile_s"], 2),
                     "compiled_frames": report["compiled_frames"]}
        print(f"  {name}: first step {row['wall']:.1f} s, of which compilation {report['compile_s']:.1f} s", flush=True)
    return out


def evaluate_compile(args, samples: dict, first_steps: dict) -> dict:
    med = summarize(samples)
    limit = COMPILE_TARGETS.get(args.model, 0.90)

    def ratio(num, den, target):
        value = med[num]["wall"] / med[den]["wall"]
        return {"value": round(value, 4), "target": f"<= {target}", "pass": value <= target,
                "paired_median": round(paired_ratio(samples, num, den), 4),
                "best_of_n": round(med[num]["wall_min"] / med[den]["wall_min"], 4),
                "cpu_time": round(med[num]["cpu"] / med[den]["cpu"], 4)}

    others = [s["others_busy"] for rows in samples.values() for s in rows if s["others_busy"] is not None]
    return {"other_processes_busy_median": round(median(others), 3) if others else None, "medians_s": med,
            "compile": first_steps,
            "checks": {"d_compiled_vs_eager": ratio("beta0.8_compiled", "beta0.8", limit),
                       "e_compiled_routing_overhead": ratio("beta0.8_compiled", "beta1.0_compiled", 1.02)}}


def main_compile(args, threads: int) -> None:
    torch.set_num_threads(threads)
    start_info = machine_info()
    variants = {name: build_variant(args, routing, compiled) for name, (routing, compiled) in COMPILE_VARIANTS.items()}
    gen = torch.Generator().manual_seed(0)
    first_steps = compile_first_steps(args, variants, gen)
    probe = MatmulProbe(args.batch * variants["beta0.8"][0].x_embedder.num_patches, variants["beta0.8"][0].hidden_size)
    samples = measure(args, threads, variants, probe, gen)
    samples.pop("matmul")
    run = evaluate_compile(args, samples, first_steps)
    print(f"\n{args.model} batch {args.batch}, fp32, {threads} threads, {args.reps} rounds (+{args.warmup} warm-up), "
          f"medians; other processes kept {run['other_processes_busy_median'] or 0:.0%} of the cores busy")
    print(f"{'variant':18s} {'step s':>8s} {'best s':>8s} {'fwd s':>7s} {'bwd s':>7s} {'compile s':>10s}")
    for name in COMPILE_VARIANTS:
        m = run["medians_s"][name]
        comp = first_steps.get(name, {}).get("compile_s", "-")
        print(f"{name:18s} {m['wall']:8.3f} {m['wall_min']:8.3f} {m['forward']:7.3f} {m['backward']:7.3f} {comp!s:>10s}")
    for key, label in (("d_compiled_vs_eager", "(d) compiled / eager, beta0.8"),
                       ("e_compiled_routing_overhead", "(e) compiled beta0.8 / compiled beta1.0")):
        ch = run["checks"][key]
        print(f"{label}: {ch['value']:.3f} (paired {ch['paired_median']:.3f}, best-of-N {ch['best_of_n']:.3f}, "
              f"CPU time {ch['cpu_time']:.3f}), target {ch['target']}: {verdict(ch['pass'])}")
    result = {"benchmark": "step_compile", "command": command_line(), "machine": start_info,
              "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "model": args.model, "batch": args.batch,
              "latent_shape": [args.channels, args.input_size, args.input_size], "precision": "fp32",
              "threads": threads, "reps": args.reps, "warmup": args.warmup, **run}
    print(f"wrote {write_json(args.out, result)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="DiT-B/2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256px images)")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--reps", type=int, default=9, help="timed rounds (each times every variant once)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", default="2",
                   help="comma-separated torch thread counts, measured one after the other; the first one's "
                        "checks are the headline (e.g. 2,1: 1 thread is robust to other users of the cores)")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler breakdown of one step")
    p.add_argument("--compile", action="store_true", help="compiled vs eager instead (see the module doc)")
    p.add_argument("--out", default=str(RESULTS_DIR / "step.json"))
    args = p.parse_args()
    try:
        thread_counts = [int(v) for v in args.threads.split(",") if v]
    except ValueError:
        p.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if args.reps < 1 or args.batch < 1 or not thread_counts or min(thread_counts) < 1:
        p.error("--reps, --batch and every --threads value must be >= 1")
    if args.compile:
        return main_compile(args, thread_counts[0])
    torch.set_num_threads(thread_counts[0])
    start_info = machine_info()

    variants = {name: build_variant(args, routing) for name, routing in MODEL_VARIANTS.items()}
    plain = variants["no_routing"][0]
    probe = MatmulProbe(args.batch * plain.x_embedder.num_patches, plain.hidden_size)
    gen = torch.Generator().manual_seed(0)

    runs = []
    for threads in thread_counts:
        samples = measure(args, threads, variants, probe, gen)
        runs.append(evaluate(args, threads, samples, plain, probe))
    for run in runs:
        print_run(args, run, probe)

    result = {
        "benchmark": "step", "command": command_line(), "machine": start_info,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "model": args.model, "batch": args.batch, "latent_shape": [args.channels, args.input_size, args.input_size],
        "precision": "fp32", "reps": args.reps, "warmup": args.warmup,
        "step_definition": "engine.module forward + engine.backward + engine.step (single engine: grad-norm + AdamW foreach)",
        "train_flops_per_step": dit_train_flops(plain, args.batch), "matmul_shape": probe.shape,
        "headline_threads": thread_counts[0], "checks": runs[0]["checks"], "runs": runs,
    }
    if args.profile:
        torch.set_num_threads(thread_counts[0])
        batch = make_batch(args, gen)
        result["profile"] = {"threads": thread_counts[0]}
        for name in ("beta0.8", "no_routing"):
            prof = result["profile"][name] = profile_step(variants[name][1], batch)
            print(f"\nprofile {name}: {prof['total_self_cpu_ms']} ms self CPU, matmul-like {prof['matmul_like_share']:.1%}")
            for op in prof["top_ops"]:
                print(f"  {op['op'][:40]:40s} {op['calls']:6d} {op['self_cpu_ms']:9.1f} ms {op['share']:6.1%}")
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
