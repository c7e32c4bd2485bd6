"""prep: digits pixel mode, a tiny random VAE on an imagefolder, tar sources, resume, errors.

Shards are read back here with the standard library's tarfile, independently of the loader.
"""
import io
import json
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_scale.data import read_manifest
from dtr_scale.data.image_transforms import center_crop_arr
from dtr_scale.prep import main as prep_main


def read_tar(path):
    """{key: {field: bytes}} in member order, via plain tarfile."""
    samples = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, field = m.name.split(".", 1)
            samples.setdefault(key, {})[field] = tar.extractfile(m).read()
    return samples


def npy(data):
    return np.load(io.BytesIO(data))


def read_all(out):
    man = read_manifest(out)
    rows = []
    for s in man.shards:
        for key, fields in read_tar(out / s.name).items():
            rows.append((key, fields))
    return man, rows


def adm_crop_reference(img, res):
    """ADM center_crop_arr written out from its definition (oracle for our implementation)."""
    w, h = img.size
    while min(w, h) >= 2 * res:
        img = img.resize((w // 2, h // 2), resample=Image.BOX)
        w, h = img.size
    s = res / min(w, h)
    img = img.resize((round(w * s), round(h * s)), resample=Image.BICUBIC)
    a = np.asarray(img)
    y0, x0 = (a.shape[0] - res) // 2, (a.shape[1] - res) // 2
    return a[y0:y0 + res, x0:x0 + res]


@pytest.mark.parametrize("size", [(1100, 700), (700, 1100), (50, 33), (256, 256), (8, 8)])
def test_center_crop_follows_adm(size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = center_crop_arr(img, 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, adm_crop_reference(img, 32))


def test_digits_pixel_mode_roundtrip(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = tmp_path / "d8"
    assert prep_main(["--source", "digits", "--vae", "none", "--out", str(out), "--resolution", "8",
                      "--shard-size", "400", "--no-progress"]) == 0
    man, rows = read_all(out)
    assert man.num_samples == 1797 and man.num_classes == 10 and len(man.shards) == 5
    assert man.latent_shape == (1, 8, 8) and man.scale_factor == 1.0 and man.field == "latent.npy"
    assert [s.count for s in man.shards] == [400, 400, 400, 400, 197]
    assert len(rows) == 1797
    for i, (key, fields) in enumerate(rows):
        lat = npy(fields["latent.npy"])
        assert lat.shape == (2, 1, 8, 8) and lat.dtype == np.float16
        # At 8x8 nothing is resampled: the stored image is the digit itself scaled to [-1, 1].
        expect = np.rint(digits.images[i] * 255 / 16) / 127.5 - 1
        np.testing.assert_allclose(lat[0, 0].astype(np.float64), expect, atol=1e-3)
        np.testing.assert_array_equal(lat[1], lat[0][..., ::-1])   # the flip entry is the mirror
        assert int(fields["cls"]) == digits.target[i]


def test_digits_default_resolution_is_bicubic_16(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = tmp_path / "d16"
    prep_main(["--source", "digits", "--vae", "none", "--out", str(out), "--no-progress"])
    man, rows = read_all(out)
    assert man.latent_shape == (1, 16, 16) and man.resolution == 16 and man.num_samples == 1797
    for i in (0, 1, 500, 1796):
        img = Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8), mode="L")
        up = np.asarray(img.resize((16, 16), resample=Image.BICUBIC)) / 127.5 - 1
        lat = npy(rows[i][1]["latent.npy"])
        np.testing.assert_allclose(lat[0, 0].astype(np.float64), up, atol=1e-3)
        np.testing.assert_array_equal(lat[1], lat[0][..., ::-1])


def _tiny_vae(path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        block_out_channels=(8, 16), layers_per_block=1, sample_size=32,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(path)
    return vae.eval()


def test_tiny_vae_imagefolder_end_to_end(tmp_path):
    vae = _tiny_vae(tmp_path / "vae")
    rng = np.random.default_rng(1)
    root = tmp_path / "images"
    files = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for j, (w, h) in enumerate([(48, 40), (33, 50), (80, 64)]):
            p = root / cls / f"img.{j}.png"   # dots in names must not leak into shard keys
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
            files.append((p, 0 if cls == "cat" else 1))
    out = tmp_path / "latents"
    assert prep_main(["--source", f"imagefolder:{root}", "--vae", str(tmp_path / "vae"),
                      "--out", str(out), "--resolution", "32", "--shard-size", "4",
                      "--batch-size", "3", "--no-progress"]) == 0
    man, rows = read_all(out)
    assert man.num_samples == 6 and man.num_classes == 2 and man.field == "moments.npy"
    assert man.latent_shape == (4, 16, 16) and man.scale_factor == pytest.approx(0.18215)
    assert man.vae["name"] == str(tmp_path / "vae") and len(man.vae["config_sha256"]) == 64
    for (path, cls), (key, fields) in zip(files, rows):
        crop = adm_crop_reference(Image.open(path).convert("RGB"), 32)
        x = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            d = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist
        moments = npy(fields["moments.npy"])
        assert moments.shape == (2, 2, 4, 16, 16) and moments.dtype == np.float16
        expect = torch.stack([torch.stack([d.mean[0], d.std[0]]),
                              torch.stack([d.mean[1], d.std[1]])]).numpy()
        np.testing.assert_allclose(moments.astype(np.float32), expect, rtol=2e-3, atol=2e-3)
        assert int(fields["cls"]) == cls and "." not in key


def test_missing_vae_is_a_clear_error(tmp_path, capsys):
    # One line and exit 2 (see test_bad_input.py for the error path itself).
    assert prep_main(["--source", "digits", "--vae", str(tmp_path / "no_vae_here"),
                      "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert re.search("does not exist.*save_pretrained", capsys.readouterr().err)
    assert prep_main(["--source", "digits", "--vae", "nobody-xyz/no-such-vae",
                      "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert re.search("not available locally.*--allow-download", capsys.readouterr().err)


def test_tar_source_one_shard_per_input_tar(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(2)
    for t in range(2):
        with wds.TarWriter(str(tmp_path / f"in-{t}.tar")) as w:
            for j in range(3):
                img = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
                w.write({"__key__": f"s{t}_{j}", "png": img, "cls": 3 * t + j})
    out = tmp_path / "o"
    prep_main(["--source", f"tar:{tmp_path}/in-*.tar", "--vae", "none", "--out", str(out),
               "--resolution", "16", "--no-progress"])
    man, rows = read_all(out)
    assert [s.count for s in man.shards] == [3, 3] and man.num_classes == 6
    assert [int(f["cls"]) for _, f in rows] == [0, 1, 2, 3, 4, 5]
    assert man.latent_shape == (3, 16, 16)


def test_interrupted_prep_resumes_byte_identical(tmp_path):
    args = ["--source", "digits", "--vae", "none", "--shard-size", "300", "--no-progress"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    prep_main(args + ["--out", str(full)])
    # Crash after 2 shards, and leave a half-written temp file behind as a real crash would.
    prep_main(args + ["--out", str(crashed), "--max-shards-this-run", "2"])
    assert not (crashed / "dataset.json").exists()
    assert sorted(p.name for p in crashed.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    (crashed / ".shard-000002.tar.partial").write_bytes(b"garbage from a crash")
    prep_main(args + ["--out", str(crashed)])
    names = sorted(p.name for p in full.glob("shard-*.tar"))
    assert names == sorted(p.name for p in crashed.glob("shard-*.tar")) and len(names) == 6
    for n in names + ["dataset.json"]:
        assert (full / n).read_bytes() == (crashed / n).read_bytes(), n
    assert not list(crashed.glob(".*.partial"))
    # A rerun on finished output changes nothing.
    before = (crashed / "dataset.json").read_bytes()
    prep_main(args + ["--out", str(crashed)])
    assert (crashed / "dataset.json").read_bytes() == before


def test_resume_with_different_arguments_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    prep_main(["--source", "digits", "--vae", "none", "--out", str(out), "--max-shards-this-run", "1",
               "--no-progress"])
    assert prep_main(["--source", "digits", "--vae", "none", "--out", str(out), "--resolution", "8",
                      "--no-progress"]) == 2
    assert re.search("different prep run.*resolution", capsys.readouterr().err)
    assert json.loads((out / "_progress" / "prep.json").read_text())["resolution"] == 16
