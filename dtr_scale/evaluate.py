"""Distributed FID / sFID / IS / Precision / Recall of a sample set against a reference.

    python -m dtr_scale.evaluate --samples NPZ_OR_DIR --ref NPZ_OR_DIR_OR_PREP_DIR \\
        --extractor inception|pixels --out report.json [--inception-weights PATH]

Works alone, under `torchrun --nproc_per_node=N`, `deepspeed --module` and `srun`: every rank
extracts features for its contiguous block of images, statistics are all-reduced, P/R distance
blocks are divided among ranks, and rank 0 writes the JSON report (atomically) and prints one
summary line. The report's `protocol` joins the samples' sidecar (`samples.protocol.json`, written
by `python -m dtr_scale.sample`: sampler, NFE, guidance, labels, weights) with the evaluation's
reference, extractor and code version (see dtr_scale/protocol.py); without a sidecar the sampling
fields read "unknown". Definitions follow the ADM evaluator (guided-diffusion evaluations/evaluator.py);
see dtr_scale/evaluation/*.py for the details and the few documented differences.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch

from dtr_scale.evaluation.extractors import build_extractor
from dtr_scale.atomic import atomic_write_json
from dtr_scale.code_version import code_version
from dtr_scale import protocol
from dtr_scale.errors import remember_process_group, run_cli
from dtr_scale.input_checks import at_least, existing, writable_file
from dtr_scale.evaluation.image_sources import open_images
from dtr_scale.evaluation.inception_score import ADM_SPLIT_SIZE
from dtr_scale.evaluation.pipeline import compute_metrics, extract, prepare_reference
from dtr_scale.evaluation.precision_recall import DEFAULT_BLOCK, DEFAULT_K
from dtr_scale.evaluation.references import default_cache_dir, has_images
from dtr_scale.parallel.process_group import init_distributed, local_device, shutdown
from dtr_scale.threads import configure_threads


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dtr_scale.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", required=True,
                   help=".npz with arr_0 = NHWC uint8 images, or a folder of such .npz files or of PNG/JPG")
    p.add_argument("--ref", required=True,
                   help="ADM reference batch .npz (mu, sigma, mu_s, sigma_s, arr_0), image .npz, a folder "
                        "of images, or a prep output folder (dataset.json + shards: the training set itself)")
    p.add_argument("--extractor", choices=["inception", "pixels"], default="inception")
    p.add_argument("--out", required=True, help="path of the JSON report (written by rank 0)")
    p.add_argument("--inception-weights", default=None,
                   help="local torch-fidelity Inception weights (default $DTR_SCALE_INCEPTION_WEIGHTS "
                        "or ~/.cache/dtr_scale/weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--inception-sha256", default=None,
                   help="expected sha256 (full or ≥8-digit prefix) of the weights; default 6726825d")
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor call per rank")
    p.add_argument("--num-samples", type=int, default=None, help="use only the first N samples")
    p.add_argument("--ref-cache", default=default_cache_dir(),
                   help="folder for cached reference statistics (default %(default)s)")
    p.add_argument("--no-ref-cache", action="store_true", help="always recompute reference statistics")
    p.add_argument("--is-split-size", type=int, default=ADM_SPLIT_SIZE)
    p.add_argument("--pr-k", type=int, default=DEFAULT_K)
    p.add_argument("--pr-block", type=int, default=DEFAULT_BLOCK, help="rows/columns per distance block")
    p.add_argument("--pr-dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-pr", action="store_true", help="skip precision/recall")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed, recorded in the report (default: the samples' protocol sidecar's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: this rank's GPU if any)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Option ranges and paths, before any extractor is built or a process group starts (and
    what launch/check_inputs.py runs at submit time)."""
    for flag, value in (("--batch-size", args.batch_size), ("--pr-block", args.pr_block),
                        ("--is-split-size", args.is_split_size)):
        at_least(value, 1, flag)
    if not args.no_pr:
        at_least(args.pr_k, 1, "--pr-k", " (the k of the k-NN radii; ADM uses 3), or pass --no-pr")
    if args.num_samples is not None:
        at_least(args.num_samples, 1, "--num-samples", " (leave it out to use every sample)")
    existing(args.samples, "--samples", "samples (.npz of NHWC uint8 images, or a folder of them)")
    existing(args.ref, "--ref", "reference (ADM .npz, image .npz, image folder or prep output folder)")
    if args.extractor == "inception" and args.inception_weights:
        existing(args.inception_weights, "--inception-weights", "Inception weights file")
    writable_file(args.out, "--out")
    if args.extractor == "pixels":
        check_pixel_shapes(args.samples, args.ref)


