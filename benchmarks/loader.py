"""Loader throughput vs DiT-B/2 training consumption, measured in one run on this machine.

Writes synthetic 4x32x32 fp16 moments shards (the SD-VAE latent size of 256px images) to a temp
dir, measures LatentLoader samples/s with 1 and 2 workers (full pipeline: tar read, validation,
shuffle buffer, decode, flip, eps draw, batching), then the sample rate of DiT-B/2 training steps
(forward + backward + AdamW, fp32, MSE on the output) at the same batch size. The claim checked:
one loader worker sustains >= 20x what the model consumes.

The same run measures `data.mode=global` (GlobalLoader: tar index built at start, each sample
read by a positioned read, per-position flip and eps): its rate with 1 and 2 workers against the
model (goal >= 20x with one worker) and against the streaming loader (goal >= 0.5x), the cost of
building the tar index, and the training loop's per-sample draws of t, noise and label dropout
(`randomness.PositionDraws`) against the per-rank generator draws of the other modes.

    python benchmarks/loader.py [--batch-size 8] [--shards 16] [--per-shard 256] [--steps 5]
        [--device cuda --model-batch 256 --out benchmarks/results/loader_gpu.json]

Prints a table and writes benchmarks/results/loader.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dtr_scale.data import GlobalBatch, GlobalLoader, LatentLoader
from dtr_scale.data.synthetic import write_synthetic_shards


def loader_rate(path, batch_size: int, workers: int, min_samples: int) -> float:
    """Samples/s over one full epoch after a warm-up pass (workers started, files cached)."""
    loader = LatentLoader(path, batch_size, num_workers=workers, seed=0)
    for _ in loader:  # warm-up epoch: page cache, worker start-up paths
        pass
    n, t0 = 0, time.perf_counter()
    while n < min_samples:
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def global_rate(path, batch_size: int, workers: int, min_samples: int) -> float:
    """Samples/s of data.mode=global after one warm-up epoch's worth, on one open iterator."""
    batches = iter(GlobalLoader(path, batch_size, num_workers=workers, seed=0))
    warm = 0
    while warm < min_samples // 2:
        warm += next(batches).x.shape[0]
    n, t0 = 0, time.perf_counter()
    while n < min_samples:
        n += next(batches).x.shape[0]
    return n / (time.perf_counter() - t0)


def index_seconds_per_sample(path, total: int) -> float:
    """Loader start-up per sample (best of 3; files cached). The synthetic shards come with prep's
    sample index, so this is opening it; benchmarks/global_start.py sets it against the header
    scan every start made before the index."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        GlobalLoader(path, 1)
        best = min(best, time.perf_counter() - t0)
    return best / total


def draw_rates(batch_size: int, rounds: int = 50) -> tuple[float, float]:
    """Samples/s of the training draws (t, noise, label dropout) for 4x32x32 latents: per sample
    from its position (global mode) vs from the rank's generators (the streaming modes)."""
    from dtr_scale.diffusion import create_diffusion
    from dtr_scale.models import create_model
    from dtr_scale.objective import DDPMObjective
    from dtr_scale.randomness import training_inputs

    dit = create_model("DiT-T/2", input_size=32, in_channels=4, num_classes=1000)
    objective = DDPMObjective(dit, create_diffusion(diffusion_steps=1000))
    gen_t, gen_noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    x, y = torch.zeros(batch_size, 4, 32, 32), torch.zeros(batch_size, dtype=torch.long)
    cpu = torch.device("cpu")

    def rate(draw) -> float:
        t0 = time.perf_counter()
        for r in range(rounds):
            draw(r)
        return rounds * batch_size / (time.perf_counter() - t0)

    per_position = rate(lambda r: training_inputs(
        objective, GlobalBatch(x, y, torch.arange(r * batch_size, (r + 1) * batch_size)), gen_t, gen_noise, 0, cpu))
    per_rank = rate(lambda r: training_inputs(objective, (x, y), gen_t, gen_noise, 0, cpu))
    return per_position, per_rank


