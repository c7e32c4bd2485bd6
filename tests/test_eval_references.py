"""Image readers (.npz stored/compressed, folders) and ADM reference batches, plus the cache."""
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_scale.errors import UserError
from dtr_scale.evaluation.extractors import build_extractor
from dtr_scale.evaluation.image_sources import NpzImages, open_images
from dtr_scale.evaluation.pipeline import compute_metrics, extract, prepare_reference
from dtr_scale.evaluation.references import (
    ReferenceSet,
    cache_file,
    decode_latent_shards_reference,
    load_reference_cache,
    open_reference_images,
    read_adm_statistics,
    reference_fingerprint,
    save_reference_cache,
)
from dtr_scale.evaluation.statistics import GaussianStats, gaussian_from_features

torch.set_num_threads(1)


def _imgs(n, h=6, w=5, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_npz_slices_equal_the_array(tmp_path, saver):
    arr = _imgs(37)
    path = str(tmp_path / "x.npz")
    saver(path, arr)
    reader = open_images(path)
    stored = zipfile.ZipFile(path).getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
    assert (reader._memmap is not None) == stored  # uncompressed members are memory-mapped
    assert reader.shape == arr.shape and len(reader) == 37
    # Sequential slices (the streaming fast path), then a backward jump.
    got = np.concatenate([reader.read(s, min(s + 10, 37)) for s in range(0, 37, 10)])
    assert np.array_equal(got, arr)
    assert np.array_equal(reader.read(3, 9), arr[3:9])


def test_grayscale_npz_gets_a_channel_axis(tmp_path):
    arr = _imgs(4, c=3)[..., 0]
    np.savez(tmp_path / "g.npz", arr)
    r = open_images(str(tmp_path / "g.npz"))
    assert r.shape == (4, 6, 5, 1) and np.array_equal(r.read(0, 4)[..., 0], arr)


def test_bad_npz_inputs_have_clear_errors(tmp_path):
    np.savez(tmp_path / "f.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        NpzImages(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "nchw.npz", np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        NpzImages(str(tmp_path / "nchw.npz"))
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(UserError, match="no 'arr_0' array.*images"):
        NpzImages(str(tmp_path / "k.npz"))


def test_folders_of_pngs_and_of_npz_shards(tmp_path):
    arr = _imgs(5, seed=3)
    (tmp_path / "png" / "sub").mkdir(parents=True)
    for i, im in enumerate(arr):
        Image.fromarray(im).save(tmp_path / "png" / ("sub" if i > 2 else "") / f"{i:03d}.png")
    r = open_images(str(tmp_path / "png"))
    # Sorted by relative path: 000, 001, 002, then sub/003, sub/004.
    assert np.array_equal(r.read(0, 5), arr)
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "part-0.npz", arr[:2])
    np.savez_compressed(tmp_path / "shards" / "part-1.npz", arr[2:])
    r = open_images(str(tmp_path / "shards"))
    assert len(r) == 5 and np.array_equal(r.read(1, 4), arr[1:4])


def _write_adm_reference(path, images, stats_pool, stats_spatial):
    # Key layout of ADM's VIRTUAL_*.npz reference batches.
    np.savez(path, arr_0=images, mu=stats_pool.mu, sigma=stats_pool.sigma,
             mu_s=stats_spatial.mu, sigma_s=stats_spatial.sigma)


def test_adm_reference_batch_is_read(tmp_path):
    rng = np.random.default_rng(4)
    pool = gaussian_from_features(rng.standard_normal((50, 2048)))
    spatial = gaussian_from_features(rng.standard_normal((50, 2023)))
    path = str(tmp_path / "VIRTUAL_ref.npz")
    images = _imgs(6, 8, 8)
    _write_adm_reference(path, images, pool, spatial)
    stats = read_adm_statistics(path)
    assert set(stats) == {"mu", "sigma", "mu_s", "sigma_s"}
    np.testing.assert_array_equal(stats["sigma_s"], spatial.sigma)
    assert np.array_equal(open_images(path).read(0, 6), images)  # arr_0 serves as the P/R reference
    assert read_adm_statistics(str(tmp_path / "nope.txt")) is None


def test_pixels_reference_ignores_inception_stats_and_uses_the_cache(tmp_path):
    rng = np.random.default_rng(5)
    ref_imgs, smp_imgs = _imgs(40, 4, 4, seed=6), _imgs(30, 4, 4, seed=7)
    fake = gaussian_from_features(rng.standard_normal((10, 2048)))
    ref_path = str(tmp_path / "ref.npz")
    _write_adm_reference(ref_path, ref_imgs, fake, fake)
    ex = build_extractor("pixels")
    cache = str(tmp_path / "cache")
    ref = prepare_reference(ref_path, ex, batch_size=7, cache_dir=cache)
    assert ref.source == "images" and "ignored" in ref.info["note"] and not ref.info["cache_hit"]
    # The extractor's features are float32 (as Inception's are); the statistics are float64.
    direct = gaussian_from_features(ref_imgs.reshape(40, -1).astype(np.float32) / np.float32(255))
    np.testing.assert_allclose(ref.pool.mu, direct.mu, rtol=1e-12)
    np.testing.assert_allclose(ref.pool.sigma, direct.sigma, rtol=1e-9, atol=1e-14)
    again = prepare_reference(ref_path, ex, batch_size=7, cache_dir=cache)
    assert again.info["cache_hit"]
    assert np.array_equal(again.features, ref.features) and np.array_equal(again.pool.sigma, ref.pool.sigma)
    # The metrics from the cached reference are the metrics from the fresh one.
    smp = extract(open_images(_save(tmp_path / "s.npz", smp_imgs)), ex, 8)
    assert compute_metrics(smp, again) == compute_metrics(smp, ref)


def _save(path, arr):
    np.savez(path, arr)
    return str(path)


def test_cache_key_depends_on_content_and_extractor(tmp_path):
    a, b = _save(tmp_path / "a.npz", _imgs(3)), _save(tmp_path / "b.npz", _imgs(3, seed=9))
    ident = {"name": "pixels"}
    fa, fb = reference_fingerprint(a), reference_fingerprint(b)
    assert fa != fb
    assert cache_file("c", fa, ident) != cache_file("c", fa, {"name": "inception", "weights_sha256": "x"})
    # The weights' location is not part of the key, their hash is.
    assert cache_file("c", fa, {**ident, "weights_path": "/x"}) == cache_file("c", fa, {**ident, "weights_path": "/y"})


def test_cache_round_trip_is_atomic(tmp_path):
    ref = ReferenceSet(pool=GaussianStats(np.ones(3), np.eye(3), 7), spatial=None,
                       features=np.arange(6, dtype=np.float32).reshape(2, 3), source="images", info={"k": 1})
    path = str(tmp_path / "c" / "x.npz")
    save_reference_cache(path, ref)
    assert os.listdir(tmp_path / "c") == ["x.npz"]  # no temp file left behind
    back = load_reference_cache(path)
    assert back.pool.count == 7 and back.spatial is None and back.info == {"k": 1}
    assert np.array_equal(back.features, ref.features)


def test_pixel_mode_shards_are_a_reference(digits_shards):
    # The embedded digits prepped by the data pipeline (pixel mode): images come back as uint8.
    import tarfile

    reader = open_reference_images(digits_shards)
    manifest = json.loads(open(os.path.join(digits_shards, "dataset.json")).read())
    c, h, w = manifest["latent_shape"]
    assert reader.shape == (manifest["num_samples"], h, w, c)
    first = reader.read(0, 3)
    assert first.dtype == np.uint8 and first.max() > first.min()
    # Sample 0 decoded by hand from the first shard: [-1, 1] → [0, 255], flip 0, CHW → HWC.
    with tarfile.open(os.path.join(digits_shards, manifest["shards"][0]["name"])) as tar:
        member = next(m for m in tar if m.name.endswith(".latent.npy"))
        latent = np.load(io.BytesIO(tar.extractfile(member).read()))[0].astype(np.float32)
    assert np.array_equal(first[0], np.round((latent + 1) * 127.5).astype(np.uint8).transpose(1, 2, 0))
    # Reads across a shard boundary agree with reads inside shards.
    n0 = manifest["shards"][0]["count"]
    assert np.array_equal(reader.read(n0 - 2, n0 + 2), np.concatenate([reader.read(n0 - 2, n0), reader.read(n0, n0 + 2)]))
    ref = prepare_reference(digits_shards, build_extractor("pixels"), batch_size=256)
    assert ref.pool.count == manifest["num_samples"] and ref.features.shape == (manifest["num_samples"], c * h * w)


def test_vae_shards_decoded_as_reference(tmp_path):
    """VAE-mode prep output is decoded with the VAE its manifest names (posterior mean, flip 0)."""
    import torch
    from PIL import Image

    from dtr_scale.data.manifest import read_manifest
    from dtr_scale.prep import main as prep_main
    from dtr_scale.sampling.decode import to_uint8
    from test_data_prep import _tiny_vae, npy, read_all

    vae = _tiny_vae(tmp_path / "vae")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img" / cls / f"{j}.png")
    out = tmp_path / "latents"
    assert prep_main(["--source", f"imagefolder:{tmp_path / 'img'}", "--vae", str(tmp_path / "vae"), "--out", str(out),
                      "--resolution", "32", "--shard-size", "4", "--no-progress"]) == 0
    reader = decode_latent_shards_reference(str(out))
    assert reader.shape == (6, 32, 32, 3) and len(reader) == 6
    _, rows = read_all(out)
    means = torch.from_numpy(np.stack([npy(f["moments.npy"])[0, 0] for _, f in rows]).astype(np.float32))
    with torch.no_grad():
        expected = to_uint8(vae.decode(means).sample)
    np.testing.assert_array_equal(reader.read(0, 6), expected)
    np.testing.assert_array_equal(reader.read(3, 5), expected[3:5])  # across the shard boundary
    ref = prepare_reference(str(out), build_extractor("pixels"), batch_size=4)
    assert ref.pool.count == 6
    # a reference whose VAE is gone is a clear error, not a download
    doc = json.loads((out / "dataset.json").read_text())
    doc["vae"]["name"] = str(tmp_path / "missing-vae")
    (out / "dataset.json").write_text(json.dumps(doc))
    assert read_manifest(out).vae["name"].endswith("missing-vae")
    with pytest.raises(FileNotFoundError, match="missing-vae"):
        decode_latent_shards_reference(str(out))

