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
removed at the next start-up and before each save, named in the log. Only the newest
`checkpoint.keep` checkpoints are kept. A save that fails (no space, read-only, I/O error) removes
its own partial folder and stops the run with one line (checkpoint_storage.py).

With `checkpoint.async=true` the state is written in the background while training continues
(checkpoint_async.py); the rename, `latest` and pruning wait until every rank's write has
completed (at the next save, the last step or preemption), so the guarantees above hold as they
are, and a failed background write stops the run with the same line at that point.

Nothing here deletes what this run did not write: `resume=none` over existing checkpoints and a
`config.yaml` of another run (another fingerprint) are refused unless `checkpoint.overwrite=true`.
Every file is read through safe_checkpoint_io.py: opening a checkpoint runs no code from it.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time

import numpy as np
import torch

from .atomic import atomic_write_text
from .checkpoint_async import PendingWrite, reusable_stager, writer_group
from .checkpoint_errors import CheckpointRefused
from .checkpoint_storage import (check_usable, folder_bytes, needed_bytes, remove_leftovers,
                                 save_failure, warn_if_short)
from .errors import UserError
from .checkpoint_meta import LAYOUT, STATE_DIR, check_fingerprint, engine_label, read_meta, verify_checkpoint_files
from .parallel.process_group import DistEnv, barrier
from .safe_checkpoint_io import load_trainer_file

_STEP_DIR = re.compile(r"^step_(\d{9})$")
log = logging.getLogger("dtr_scale")


def rng_state() -> dict:
    """The global RNG states as tensors and plain types, so that the trainer file loads with
    `weights_only=True` (numpy's key array becomes an int64 tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),  # (version, tuple of ints, gauss_next): plain types already
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys  # an ndarray in earlier versions
    np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(tuple(state["python"]))
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
    def __init__(self, root: str, keep: int, env: DistEnv, async_save: bool = False):
        self.root = root
        self.keep = keep
        self.env = env
        self.async_save = async_save
        self.pending: PendingWrite | None = None  # the background write not yet committed
        if env.is_main:
            os.makedirs(root, exist_ok=True)
        self._writer_group = writer_group(env.distributed) if async_save else None  # collective
        self._stager = reusable_stager() if async_save else None
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

    # -- start-up -----------------------------------------------------------------------------
    def record_config(self, config_yaml: str, fingerprint: dict, overwrite: bool) -> None:
        """Rank 0: write the run's `config.yaml`, never over another run's without
        `checkpoint.overwrite=true` (a different model, routing or objective is another run)."""
        if not self.env.is_main:
            return
        path = os.path.join(self.root, "config.yaml")
        other = _other_run_config(path, fingerprint)
        if other is not None:
            if not overwrite:
                raise CheckpointRefused(
                    f"{path} belongs to another run ({other}); keeping it: choose a new checkpoint.dir, "
                    "or set checkpoint.overwrite=true to replace it")
            log.warning("replacing %s of another run (%s): checkpoint.overwrite=true", path, other)
        atomic_write_text(path, config_yaml)

    # -- save ---------------------------------------------------------------------------------
    def save(self, step: int, engine, trainer_state: dict, config_yaml: str, fingerprint: dict) -> str:
        """Collective. Returns the final checkpoint directory. A write that fails on any rank
        (no space, read-only, I/O error) removes the partial folder, leaves `latest` and the
        earlier checkpoints as they were, and raises CheckpointRefused with the cause.

        With `checkpoint.async=true` the state is staged and written in the background: the call
        returns once the write has started, and the checkpoint is committed by `finish` (the
        next save calls it first; so do the last step and preemption), see checkpoint_async.py."""
        self.finish()  # at most one write in flight: the previous one is committed first
        name = f"step_{step:09d}"
        tmp = os.path.join(self.root, f".tmp-{name}")
        final = os.path.join(self.root, name)
        error, futures = None, None
        if self.env.is_main:
            remove_leftovers(self.root)
            error = _attempt(os.makedirs, tmp)
        if not _any_rank_failed(error, self.env):
            state_dir = os.path.join(tmp, STATE_DIR)
            if self.async_save:  # collective: fails on every rank
                started: list = []
                error = _attempt(lambda: started.append(
                    engine.save_async(state_dir, self._writer_group, self._stager)))
                futures = started[0] if started else None
            else:
                error = _attempt(engine.save, state_dir)  # collective: fails on every rank
            if error is None:
                error = _attempt(torch.save, trainer_state, os.path.join(tmp, f"trainer_rank{self.env.rank:05d}.pt"))
        if _any_rank_failed(error, self.env):
            self._raise_save_failure(final, tmp, error)
        meta = {"layout": LAYOUT, "step": step, "engine": engine.name, "engine_label": engine.describe(),
                "zero_stage": getattr(engine, "stage", None), "world_size": self.env.world_size,
                "fingerprint": fingerprint}
        if futures is None:
            self._commit(name, tmp, final, config_yaml, meta)
        else:
            self.pending = PendingWrite(name, tmp, final, meta, config_yaml, *futures)
        return final

    def wait_for_staging(self) -> None:
        """Not collective. Call before anything changes the training tensors (the optimizer
        step): returns once the background save in flight, if any, has copied them."""
        if self.pending is not None:
            self.pending.wait_staged()

    def finish(self) -> None:
        """Collective: wait until every rank has written the checkpoint in flight, then commit it
        (a no-op without one). A background write that failed on any rank is reported like a
        failed synchronous save: its folder is removed and `latest` still names the previous
        checkpoint."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        error = _attempt(pending.wait)
        if _any_rank_failed(error, self.env):
            self._raise_save_failure(pending.final, pending.tmp, error)
        if self.env.is_main:
            log.info("background write of %s done and agreed on %.1f s after it started", pending.name,
                     time.monotonic() - pending.started)
        self._commit(pending.name, pending.tmp, pending.final, pending.config_yaml, pending.meta)

    def _commit(self, name: str, tmp: str, final: str, config_yaml: str, meta: dict) -> None:
        """Collective, once every rank's part is on disk: rank 0 writes the small files, renames
        the folder, moves `latest` and prunes."""
        if self.env.is_main:
            error = _attempt(_write_small_files, tmp, config_yaml, meta)
            if error is not None:
                self._raise_save_failure(final, tmp, error)
            if os.path.isdir(final):  # re-saving a step after resuming from an earlier one
                shutil.rmtree(final)
                log.info("removed %s, to be replaced by the new save of that step", final)
            os.replace(tmp, final)
            error = _attempt(atomic_write_text, os.path.join(self.root, "latest"), name + "\n")
            if error is not None:  # the new checkpoint is complete; the pointer still names the old one
                raise save_failure(os.path.join(self.root, "latest"), tmp, self.root, error,
                                   self._needed(), latest_checkpoint(self.root))
            self._prune(keep_name=name)
            log.info("checkpoint %s", final)
        barrier()

    def _needed(self) -> int | None:
        latest = latest_checkpoint(self.root)
        return folder_bytes(latest) if latest else None

    def _raise_save_failure(self, final: str, tmp: str, error: BaseException | None) -> None:
        # Rank 0 removes the partial folder; every rank describes the failure the same way.
        raise save_failure(final, tmp, self.root, error or OSError("failed on another rank"),
                           self._needed(), latest_checkpoint(self.root), remove=self.env.is_main)

    def _prune(self, keep_name: str) -> None:
        done = self.completed()
        for old in done[: max(0, len(done) - self.keep)]:
            if old != keep_name:
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
                log.info("removed %s (checkpoint.keep=%d)", os.path.join(self.root, old), self.keep)

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
        return load_trainer_file(state_file)


