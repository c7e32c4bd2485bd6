"""The `mfu` metric: the FLOP count against a hand count and torch's FLOP counter, the device
peak table by CUDA device name, the `train.peak_tflops` override, and the metric in a real run."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dtr_scale.config import ConfigError, load_config, validate
from dtr_scale.mfu import device_entry, matmul_precision, mfu, peak_flops, table_peak_flops
from dtr_scale.models import DiT, RoutingConfig, dit_forward_flops, dit_train_flops
from launch_helpers import metrics, train


def tiny_dit(routing):
    # input 8, patch 2 -> L = 16 tokens; C = 32, M = 128, depth 2; 4 channels in, 8 out (learn_sigma)
    return DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
               num_classes=10, learn_sigma=True, routing=routing, attention="math")


@pytest.mark.parametrize("routing", [None, RoutingConfig(0.8)], ids=["plain", "dtr"])
def test_flops_of_a_known_shape_by_hand_and_by_torch_counter(routing):
    model = tiny_dit(routing)
    L, C, M = 16, 32, 128
    block = (2 * L * 3 * C * C  # qkv
             + 2 * L * C * C  # proj
             + 2 * L * C * M * 2  # fc1, fc2
             + 2 * L * L * C * 2  # QKᵀ and attn·V over all heads
             + 2 * C * 6 * C)  # adaLN
    embed = 2 * L * (2 * 2 * 4) * C + 2 * 256 * C + 2 * C * C  # patch conv, timestep MLP
    final = 2 * L * C * (2 * 2 * 8) + 2 * C * 2 * C  # output linear, final adaLN
    per_sample = 2 * block + embed + final
    assert per_sample == 948224  # the sum written out once more, so a changed term shows
    assert dit_forward_flops(model, 3) == 3 * per_sample
    assert dit_train_flops(model, 3) == 9 * per_sample

    # torch's own count of the matmul/conv/attention FLOPs of a real forward agrees exactly:
    # routing adds elementwise masks only.
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 3])
    with FlopCounterMode(display=False) as counter:
        model(x, t, y)
    assert counter.get_total_flops() == 3 * per_sample


@pytest.mark.parametrize("name, entry, bf16", [
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100-SXM4-40GB", "A100", 312.0),
    ("NVIDIA A100-PCIE-40GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.5),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5),
    ("NVIDIA H200", "H200", 989.5),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5),
    ("NVIDIA GH200 480GB", "GH200", 989.5),
    ("NVIDIA B200", "B200", 2250.0),
])
def test_device_table_by_cuda_name(name, entry, bf16):
    assert device_entry(name) == entry
    assert table_peak_flops(name, "bf16") == bf16 * 1e12
    # Every known device: fp16 = bf16 dense, tf32 = half of it, fp32 below tf32.
    assert table_peak_flops(name, "fp16") == bf16 * 1e12
    assert table_peak_flops(name, "fp32") < table_peak_flops(name, "tf32") <= table_peak_flops(name, "bf16") / 2


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", "NVIDIA L4", ""])
def test_unknown_devices_have_no_peak(name):
    assert device_entry(name) is None and table_peak_flops(name, "bf16") is None


def test_override_precision_and_the_formula():
    cpu = torch.device("cpu")
    assert peak_flops(cpu, "fp32", None) is None  # CPU: no MFU unless the peak is given
    assert peak_flops(cpu, "bf16", 2.5) == 2.5e12
    assert mfu(3e12, 2.0, 2.5e12) == {"mfu": 0.6}
    assert mfu(3e12, 2.0, None) == {}
    assert matmul_precision("bf16") == "bf16" and matmul_precision("fp16") == "fp16"
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert matmul_precision("fp32") == "fp32"
        torch.backends.cuda.matmul.allow_tf32 = True
        assert matmul_precision("fp32") == "tf32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="train.peak_tflops"):
            validate(load_config(None, [f"train.peak_tflops={bad}"]))
    assert validate(load_config(None, ["train.peak_tflops=989.5"])).train.peak_tflops == 989.5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mfu_in_a_real_training_run(digits_shards, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = str(tmp_path / "run")
    proc = train(digits_shards, run_dir, "train.max_steps=2", "checkpoint.every=100", "train.peak_tflops=0.002",
                 nproc=1)
    lines = [m for m in metrics(run_dir) if "loss" in m]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:  # per rank: the model's TFLOP/s over the given peak
        assert m["mfu"] > 0 and math.isclose(m["mfu"], m["tflops_per_rank"] / 0.002, rel_tol=1e-9)
    assert "mfu=" in proc.stdout + proc.stderr  # the console line
    events = EventAccumulator(f"{run_dir}/tensorboard")
    events.Reload()
    assert [e.step for e in events.Scalars("mfu")] == [1, 2]
