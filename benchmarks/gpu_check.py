"""The measurements of `gpu_check.sh`: attention backends, DiT-XL/2 + DTR training throughput and
MFU, and the loader's rate against that consumption, all in one process and one JSON.

    python benchmarks/gpu_check.py [--device cuda|cpu] [--smoke] [--tests-junit FILE] [--out FILE]

`--smoke` shrinks every piece (DiT-T/2, batch 4, a few steps, the `aot_eager` compile backend)
so that the whole check runs on a CPU in CI; the numbers are then only a proof that it runs.

MFU = model FLOPs per step (`dit_train_flops`, 3 × forward matmul FLOPs) / step time / the device's
peak dense bf16 FLOP/s (`--peak-tflops`, or the table of dtr_scale/mfu.py by device name, the one
training's `mfu` metric uses).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import xml.etree.ElementTree as ET

import torch

from common import RESULTS_DIR, command_line, machine_info, median, write_json

from dtr_scale.config import load_config
from dtr_scale.data import LatentLoader
from dtr_scale.data.shard_format import MOMENTS_FIELD
from dtr_scale.data.synthetic import write_synthetic_shards
from dtr_scale.mfu import device_entry, matmul_precision, peak_flops
from dtr_scale.models import dit_train_flops
from dtr_scale.models.attention import HAS_XFORMERS, attend
from dtr_scale.parallel.parallelize import CompileWatch
from dtr_scale.parallel.process_group import DistEnv
from dtr_scale.train import build_training

FULL = {"model": "DiT-XL/2", "batch": 32, "input_size": 32, "channels": 4, "steps": 10, "warmup": 3}
SMOKE = {"model": "DiT-T/2", "batch": 4, "input_size": 8, "channels": 4, "steps": 2, "warmup": 1}


def run_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The peak MFU divides by (the training module's table, dtr_scale/mfu.py), and where it came from."""
    precision = "bf16" if device.type == "cuda" else "fp32"  # what `training_rate` trains in
    peak = peak_flops(device, precision, override)
    if override:
        return peak, f"--peak-tflops {override}"
    if peak is None:
        return None, "no table entry (CPU or unknown device): pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    return peak, f"{device_entry(name)} dense {matmul_precision(precision)} (device {name!r})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_times(device: torch.device, shape: dict, reps: int) -> dict:
    """Forward + backward of one attention call at the model's shape, per backend (median ms)."""
    heads = 16 if shape["model"] == "DiT-XL/2" else 4
    width = 1152 if shape["model"] == "DiT-XL/2" else 128
    tokens = (shape["input_size"] // 2) ** 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(shape["batch"], tokens, heads, width // heads, device=device, dtype=dtype,
                           requires_grad=True) for _ in range(3))
    out = {"shape_BLHD": [shape["batch"], tokens, heads, width // heads], "dtype": str(dtype)}
    backends = ["sdpa", "math"] + (["xformers"] if HAS_XFORMERS and device.type == "cuda" else [])
    for backend in backends:
        times = []
        for _ in range(reps + 2):
            sync(device)
            tic = time.perf_counter()
            attend(q, k, v, backend).sum().backward()
            sync(device)
            times.append(time.perf_counter() - tic)
        out[f"{backend}_ms"] = round(1e3 * median(times[2:]), 3)
    if "xformers_ms" not in out:
        out["xformers_ms"] = None
        out["xformers_note"] = "xformers not installed" if not HAS_XFORMERS else "CPU: xformers needs CUDA"
    return out


def training_rate(device: torch.device, shape: dict, *, compiled: bool, checkpointing: float,
                  backend: str, peak: float | None) -> dict:
    """img/s and MFU of the single engine's full step (forward, backward, clip, AdamW)."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    own_backend = compiled and backend != "inductor"  # then compiled here, not by the engine
    cfg = load_config(None, [f"model.name={shape['model']}", "parallel.engine=single", f"train.precision={precision}",
                             f"model.compile={str(compiled and not own_backend).lower()}",
                             f"model.checkpointing={checkpointing}", "model.routing.sharing_ratio=0.8"])
    latent_shape = (shape["channels"], shape["input_size"], shape["input_size"])
    objective, engine = build_training(cfg, DistEnv(), device, latent_shape, num_classes=1000)
    dit = objective.dit
    if own_backend:
        from dtr_scale.parallel.parallelize import apply_compile

        apply_compile(dit, backend=backend)
    n, c, s = shape["batch"], shape["channels"], shape["input_size"]
    x, noise = (torch.randn(n, c, s, s, device=device) for _ in range(2))
    t, y = torch.randint(0, 1000, (n,), device=device), torch.randint(0, 1000, (n,), device=device)
    watch = CompileWatch(compiled)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        loss, _ = engine.module(x, t, y, noise)
        engine.backward(loss)
        engine.step()

    for _ in range(shape["warmup"]):
        step()
    compile_report = watch.report()
    sync(device)
    tic = time.perf_counter()
    for _ in range(shape["steps"]):
        step()
    sync(device)
    secs = (time.perf_counter() - tic) / shape["steps"]
    flops = dit_train_flops(dit, n)
    row = {"compiled": compiled, "checkpointing": checkpointing, "precision": precision, "step_s": round(secs, 4),
           "img_per_s": round(n / secs, 2), "tflops": round(flops / secs / 1e12, 3),
           "mfu": round(flops / secs / peak, 4) if peak else None, **compile_report}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    engine = objective = dit = None  # free the memory before the next shape (the closure shares engine)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def loader_rate(shape: dict, workers: int, seconds: float) -> float:
    """Samples/s of the real loader over synthetic moments shards of the model's latent shape."""
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_shards(tmp, counts=[256] * 8, latent_shape=(shape["channels"], shape["input_size"],
                                                                    shape["input_size"]),
                               field=MOMENTS_FIELD, random_values=True)
        loader = LatentLoader(tmp, shape["batch"], num_workers=workers, mode="resampled", seed=0,
                              pin_memory=torch.cuda.is_available())
        it = iter(loader)
        next(it)  # workers started
        n, tic = 0, time.perf_counter()
        while time.perf_counter() - tic < seconds:
            n += next(it)[0].shape[0]
        return n / (time.perf_counter() - tic)


def junit_summary(path: str | None) -> dict | None:
    """Per-test outcome of the GPU-marked tests from pytest's JUnit XML."""
    if not path:
        return None
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = tag if tag != "skipped" else f"skipped: {node.get('message', '')[:80]}"
        cases[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: proves every piece runs (CPU CI)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak dense TFLOP/s for MFU (default: the table in dtr_scale/mfu.py)")
    p.add_argument("--loader-workers", type=int, default=4)
    p.add_argument("--tests-junit", default=None, help="JUnit XML of the GPU-marked tests (gpu_check.sh)")
    p.add_argument("--out", default=str(RESULTS_DIR / "gpu.json"))
    args = p.parse_args()
    device = torch.device(args.device)
    shape = SMOKE if args.smoke else FULL
    backend = "aot_eager" if args.smoke else "inductor"
    peak, peak_source = run_peak(device, args.peak_tflops)
    info = machine_info()

    attn = attention_times(device, shape, reps=3 if args.smoke else 20)
    train = []
    for compiled in (False, True):
        for checkpointing in (0.0, 1.0):
            row = training_rate(device, shape, compiled=compiled, checkpointing=checkpointing,
                                backend=backend, peak=peak)
            train.append(row)
            print(f"  train compiled={compiled} checkpointing={checkpointing}: {row['img_per_s']} img/s", flush=True)
    best = max(r["img_per_s"] for r in train)
    workers = 0 if args.smoke else args.loader_workers
    loader = loader_rate(shape, workers, seconds=2.0 if args.smoke else 15.0)
    tests = junit_summary(args.tests_junit)

    print(f"\n{shape['model']} + DTR (β=0.8), batch {shape['batch']} per device, {device} "
          f"({info.get('gpu', info['cpu'])}){'  [SMOKE: sizes shrunk, numbers meaningless]' if args.smoke else ''}")
    print(f"MFU peak: {peak_source}")
    if tests is not None:
        for name, outcome in tests.items():
            print(f"  test {name}: {outcome}")
    print(f"attention fwd+bwd {attn['shape_BLHD']} {attn['dtype']}: sdpa {attn['sdpa_ms']} ms, math {attn['math_ms']} ms, "
          f"xformers {attn['xformers_ms'] if attn['xformers_ms'] is not None else attn['xformers_note']}")
    print(f"{'compiled':9s} {'ckpt':>5s} {'step s':>8s} {'img/s':>8s} {'TFLOP/s':>8s} {'MFU':>7s} {'compile s':>9s}")
    for r in train:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{str(r['compiled']):9s} {r['checkpointing']:5.1f} {r['step_s']:8.4f} {r['img_per_s']:8.2f} "
              f"{r['tflops']:8.3f} {mfu:>7s} {r.get('compile_s', '-')!s:>9s}")
    print(f"loader ({workers} workers): {loader:.1f} samples/s = {loader / best:.1f}x the fastest training rate")
    result = {"benchmark": "gpu_check", "command": command_line(), "machine": info, "smoke": args.smoke,
              "device": str(device), "shape": shape, "peak_flops": peak, "peak_source": peak_source, "compile_backend": backend,
              "gpu_tests": tests, "attention": attn, "training": train,
              "loader": {"workers": workers, "samples_per_s": round(loader, 1),
                         "ratio_to_fastest_training": round(loader / best, 2)},
              "mfu_goal": ">= 0.35 for DiT-XL/2 + DTR bf16 on H100/H200"}
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
