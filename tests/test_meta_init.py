"""Meta-device (FSDP2) and zero.Init (ZeRO-3) construction give exactly the eager weights."""
import os
import subprocess
import sys

import pytest

from launch_helpers import REPO

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.mark.parametrize("flags", [["parallel.engine=fsdp"],
                                   ["parallel.engine=deepspeed", "parallel.zero_stage=3", "model.routing.init=random"]],
                         ids=["fsdp-dtr", "zero3-random"])
def test_meta_init_equals_eager_init(flags):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "tests", "meta_init_worker.py"), *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "meta init OK" in proc.stdout
