"""Run under torchrun by test_meta_init.py: the engine's weights after meta-device / zero.Init
construction, gathered on rank 0, must equal an eager build with the same seed."""
import sys

import torch

from dtr_scale.config import load_config
from dtr_scale.objective import build_objective, dit_from_config
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.meta_init import build_objective_for_engine
from dtr_scale.parallel.process_group import init_distributed, shutdown


def main(engine_flags):
    env = init_distributed()
    shape = ["model.input_size=16", "model.in_channels=1", "model.num_classes=10",
             "diffusion.loss_weighting=ant_uw", "train.global_batch_size=8"]
    cfg = load_config(None, shape + engine_flags + ["parallel.meta_init=true"])
    device = torch.device("cpu")
    torch.manual_seed(5)
    eager = build_objective(cfg, dit_from_config(cfg))
    after_eager = torch.rand(4)
    torch.manual_seed(5)
    objective = build_objective_for_engine(cfg, lambda: build_objective(cfg, dit_from_config(cfg)),
                                           env.world_size, device)
    assert objective.deferred_init in ("meta", "zero3")
    engine = build_engine(objective, cfg, env, device)
    after_meta = torch.rand(4)
    full = engine.export_model()
    if env.rank == 0:
        reference = eager.dit.state_dict()
        assert full.keys() == reference.keys(), sorted(set(full) ^ set(reference))
        for name, value in reference.items():
            assert torch.equal(full[name], value), name
        print(f"meta init OK: {len(full)} tensors equal", flush=True)
    assert torch.equal(after_eager, after_meta), "the global generator ended in another state"
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
