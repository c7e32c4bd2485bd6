"""Does DTR help at all on the digits? Vanilla, DTR, ANT-UW and ANT-UW + DTR over several seeds.

    OMP_NUM_THREADS=1 python benchmarks/dtr_effect.py                 # the study (see below for its time)
    OMP_NUM_THREADS=1 python benchmarks/dtr_effect.py --smoke         # a 1-minute check of the chain
    python benchmarks/dtr_effect.py --report-only                     # table and plots from the runs

Each (variant, seed) run trains the demo's model (DiT-T/4 on the embedded 8×8 digits, pixel mode)
through the real training loop (`dtr_scale.train`, single process) with the same budget, keeps
a checkpoint every quarter of the run and evaluates each one's EMA with the pixel-space Fréchet
distance (the training set as reference); the last one also with precision/recall. Samples use
the same per-sample seeds for every variant of a training seed, so the comparison is paired.
Sampling noise is measured, not guessed: the final FD is also computed on two disjoint halves of
the samples, and their spread is reported next to the differences between variants.

Time: about 15 minutes on 2 quiet cores (estimated from the smoke setting's rates: ~85 s per
run, 2 at a time); measured at 4-8x that while other jobs shared the cores. Runs go to `--work`
(one folder each, with `result.json`); a rerun skips the finished ones, so a killed study
continues. The summary goes to benchmarks/results/dtr_effect.json and the plot to
benchmarks/results/dtr_effect.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, command_line, machine_info  # noqa: E402

# variant -> overrides. ANT-UW runs use the cosine schedule, as configs/imagenet256-dit-l2-dtr-antuw.yaml
# and the DTR reference code do; the paper's comparison is DTR against its own non-routed baseline.
VARIANTS = {
    "vanilla": ["model.routing.sharing_ratio=1.0"],
    "dtr": ["model.routing.sharing_ratio=0.8"],
    "ant_uw": ["model.routing.sharing_ratio=1.0", "diffusion.loss_weighting=ant_uw", "diffusion.schedule=cosine"],
    "ant_uw_dtr": ["model.routing.sharing_ratio=0.8", "diffusion.loss_weighting=ant_uw", "diffusion.schedule=cosine"],
}
BASELINE_OF = {"dtr": "vanilla", "ant_uw": "vanilla", "ant_uw_dtr": "vanilla"}
NUM_CHECKPOINTS = 4


def study_config(steps: int, batch: int) -> dict:
    """The demo's model and recipe (dtr_scale/demo.py), at the study's budget, single process."""
    from dtr_scale.demo import DEMO_CONFIG

    cfg = json.loads(json.dumps(DEMO_CONFIG))
    cfg["train"].update({"max_steps": steps, "global_batch_size": batch, "log_every": max(steps // 40, 1)})
    cfg["parallel"] = {"engine": "single"}
    cfg["checkpoint"] = {"every": steps // NUM_CHECKPOINTS, "keep": NUM_CHECKPOINTS + 1}
    return cfg


# ----------------------------------------------------------------------------- one run (a subprocess)

def evaluate_checkpoint(step_dir: str, data: str, num_samples: int, sample_seed: int, sampling: str,
                        cfg_scale: float, with_pr: bool) -> dict:
    """Pixel FD (and P/R) of a checkpoint's EMA against the training digits."""
    import torch

    from dtr_scale.diffusion import create_diffusion
    from dtr_scale.evaluation.extractors import build_extractor
    from dtr_scale.evaluation.pipeline import compute_metrics, extract, prepare_reference
    from dtr_scale.export import checkpoint_ema
    from dtr_scale.sampling import generate

    device = torch.device("cpu")
    model, meta = checkpoint_ema(step_dir)
    model.to(device).eval()
    diffusion = create_diffusion(timestep_respacing=sampling, noise_schedule=meta["diffusion"]["schedule"],
                                 learn_sigma=meta["model"]["learn_sigma"], diffusion_steps=meta["diffusion"]["steps"])
    extractor = build_extractor("pixels", device)
    ref = prepare_reference(data, extractor, want_features=with_pr)
    tic = time.perf_counter()
    images, _ = generate(model, diffusion, range(num_samples), seed=sample_seed, labels="uniform",
                         cfg_scale=cfg_scale, sampler="ddim", batch_size=250, device=device)
    sample_s = time.perf_counter() - tic

    class Block:  # the `images` interface of evaluation.extract
        def __init__(self, arr):
            self.arr, self.shape = arr, arr.shape

        def __len__(self):
            return len(self.arr)

        def read(self, b0, b1):
            return self.arr[b0:b1]

    full = compute_metrics(extract(Block(images), extractor, features=with_pr, desc="samples"), ref)
    out = {"step": meta["step"], "fd": full["fid"], "sample_seconds": sample_s}
    if with_pr:
        half = num_samples // 2
        halves = [compute_metrics(extract(Block(images[a:b]), extractor, features=False), ref)["fid"]
                  for a, b in ((0, half), (half, 2 * half))]
        out.update(precision=full["precision"], recall=full["recall"], fd_halves=halves)
    return out


