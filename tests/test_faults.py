"""The fault-injection wrappers exist only when their variables ask for them, and the training
loop and checkpoint code carry no test hooks (the injected faults themselves are exercised by the
multi-process robustness tests in test_engines.py)."""
import json
import math
import os
import types

import pytest
import torch

from dtr_scale import faults, train
from dtr_scale.config import ConfigError, load_config
from dtr_scale.models import RoutingConfig, create_model
from dtr_scale.objective import build_objective
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.local import SingleEngine
from dtr_scale.parallel.process_group import DistEnv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_VARS = (faults.NAN_STEPS, faults.CRASH_IN_SAVE_STEP, faults.SIGNAL_AT_STEP, faults.KILL_IN_ASYNC_WRITE_STEP)


def tiny_trainer():
    cfg = load_config(None, ["train.global_batch_size=2"])
    torch.manual_seed(0)
    dit = create_model("DiT-T/8", input_size=16, in_channels=4, num_classes=10, routing=RoutingConfig(0.8))
    engine = build_engine(build_objective(cfg, dit), cfg, DistEnv(), torch.device("cpu"))
    return types.SimpleNamespace(engine=engine, env=DistEnv(), step=0)


def one_step(engine):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 4, 16, 16, generator=gen), torch.arange(2)
    t = engine.objective.sample_timesteps(2, gen)
    loss, _ = engine.module(x, t, y, torch.randn(x.shape, generator=gen))
    engine.backward(loss)
    return loss, engine.step()


def test_no_wrappers_without_the_variables(monkeypatch):
    for name in FAULT_VARS:
        monkeypatch.delenv(name, raising=False)
    tr = tiny_trainer()
    assert faults.install(tr) == []
    assert not tr.engine.objective._forward_hooks
    assert tr.engine.step.__func__ is SingleEngine.step and tr.engine.save.__func__ is SingleEngine.save
    assert tr.engine.save_async.__func__ is SingleEngine.save_async
    loss, result = one_step(tr.engine)
    assert torch.isfinite(loss) and result.applied


def test_nan_wrapper_poisons_only_its_step(monkeypatch):
    monkeypatch.setenv(faults.NAN_STEPS, "1")
    tr = tiny_trainer()
    assert faults.install(tr) == [faults.NAN_STEPS]
    loss, result = one_step(tr.engine)
    assert torch.isfinite(loss) and result.applied
    tr.step = 1
    loss, result = one_step(tr.engine)
    assert torch.isnan(loss) and not result.applied  # the engine's own skip logic caught it


def test_loop_acts_on_fault_variables_only_through_install(digits_shards, tmp_path, monkeypatch,
                                                           keep_signal_handlers):
    """With the variables set but `faults.install` doing nothing, a real run has no NaN step and
    no signal: the loop and the checkpoint code hold no hook of their own."""
    monkeypatch.setenv(faults.NAN_STEPS, "0,1")
    monkeypatch.setenv(faults.SIGNAL_AT_STEP, "0")
    monkeypatch.setattr(faults, "install", lambda trainer: [])
    run_dir = tmp_path / "run"
    cfg = load_config(os.path.join(REPO, "configs", "digits-tiny.yaml"),
                      [f"data.path={digits_shards}", f"checkpoint.dir={run_dir}", "train.global_batch_size=4",
                       "checkpoint.resume=none", "train.max_steps=2", "train.log_every=2", "checkpoint.every=2",
                       "train.preempt_check_every=1"])
    assert train.run(cfg, DistEnv()) == 0  # a SIGTERM would have made it exit for requeue (75)
    (line,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert line["skipped_steps"] == 0 and math.isfinite(line["loss"])
    assert (run_dir / "latest").exists()


def test_single_engine_with_several_processes_is_refused_by_the_factory():
    cfg = load_config(None, ["train.global_batch_size=2"])
    dit = create_model("DiT-T/8", input_size=16, in_channels=4, num_classes=10)
    with pytest.raises(ConfigError, match="parallel.engine=single with 2 processes"):
        build_engine(build_objective(cfg, dit), cfg, DistEnv(world_size=2), torch.device("cpu"))
