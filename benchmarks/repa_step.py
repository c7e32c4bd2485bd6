"""Training step with REPA vs without: DiT-S/2 + DTR (β = 0.8), SiT's flow objective.

One step = engine.module forward + engine.backward + engine.step (single engine). The REPA variant
adds the DINOv2 features of the clean batch (a randomly initialised ViT of the named size, saved
to a temporary safetensors file and loaded through the real loader: the encoder's cost does not
depend on its weights), the projector and the alignment term. The two variants alternate round by
round; medians. Also timed alone: the encoder's forward (`features`), so the table shows its share
of the REPA step.

    python benchmarks/repa_step.py --reps 3 --warmup 1 --batch 4 --encoder dinov2-vit-b

Writes benchmarks/results/repa_step.json.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import ContentionMeter, command_line, machine_info, median, step_parser, write_json  # noqa: E402

from dtr_scale.config import load_config, validate  # noqa: E402
from dtr_scale.objective import build_objective, dit_from_config  # noqa: E402
from dtr_scale.parallel.factory import build_engine  # noqa: E402
from dtr_scale.parallel.process_group import DistEnv  # noqa: E402


def encoder_file(name: str, folder: str) -> str:
    import timm
    from safetensors.torch import save_file

    from dtr_scale.objective.repa_encoder import ENCODERS

    vit = timm.create_model(ENCODERS[name][0], pretrained=False, img_size=518, dynamic_img_size=True)
    path = os.path.join(folder, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return path


def build(args, repa: list[str], device):
    cfg = validate(load_config(None, [f"model.name={args.model}", f"model.input_size={args.input_size}",
                                      "model.in_channels=4", "model.num_classes=1000", "model.attention=sdpa",
                                      "model.routing.sharing_ratio=0.8", "diffusion.objective=flow",
                                      f"train.global_batch_size={args.batch}", "model.compile=false", *repa]))
    torch.manual_seed(0)
    objective = build_objective(cfg, dit_from_config(cfg))
    return objective, build_engine(objective, cfg, DistEnv(), device)


def step(engine, objective, batch, device) -> float:
    x, y, images = batch
    gen = torch.Generator().manual_seed(0)
    t = objective.sample_timesteps(len(x), gen).to(device)
    noise = torch.randn(x.shape, generator=gen).to(device)
    extra = () if objective.repa is None else (images,)
    sync(device)
    t0 = time.perf_counter()
    loss, _ = engine.module(x, t, y, noise, None, *extra)
    engine.backward(loss)
    engine.step()
    sync(device)
    return time.perf_counter() - t0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = step_parser(__doc__.split("\n\n")[0], "repa_step.json", reps=3, channels=False)
    p.add_argument("--encoder", default="dinov2-vit-b")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        enc = encoder_file(args.encoder, tmp)
        repa = ["repa.enabled=true", f"repa.encoder={args.encoder}", f"repa.encoder_weights={enc}", "repa.depth=8"]
        variants = {"plain": build(args, [], device), "repa": build(args, repa, device)}
    gen = torch.Generator().manual_seed(1)
    side = args.input_size * 8  # the image behind an SD-VAE latent
    batch = (torch.randn(args.batch, 4, args.input_size, args.input_size, generator=gen).to(device),
             torch.randint(0, 1000, (args.batch,), generator=gen).to(device),
             torch.randint(0, 256, (args.batch, 3, side, side), dtype=torch.uint8, generator=gen).to(device))
    encoder = variants["repa"][0].repa.encoder
    grid = variants["repa"][0].dit.x_embedder.grid_size
    times = {"plain": [], "repa": [], "encoder": []}
    with ContentionMeter() as contention:
        for rep in range(args.warmup + args.reps):
            for name, (objective, engine) in variants.items():
                dt = step(engine, objective, batch, device)
                if rep >= args.warmup:
                    times[name].append(dt)
            sync(device)
            t0 = time.perf_counter()
            encoder.features(batch[2], grid)
            sync(device)
            if rep >= args.warmup:
                times["encoder"].append(time.perf_counter() - t0)
    med = {k: median(v) for k, v in times.items()}
    ratio = med["repa"] / med["plain"]
    share = med["encoder"] / med["repa"]
    print(f"{args.model} + DTR β=0.8, flow, batch {args.batch}, {args.input_size}² latents, {args.encoder} at "
          f"{grid * 14}px, {device.type}, {args.threads} thread(s)")
    print(f"step without REPA {med['plain']:.3f} s | with REPA {med['repa']:.3f} s | ratio {ratio:.3f} | "
          f"encoder forward {med['encoder']:.3f} s = {share:.1%} of the REPA step")
    result = {"benchmark": "repa_step", "command": command_line(), "machine": info,
              "load_avg_at_end": [round(x, 2) for x in os.getloadavg()], "others_busy": contention.others,
              "model": args.model, "encoder": args.encoder, "batch": args.batch, "device": device.type,
              "latent_shape": [4, args.input_size, args.input_size], "encoder_input": grid * 14,
              "reps": args.reps, "warmup": args.warmup, "seconds": times, "median_s": med,
              "repa_over_plain": ratio, "encoder_share_of_repa_step": share}
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
