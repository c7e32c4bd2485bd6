"""`python -m dtr_scale.prep`: encode images into latent WebDataset shards (once, distributed).

Examples:
  python -m dtr_scale.prep --source digits --vae none --out data/digits16
  torchrun --nproc_per_node=8 -m dtr_scale.prep --source imagefolder:/data/imagenet/train \\
      --vae /models/sd-vae-ft-ema --resolution 256 --out /data/in256-sdvae
  srun -n 32 python -m dtr_scale.prep --source 'tar:/data/in1k-wds/train-*.tar' --vae DIR --out OUT

Interrupted? Rerun the same command: finished shards are kept, the rest are redone, and the
result is byte-identical to an uninterrupted run. The shard layout is in data_prep/README.md.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from .data.encoders import check_vae_path
from .data.encode_job import DIGITS_RESOLUTION, IMAGE_RESOLUTION, PrepConfig, run_prep
from .errors import UserError, remember_process_group, run_cli
from .input_checks import at_least, writable_dir
from .parallel.process_group import init_distributed, shutdown
from .threads import configure_threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dtr_scale.prep",
        description=__doc__.split("\n\n", 1)[0] + " Runs under torchrun/srun/deepspeed: "
        "shard i goes to rank i % world_size.",
        epilog="Output: OUT/shard-NNNNNN.tar (WebDataset), OUT/dataset.json (written last), "
        "OUT/_progress/ (resume records). See data_prep/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True,
                   help="digits (scikit-learn's bundled 8x8 digits), imagefolder:DIR "
                        "(DIR/<class>/<images>, classes = sorted folder names) or tar:GLOB "
                        "(image tars with a cls member per sample; one output shard per tar)")
    p.add_argument("--vae", required=True,
                   help="none (pixel mode: [-1,1] images are the latents) or a diffusers "
                        "AutoencoderKL directory / hub id (e.g. stabilityai/sd-vae-ft-ema)")
    p.add_argument("--out", required=True, help="output directory for shards and dataset.json")
    p.add_argument("--resolution", type=int, default=None,
                   help=f"ADM centre-crop size (default {DIGITS_RESOLUTION} for digits, "
                        f"{IMAGE_RESOLUTION} otherwise; 256/512 for SD-VAE)")
    p.add_argument("--shard-size", type=int, default=1000,
                   help="images per output shard for digits/imagefolder (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    p.add_argument("--vae-subfolder", default=None, help="subfolder of the VAE repo (e.g. vae)")
    p.add_argument("--allow-download", action="store_true",
                   help="let a hub id be downloaded; off by default so offline nodes fail fast")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes for tar sources (default: largest label + 1)")
    p.add_argument("--max-shards-this-run", type=int, default=None, metavar="K",
                   help="stop each rank after writing K new shards (to split a long job, or to "
                        "test resume); rerun to continue")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="an image that does not decode: raise (stop, naming the file; default) or skip "
                        "(leave it out, counted in the summary)")
    p.add_argument("--store-images", action="store_true",
                   help="also store each centre-cropped image and its mirror (uint8) beside the latents: "
                        "REPA (repa.enabled) aligns the DiT with an encoder's features of the clean image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that prep did not create (its files of the "
                        "same names are replaced); without it such a folder is refused")
    return p


def check_args(args: argparse.Namespace) -> PrepConfig:
    """What can be checked before a process group starts or an image is read: option ranges, the
    source's location, a VAE path, the output folder. Run on every rank (same answer)."""
    at_least(args.shard_size, 1, "--shard-size")
    at_least(args.batch_size, 1, "--batch-size")
    if args.resolution is not None:
        at_least(args.resolution, 1, "--resolution")
    if args.max_shards_this_run is not None:
        at_least(args.max_shards_this_run, 1, "--max-shards-this-run", " (leave it out for no limit)")
    if args.num_classes is not None:
        at_least(args.num_classes, 1, "--num-classes")
    kind, _, value = args.source.partition(":")
    if args.source == "digits":
        if args.num_classes not in (None, 10):
            raise UserError(f"--num-classes {args.num_classes} disagrees with --source digits, which has 10 "
                            "classes; leave --num-classes out (it is for tar sources)")
    elif kind == "imagefolder" and value:
        if not os.path.isdir(value):
            raise UserError(f"--source {args.source}: image folder {value} not found (checked from "
                            f"{os.getcwd()}); expected DIR/<class name>/<images>")
    elif kind == "tar" and value:
        if not glob.glob(value):
            raise UserError(f"--source {args.source}: no file matches {value}")
    else:
        raise UserError(f"--source {args.source}: expected digits, imagefolder:DIR or tar:GLOB")
    if args.vae != "none":
        check_vae_path(args.vae)  # a VAE given as a path must exist; a hub id is resolved later
    writable_dir(args.out, "--out")
    return PrepConfig(source=args.source, vae=args.vae, out=args.out, resolution=args.resolution,
                      shard_size=args.shard_size, batch_size=args.batch_size,
                      vae_subfolder=args.vae_subfolder, allow_download=args.allow_download,
                      num_classes=args.num_classes, max_shards_this_run=args.max_shards_this_run,
                      progress=not args.no_progress, on_error=args.on_error,
                      overwrite=args.overwrite, store_images=args.store_images)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    return run_cli(_prep, args)


def _prep(args: argparse.Namespace) -> int:
    cfg = check_args(args)
    env = init_distributed()
    remember_process_group()
    try:
        return run_prep(cfg, env)
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
