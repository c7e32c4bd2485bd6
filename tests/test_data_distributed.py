"""Real `torchrun --nproc_per_node=2` (gloo): the loader splits an epoch across ranks and
workers, and a 2-process prep writes the same bytes as a 1-process prep.

This file is also the torchrun worker script (see the __main__ block at the bottom).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dtr_scale.data.synthetic import write_synthetic_shards

COUNTS = [11, 7, 13, 5, 9, 12, 8]  # 65 samples in 7 shards: uneven over 2 ranks x 2 workers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.distributed
def test_two_ranks_two_workers_read_each_sample_once(tmp_path):
    shards = write_synthetic_shards(tmp_path / "s", counts=COUNTS, latent_shape=(1, 2, 2))
    torchrun([__file__, "read", str(shards), str(tmp_path)])
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(p["world_size"] == 2 for p in per_rank)
    ids = [set(p["ids"]) for p in per_rank]
    assert len(per_rank[0]["ids"]) == len(ids[0]) and len(per_rank[1]["ids"]) == len(ids[1])
    assert not ids[0] & ids[1]
    assert sorted(ids[0] | ids[1]) == list(range(sum(COUNTS)))


@pytest.mark.distributed
def test_two_process_prep_matches_one_process(tmp_path):
    args = ["--source", "digits", "--vae", "none", "--shard-size", "300", "--no-progress"]
    torchrun(["-m", "dtr_scale.prep", *args, "--out", str(tmp_path / "two")])
    from dtr_scale.prep import main as prep_main

    prep_main(args + ["--out", str(tmp_path / "one")])
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.glob("shard-*.tar")) + ["dataset.json"]
    assert len(names) == 7
    for n in names:
        assert (one / n).read_bytes() == (two / n).read_bytes(), n


def _read_main(path, out_dir):
    import torch
    import torch.distributed as dist

    from dtr_scale.data import LatentLoader, check_data_path
    from dtr_scale.parallel.process_group import init_distributed, shutdown

    check_data_path(path)  # before the process group, as the training loop does
    env = init_distributed(backend="gloo")
    try:
        loader = LatentLoader(path, 4, rank=env.rank, world_size=env.world_size, num_workers=2,
                              seed=7, shuffle_buffer=16)
        ids = []
        for x, _ in loader:
            ids += x.reshape(x.shape[0], -1)[:, 0].round().long().tolist()
        dist.barrier()
        Path(out_dir, f"rank{env.rank}.json").write_text(
            json.dumps({"ids": ids, "world_size": dist.get_world_size()}))
        del torch
    finally:
        shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "read":
        _read_main(sys.argv[2], sys.argv[3])