def dit_rate(batch_size: int, steps: int, device: str = "cpu") -> float:
    """DiT-B/2 training samples/s: fp32 on the CPU, bf16 autocast on CUDA."""
    from dtr_scale.models import create_model

    torch.manual_seed(0)
    model = create_model("DiT-B/2", input_size=32, in_channels=4, num_classes=1000).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.randn(batch_size, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    cuda = device.startswith("cuda")

    def step():
        t = torch.randint(0, 1000, (batch_size,), device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = model(x, t, y)
        loss = torch.nn.functional.mse_loss(out[:, :4].float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3 if cuda else 1):  # warm-up (allocations, AdamW state, kernels)
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed DiT-B/2 steps")
    p.add_argument("--device", default="cpu", help="where DiT-B/2 trains (cuda: bf16 autocast)")
    p.add_argument("--model-batch", type=int, default=0, help="DiT-B/2 batch (default: --batch-size)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_shards(tmp, counts=[args.per_shard] * args.shards,
                                      latent_shape=(4, 32, 32), num_classes=1000,
                                      field="moments.npy", random_values=True, scale_factor=0.18215)
        total = args.shards * args.per_shard
        rates = {w: loader_rate(path, args.batch_size, w, 2 * total) for w in (1, 2)}
        global_rates = {w: global_rate(path, args.batch_size, w, 2 * total) for w in (1, 2)}
        index_s = index_seconds_per_sample(path, total)
    positioned, per_rank = draw_rates(args.batch_size)
    model_rate = dit_rate(args.model_batch or args.batch_size, args.steps, args.device)

    rows = [("loader, 1 worker", rates[1]), ("loader, 2 workers", rates[2]),
            ("global mode, 1 worker", global_rates[1]), ("global mode, 2 workers", global_rates[2]),
            ("draws per position (global)", positioned), ("draws per rank (streaming)", per_rank),
            ("DiT-B/2 train step consumption", model_rate)]
    print(f"\nbatch {args.batch_size}, {args.shards} shards x {args.per_shard} samples of "
          f"(2, 2, 4, 32, 32) fp16 moments; torch threads {torch.get_num_threads()}")
    print(f"{'what':34s} {'samples/s':>12s} {'x DiT-B/2':>10s}")
    for name, rate in rows:
        print(f"{name:34s} {rate:12.1f} {rate / model_rate:10.1f}")
    ratio = rates[1] / model_rate
    verdict = "PASS" if ratio >= 20 else "FAIL"
    print(f"target: 1-worker loader >= 20x DiT-B/2 consumption -> {ratio:.1f}x {verdict}")
    g_ratio, g_vs_stream = global_rates[1] / model_rate, global_rates[1] / rates[1]
    g_pass = g_ratio >= 20 and g_vs_stream >= 0.5
    print(f"target: 1-worker global mode >= 20x DiT-B/2 -> {g_ratio:.1f}x, >= 0.5x streaming -> "
          f"{g_vs_stream:.2f}x {'PASS' if g_pass else 'FAIL'}")
    print(f"global loader start (sample index): {index_s * 1e6:.1f} us/sample "
          f"({index_s * 1.281e6:.0f} s for ImageNet's 1.28M samples)")

    result = {
        "benchmark": "loader", "batch_size": args.batch_size, "shards": args.shards,
        "samples_per_shard": args.per_shard, "latent_shape": [4, 32, 32],
        "loader_samples_per_s": {"1_worker": round(rates[1], 1), "2_workers": round(rates[2], 1)},
        "dit_b2_train_samples_per_s": round(model_rate, 2), "dit_b2_device": args.device,
        "dit_b2_batch": args.model_batch or args.batch_size,
        "dit_b2_steps_per_s": round(model_rate / args.batch_size, 3),
        "ratio_1_worker": round(ratio, 1), "ratio_2_workers": round(rates[2] / model_rate, 1),
        "target_ratio": 20, "pass": ratio >= 20,
        "global_mode": {
            "samples_per_s": {"1_worker": round(global_rates[1], 1), "2_workers": round(global_rates[2], 1)},
            "ratio_1_worker_vs_dit_b2": round(g_ratio, 1), "ratio_1_worker_vs_streaming": round(g_vs_stream, 2),
            "targets": {"vs_dit_b2": 20, "vs_streaming": 0.5}, "pass": g_pass,
            "index_us_per_sample": round(index_s * 1e6, 2),
            "training_draws_samples_per_s": {"per_position": round(positioned, 1), "per_rank": round(per_rank, 1)},
        },
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.is_available(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
