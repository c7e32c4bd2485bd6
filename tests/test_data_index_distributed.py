"""Real `torchrun --nproc_per_node=2` (gloo): on a dataset written before the sample index, rank 0
reads the tar headers and keeps the index; rank 1 waits and reads rank 0's, opening no shard.

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


def torchrun(args, timeout=240):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

COUNTS = [11, 7, 13, 5, 9, 12, 8]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_only_rank_0_reads_the_headers_of_an_old_dataset(tmp_path):
    data = write_synthetic_shards(tmp_path / "data", counts=COUNTS, latent_shape=(1, 2, 2))
    doc = json.loads((data / "dataset.json").read_text())  # as prep wrote it before the index
    del doc["index"]
    for s in doc["shards"]:
        del s["index_sha256"]
    (data / "dataset.json").write_text(json.dumps(doc))
    (data / "index.npy").unlink()
    torchrun([__file__, str(data), str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["shards_opened"] == len(COUNTS) and ranks[1]["shards_opened"] == 0
    assert ranks[0]["index_file"] == ranks[1]["index_file"] and "/_index/" in ranks[0]["index_file"]
    assert len(list((data / "_index").iterdir())) == 2


def _main(path, out_dir):
    opened = []
    sys.addaudithook(lambda ev, a: opened.append(os.fsdecode(a[0])) if ev in ("open", "os.open")
                     and isinstance(a[0], (str, bytes, os.PathLike)) else None)
    from dtr_scale.data import GlobalLoader
    from dtr_scale.parallel.process_group import init_distributed, shutdown

    env = init_distributed(backend="gloo")
    try:
        start = len(opened)
        loader = GlobalLoader(path, 4, rank=env.rank, world_size=env.world_size, seed=1)
        shards = {p for p in opened[start:] if p.endswith(".tar")}
        Path(out_dir, f"rank{env.rank}.json").write_text(
            json.dumps({"shards_opened": len(shards), "index_file": loader.index.file}))
    finally:
        shutdown()


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
