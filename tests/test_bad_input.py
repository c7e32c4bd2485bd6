"""Bad input through the real CLIs: one line that names the problem and the fix, exit code 2, no
traceback; and nothing accepted silently (the "silent" kinds refuse, or count a data error).

Most cases call a CLI's `main(argv)` in this process (fast); a few run it in a subprocess where
the process boundary is the point (the exit status a shell sees, launch/check_inputs.py), and one
runs two ranks under torchrun for an error that only one rank meets after start-up. The bad data
is built here from a copy of the session's digits shards. The README's input-error messages are
checked against the strings these cases expect (`test_readme_messages_come_from_these_tests`).
"""
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import yaml

from dtr_scale import demo, evaluate, export, prep, sample, train
from dtr_scale.data.global_order import EpochOrder
from dtr_scale.file_hash import file_sha256
from launch_helpers import REPO, TINY_CONFIG, metrics, run_module

pytestmark = [pytest.mark.timeout(600)]
CHECK = os.path.join(REPO, "launch", "check_inputs.py")
PRODUCED: list[str] = []  # every error line the cases saw, for the README check at the end


# -- helpers ---------------------------------------------------------------------------------
def last_error(code, err, *needles):
    """Exit code 2, the last stderr line is `error: ...` holding every needle, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr tail: {lines[-5:]}"
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error: "), lines[-5:]
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    PRODUCED.append(lines[-1])
    return lines[-1]


def cli(capsys, main, argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.err


def copy_data(digits_shards, tmp_path, name="data"):
    data = tmp_path / name
    shutil.copytree(digits_shards, data)
    return data


def edit_manifest(data, change):
    path = data / "dataset.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def rewrite_shard(data, shard_name, change):
    """Rewrite one shard with `change(index, key, fields) -> fields | None` (None drops the
    sample), and record its new size and hash in dataset.json (its count stays as it was)."""
    path = data / shard_name
    samples, order = {}, []
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, field = m.name.partition(".")
            if key not in samples:
                samples[key] = {}
                order.append(key)
            samples[key][field] = tar.extractfile(m).read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, key in enumerate(order):
            fields = change(i, key, samples[key])
            for field, payload in sorted((fields or {}).items()):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    os.chmod(path, 0o644)
    path.write_bytes(buf.getvalue())

    def update(doc):
        for s in doc["shards"]:
            if s["name"] == shard_name:
                s["bytes"], s["sha256"] = path.stat().st_size, file_sha256(path)
    edit_manifest(data, update)


def nan_latent(fields):
    arr = np.load(io.BytesIO(fields["latent.npy"])).copy()
    arr.flat[0] = np.nan
    out = io.BytesIO()
    np.lib.format.write_array(out, arr, version=(1, 0))
    return {**fields, "latent.npy": out.getvalue()}


def shard_names(data):
    return [s["name"] for s in json.loads((data / "dataset.json").read_text())["shards"]]


def train_args(data, run_dir, *overrides):
    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}",
            "train.global_batch_size=8", "train.log_every=1", "data.num_workers=0",
            "data.shuffle_buffer=64", *overrides]


def write_yaml(path, doc):
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def tiny_run(digits_shards, tmp_path_factory):
    """A one-step training run with a checkpoint (for export and sample --weights RUN_DIR)."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    assert train.main(train_args(digits_shards, run_dir, "train.max_steps=1", "checkpoint.every=1")) == 0
    return run_dir


def images_npz(path, shape=(20, 8, 8, 1), dtype=np.uint8, key="arr_0"):
    rng = np.random.default_rng(0)
    np.savez(path, **{key: rng.integers(0, 255, shape).astype(dtype)})
    return path


