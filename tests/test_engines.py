"""Real 2-process training over gloo: the engines agree, resume exactly, survive crashes,
preemption and NaNs, and export weights that load back."""
import glob
import json
import os

import pytest
import torch

from dtr_scale.models import load_weights
from launch_helpers import ENGINES, STEPS, checkpoint_state, metrics, run_module, train

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]


def engine_tensors(step_dir, tmp_path):
    """Every tensor of a checkpoint's canonical state (model, optimizer, EMA), consolidated, by path."""
    return checkpoint_state(step_dir, tmp_path)


def losses(run_dir, n=4):
    return [m["loss"] for m in metrics(run_dir)[:n]]


def test_engines_agree_on_losses(full_runs):
    ref = losses(full_runs["ddp"])
    assert len(ref) == 4 and ref[0] > 0
    for name, run_dir in full_runs.items():
        torch.testing.assert_close(torch.tensor(losses(run_dir)), torch.tensor(ref), rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", list(ENGINES))
def test_exact_resume(name, full_runs, tmp_path):
    """Run 4 steps straight vs 2 steps, stop, resume from that checkpoint, 2 more."""
    straight = full_runs[name]
    resumed = str(tmp_path / "resumed")
    assert json.load(open(os.path.join(straight, "step_000000002", "meta.json")))["step"] == 2
    digits = _data_path(straight)
    train(digits, resumed, *ENGINES[name], *STEPS, f"checkpoint.resume={os.path.join(straight, 'step_000000002')}")
    a = engine_tensors(os.path.join(straight, "step_000000004"), tmp_path)
    b = engine_tensors(os.path.join(resumed, "step_000000004"), tmp_path)
    assert a.keys() == b.keys() and len(a) > 10, len(a)
    for key in a:
        # Bitwise: same data position, RNG streams, optimizer and EMA state.
        assert torch.equal(a[key], b[key]), key
    assert losses(resumed, 2) == [m["loss"] for m in metrics(straight)[2:4]]
    # Exports of both runs are identical too.
    ea, _ = load_weights(_export(straight, tmp_path / "a.pt"))
    eb, _ = load_weights(_export(resumed, tmp_path / "b.pt"))
    for k, v in ea.state_dict().items():
        assert torch.equal(v, eb.state_dict()[k]), k


def _data_path(run_dir):
    import yaml

    return yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["data"]["path"]


def _export(run_dir, out):
    run_module("dtr_scale.export", ["--checkpoint", run_dir, "--out", str(out)])
    return str(out)


def test_export_roundtrip_every_engine(full_runs, tmp_path):
    ref = None
    for name, run_dir in full_runs.items():
        model, meta = load_weights(_export(run_dir, tmp_path / f"{name}.pt"))
        assert meta["step"] == 4 and meta["routing"]["sharing_ratio"] == 0.8
        sd = model.state_dict()
        assert all(torch.isfinite(v.float()).all() for v in sd.values())
        # the .pt is what the official DiT sampler reads: {"ema": state_dict}
        raw = torch.load(tmp_path / f"{name}.pt", weights_only=False)
        assert "ema" in raw and "blocks.0.attn.qkv.weight" in raw["ema"]
        # the EMA moved away from the initial weights (adaLN-Zero starts at exactly 0)
        assert sd["final_layer.linear.weight"].abs().max() > 0
        if ref is None:
            ref = sd
        else:  # every engine trains the same model on the same data: same EMA
            for k in ref:
                torch.testing.assert_close(sd[k], ref[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")


@pytest.mark.parametrize("name", ["fsdp", "zero3"])
def test_activation_checkpointing_same_loss(name, full_runs, tmp_path):
    run_dir = str(tmp_path / "ckpt")
    train(_data_path(full_runs[name]), run_dir, *ENGINES[name], "train.max_steps=3", "checkpoint.every=100",
          "model.checkpointing=1.0")
    torch.testing.assert_close(torch.tensor(losses(run_dir, 3)), torch.tensor(losses(full_runs[name], 3)),
                               rtol=0, atol=1e-5)


def test_crash_during_checkpoint_write_keeps_latest(digits_shards, tmp_path):
    run_dir = str(tmp_path / "crash")
    flags = ENGINES["fsdp"] + ["train.max_steps=6", "checkpoint.every=2", "checkpoint.keep=5"]
    proc = train(digits_shards, run_dir, *flags, env={"DTR_SCALE_CRASH_IN_SAVE_STEP": "4"}, check=False)
    assert proc.returncode != 0
    assert open(os.path.join(run_dir, "latest")).read().strip() == "step_000000002"
    assert os.path.isdir(os.path.join(run_dir, ".tmp-step_000000004"))  # the half-written one
    assert not os.path.isdir(os.path.join(run_dir, "step_000000004"))
    train(digits_shards, run_dir, *flags)  # resume auto from step 2
    assert open(os.path.join(run_dir, "latest")).read().strip() == "step_000000006"
    assert not glob.glob(os.path.join(run_dir, ".tmp-*"))
    steps = [m["step"] for m in metrics(run_dir)]
    assert steps[-4:] == [3, 4, 5, 6]


def test_sigterm_checkpoints_and_requeues(digits_shards, tmp_path):
    run_dir = str(tmp_path / "preempt")
    flags = ["train.max_steps=8", "checkpoint.every=100", "train.preempt_check_every=1"]
    # single process: the exit code reaches us directly
    proc = train(digits_shards, run_dir, *flags, nproc=1, env={"DTR_SCALE_SIGNAL_AT_STEP": "2"}, check=False)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert open(os.path.join(run_dir, "latest")).read().strip() == "step_000000003"
    train(digits_shards, run_dir, *flags, nproc=1)
    assert open(os.path.join(run_dir, "latest")).read().strip() == "step_000000008"
    # two ranks: the signal on rank 0's process stops both at the same step
    run2 = str(tmp_path / "preempt2")
    proc = train(digits_shards, run2, *ENGINES["zero2"], *flags, env={"DTR_SCALE_SIGNAL_AT_STEP": "4"}, check=False)
    assert proc.returncode != 0
    assert open(os.path.join(run2, "latest")).read().strip() == "step_000000005"
    train(digits_shards, run2, *ENGINES["zero2"], *flags)
    assert [m["step"] for m in metrics(run2)][-3:] == [6, 7, 8]


@pytest.mark.parametrize("name", ["ddp", "zero3"])
def test_nan_loss_skipped_and_never_checkpointed(name, digits_shards, tmp_path):
    run_dir = str(tmp_path / "nan")
    train(digits_shards, run_dir, *ENGINES[name], "train.max_steps=5", "checkpoint.every=100",
          env={"DTR_SCALE_INJECT_NAN_STEPS": "1"})
    rows = metrics(run_dir)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1, 1]
    assert all(r["loss"] == r["loss"] for r in rows[2:])  # finite again after the skip
    model, _ = load_weights(_export(run_dir, tmp_path / "nan.pt"))
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())


def test_consecutive_nans_abort_without_checkpoint(digits_shards, tmp_path):
    run_dir = str(tmp_path / "abort")
    proc = train(digits_shards, run_dir, *ENGINES["ddp"], "train.max_steps=6", "checkpoint.every=1",
                 "train.max_consecutive_nonfinite=2", env={"DTR_SCALE_INJECT_NAN_STEPS": "2,3,4"}, check=False)
    assert proc.returncode != 0
    assert "consecutive non-finite steps" in proc.stderr
    assert open(os.path.join(run_dir, "latest")).read().strip() == "step_000000003"  # 1 skipped, then abort


def test_engines_agree_with_accumulation_clipping_warmup_and_ant_uw(digits_shards, tmp_path):
    """Gradient accumulation (DeepSpeed's own vs ours), clipping, LR warmup and ANT-UW's learned
    weights give the same losses on every engine."""
    flags = ["train.max_steps=3", "checkpoint.every=100", "train.grad_accum=2", "train.grad_clip=0.05",
             "train.warmup_steps=2", "diffusion.loss_weighting=ant_uw"]
    runs = {}
    for name in ("ddp", "fsdp", "zero2", "zero3"):
        runs[name] = str(tmp_path / name)
        train(digits_shards, runs[name], *ENGINES[name], *flags)
    ref = losses(runs["ddp"], 3)
    lrs = [m["lr"] for m in metrics(runs["ddp"])]
    assert lrs[0] < lrs[1] == lrs[2]  # warmup
    for name, run_dir in runs.items():
        torch.testing.assert_close(torch.tensor(losses(run_dir, 3)), torch.tensor(ref), rtol=0, atol=1e-5, msg=name)
    # the learned ANT-UW log-variances moved and were exported nowhere near the DiT weights
    model, _ = load_weights(_export(runs["zero3"], tmp_path / "ant.pt"))
    assert not any("log_vars" in k for k in model.state_dict())
    assert os.path.isdir(os.path.join(runs["ddp"], "tensorboard"))


def test_deepspeed_cpu_offload_same_losses(full_runs, tmp_path):
    """ZeRO-3 with optimizer and parameter offload to the CPU trains the same model."""
    run_dir = str(tmp_path / "offload")
    train(_data_path(full_runs["ddp"]), run_dir, *ENGINES["zero3"], "parallel.offload=true",
          "train.max_steps=3", "checkpoint.every=100")
    torch.testing.assert_close(torch.tensor(losses(run_dir, 3)), torch.tensor(losses(full_runs["ddp"], 3)),
                               rtol=0, atol=1e-5)
    model, _ = load_weights(_export(run_dir, tmp_path / "offload.pt"))
    assert all(torch.isfinite(v.float()).all() for v in model.state_dict().values())


@pytest.mark.parametrize("source,target", [("zero2", "fsdp"), ("fsdp", "ddp"), ("zero3", "zero1")])
def test_resume_on_another_engine(source, target, full_runs, tmp_path):
    """Same world size, another engine: the resumed run ends where the straight run does (the data
    order per rank is unchanged, so only reduction order may differ)."""
    straight = full_runs[source]
    resumed = str(tmp_path / "resumed")
    proc = train(_data_path(straight), resumed, *ENGINES[target], *STEPS,
                 f"checkpoint.resume={os.path.join(straight, 'step_000000002')}", timeout=900)
    labels = {"fsdp": "fsdp", "ddp": "ddp", "zero1": "deepspeed ZeRO-1", "zero2": "deepspeed ZeRO-2",
              "zero3": "deepspeed ZeRO-3"}
    assert f"converted {labels[source]} × 2 ranks → {labels[target]} × 2 ranks" in proc.stdout
    a = engine_tensors(os.path.join(straight, "step_000000004"), tmp_path)
    b = engine_tensors(os.path.join(resumed, "step_000000004"), tmp_path)
    assert a.keys() == b.keys() and any("/optim/state/" in k and k.endswith("exp_avg_sq") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    torch.testing.assert_close(torch.tensor(losses(resumed, 2)), torch.tensor(losses(straight)[2:]), rtol=0, atol=1e-5)
    # the state moved between the checkpoints: the comparison above is not of two initial states
    start = engine_tensors(os.path.join(straight, "step_000000002"), tmp_path)
    assert not torch.equal(start["/ema/final_layer.linear.weight"], a["/ema/final_layer.linear.weight"])
