"""Run the real CLIs in subprocesses (torchrun for multi-process), with timeouts so that a hung
process group can never hang the suite."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "digits-tiny.yaml")


def run_module(module, args, nproc=1, env=None, timeout=300, check=True):
    base = [sys.executable, "-m"]
    if nproc > 1:
        base += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(base + [module] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def train(data, run_dir, *overrides, nproc=2, env=None, check=True, timeout=300):
    args = ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}",
            "train.global_batch_size=8", "train.log_every=1", "data.num_workers=0"] + list(overrides)
    return run_module("dtr_scale.train", args, nproc=nproc, env=env, check=check, timeout=timeout)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def flatten(obj, prefix=""):
    """(path, tensor) for every tensor in nested dicts/lists (checkpoint comparisons)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}/{i}")


def checkpoint_state(step_dir, scratch_dir) -> dict:
    """Every tensor of a checkpoint's canonical state (model, optimizer, EMA), consolidated from
    its DCP shards, by path."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = os.path.join(str(scratch_dir), "_".join(os.path.normpath(step_dir).split(os.sep)[-2:]) + ".pt")
    dcp_to_torch_save(os.path.join(step_dir, "state"), target)
    return dict(flatten(torch.load(target, map_location="cpu", weights_only=False)))


ENGINES = {  # the 2-process engine configurations the engine tests cover
    "ddp": ["parallel.engine=ddp"],
    "fsdp": ["parallel.engine=fsdp"],
    "zero1": ["parallel.engine=deepspeed", "parallel.zero_stage=1"],
    "zero2": ["parallel.engine=deepspeed", "parallel.zero_stage=2"],
    "zero3": ["parallel.engine=deepspeed", "parallel.zero_stage=3"],
}
STEPS = ["train.max_steps=4", "checkpoint.every=2", "checkpoint.keep=3"]