# -- config and train: before start-up ---------------------------------------------------------
TRAIN_BAD_OVERRIDES = [
    (["train.lr=inf"], ["train.lr: got inf; must be a finite number > 0"]),
    (["train.lr=.nan"], ["train.lr: got nan; must be a finite number > 0"]),
    (["train.warmup_steps=-5"], ["train.warmup_steps: got -5; must be >= 0"]),
    (["data.shuffle_buffer=-1"], ["data.shuffle_buffer: got -1; must be >= 0"]),
    (["eval.cfg_scale=nan"], ["eval.cfg_scale: got nan; must be a finite number >= 0"]),
    (["train.beta2=1.5"], ["train.beta2: got 1.5; must be in [0, 1)"]),
    (["diffusion.snr_gamma=-1"], ["diffusion.snr_gamma: got -1.0; must be a finite number > 0"]),
    (["train.weight_decay=nan"], ["train.weight_decay: got nan"]),
    (["train.lr=[1,"], ["override 'train.lr=[1,': the value is not valid YAML"]),
    (["train.global_batch_size=6", "parallel.engine=ddp"], []),  # valid alone: 1 process
]


@pytest.mark.parametrize("overrides,needles", TRAIN_BAD_OVERRIDES[:-1], ids=lambda v: str(v)[:40])
def test_train_refuses_bad_values_before_start(capsys, digits_shards, tmp_path, overrides, needles):
    code, err = cli(capsys, train.main, train_args(digits_shards, tmp_path / "run", *overrides))
    last_error(code, err, *needles)
    assert not (tmp_path / "run").exists()  # refused before anything was created


def test_train_model_does_not_fit_the_data(capsys, digits_shards, tmp_path):
    code, err = cli(capsys, train.main, train_args(digits_shards, tmp_path / "run", "model.input_size=32"))
    last_error(code, err, "model.input_size=32 does not match the data's latent shape [1, 16, 16]")
    assert not (tmp_path / "run").exists()


def test_train_eval_ref_missing(capsys, digits_shards, tmp_path):
    code, err = cli(capsys, train.main, train_args(digits_shards, tmp_path / "run", "eval.every=5",
                                                   f"eval.ref={tmp_path / 'ref.npz'}"))
    last_error(code, err, f"eval.ref={tmp_path / 'ref.npz'}: reference not found")


