#!/usr/bin/env python3
"""Validate a CLI's inputs before any cluster time is spent on them.

Every launcher (launch/submit.sh, the sbatch scripts, launch/local.sh) runs this first:

    python launch/check_inputs.py VERB [--world-size N] -- CLI_ARGS...

VERB is train | prep | sample | evaluate | export; CLI_ARGS are exactly what
`python -m dtr_scale.VERB` will get. It checks what can be checked without a GPU or a process
group: the config loads and validates (with the overrides applied), the data path holds a
dataset.json with all its shards, weight/sample/reference files exist, output directories can be
created, option ranges hold. It parses with each CLI's own parser and runs each CLI's own
check function (`check_inputs` / `check_args`), so it accepts exactly what the CLIs accept and
its messages are theirs.
Exit 0 with a one-line summary per finding, or exit 2 with an error that names the problem and
the fix. It never initialises torch.distributed (the batch shell of a SLURM job has SLURM_PROCID
and SLURM_NTASKS set, which would otherwise look like a 2-process job).
"""
from __future__ import annotations

import argparse
import sys


class InputError(Exception):
    pass


def _parse(parse, args: list[str], verb: str):
    """The CLI's own parser; its usage error becomes one InputError line."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(args)
    except SystemExit as exc:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        if not lines:
            raise InputError(f"bad arguments for dtr_scale.{verb}: {' '.join(args)}") from exc
        raise InputError(f"dtr_scale.{verb}: {lines[-1].split(': error: ', 1)[-1]}") from exc


def check_train(args: list[str], world_size: int | None) -> list[str]:
    from dtr_scale.data import check_data_path
    from dtr_scale.train import check_inputs, parse_args

    ns = _parse(parse_args, args, "train")
    cfg = check_inputs(ns, world_size)
    manifest = check_data_path(cfg.data.path)
    return [
        f"config {ns.config}: model {cfg.model.name}, engine {cfg.parallel.engine}, "
        f"global batch {cfg.train.global_batch_size}, max_steps {cfg.train.max_steps}",
        f"data {cfg.data.path}: {manifest.num_samples} samples in {len(manifest.shards)} shard(s)",
        f"checkpoints -> {cfg.checkpoint.dir} (resume={cfg.checkpoint.resume})",
    ]


def check_prep(args: list[str], world_size: int | None) -> list[str]:
    from dtr_scale.prep import build_parser, check_args

    ns = _parse(build_parser().parse_args, args, "prep")
    check_args(ns)
    return [f"prep {ns.source} (vae {ns.vae}) -> {ns.out}"]


def check_sample(args: list[str], world_size: int | None) -> list[str]:
    from dtr_scale.sample import build_parser, check_args

    ns = _parse(build_parser().parse_intermixed_args, args, "sample")
    check_args(ns)
    return [f"sample {ns.weights} -> {ns.out}"]


def check_evaluate(args: list[str], world_size: int | None) -> list[str]:
    from dtr_scale.evaluate import check_args, parse_args

    ns = _parse(parse_args, args, "evaluate")
    check_args(ns)
    return [f"evaluate {ns.samples} against {ns.ref} ({ns.extractor}) -> {ns.out}"]


def check_export(args: list[str], world_size: int | None) -> list[str]:
    from dtr_scale.export import build_parser, check_args

    ns = _parse(build_parser().parse_args, args, "export")
    check_args(ns)
    return [f"export {ns.checkpoint} -> {ns.out}"]


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
    from dtr_scale.errors import USER_ERRORS, one_line

    try:
        for line in CHECKS[ns.verb](cli_args, ns.world_size):
            print(f"[check] ok: {line}", flush=True)
    except (InputError, *USER_ERRORS) as exc:
        # The CLI's own message, word for word (the CLI prints it as `error: ...`).
        print(f"[check] error: {one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
