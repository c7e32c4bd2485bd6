"""launch/local.sh: N processes on one machine, through torchrun and through the deepspeed launcher."""
import os

import pytest

from fake_slurm.harness import REPO, TINY_CONFIG, fake_env, latest, meta, metrics, run

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(600)]

LOCAL = os.path.join(REPO, "launch", "local.sh")


def args(data, run_dir):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}", "train.max_steps=3",
            "train.global_batch_size=8", "train.log_every=1", "data.num_workers=0"]


@pytest.mark.parametrize("verb,engine,flags", [
    ("train", "ddp", ["parallel.engine=ddp"]),
    ("deepspeed-train", "deepspeed", ["parallel.zero_stage=2"]),
])
def test_local_two_processes(verb, engine, flags, digits_shards, tmp_path):
    run_dir = tmp_path / "run"
    env = fake_env(tmp_path / "unused")  # no SLURM here: only the timeout-safe runner is shared
    code, out = run([LOCAL, "2", verb, *args(digits_shards, run_dir), *flags], env)
    assert code == 0, out[-6000:]
    assert "[check] ok: data" in out and "command: " in out
    assert latest(run_dir) == "step_000000003"
    m = meta(run_dir)
    assert m["world_size"] == 2 and m["engine"] == engine
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3]
