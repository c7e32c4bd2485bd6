"""Reports that carry their protocol: `sample` writes the sampling half beside samples.npz,
`evaluate` joins it with its own (reference, extractor, code) into the JSON and the summary line;
the label option's two modes (both objectives); samples without a sidecar still evaluate."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

import dtr_scale
from dtr_scale import code_version as code_version_module
from dtr_scale.evaluate import main as evaluate_main
from dtr_scale.file_hash import file_sha256
from dtr_scale.randomness import draw_labels, sample_generators
from dtr_scale.sample import main as sample_main
from test_sample_weights import write_tiny_flow_weights, write_tiny_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["num_samples=20", "steps=10", "shard_size=8", "cfg_scale=4.0", "seed=7", "progress=false"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_tiny_weights(str(tmp_path_factory.mktemp("w") / "tiny.pt"))


@pytest.fixture(scope="module")
def flow_weights(tmp_path_factory):
    return write_tiny_flow_weights(str(tmp_path_factory.mktemp("fw") / "flow.pt"), step=123)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ref") / "digits_ref.npz")
    np.savez(path, np.random.default_rng(0).integers(0, 256, (30, 16, 16, 1), dtype=np.uint8))
    return path


def _labels(out):
    with np.load(os.path.join(out, "samples.npz")) as npz:
        return npz["arr_0"], npz["arr_1"]


def _evaluate(samples, ref, out, capsys):
    assert evaluate_main(["--samples", samples, "--ref", ref, "--extractor", "pixels", "--out", out,
                          "--no-ref-cache", "--batch-size", "8", "--pr-block", "8"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    with open(out) as f:
        return json.load(f), line


def test_sample_then_evaluate_report_carries_the_protocol(weights, reference, tmp_path, capsys):
    out = str(tmp_path / "s")
    assert sample_main(["--weights", weights, "--out", out, "labels=balanced", "cfg_channels=1"] + COMMON) == 0
    sidecar = os.path.join(out, "samples.protocol.json")
    assert os.path.isfile(sidecar)
    report, line = _evaluate(os.path.join(out, "samples.npz"), reference, str(tmp_path / "r.json"), capsys)
    p = report["protocol"]
    assert (p["num_samples"], p["evaluated_samples"]) == (20, 20)
    assert (p["objective"], p["sampler"], p["steps"]) == ("ddpm", "ddpm", "10")
    assert p["nfe"] == 10  # measured: 10 respaced DDPM steps, one (guided) network call each
    assert (p["cfg_scale"], p["cfg_channels"], p["guidance_interval"]) == (4.0, 1, [0.0, 1.0])
    assert (p["labels"], p["num_classes"], p["seed"], p["precision"], p["vae"]) == ("balanced", 10, 7, "fp32", "none")
    w = p["weights"]
    assert w["sha256"] == file_sha256(weights) and w["sha256_of"] == "file"
    assert (w["step"], w["ema"], w["path"]) == (0, True, os.path.abspath(weights))
    assert p["reference"] == {"name": "digits_ref", "sha256": file_sha256(reference), "path": reference}
    assert p["extractor"] == {"name": "pixels", "weights_sha256": None}
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True)
    for side in ("sample", "evaluate"):
        assert p["code"][side]["package"] == dtr_scale.__version__
        if head.returncode == 0:
            assert p["code"][side]["git_commit"] == head.stdout.strip()
    assert report["seed"] == 7  # from the sidecar, no --seed needed
    assert line.startswith(f"FID {report['metrics']['fid']:.2f} sFID n/a IS n/a P ")
    sha = file_sha256(reference)[:12]
    assert (f"| 20 samples, DDPM 10, CFG 4.0 (1 ch), labels balanced, EMA step 0, ref digits_ref (sha256 {sha}…)"
            in line), line


def test_samples_without_sidecar_evaluate_as_unknown(weights, reference, tmp_path, capsys):
    bare = str(tmp_path / "bare.npz")
    np.savez(bare, np.random.default_rng(1).integers(0, 256, (12, 16, 16, 1), dtype=np.uint8))
    report, line = _evaluate(bare, reference, str(tmp_path / "r.json"), capsys)
    p = report["protocol"]
    for key in ("num_samples", "sampler", "nfe", "cfg_scale", "cfg_channels", "guidance_interval", "labels",
                "seed", "weights"):
        assert p[key] == "unknown", key
    assert p["evaluated_samples"] == 12 and p["code"]["sample"] == "unknown"
    assert p["reference"]["sha256"] == file_sha256(reference)
    assert report["metrics"]["fid"] > 0
    assert "| 12 samples, sampler unknown, CFG unknown, labels unknown, weights unknown, ref digits_ref" in line


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_label_modes_uniform_and_balanced(objective, weights, flow_weights, tmp_path):
    w = weights if objective == "ddpm" else flow_weights
    extra = ["steps=4"] if objective == "ddpm" else ["ode_method=euler", "num_steps=5"]
    args = ["num_samples=12", "shard_size=12", "cfg_scale=1.0", "seed=3", "progress=false"] + extra
    runs = {}
    for mode in ("uniform", "balanced"):
        out = str(tmp_path / mode)
        assert sample_main(["--weights", w, "--out", out, f"labels={mode}"] + args) == 0
        runs[mode] = _labels(out)
        with open(os.path.join(out, "samples.protocol.json")) as f:
            p = json.load(f)
        assert (p["labels"], p["objective"], p["nfe"]) == (mode, objective, 4)
    idx = list(range(12))
    uniform, balanced = runs["uniform"][1], runs["balanced"][1]
    np.testing.assert_array_equal(uniform, draw_labels(sample_generators(3, idx), idx, 10, "uniform").numpy())
    np.testing.assert_array_equal(balanced, np.arange(12) % 10)
    assert (uniform != balanced).any()
    same = uniform == balanced  # same (seed, i) noise in both modes: a shared label gives the same image
    assert same.any()
    np.testing.assert_array_equal(runs["uniform"][0][same], runs["balanced"][0][same])
    assert (runs["uniform"][0][~same] != runs["balanced"][0][~same]).any()


def test_code_version_outside_a_git_checkout(tmp_path, monkeypatch):
    copy = tmp_path / "pkg"
    copy.mkdir()
    monkeypatch.setattr(code_version_module, "_HERE", str(copy))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    code_version_module.code_version.cache_clear()
    try:
        assert code_version_module.code_version() == {"package": dtr_scale.__version__, "git_commit": None,
                                                      "git_dirty": None}
        monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
        code_version_module.code_version.cache_clear()
        assert code_version_module.code_version()["git_commit"] is None
    finally:
        code_version_module.code_version.cache_clear()
