"""The intra-op thread choice of a single process (dtr_scale/threads.py)."""
import pytest
import torch

from dtr_scale import threads
from dtr_scale.threads import choose_threads, configure_threads, local_ranks


def test_cores_divided_by_local_ranks_never_oversubscribed():
    current = torch.get_num_threads()
    assert choose_threads({}, cores=8, current=current).threads == 8
    assert choose_threads({"LOCAL_WORLD_SIZE": "4"}, cores=8, current=current).threads == 2
    assert choose_threads({"LOCAL_WORLD_SIZE": "3"}, cores=8, current=current).threads == 2  # floor
    assert choose_threads({"LOCAL_WORLD_SIZE": "16"}, cores=8, current=current).threads == 1  # at least one
    assert choose_threads({"SLURM_NTASKS_PER_NODE": "2(x3)"}, cores=8, current=current).threads == 4
    assert choose_threads({"LOCAL_SIZE": "8"}, cores=16, current=current).threads == 2  # deepspeed launcher
    assert "8 core(s)" in choose_threads({}, cores=8, current=current).reason


def test_explicit_omp_num_threads_wins():
    choice = choose_threads({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, cores=8)
    assert choice.threads == 3 and "OMP_NUM_THREADS" in choice.reason
    bad = choose_threads({"OMP_NUM_THREADS": "lots"}, cores=4, current=torch.get_num_threads())
    assert bad.threads == 4 and "ignored" in bad.reason


def test_local_ranks_ignores_garbage():
    assert local_ranks({}) == 1
    assert local_ranks({"LOCAL_WORLD_SIZE": "x"}) == 1
    assert local_ranks({"LOCAL_WORLD_SIZE": "0"}) == 1


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads._THREADS_AT_IMPORT = before


def test_configure_applies_the_choice_and_prints_it(monkeypatch, capsys, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(threads, "_announced", False)
    expected = max(1, threads.available_cores())
    assert configure_threads().threads == expected
    assert torch.get_num_threads() == expected
    configure_threads()  # printed once per process
    out = capsys.readouterr().out
    assert out.count("threads:") == 1 and f"{expected} intra-op" in out


def test_configure_respects_omp_and_set_num_threads(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert configure_threads(announce=False).threads == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    threads._THREADS_AT_IMPORT = 2
    torch.set_num_threads(3)  # a user's own choice after dtr_scale was imported
    choice = configure_threads(announce=False)
    assert choice.threads == 3 and "set_num_threads" in choice.reason and torch.get_num_threads() == 3


def test_every_cli_announces_its_choice(monkeypatch, capsys, tmp_path, restore_threads):
    """Called at the start of a CLI main: shown even when the command then fails on its input."""
    from dtr_scale import export

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "_announced", False)
    export.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "w")])
    assert "threads: 1 intra-op CPU thread(s) per process (OMP_NUM_THREADS is set)" in capsys.readouterr().out
