"""What a checkpoint says about itself (meta.json), and the checks made before reading one.

meta.json records the layout version, step, engine (and ZeRO stage), world size and a fingerprint
of what the state's shapes and meaning depend on: the model, its routing and the objective. A
resume compares the fingerprint with the current config and checks that every shard file DCP's
index names is present and long enough, so a wrong or damaged checkpoint fails with a message
naming the cause before anything is loaded or written.
"""
from __future__ import annotations

import json
import os

from .errors import UserError

LAYOUT = 2  # 1: engine-native files under engine/ (before the canonical DCP state)
STATE_DIR = "state"
# The model settings the weights' shapes and meaning depend on (also what export records).
MODEL_KEYS = ("name", "input_size", "in_channels", "num_classes", "learn_sigma", "class_dropout_prob")


def fingerprint(cfg) -> dict:
    from .models.block_options import block_options
    from .objective import objective_class

    m = cfg.model
    return {
        # The block options only where they are not the official block's: a default run's
        # fingerprint is what it always was, so its checkpoints still resume.
        "model": {k: getattr(m, k) for k in MODEL_KEYS} | block_options(m).non_default(),
        "routing": dict(vars(m.routing)),
        "objective": objective_class(cfg.diffusion.objective).fingerprint(cfg),
    }


def engine_label(meta: dict) -> str:
    ranks = meta["world_size"]
    return f"{meta['engine_label']} × {ranks} rank{'s' if ranks != 1 else ''}"


def read_meta(path: str) -> dict:
    """meta.json of a checkpoint in the current layout; a clear error for anything else."""
    meta_file = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_file):
        raise FileNotFoundError(f"{path} is not a checkpoint: no meta.json inside")
    with open(meta_file) as f:
        meta = json.load(f)
    if meta.get("layout") != LAYOUT:
        raise UserError(
            f"{path} uses checkpoint layout {meta.get('layout', 1)} (engine-native files under engine/), "
            f"this version reads layout {LAYOUT}; resume or export it with the dtr-scale version that wrote it"
        )
    return meta


def check_fingerprint(path: str, saved: dict, current: dict) -> None:
    """Raise naming every dotted config key whose value differs from the checkpoint's."""
    diffs = []
    for section in ("model", "routing", "objective"):
        prefix = {"model": "model", "routing": "model.routing", "objective": "diffusion"}[section]
        a, b = saved.get(section, {}), current[section]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{prefix}.{key}: checkpoint {a.get(key)!r}, this run {b.get(key)!r}")
    if diffs:
        raise UserError(f"{path} was trained with a different model, routing or objective "
                         "and cannot be resumed:\n  " + "\n  ".join(diffs))


def verify_checkpoint_files(path: str, world_size: int) -> None:
    """Every file the DCP index (.metadata) references exists and is long enough, every rank's
    trainer state is there, and none of the pickled files holds anything but DCP's metadata,
    tensors and plain types (safe_checkpoint_io.py): a reader that needs only part of the
    checkpoint (export, sampling) refuses a tampered folder as resume does."""
    from .safe_checkpoint_io import check_byte_entries, load_trainer_file, read_dcp_metadata

    state_dir = os.path.join(path, STATE_DIR)
    index = read_dcp_metadata(state_dir)
    needed: dict[str, int] = {}
    for info in index.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in sorted(needed.items()):
        shard = os.path.join(state_dir, rel)
        if not os.path.isfile(shard):
            raise FileNotFoundError(f"checkpoint shard missing: {shard} (the checkpoint is incomplete; "
                                    "resume from an earlier one)")
        if os.path.getsize(shard) < size:
            raise UserError(f"checkpoint shard truncated: {shard} has {os.path.getsize(shard)} bytes, "
                             f"its index needs {size} (resume from an earlier checkpoint)")
    check_byte_entries(state_dir, index)
    for rank in range(world_size):
        trainer = os.path.join(path, f"trainer_rank{rank:05d}.pt")
        if not os.path.isfile(trainer):
            raise FileNotFoundError(f"checkpoint trainer state missing: {trainer}")
        load_trainer_file(trainer)