def one_run(args) -> None:
    import yaml

    from dtr_scale import train

    run_dir = Path(args.work) / f"{args.variant}-s{args.seed}"
    cfg = study_config(args.steps, args.batch)
    cfg_path = run_dir / "config.in.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tic = time.perf_counter()
    code = train.main(["--config", str(cfg_path), f"data.path={args.data}", f"checkpoint.dir={run_dir / 'run'}",
                       f"train.seed={args.seed}", *VARIANTS[args.variant]])
    if code != 0:
        raise SystemExit(f"training {run_dir} failed with exit {code}")
    train_s = time.perf_counter() - tic
    steps = sorted(p for p in (run_dir / "run").glob("step_*") if p.is_dir())
    evals = [evaluate_checkpoint(str(p), args.data, args.num_samples if p == steps[-1] else args.curve_samples,
                                 sample_seed=1000 + args.seed, sampling=args.sampling, cfg_scale=args.cfg_scale,
                                 with_pr=p == steps[-1]) for p in steps]
    rows = [json.loads(line) for line in (run_dir / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tail = [r for r in rows if "loss_t0" in r][-max(len(rows) // 4, 1):]  # last quarter of the run
    clusters = [float(np.mean([r[f"loss_t{k}"] for r in tail if f"loss_t{k}" in r])) for k in range(8)]
    result = {"variant": args.variant, "seed": args.seed, "train_seconds": train_s, "curve": evals,
              "final": evals[-1], "cluster_loss": clusters,
              "loss_curve": [[r["step"], r["loss"]] for r in rows if "loss" in r]}
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, run_dir / "result.json")


# ----------------------------------------------------------------------------- the study

def bootstrap_ci(values, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean (resampling seeds)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(results: list[dict]) -> dict:
    by = {v: {r["seed"]: r for r in results if r["variant"] == v} for v in VARIANTS}
    table = {}
    for v, runs in by.items():
        if not runs:
            continue
        fd = [r["final"]["fd"] for r in runs.values()]
        row = {"seeds": sorted(runs), "fd_mean": float(np.mean(fd)), "fd_ci95": bootstrap_ci(fd),
               "fd_per_seed": fd,
               "precision_mean": float(np.mean([r["final"]["precision"] for r in runs.values()])),
               "recall_mean": float(np.mean([r["final"]["recall"] for r in runs.values()])),
               # Sampling noise: std of one FD estimate from the two half-sample FDs (|a-b|/√2 per
               # run), averaged; the full-sample estimate's noise is about 1/√2 of that.
               "half_sample_fd_std": float(np.mean([abs(a - b) / np.sqrt(2) for a, b in
                                                   (r["final"]["fd_halves"] for r in runs.values())])),
               "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs.values()])),
               "cluster_loss_mean": np.mean([r["cluster_loss"] for r in runs.values()], axis=0).tolist()}
        base = BASELINE_OF.get(v)
        paired = sorted(set(runs) & set(by.get(base, {}))) if base else []
        if paired:
            diff = [runs[s]["final"]["fd"] - by[base][s]["final"]["fd"] for s in paired]
            row.update(paired_vs=base, paired_diff_mean=float(np.mean(diff)), paired_diff_ci95=bootstrap_ci(diff),
                       paired_diff_per_seed=diff)
        # Also DTR against its own non-routed twin (ANT-UW + DTR vs ANT-UW).
        if v == "ant_uw_dtr" and by.get("ant_uw"):
            twin = sorted(set(runs) & set(by["ant_uw"]))
            diff = [runs[s]["final"]["fd"] - by["ant_uw"][s]["final"]["fd"] for s in twin]
            if diff:
                row.update(paired_vs_ant_uw_mean=float(np.mean(diff)), paired_vs_ant_uw_ci95=bootstrap_ci(diff))
        table[v] = row
    return table


def plot(results: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"vanilla": "tab:gray", "dtr": "tab:blue", "ant_uw": "tab:orange", "ant_uw_dtr": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for v in VARIANTS:
        runs = [r for r in results if r["variant"] == v]
        if not runs:
            continue
        steps = [e["step"] for e in runs[0]["curve"]]
        fds = np.array([[e["fd"] for e in r["curve"]] for r in runs])
        for row in fds:
            axes[0].plot(steps, row, color=colors[v], alpha=0.2, lw=0.8)
        axes[0].plot(steps, fds.mean(axis=0), color=colors[v], lw=2, marker="o", label=f"{v} (n={len(runs)})")
        cl = np.array([r["cluster_loss"] for r in runs])
        axes[1].errorbar(np.arange(8) + 0.06 * list(VARIANTS).index(v), cl.mean(axis=0),
                         yerr=cl.std(axis=0), color=colors[v], marker="o", capsize=2, label=v)
    axes[0].set(xlabel="training step", ylabel="pixel FD (lower is better)", yscale="log",
                title="FD of the EMA against training steps")
    axes[1].set(xlabel="timestep cluster (0 = least noisy, 7 = noisiest)", ylabel="training loss (MSE + VB)",
                yscale="log", title="loss per timestep cluster, last quarter of training")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "dtr_effect.png"
    fig.savefig(path)
    plt.close(fig)
    return [str(path)]


def markdown(summary: dict, meta: dict) -> str:
    def ci(pair):
        return f"[{pair[0]:.4f}, {pair[1]:.4f}]"

    lines = ["| variant | seeds | pixel FD mean | 95 % CI (bootstrap) | Δ FD vs vanilla (paired) | 95 % CI of Δ "
             "| precision | recall | half-sample FD noise (std) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v, r in summary.items():
        delta = f"{r['paired_diff_mean']:+.4f}" if "paired_diff_mean" in r else "—"
        dci = ci(r["paired_diff_ci95"]) if "paired_diff_ci95" in r else "—"
        lines.append(f"| {v} | {len(r['seeds'])} | {r['fd_mean']:.4f} | {ci(r['fd_ci95'])} | {delta} | {dci} | "
                     f"{r['precision_mean']:.3f} | {r['recall_mean']:.3f} | {r['half_sample_fd_std']:.4f} |")
    if "ant_uw_dtr" in summary and "paired_vs_ant_uw_mean" in summary["ant_uw_dtr"]:
        r = summary["ant_uw_dtr"]
        lines += ["", f"ANT-UW + DTR against ANT-UW (paired): Δ FD {r['paired_vs_ant_uw_mean']:+.4f}, "
                      f"95 % CI {ci(r['paired_vs_ant_uw_ci95'])}."]
    return "\n".join(lines)


def launch(args, todo: list[tuple[str, int]]) -> None:
    """Up to `--parallel` runs at a time, each its own single-threaded process."""
    pending, running = list(todo), []
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    while pending or running:
        while pending and len(running) < args.parallel:
            variant, seed = pending.pop(0)
            log_path = Path(args.work) / f"{variant}-s{seed}.log"
            cmd = [sys.executable, __file__, "--one", variant, str(seed), "--work", args.work, "--data", args.data,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--num-samples", str(args.num_samples),
                   "--curve-samples", str(args.curve_samples), "--sampling", args.sampling,
                   "--cfg-scale", str(args.cfg_scale)]
            log = open(log_path, "w")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), variant, seed, log,
                            time.perf_counter()))
            print(f"[dtr_effect] start {variant} seed {seed} (log {log_path})", flush=True)
        time.sleep(2)
        for item in list(running):
            proc, variant, seed, log, t0 = item
            if proc.poll() is None:
                if time.perf_counter() - t0 > args.run_timeout:
                    proc.kill()
                continue
            log.close()
            running.remove(item)
            state = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
            print(f"[dtr_effect] {variant} seed {seed}: {state} in {time.perf_counter() - t0:.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="dtr_effect_runs", help="run folders (one per variant and seed)")
    p.add_argument("--data", default=None, help="digits shards (default: WORK/data, prepared once)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=200, help="training steps per run (the same for every variant)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num-samples", type=int, default=1000, help="samples for the final FD and P/R")
    p.add_argument("--curve-samples", type=int, default=250, help="samples for the intermediate checkpoints")
    p.add_argument("--sampling", default="ddim20")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--run-timeout", type=float, default=1800.0)
    p.add_argument("--smoke", action="store_true", help="tiny setting: 2 seeds × 40 steps, 200 samples")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps, args.num_samples, args.curve_samples = 2, 40, 200, 100
    args.data = os.path.abspath(args.data or os.path.join(args.work, "data"))
    args.work = os.path.abspath(args.work)
    if args.one:
        args.variant, args.seed = args.one[0], int(args.one[1])
        one_run(args)
        return 0

    tic = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    if not args.report_only and not os.path.exists(os.path.join(args.data, "dataset.json")):
        subprocess.run([sys.executable, "-m", "dtr_scale.prep", "--source", "digits", "--vae", "none", "--out",
                        args.data, "--resolution", "8", "--shard-size", "200", "--no-progress"], check=True, timeout=600)
    todo = [(v, s) for s in range(args.seeds) for v in VARIANTS
            if not os.path.exists(os.path.join(args.work, f"{v}-s{s}", "result.json"))]
    machine = machine_info()
    if not args.report_only:
        launch(args, todo)
    results = [json.loads(p.read_text()) for p in sorted(Path(args.work).glob("*/result.json"))]
    # Only seeds that every variant finished (a study stopped early must not compare unequal sets).
    complete = set.intersection(*[{r["seed"] for r in results if r["variant"] == v} for v in VARIANTS])
    results = [r for r in results if r["seed"] in complete]
    if not results:
        print("no finished runs", file=sys.stderr)
        return 1
    summary = summarise(results)
    out_dir = RESULTS_DIR if not args.smoke else Path(args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(results, out_dir)
    meta = {"command": command_line(), "machine": machine, "wall_seconds": time.perf_counter() - tic,
            "settings": {k: getattr(args, k) for k in ("seeds", "steps", "batch", "num_samples", "curve_samples",
                                                       "sampling", "cfg_scale", "parallel")},
            "config": study_config(args.steps, args.batch), "variants": VARIANTS}
    with open(out_dir / "dtr_effect.json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": results}, f, indent=1)
    print(markdown(summary, meta))
    print(f"plots: {', '.join(plots)}; wall {meta['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