def test_train_yaml_syntax_error(capsys, digits_shards, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-4\n   max_steps: 3\n")
    code, err = cli(capsys, train.main, ["--config", bad, f"data.path={digits_shards}"])
    last_error(code, err, f"{bad} is not valid YAML: line 3, column", "fix the file")


def test_train_config_path_is_a_folder(capsys, tmp_path):
    code, err = cli(capsys, train.main, ["--config", tmp_path])
    last_error(code, err, f"config file {tmp_path} is a directory; pass the YAML file itself")


def test_train_checkpoint_dir_is_a_file(capsys, digits_shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = cli(capsys, train.main, train_args(digits_shards, blocker))
    last_error(code, err, f"checkpoint.dir {blocker} is a file, not a directory")


def test_train_resume_path_missing(capsys, digits_shards, tmp_path):
    code, err = cli(capsys, train.main, train_args(digits_shards, tmp_path / "run") + ["--resume", tmp_path / "nope"])
    last_error(code, err, f"checkpoint.resume={tmp_path / 'nope'}: not a checkpoint directory")


# -- dataset.json and shards --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd"])
def test_manifest_shard_names_outside_the_data_folder_are_refused(capsys, digits_shards, tmp_path, name):
    data = copy_data(digits_shards, tmp_path)
    edit_manifest(data, lambda doc: doc["shards"][0].update(name=name))
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run"))
    last_error(code, err, f"shard name {name!r} points outside", "plain file names in the data folder")


@pytest.mark.parametrize("change,needle", [
    (lambda doc: doc["shards"][0].update(count="many"), "has a malformed value (ValueError"),
    (lambda doc: doc.update(shards={"a": 1}), "has a malformed value"),
    (lambda doc: doc.update(latent_shape=[1, 16]), "latent_shape [1, 16] is not [C, H, W]"),
    (lambda doc: doc.update(scale_factor=float("nan")), "scale_factor nan / shift_factor 0.0 must be finite"),
], ids=["count-not-int", "shards-not-list", "shape-2d", "scale-nan"])
def test_manifest_malformed_values(capsys, digits_shards, tmp_path, change, needle):
    data = copy_data(digits_shards, tmp_path)
    edit_manifest(data, change)
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run"))
    last_error(code, err, str(data / "dataset.json"), needle)


def test_manifest_not_an_object(capsys, digits_shards, tmp_path):
    data = copy_data(digits_shards, tmp_path)
    (data / "dataset.json").write_text("[1, 2]")
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run"))
    last_error(code, err, "holds a JSON list, not a dtr-scale latent manifest")


def test_manifest_shape_mismatch_names_the_manifest_not_sha256(capsys, digits_shards, tmp_path):
    data = copy_data(digits_shards, tmp_path)
    edit_manifest(data, lambda doc: doc.update(latent_shape=[1, 8, 8]))
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run"))
    line = last_error(code, err, "does not describe these shards", "rerun prep")
    assert "sha256" not in line


def test_manifest_classes_fewer_than_the_data(capsys, digits_shards, tmp_path):
    data = copy_data(digits_shards, tmp_path)
    edit_manifest(data, lambda doc: doc.update(num_classes=0))
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run"))
    last_error(code, err, "num_classes is 0; it must be >= 1")


def test_resampled_all_samples_misfit_names_the_last_problem(capsys, digits_shards, tmp_path):
    """Every sample beyond the first has a class the manifest does not allow: the run stops
    naming that, not suggesting verify_sha256."""
    data = copy_data(digits_shards, tmp_path)
    for name in shard_names(data):
        rewrite_shard(data, name, lambda i, k, f: f if (name, i) == ("shard-000000.tar", 0) else {**f, "cls": b"77"})
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run", "train.max_steps=2"))
    line = last_error(code, err, "found no valid batch in 20 resampled rounds", "class 77 is outside [0, 10)")
    assert "verify_sha256" not in line


@pytest.mark.parametrize("mode", ["resampled", "epoch"])
def test_nan_sample_is_a_counted_data_error(digits_shards, tmp_path, mode):
    data = copy_data(digits_shards, tmp_path)
    for name in shard_names(data):
        rewrite_shard(data, name, lambda i, k, f: nan_latent(f) if i == 0 else f)
    run_dir = tmp_path / "run"
    assert train.main(train_args(data, run_dir, "train.max_steps=2", f"data.mode={mode}")) == 0
    assert metrics(run_dir)[-1]["data_errors"] >= 1  # was 0: NaN samples trained on silently


def test_nan_sample_raises_naming_shard_and_sample(capsys, digits_shards, tmp_path):
    data = copy_data(digits_shards, tmp_path)
    for name in shard_names(data):
        rewrite_shard(data, name, lambda i, k, f: nan_latent(f) if i == 0 else f)
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run", "train.max_steps=2", "data.on_error=raise"))
    last_error(code, err, "latent.npy holds 1 non-finite value(s) (NaN/inf)", "_000000' in shard",
               "data.on_error=raise")


def test_nan_sample_in_a_loader_worker_is_one_line(capsys, digits_shards, tmp_path):
    """Raised in a DataLoader worker process: torch folds the worker's traceback into the text;
    the line keeps only the message."""
    data = copy_data(digits_shards, tmp_path)
    for name in shard_names(data):
        rewrite_shard(data, name, lambda i, k, f: nan_latent(f) if i == 0 else f)
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run", "train.max_steps=2",
                                                   "data.on_error=raise", "data.num_workers=1"))
    line = last_error(code, err, "latent.npy holds 1 non-finite value(s)")
    assert "Original Traceback" not in err and "DataLoader worker" not in line


