"""Two ranks (real torchrun, gloo) give the one-rank statistics, FID, IS and precision/recall.

This file is also the worker: `torchrun --nproc_per_node=2 tests/test_eval_distributed.py OUT`
runs `_worker`, which computes everything from data every rank regenerates from fixed seeds, each
rank feeding only its own slice, and rank 0 saves the results for the test to compare.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dtr_scale.evaluation import (
    FeatureMoments,
    InceptionScoreAccumulator,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
    reduce_moments,
)
from dtr_scale.evaluation.collectives import all_gather_rows, rank_slice

N_FEAT, D_FEAT = 101, 10
N_LOGITS, N_CLASSES, SPLIT = 103, 20, 30
N_REF, N_SMP, D_PR, BLOCK = 90, 77, 6, 16


def _data():
    rng = np.random.default_rng(1234)
    return {
        "x": rng.standard_normal((N_FEAT, D_FEAT)) * rng.uniform(0.5, 2, D_FEAT) + 1.5,
        "x2": rng.standard_normal((N_FEAT, 5)),  # a second accumulator in the same all-reduce
        "y_mu": rng.standard_normal(D_FEAT),
        "y_sigma": np.cov(rng.standard_normal((500, D_FEAT)), rowvar=False),
        "logits": rng.standard_normal((N_LOGITS, N_CLASSES)) * 3,
        "ref": rng.standard_normal((N_REF, D_PR)),
        "smp": rng.standard_normal((N_SMP, D_PR)) * 1.2 + 0.25,
    }


def _compute(rank: int, world_size: int) -> dict:
    """Every metric, from this rank's slices only (world_size 1: the plain single-process run)."""
    d = _data()
    s0, s1 = rank_slice(N_FEAT, rank, world_size)
    m, m2 = FeatureMoments(D_FEAT), FeatureMoments(5)
    for b in range(s0, s1, 13):
        m.update(torch.from_numpy(d["x"][b : min(b + 13, s1)]))
    m2.update(d["x2"][s0:s1])
    total, total2 = reduce_moments([m, m2])
    g = total.gaussian()
    out = {"mu": g.mu, "sigma": g.sigma, "count": g.count, "mu2": total2.gaussian().mu}
    out["fid"] = frechet_distance(g.mu, g.sigma, d["y_mu"], d["y_sigma"])
    out["gathered"] = all_gather_rows(torch.from_numpy(d["x"][s0:s1])).numpy()

    l0, l1 = rank_slice(N_LOGITS, rank, world_size)
    acc = InceptionScoreAccumulator(N_CLASSES, N_LOGITS, SPLIT)
    for b in range(l0, l1, 11):
        acc.update(d["logits"][b : min(b + 11, l1)], b)
    out["is"] = acc.result()

    ref, smp = torch.from_numpy(d["ref"]), torch.from_numpy(d["smp"])
    for name, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        out[f"pr_{name}"] = np.array(precision_recall(ref, smp, k=3, row_block=BLOCK, col_block=BLOCK, dtype=dtype))
        out[f"radii_{name}"] = manifold_radii(ref, 3, row_block=BLOCK, col_block=BLOCK, dtype=dtype).numpy()
    return out


def _worker(out_path: str) -> None:
    from dtr_scale.parallel.process_group import init_distributed, shutdown

    torch.set_num_threads(1)
    env = init_distributed()
    try:
        assert env.world_size == 2, env
        result = _compute(env.rank, env.world_size)
        if env.rank == 0:
            np.savez(out_path, **result)
    finally:
        shutdown()


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.distributed
def test_two_ranks_match_one_rank(tmp_path):
    out = tmp_path / "two_ranks.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.abspath(__file__), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = dict(np.load(out))
    torch.set_num_threads(1)
    one = _compute(0, 1)

    assert int(two["count"]) == one["count"] == N_FEAT
    assert _rel(two["mu"], one["mu"]) <= 1e-10
    assert _rel(two["sigma"], one["sigma"]) <= 1e-10
    assert _rel(two["mu2"], one["mu2"]) <= 1e-10
    assert abs(float(two["fid"]) - one["fid"]) <= 1e-10 * abs(one["fid"])
    # Rank-order gather restores the global index order.
    assert np.array_equal(two["gathered"], _data()["x"])
    # IS: both equal the direct ADM-split formula on all logits in file order.
    direct_is = inception_score(_data()["logits"], SPLIT)
    assert abs(float(two["is"]) - direct_is) <= 1e-10 * direct_is
    assert abs(one["is"] - direct_is) <= 1e-10 * direct_is
    # P/R and radii: bit-identical, since every block is computed the same way on either rank.
    for name in ("f32", "f64"):
        assert np.array_equal(two[f"pr_{name}"], one[f"pr_{name}"]), name
        assert np.array_equal(two[f"radii_{name}"], one[f"radii_{name}"]), name


if __name__ == "__main__":
    _worker(sys.argv[1])
