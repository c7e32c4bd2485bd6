"""Nothing we did not write is deleted or overwritten: `train --resume none` over existing
checkpoints, a training run over another run's config.yaml, `prep --out` at a folder prep did not
create and `demo --fresh` at a folder the demo did not write all refuse with one line and leave
every byte as it was; what the explicit overrides remove is named."""
import hashlib
import logging
import os
import shutil

import pytest

from dtr_scale import demo, prep
from dtr_scale import train as train_cli
from launch_helpers import TINY_CONFIG, train

pytestmark = pytest.mark.timeout(600)


def folder_digest(root) -> dict:
    """Relative path -> sha256 of every file (and the set of directories) under `root`."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = "dir"
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                out[os.path.join(rel, name)] = hashlib.sha256(f.read()).hexdigest()
    return out


def train_args(data, run_dir, *extra):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}",
            "train.global_batch_size=8", "data.num_workers=0", "train.log_every=1", *extra]


def error_line(text):
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def other_run(digits_shards, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("other") / "run")
    train(digits_shards, run_dir, "train.max_steps=2", "checkpoint.every=2", nproc=1)
    return run_dir


def test_resume_none_refuses_existing_checkpoints(other_run, digits_shards, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    shutil.copytree(other_run, run_dir)
    before = folder_digest(run_dir)
    code = train_cli.main(train_args(digits_shards, run_dir, "train.max_steps=1", "--resume", "none"))
    assert code == 2
    line = error_line(capsys.readouterr().err)
    assert run_dir in line and "step 2" in line
    assert "--resume auto" in line and "new checkpoint.dir" in line and "checkpoint.overwrite=true" in line
    assert folder_digest(run_dir) == before


def test_another_runs_config_is_kept(other_run, digits_shards, tmp_path, capsys):
    """A folder holding only another run's config.yaml (a different routing): refused, untouched."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(os.path.join(other_run, "config.yaml"), run_dir / "config.yaml")
    (run_dir / "notes.txt").write_text("mine\n")
    before = folder_digest(run_dir)
    code = train_cli.main(train_args(digits_shards, str(run_dir), "train.max_steps=1",
                                     "model.routing.sharing_ratio=0.6"))
    assert code == 2
    line = error_line(capsys.readouterr().err)
    assert str(run_dir / "config.yaml") in line and "sharing_ratio" in line and "checkpoint.overwrite=true" in line
    assert folder_digest(run_dir) == before


def test_overwrite_names_what_it_removes(other_run, digits_shards, tmp_path, caplog, keep_signal_handlers):
    run_dir = str(tmp_path / "run")
    shutil.copytree(other_run, run_dir)
    with caplog.at_level(logging.INFO, logger="dtr_scale"):
        code = train_cli.main(train_args(digits_shards, run_dir, "train.max_steps=1", "checkpoint.every=1",
                                         "--resume", "none", "checkpoint.overwrite=true"))
    assert code == 0
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert any(os.path.join(run_dir, "step_000000002") in m for m in removed), removed
    assert sorted(d for d in os.listdir(run_dir) if d.startswith("step_")) == ["step_000000001"]


def test_prep_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"someone else's shard")
    (out / "README").write_text("not prep's\n")
    before = folder_digest(out)
    args = ["--source", "digits", "--vae", "none", "--out", str(out), "--shard-size", "900", "--no-progress"]
    assert prep.main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert str(out) in line and "--overwrite" in line
    assert folder_digest(out) == before
    # told to, it writes there (and says which file it replaced); the rest stays
    assert prep.main(args + ["--overwrite"]) == 0
    assert "replacing" in capsys.readouterr().err
    assert (out / "README").read_text() == "not prep's\n" and (out / "dataset.json").is_file()
    assert prep.main(args) == 0  # now marked: a rerun resumes


def test_demo_fresh_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.json").write_text("{\"mine\": true}\n")
    (out / "data").mkdir()
    (out / "data" / "x.npy").write_bytes(b"\x00" * 10)
    before = folder_digest(out)
    assert demo.main(["--out", str(out), "--fresh"]) == 2
    assert str(out) in error_line(capsys.readouterr().err)
    assert folder_digest(out) == before


def test_demo_fresh_checks_arguments_before_removing(tmp_path, capsys):
    out = tmp_path / "demo_out"
    demo.prepare_output(str(out), fresh=False)  # as a demo run leaves it: marked
    (out / "report.md").write_text("old report\n")
    before = folder_digest(out)
    assert demo.main(["--out", str(out), "--fresh", "--steps", "0"]) == 2
    assert "--steps" in error_line(capsys.readouterr().err)
    assert folder_digest(out) == before


def test_demo_fresh_removes_only_the_demos_entries(tmp_path, capsys):
    out = tmp_path / "demo_out"
    demo.prepare_output(str(out), fresh=False)
    for name in ("data", "dtr", "logs"):
        (out / name).mkdir()
        (out / name / "f.bin").write_bytes(b"1")
    (out / "report.json").write_text("{}")
    (out / "my_notes.txt").write_text("keep me\n")
    (out / "my_dir").mkdir()
    (out / "my_dir" / "a").write_text("keep\n")
    mine = {k: v for k, v in folder_digest(out).items() if k.startswith(("./my_", "my_"))}
    demo.prepare_output(str(out), fresh=True)
    printed = capsys.readouterr().out
    after = folder_digest(out)
    assert {k: v for k, v in after.items() if k.startswith(("./my_", "my_"))} == mine
    assert not any((out / name).exists() for name in ("data", "dtr", "logs", "report.json"))
    assert all(str(out / name) in printed for name in ("data", "dtr", "logs", "report.json"))
    assert (out / demo.MARKER).is_file()
