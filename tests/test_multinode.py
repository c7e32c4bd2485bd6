"""`data.mode=global` trains the same weights on any cluster shape, and multi-node launches,
simulated on this machine, match one node and never have two nodes write the same file.

Baselines: 1 node x 2 processes (torchrun --standalone) for DDP and for DeepSpeed ZeRO-2. Against
them: 1 process with grad_accum=2 (single engine), and three 2-node x 1-process launches that
share one checkpoint directory: (a) torchrun --nnodes=2 started twice, (b) the deepspeed launcher
with a 2-node hostfile and --no_ssh started twice, (c) launch/slurm/train.sbatch under the fake
SLURM tools. Every node runs under strace (tests/file_writes.py) to list the files it writes.
"""
import os
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from fake_slurm._common import kill_tree
from fake_slurm.harness import fake_env, run
from file_writes import strace_available, traced, written_files
from launch_helpers import REPO, TINY_CONFIG, checkpoint_state, run_module, train
from test_data_distributed import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1500)]

GLOBAL = ["data.mode=global", "train.max_steps=3", "checkpoint.every=3", "checkpoint.keep=1"]
ZERO2 = ["parallel.engine=deepspeed", "parallel.zero_stage=2"]
needs_strace = pytest.mark.skipif(not strace_available(), reason="needs strace to see which files each node writes")


def train_args(data, run_dir, *extra):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}", "train.global_batch_size=8",
            "train.log_every=1", "data.num_workers=0", *GLOBAL, *extra]


def checkpoint_tensors(run_dir, step=3) -> dict:
    """Every tensor of a checkpoint's canonical state (model, optimizer, EMA), by path."""
    return checkpoint_state(os.path.join(run_dir, f"step_{step:09d}"), tempfile.mkdtemp())


def assert_same_weights(run_dir, ref_dir, atol=1e-5, step=3):
    a, b = checkpoint_tensors(run_dir, step), checkpoint_tensors(ref_dir, step)
    assert a.keys() == b.keys() and len(a) > 10, (sorted(a)[:5], sorted(b)[:5])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)
    assert any(not torch.equal(v, 0 * v) for v in a.values())


def run_nodes(cmds, run_dir, trace_dir, timeout=600) -> list[set]:
    """Start one traced launcher per node, wait for all; the files each node wrote in run_dir."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    logs = [os.path.join(trace_dir, f"node{i}.trace") for i in range(len(cmds))]
    procs = [subprocess.Popen(traced(cmd, log), env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for cmd, log in zip(cmds, logs)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            kill_tree(p.pid, signal.SIGKILL)
        raise AssertionError(f"node launches timed out after {timeout} s") from None
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"node {i} exited {p.returncode}\n{outs[i][-6000:]}"
    return [written_files(log, run_dir) for log in logs]


def assert_nodes_write_apart(per_node: list[set], run_dir):
    assert not per_node[0] & per_node[1], sorted(per_node[0] & per_node[1])
    names = [{os.path.basename(p) for p in files} for files in per_node]
    # Which node hosts global rank 0 is the rendezvous's choice (torchrun's c10d orders nodes by
    # arrival, not by SLURM_NODEID), so find it: exactly one node writes rank 0's shared files.
    lead = [i for i, n in enumerate(names) if "metrics.jsonl" in n and "latest" in n]
    assert len(lead) == 1, [sorted(n) for n in names]
    other = names[1 - lead[0]]
    assert any("rank00001" in n or "rank_1" in n or "rank1" in n for n in other), sorted(other)
    assert os.path.exists(os.path.join(run_dir, "step_000000003"))


@pytest.fixture(scope="module")
def baselines(digits_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("one_node")
    runs = {"ddp": str(root / "ddp"), "zero2": str(root / "zero2")}
    for name, flags in (("ddp", ["parallel.engine=ddp"]), ("zero2", ZERO2)):
        train(digits_shards, runs[name], *GLOBAL, *flags, nproc=2)
    return runs


def test_one_process_with_accumulation_matches_two_ranks(baselines, digits_shards, tmp_path):
    """single engine x 1 rank x grad_accum 2 (and a loader worker) == DDP x 2 ranks."""
    run_dir = str(tmp_path / "single")
    train(digits_shards, run_dir, *GLOBAL, "parallel.engine=single", "train.grad_accum=2",
          "data.num_workers=1", nproc=1)
    assert_same_weights(run_dir, baselines["ddp"])


@needs_strace
def test_torchrun_two_nodes(baselines, digits_shards, tmp_path):
    run_dir, port = str(tmp_path / "run"), free_port()
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={i}",
             "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "dtr_scale.train",
             *train_args(digits_shards, run_dir, "parallel.engine=ddp")] for i in range(2)]
    per_node = run_nodes(cmds, run_dir, str(tmp_path))
    assert_nodes_write_apart(per_node, run_dir)
    assert_same_weights(run_dir, baselines["ddp"])


@needs_strace
def test_deepspeed_launcher_two_nodes_no_ssh(baselines, digits_shards, tmp_path):
    run_dir, port = str(tmp_path / "run"), free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node01 slots=1\nnode02 slots=1\n")
    cmds = [[sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
             f"--node_rank={i}", "--master_addr=127.0.0.1", f"--master_port={port}", "--module", "dtr_scale.train",
             *train_args(digits_shards, run_dir, *ZERO2)] for i in range(2)]
    per_node = run_nodes(cmds, run_dir, str(tmp_path))
    assert_nodes_write_apart(per_node, run_dir)
    assert_same_weights(run_dir, baselines["zero2"])


@needs_strace
def test_train_sbatch_two_fake_nodes(baselines, digits_shards, tmp_path):
    run_dir, slurm, traces = str(tmp_path / "run"), tmp_path / "slurm", tmp_path / "traces"
    traces.mkdir()
    code, out = run([os.path.join(REPO, "launch", "submit.sh"), "launch/slurm/train.sbatch",
                     *train_args(digits_shards, run_dir)],
                    fake_env(slurm, ENGINE="ddp", FAKE_SRUN_TRACE_DIR=str(traces)), timeout=600)
    assert code == 0, out[-6000:]
    assert "[node 0 " in out and "[node 1 " in out
    per_node = [written_files(str(traces / f"node{i}.task{i}.trace"), run_dir) for i in range(2)]
    assert_nodes_write_apart(per_node, run_dir)
    assert_same_weights(run_dir, baselines["ddp"])


def test_resume_on_another_engine_and_world_size(digits_shards, tmp_path):
    """A ZeRO-2 run on 2 ranks, resumed at step 2 with FSDP on 1 rank, ends at the straight run's
    weights, optimizer moments and EMA (global mode: the samples and draws of every step are the same)."""
    steps = ["data.mode=global", "train.max_steps=4", "checkpoint.every=2", "checkpoint.keep=3"]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(digits_shards, straight, *steps, *ZERO2, nproc=2)
    proc = run_module("torch.distributed.run", ["--standalone", "--nproc_per_node=1", "-m", "dtr_scale.train",
                                                *train_args(digits_shards, resumed)[:-len(GLOBAL)], *steps,
                                                "parallel.engine=fsdp",
                                                f"checkpoint.resume={os.path.join(straight, 'step_000000002')}"],
                      timeout=900)
    assert "converted deepspeed ZeRO-2 × 2 ranks → fsdp × 1 rank" in proc.stdout + proc.stderr
    assert_same_weights(resumed, straight, step=4)
    moved = checkpoint_tensors(straight, 2)["/ema/final_layer.linear.weight"]
    assert not torch.equal(moved, checkpoint_tensors(straight, 4)["/ema/final_layer.linear.weight"])
