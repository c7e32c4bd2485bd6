"""The run folder's `train.log`, and what is kept off the console.

Everything rank 0 logs goes to `checkpoint.dir/train.log` (appended, so a resumed run continues
it). The console keeps what a person needs: the thread choice, one line pointing at the resolved
config, the progress lines or bar, checkpoints, warnings that mean something. Moved to the file
only (never dropped on rank 0):

- DeepSpeed's INFO chatter (its logger writes straight to stdout and does not propagate, so a
  filter on that logger diverts records below WARNING);
- torch's notice that no CUDA runtime was found when C++ ops are built on a CPU machine, and
  DeepSpeed's that it runs on the CPU;
- third-party warnings known to be harmless here (`HARMLESS_WARNINGS`: deprecations inside
  libraries that we cannot act on). Any other warning still reaches the console.

Other ranks write no file; they drop the same chatter and keep their warnings.

The file is opened only once the run has accepted its folder (`start_run_log_file`, called after
the resume check has recorded the run's config): until then rank 0 holds the records in memory,
so a run that refuses a folder holding another run's checkpoints leaves no file there.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from logging.handlers import MemoryHandler
from typing import Optional

LOG_NAME = "train.log"
FILE_LOGGER = "dtr_scale.run_file"  # file only: the progress lines while a bar is on screen

# (category, regex on the message): emitted inside torch / DeepSpeed / webdataset, not by our
# calls, and harmless for these runs.
HARMLESS_WARNINGS = [
    (FutureWarning, r"torch\.cuda\.amp\.|torch\.cpu\.amp\."),  # DeepSpeed's own autocast imports
    (FutureWarning, r"You are using `torch\.load` with `weights_only=False`"),  # DeepSpeed's op builder
    (UserWarning, r"TypedStorage is deprecated"),
    (UserWarning, r"pkg_resources is deprecated"),
    (UserWarning, r"No device id is provided via `init_process_group` or `barrier`"),
    (UserWarning, r"barrier\(\): using the device under current context"),
    (UserWarning, r"Gloo backend does not support multiple devices|Trying to use gloo"),
    (UserWarning, r"torch\.distributed\.reduce_op is deprecated"),
    (UserWarning, r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to"),
    # torch 2.14 renamed DDP's argument; `broadcast_buffers=False` still means what it meant.
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
]
# logger name -> records below this level are chatter.
CHATTY_LOGGERS = {"DeepSpeed": logging.WARNING, "torch.utils.cpp_extension": logging.ERROR}
# logger name -> warnings of that logger that are expected on a CPU machine.
HARMLESS_LOG_MESSAGES = {"DeepSpeed": r"Setting accelerator to CPU"}

_state: dict = {"handler": None, "run_dir": None, "showwarning": None}


class _Divert(logging.Filter):
    """On a chatty logger: records below `level` go to the file (if any), not to its handlers."""

    def __init__(self, level: int, harmless: str | None = None):
        super().__init__()
        self.level, self.harmless = level, harmless

    def filter(self, record: logging.LogRecord) -> bool:
        expected = self.harmless is not None and re.search(self.harmless, record.getMessage())
        if record.levelno >= self.level and not expected:
            return True
        handler = _state["handler"]
        if handler is not None and record.levelno >= handler.level:
            handler.handle(record)
        return False


def is_harmless(message, category) -> bool:
    text = str(message)
    return any(issubclass(category, cat) and re.search(pattern, text) for cat, pattern in HARMLESS_WARNINGS)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    handler = _state["handler"]
    text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
    if handler is not None:
        handler.handle(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, text, None, None))
    if not is_harmless(message, category):
        _state["showwarning"](message, category, filename, lineno, file, line)


def setup_run_logging(run_dir: str, is_main: bool) -> Optional[logging.Logger]:
    """Install the filters and, on rank 0, a handler that holds records until the run folder is
    accepted (idempotent); returns the file-only logger on rank 0."""
    close_run_logging()
    if is_main:
        held = MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)  # flushed by hand only
        held.setLevel(logging.INFO)
        _state["handler"], _state["run_dir"] = held, run_dir
        logging.getLogger().addHandler(held)
    for name, level in CHATTY_LOGGERS.items():
        chatty = logging.getLogger(name)
        if not any(isinstance(f, _Divert) for f in chatty.filters):
            chatty.addFilter(_Divert(level, HARMLESS_LOG_MESSAGES.get(name)))  # survives DeepSpeed's own logger setup at import
    _state["showwarning"] = warnings.showwarning
    warnings.showwarning = _showwarning
    if not is_main:
        return None
    file_log = logging.getLogger(FILE_LOGGER)
    file_log.propagate = False
    file_log.setLevel(logging.INFO)
    file_log.addHandler(_state["handler"])
    return file_log


def start_run_log_file() -> None:
    """Rank 0, once the folder is this run's: write the held records to `train.log`, then log
    straight to it."""
    held = _state["handler"]
    if not isinstance(held, MemoryHandler):
        return
    handler = logging.FileHandler(os.path.join(_state["run_dir"], LOG_NAME), encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    held.setTarget(handler)
    held.flush()
    for logger in (logging.getLogger(), logging.getLogger(FILE_LOGGER)):
        if held in logger.handlers:
            logger.removeHandler(held)
            logger.addHandler(handler)
    held.close()
    _state["handler"] = handler


def close_run_logging() -> None:
    """Undo `setup_run_logging` (a second run in the same process, the tests)."""
    handler = _state["handler"]
    if handler is not None:
        logging.getLogger().removeHandler(handler)
        logging.getLogger(FILE_LOGGER).removeHandler(handler)
        handler.close()
        _state["handler"] = None
    if _state["showwarning"] is not None:
        warnings.showwarning = _state["showwarning"]
        _state["showwarning"] = None
