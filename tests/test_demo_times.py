"""The demo's stage times are the whole run's: a pass killed mid-stage keeps what it spent."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dtr_scale.demo import write_markdown
from dtr_scale.demo_stages import TIMES_FILE, Stage

SLEEP = ["timeit", "-n", "1", "-r", "1"]  # a real child process that takes the time we ask for


def test_times_add_up_across_a_killed_and_resumed_pass(tmp_path):
    out = str(tmp_path)
    # Pass 1: a demo process whose "train" stage runs ~60 s; killed (with its child) after ~7 s.
    code = ("import sys; from dtr_scale.demo_stages import Stage; "
            f"Stage({out!r}).run('train dtr', {SLEEP + ['import time; time.sleep(60)']!r})")
    first = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    deadline = time.time() + 120
    while time.time() < deadline:  # until the pass has saved a few seconds of the stage
        time.sleep(1)
        path = tmp_path / TIMES_FILE
        if path.exists() and json.loads(path.read_text())["passes"][0]["stages"].get("train dtr", 0) >= 5:
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed = json.loads((tmp_path / TIMES_FILE).read_text())["passes"][0]["stages"]["train dtr"]
    assert killed >= 5

    # Pass 2 (the resumed demo): the stage finishes quickly this time, another stage runs.
    stage = Stage(out, stream=io.StringIO())
    stage.run("train dtr", SLEEP + ["import time; time.sleep(1)"])
    stage.run("sample dtr", SLEEP + ["pass"])
    assert stage.passes == 2
    assert stage.times["train dtr"] >= killed + 1  # both passes' training, not only the resumed one
    assert stage.times["train dtr"] == pytest.approx(killed + stage.current["stages"]["train dtr"])
    assert set(stage.times) == {"train dtr", "sample dtr"}
    assert stage.wall_seconds() >= stage.times["train dtr"]
    assert "[demo] train dtr: done in" in stage.stream.getvalue()
    assert os.path.getsize(tmp_path / "logs" / "train_dtr.log") >= 0

    summary = {"wall_seconds": stage.wall_seconds(), "model": "DiT-T/4", "engine": "ddp", "nproc": 2,
               "global_batch_size": 128, "sampling_steps": "ddim20", "cfg_scale": 2.0, "variants": {},
               "stage_seconds": stage.times, "passes": stage.passes}
    write_markdown(summary, str(tmp_path / "report.md"))
    md = (tmp_path / "report.md").read_text()
    assert "over 2 passes" in md and f"train dtr {stage.times['train dtr']:.0f}" in md


def test_a_failed_stage_names_its_log(tmp_path):
    stage = Stage(str(tmp_path), stream=io.StringIO())
    with pytest.raises(SystemExit, match="train_x.log"):
        stage.run("train x", ["json.tool", str(tmp_path / "missing.json")])
    assert "train x" in json.loads((tmp_path / TIMES_FILE).read_text())["passes"][0]["stages"]


def test_progress_lines_are_streamed(tmp_path):
    stage = Stage(str(tmp_path), stream=io.StringIO())
    printer = "print('x INFO step 3/8 (38%) elapsed 2s eta 3s 9 img/s loss=1', flush=True)"
    stage.run("train y", SLEEP + [printer])
    assert "[demo] train y: step 3/8 (38%) elapsed 2s eta 3s" in stage.stream.getvalue()
