"""`checkpoint.async=true`: the background write produces the very checkpoint a synchronous save
does, `latest` moves only once it is complete, a SIGKILL mid-write leaves the previous checkpoint
as `latest` and the run resumes from it exactly, the optimizer step waits for a staging copy
that is still running, and a disk that fills up during a background write stops the run with
the same one-line error as a synchronous save.

Multi-process runs are real 2-process gloo jobs compared with the synchronous runs of the shared
`full_runs` fixture (same flags, 4 steps, checkpoints at 2 and 4). Engines by code path: the
single engine (torch state, no process group) in-process; FSDP2 (DTensor shards) and DeepSpeed
ZeRO-3 (full tensors gathered from the partitions) killed mid-write and resumed; DDP, ZeRO-1 and
ZeRO-2 run straight through with background writes, both checkpoints compared with the
synchronous runs'."""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from dtr_scale import train as train_cli
from dtr_scale.config import load_config
from dtr_scale.parallel.process_group import DistEnv
from launch_helpers import ENGINES, REPO, STEPS, TINY_CONFIG, checkpoint_state, flatten, metrics, train
from test_storage_faults import digest, error_lines, tmpfs

ASYNC = "checkpoint.async=true"
KILL = "DTR_SCALE_KILL_IN_ASYNC_WRITE_STEP"


def latest(run_dir):
    with open(os.path.join(run_dir, "latest")) as f:
        return f.read().strip()


def assert_same_state(a_dir, b_dir, scratch):
    a, b = checkpoint_state(a_dir, scratch / "a"), checkpoint_state(b_dir, scratch / "b")
    assert a.keys() == b.keys() and any(k.endswith("exp_avg_sq") for k in a), sorted(a)[:5]
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise


@pytest.fixture
def scratch(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "scratch" / sub).mkdir(parents=True)
    return tmp_path / "scratch"


def test_single_engine_async_equals_sync(digits_shards, tmp_path, scratch, keep_signal_handlers):
    runs = {}
    for mode in ("sync", "async"):
        run_dir = str(tmp_path / mode)
        cfg = load_config(os.path.join(REPO, "configs", "digits-tiny.yaml"),
                          [f"data.path={digits_shards}", f"checkpoint.dir={run_dir}", "train.global_batch_size=8",
                           "train.log_every=1", "data.num_workers=0", "checkpoint.resume=none", *STEPS,
                           f"checkpoint.async={mode == 'async'}"])
        assert train_cli.run(cfg, DistEnv()) == 0
        runs[mode] = run_dir
    assert latest(runs["async"]) == "step_000000004"
    assert not [d for d in os.listdir(runs["async"]) if d.startswith(".tmp-")]
    for step in ("step_000000002", "step_000000004"):
        assert_same_state(os.path.join(runs["sync"], step), os.path.join(runs["async"], step), scratch)
    assert [m["loss"] for m in metrics(runs["async"])] == [m["loss"] for m in metrics(runs["sync"])]


class LateStager:
    """The run's own stager, started `delay` seconds late on a thread: a copy still running when
    the next training step comes."""
    should_synchronize_after_execute = False

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.pool = inner, delay, ThreadPoolExecutor(max_workers=1)

    def stage(self, state_dict):
        def late():
            time.sleep(self.delay)
            staged = self.inner.stage(state_dict)
            return staged.result() if hasattr(staged, "result") else staged
        return self.pool.submit(late)

    def synchronize_staging(self):
        pass

    def close(self):
        self.pool.shutdown()
        self.inner.close()


def test_the_optimizer_step_waits_for_a_copy_still_running(digits_shards, tmp_path, scratch, keep_signal_handlers):
    """The staging copy overlaps the next step's forward and backward; `train_step` waits for it
    before the optimizer changes the tensors. With the copy held back 1 s, the checkpoint still
    holds the state at the save, and skipping the wait (the control) lets the next step's update
    leak into it: the wait is what keeps it exact."""
    cfg = load_config(os.path.join(REPO, "configs", "digits-tiny.yaml"),
                      [f"data.path={digits_shards}", f"checkpoint.dir={tmp_path / 'run'}", "train.global_batch_size=8",
                       "data.num_workers=0", "checkpoint.resume=none", "train.max_steps=10", ASYNC])
    tr = train_cli.setup(cfg, DistEnv())
    train_cli.resume(tr)
    tr.ckpt._stager = LateStager(tr.ckpt._stager, delay=1.0)
    train_cli.train_step(tr)

    def save_then_step(step):
        final = tr.ckpt.save(step, tr.engine, tr.trainer_state(), tr.config_yaml, {})
        at_save = {k: v.clone() for k, v in flatten(tr.engine.state_dict())}
        assert not tr.ckpt.pending.staged.done()
        train_cli.train_step(tr)
        tr.ckpt.finish()
        saved = checkpoint_state(final, scratch / str(step))
        assert saved.keys() == at_save.keys() and any(k.endswith("exp_avg_sq") for k in saved)
        return [k for k in saved if not torch.equal(saved[k], at_save[k])]

    (scratch / "1").mkdir()
    assert save_then_step(1) == []
    tr.ckpt.wait_for_staging = lambda: None  # the control: no wait before the optimizer step
    (scratch / "2").mkdir()
    changed = save_then_step(2)
    assert any(k.startswith("/model/") for k in changed) and any(k.endswith("exp_avg_sq") for k in changed), changed


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["fsdp", "zero3"])
def test_sigkill_during_async_write_resumes_exactly(name, full_runs, digits_shards, tmp_path, scratch):
    """SIGKILL on both ranks while step 4's state is being written in the background: step 2
    (written in the background too, committed when the step-4 save began) stays `latest`; the
    resumed run's step 4 is bitwise the synchronous straight run's."""
    run_dir = str(tmp_path / "killed")
    proc = train(digits_shards, run_dir, *ENGINES[name], *STEPS, ASYNC, env={KILL: "4"}, check=False)
    assert proc.returncode != 0 and "SIGKILL with the write of" in proc.stdout, proc.stderr[-3000:]
    assert latest(run_dir) == "step_000000002"
    assert os.path.isdir(os.path.join(run_dir, ".tmp-step_000000004"))  # the interrupted write
    assert not os.path.isdir(os.path.join(run_dir, "step_000000004"))
    straight = full_runs[name]
    assert_same_state(os.path.join(straight, "step_000000002"), os.path.join(run_dir, "step_000000002"), scratch)

    proc = train(digits_shards, run_dir, *ENGINES[name], *STEPS, ASYNC)  # --resume auto
    assert f"removed {os.path.join(run_dir, '.tmp-step_000000004')}" in proc.stderr
    assert latest(run_dir) == "step_000000004"
    assert not [d for d in os.listdir(run_dir) if d.startswith(".tmp-")]
    assert_same_state(os.path.join(straight, "step_000000004"), os.path.join(run_dir, "step_000000004"), scratch)
    resumed = [m["loss"] for m in metrics(run_dir) if m["step"] > 2][-2:]
    assert resumed == [m["loss"] for m in metrics(straight)[2:4]]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["ddp", "zero1", "zero2"])
