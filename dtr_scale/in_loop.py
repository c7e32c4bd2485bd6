"""In-loop sample grids and evaluation during training.

Every `train.sample_every` steps rank 0 writes a class-balanced sample grid of the EMA model
(`checkpoint.dir/samples/step_XXXXXXXXX.png`, one row per class). Every `eval.every` steps all
ranks sample `eval.num_samples` images together (each its contiguous block of indices; sample i
depends only on (seed, i)), extract features, all-reduce the statistics and log the Fréchet
distance to the reference (`eval.ref`, default: the training shards in pixel mode) as `eval_fd`
(FID with the inception extractor). The objective builds the sampler from `eval.sampling_steps`
(DDPM respaced; flow: an Euler ODE over that many steps). The record carries its protocol
(`eval_protocol`, dtr_scale/protocol.py): samples, sampler, measured NFE, guidance, labels
(uniform), the EMA's step and state sha256, reference and extractor hashes, seed, code version.

The consolidated EMA comes from `engine.export_ema()` (collective; rank 0 gets it) and is
broadcast into an eval copy of the DiT on every rank, so this works under every engine.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from .evaluation.collectives import rank_slice
from .evaluation.extractors import build_extractor
from .code_version import code_version
from .evaluation.pipeline import compute_metrics, extract, prepare_reference
from . import protocol
from .models import load_pretrained
from .objective import dit_from_config, objective_class
from .sampling import generate, make_decoder, save_grid

log = logging.getLogger("dtr_scale")


class _RankBlock:
    """The `images` interface of evaluation.extract over this rank's generated block."""

    def __init__(self, images: np.ndarray, start: int, total: int):
        self.images, self.start, self.total = images, start, total
        self.shape = (total, *images.shape[1:])

    def __len__(self) -> int:
        return self.total

    def read(self, b0: int, b1: int) -> np.ndarray:
        return self.images[b0 - self.start:b1 - self.start]


class InLoopMonitor:
    def __init__(self, cfg, env, device: torch.device, data_identity: dict):
        self.cfg, self.env, self.device = cfg, env, device
        self.enabled = cfg.train.sample_every > 0 or cfg.eval.every > 0
        if not self.enabled:
            return
        # A separate eval copy: same architecture, no activation checkpointing.
        self.model = dit_from_config(cfg, checkpointing=0.0).to(device).eval()
        self.diffusion = objective_class(cfg.diffusion.objective).eval_sampler(cfg)
        self.decoder = make_decoder(None, {"data": data_identity}, device=device)
        self.reference = None
        self.extractor = None

    def _load_ema(self, engine) -> None:
        sd = engine.export_ema()  # collective
        if self.env.rank == 0:
            load_pretrained(self.model, sd)
        if dist.is_initialized():
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(tensor.data, src=0)

    def _sample(self, indices, labels, counts=None):
        return generate(self.model, self.diffusion, indices, seed=self.cfg.train.seed, labels=labels,
                        cfg_scale=self.cfg.eval.cfg_scale, batch_size=64, decoder=self.decoder, device=self.device,
                        counts=counts)

    def maybe_run(self, step: int, engine) -> dict:
        if not self.enabled:
            return {}
        grid_due = self.cfg.train.sample_every > 0 and step % self.cfg.train.sample_every == 0
        eval_due = self.cfg.eval.every > 0 and step % self.cfg.eval.every == 0
        if not (grid_due or eval_due):
            return {}
        self._load_ema(engine)
        metrics = {}
        if grid_due and self.env.rank == 0:
            k = min(self.model.num_classes, 10)
            tic = self._announce(f"sample grid ({8 * k} samples)", step)
            images, labels = self._sample(range(8 * k), [i % k for i in range(8 * k)])
            path = os.path.join(self.cfg.checkpoint.dir, "samples", f"step_{step:09d}.png")
            save_grid(images, path, nrow=8, labels=labels, upscale=max(1, 64 // images.shape[1]))
            log.info("in-loop: sample grid done in %.1f s: %s", time.perf_counter() - tic, path)
            metrics["sample_grid"] = path  # the metrics logger hands it to W&B
        if eval_due:
            tic = self._announce(f"evaluation ({self.cfg.eval.num_samples} samples, {self.cfg.eval.extractor})", step)
            metrics.update(self._evaluate(step))
            if self.env.rank == 0:
                log.info("in-loop: evaluation done in %.1f s: eval_fd=%.4g", time.perf_counter() - tic,
                         metrics["eval_fd"])
        return metrics

    def _announce(self, what: str, step: int) -> float:
        """Say what is about to stall training, and for how many sampler steps (why it is slow)."""
        if self.env.rank == 0:
            steps = self.cfg.eval.sampling_steps
            log.info("in-loop: %s at step %d with %s sampling steps (eval.sampling_steps=%s; fewer, e.g. "
                     "ddim50, is faster)", what, step, steps, steps)
        return time.perf_counter()

    def _evaluate(self, step: int) -> dict:
        e = self.cfg.eval
        if self.extractor is None:
            self.extractor = build_extractor(e.extractor, self.device, e.inception_weights)
            ref_path = e.ref or self.cfg.data.path
            cache = os.path.join(self.cfg.checkpoint.dir, "eval_cache")
            self.reference = prepare_reference(ref_path, self.extractor, cache_dir=cache, want_features=False)
        n = e.num_samples
        start, stop = rank_slice(n, self.env.rank, self.env.world_size)
        counts = {}
        images, _ = self._sample(range(start, stop), "uniform", counts)
        result = extract(_RankBlock(images, start, n), self.extractor, moments=True, features=False, desc="in-loop eval")
        metrics = compute_metrics(result, self.reference)
        out = {"eval_fd": metrics["fid"]}
        if self.env.rank == 0:  # the one that logs
            out["eval_protocol"] = self._protocol(step, n, counts)
        return out

    def _protocol(self, step: int, n: int, counts: dict) -> dict:
        e = self.cfg.eval
        half = {
            "num_samples": n, "objective": self.cfg.diffusion.objective,
            **objective_class(self.cfg.diffusion.objective).eval_sampler_protocol(self.cfg),  # sampler, steps, label
            "nfe": protocol.nfe_per_sample(counts), "cfg_scale": e.cfg_scale, "cfg_channels": None,
            "guidance_interval": [0.0, 1.0], "labels": "uniform", "num_classes": self.model.num_classes,
            "seed": self.cfg.train.seed, "precision": "fp32", "vae": self.decoder.name,
            "weights": {"path": None, "sha256": protocol.state_sha256(self.model.state_dict()),
                        "sha256_of": "ema state (in-loop copy)", "step": step, "ema": True},
        }
        return protocol.join(half, evaluated=n, ref_path=e.ref or self.cfg.data.path,
                             ref_sha256=self.reference.info.get("sha256"),
                             extractor_identity=self.extractor.identity, code={"train": code_version()})