def prepare_checkpoint_dir(cfg, env: DistEnv) -> None:
    """Collective, at start-up before the model is built: rank 0 checks that `checkpoint.dir` is
    usable and has room for one more checkpoint, refuses `resume=none` over existing checkpoints
    (unless `checkpoint.overwrite=true`, which removes them, each named in the log), and removes
    the leftovers of an interrupted save."""
    if env.is_main:
        c = cfg.checkpoint
        root = c.dir
        check_usable(root)
        existing = sorted(d for d in os.listdir(root) if _STEP_DIR.match(d))
        pointer = os.path.join(root, "latest")
        if c.resume == "none" and (existing or os.path.isfile(pointer)):
            newest = existing[-1] if existing else "?"
            step = int(newest[len("step_"):]) if existing else "?"
            if not c.overwrite:
                raise CheckpointRefused(
                    f"checkpoint.dir {root} holds checkpoints of a run at step {step} ({newest}); "
                    "--resume none would replace them: pass --resume auto to continue that run, choose a "
                    "new checkpoint.dir, or set checkpoint.overwrite=true to delete them")
            for name in existing:
                shutil.rmtree(os.path.join(root, name))
                log.warning("removed %s (checkpoint.overwrite=true, --resume none)", os.path.join(root, name))
            if os.path.isfile(pointer):
                os.remove(pointer)
                log.warning("removed %s (checkpoint.overwrite=true, --resume none)", pointer)
        remove_leftovers(root)
        latest = latest_checkpoint(root) if c.resume != "none" else None
        warn_if_short(root, *needed_bytes(root, latest, cfg))
    barrier()


def _other_run_config(path: str, fingerprint: dict) -> str | None:
    """None when `path` is absent or records this run's fingerprint, else what differs."""
    if not os.path.isfile(path):
        return None
    from .checkpoint_meta import fingerprint as config_fingerprint
    from .config import load_config

    try:
        theirs = config_fingerprint(load_config(path))
    except Exception as exc:  # another version's or a hand-edited config: not provably ours
        return f"not readable as this version's config: {str(exc).splitlines()[0] if str(exc) else exc}"
    diffs = [f"{section}.{key}: {theirs.get(section, {}).get(key)!r} there, {fingerprint[section].get(key)!r} here"
             for section in fingerprint for key in sorted(set(theirs.get(section, {})) | set(fingerprint[section]))
             if theirs.get(section, {}).get(key) != fingerprint[section].get(key)]
    return "; ".join(diffs) if diffs else None


def _attempt(fn, *args) -> BaseException | None:
    """Run one write of a save; the error (DCP raises its own BaseException subclass) or None."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        fn(*args)
    except (OSError, RuntimeError, CheckpointException) as exc:
        return exc
    return None


def _any_rank_failed(error: BaseException | None, env: DistEnv) -> bool:
    """Collective: whether any rank's write failed (so that all ranks stop together)."""
    import torch.distributed as dist

    if not (env.distributed and dist.is_initialized()):
        return error is not None
    from .parallel.process_group import local_device

    flag = torch.tensor([0 if error is None else 1], device=local_device(env))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _write_small_files(tmp: str, config_yaml: str, meta: dict) -> None:
    with open(os.path.join(tmp, "config.yaml"), "w") as f:
        f.write(config_yaml)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
