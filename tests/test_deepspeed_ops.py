"""The one-line notice before DeepSpeed JIT-compiles its CPU shared-memory op: printed on CPU
rank 0 only while the op is not built, and looked for where DeepSpeed really builds it."""

import pytest
import torch

from dtr_scale.parallel.deepspeed_ops import SHM_OP, announce_cpu_op_build, extensions_root, shm_op_ready
from launch_helpers import train

CPU = torch.device("cpu")


def test_notice_only_on_cpu_rank0_while_the_op_is_not_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_root() == str(tmp_path) and not shm_op_ready()
    capsys.readouterr()  # importing deepspeed prints its accelerator choice
    assert not announce_cpu_op_build(CPU, rank=1)
    assert not announce_cpu_op_build(torch.device("cuda", 0), rank=0)
    assert capsys.readouterr().out == ""
    assert announce_cpu_op_build(CPU, rank=0)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and SHM_OP in out and str(tmp_path) in out
    built = tmp_path / SHM_OP / f"{SHM_OP}.so"
    built.parent.mkdir()
    built.write_bytes(b"")
    assert shm_op_ready() and not announce_cpu_op_build(CPU, rank=0)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_real_deepspeed_run_builds_the_op_where_we_look(digits_shards, tmp_path):
    """After a real DeepSpeed run on the CPU the op is where shm_op_ready() looks (default cache);
    if that run had to build it, it said so exactly once."""
    proc = train(digits_shards, tmp_path / "run", "train.max_steps=1", "parallel.engine=deepspeed",
                 nproc=2, timeout=800)
    assert shm_op_ready(), f"no {SHM_OP}.so under {extensions_root()}"
    assert (proc.stdout + proc.stderr).count(f"compiling its shared-memory communication op ({SHM_OP})") <= 1
