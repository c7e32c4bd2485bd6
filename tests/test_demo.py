"""The demo's whole chain, shortened (a few steps, few samples), through the real CLIs."""
import json
import math
import os

import pytest
import torch

from launch_helpers import run_module

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]


def test_demo_chain_writes_report(tmp_path):
    out = tmp_path / "demo"
    run_module("dtr_scale.demo", ["--out", str(out), "--steps", "4", "--num-samples", "40",
                                  "--sampling-steps", "ddim4"], timeout=800)
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == {"dtr", "baseline"}
    for name, v in report["variants"].items():
        assert v["steps"] == 4 and v["samples"] == 40
        assert math.isfinite(v["pixel_fd"]) and v["pixel_fd"] > 0
        assert os.path.getsize(out / f"samples_{name}.png") > 0
    assert report["variants"]["dtr"]["sharing_ratio"] == 0.8 and report["variants"]["baseline"]["sharing_ratio"] == 1.0
    assert (out / "loss_curves.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "pixel FD" in md and "Wall time" in md


def test_demo_chain_flow_matching(tmp_path):
    """`--objective flow`: the same chain trains and samples SiT-style flow models."""
    out = tmp_path / "demo_flow"
    run_module("dtr_scale.demo", ["--out", str(out), "--objective", "flow", "--steps", "4",
                                  "--num-samples", "20", "--flow-steps", "3"], timeout=800)
    report = json.loads((out / "report.json").read_text())
    assert report["objective"] == "flow" and set(report["variants"]) == {"dtr", "baseline"}
    assert all(math.isfinite(v["pixel_fd"]) for v in report["variants"].values())
    meta = torch.load(out / "dtr" / "weights.pt", map_location="cpu", weights_only=False)["dtr_scale"]
    assert meta["objective"] == "flow"
    assert "(flow matching)" in (out / "report.md").read_text()
