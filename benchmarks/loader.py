"""Loader throughput vs DiT-B/2 training consumption, measured in one run on this machine.

Writes synthetic 4x32x32 fp16 moments shards (the SD-VAE latent size of 256px images) to a temp
dir, measures LatentLoader samples/s with 1 and 2 workers (full pipeline: tar read, validation,
shuffle buffer, decode, flip, eps draw, batching), then the sample rate of DiT-B/2 training steps
(forward + backward + AdamW, fp32, MSE on the output) at the same batch size. The claim checked:
one loader worker sustains >= 20x what the model consumes.

    python benchmarks/loader.py [--batch-size 8] [--shards 16] [--per-shard 256] [--steps 5]

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

from dtr_scale.data import LatentLoader
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


def dit_rate(batch_size: int, steps: int) -> float:
    from dtr_scale.models import create_model

    torch.manual_seed(0)
    model = create_model("DiT-B/2", input_size=32, in_channels=4, num_classes=1000).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.randn(batch_size, 4, 32, 32)
    y = torch.randint(0, 1000, (batch_size,))

    def step():
        t = torch.randint(0, 1000, (batch_size,))
        out = model(x, t, y)
        loss = torch.nn.functional.mse_loss(out[:, :4], x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, AdamW state)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed DiT-B/2 steps")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "loader.json"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_shards(tmp, counts=[args.per_shard] * args.shards,
                                      latent_shape=(4, 32, 32), num_classes=1000,
                                      field="moments.npy", random_values=True, scale_factor=0.18215)
        total = args.shards * args.per_shard
        rates = {w: loader_rate(path, args.batch_size, w, 2 * total) for w in (1, 2)}
    model_rate = dit_rate(args.batch_size, args.steps)

    rows = [("loader, 1 worker", rates[1]), ("loader, 2 workers", rates[2]),
            ("DiT-B/2 train step consumption", model_rate)]
    print(f"\nbatch {args.batch_size}, {args.shards} shards x {args.per_shard} samples of "
          f"(2, 2, 4, 32, 32) fp16 moments; torch threads {torch.get_num_threads()}")
    print(f"{'what':34s} {'samples/s':>12s} {'x DiT-B/2':>10s}")
    for name, rate in rows:
        print(f"{name:34s} {rate:12.1f} {rate / model_rate:10.1f}")
    ratio = rates[1] / model_rate
    verdict = "PASS" if ratio >= 20 else "FAIL"
    print(f"target: 1-worker loader >= 20x DiT-B/2 consumption -> {ratio:.1f}x {verdict}")

    result = {
        "benchmark": "loader", "batch_size": args.batch_size, "shards": args.shards,
        "samples_per_shard": args.per_shard, "latent_shape": [4, 32, 32],
        "loader_samples_per_s": {"1_worker": round(rates[1], 1), "2_workers": round(rates[2], 1)},
        "dit_b2_train_samples_per_s": round(model_rate, 2),
        "dit_b2_steps_per_s": round(model_rate / args.batch_size, 3),
        "ratio_1_worker": round(ratio, 1), "ratio_2_workers": round(rates[2] / model_rate, 1),
        "target_ratio": 20, "pass": ratio >= 20,
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
