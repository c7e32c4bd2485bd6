"""Exit codes of every launcher path after SIGTERM and SIGUSR1, without SLURM.

launch/local.sh execs launch/slurm/node_run.sh, the same per-node wrapper the sbatch scripts run,
around torchrun (launch/slurm/torchrun.py) or the deepspeed launcher. A signal to the wrapper alone
is what a batch shell's forward or `kill -USR1` does; SIGTERM to the whole process group is what
slurmstepd does on `scancel`/preemption (every process of the step gets it, the launchers too).
Either way the workers must checkpoint and the wrapper must exit 75 ("checkpointed, requeue me"),
with the checkpoint at the step the workers report.
"""
import os
import signal

import pytest

from fake_slurm.harness import REPO, TINY_CONFIG, finish, latest, meta, metrics, start, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(600)]

LOCAL = os.path.join(REPO, "launch", "local.sh")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def args(data, run_dir, max_steps):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}", f"train.max_steps={max_steps}",
            "checkpoint.every=100000", "train.global_batch_size=8", "train.log_every=1", "train.preempt_check_every=1",
            "data.num_workers=0"]


PATHS = {
    "torchrun-2": ["2", "train", "parallel.engine=ddp"],
    "deepspeed-2": ["2", "deepspeed-train", "parallel.zero_stage=2"],
    "python-1": ["1", "train"],
}


# The relay (USR1 to the wrapper) is the same code for both launchers; SIGTERM to every process
# is where each launcher's own handlers would interfere.
CASES = [("torchrun-2", "TERM-group"), ("deepspeed-2", "USR1-wrapper"), ("deepspeed-2", "TERM-group"),
         ("python-1", "TERM-group")]


@pytest.mark.parametrize("path,how", CASES, ids=["-".join(c) for c in CASES])
def test_signal_checkpoints_and_exits_75(path, how, digits_shards, tmp_path):
    run_dir = tmp_path / "run"
    nproc, verb, *flags = PATHS[path]
    proc = start([LOCAL, nproc, verb, *args(digits_shards, run_dir, 100000), *flags], ENV)  # own session
    wait_for(lambda: len(metrics(run_dir)) >= 2, proc, 300, "two training steps")
    if how == "USR1-wrapper":
        os.kill(proc.pid, signal.SIGUSR1)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    code, out = finish(proc, 180)
    assert code == 75, out[-6000:]
    assert "launcher exited with 75" in out
    stopped = meta(run_dir)["step"]
    assert latest(run_dir) == f"step_{stopped:09d}" and metrics(run_dir)[-1]["step"] == stopped
    assert f"checkpointed step {stopped}, exiting with 75" in out
    assert "Main process received SIGTERM" not in out  # the deepspeed launcher's handler never ran
    assert "exited with -" not in out and "exits with return code = -" not in out  # no worker killed


def test_signal_at_the_last_step_ends_the_run(digits_shards, tmp_path):
    """A signal noticed at the final step: checkpoint, then exit 0 (a requeue would only exit).
    The flag is read only every 30 steps, so a signal after step 1 is noticed at step 30, the last."""
    run_dir = tmp_path / "run"
    overrides = [*args(digits_shards, run_dir, 30), "train.preempt_check_every=30", "parallel.engine=ddp"]
    proc = start([LOCAL, "2", "train", *overrides], ENV)
    wait_for(lambda: len(metrics(run_dir)) >= 1, proc, 300, "one training step")
    os.kill(proc.pid, signal.SIGUSR1)
    code, out = finish(proc, 180)
    assert code == 0, out[-6000:]
    assert "preemption signal received: checkpointed step 30, the run is complete, exiting with 0" in out
    assert latest(run_dir) == "step_000000030"
