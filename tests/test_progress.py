"""The training log line (step N/M, elapsed, ETA, img/s) and the rank-0 console (dtr_scale/progress.py)."""
import io
import logging
import re

from dtr_scale.progress import ConsoleProgress, StepClock, format_duration, format_log_line


def test_format_duration():
    assert [format_duration(s) for s in (0, 45.4, 185, 3600 * 2 + 7 * 60 + 5)] == ["0s", "45s", "3m05s", "2h07m"]
    assert format_duration(None) == "?" and format_duration(float("inf")) == "?"


def test_log_line_format():
    line = format_log_line(120, 800, 80.0, 450.0, {"loss": 0.14523, "img_per_s": 409.7, "grad_norm": 0.3,
                                                    "loss_t3": 0.2, "skipped_steps": 0.0})
    assert line.startswith("step 120/800 (15%) elapsed 1m20s eta 7m30s 410 img/s loss=0.1452 ")
    assert "grad_norm=0.3" in line and "loss_t3" not in line and "img_per_s" not in line
    assert re.fullmatch(r"step 5/5 \(100%\) elapsed 3s eta 0s eval_fd=0.5", format_log_line(5, 5, 3.2, 0.0, {"eval_fd": 0.5}))


def test_clock_eta_from_steps_done_since_start():
    now = [100.0]
    clock = StepClock(total=1000, start_step=200, clock=lambda: now[0])  # a resumed run
    assert clock.eta(200) is None
    now[0] = 110.0
    assert clock.elapsed() == 10.0
    assert clock.eta(300) == 10.0 / 100 * 700  # 0.1 s per step, 700 to go


def test_plain_lines_when_not_a_terminal(caplog):
    stream = io.StringIO()  # no isatty: a log file, SLURM output
    progress = ConsoleProgress(10, 0, enabled=True, stream=stream)
    assert progress.bar is None
    with caplog.at_level(logging.INFO, logger="dtr_scale"):
        progress.advance(4)
        progress.report(4, {"loss": 0.5, "img_per_s": 12.0})
    assert any(r.getMessage().startswith("step 4/10 (40%) elapsed") for r in caplog.records)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_and_the_line_goes_to_the_run_log(caplog, tmp_path):
    file_log = logging.getLogger("test_progress.file")
    file_log.propagate = False
    file_log.setLevel(logging.INFO)  # as run_log.setup_run_logging sets it
    handler = logging.FileHandler(tmp_path / "train.log")
    file_log.addHandler(handler)
    term = FakeTerminal()
    progress = ConsoleProgress(10, 0, enabled=True, stream=term, file_log=file_log)
    assert progress.bar is not None
    with caplog.at_level(logging.INFO, logger="dtr_scale"):
        progress.advance(5)
        progress.report(5, {"loss": 0.25, "img_per_s": 100.0})
    progress.close()
    handler.close()
    assert "5/10" in term.getvalue() and "loss=0.25" in term.getvalue()  # tqdm's bar with the postfix
    assert not any("step 5/10" in r.getMessage() for r in caplog.records)  # no plain line under the bar
    assert "step 5/10 (50%)" in (tmp_path / "train.log").read_text()


def test_other_ranks_print_nothing(caplog):
    progress = ConsoleProgress(10, 0, enabled=False, stream=FakeTerminal())
    with caplog.at_level(logging.INFO, logger="dtr_scale"):
        line = progress.report(2, {"loss": 1.0})
    assert progress.bar is None and not caplog.records and line.startswith("step 2/10")
