"""What a person watching a training run sees: `step N/M`, elapsed time, ETA and throughput.

Rank 0 shows a tqdm bar when its stdout is a terminal; otherwise (a SLURM log, `| tee`, the demo's
log files) it prints one plain line per log step, because a bar redrawn with carriage returns is
unreadable in a file. With the bar on, the same lines still go to the run folder's `train.log`
(see run_log.py), so nothing is lost by watching the bar.

A line reads:

    step 120/800 (15%) elapsed 1m20s eta 7m30s 410 img/s loss=0.1452 grad_norm=0.3173 ...

Elapsed and ETA are this process's: a resumed run counts from its own start, and the ETA is the
remaining steps at the average step time since then (start-up included, so it is pessimistic at
first and settles after a few log lines).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable, Optional

from tqdm import tqdm

log = logging.getLogger("dtr_scale")
# Keys shown in the line's head (or left out of it); per-cluster losses stay in the files only.
_HEAD_KEYS = ("img_per_s",)


def format_duration(seconds: Optional[float]) -> str:
    """`45s`, `3m05s`, `2h07m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_log_line(step: int, total: int, elapsed: float, eta: Optional[float], metrics: dict) -> str:
    """The training log line (see the module docstring for its shape)."""
    pct = 100.0 * step / total if total else 0.0
    head = f"step {step}/{total} ({pct:.0f}%) elapsed {format_duration(elapsed)} eta {format_duration(eta)}"
    if isinstance(metrics.get("img_per_s"), (int, float)):
        head += f" {metrics['img_per_s']:.0f} img/s"
    # Nested records (an evaluation's protocol) stay in metrics.jsonl: a line is for numbers.
    rest = " ".join(f"{k}={_value(v)}" for k, v in metrics.items()
                    if k not in _HEAD_KEYS and not k.startswith("loss_t") and not isinstance(v, (dict, list)))
    return f"{head} {rest}".rstrip()


class StepClock:
    """Elapsed time and ETA from the steps done since this process started training."""

    def __init__(self, total: int, start_step: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.start_step, self.clock = total, start_step, clock
        self.t0 = clock()

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def eta(self, step: int) -> Optional[float]:
        done = step - self.start_step
        if done <= 0:
            return None
        return self.elapsed() / done * max(self.total - step, 0)


class ConsoleProgress:
    """Rank 0's console: a bar on a terminal, plain lines otherwise; the line always reaches the
    run log. Other ranks print nothing."""

    def __init__(self, total: int, start_step: int, enabled: bool, stream=None,
                 file_log: Optional[logging.Logger] = None):
        self.enabled, self.total = enabled, total
        self.clock = StepClock(total, start_step)
        self.file_log = file_log
        stream = stream if stream is not None else sys.stdout
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = None
        if enabled and tty:
            self.bar = tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=stream)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def report(self, step: int, metrics: dict) -> str:
        line = format_log_line(step, self.total, self.clock.elapsed(), self.clock.eta(step), metrics)
        if not self.enabled:
            return line
        if self.bar is not None:
            postfix = {k: f"{metrics[k]:.4g}" for k in ("loss",) if isinstance(metrics.get(k), float)}
            if isinstance(metrics.get("img_per_s"), float):
                postfix["img/s"] = f"{metrics['img_per_s']:.0f}"
            self.bar.set_postfix(postfix, refresh=True)
            if self.file_log is not None and self.file_log.handlers:  # run_log set up: train.log
                self.file_log.info(line)
        else:
            log.info(line)
        return line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
