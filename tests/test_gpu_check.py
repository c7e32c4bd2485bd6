"""`benchmarks/gpu_check.sh --device cpu --smoke`: every piece of the GPU check runs (tiny sizes)."""
import json
import os
import subprocess

import pytest

from launch_helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--device", "cpu", "--smoke",
                           "--out", str(out), "--peak-tflops", "0.1"],
                          capture_output=True, text=True, timeout=540, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["attention"]["sdpa_ms"] > 0
    rows = {(r["compiled"], r["checkpointing"]): r for r in result["training"]}
    assert set(rows) == {(False, 0.0), (False, 1.0), (True, 0.0), (True, 1.0)}
    assert all(r["img_per_s"] > 0 and r["mfu"] > 0 for r in rows.values())
    assert rows[(True, 0.0)]["compiled_frames"] >= 1  # the compiled variant really compiled
    assert result["loader"]["samples_per_s"] > 0
    assert result["gpu_tests"], "the GPU-marked tests were collected"
    assert "MFU" in proc.stdout and "loader" in proc.stdout
