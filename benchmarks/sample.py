"""Sampler throughput vs DiT's reference sampling loop, measured in one run on this machine.

Model: DiT-S/2 on 32×32×4 latents (256px SD-VAE size), random weights, DDPM with classifier-free
guidance. Two ways to sample the same number of images:

  reference  DiT's sample.py loop: x_T from the global torch RNG, sampler state doubled for CFG
             ([z; z], labels [y; null]), `diffusion.p_sample_loop(model.forward_with_cfg, ...)`,
             second half thrown away, then DiT's uint8 conversion.
  ours       `dtr_scale.sampling.generate`: per-sample generators (noise drawn row by row),
             only the model call doubled, same uint8 conversion.

A second pair of rows swaps the DiT for a null model (zeros, no compute) to isolate what the
sampler itself costs per step (noise draws and diffusion arithmetic).

Both methods alternate for --rounds rounds; each reports its best round (least disturbed by
other processes on a shared machine). No VAE decode in either (it is the same for both).

    python benchmarks/sample.py [--images 2] [--steps 250] [--rounds 3] [--threads 1]

On a CPU the default is 20 DDPM steps (250 steps of DiT-S/2 take minutes per image here); the
step count used is printed and stored. Writes benchmarks/results/sample.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from dtr_scale.diffusion import create_diffusion
from dtr_scale.models import create_model
from dtr_scale.sampling import generate, to_uint8

NUM_CLASSES = 1000


class NullDiT(torch.nn.Module):
    """Same interface and output shape as DiT-S/2 (learned sigma: 8 channels), no compute."""

    in_channels, input_size, num_classes = 4, 32, NUM_CLASSES

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the sampler a device to read

    def forward(self, x, t, y):
        return torch.zeros(x.shape[0], 2 * self.in_channels, *x.shape[2:], device=x.device)

    def forward_with_cfg(self, x, t, y, cfg_scale, cfg_channels=None):
        return self.forward(x, t, y)


def reference_loop(model, diffusion, n: int, cfg_scale: float, seed: int):
    """DiT's sample.py (minus the VAE): global RNG, doubled sampler state for CFG."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    z = torch.randn(n, model.in_channels, model.input_size, model.input_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (n,), device=device)
    z = torch.cat([z, z], 0)
    y = torch.cat([y, torch.full((n,), NUM_CLASSES, device=device)], 0)
    samples = diffusion.p_sample_loop(model.forward_with_cfg, z.shape, z, clip_denoised=False,
                                      model_kwargs=dict(y=y, cfg_scale=cfg_scale), progress=False, device=device)
    samples, _ = samples.chunk(2, dim=0)
    return to_uint8(samples)


def ours(model, diffusion, n: int, cfg_scale: float, seed: int):
    return generate(model, diffusion, range(n), seed=seed, cfg_scale=cfg_scale, batch_size=n)[0]


def timed(fn, *args) -> float:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(*args)  # both end in a .cpu() copy of the uint8 images, which also syncs
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compare(model, diffusion, n: int, cfg_scale: float, rounds: int) -> dict:
    best = {"reference": float("inf"), "ours": float("inf")}
    for r in range(rounds):
        best["reference"] = min(best["reference"], timed(reference_loop, model, diffusion, n, cfg_scale, r))
        best["ours"] = min(best["ours"], timed(ours, model, diffusion, n, cfg_scale, r))
    return {k: {"seconds": v, "images_per_s": n / v} for k, v in best.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="DDPM steps (default 250 on CUDA, 20 on CPU)")
    p.add_argument("--null-steps", type=int, default=250, help="steps for the null-model (overhead) rows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sample.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    steps = args.steps or (250 if cuda else 20)
    device = torch.device("cuda" if cuda else "cpu")

    torch.manual_seed(0)
    dit = create_model("DiT-S/2", input_size=32, in_channels=4, num_classes=NUM_CLASSES).eval().to(device)
    dit_rows = compare(dit, create_diffusion(str(steps)), args.images, args.cfg_scale, args.rounds)
    # The null rows take well under a second: more rounds cost nothing and steady them.
    null_rows = compare(NullDiT().eval().to(device), create_diffusion(str(args.null_steps)), args.images,
                        args.cfg_scale, max(args.rounds, 5))

    print(f"\nDDPM with CFG (scale {args.cfg_scale}), {args.images} images per call, best of {args.rounds} "
          f"rounds, {device.type}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'model':<10} {'steps':>5} {'method':<10} {'seconds':>9} {'images/s':>9} {'s/step':>9}")
    for name, rows, n_steps in (("DiT-S/2", dit_rows, steps), ("null", null_rows, args.null_steps)):
        for method in ("reference", "ours"):
            r = rows[method]
            print(f"{name:<10} {n_steps:>5} {method:<10} {r['seconds']:>9.3f} {r['images_per_s']:>9.4f} "
                  f"{r['seconds'] / n_steps:>9.5f}")
    ratio = dit_rows["ours"]["images_per_s"] / dit_rows["reference"]["images_per_s"]
    null_ratio = null_rows["ours"]["images_per_s"] / null_rows["reference"]["images_per_s"]
    print(f"ours / reference images/s: DiT-S/2 {ratio:.3f}, null model (sampler overhead only) {null_ratio:.3f}")

    result = {
        "benchmark": "sample", "model": "DiT-S/2", "latent": [4, 32, 32], "weights": "random (DiT init)",
        "sampler": "ddpm", "steps": steps, "steps_note": None if steps == 250 else
        f"{steps} steps instead of 250: 250 DiT-S/2 steps take minutes per image on this CPU",
        "cfg_scale": args.cfg_scale, "images": args.images, "rounds": args.rounds, "threads": args.threads,
        "dit": dit_rows, "null_model": {"steps": args.null_steps, "rounds": max(args.rounds, 5), **null_rows},
        "ratio_ours_over_reference": ratio, "null_ratio_ours_over_reference": null_ratio,
        "device": device.type if not cuda else torch.cuda.get_device_name(0),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
