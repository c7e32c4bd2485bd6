"""Run the launch scripts against the fake SLURM tools in this folder (tests only).

The launch scripts' SLURM paths (training, preemption, requeue, prep/sample/evaluate) run under a
real SLURM in tests/test_real_slurm.py. The fakes stay for what that cannot show cheaply: that a
failed validation never reaches sbatch (tests/test_launch_validation.py) and per-task traces of a
2-node run (tests/test_multinode.py). The process helpers below are shared by all launch tests.

Every run gets a timeout; on timeout the whole process tree is killed (torchrun workers live in
their own sessions, so killing the process group would leave them behind) and the test fails
with the captured output.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from ._common import kill_tree

FAKE_BIN = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(FAKE_BIN))
TINY_CONFIG = os.path.join(REPO, "configs", "digits-tiny.yaml")


def fake_env(slurm_dir, job_id: int | None = None, **extra: str) -> dict:
    """Environment with the fake srun/sbatch/scontrol first on PATH.

    The job id picks the rendezvous port (20000 + id % 20000): a random one keeps concurrent
    test runs on this machine apart."""
    job_id = job_id if job_id is not None else random.randint(1000, 19999)
    env = dict(os.environ, PATH=FAKE_BIN + os.pathsep + os.environ["PATH"], FAKE_SLURM_DIR=str(slurm_dir),
               FAKE_SLURM_JOB_ID=str(job_id), MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("MASTER_PORT", None)
    env.update(extra)
    return env


def _default_signals() -> None:
    """In the child before exec: TERM/USR1 as a batch shell gets them (default action). A pytest
    process that ran train.main in-process ignores both, and an ignored signal is inherited and
    cannot be trapped by a shell that starts with it ignored."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGUSR1})


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, preexec_fn=_default_signals)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {proc.args}\n{out[-6000:]}") from None
    return proc.returncode, out


def run(cmd: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    return finish(start(cmd, env), timeout)


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"exited ({proc.returncode}) before {what}\n{out[-6000:]}")
        time.sleep(0.2)
    kill_tree(proc.pid, signal.SIGKILL)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def calls(slurm_dir) -> list[str]:
    path = os.path.join(str(slurm_dir), "calls.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def metrics(run_dir) -> list[dict]:
    path = os.path.join(str(run_dir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def latest(run_dir) -> str:
    with open(os.path.join(str(run_dir), "latest")) as f:
        return f.read().strip()


def meta(run_dir) -> dict:
    with open(os.path.join(str(run_dir), latest(run_dir), "meta.json")) as f:
        return json.load(f)
