"""Weights & Biases logging, optional (`log.wandb: true`; `pip install dtr-scale[wandb]`).

Rank 0 only, beside TensorBoard and metrics.jsonl: the same scalars under the same names, plus the
in-loop sample grids as images. The run id is stored in the run folder (`wandb_id.txt`) the first
time, so every resume of the run (requeues, another engine or world size) continues the same W&B
run. `log.wandb_mode=offline` needs no network and no account: the run is written under
`checkpoint.dir/wandb/` (or `$WANDB_DIR`) and can be uploaded later with `wandb sync`.
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import string
from typing import Optional

from .atomic import atomic_write_text

log = logging.getLogger("dtr_scale")
ID_FILE = "wandb_id.txt"
GRID_KEY = "sample_grid"  # metrics key carrying the path of a sample-grid PNG (in-loop monitor)


def _mode(wanted: str) -> str:
    if wanted == "auto":
        return os.environ.get("WANDB_MODE") or "online"
    return wanted


def run_id(run_dir: str) -> str:
    """The run's W&B id: read from the run folder, or made once and stored there."""
    path = os.path.join(run_dir, ID_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            stored = f.read().strip()
        if stored:
            return stored
    # W&B's own id shape (8 lowercase letters and digits); made here, since where wandb keeps its
    # generator has moved between versions.
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_text(path, new + "\n")
    return new


class WandbLogger:
    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, log_cfg, run_dir: str, config: dict) -> Optional["WandbLogger"]:
        """The W&B run of this training run, or None when `log.wandb` is off."""
        if not log_cfg.wandb:
            return None
        try:
            import wandb
        except ImportError:
            raise RuntimeError("log.wandb=true needs the wandb package: pip install 'dtr-scale[wandb]' "
                               "(or set log.wandb=false)") from None
        rid = run_id(run_dir)
        kwargs = {}
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = run_dir  # keep the (offline) run beside its checkpoints
        run = wandb.init(project=log_cfg.wandb_project, name=log_cfg.wandb_run_name or os.path.basename(
            os.path.abspath(run_dir)), id=rid, resume="allow", mode=_mode(log_cfg.wandb_mode), config=config,
            **kwargs)
        log.info("wandb: run %s (%s mode)", rid, _mode(log_cfg.wandb_mode))
        return cls(run)

    def log(self, step: int, metrics: dict) -> None:
        import wandb

        data = {k: v for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        grid = metrics.get(GRID_KEY)
        if isinstance(grid, str) and os.path.isfile(grid):
            data["samples"] = wandb.Image(grid, caption=f"EMA samples at step {step}")
        if data:
            self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()
