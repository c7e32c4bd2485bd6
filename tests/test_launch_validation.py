"""Submit-time validation: bad inputs fail in seconds, with a clear message, before sbatch runs.

Fast (no training): launch/submit.sh runs the batch script's --check path, i.e. the real
dtr_scale config loader and data-path check, against the fake sbatch, which logs every call.
"""
import os

import pytest

from fake_slurm.harness import REPO, TINY_CONFIG, calls, fake_env, run

SUBMIT = os.path.join(REPO, "launch", "submit.sh")
TRAIN = "launch/slurm/train.sbatch"


def submit(tmp_path, *argv, **env):
    slurm = tmp_path / "slurm"
    code, out = run([SUBMIT, *argv], fake_env(slurm, **env), timeout=120)
    return code, out, calls(slurm)


def test_missing_config_fails_before_sbatch(tmp_path):
    code, out, seen = submit(tmp_path, TRAIN, "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert f"--config {tmp_path / 'nope.yaml'}: config file not found" in out
    assert "the job was NOT submitted" in out
    assert seen == []  # sbatch was never called


def test_missing_data_path_fails_before_sbatch(tmp_path):
    code, out, seen = submit(tmp_path, TRAIN, "--config", TINY_CONFIG, f"data.path={tmp_path / 'no-data'}")
    assert code == 2
    assert f"data path {tmp_path / 'no-data'} does not exist" in out and "dtr_scale.prep" in out
    assert seen == []


def test_bad_override_and_bad_engine_fail_before_sbatch(digits_shards, tmp_path):
    code, out, seen = submit(tmp_path, TRAIN, "--config", TINY_CONFIG, f"data.path={digits_shards}",
                             "parallel.engine=horovod")
    assert code == 2 and "parallel.engine" in out and "horovod" in out and seen == []


def test_sample_and_evaluate_inputs_checked(tmp_path):
    code, out, seen = submit(tmp_path, "launch/slurm/sample.sbatch", "--weights", str(tmp_path / "ema.pt"),
                             "--out", str(tmp_path / "samples"))
    assert code == 2 and "does not exist (no weights file or checkpoint directory there)" in out and seen == []
    code, out, seen = submit(tmp_path, "launch/slurm/evaluate.sbatch", "--samples", str(tmp_path / "s.npz"),
                             "--ref", str(tmp_path / "r.npz"), "--extractor", "pixels", "--out", str(tmp_path / "r.json"))
    assert code == 2 and "--samples" in out and "not found" in out and seen == []


def test_check_only_validates_without_submitting(digits_shards, tmp_path):
    code, out, seen = submit(tmp_path, "--check", TRAIN, "--config", TINY_CONFIG, f"data.path={digits_shards}",
                             f"checkpoint.dir={tmp_path / 'run'}")
    assert code == 0, out
    assert "[check] ok: data" in out and "1797 samples in 9 shard(s)" in out
    assert "not submitting" in out and seen == []


def test_batch_script_outside_slurm_says_how_to_submit(tmp_path):
    env = fake_env(tmp_path / "slurm")
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    code, out = run(["bash", os.path.join(REPO, TRAIN), "--config", TINY_CONFIG], env, timeout=120)
    assert code == 2 and "SLURM_JOB_ID" in out and "launch/submit.sh" in out


@pytest.mark.parametrize("nodelist,hosts", [
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("gpu[001-002,7],cpu1", ["gpu001", "gpu002", "gpu7", "cpu1"]),
    ("r[1-2]n[8-9]", ["r1n8", "r1n9", "r2n8", "r2n9"]),
    ("single", ["single"]),
])
def test_hostlist_fallback_parser(nodelist, hosts):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostlist", os.path.join(REPO, "launch", "slurm", "hostlist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.expand(nodelist) == hosts
    with pytest.raises(ValueError):
        mod.expand("node[01-")


def test_unresolvable_rendezvous_host_fails_the_check(digits_shards, tmp_path):
    """A MASTER_ADDR that does not resolve would make every node retry its rendezvous for minutes."""
    code, out, seen = submit(tmp_path, "--check", TRAIN, "--config", TINY_CONFIG, f"data.path={digits_shards}",
                             MASTER_ADDR="no-such-host.invalid")
    assert code == 2 and seen == []
    assert "rendezvous host 'no-such-host.invalid' (MASTER_ADDR" in out and "does not resolve" in out
    code, out, _ = submit(tmp_path, "--check", TRAIN, "--config", TINY_CONFIG, f"data.path={digits_shards}")
    assert code == 0 and "rendezvous host 127.0.0.1 resolves" in out, out
