"""Model FLOPs utilisation (MFU): the model's FLOP/s per rank over the device's dense peak.

    mfu = dit_train_flops(model, rank's samples per step) / seconds per step / peak FLOP/s

The peak is the vendor's dense (no 2:4 sparsity) tensor-core figure for the run's precision:
bf16 and fp16 runs use the bf16 / fp16 peak; fp32 runs use the TF32 peak when PyTorch lets
matmuls use TF32 (`torch.backends.cuda.matmul.allow_tf32`), else the plain FP32 peak (PyTorch's
default: TF32 off). Values, TFLOP/s, from NVIDIA's data sheets, which print the tensor-core
numbers with sparsity ("*"): the dense figure is half of that.

- A100 SXM4 / PCIe (A100 Tensor Core GPU data sheet): FP32 19.5, TF32 156, BF16/FP16 312.
- H100 SXM (H100 Tensor Core GPU data sheet): FP32 67, TF32 494.5, BF16/FP16 989.5.
- H100 PCIe (same sheet): FP32 51, TF32 378, BF16/FP16 756.5.
- H100 NVL (same sheet): FP32 60, TF32 417.5, BF16/FP16 835.5.
- H200 SXM and GH200 (H200 / GH200 data sheets, Hopper compute of the H100 SXM): as H100 SXM.
- H200 NVL (H200 data sheet): as H100 NVL.
- B200 (HGX B200 specifications, per GPU): FP32 75, TF32 1100, BF16/FP16 2250.

Another device, or the CPU, has no entry: the metric is left out of the log unless
`train.peak_tflops` gives the peak (then used for every precision and device).
"""
from __future__ import annotations

import re
from typing import Optional

import torch

# name -> {precision: dense peak TFLOP/s}
PEAK_TFLOPS = {
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "H100 SXM": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "GH200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "B200": {"fp32": 75.0, "tf32": 1100.0, "bf16": 2250.0, "fp16": 2250.0},
}
# CUDA device names (torch.cuda.get_device_name) -> table entry, first match wins: the NVL and
# PCIe parts before the plain names, and GH200 before H200 (word boundaries keep them apart).
# A100 SXM4 and PCIe share every figure. SXM H100s report "NVIDIA H100 80GB HBM3".
_NAME_RULES = (
    (r"\bA100\b", "A100"),
    (r"\bH100\b.*\bNVL\b", "H100 NVL"),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe"),
    (r"\bH100\b", "H100 SXM"),
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b.*\bNVL\b", "H200 NVL"),
    (r"\bH200\b", "H200"),
    (r"\bB200\b", "B200"),
)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def device_entry(name: str) -> Optional[str]:
    """The table entry of a CUDA device name, or None for a device it does not know."""
    for pattern, entry in _NAME_RULES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return entry
    return None


def matmul_precision(train_precision: str) -> str:
    """The precision whose peak bounds a run's matmuls (see the module docstring)."""
    if train_precision in ("bf16", "fp16"):
        return train_precision
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


def table_peak_flops(device_name: str, precision: str) -> Optional[float]:
    """Dense peak FLOP/s of a named CUDA device at `precision` (fp32 | tf32 | bf16 | fp16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    entry = device_entry(device_name)
    return None if entry is None else PEAK_TFLOPS[entry][precision] * 1e12


def peak_flops(device: torch.device, train_precision: str, override_tflops: Optional[float]) -> Optional[float]:
    """The peak MFU divides by: `train.peak_tflops` when set, else the table's entry for this
    CUDA device at the run's precision; None (no MFU) on the CPU or an unknown device."""
    if override_tflops:
        return float(override_tflops) * 1e12
    if device.type != "cuda":
        return None
    return table_peak_flops(torch.cuda.get_device_name(device), matmul_precision(train_precision))


def mfu(flops_per_step: float, seconds_per_step: float, peak: Optional[float]) -> dict:
    """`{"mfu": fraction}` for a log line, or {} when no peak is known."""
    if not peak or not seconds_per_step > 0:
        return {}
    return {"mfu": flops_per_step / seconds_per_step / peak}
