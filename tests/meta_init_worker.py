"""Run under torchrun by test_meta_init.py: the engine's weights after meta-device / zero.Init
construction, gathered on rank 0, must equal an eager build with the same seed."""
import sys

import torch
from torch.distributed.tensor import DTensor

from dtr_scale.config import load_config
from dtr_scale.objective import build_objective, dit_from_config
from dtr_scale.parallel.factory import engine_class
from dtr_scale.parallel.process_group import init_distributed, shutdown


def main(engine_flags):
    env = init_distributed()
    check(env, engine_flags)  # returns with every engine dropped: shutdown() frees them first
    shutdown()


def check(env, engine_flags):
    shape = ["model.input_size=16", "model.in_channels=1", "model.num_classes=10",
             "diffusion.loss_weighting=ant_uw", "train.global_batch_size=8"]
    cfg = load_config(None, shape + engine_flags + ["parallel.meta_init=true"])
    device = torch.device("cpu")
    torch.manual_seed(5)
    eager = build_objective(cfg, dit_from_config(cfg))
    after_eager = torch.rand(4)
    torch.manual_seed(5)
    engine_cls = engine_class(cfg, env, device)
    with engine_cls.init_context(cfg, env, device):
        dit = dit_from_config(cfg)
    assert all(p.is_meta or p.numel() == 0 for p in dit.parameters()), "built whole, not deferred"
    objective = build_objective(cfg, dit)
    engine = engine_cls(objective, cfg, env, device)
    after_meta = torch.rand(4)
    full = engine.export_model()
    if env.rank == 0:
        reference = eager.dit.state_dict()
        assert full.keys() == reference.keys(), sorted(set(full) ^ set(reference))
        for name, value in reference.items():
            assert torch.equal(full[name], value), name
        print(f"meta init OK: {len(full)} tensors equal", flush=True)
    # The objective's own state (ANT-UW's log-variances and cluster bounds) came through too.
    assert torch.equal(objective.weighting.bounds, eager.weighting.bounds)
    log_vars = engine.state_dict()["model"]["weighting.log_vars"]  # collective
    log_vars = log_vars.full_tensor() if isinstance(log_vars, DTensor) else log_vars
    assert torch.equal(log_vars, eager.weighting.log_vars.detach())
    assert torch.equal(after_eager, after_meta), "the global generator ended in another state"


if __name__ == "__main__":
    main(sys.argv[1:])
