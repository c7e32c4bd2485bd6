"""Training-step cost of the modern block options against the standard DiT block, DTR on.

One run, one machine, variants interleaved round by round (rotated order, the same batch for
every variant within a round): one training step (forward, backward, optimizer step through
the `single` engine, as `dtr_scale.train` runs it) of DiT-S/2 with DTR (β = 0.8) and

  - `standard`  the official DiT block
  - `qk_norm`   + model.qk_norm=true (LayerNorm over each head of q and k)
  - `rmsnorm`   model.norm=rmsnorm
  - `swiglu`    model.mlp=swiglu (hidden int(2/3 · 4C))
  - `rope2d`    model.pos_embed=rope2d
  - `all`       the four together (LightningDiT's block with qk-norm)

Reports each variant's median step time over `standard`'s, the paired per-round ratio, CPU-time
ratio, and the model-FLOP and parameter ratios (`dit_train_flops`: SwiGLU's matmuls are counted,
norms and rotations are elementwise and are not).

    python benchmarks/block_options.py [--model DiT-S/2] [--batch 4] [--reps 5] [--warmup 1] [--threads 1]

Writes benchmarks/results/block_options.json.
"""
from __future__ import annotations


import torch

from common import ContentionMeter, command_line, machine_info, median, step_parser, write_json
from step import make_batch, paired_ratio, summarize, timed_step

from dtr_scale.config import load_config
from dtr_scale.models import RoutingConfig, dit_train_flops
from dtr_scale.parallel.process_group import DistEnv
from dtr_scale.train import build_training

VARIANTS = {
    "standard": [],
    "qk_norm": ["model.qk_norm=true"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "swiglu": ["model.mlp=swiglu"],
    "rope2d": ["model.pos_embed=rope2d"],
    "all": ["model.qk_norm=true", "model.norm=rmsnorm", "model.mlp=swiglu", "model.pos_embed=rope2d"],
}


def build_variant(args, overrides):
    cfg = load_config(None, [f"model.name={args.model}", "parallel.engine=single", "train.precision=fp32",
                             "model.compile=false", *overrides])
    cfg.model.routing = RoutingConfig(sharing_ratio=0.8)
    torch.manual_seed(0)
    objective, engine = build_training(cfg, DistEnv(), torch.device("cpu"),
                                       (args.channels, args.input_size, args.input_size), num_classes=1000)
    return objective.dit, engine


def main() -> None:
    args = step_parser(__doc__.split("\n")[0], "block_options.json").parse_args()
    torch.set_num_threads(args.threads)
    built = {name: build_variant(args, o) for name, o in VARIANTS.items()}
    gen = torch.Generator().manual_seed(0)
    order = list(VARIANTS)
    samples = {name: [] for name in order}
    for r in range(args.warmup + args.reps):
        batch = make_batch(args, gen)
        for name in order[r % len(order):] + order[: r % len(order)]:
            with ContentionMeter() as meter:
                row = timed_step(built[name][1], batch)
            row["others_busy"] = meter.others
            if r >= args.warmup:
                samples[name].append(row)
        if r >= args.warmup:
            print(f"round {r + 1 - args.warmup}/{args.reps}: "
                  + ", ".join(f"{n} {samples[n][-1]['wall']:.3f}s" for n in order), flush=True)
    med = summarize(samples)
    base_model = built["standard"][0]
    base_flops = dit_train_flops(base_model, args.batch)
    base_params = sum(q.numel() for q in base_model.parameters())
    ratios = {}
    for name in order:
        model = built[name][0]
        ratios[name] = {
            "step_vs_standard": round(med[name]["wall"] / med["standard"]["wall"], 4),
            "paired_median": round(paired_ratio(samples, name, "standard"), 4),
            "cpu_time": round(med[name]["cpu"] / med["standard"]["cpu"], 4),
            "best_of_n": round(med[name]["wall_min"] / med["standard"]["wall_min"], 4),
            "model_flops": round(dit_train_flops(model, args.batch) / base_flops, 4),
            "params": round(sum(q.numel() for q in model.parameters()) / base_params, 4),
        }
    others = [s["others_busy"] for rows in samples.values() for s in rows if s["others_busy"] is not None]
    result = {"command": command_line(), "machine": machine_info(), "args": vars(args),
              "others_busy_median": round(median(others), 3) if others else None,
              "medians": med, "ratios": ratios}
    print(f"{'variant':10} {'step s':>8} {'ratio':>7} {'paired':>7} {'cpu':>7} {'flops':>7} {'params':>7}")
    for name in order:
        r = ratios[name]
        print(f"{name:10} {med[name]['wall']:8.3f} {r['step_vs_standard']:7.3f} {r['paired_median']:7.3f} "
              f"{r['cpu_time']:7.3f} {r['model_flops']:7.3f} {r['params']:7.3f}")
    print(f"others kept {result['others_busy_median']} of the cores busy (median); wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
