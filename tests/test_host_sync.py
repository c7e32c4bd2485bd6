"""The training loop's hot path never reads a tensor back to the host: steps that are not log,
checkpoint or preemption-check steps run without `.item()`, `.cpu()`, `bool()`, `float()`... on a
tensor (on a GPU each of those would stall the launch queue). On CUDA the same is checked by
torch's own sync detector."""
import os
import sys

import pytest
import torch

from dtr_scale import train
from dtr_scale.config import load_config
from dtr_scale.parallel.process_group import DistEnv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def tiny_config(data_path, run_dir, *overrides):
    return load_config(os.path.join(REPO, "configs", "digits-tiny.yaml"),
                       [f"data.path={data_path}", f"checkpoint.dir={run_dir}", "train.global_batch_size=4",
                        "checkpoint.resume=none", *overrides])


def test_hot_loop_makes_no_host_read(digits_shards, tmp_path, monkeypatch, keep_signal_handlers):
    steps = 6  # the log line, checkpoint and preemption check all fall on the last step only
    cfg = tiny_config(digits_shards, str(tmp_path / "run"), f"train.max_steps={steps}",
                      f"train.log_every={steps}", f"checkpoint.every={steps}", f"train.preempt_check_every={steps}")
    reads: list[tuple[int, str, str]] = []  # (step in progress, method, caller)
    state = {"step": None}

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            if state["step"] is not None:
                caller = sys._getframe(1)
                reads.append((state["step"], name, f"{caller.f_code.co_filename}:{caller.f_lineno}"))
            return original(self, *args, **kwargs)
        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    train_step = train.train_step

    def marked_step(tr):
        state["step"] = tr.step  # reads until the next step's start belong to this loop iteration
        train_step(tr)

    monkeypatch.setattr(train, "train_step", marked_step)
    assert train.run(cfg, DistEnv()) == 0
    hot = [r for r in reads if r[0] < steps - 1]
    assert not hot, "host reads on hot steps:\n" + "\n".join(map(str, hot))
    assert any(r[0] == steps - 1 for r in reads)  # the log/checkpoint step does read: the counter works


@pytest.mark.gpu
def test_steady_state_steps_do_not_synchronise_on_cuda(digits_shards, tmp_path, keep_signal_handlers):
    """CUDA raises on any synchronising call while sync debug mode is "error"."""
    cfg = tiny_config(digits_shards, str(tmp_path / "run"), "train.max_steps=100", "model.compile=false")
    tr = train.setup(cfg, DistEnv())
    train.resume(tr)
    for _ in range(3):  # warm-up: allocator, cuBLAS handles, lazy optimizer state
        with tr.stats.timing_step():
            train.train_step(tr)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            with tr.stats.timing_step():
                train.train_step(tr)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    metrics = train.window_metrics(tr)
    assert metrics["skipped_steps"] == 0 and metrics["grad_norm"] > 0


def test_nonfinite_step_is_skipped_on_the_device():
    """A NaN step changes neither parameters, nor optimizer moments and step count, nor the EMA."""
    from dtr_scale.models import RoutingConfig, create_model
    from dtr_scale.objective import build_objective
    from dtr_scale.parallel.factory import build_engine

    cfg = load_config(None, ["train.global_batch_size=2", "train.grad_clip=1.0"])
    torch.manual_seed(0)
    dit = create_model("DiT-T/8", input_size=16, in_channels=4, num_classes=10, routing=RoutingConfig(0.8))
    engine = build_engine(build_objective(cfg, dit), cfg, DistEnv(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)

    def step(scale):
        x, y = torch.randn(2, 4, 16, 16, generator=gen), torch.arange(2)
        loss, _ = engine.module(x, engine.objective.sample_timesteps(2, gen), y, torch.randn(x.shape, generator=gen))
        engine.backward(loss * scale)
        result = engine.step()
        engine.update_ema(0.5, result.applied)
        return result

    def snapshot():
        opt = [v.clone() for s in engine.optimizer.state.values() for v in s.values()]
        return [p.detach().clone() for p in engine.objective.parameters()] + opt + [s.clone() for s in engine.ema.shadow]

    assert step(1.0).applied.item()  # optimizer state exists from here on
    before = snapshot()
    result = step(float("nan"))
    assert isinstance(result.applied, torch.Tensor) and not result.applied.item()
    assert not torch.isfinite(result.grad_norm).item()
    after = snapshot()
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))
    assert step(1.0).applied.item()
    assert not all(torch.equal(a, b) for a, b in zip(snapshot(), before))  # applied steps do change them


def test_preempt_check_every_is_validated(tmp_path):
    from dtr_scale.config import ConfigError, validate

    with pytest.raises(ConfigError, match="train.preempt_check_every"):
        validate(tiny_config(str(tmp_path), str(tmp_path / "run"), "train.preempt_check_every=0"))
