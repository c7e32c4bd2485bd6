"""Shard checks when training starts (real CLI, real tar shards): a truncated shard stops a
`data.on_error=raise` run before its first step, naming the file; under `skip` it is left out
once, named in one warning, and counted in `data_errors` from the first metrics line on."""
import os
import shutil

import pytest

from dtr_scale.data import DataError, read_manifest, verify_shards
from launch_helpers import metrics, train

pytestmark = [pytest.mark.timeout(600)]
BAD = "shard-000003.tar"


@pytest.fixture
def truncated(digits_shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_shards, data)
    shard = data / BAD
    shard.write_bytes(shard.read_bytes()[:4096])
    return data


def test_verify_shards_reports_each_bad_file_with_sizes(truncated):
    manifest = read_manifest(truncated)
    expected = next(s.bytes for s in manifest.shards if s.name == BAD)
    good, bad = verify_shards(manifest, "skip", warn=False)
    assert [os.path.basename(f) for f, _ in bad] == [BAD]
    assert f"is 4096 bytes, dataset.json says {expected}" in bad[0][1]
    assert BAD not in [s.name for s in good] and len(good) == len(manifest.shards) - 1
    with pytest.raises(DataError, match=rf"{BAD} is 4096 bytes, dataset.json says {expected}"):
        verify_shards(manifest, "raise")


def test_raise_stops_the_run_before_step_one(truncated, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(truncated, run_dir, "train.max_steps=3", "data.on_error=raise", "parallel.engine=single",
                 nproc=1, check=False)
    assert proc.returncode != 0
    assert BAD in proc.stderr and "4096 bytes" in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists() or not metrics(run_dir)  # no step ran


@pytest.mark.distributed
@pytest.mark.slow
def test_skip_names_the_shard_once_counts_it_from_the_first_line_and_completes(truncated, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(truncated, run_dir, "train.max_steps=3", "parallel.engine=ddp", nproc=2)
    named = [line for line in (proc.stdout + proc.stderr).splitlines() if BAD in line]
    assert len(named) == 1 and "WARNING" in named[0], named  # two ranks, one warning
    rows = metrics(run_dir)
    assert rows[0]["step"] == 1 and rows[0]["data_errors"] == 1  # counted once, not once per rank
    assert rows[-1]["step"] == 3
