"""Training metrics: rank-0 console progress (progress.py), JSON-lines file, TensorBoard scalars
and, with `log.wandb`, Weights & Biases (wandb_log.py).

Only rank 0 writes. The JSON-lines file is appended one flushed line at a time, so a killed job
loses at most the line being written, and a resumed run continues the same file.
"""
from __future__ import annotations

import json
import logging
import math
import os

from .progress import ConsoleProgress
from .run_log import FILE_LOGGER
from .wandb_log import WandbLogger

log = logging.getLogger("dtr_scale")


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
