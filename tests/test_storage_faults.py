"""Storage faults under `checkpoint.dir`, on real filesystems mounted by the test (tmpfs; needs
root, skipped only where mounting is not permitted): a disk that fills up mid-run, a read-only
folder, a folder under a file."""
import contextlib
import hashlib
import os
import subprocess
import time

import pytest
import torch

from dtr_scale import train as train_cli
from launch_helpers import TINY_CONFIG, flatten, metrics, train

pytestmark = pytest.mark.timeout(600)
STEPS = ["train.max_steps=4", "checkpoint.every=2", "checkpoint.keep=3"]


@contextlib.contextmanager
def tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path, options):
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, timeout=30)


def digest(path) -> dict:
    out = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, name), path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def state_tensors(step_dir, scratch):
    """Every tensor of a checkpoint's DCP state, consolidated (tensors only: weights-only load)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = os.path.join(scratch, "_".join(step_dir.split(os.sep)[-3:]) + ".pt")
    dcp_to_torch_save(os.path.join(step_dir, "state"), target)
    return dict(flatten(torch.load(target, weights_only=True)))


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_disk_full_mid_run_then_resume_ends_at_the_straight_run(digits_shards, tmp_path):
    straight = str(tmp_path / "straight")
    train(digits_shards, straight, *STEPS, nproc=1)

    with tmpfs(tmp_path / "mnt", "size=45m") as mnt:  # room for one checkpoint (~30 MiB), not two
        run_dir = os.path.join(mnt, "run")
        train(digits_shards, run_dir, "train.max_steps=2", "checkpoint.every=2", "checkpoint.keep=3", nproc=1)
        first = os.path.join(run_dir, "step_000000002")
        before = digest(first)

        proc = train(digits_shards, run_dir, *STEPS, nproc=1, check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        line = lines[0]
        assert os.path.join(run_dir, "step_000000004") in line and "No space left on device" in line
        assert "needs about" in line and "free" in line and "latest still names step_000000002" in line
        assert "has" in proc.stderr and "free, one more checkpoint needs about" in proc.stderr  # start-up warning
        assert digest(first) == before  # the previous checkpoint is intact ...
        with open(os.path.join(run_dir, "latest")) as f:
            assert f.read().strip() == "step_000000002"  # ... and still the latest
        assert not [d for d in os.listdir(run_dir) if d.startswith(".tmp-")]  # the partial save is gone

        # a leftover of an interrupted save, as a kill during a save leaves it
        leftover = os.path.join(run_dir, ".tmp-step_000000003")
        os.makedirs(os.path.join(leftover, "state"))
        with open(os.path.join(leftover, "state", "__0_0.distcp"), "wb") as f:
            f.write(b"\0" * 1000)
        remount(mnt, "size=100m")  # space freed; no hand clean-up
        proc = train(digits_shards, run_dir, *STEPS, nproc=1)
        assert f"removed {leftover}" in proc.stderr
        assert not os.path.exists(leftover)

        scratch = str(tmp_path / "scratch")
        os.makedirs(scratch)
        resumed = state_tensors(os.path.join(run_dir, "step_000000004"), scratch)
        reference = state_tensors(os.path.join(straight, "step_000000004"), scratch)
        assert resumed.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(resumed[key], value), key
        # the log keeps the failed attempt's lines too; the rerun's (the last per step) match
        losses = lambda d: {m["step"]: m["loss"] for m in metrics(d) if "loss" in m}  # noqa: E731
        assert losses(run_dir) == losses(straight)


def _fails_fast(digits_shards, ckpt_dir, capsys):
    tic = time.monotonic()
    code = train_cli.main(["--config", TINY_CONFIG, f"data.path={digits_shards}", f"checkpoint.dir={ckpt_dir}",
                           "data.num_workers=0", "train.max_steps=1"])
    seconds = time.monotonic() - tic
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert seconds < 10, seconds
    return lines[0]


def test_read_only_checkpoint_dir_fails_fast(digits_shards, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        line = _fails_fast(digits_shards, os.path.join(ro, "run"), capsys)  # cannot be created
        assert os.path.join(ro, "run") in line and "Read-only file system" in line
        line = _fails_fast(digits_shards, ro, capsys)  # exists, takes no file
        assert f"checkpoint.dir {ro} is not writable" in line and "Read-only file system" in line


def test_checkpoint_dir_under_a_file_fails_fast(digits_shards, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    line = _fails_fast(digits_shards, str(blocker / "run"), capsys)
    assert f"{blocker} is a file, not a directory" in line
    line = _fails_fast(digits_shards, str(blocker), capsys)
    assert f"checkpoint.dir {blocker} is a file" in line
    assert blocker.read_text() == "not a folder\n"


@pytest.mark.distributed
@pytest.mark.slow
def test_disk_full_on_two_ranks_stops_both_with_one_line_each(digits_shards, tmp_path):
    """DDP over gloo: the ranks agree on the failure (one all-reduce), each prints one line, rank 0
    removes the partial folder, and `latest` keeps naming the first checkpoint."""
    with tmpfs(tmp_path / "mnt", "size=45m") as mnt:
        run_dir = os.path.join(mnt, "run")
        proc = train(digits_shards, run_dir, "parallel.engine=ddp", *STEPS, check=False, timeout=600)
        assert proc.returncode != 0
        lines = error_lines(proc.stderr)
        # One line per rank that reports (rank 0 and the rank whose write failed), each naming the cause.
        assert 1 <= len(lines) <= 2 and all("No space left on device" in line for line in lines), proc.stderr[-3000:]
        assert any("latest still names step_000000002" in line for line in lines)
        with open(os.path.join(run_dir, "latest")) as f:
            assert f.read().strip() == "step_000000002"
        assert sorted(os.listdir(run_dir)) == ["config.yaml", "latest", "metrics.jsonl", "step_000000002",
                                               "tensorboard", "train.log"]