def test_nan_sample_global_mode_stops_naming_shard_sample_and_position(capsys, digits_shards, tmp_path):
    data = copy_data(digits_shards, tmp_path)
    first = int(EpochOrder(1797, 0).samples(np.arange(1))[0])  # the sample at global position 0
    shard, index = divmod(first, 200)
    rewrite_shard(data, f"shard-{shard:06d}.tar", lambda i, k, f: nan_latent(f) if i == index else f)
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run", "train.max_steps=2", "data.mode=global"))
    last_error(code, err, f"'{shard:06d}_{index:06d}' in shard", "non-finite", "global position 0, step 0")


@pytest.mark.parametrize("mode,on_error", [("resampled", "raise"), ("epoch", "raise"), ("global", "skip")])
def test_manifest_counts_that_disagree_with_the_shards(capsys, digits_shards, tmp_path, mode, on_error):
    data = copy_data(digits_shards, tmp_path)
    for name in shard_names(data):
        rewrite_shard(data, name, lambda i, k, f: None if i == 5 else f)  # one sample fewer than listed
    # A buffer larger than a shard: the first shard is read through (and counted) before step 1.
    code, err = cli(capsys, train.main, train_args(data, tmp_path / "run", "train.max_steps=2", "data.shuffle_buffer=256",
                                                   f"data.mode={mode}", f"data.on_error={on_error}"))
    last_error(code, err, "samples, dataset.json says", "from different prep runs")


def test_manifest_counts_disagree_skip_counts_them(digits_shards, tmp_path):
    data = copy_data(digits_shards, tmp_path)
    for name in shard_names(data):
        rewrite_shard(data, name, lambda i, k, f: None if i == 5 else f)
    run_dir = tmp_path / "run"
    assert train.main(train_args(data, run_dir, "train.max_steps=2", "data.shuffle_buffer=256")) == 0
    assert metrics(run_dir)[-1]["data_errors"] >= 1


def test_nonfinite_run_stops_with_one_line(capsys, digits_shards, tmp_path):
    code, err = cli(capsys, train.main, train_args(digits_shards, tmp_path / "run", "train.max_steps=4",
                                                   "train.lr=1e30", "train.max_consecutive_nonfinite=2"))
    last_error(code, err, "consecutive non-finite steps (train.max_consecutive_nonfinite=2)", "Lower train.lr")


# -- prep ---------------------------------------------------------------------------------------
def jpeg_bytes(value=128):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def image_folder(root, classes=("a", "b"), per_class=2, empty=()):
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        if c in empty:
            continue
        for i in range(per_class):
            (root / c / f"{i}.jpg").write_bytes(jpeg_bytes(40 * i + 20))
    return root


