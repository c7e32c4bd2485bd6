"""Atomic, resumable training checkpoints.

Layout under `checkpoint.dir`:

    config.yaml                  resolved config of the run (written at start)
    latest                       text file naming the newest COMPLETE checkpoint (updated last)
    step_000001000/
        state/                   the canonical training state (parallel/training_state.py): model
                                 (fp32 master), EMA, optimizer moments and steps, ANT-UW's learned
                                 weights, by name, as PyTorch distributed checkpoint (DCP) shards;
                                 the same for every engine, each rank writes only its part
        trainer_rank00000.pt     per rank: step, RNG states, data-loader position, counters
        config.yaml, meta.json   what produced it (engine, ZeRO stage, world size, step, and a
                                 fingerprint of model, routing and objective)

Any engine on any world size resumes from any checkpoint: DCP reshards the state into the
resuming engine's layout. The per-rank RNG streams and data positions carry over only to the
same world size; on another one the streams are reseeded from (seed, rank, step) and the loader
continues from rank 0's saved position, which needs a loader whose position does not depend on
the world size (data.mode=global).

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
from .errors import UserError
from .checkpoint_meta import LAYOUT, STATE_DIR, check_fingerprint, engine_label, read_meta, verify_checkpoint_files
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
        if not os.path.isfile(os.path.join(resume, "meta.json")):
            raise FileNotFoundError(f"checkpoint.resume: {resume} is not a checkpoint directory (no meta.json inside)")
        return resume

    def completed(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(d for d in os.listdir(self.root) if _STEP_DIR.match(d))

    # -- save ---------------------------------------------------------------------------------
    def save(self, step: int, engine, trainer_state: dict, config_yaml: str, fingerprint: dict) -> str:
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
        engine.save(os.path.join(tmp, STATE_DIR))
        torch.save(trainer_state, os.path.join(tmp, f"trainer_rank{self.env.rank:05d}.pt"))
        barrier()
        if self.env.is_main:
            with open(os.path.join(tmp, "config.yaml"), "w") as f:
                f.write(config_yaml)
            meta = {"layout": LAYOUT, "step": step, "engine": engine.name, "engine_label": engine.describe(),
                    "zero_stage": getattr(engine, "stage", None), "world_size": self.env.world_size,
                    "fingerprint": fingerprint}
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
    def load(self, path: str, engine, fingerprint: dict, data_mode: str) -> dict:
        """Collective: restore the engine state (from any engine and world size); returns the
        trainer state for this rank. Everything is checked before anything is read."""
        meta = read_meta(path)
        check_fingerprint(path, meta["fingerprint"], fingerprint)
        verify_checkpoint_files(path, meta["world_size"])
        same_ranks = meta["world_size"] == self.env.world_size
        if not same_ranks and data_mode != "global":
            raise UserError(
                f"{path} was written by {meta['world_size']} ranks, this run has {self.env.world_size}: "
                f"data.mode={data_mode} keeps a data position per rank, which cannot be split or merged; "
                "resuming on another world size needs data.mode=global"
            )
        engine.load(os.path.join(path, STATE_DIR))
        if self.env.is_main:
            here = engine_label({"engine_label": engine.describe(), "world_size": self.env.world_size})
            there = engine_label(meta)
            change = "no conversion" if there == here else f"converted {there} → {here}"
            print(f"checkpoint {path}: {change}", flush=True)
        if same_ranks:
            return self._trainer_state(path, self.env.rank)
        # Per-rank RNG streams do not map onto another world size: the caller reseeds them.
        state = self._trainer_state(path, 0)
        return {k: v for k, v in state.items() if k not in ("rng", "gen_t", "gen_noise")}

    @staticmethod
    def _trainer_state(path: str, rank: int) -> dict:
        state_file = os.path.join(path, f"trainer_rank{rank:05d}.pt")
        if not os.path.isfile(state_file):
            raise FileNotFoundError(f"checkpoint trainer state missing: {state_file}")
        return torch.load(state_file, map_location="cpu", weights_only=False)
