"""Regional torch.compile: same numbers as eager, one graph for every batch size, and the wrapper
order (checkpointing, compile, FSDP2) under real 2-process runs. Compiling takes tens of seconds on
this CPU, so there are few tests, each on the tiny model."""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

from dtr_scale.config import ConfigError, config_from_dict, validate
from dtr_scale.models import RoutingConfig, create_model
from dtr_scale.parallel.parallelize import CompileWatch, apply_compile, compile_wanted
from launch_helpers import metrics, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g),
            torch.randint(0, 10, (n,), generator=g))


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(*batch).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_matches_eager_and_never_recompiles():
    torch.manual_seed(0)
    eager = create_model("DiT-T/2", input_size=16, in_channels=1, num_classes=10, class_dropout_prob=0.0,
                         routing=RoutingConfig(sharing_ratio=0.8))
    # adaLN-Zero starts every block as the identity; random weights make the blocks matter.
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(0.02 * torch.randn_like(p))
    compiled = copy.deepcopy(eager)
    eager.set_checkpointing(0.5)
    compiled.set_checkpointing(0.5)
    apply_compile(compiled)
    assert list(dict(compiled.named_parameters())) == list(dict(eager.named_parameters()))  # official names

    batch = _batch(8, 0)
    loss_e, grads_e = _loss_and_grads(eager, batch)
    loss_c, grads_c = _loss_and_grads(compiled, batch)
    torch.testing.assert_close(loss_c, loss_e, rtol=0, atol=1e-5)
    assert grads_e.keys() == grads_c.keys() and len(grads_e) > 20
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=0, atol=1e-5, msg=name)

    # An "epoch" of full batches and a partial last one, then a second epoch: the batch dimension
    # is symbolic from the first call, so nothing compiles again.
    epoch = [8, 8, 5]
    for i, n in enumerate(epoch):
        _loss_and_grads(compiled, _batch(n, 10 + i))
    frames = counters["frames"]["ok"]
    for i, n in enumerate(epoch):
        _loss_and_grads(compiled, _batch(n, 20 + i))
    assert counters["frames"]["ok"] == frames, "second epoch recompiled"
    # Still the eager numbers on the partial batch.
    small = _batch(5, 30)
    torch.testing.assert_close(_loss_and_grads(compiled, small)[0], _loss_and_grads(eager, small)[0],
                               rtol=0, atol=1e-5)


def test_compile_setting_and_watch():
    assert compile_wanted("auto", torch.device("cpu")) is False
    assert compile_wanted("auto", torch.device("cuda")) is True
    assert compile_wanted("true", torch.device("cpu")) is True
    assert compile_wanted("false", torch.device("cuda")) is False
    cfg = config_from_dict({"model": {"compile": True}})
    assert cfg.model.compile == "true"
    with pytest.raises(ConfigError, match="model.compile: got 'sometimes'"):
        validate(config_from_dict({"model": {"compile": "sometimes"}}))
    assert CompileWatch(False).report() == {}
    watch = CompileWatch(True)
    assert watch.report() == {"compile_s": 0.0, "compiled_frames": 0}


@pytest.mark.distributed
def test_fsdp_compile_with_checkpointing_matches_eager(digits_shards, tmp_path):
    """2 ranks, FSDP2 + compile + activation checkpointing on every block vs eager FSDP2: same
    losses over 4 steps (so same gradients and updates), compile time reported once, no
    recompiles after the first step."""
    steps = ["parallel.engine=fsdp", "train.max_steps=4", "checkpoint.every=4", "model.checkpointing=1.0"]
    train(digits_shards, str(tmp_path / "eager"), *steps, "model.compile=false")
    train(digits_shards, str(tmp_path / "compiled"), *steps, "model.compile=true", timeout=900)
    eager, compiled = metrics(str(tmp_path / "eager")), metrics(str(tmp_path / "compiled"))
    assert "compile_s" not in eager[0]
    torch.testing.assert_close(torch.tensor([m["loss"] for m in compiled]),
                               torch.tensor([m["loss"] for m in eager]), rtol=0, atol=1e-5)
    assert compiled[0]["compiled_frames"] >= 1 and compiled[0]["compile_s"] > 0
    assert [m["compiled_frames"] for m in compiled[1:]] == [0, 0, 0]


@pytest.mark.distributed
def test_zero3_compile_matches_eager(digits_shards, tmp_path):
    """2 ranks, DeepSpeed ZeRO-3 (its parameter-gathering hooks run around the compiled blocks) +
    compile + checkpointing on half the blocks vs eager: same losses, no recompiles after step 1."""
    steps = ["parallel.engine=deepspeed", "parallel.zero_stage=3", "train.max_steps=3", "checkpoint.every=3",
             "model.checkpointing=0.5"]
    train(digits_shards, str(tmp_path / "eager"), *steps, "model.compile=false", timeout=900)
    train(digits_shards, str(tmp_path / "compiled"), *steps, "model.compile=true", timeout=900)
    eager, compiled = metrics(str(tmp_path / "eager")), metrics(str(tmp_path / "compiled"))
    torch.testing.assert_close(torch.tensor([m["loss"] for m in compiled]),
                               torch.tensor([m["loss"] for m in eager]), rtol=0, atol=1e-5)
    assert compiled[0]["compiled_frames"] >= 1
    assert [m["compiled_frames"] for m in compiled[1:]] == [0, 0]