def test_async_run_equals_sync_run(name, full_runs, digits_shards, tmp_path, scratch):
    run_dir = str(tmp_path / "async")
    train(digits_shards, run_dir, *ENGINES[name], *STEPS, ASYNC)
    assert latest(run_dir) == "step_000000004"
    assert not [d for d in os.listdir(run_dir) if d.startswith(".tmp-")]
    for step in ("step_000000002", "step_000000004"):
        assert_same_state(os.path.join(full_runs[name], step), os.path.join(run_dir, step), scratch)
    assert [m["loss"] for m in metrics(run_dir)] == [m["loss"] for m in metrics(full_runs[name])]


def test_disk_full_during_background_write_stops_with_the_same_line(digits_shards, tmp_path, capsys,
                                                                    keep_signal_handlers):
    """Room for one checkpoint, not two: the background write of step 4 fails, and the run stops
    at the last step's wait with the one line a synchronous save gives; step 2 is intact and
    still `latest`, the partial folder is gone."""
    with tmpfs(tmp_path / "mnt", "size=45m") as mnt:
        run_dir = os.path.join(mnt, "run")
        args = ["--config", TINY_CONFIG, f"data.path={digits_shards}", f"checkpoint.dir={run_dir}",
                "train.global_batch_size=8", "data.num_workers=0", "checkpoint.keep=3", ASYNC]
        assert train_cli.main(args + ["train.max_steps=2", "checkpoint.every=2"]) == 0
        first = os.path.join(run_dir, "step_000000002")
        before = digest(first)
        capsys.readouterr()
        code = train_cli.main(args + ["train.max_steps=4", "checkpoint.every=2"])
        err = capsys.readouterr().err
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
        line = lines[0]
        assert os.path.join(run_dir, "step_000000004") in line and "No space left on device" in line, line
        assert "latest still names step_000000002" in line and "needs about" in line, line
        assert digest(first) == before and latest(run_dir) == "step_000000002"
        assert not [d for d in os.listdir(run_dir) if d.startswith(".tmp-")]


def test_the_key_is_checkpoint_async_and_round_trips(tmp_path):
    from dtr_scale.config import ConfigError, to_yaml

    cfg = load_config(None, [ASYNC])
    assert cfg.checkpoint.async_save is True and load_config(None).checkpoint.async_save is False
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    assert "async: true" in path.read_text()
    assert load_config(str(path)).checkpoint.async_save is True  # what resume and export read back
    with pytest.raises(ConfigError, match="unknown config key checkpoint.async_save; .*overwrite, async"):
        load_config(None, ["checkpoint.async_save=true"])
    with pytest.raises(ConfigError, match="checkpoint.async: expected"):
        load_config(None, ["checkpoint.async=sometimes"])


def test_preemption_waits_for_the_background_write(digits_shards, tmp_path, monkeypatch, keep_signal_handlers):
    """SIGTERM after step 2 (0-based): the run saves step 3 in the background and returns for
    requeue only once that checkpoint is committed (`latest` names it, no partial folder)."""
    from dtr_scale import faults

    monkeypatch.setenv(faults.SIGNAL_AT_STEP, "2")
    run_dir = str(tmp_path / "preempt")
    cfg = load_config(os.path.join(REPO, "configs", "digits-tiny.yaml"),
                      [f"data.path={digits_shards}", f"checkpoint.dir={run_dir}", "train.global_batch_size=8",
                       "data.num_workers=0", "checkpoint.resume=none", "train.max_steps=8", "checkpoint.every=100",
                       "train.preempt_check_every=1", ASYNC])
    assert train_cli.run(cfg, DistEnv()) == 75
    assert latest(run_dir) == "step_000000003"
    assert not [d for d in os.listdir(run_dir) if d.startswith(".tmp-")]
    assert os.path.isfile(os.path.join(run_dir, "step_000000003", "meta.json"))
