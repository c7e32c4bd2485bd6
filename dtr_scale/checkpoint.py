"""Atomic, resumable training checkpoints.

Layout under `checkpoint.dir`:

    config.yaml                  resolved config of the run (written at start)
    latest                       text file naming the newest COMPLETE checkpoint (updated last)
    step_000001000/
        engine/                  the engine's native state: torch.save (single/DDP), DCP shards
                                 (FSDP2) or DeepSpeed's ZeRO files; includes model, optimizer,
                                 EMA and ANT-UW's learned weights
        trainer_rank00000.pt     per rank: step, RNG states, data-loader position, counters
        config.yaml, meta.json   what produced it (engine, world size, step)

A checkpoint is written into `.tmp-step_.../`, renamed when every rank has finished, and only
then does `latest` move (write to a temp file, then os.replace). A job killed at any moment
therefore leaves `latest` pointing at a complete checkpoint; leftovers of an interrupted save are
removed on the next save. Only the newest `checkpoint.keep` checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from .atomic import atomic_write_text
from .parallel.process_group import DistEnv, barrier

_STEP_DIR = re.compile(r"^step_(\d{9})$")


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(root: str) -> str | None:
    """The checkpoint directory `root/latest` names, or None when there is no pointer yet."""
    pointer = os.path.join(root, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{pointer} names {name!r}, which does not exist; fix or delete the pointer")
    return path


class CheckpointManager:
    def __init__(self, root: str, keep: int, env: DistEnv):
        self.root = root
        self.keep = keep
        self.env = env
        if env.is_main:
            os.makedirs(root, exist_ok=True)
        barrier()

    # -- discovery ----------------------------------------------------------------------------
    def resolve(self, resume: str) -> str | None:
        """`auto` -> latest (or None for a fresh run), `none` -> None, else a checkpoint dir."""
        if resume == "none":
            return None
        if resume == "auto":
            return latest_checkpoint(self.root)
        if not os.path.isdir(os.path.join(resume, "engine")):
            raise FileNotFoundError(f"checkpoint.resume: {resume} is not a checkpoint directory (no engine/ inside)")
        return resume

    def completed(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(d for d in os.listdir(self.root) if _STEP_DIR.match(d))

    # -- save ---------------------------------------------------------------------------------
    def save(self, step: int, engine, trainer_state: dict, config_yaml: str) -> str:
        """Collective. Returns the final checkpoint directory."""
        name = f"step_{step:09d}"
        tmp = os.path.join(self.root, f".tmp-{name}")
        final = os.path.join(self.root, name)
        if self.env.is_main:
            for leftover in os.listdir(self.root):
                if leftover.startswith(".tmp-step_"):
                    shutil.rmtree(os.path.join(self.root, leftover), ignore_errors=True)
            os.makedirs(tmp)
        barrier()
        engine.save(os.path.join(tmp, "engine"))
        torch.save(trainer_state, os.path.join(tmp, f"trainer_rank{self.env.rank:05d}.pt"))
        barrier()
        if self.env.is_main:
            with open(os.path.join(tmp, "config.yaml"), "w") as f:
                f.write(config_yaml)
            meta = {"step": step, "engine": engine.name, "world_size": self.env.world_size}
            with open(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(meta, f)
            if os.path.isdir(final):  # re-saving a step after a resume: replace it whole
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(os.path.join(self.root, "latest"), name + "\n")
            self._prune(keep_name=name)
        barrier()
        return final

    def _prune(self, keep_name: str) -> None:
        done = self.completed()
        for old in done[: max(0, len(done) - self.keep)]:
            if old != keep_name:
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)

    # -- load ---------------------------------------------------------------------------------
    def load(self, path: str, engine) -> dict:
        """Collective: restore the engine state; returns this rank's trainer state."""
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        if meta["engine"] != engine.name:
            raise ValueError(
                f"{path} was written by parallel.engine={meta['engine']}, this run uses {engine.name}; "
                "resume with the same engine (or export the weights and start a new run from them)"
            )
        if meta["world_size"] != self.env.world_size:
            raise ValueError(
                f"{path} was written by {meta['world_size']} ranks, this run has {self.env.world_size}; "
                "exact resume needs the same world size (RNG streams and data positions are per rank)"
            )
        engine.load(os.path.join(path, "engine"))
        state_file = os.path.join(path, f"trainer_rank{self.env.rank:05d}.pt")
        return torch.load(state_file, map_location="cpu", weights_only=False)
