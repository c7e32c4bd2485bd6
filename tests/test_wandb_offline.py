"""Weights & Biases in offline mode: a tiny training run and its resume, read back with wandb's
own reader of the run files (`wandb leet inspect --json`). No network, no account."""
import json
import shutil
import subprocess
import sys

import pytest

from launch_helpers import metrics, train

pytest.importorskip("wandb")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def read_wandb_run(run_file):
    """Records of one offline run file, through wandb's CLI (the Python reader left the package)."""
    wandb_cli = shutil.which("wandb") or f"{sys.executable} -m wandb"
    proc = subprocess.run(f"{wandb_cli} leet inspect --json {run_file}", shell=True, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_offline_run_has_the_scalars_and_grids_and_a_resume_continues_its_id(digits_shards, tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"), "WANDB_SILENT": "true"}
    flags = ["log.wandb=true", "log.wandb_project=dtr-test", "train.sample_every=2", "eval.sampling_steps=ddim2",
             "checkpoint.every=2"]
    first = train(digits_shards, str(run_dir), *flags, "train.max_steps=2", nproc=1, env=env, timeout=400)
    train(digits_shards, str(run_dir), *flags, "train.max_steps=4", nproc=1, env=env, timeout=400)

    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    run_files = sorted((tmp_path / "wandb_dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2 and all(p.name == f"run-{run_id}.wandb" for p in run_files)

    history = {}
    for path in run_files:
        records = read_wandb_run(path)
        runs = [r["run"] for r in records if r.get("type") == "run"]
        assert runs and all(r["run_id"] == run_id and r["project"] == "dtr-test" for r in runs)
        assert runs[0]["config"]["update"]["model"]["name"] == "DiT-T/2"  # the resolved config
        for r in records:
            if r.get("type") == "history":
                history.setdefault(r["history"]["step"]["num"], {}).update(r["history"]["item"])
    assert set(history) == {1, 2, 3, 4}  # train.log_every=1; the resume continued the same run

    # The same scalars as TensorBoard (every finite number of metrics.jsonl), per step.
    for row in metrics(str(run_dir)):
        for key, value in row.items():
            if key != "step" and isinstance(value, float):
                assert history[row["step"]][key] == pytest.approx(value), key
    for step in (2, 4):  # the in-loop sample grids, as images
        assert history[step]["samples._type"] == "image-file" and history[step]["samples.width"] > 0

    # The console: the thread choice and one line pointing at the config, not the config itself.
    out = first.stdout
    assert out.count("threads:") == 1 and "resolved config" in out and "model:\n" not in out
    assert "step 2/2 (100%)" in (run_dir / "train.log").read_text()
