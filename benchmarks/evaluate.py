"""Evaluator cost: Inception throughput and the statistics / Fréchet / P/R steps at ADM scale.

    python benchmarks/evaluate.py [--device cpu|cuda] [--batches 3] [--batch-size 8] [--quick]

Rows:
- inception: images/s through torch-fidelity's InceptionV3 (random weights, fp32, TF32 off) on
  256×256 uint8 images (ImageNet-256 samples; resized to 299 inside the network).
- stats_accumulate: float64 Σx, Σxxᵀ over 50,000 × 2048 float32 features (generated in blocks).
- stats_covariance: μ, Σ from the sums (ddof = 1).
- frechet_eig: our eigenvalue Fréchet distance (2048-d, float64).
- frechet_sqrtm: the ADM/TTUR way, scipy.linalg.sqrtm of Σ1Σ2, for the ratio.
- precision_recall: k = 3 P/R on N × N random 2048-d features (N = 5000 by default).
Prints a table and writes benchmarks/results/evaluate.json (atomically).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np
import scipy.linalg
import torch

from dtr_scale.evaluation import FeatureMoments, frechet_distance, precision_recall
from dtr_scale.atomic import atomic_write_json
from dtr_scale.file_hash import file_sha256
from dtr_scale.evaluation.inception import InceptionFeatureExtractor
from dtr_scale.evaluation.random_weights import write_random_inception_weights

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "evaluate.json")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_inception(device, batches: int, batch_size: int, size: int, workdir: str) -> dict:
    weights = os.path.join(workdir, "random-inception.pth")
    if not os.path.exists(weights):
        write_random_inception_weights(weights, seed=0)
    ex = InceptionFeatureExtractor(weights, file_sha256(weights), device)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    ex(imgs)  # warm-up (allocator, cuDNN autotune)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        ex(imgs)
    _sync(device)
    dt = time.perf_counter() - t0
    n = batches * batch_size
    return {"images": n, "seconds": dt, "images_per_s": n / dt, "batch_size": batch_size, "image_size": size}


def bench_statistics(device, n: int, dim: int, block: int, with_sqrtm: bool) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    scale = torch.rand(dim, generator=gen, device=device) + 0.5
    m = FeatureMoments(dim, device)
    acc_s = 0.0
    for start in range(0, n, block):
        x = torch.randn(min(block, n - start), dim, generator=gen, device=device) * scale
        _sync(device)
        t0 = time.perf_counter()
        m.update(x)
        _sync(device)
        acc_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    g = m.reduce().gaussian()
    cov_s = time.perf_counter() - t0
    # A second Gaussian with the same spectrum scale but different orientation and mean.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((dim, dim + 16))
    sigma2, mu2 = a @ a.T / (dim + 16), g.mu + 0.05
    fr_times = []
    for _ in range(2):  # best of 2: this step is short and sensitive to other load on the host
        t0 = time.perf_counter()
        fid = frechet_distance(g.mu, g.sigma, mu2, sigma2)
        fr_times.append(time.perf_counter() - t0)
    fr_s = min(fr_times)
    out = {"n": n, "dim": dim, "accumulate_s": acc_s, "covariance_s": cov_s, "frechet_eig_s": fr_s,
           "fid": fid, "accumulate_features_per_s": n / acc_s}
    if with_sqrtm:
        t0 = time.perf_counter()
        covmean = np.real(scipy.linalg.sqrtm(g.sigma @ sigma2))
        fid_sqrtm = float((g.mu - mu2) @ (g.mu - mu2) + np.trace(g.sigma) + np.trace(sigma2) - 2 * np.trace(covmean))
        out.update(frechet_sqrtm_s=time.perf_counter() - t0, fid_sqrtm=fid_sqrtm,
                   fid_rel_diff=abs(fid - fid_sqrtm) / abs(fid_sqrtm))
    return out


def bench_precision_recall(device, n: int, dim: int) -> dict:
    gen = torch.Generator(device=device).manual_seed(2)
    ref = torch.randn(n, dim, generator=gen, device=device)
    smp = torch.randn(n, dim, generator=gen, device=device)  # same law: P and R well inside (0, 1)
    _sync(device)
    t0 = time.perf_counter()
    p, r = precision_recall(ref, smp, k=3)
    _sync(device)
    return {"n": n, "dim": dim, "seconds": time.perf_counter() - t0, "precision": p, "recall": r}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--stats-n", type=int, default=50000)
    ap.add_argument("--pr-n", type=int, default=5000)
    ap.add_argument("--no-sqrtm", action="store_true", help="skip the scipy sqrtm comparison")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dtr_scale_bench"),
                    help="where the random Inception weights file is written")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    os.makedirs(args.workdir, exist_ok=True)

    load_before = os.getloadavg()
    inc = bench_inception(device, args.batches, args.batch_size, args.image_size, args.workdir)
    stats = bench_statistics(device, args.stats_n, 2048, 5000, with_sqrtm=not args.no_sqrtm)
    prr = bench_precision_recall(device, args.pr_n, 2048) if args.pr_n > 0 else None

    rows = [
        ("inception", f"{inc['images']} imgs {args.image_size}px, bs {args.batch_size}", inc["seconds"],
         f"{inc['images_per_s']:.2f} img/s"),
        ("stats_accumulate", f"{stats['n']} x 2048 f64", stats["accumulate_s"],
         f"{stats['accumulate_features_per_s']:.0f} feat/s"),
        ("stats_covariance", "2048 x 2048", stats["covariance_s"], ""),
        ("frechet_eig", "2048-d", stats["frechet_eig_s"], f"FID {stats['fid']:.6f}"),
    ]
    if "frechet_sqrtm_s" in stats:
        rows.append(("frechet_sqrtm", "2048-d (ADM way)", stats["frechet_sqrtm_s"],
                     f"x{stats['frechet_sqrtm_s'] / stats['frechet_eig_s']:.1f} vs eig, rel diff {stats['fid_rel_diff']:.1e}"))
    if prr:
        rows.append(("precision_recall", f"{prr['n']} vs {prr['n']} x 2048, k=3", prr["seconds"],
                     f"P {prr['precision']:.4f} R {prr['recall']:.4f}"))
    print(f"\nevaluator benchmark on {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"load avg {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)")
    print(f"{'step':<18} {'size':<32} {'seconds':>9}  note")
    for name, size, sec, note in rows:
        print(f"{name:<18} {size:<32} {sec:>9.3f}  {note}")

    atomic_write_json(args.out, {
        "command": " ".join(["python benchmarks/evaluate.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # A shared host skews timings: the 1-minute load average before and after the run.
        "loadavg_1min": [load_before[0], os.getloadavg()[0]],
        "torch": torch.__version__,
        "inception": inc, "statistics": stats, "precision_recall": prr,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
