"""`python -m dtr_scale.evaluate` end to end: 1 process and 2 processes (torchrun) agree."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dtr_scale.evaluation import frechet_distance, precision_recall
from dtr_scale.file_hash import file_sha256
from dtr_scale.evaluation.random_weights import write_random_inception_weights
from dtr_scale.evaluation.references import load_reference_cache

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(args, nproc=1, timeout=300):
    if nproc == 1:
        cmd = [sys.executable, "-m", "dtr_scale.evaluate", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "dtr_scale.evaluate", *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _digits_like(n, seed, shift=0):
    # 8×8 grayscale blobs: tiny data of the kind the pixels extractor exists for.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:8, :8]
    cy, cx = rng.uniform(2, 6, (2, n, 1, 1)) + shift
    img = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0) + rng.normal(0, 8, (n, 8, 8))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.distributed
def test_pixels_cli_one_and_two_processes_agree(tmp_path):
    # More images than the 64 pixel dimensions: with rank-deficient covariances the Fréchet
    # distance amplifies round-off (sqrt of ~1e-17 eigenvalues) and 1e-9 agreement is not defined.
    samples, ref = _digits_like(90, 0, shift=0.4), _digits_like(110, 1)
    np.savez(tmp_path / "samples.npz", samples)  # stored: memory-mapped
    np.savez_compressed(tmp_path / "ref.npz", ref)  # deflated: streamed
    common = ["--samples", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
              "--extractor", "pixels", "--batch-size", "8", "--pr-block", "16", "--seed", "7"]
    line1 = _run([*common, "--out", str(tmp_path / "one.json"), "--ref-cache", str(tmp_path / "cache")])
    _run([*common, "--out", str(tmp_path / "two.json"), "--no-ref-cache"], nproc=2)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))

    assert "FID" in line1 and "90 samples" in line1
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["counts"] == two["counts"] == {"samples": 90, "reference_images": 110, "reference_statistics": 110}
    assert one["seed"] == 7 and one["extractor"]["name"] == "pixels"
    m1, m2 = one["metrics"], two["metrics"]
    assert m1["sfid"] is None and m1["inception_score"] is None  # pixels give pool features only
    assert abs(m1["fid"] - m2["fid"]) <= 1e-9 * m1["fid"]
    assert (m1["precision"], m1["recall"]) == (m2["precision"], m2["recall"])

    # ...and both equal the metrics computed directly from the pixels.
    fs = samples.reshape(90, -1).astype(np.float32) / np.float32(255)
    fr = ref.reshape(110, -1).astype(np.float32) / np.float32(255)
    f64s, f64r = fs.astype(np.float64), fr.astype(np.float64)
    fid = frechet_distance(f64s.mean(0), np.cov(f64s, rowvar=False), f64r.mean(0), np.cov(f64r, rowvar=False))
    assert abs(m1["fid"] - fid) <= 1e-8 * fid
    import torch
    p, r = precision_recall(torch.from_numpy(fr), torch.from_numpy(fs))
    assert (m1["precision"], m1["recall"]) == (p, r)


@pytest.mark.slow
def test_inception_cli_with_image_reference_and_adm_reference(tmp_path):
    weights = str(tmp_path / "random-inception.pth")
    write_random_inception_weights(weights, seed=1)
    rng = np.random.default_rng(2)
    smp = rng.integers(0, 256, (6, 4, 4, 3)).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    ref = rng.integers(0, 256, (6, 4, 4, 3)).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", smp)
    np.savez(tmp_path / "ref_images.npz", ref)
    common = ["--samples", str(tmp_path / "samples.npz"), "--extractor", "inception",
              "--inception-weights", weights, "--inception-sha256", file_sha256(weights),
              "--batch-size", "3", "--is-split-size", "4"]
    _run([*common, "--ref", str(tmp_path / "ref_images.npz"), "--out", str(tmp_path / "a.json"),
          "--ref-cache", str(tmp_path / "cache")])
    a = json.loads((tmp_path / "a.json").read_text())
    ma = a["metrics"]
    assert all(np.isfinite(ma[k]) for k in ("fid", "sfid", "inception_score", "precision", "recall"))
    assert ma["fid"] > 0 and ma["sfid"] > 0 and ma["inception_score"] >= 1.0
    assert a["extractor"]["weights_sha256"] == file_sha256(weights)

    # An ADM-layout reference batch holding the same statistics (from the cache) and images.
    (cached_path,) = glob.glob(str(tmp_path / "cache" / "*.npz"))
    cached = load_reference_cache(cached_path)
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=ref, mu=cached.pool.mu, sigma=cached.pool.sigma,
             mu_s=cached.spatial.mu, sigma_s=cached.spatial.sigma)
    _run([*common, "--ref", str(tmp_path / "VIRTUAL_ref.npz"), "--out", str(tmp_path / "b.json"), "--no-ref-cache"])
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["reference"]["source"] == "adm-npz"
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert b["metrics"][key] == pytest.approx(ma[key], rel=1e-12), key