def check_pixel_shapes(samples: str, ref: str) -> None:
    """Pixel features need one image shape on both sides: read the two headers now rather than
    fail after extracting every sample."""
    from dtr_scale.evaluation.pipeline import check_same_images
    from dtr_scale.evaluation.references import is_latent_shards, read_adm_statistics

    if is_latent_shards(ref) or (read_adm_statistics(ref) is not None and not has_images(ref)):
        return  # decoded at run time / refused there with its own message
    check_same_images(open_images(samples).shape[1:], open_images(ref).shape[1:], samples, ref)


def run(args: argparse.Namespace) -> dict:
    for flag, path in (("--samples", args.samples), ("--ref", args.ref)):
        if not os.path.exists(path):  # before any rank spends time on extraction
            raise FileNotFoundError(f"{flag} {path} does not exist")
    env = init_distributed()
    device = torch.device(args.device) if args.device else local_device(env)
    extractor = build_extractor(args.extractor, device, args.inception_weights, args.inception_sha256)
    want_pr = not args.no_pr

    samples_images = open_images(args.samples)
    samples = extract(samples_images, extractor, args.batch_size, features=want_pr, inception_score=True,
                      is_split_size=args.is_split_size, limit=args.num_samples, desc="samples")
    cache_dir = None if args.no_ref_cache else args.ref_cache
    ref = prepare_reference(args.ref, extractor, args.batch_size, cache_dir, want_features=want_pr)
    metrics = compute_metrics(samples, ref, pr_k=args.pr_k, pr_block=args.pr_block,
                              pr_dtype=getattr(torch, args.pr_dtype))
    sample_half = protocol.read_sample_protocol(args.samples)
    if args.seed is not None and sample_half["seed"] == protocol.UNKNOWN:
        sample_half["seed"] = args.seed
    return {
        "metrics": metrics,
        "protocol": protocol.join(sample_half, evaluated=samples.count, ref_path=args.ref,
                                  ref_sha256=ref.info.get("sha256"), extractor_identity=extractor.identity,
                                  code={"evaluate": code_version()}),
        "counts": {
            "samples": samples.count,
            "reference_images": None if ref.features is None else int(ref.features.shape[0]),
            "reference_statistics": None if ref.pool is None or ref.pool.count < 0 else ref.pool.count,
        },
        "samples": {
            "path": os.path.abspath(args.samples),
            "image_shape": list(samples_images.shape[1:]),
            "extract_seconds": round(samples.seconds, 3),
            "images_per_second": round(samples.count / max(samples.seconds, 1e-9), 2),
        },
        "reference": {**ref.info, "path": os.path.abspath(args.ref), "source": ref.source},
        "extractor": extractor.identity,
        "settings": {
            "is_split_size": args.is_split_size, "pr_k": args.pr_k, "pr_block": args.pr_block,
            "pr_dtype": args.pr_dtype, "batch_size": args.batch_size, "device": str(device),
        },
        "seed": args.seed if args.seed is not None else sample_half["seed"],
        "world_size": env.world_size,
        "launcher": env.launcher,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv=None) -> int:
    configure_threads()  # before any tensor work: see dtr_scale/threads.py
    return run_cli(_evaluate, parse_args(argv))


def _evaluate(args: argparse.Namespace) -> int:
    check_args(args)
    init_distributed()  # the group `run` uses (idempotent), remembered so a failure reaches every rank
    remember_process_group()
    try:
        report = run(args)
        rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
        if rank == 0:
            atomic_write_json(args.out, report)
            print(f"{protocol.summary_line(report['metrics'], report['protocol'])} | "
                  f"{report['extractor']['name']}, {report['world_size']} rank(s), "
                  f"{report['samples']['images_per_second']:.1f} img/s → {args.out}", flush=True)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
