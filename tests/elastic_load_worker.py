"""Load a checkpoint's canonical state into an engine on this launch's world size, read it back
through the engine and compare every consolidated tensor with the saved one.

    python -m torch.distributed.run --nproc_per_node=N tests/elastic_load_worker.py CKPT [key=value ...]

Prints "ELASTIC-LOAD OK <n> tensors" on rank 0 when everything is bitwise equal.
"""
import os
import sys
import tempfile

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.tensor import DTensor

from dtr_scale.config import load_config
from dtr_scale.objective import build_objective, dit_from_config
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.process_group import init_distributed, local_device


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):  # param groups: a list of dicts of tensors
        for i, v in enumerate(obj):
            yield from flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def main(ckpt, overrides):
    cfg = load_config(os.path.join(ckpt, "config.yaml"), overrides)
    env = init_distributed()
    device = local_device(env)
    torch.manual_seed(123)  # weights unlike the checkpoint's: the load must overwrite them all
    objective = build_objective(cfg, dit_from_config(cfg)).to(device)
    engine = build_engine(objective, cfg, env, device)
    state = engine.state_template()
    dcp.load(state, checkpoint_id=os.path.join(ckpt, "state"))
    engine.load_state_dict(state)
    mine = {k: (v.full_tensor() if isinstance(v, DTensor) else v) for k, v in flatten(engine.state_dict())}
    if env.rank == 0:
        target = os.path.join(tempfile.mkdtemp(), "saved.pt")
        dcp_to_torch_save(os.path.join(ckpt, "state"), target)
        saved = dict(flatten(torch.load(target, weights_only=True)))  # tensors only: nothing pickled
        assert saved.keys() == mine.keys(), sorted(set(saved) ^ set(mine))
        for key, value in saved.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(mine[key].float().cpu(), value.float()), key
            else:
                assert mine[key] == value, key
        print(f"ELASTIC-LOAD OK {sum(isinstance(v, torch.Tensor) for v in saved.values())} tensors", flush=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
