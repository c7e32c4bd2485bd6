"""The launch scripts under a real SLURM: Debian's slurm-wlm, slurmctld + two slurmd on this host.

Everything goes through launch/submit.sh and sbatch; signals come from SLURM itself (`scancel`,
`scancel --signal=USR1 --batch`, `scontrol requeue`), requeued jobs are started again by
slurmctld. The cluster (tests/real_slurm.py) is private to the test session and stopped after it.
Training is the tiny DiT on the digits, fp32 on CPU, a few steps.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import numpy as np
import pytest
import torch

from fake_slurm.harness import REPO, TINY_CONFIG, latest, meta, metrics
from real_slurm import ENDED, Cluster, ensure_installed

pytestmark = [pytest.mark.slurm, pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1200)]

SUBMIT = os.path.join(REPO, "launch", "submit.sh")
STOP = os.path.join(REPO, "launch", "stop.sh")
TRAIN, TRAIN_DS = "launch/slurm/train.sbatch", "launch/slurm/train_deepspeed.sbatch"
STEPS = 20  # long enough (seconds) for a signal after step 2 to land before the end


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = ensure_installed()
    if why:
        pytest.skip(f"no SLURM here: {why}")
    c = Cluster(str(tmp_path_factory.mktemp("slurm"))).start()
    yield c
    c.stop()


def train_args(data, run_dir, *extra):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}", "train.global_batch_size=8",
            "train.log_every=1", "train.preempt_check_every=1", "data.num_workers=0", "checkpoint.every=1000", *extra]


def submit(cluster, out_dir, script, args, sbatch_opts=(), **env) -> tuple[int, str]:
    """launch/submit.sh ... -> (job id, path of the job's output file)."""
    log = os.path.join(str(out_dir), "job-%j.out")
    proc = subprocess.run([SUBMIT, f"--output={log}", *sbatch_opts, script, *args], cwd=REPO,
                          env=cluster.env(**env), capture_output=True, text=True, timeout=300)
    m = re.search(r"Submitted batch job (\d+)", proc.stdout)
    assert proc.returncode == 0 and m, proc.stdout[-4000:] + proc.stderr[-4000:]
    job = int(m.group(1))
    return job, log.replace("%j", str(job))


def text(path) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def finished(cluster, job, log, timeout=600) -> dict:
    info = cluster.wait_state(job, ENDED, timeout, log)
    time.sleep(0.5)  # the output file's last lines
    return info


def wait_steps(run_dir, n, cluster, job, log, timeout=300):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and len(metrics(run_dir)) >= n:
            return
        state = cluster.job(job).get("JobState")
        assert state in ("PENDING", "RUNNING"), f"job {job} {state} before {n} steps\n{text(log)[-6000:]}"
        time.sleep(0.3)
    raise AssertionError(f"job {job}: no {n} steps after {timeout} s\n{text(log)[-6000:]}")


def ema_weights(cluster, run_dir, out_dir) -> dict:
    """The run's exported EMA weights (python -m dtr_scale.export), by name."""
    out = os.path.join(str(out_dir), "ema")
    proc = subprocess.run(["python", "-m", "dtr_scale.export", "--checkpoint", str(run_dir), "--out", out + ".pt"],
                          cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from safetensors.torch import load_file

    return load_file(out + ".safetensors")


def test_train_sbatch_usr1_preemption_requeues_resumes_and_matches_the_straight_run(cluster, digits_shards, tmp_path):
    """Two nodes x one torchrun each (c10d rendezvous on n1). `scancel --signal=USR1 --batch` is
    what `#SBATCH --signal=B:USR1@120` does at the time limit."""
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    job_a, log_a = submit(cluster, tmp_path, TRAIN, train_args(digits_shards, straight, f"train.max_steps={STEPS}"),
                          ENGINE="ddp")
    job_b, log_b = submit(cluster, tmp_path, TRAIN, train_args(digits_shards, preempted, f"train.max_steps={STEPS}"),
                          ENGINE="ddp")
    info = finished(cluster, job_a, log_a)
    out_a = text(log_a)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out_a[-6000:]
    assert "rendezvous host n1 resolves" in out_a and "[node 0 " in out_a and "[node 1 " in out_a
    assert meta(straight)["world_size"] == 2 and latest(straight) == f"step_{STEPS:09d}"

    wait_steps(preempted, 2, cluster, job_b, log_b)
    assert cluster.tool("scancel", "--signal=USR1", "--batch", str(job_b)).returncode == 0
    requeued = cluster.wait_requeued_or_ended(job_b, 300, log_b)
    assert requeued["Restarts"] == "1", text(log_b)[-6000:]
    first = text(log_b)
    stopped = int(re.search(r"checkpointed step (\d+), exiting with 75", first).group(1))
    assert stopped < STEPS
    assert "batch shell got SIGUSR1" in first
    assert "[node 0] launcher exited with 75" in first and "[node 1] launcher exited with 75" in first
    assert "step finished with exit code 75 (after SIGUSR1)" in first and "requeueing job" in first

    # slurmctld starts it again: it resumes from `latest` and ends at the straight run's weights
    info = finished(cluster, job_b, log_b)
    out_b = text(log_b)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out_b[-6000:]
    assert f"step_{stopped:09d} at step {stopped}" in out_b and out_b.count("requeueing job") == 1
    assert latest(preempted) == f"step_{STEPS:09d}"
    a, b = ema_weights(cluster, straight, tmp_path / "a"), ema_weights(cluster, preempted, tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_deepspeed_sbatch_zero2_two_nodes(cluster, digits_shards, tmp_path):
    run_dir = tmp_path / "run"
    job, log = submit(cluster, tmp_path, TRAIN_DS, train_args(digits_shards, run_dir, "train.max_steps=3"),
                      ZERO_STAGE="2")
    info = finished(cluster, job, log)
    out = text(log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-6000:]
    assert "--node_rank=0" in out and "--node_rank=1" in out
    m = meta(run_dir)
    assert m["world_size"] == 2 and m["engine"] == "deepspeed" and latest(run_dir) == "step_000000003"


def test_deepspeed_sbatch_plain_scancel_checkpoints_exits_75_and_requeues(cluster, digits_shards, tmp_path):
    """SIGTERM to every process of the step: the deepspeed launchers must neither kill the
    workers nor report 1; the step's 75 reaches the batch shell."""
    run_dir = tmp_path / "run"
    job, log = submit(cluster, tmp_path, TRAIN_DS, train_args(digits_shards, run_dir, "train.max_steps=100000"),
                      ZERO_STAGE="2")
    wait_steps(run_dir, 2, cluster, job, log)
    assert cluster.tool("scancel", str(job)).returncode == 0
    cluster.wait_requeued_or_ended(job, 300, log)
    # stop it for good before (or after) slurmctld starts it again: it then never comes back
    assert cluster.tool(STOP, str(job)).returncode == 0
    info = finished(cluster, job, log)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "1")
    out = text(log)
    assert "[node 0] launcher exited with 75" in out and "[node 1] launcher exited with 75" in out, out[-6000:]
    assert "step finished with exit code 75 (after SIGTERM)" in out and "Main process received SIGTERM" not in out
    stopped = int(re.search(r"checkpointed step (\d+), exiting with 75", out).group(1))
    assert os.path.isdir(run_dir / f"step_{stopped:09d}")


# One node each, run side by side: what the batch shell decides after SIGTERM.
TERM_CASES = {
    "requeue_on_term": ({}, "scancel"),
    "requeue_on_term_0": ({"REQUEUE_ON_TERM": "0"}, "scancel"),
    "stop_sh": ({}, "stop"),
    "external_requeue": ({}, "requeue"),
}


def test_sigterm_requeue_on_term_on_off_stop_and_external_requeue(cluster, digits_shards, tmp_path):
    jobs = {}
    for name, (env, _) in TERM_CASES.items():
        run_dir = tmp_path / name
        jobs[name] = (run_dir, *submit(cluster, tmp_path, TRAIN, train_args(digits_shards, run_dir, "train.max_steps=100000"),
                                       ["--nodes=1", f"--job-name={name}"], ENGINE="single", **env))
    for name, (_, how) in TERM_CASES.items():
        run_dir, job, log = jobs[name]
        wait_steps(run_dir, 2, cluster, job, log)
        cmd = {"scancel": ["scancel", str(job)], "stop": [STOP, str(job)],
               "requeue": ["scontrol", "requeue", str(job)]}[how]
        proc = cluster.tool(*cmd)
        assert proc.returncode == 0, proc.stderr
    ends = {}
    for name, (run_dir, job, log) in jobs.items():
        info = cluster.wait_requeued_or_ended(job, 300, log)
        if info["Restarts"] != "0":  # requeued: stop it before or after it starts again
            assert cluster.tool(STOP, str(job)).returncode == 0
            info = finished(cluster, job, log)
        time.sleep(0.5)
        out = text(log)
        m = re.search(r"checkpointed step (\d+), exiting with 75", out)
        assert m and os.path.isdir(run_dir / f"step_{int(m.group(1)):09d}"), out[-6000:]
        assert "step finished with exit code 75 (after SIGTERM)" in out, out[-6000:]
        ends[name] = (info["JobState"], info["Restarts"], out)
    state, restarts, out = ends["requeue_on_term"]
    assert (state, restarts) == ("CANCELLED", "1") and "requeueing job" in out
    state, restarts, out = ends["requeue_on_term_0"]
    assert (state, restarts) == ("CANCELLED", "0") and "REQUEUE_ON_TERM=0: not requeueing" in out
    assert "requeueing job" not in out
    state, restarts, out = ends["stop_sh"]
    assert (state, restarts) == ("CANCELLED", "0") and "stop requested (launch/stop.sh): not requeueing" in out
    state, restarts, out = ends["external_requeue"]
    assert (state, restarts) == ("CANCELLED", "1")
    assert "was already requeued from outside" in out and "requeue failed" not in out


def test_prep_sample_evaluate_sbatch_on_the_digits(cluster, tmp_path):
    data = tmp_path / "digits"
    job, log = submit(cluster, tmp_path, "launch/slurm/prep.sbatch",
                      ["--source", "digits", "--vae", "none", "--out", str(data), "--shard-size", "200", "--no-progress"],
                      ["--nodes=2", "--ntasks-per-node=1"])
    info = finished(cluster, job, log)
    assert info["JobState"] == "COMPLETED", text(log)[-6000:]
    with open(data / "dataset.json") as f:
        manifest = json.load(f)
    assert manifest["num_samples"] == 1797 and len(manifest["shards"]) == 9 and '"world_size": 2' in text(log)

    run_dir = tmp_path / "run"
    job, log = submit(cluster, tmp_path, TRAIN, train_args(data, run_dir, "train.max_steps=2"), ["--nodes=1"],
                      ENGINE="single")
    assert finished(cluster, job, log)["JobState"] == "COMPLETED", text(log)[-6000:]
    ema_weights(cluster, run_dir, tmp_path)  # writes tmp_path/ema.pt
    samples = tmp_path / "samples"
    job, log = submit(cluster, tmp_path, "launch/slurm/sample.sbatch",
                      ["--weights", str(tmp_path / "ema.pt"), "--out", str(samples), "num_samples=16", "steps=5", "seed=3",
                       "progress=false"], ["--nodes=2", "--ntasks-per-node=1"])
    assert finished(cluster, job, log)["JobState"] == "COMPLETED", text(log)[-6000:]
    with np.load(samples / "samples.npz") as npz:
        assert npz["arr_0"].shape[0] == 16 and npz["arr_0"].dtype == np.uint8

    report = tmp_path / "report.json"
    job, log = submit(cluster, tmp_path, "launch/slurm/evaluate.sbatch",
                      ["--samples", str(samples / "samples.npz"), "--ref", str(samples / "samples.npz"),
                       "--extractor", "pixels", "--no-pr", "--out", str(report)], ["--nodes=2", "--ntasks-per-node=1"])
    assert finished(cluster, job, log)["JobState"] == "COMPLETED", text(log)[-6000:]
    with open(report) as f:
        result = json.load(f)
    assert result["world_size"] == 2 and result["counts"]["samples"] == 16
    assert abs(result["metrics"]["fid"]) < 1e-3  # the samples against themselves (sqrtm rounding)
