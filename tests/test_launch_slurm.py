"""The SLURM launch scripts, run end to end against fake srun/sbatch/scontrol (tests/fake_slurm).

The fake sbatch runs the batch script here as a 2-node x 1-task CPU job (node01, node02, both
this machine); the fake srun starts one local process per task with its SLURM variables. What
runs under them is real: torchrun with a c10d rendezvous, the deepspeed launcher with --no_ssh,
gloo process groups, training, checkpoints, signals.
"""
import json
import os
import signal

import pytest

from fake_slurm.harness import (REPO, TINY_CONFIG, calls, fake_env, finish, latest, meta, metrics, run, start,
                                wait_for)

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

SUBMIT = os.path.join(REPO, "launch", "submit.sh")
TRAIN = "launch/slurm/train.sbatch"
TRAIN_DS = "launch/slurm/train_deepspeed.sbatch"


def train_args(data, run_dir, *extra):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}",
            "train.global_batch_size=8", "train.log_every=1", "data.num_workers=0", *extra]


def test_train_sbatch_torchrun_two_nodes(digits_shards, tmp_path):
    run_dir, slurm = tmp_path / "run", tmp_path / "slurm"
    code, out = run([SUBMIT, TRAIN, *train_args(digits_shards, run_dir, "train.max_steps=3")],
                    fake_env(slurm, ENGINE="ddp"))
    assert code == 0, out[-6000:]
    # submit validated, then sbatch -> one srun with one torchrun per node
    tools = [c.split()[0] for c in calls(slurm)]
    assert tools[0] == "sbatch" and tools.count("srun") == 1, tools
    srun_line = next(c for c in calls(slurm) if c.startswith("srun"))
    assert "--nnodes=2" in srun_line and "--rdzv_backend=c10d" in srun_line
    assert "--rdzv_endpoint=127.0.0.1:" in srun_line and "parallel.engine=ddp" in srun_line
    assert "scontrol show hostnames" in "\n".join(calls(slurm))
    assert "[node 0 " in out and "[node 1 " in out  # one launcher per fake node
    # it trained 3 steps on 2 ranks and checkpointed
    assert latest(run_dir) == "step_000000003"
    assert meta(run_dir)["world_size"] == 2 and meta(run_dir)["engine"] == "ddp"
    assert [m["step"] for m in metrics(run_dir)] == [1, 2, 3]
    assert not os.path.exists(slurm / "requeue.log")


def test_train_deepspeed_sbatch_zero2_no_ssh(digits_shards, tmp_path):
    run_dir, slurm = tmp_path / "run", tmp_path / "slurm"
    code, out = run([SUBMIT, TRAIN_DS, *train_args(digits_shards, run_dir, "train.max_steps=3")],
                    fake_env(slurm, ZERO_STAGE="2"))
    assert code == 0, out[-6000:]
    srun_line = next(c for c in calls(slurm) if c.startswith("srun"))
    assert "deepspeed.launcher.runner" in srun_line and "--no_ssh" in srun_line
    assert srun_line.rstrip().endswith("parallel.engine=deepspeed parallel.zero_stage=2")
    # node_run.sh filled in the per-node rank and the node-local hostfile
    assert "--node_rank=0" in out and "--node_rank=1" in out
    assert "WORLD INFO DICT: {'node01': [0], 'node02': [0]}" in out
    assert latest(run_dir) == "step_000000003"
    m = meta(run_dir)
    assert m["world_size"] == 2 and m["engine"] == "deepspeed"
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3]


@pytest.mark.parametrize("script,engine_env", [(TRAIN, {"ENGINE": "ddp"}), (TRAIN_DS, {"ZERO_STAGE": "2"})],
                         ids=["torchrun-ddp", "deepspeed-zero2"])
def test_usr1_checkpoints_requeues_and_resumes(script, engine_env, digits_shards, tmp_path):
    """torchrun turns the workers' exit 75 into 1, the deepspeed launcher passes 75 on: both requeue."""
    run_dir, slurm = tmp_path / "run", tmp_path / "slurm"
    env = fake_env(slurm, **engine_env)
    args = train_args(digits_shards, run_dir, "train.max_steps=5000", "checkpoint.every=5000")
    # submit.sh execs sbatch, which execs the batch shell: this pid is the batch script
    proc = start([SUBMIT, script, *args], env)
    wait_for(lambda: len(metrics(run_dir)) >= 2, proc, 240, "two training steps")
    os.kill(proc.pid, signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does
    code, out = finish(proc, 240)
    assert code == 0, out[-6000:]  # requeued: the batch script itself succeeded
    assert "batch shell got SIGUSR1" in out and "relaying USR1" in out
    with open(slurm / "requeue.log") as f:
        assert f.read().split() == [env["FAKE_SLURM_JOB_ID"]]
    stopped = meta(run_dir)["step"]
    assert 2 <= stopped < 5000
    assert latest(run_dir) == f"step_{stopped:09d}"
    assert metrics(run_dir)[-1]["step"] == stopped

    # SLURM starts the requeued job again: it resumes from `latest` and finishes
    env2 = dict(env, FAKE_SLURM_RESTART_COUNT="1")
    args2 = train_args(digits_shards, run_dir, f"train.max_steps={stopped + 2}", "checkpoint.every=5000")
    code, out = run([SUBMIT, script, *args2], env2)
    assert code == 0, out[-6000:]
    assert "resumed from " in out and f"step_{stopped:09d} at step {stopped}" in out
    assert latest(run_dir) == f"step_{stopped + 2:09d}"
    assert [m["step"] for m in metrics(run_dir)][-2:] == [stopped + 1, stopped + 2]
    with open(slurm / "requeue.log") as f:
        assert len(f.read().split()) == 1  # finished normally: no second requeue


def test_prep_sbatch_two_tasks_from_slurm_env(tmp_path):
    out_dir, slurm = tmp_path / "digits", tmp_path / "slurm"
    code, out = run([SUBMIT, "launch/slurm/prep.sbatch", "--source", "digits", "--vae", "none",
                     "--out", str(out_dir), "--shard-size", "200", "--no-progress"], fake_env(slurm))
    assert code == 0, out[-6000:]
    srun_line = next(c for c in calls(slurm) if c.startswith("srun"))
    assert "torch.distributed.run" not in srun_line  # ranks come from SLURM_PROCID/SLURM_NTASKS
    assert '"world_size": 2' in out
    with open(out_dir / "dataset.json") as f:
        manifest = json.load(f)
    assert manifest["num_samples"] == 1797 and len(manifest["shards"]) == 9
