"""The demo: `make demo` / `python -m dtr_scale.demo --out demo_out`.

The whole chain on the embedded digits (scikit-learn's 1797 handwritten 8×8 digits at their
native size, pixel mode: no VAE, no download), on a laptop CPU, through the same commands a
cluster run uses:

    prep (pixel mode) → 2-process training (DDP; --engine deepspeed|fsdp for ZeRO-2|FSDP2) →
    export → 2-process sampling with CFG → pixel-space Fréchet distance against the training set

once with DTR (β = 0.8) and once for the plain-DiT baseline (β = 1.0) with equal steps.
`--objective flow` runs the same chain as SiT-style flow matching (linear path, velocity
prediction, DTR task round((1 − t)·999)) sampled with an Euler ODE. Writes
`OUT/report.md`, `OUT/report.json` (with every stage's seconds, summed over every pass when the
demo was interrupted and rerun), sample grids (one row per class) and the loss curves. The console
gets one progress line per stage; each stage's whole output is in `OUT/logs/` (demo_stages.py).

Sized to finish in about four minutes on 2 cores: training is ~85% of the time, so the
choices that matter are the model's patch size (4: four tokens per digit), the number of steps
(800 at a raised learning rate and a short EMA) and the engine (DDP starts faster than DeepSpeed
and needs no one-time C++ build). Sampling (300 samples, DDIM 20) and the FD are a few seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import yaml

from .errors import UserError, run_cli
from .input_checks import at_least, finite, writable_dir
from .demo_stages import Stage
from .threads import configure_threads

# A tiny routed DiT that learns the digits in a few minutes on 2 cores: 4 tokens of 4×4 pixels
# (patch 2 means 16 tokens and about 3× the compute per image), 6 blocks of width 128. With
# LR 1.5e-3, a 40-step warm-up and EMA 0.99 the loss flattens by ~700 steps and the samples are
# clear digits. No random flips: a mirrored digit is another glyph. Everything else is the
# library's default path (learned variance, linear schedule, AdamW, EMA).
DEMO_CONFIG = {
    "model": {"name": "DiT-T/4", "routing": {"sharing_ratio": 0.8, "init": "dtr", "alpha": 4.0},
              "attention": "sdpa", "class_dropout_prob": 0.1},
    "diffusion": {"schedule": "linear", "loss_weighting": "constant"},
    "data": {"num_workers": 0, "mode": "resampled", "shuffle_buffer": 512, "random_flip": False},
    "train": {"global_batch_size": 128, "max_steps": 800, "lr": 1.5e-3, "warmup_steps": 40,
              "ema_decay": 0.99, "precision": "fp32", "log_every": 20, "seed": 0},
    "parallel": {"engine": "ddp", "zero_stage": 2},  # zero_stage: for --engine deepspeed
    "checkpoint": {"every": 100000, "keep": 1},  # the last step always saves
}
VARIANTS = {"dtr": 0.8, "baseline": 1.0}  # β; 1.0 is plain DiT


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# What the demo shows of each objective: the loss axis, the report's title, the config keys the
# objective does not read, its sampler's options and how the report names them.
DEMO_OBJECTIVES = {
    "ddpm": {"loss": "training loss (MSE + VB)", "title": "", "unused_keys": (),
             "solver": lambda a: ["sampler=ddim", f"steps={a.sampling_steps}"],
             "sampling": lambda a: a.sampling_steps},
    "flow": {"loss": "training loss (velocity MSE)", "title": " (flow matching)",
             "unused_keys": ("schedule",),  # the flow defaults are SiT's (Linear, velocity)
             "solver": lambda a: ["ode_method=euler", f"num_steps={a.flow_steps}"],
             "sampling": lambda a: f"Euler ODE, {a.flow_steps} steps"},
}


def plot_losses(curves: dict[str, list[dict]], path: str, objective: str = "ddpm") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, rows in curves.items():
        rows = [r for r in rows if "loss" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{name} (β={VARIANTS[name]})")
    ax.set_xlabel("step")
    ax.set_ylabel(DEMO_OBJECTIVES[objective]["loss"])
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def class_grid(samples_npz: str, path: str, per_class: int = 10) -> None:
    from .sampling import save_grid

    with np.load(samples_npz) as f:
        images, labels = f["arr_0"], f["arr_1"]
    save_grid(images, path, nrow=per_class, labels=labels, upscale=6)


# The demo's marker, written into OUT when the demo creates it: --fresh removes only folders that
# carry it, and only the entries below (what a demo writes), each named in the log.
MARKER = ".dtr-scale-demo"
DEMO_ENTRIES = ("data", *VARIANTS, "logs", "demo_times.json", "demo-config.yaml", "report.json", "report.md", "loss_curves.png",
                *(f"samples_{name}.png" for name in VARIANTS))


def prepare_output(out: str, fresh: bool) -> str:
    """OUT as the demo's own folder: new or empty (then marked), or marked by an earlier demo
    (then resumed, or with `fresh` emptied of the demo's entries). Anything else is refused."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a directory")
    marked = os.path.isfile(os.path.join(out, MARKER))
    if os.path.isdir(out) and os.listdir(out) and not marked:
        raise UserError(f"--out {out} is not empty and was not written by the demo (no {MARKER} inside); "
                         "choose a new or empty --out (an earlier version's demo output has no marker: "
                         "delete it yourself)")
    if fresh and marked:
        for name in DEMO_ENTRIES:
            path = os.path.join(out, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
            else:
                continue
            print(f"[demo] --fresh: removed {path}", flush=True)
    os.makedirs(out, exist_ok=True)
    if not marked:
        with open(os.path.join(out, MARKER), "w") as f:
            f.write("written by python -m dtr_scale.demo; --fresh removes only the demo's own entries here\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dtr_scale.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--steps", type=int, default=DEMO_CONFIG["train"]["max_steps"], help="training steps per variant")
    p.add_argument("--nproc", type=int, default=2, help="processes for training and sampling")
    p.add_argument("--engine", default=DEMO_CONFIG["parallel"]["engine"], choices=["deepspeed", "fsdp", "ddp"])
    p.add_argument("--num-samples", type=int, default=300, help="samples per variant for the FD")
    p.add_argument("--sampling-steps", default="ddim20")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--objective", default="ddpm", choices=list(DEMO_OBJECTIVES),
                   help="ddpm (DiT/DTR) or flow (SiT transport, Euler ODE sampling)")
    p.add_argument("--flow-steps", type=int, default=25, help="Euler steps of the flow ODE (with --objective flow)")
    p.add_argument("--fresh", action="store_true",
                   help="delete what an earlier demo wrote in OUT first (otherwise finished stages resume)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    return run_cli(_demo, args)


def check_args(args: argparse.Namespace) -> None:
    """Option ranges and the output folder, before the first stage (prep) spends any time."""
    at_least(args.steps, 1, "--steps")
    at_least(args.nproc, 1, "--nproc")
    at_least(args.num_samples, 1, "--num-samples")
    at_least(args.flow_steps, 2, "--flow-steps")
    finite(args.cfg_scale, "--cfg-scale", 0.0, " (1.0 = no guidance)")
    writable_dir(args.out, "--out")


def _demo(args: argparse.Namespace) -> int:
    check_args(args)
    out = prepare_output(os.path.abspath(args.out), args.fresh)  # checked first: nothing deleted before
    stage = Stage(out)
    print(f"[demo] each stage's full output: {os.path.join(out, 'logs')}/ (pass {stage.passes} over this folder; "
          "times in the report add up every pass)", flush=True)
    data = os.path.join(out, "data")
    stage.run("prep", ["dtr_scale.prep", "--source", "digits", "--vae", "none", "--out", data,
                       "--resolution", "8", "--shard-size", "200", "--no-progress"])
    config = json.loads(json.dumps(DEMO_CONFIG))
    config["train"]["max_steps"] = args.steps
    config["parallel"]["engine"] = args.engine
    config["diffusion"]["objective"] = args.objective
    shown = DEMO_OBJECTIVES[args.objective]
    for key in shown["unused_keys"]:
        del config["diffusion"][key]
    solver = shown["solver"](args)
    config_path = os.path.join(out, "demo-config.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)

    results = {}
    for name, beta in VARIANTS.items():
        vdir = os.path.join(out, name)
        run_dir = os.path.join(vdir, "run")
        stage.run(f"train {name}", ["dtr_scale.train", "--config", config_path, f"data.path={data}",
                                    f"checkpoint.dir={run_dir}", f"model.routing.sharing_ratio={beta}"], args.nproc)
        weights = os.path.join(vdir, "weights.pt")
        stage.run(f"export {name}", ["dtr_scale.export", "--checkpoint", run_dir, "--out", weights])
        samples = os.path.join(vdir, "samples")
        stage.run(f"sample {name}", ["dtr_scale.sample", "--weights", weights, "--out", samples,
                                     f"num_samples={args.num_samples}", "labels=balanced", *solver,
                                     f"cfg_scale={args.cfg_scale}", "seed=0",
                                     "progress=false"], args.nproc)
        fd_json = os.path.join(vdir, "fd.json")
        stage.run(f"evaluate {name}", ["dtr_scale.evaluate", "--samples", os.path.join(samples, "samples.npz"),
                                       "--ref", data, "--extractor", "pixels", "--out", fd_json, "--no-ref-cache"],
                  args.nproc)
        class_grid(os.path.join(samples, "samples.npz"), os.path.join(out, f"samples_{name}.png"))
        with open(fd_json) as f:
            report = json.load(f)
        rows = read_metrics(run_dir)
        speeds = [r["img_per_s"] for r in rows if "img_per_s" in r]
        speeds = speeds[1:] or speeds  # the first window includes start-up
        results[name] = {
            "sharing_ratio": beta,
            "pixel_fd": report["metrics"]["fid"],
            "precision": report["metrics"].get("precision"),
            "recall": report["metrics"].get("recall"),
            "steps": rows[-1]["step"],
            "final_loss": rows[-1]["loss"],
            "train_img_per_s": float(np.median(speeds)) if speeds else None,
            "train_seconds": stage.times[f"train {name}"],
            "sample_seconds": stage.times[f"sample {name}"],
            "samples": args.num_samples,
        }
    plot_losses({name: read_metrics(os.path.join(out, name, "run")) for name in VARIANTS},
                os.path.join(out, "loss_curves.png"), args.objective)
    wall = stage.wall_seconds()  # every pass over OUT, like the stage times
    sampling = shown["sampling"](args)
    summary = {"wall_seconds": wall, "objective": args.objective, "engine": args.engine, "nproc": args.nproc, "model": config["model"]["name"],
               "global_batch_size": config["train"]["global_batch_size"], "sampling_steps": sampling,
               "cfg_scale": args.cfg_scale, "variants": results, "stage_seconds": stage.times,
               "passes": stage.passes}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(summary, f, indent=2)
    write_markdown(summary, os.path.join(out, "report.md"))
    print(open(os.path.join(out, "report.md")).read())
    return 0


def write_markdown(s: dict, path: str) -> None:
    lines = [
        "# dtr-scale demo: routed DiT on the digits"
        + DEMO_OBJECTIVES[s.get("objective", "ddpm")]["title"],
        "",
        f"{s['model']} trained with `parallel.engine={s['engine']}` on {s['nproc']} processes "
        f"(global batch {s['global_batch_size']}), sampled with {s['sampling_steps']} and CFG {s['cfg_scale']}, "
        f"pixel-space Fréchet distance (FD) of the samples against the 1797 training digits (lower is better).",
        "",
        "| variant | β | steps | final loss | pixel FD | precision | recall | train img/s | train s | sample s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    for name, v in s["variants"].items():
        lines.append(
            f"| {name} | {v['sharing_ratio']} | {v['steps']} | {fmt(v['final_loss'], '.4f')} | "
            f"{fmt(v['pixel_fd'], '.2f')} | {fmt(v['precision'], '.3f')} | {fmt(v['recall'], '.3f')} | "
            f"{fmt(v['train_img_per_s'], '.0f')} | {v['train_seconds']:.0f} | {v['sample_seconds']:.0f} |"
        )
    stages = ", ".join(f"{name} {sec:.0f}" for name, sec in s.get("stage_seconds", {}).items())
    passes = s.get("passes", 1)
    over = f", over {passes} passes (resumed)" if passes > 1 else ""
    lines += ["", f"Wall time, whole chain: {s['wall_seconds']:.0f} s{over} (stages, s: {stages}).", "",
              "![DTR samples, one row per class](samples_dtr.png)", "",
              "![baseline samples, one row per class](samples_baseline.png)", "",
              "![loss curves](loss_curves.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
