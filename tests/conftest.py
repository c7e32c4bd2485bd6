import os
import signal

import pytest
import torch

# Two cores here: keep intra-op threads from oversubscribing when tests spawn processes.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """The embedded digits, prepped once per session in pixel mode (1×16×16), 9 shards."""
    from launch_helpers import run_module

    out = tmp_path_factory.mktemp("digits")
    run_module("dtr_scale.prep", ["--source", "digits", "--vae", "none", "--out", str(out),
                                  "--shard-size", "200", "--no-progress"])
    return str(out)


@pytest.fixture(scope="session")
def full_runs(digits_shards, tmp_path_factory):
    """Each 2-process engine trains 4 steps with checkpoints at 2 and 4 (shared by the engine and
    elastic-checkpoint tests)."""
    from launch_helpers import ENGINES, STEPS, train

    root = tmp_path_factory.mktemp("engines")
    runs = {}
    for name, flags in ENGINES.items():
        run_dir = str(root / name)
        train(digits_shards, run_dir, *flags, *STEPS)
        runs[name] = run_dir
    return runs


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """A training run installs the preemption handlers, and a finished one ignores both signals
    (train.main); give pytest its own back after every test. An ignored signal is inherited by
    every process a later test starts, and a shell cannot trap a signal ignored at its start, so
    a leaked SIG_IGN would break the launcher tests that send USR1/TERM."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
