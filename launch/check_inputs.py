#!/usr/bin/env python3
"""Validate a CLI's inputs before any cluster time is spent on them.

Every launcher (launch/submit.sh, the sbatch scripts, launch/local.sh) runs this first:

    python launch/check_inputs.py VERB [--world-size N] -- CLI_ARGS...

VERB is train | prep | sample | evaluate | export; CLI_ARGS are exactly what
`python -m dtr_scale.VERB` will get. It checks what can be checked without a GPU or a process
group: the config loads and validates (with the overrides applied), the data path holds a
dataset.json with all its shards, weight/sample/reference files exist, output directories can be
created. Flags it does not know are passed over, so the CLIs can grow flags without this file.
Exit 0 with a one-line summary per finding, or exit 2 with an error that names the problem and
the fix. It never initialises torch.distributed (the batch shell of a SLURM job has SLURM_PROCID
and SLURM_NTASKS set, which would otherwise look like a 2-process job).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys


class InputError(Exception):
    pass


def _exists(path: str, what: str, flag: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{flag} {path}: {what} not found (checked from {os.getcwd()})")


def _writable_parent(path: str, flag: str) -> None:
    """The output's nearest existing ancestor must be a writable directory."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise InputError(f"{flag} {path}: cannot create it, {parent} is not a writable directory")


def check_train(args: list[str], world_size: int | None) -> list[str]:
    from dtr_scale.config import ConfigError, load_config, validate
    from dtr_scale.data import check_data_path
    from dtr_scale.train import config_overrides, parse_args

    try:
        ns = parse_args(args)
    except SystemExit as exc:  # argparse already printed its usage error
        raise InputError(f"bad arguments for dtr_scale.train: {' '.join(args)}") from exc
    overrides = config_overrides(ns)
    if not os.path.isfile(ns.config):
        raise InputError(f"--config {ns.config}: config file not found (checked from {os.getcwd()}); "
                         "pass a YAML file from configs/")
    try:
        cfg = validate(load_config(ns.config, overrides), world_size=world_size)
        manifest = check_data_path(cfg.data.path)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    if world_size and world_size > 1 and cfg.parallel.engine == "single":
        raise InputError(f"parallel.engine=single cannot run {world_size} processes; "
                         "set parallel.engine=ddp, fsdp or deepspeed (or ENGINE=...)")
    _writable_parent(cfg.checkpoint.dir, "checkpoint.dir")
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none") and not os.path.isdir(resume):
        raise InputError(f"checkpoint.resume={resume}: not a checkpoint directory (use auto, none or a step_* dir)")
    return [
        f"config {ns.config}: model {cfg.model.name}, engine {cfg.parallel.engine}, "
        f"global batch {cfg.train.global_batch_size}, max_steps {cfg.train.max_steps}",
        f"data {cfg.data.path}: {manifest.num_samples} samples in {len(manifest.shards)} shard(s)",
        f"checkpoints -> {cfg.checkpoint.dir} (resume={resume})",
    ]


def check_prep(args: list[str], world_size: int | None) -> list[str]:
    p = argparse.ArgumentParser(prog="check prep", add_help=False)
    p.add_argument("--source", required=True)
    p.add_argument("--vae", required=True)
    p.add_argument("--out", required=True)
    ns, _ = _parse(p, args)
    kind, _, value = ns.source.partition(":")
    if ns.source == "digits":
        pass
    elif kind == "imagefolder":
        if not os.path.isdir(value):
            raise InputError(f"--source {ns.source}: image folder {value} not found")
    elif kind == "tar":
        if not glob.glob(value):
            raise InputError(f"--source {ns.source}: no file matches {value}")
    else:
        raise InputError(f"--source {ns.source}: expected digits, imagefolder:DIR or tar:GLOB")
    # A VAE given as a path must exist; anything else is a hub id that prep resolves itself.
    if ns.vae != "none" and ns.vae.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(ns.vae)):
        raise InputError(f"--vae {ns.vae}: VAE directory not found")
    _writable_parent(ns.out, "--out")
    return [f"prep {ns.source} (vae {ns.vae}) -> {ns.out}"]


def check_sample(args: list[str], world_size: int | None) -> list[str]:
    p = argparse.ArgumentParser(prog="check sample", add_help=False)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    ns, _ = _parse(p, args)
    if not os.path.isfile(ns.weights):
        raise InputError(f"--weights {ns.weights}: weights file not found; create it with "
                         "`python -m dtr_scale.export --checkpoint RUN_DIR --out FILE`")
    _writable_parent(ns.out, "--out")
    return [f"sample {ns.weights} -> {ns.out}"]


def check_evaluate(args: list[str], world_size: int | None) -> list[str]:
    p = argparse.ArgumentParser(prog="check evaluate", add_help=False)
    p.add_argument("--samples", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--extractor", default="inception", choices=["inception", "pixels"])
    p.add_argument("--out", required=True)
    p.add_argument("--inception-weights", default=None)
    ns, _ = _parse(p, args)
    _exists(ns.samples, "samples (.npz or shard directory)", "--samples")
    _exists(ns.ref, "reference (.npz or shard directory)", "--ref")
    if ns.inception_weights:
        _exists(ns.inception_weights, "Inception weights file", "--inception-weights")
    _writable_parent(ns.out, "--out")
    return [f"evaluate {ns.samples} against {ns.ref} ({ns.extractor}) -> {ns.out}"]


def check_export(args: list[str], world_size: int | None) -> list[str]:
    p = argparse.ArgumentParser(prog="check export", add_help=False)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    ns, _ = _parse(p, args)
    if not os.path.isdir(ns.checkpoint):
        raise InputError(f"--checkpoint {ns.checkpoint}: run or step directory not found")
    _writable_parent(ns.out, "--out")
    return [f"export {ns.checkpoint} -> {ns.out}"]


def _parse(parser: argparse.ArgumentParser, args: list[str]):
    try:
        return parser.parse_known_args(args)
    except SystemExit as exc:
        raise InputError(f"missing or bad arguments ({parser.prog}): {' '.join(args) or '(none)'}") from exc


CHECKS = {"train": check_train, "prep": check_prep, "sample": check_sample,
          "evaluate": check_evaluate, "export": check_export}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, cli_args = argv[:split], argv[split + 1:]
    else:
        own, cli_args = argv[:1], argv[1:]
    p = argparse.ArgumentParser(prog="launch/check_inputs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("verb", choices=sorted(CHECKS))
    p.add_argument("--world-size", type=int, default=None,
                   help="total processes, when known: also checks the batch split across ranks")
    ns = p.parse_args(own)
    try:
        for line in CHECKS[ns.verb](cli_args, ns.world_size):
            print(f"[check] ok: {line}", flush=True)
    except InputError as exc:
        print(f"[check] error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
