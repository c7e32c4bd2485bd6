"""Training metrics: rank-0 console bar (tqdm), JSON-lines file and TensorBoard scalars.

Only rank 0 writes. The JSON-lines file is appended one flushed line at a time, so a killed job
loses at most the line being written, and a resumed run continues the same file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys

from tqdm import tqdm

log = logging.getLogger("dtr_scale")


class MetricsLogger:
    def __init__(self, directory: str, enabled: bool, total_steps: int, start_step: int):
        self.enabled = enabled
        self.bar = None
        self.file = None
        self.tb = None
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self.file = open(os.path.join(directory, "metrics.jsonl"), "a", buffering=1)
        # TensorBoard is a declared dependency (setup.cfg), not an optional extra: a missing
        # install is an environment error to fix, not something to hide behind a warning.
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(os.path.join(directory, "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True, file=sys.stdout, disable=None)  # None: off when not a TTY

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

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
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{clean.get('loss', float('nan')):.4f}",
                                 img_s=f"{clean.get('img_per_s', 0):.0f}", refresh=False)
        log.info("step %d %s", step, " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in clean.items()
            if not k.startswith("loss_t")))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()
