"""Training metrics: the loop's device-side bookkeeping (`StepStats`), and their output
(`MetricsLogger`): rank-0 console progress (progress.py), JSON-lines file, TensorBoard scalars
and, with `log.wandb`, Weights & Biases (wandb_log.py).

Only rank 0 writes. The JSON-lines file is appended one flushed line at a time, so a killed job
loses at most the line being written, and a resumed run continues the same file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .progress import ConsoleProgress
from .run_log import FILE_LOGGER
from .wandb_log import WandbLogger

log = logging.getLogger("dtr_scale")


@dataclass
class WindowSummary:
    """What `StepStats.read` returns: host numbers for one log line."""
    loss: float  # mean over micro-batches and ranks
    grad_norm: float  # mean over applied steps
    skipped: int  # steps skipped in this window
    skipped_total: int
    longest_bad_run: int
    data_errors: float  # summed over ranks
    seconds_per_step: float
    ema_fraction: float  # share of the step time spent in the EMA update
    cluster_losses: dict  # {"loss_t{k}": mean loss of timestep cluster k}, clusters seen only


class StepStats:
    """The training loop's bookkeeping: sums over the steps since the last log line, and the
    run's skipped-step counters. Everything a step adds stays on the device (0-d tensors, added
    to in place), so the hot loop makes no host read; `read` does one, when a log line is due."""

    def __init__(self, device: torch.device, num_clusters: int):
        self.device = device
        self.num_clusters = num_clusters
        counter = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        self.skipped_total = counter()
        self.consecutive_bad = counter()
        self.longest_bad_run = counter()  # most consecutive skipped steps since start/resume
        self.new_window()

    def new_window(self) -> None:
        device = self.device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.micro_batches = 0
        self.clusters = torch.zeros(2, self.num_clusters, dtype=torch.float64, device=device)  # [sum, count]
        self.applied = torch.zeros((), dtype=torch.int64, device=device)
        self.grad_norm = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = 0
        self.seconds = 0.0
        self.ema_seconds = 0.0

    def add_micro_batch(self, loss: torch.Tensor, per_sample: torch.Tensor, clusters: torch.Tensor) -> None:
        """`clusters`: each sample's timestep cluster (the objective bins its own time)."""
        self.loss += loss.detach().to(torch.float64)
        self.micro_batches += 1
        k = clusters.to(self.device)
        self.clusters[0].index_add_(0, k, per_sample.detach().to(torch.float64))
        self.clusters[1].index_add_(0, k, torch.ones_like(k, dtype=torch.float64))

    def add_step(self, grad_norm: torch.Tensor, applied: torch.Tensor) -> None:
        """One optimizer step's result (device tensors): a skipped step adds no gradient norm."""
        applied = applied.to(self.device)
        self.grad_norm += torch.where(applied, grad_norm.to(self.device, torch.float64), 0.0)
        self.applied += applied
        self.skipped_total += ~applied
        self.consecutive_bad.mul_(~applied).add_(~applied)  # +1 when skipped, 0 when applied
        torch.maximum(self.longest_bad_run, self.consecutive_bad, out=self.longest_bad_run)

    @contextlib.contextmanager
    def timing_step(self):
        tic = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - tic
        self.steps += 1

    @contextlib.contextmanager
    def timing_ema(self):
        tic = time.perf_counter()
        yield
        self.ema_seconds += time.perf_counter() - tic

    def read(self, data_errors: int, world_size: int) -> WindowSummary:
        """Collective: the window's numbers, loss and cluster sums averaged over ranks (one
        all-reduce, one host read for everything)."""
        stats = torch.cat([(self.loss / max(self.micro_batches, 1)).reshape(1),
                           torch.tensor([float(data_errors)], dtype=torch.float64, device=self.device),
                           self.clusters.flatten()])
        if dist.is_initialized():
            dist.all_reduce(stats)
        # Norm and skip counts are identical on every rank (the engines agree on the step).
        local = torch.stack([self.grad_norm, self.applied, self.skipped_total,
                             self.longest_bad_run]).to(torch.float64)
        stats, local = torch.cat([stats, local]).cpu().split([stats.numel(), local.numel()])
        grad_norm_sum, applied, skipped_total, longest_bad_run = local.tolist()
        sums, counts = stats[2:].view(2, self.num_clusters)
        return WindowSummary(
            loss=stats[0].item() / world_size,
            grad_norm=grad_norm_sum / max(applied, 1),
            skipped=self.steps - int(applied),
            skipped_total=int(skipped_total),
            longest_bad_run=int(longest_bad_run),
            data_errors=stats[1].item(),
            seconds_per_step=self.seconds / self.steps,
            ema_fraction=self.ema_seconds / self.seconds,
            cluster_losses={f"loss_t{k}": (sums[k] / counts[k]).item()
                            for k in range(self.num_clusters) if counts[k] > 0},
        )


class MetricsLogger:
    def __init__(self, directory: str, enabled: bool, total_steps: int, start_step: int,
                 log_cfg=None, config: dict | None = None):
        self.enabled = enabled
        self.progress = ConsoleProgress(total_steps, start_step, enabled, file_log=logging.getLogger(FILE_LOGGER))
        self.file = None
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self.file = open(os.path.join(directory, "metrics.jsonl"), "a", buffering=1)
        # TensorBoard is a declared dependency (setup.cfg), not an optional extra: a missing
        # install is an environment error to fix, not something to hide behind a warning.
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(directory, "tensorboard"))
        if log_cfg is not None:
            self.wandb = WandbLogger.start(log_cfg, directory, config or {})

    def advance(self, n: int = 1) -> None:
        self.progress.advance(n)

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                 for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}, allow_nan=True) + "\n")
        if self.tb is not None:
            for key, value in clean.items():
                if isinstance(value, float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(step, clean)
        self.progress.report(step, clean)

    def close(self) -> None:
        self.progress.close()
        if self.wandb is not None:
            self.wandb.close()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()