def image_tar(path, labels):
    with tarfile.open(path, "w") as tar:
        for i, label in enumerate(labels):
            for field, payload in (("jpg", jpeg_bytes()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"{i:04d}.{field}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


PREP = ["--vae", "none", "--resolution", "8", "--no-progress"]


def test_prep_corrupt_image_raise_names_the_file(capsys, tmp_path):
    src = image_folder(tmp_path / "imgs")
    bad = src / "b" / "1.jpg"
    bad.write_bytes(jpeg_bytes()[:40])
    code, err = cli(capsys, prep.main, ["--source", f"imagefolder:{src}", "--out", tmp_path / "out", *PREP])
    last_error(code, err, f"image {bad} cannot be decoded", "--on-error skip")


def test_prep_corrupt_image_skip_counts_it(capsys, tmp_path):
    src = image_folder(tmp_path / "imgs")
    (src / "b" / "1.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert prep.main(["--source", f"imagefolder:{src}", "--out", str(out), "--on-error", "skip", *PREP]) == 0
    captured = capsys.readouterr()
    assert '"skipped_unreadable_images": 1' in captured.out
    assert json.loads((out / "dataset.json").read_text())["num_samples"] == 3


def test_prep_empty_class_folder(capsys, tmp_path):
    src = image_folder(tmp_path / "imgs", classes=("a", "b", "c"), empty=("a",))
    code, err = cli(capsys, prep.main, ["--source", f"imagefolder:{src}", "--out", tmp_path / "out", *PREP])
    last_error(code, err, "class folder(s) ['a'] hold no images (1 of 3)")


def test_prep_num_classes_disagrees_with_folders(capsys, tmp_path):
    src = image_folder(tmp_path / "imgs")
    code, err = cli(capsys, prep.main, ["--source", f"imagefolder:{src}", "--out", tmp_path / "out",
                                        "--num-classes", "5", *PREP])
    last_error(code, err, "--num-classes 5 disagrees with --source imagefolder:", "which has 2 classes")


def test_prep_num_classes_disagrees_with_digits(capsys, tmp_path):
    code, err = cli(capsys, prep.main, ["--source", "digits", "--out", tmp_path / "out", "--num-classes", "7", *PREP])
    last_error(code, err, "--num-classes 7 disagrees with --source digits, which has 10 classes")
    assert not (tmp_path / "out").exists()


def test_prep_negative_label_in_a_tar(capsys, tmp_path):
    tar = image_tar(tmp_path / "in.tar", [0, -3, 1])
    code, err = cli(capsys, prep.main, ["--source", f"tar:{tar}", "--out", tmp_path / "out", *PREP])
    last_error(code, err, f"sample '0001' in {tar}: class -3 is negative")


def test_prep_tar_num_classes_too_small(capsys, tmp_path):
    tar = image_tar(tmp_path / "in.tar", [0, 4])
    code, err = cli(capsys, prep.main, ["--source", f"tar:{tar}", "--out", tmp_path / "out",
                                        "--num-classes", "3", *PREP])
    last_error(code, err, "--num-classes 3: the data has class 4; pass --num-classes 5 or more")


@pytest.mark.parametrize("argv,needle", [
    (["--source", "imagefolder:/nonexistent/imgs"], "image folder /nonexistent/imgs not found"),
    (["--source", "bogus"], "--source bogus: expected digits, imagefolder:DIR or tar:GLOB"),
    (["--source", "digits", "--shard-size", "0"], "--shard-size: got 0; must be >= 1"),
    (["--source", "digits", "--batch-size", "0"], "--batch-size: got 0; must be >= 1"),
    (["--source", "digits", "--vae", "./no-vae-here"], "VAE directory './no-vae-here' does not exist"),
], ids=["missing-folder", "bad-source", "shard-size-0", "batch-size-0", "missing-vae"])
def test_prep_bad_options(capsys, tmp_path, argv, needle):
    args = ["--out", tmp_path / "out", "--vae", "none", "--no-progress", *argv]
    code, err = cli(capsys, prep.main, args)
    last_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_prep_out_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("x")
    code, err = cli(capsys, prep.main, ["--source", "digits", "--out", blocker, *PREP])
    last_error(code, err, f"--out {blocker}: exists and is not a directory")


# -- sample ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from test_sample_weights import write_tiny_weights

    return write_tiny_weights(str(tmp_path_factory.mktemp("w") / "tiny.pt"))


@pytest.mark.parametrize("option,needle", [
    ("cfg_scale=nan", "cfg_scale: got nan; allowed: a finite number >= 0"),
    ("cfg_scale=inf", "cfg_scale: got inf; allowed: a finite number >= 0"),
    ("eta=nan", "eta: got nan; allowed: a finite number >= 0"),
    ("batch_size=0", "batch_size: got 0; allowed: an integer >= 1"),
    ("atol=nan", "atol: got nan; allowed: a finite number > 0"),
    ("diffusion_norm=nan", "diffusion_norm: got nan; allowed: a finite number >= 0"),
    ("steps=abc", "steps: got 'abc'; allowed: '250' (steps spread evenly), 'ddim50'"),
], ids=lambda v: v.split("=")[0] + "-" + v.split("=")[-1][:6])
def test_sample_bad_options(capsys, weights, tmp_path, option, needle):
    code, err = cli(capsys, sample.main, ["--weights", weights, "--out", tmp_path / "s", "sampler=ddim", option])
    last_error(code, err, needle)
    assert not (tmp_path / "s").exists()


def test_sample_weights_missing(capsys, tmp_path):
    code, err = cli(capsys, sample.main, ["--weights", tmp_path / "w.pt", "--out", tmp_path / "s"])
    last_error(code, err, "does not exist (no weights file or checkpoint directory there)")


def test_sample_weights_folder_without_checkpoint(capsys, tmp_path):
    code, err = cli(capsys, sample.main, ["--weights", tmp_path, "--out", tmp_path / "s"])
    last_error(code, err, f"--weights {tmp_path}: neither a checkpoint (no meta.json) nor a run directory")


def test_sample_out_is_a_file(capsys, weights, tmp_path):
    blocker = tmp_path / "s"
    blocker.write_text("x")
    code, err = cli(capsys, sample.main, ["--weights", weights, "--out", blocker])
    last_error(code, err, f"--out {blocker}: exists and is not a directory")


def test_sample_resume_with_other_options(capsys, weights, tmp_path):
    common = ["--weights", weights, "--out", tmp_path / "s", "num_samples=4", "steps=2", "progress=false"]
    assert sample.main([str(a) for a in common + ["seed=1"]]) == 0
    code, err = cli(capsys, sample.main, common + ["seed=2"])
    last_error(code, err, "already holds samples of a different run (seed: 1 on disk, 2 now)")


# -- evaluate -------------------------------------------------------------------------------------
def eval_args(tmp_path, samples, ref, *extra):
    return ["--samples", samples, "--ref", ref, "--extractor", "pixels", "--out", tmp_path / "r.json",
            "--no-ref-cache", *extra]


@pytest.mark.parametrize("extra,needle", [
    (["--pr-k", "0"], "--pr-k: got 0; must be >= 1"),
    (["--batch-size", "0"], "--batch-size: got 0; must be >= 1"),
    (["--num-samples", "0"], "--num-samples: got 0; must be >= 1"),
], ids=["pr-k-0", "batch-size-0", "num-samples-0"])
def test_evaluate_bad_numbers(capsys, tmp_path, extra, needle):
    imgs = images_npz(tmp_path / "a.npz")
    code, err = cli(capsys, evaluate.main, eval_args(tmp_path, imgs, imgs, *extra))
    last_error(code, err, needle)


def test_evaluate_samples_missing(capsys, tmp_path):
    imgs = images_npz(tmp_path / "a.npz")
    code, err = cli(capsys, evaluate.main, eval_args(tmp_path, tmp_path / "none.npz", imgs))
    last_error(code, err, f"--samples {tmp_path / 'none.npz'}: samples", "not found")


def test_evaluate_float_images(capsys, tmp_path):
    floats = images_npz(tmp_path / "f.npz", dtype=np.float32)
    code, err = cli(capsys, evaluate.main, eval_args(tmp_path, floats, images_npz(tmp_path / "a.npz")))
    last_error(code, err, "has dtype float32; the evaluator expects uint8 pixels")


def test_evaluate_npz_without_arr_0(capsys, tmp_path):
    other = images_npz(tmp_path / "o.npz", key="images")
    code, err = cli(capsys, evaluate.main, eval_args(tmp_path, other, images_npz(tmp_path / "a.npz")))
    last_error(code, err, "has no 'arr_0' array (it holds: images)")


def test_evaluate_statistics_only_reference_with_pixels(capsys, tmp_path):
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    code, err = cli(capsys, evaluate.main, eval_args(tmp_path, images_npz(tmp_path / "a.npz"), stats, "--no-pr"))
    line = last_error(code, err, "holds only Inception statistics (mu, sigma) and no images (arr_0)",
                      "pass --extractor inception")
    assert "neither" not in line


def test_evaluate_shapes_differ(capsys, tmp_path):
    a, b = images_npz(tmp_path / "a.npz"), images_npz(tmp_path / "b.npz", shape=(20, 16, 16, 1))
    code, err = cli(capsys, evaluate.main, eval_args(tmp_path, a, b))
    last_error(code, err, "holds images of shape (8, 8, 1) (H, W, C)", "of (16, 16, 1)")


def test_evaluate_out_is_a_folder(capsys, tmp_path):
    imgs = images_npz(tmp_path / "a.npz")
    args = eval_args(tmp_path, imgs, imgs)
    args[args.index("--out") + 1] = tmp_path
    code, err = cli(capsys, evaluate.main, args)
    last_error(code, err, f"--out {tmp_path}: is a directory; pass a file path")


def test_evaluate_missing_inception_weights(capsys, tmp_path):
    imgs = images_npz(tmp_path / "a.npz", shape=(4, 8, 8, 3))
    args = eval_args(tmp_path, imgs, imgs)
    args[args.index("pixels")] = "inception"
    code, err = cli(capsys, evaluate.main, args + ["--inception-weights", tmp_path / "inc.pth"])
    last_error(code, err, f"--inception-weights {tmp_path / 'inc.pth'}: Inception weights file not found")


# -- export and demo ----------------------------------------------------------------------------
def test_export_checkpoint_missing(capsys, tmp_path):
    code, err = cli(capsys, export.main, ["--checkpoint", tmp_path / "run", "--out", tmp_path / "w.pt"])
    last_error(code, err, f"--checkpoint {tmp_path / 'run'} does not exist")


def test_export_out_is_a_folder(capsys, tiny_run, tmp_path):
    code, err = cli(capsys, export.main, ["--checkpoint", tiny_run, "--out", tmp_path])
    last_error(code, err, f"--out {tmp_path}: is a directory; pass a file path")


def test_export_corrupt_config_yaml(capsys, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    step = os.path.realpath(run / os.readlink(run / "latest")) if os.path.islink(run / "latest") else None
    step = step or next(p for p in run.glob("step_*"))
    (run / os.path.basename(step) / "config.yaml").write_text("model: [unclosed\n")
    code, err = cli(capsys, export.main, ["--checkpoint", run / os.path.basename(step), "--out", tmp_path / "w.pt"])
    last_error(code, err, "config.yaml is not valid YAML")


@pytest.mark.parametrize("argv,needle", [
    (["--steps", "0"], "--steps: got 0; must be >= 1"),
    (["--cfg-scale", "nan"], "--cfg-scale: got nan; must be a finite number >= 0.0"),
    (["--num-samples", "-1"], "--num-samples: got -1; must be >= 1"),
], ids=["steps-0", "cfg-nan", "num-samples-neg"])
def test_demo_bad_options_fail_before_prep(capsys, tmp_path, argv, needle):
    code, err = cli(capsys, demo.main, ["--out", tmp_path / "demo", *argv])
    last_error(code, err, needle)
    assert not (tmp_path / "demo").exists()


def test_demo_out_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "demo"
    blocker.write_text("x")
    code, err = cli(capsys, demo.main, ["--out", blocker])
    last_error(code, err, f"--out {blocker}: exists and is not a directory")


# -- launch/check_inputs.py: the CLIs' own parsers and checks -------------------------------------
def check_inputs(*argv):
    from launch_helpers import REPO as repo

    proc = subprocess.run([sys.executable, CHECK, *map(str, argv)], capture_output=True, text=True,
                          timeout=120, cwd=repo, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return proc.returncode, proc.stdout, proc.stderr


def test_check_inputs_accepts_a_checkpoint_folder_for_sample_weights(tiny_run, tmp_path):
    code, out, err = check_inputs("sample", "--", "--weights", tiny_run, "--out", tmp_path / "s")
    assert code == 0, err
    assert f"[check] ok: sample {tiny_run}" in out


def test_check_inputs_says_what_the_cli_says(capsys, tmp_path):
    imgs = images_npz(tmp_path / "a.npz")
    args = eval_args(tmp_path, imgs, imgs, "--pr-k", "0")
    code, _, err = check_inputs("evaluate", "--", *args)
    cli_code, cli_err = cli(capsys, evaluate.main, args)
    assert code == cli_code == 2
    assert err.strip().splitlines()[-1] == "[check] " + last_error(cli_code, cli_err)


def test_check_inputs_train_yaml_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    code, _, err = check_inputs("train", "--", "--config", bad)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"[check] error: {bad} is not valid YAML")


# -- across the process boundary -----------------------------------------------------------------
@pytest.mark.parametrize("module,argv,needle", [
    ("dtr_scale.train", ["--config", "{tmp}"], "is a directory; pass the YAML file itself"),
    ("dtr_scale.evaluate", ["--samples", "{tmp}/x.npz", "--ref", "{tmp}/x.npz", "--out", "{tmp}/r.json"],
     "samples (.npz of NHWC uint8 images, or a folder of them) not found"),
    ("dtr_scale.prep", ["--source", "digits", "--vae", "none", "--out", "{tmp}/o", "--shard-size", "-3"],
     "--shard-size: got -3; must be >= 1"),
], ids=["train", "evaluate", "prep"])
def test_subprocess_exit_status_is_2(tmp_path, module, argv, needle):
    proc = run_module(module, [a.format(tmp=tmp_path) for a in argv], check=False, timeout=120)
    last_error(proc.returncode, proc.stderr, needle)


@pytest.mark.distributed
def test_two_ranks_a_data_error_on_one_rank_after_start_up(digits_shards, tmp_path):
    """data.mode=global: only rank 1 reads the NaN sample (global position 4 of step 0). Rank 1
    exits 2; rank 0, whose collective then fails, finds rank 1's message and exits 2 too,
    printing the one line."""
    data = copy_data(digits_shards, tmp_path)
    bad = int(EpochOrder(1797, 0).samples(np.arange(8))[4])
    shard, index = divmod(bad, 200)
    rewrite_shard(data, f"shard-{shard:06d}.tar", lambda i, k, f: nan_latent(f) if i == index else f)
    logs = tmp_path / "logs"
    args = ["--nproc_per_node=2", "--log-dir", str(logs), "--redirects", "3", "-m", "dtr_scale.train",
            *train_args(data, tmp_path / "run", "train.max_steps=2", "data.mode=global", "parallel.engine=ddp")]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", *args],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"), cwd=REPO)
    assert proc.returncode != 0
    errs = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert sorted(errs) == [0, 1], errs.keys()
    assert re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr) == ["2", "2"] or \
        proc.stderr.count("exitcode  : 2") == 2, proc.stderr[-3000:]
    needle = f"'{shard:06d}_{index:06d}' in shard"
    last_error(2, errs[0], needle, "non-finite", "global position 4, step 0")
    assert "Traceback" not in errs[1] and "error:" not in errs[1]  # one line, from rank 0


# -- the README's list of these messages ---------------------------------------------------------
def test_readme_messages_come_from_these_tests():
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme.split("### Input errors", 1)[1].split("\n## ", 1)[0]
    quoted = re.findall(r"`error: ([^`]+)`", section)
    assert len(quoted) >= 15
    # After the whole module: the lines the cases above printed. Run alone: what they expect.
    haystack = "\n".join(PRODUCED) if len(PRODUCED) >= 40 else open(__file__).read()
    for message in quoted:
        for fragment in (f.strip(" :") for f in message.split("...")):
            assert not fragment or fragment in haystack, f"README quotes {fragment!r}, which no case here produces"


def test_nan_checks_are_written_so_nan_fails():
    """The range predicates: NaN (which compares false to everything) is out of every range."""
    from dtr_scale.config import RANGES

    for key, (ok, _) in RANGES.items():
        try:
            assert not ok(math.nan), key
        except TypeError:  # integer keys: NaN cannot reach them (the config types it as int)
            pass
