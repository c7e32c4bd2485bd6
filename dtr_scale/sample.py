"""Distributed sampling: `python -m dtr_scale.sample --weights W --out DIR [key=value ...]`.

Works alone and under `torchrun --nproc_per_node=N`, `deepspeed --module` and `srun`.

--weights   an export (`python -m dtr_scale.export`: W.pt or W.safetensors, whose metadata names
            the model, routing, objective (ddpm | flow with its settings), diffusion schedule and
            the data's VAE/latent scale), a training run directory (its `latest` checkpoint), one
            step_* checkpoint directory, or an official DiT / SiT state dict (then `model=` names
            the network and, for SiT, `objective=flow`).
--out DIR   receives shards/shard-XXXXXX.npz (per-shard uint8 images, labels, indices),
            sample_config.json (what the run was; a resume must match it), samples.npz
            (arr_0: (N, H, W, C) uint8 in index order, ADM's layout; arr_1: (N,) int64 labels),
            samples.protocol.json (what `evaluate` reports with its numbers: options, measured NFE,
            the weights' sha256 and step, code version; dtr_scale/protocol.py)
            and, with png=true, png/000000.png ... one per index.

Options (key=value; `--help` lists them with defaults): num_samples, seed, sampler=ddpm|ddim,
steps ('250', 'ddim50', '10,15,20'), eta, cfg_scale (1.0 = no guidance and no doubled batch),
cfg_channels (default all channels; 3 = DiT's published samples), precision=fp32|bf16 (bf16 is
autocast around the model; allowed on CPU, where it is slow and only useful as a numerics check),
batch_size (per rank), labels=uniform|balanced, vae=none|PATH (default: the weights' metadata),
png, shard_size, max_shards_this_run (stop early: rerun to resume), progress, device.
Flow-matching weights (SiT's transport): flow_sampler=ode|sde, ode_method, num_steps, atol, rtol,
sde_method, diffusion_form, diffusion_norm, last_step, last_step_size, and the guidance interval
guidance_low / guidance_high in flow time (CFG only inside it; default [0, 1]).

Reproducibility: sample i is a function of (seed, i) only. Its class label, starting noise and
every step's noise come from its own generator, so the images do not depend on the number of
ranks, and not on the batch size as long as the float kernels give the same per-row results for
every batch size (they do for the CPU kernels tested here; GPU GEMMs may differ in the last bits,
which can move a rare pixel by one level). Images are converted exactly as DiT does:
clamp(127.5·x + 128, 0, 255) truncated to uint8. Pixel-space single-channel models give
(N, H, W, 1).

Work split and resume: shard j (indices j·S .. j·S+S-1) is made by rank j % world_size, written
to a temp name and renamed when complete. Rerunning the same command skips finished shards.
When every shard exists, rank 0 streams them into samples.npz (never holding all images in
memory); the other ranks exit without waiting.
"""
from __future__ import annotations

import argparse
import os
import sys

from dtr_scale.errors import UserError, remember_process_group, run_cli
from dtr_scale.input_checks import writable_dir
from dtr_scale.sampling.options import SampleOptions, options_help, parse_options
from dtr_scale.threads import configure_threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dtr_scale.sample",
        description="Sample images from DiT/DTR weights on one or many processes.",
        epilog=options_help() + "\n\nexample:\n  torchrun --nproc_per_node=8 -m dtr_scale.sample --weights "
               "W.pt --out samples/ num_samples=50000 cfg_scale=1.5 steps=250",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="exported weights file or training checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("options", nargs="*", metavar="key=value", help="sampling options (listed below)")
    return p


def check_args(args: argparse.Namespace) -> SampleOptions:
    """The options, the weights path (a file, a run directory or a step_* checkpoint) and the
    output folder, before the model is loaded or a process group starts."""
    opts = parse_options(args.options)
    if not os.path.exists(args.weights):
        raise UserError(
            f"--weights {args.weights} does not exist (no weights file or checkpoint directory there): pass "
            "an exported weights file (.pt or .safetensors from `python -m dtr_scale.export --checkpoint "
            "RUN_DIR --out W.pt`) or a training run / step_* checkpoint directory")
    if os.path.isdir(args.weights):
        from dtr_scale.export import resolve_checkpoint

        resolve_checkpoint(args.weights, flag="--weights")
    writable_dir(args.out, "--out")
    return opts


def main(argv=None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value may stand before or after options
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    return run_cli(_sample, args)


def _sample(args: argparse.Namespace) -> int:
    opts = check_args(args)
    from dtr_scale.parallel.process_group import init_distributed
    from dtr_scale.sampling.run import run_sampling

    init_distributed()  # the same group run_sampling uses (idempotent): a failure reaches every rank
    remember_process_group()
    run_sampling(args.weights, args.out, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
