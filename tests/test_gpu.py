"""CUDA-only checks (skipped without a GPU; `benchmarks/gpu_check.sh` runs them): mixed-precision
training steps through the real engines, and DeepSpeed's FusedAdam against torch's AdamW."""
import pytest
import torch

from dtr_scale.config import load_config
from dtr_scale.models import RoutingConfig, create_model
from dtr_scale.objective import build_objective
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.process_group import DistEnv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _engine(precision, *flags):
    cfg = load_config(None, ["parallel.engine=single", f"train.precision={precision}", *flags])
    torch.manual_seed(0)
    dit = create_model("DiT-T/2", input_size=8, in_channels=4, num_classes=10, routing=RoutingConfig(0.8))
    return build_engine(build_objective(cfg, dit).cuda(), cfg, DistEnv(), torch.device("cuda"))


def _batch(n=8):
    g = torch.Generator(device="cuda").manual_seed(0)
    return (torch.randn(n, 4, 8, 8, device="cuda", generator=g), torch.randint(0, 1000, (n,), device="cuda"),
            torch.randint(0, 10, (n,), device="cuda"), torch.randn(n, 4, 8, 8, device="cuda", generator=g))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_train(precision):
    engine = _engine(precision)
    before = [p.detach().clone() for p in engine.objective.dit.parameters()]
    losses = []
    for _ in range(3):
        loss, _ = engine.module(*_batch())
        engine.backward(loss)
        result = engine.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert bool(result.applied)
    moved = sum(not torch.equal(a, b) for a, b in zip(before, engine.objective.dit.parameters()))
    assert moved > len(before) // 2, moved


def test_fused_adam_matches_torch_adamw():
    deepspeed_adam = pytest.importorskip("deepspeed.ops.adam")
    torch.manual_seed(0)
    ref = [torch.randn(64, 32, device="cuda", requires_grad=True) for _ in range(3)]
    fused = [p.detach().clone().requires_grad_(True) for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=1e-3, weight_decay=0.01)
    opt_fused = deepspeed_adam.FusedAdam(fused, lr=1e-3, weight_decay=0.01, adam_w_mode=True)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ref]
        for p, q, g in zip(ref, fused, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_fused.step()
    for p, q in zip(ref, fused):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
