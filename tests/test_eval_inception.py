"""The Inception path end to end on random weights saved to a file (no download)."""
import numpy as np
import pytest
import torch

from dtr_scale.file_hash import file_sha256
from dtr_scale.evaluation.inception import (
    SPATIAL_MODULE,
    TORCH_FIDELITY_WEIGHTS_URL,
    InceptionFeatureExtractor,
    InceptionWeightsError,
)
from dtr_scale.evaluation.random_weights import write_random_inception_weights

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("inception") / "random-inception.pth")
    write_random_inception_weights(path, seed=0)
    return path, file_sha256(path)


@pytest.fixture(scope="module")
def extractor(weights):
    path, digest = weights
    return InceptionFeatureExtractor(path, expected_sha256=digest)


def _images(n, size=32, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    # Smooth random images plus noise: distinct content per image, like real pictures.
    base = rng.integers(0, 256, (n, 4, 4, channels)).repeat(size // 4, 1).repeat(size // 4, 2)
    noise = rng.integers(-20, 21, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_features_have_adm_shapes_and_are_non_degenerate(extractor):
    out = extractor(_images(3))
    assert out["pool"].shape == (3, 2048)
    assert out["logits"].shape == (3, 1008)
    assert out["spatial"].shape == (3, 17 * 17 * 7)
    for name, feats in out.items():
        assert feats.dtype == torch.float32
        assert torch.isfinite(feats).all(), name
        # Different images → different features (the std over images is not ~0 anywhere-ish).
        assert (feats.std(dim=0) > 1e-6).float().mean() > 0.5, name
        assert feats.abs().max() > 0, name


def test_spatial_features_are_first_seven_channels_of_mixed_6d_in_nhwc_order(extractor):
    grabbed = {}
    handle = extractor.model.Mixed_6d.register_forward_hook(lambda m, i, o: grabbed.update(o=o.clone()))
    try:
        out = extractor(_images(2, seed=1))
    finally:
        handle.remove()
    block = grabbed["o"]  # (N, 768, 17, 17); its first 192 channels are branch1x1 (= TF mixed_6/conv)
    assert block.shape[1:] == (768, 17, 17)
    expected = block[:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(out["spatial"], expected)
    assert SPATIAL_MODULE == "Mixed_6d.branch1x1"


def test_grayscale_is_replicated_to_rgb_and_batching_is_consistent(extractor):
    gray = _images(2, channels=1, seed=2)
    out_gray = extractor(gray)
    out_rgb = extractor(np.repeat(gray, 3, axis=3))
    assert torch.equal(out_gray["pool"], out_rgb["pool"])
    # Features of an image do not depend on its batch-mates (eval mode, no batch statistics).
    single = extractor(np.repeat(gray, 3, axis=3)[:1])
    torch.testing.assert_close(single["pool"], out_rgb["pool"][:1], rtol=1e-4, atol=1e-5)


def test_tf32_is_off_after_construction(extractor):
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is False


def test_wrong_hash_is_refused(weights):
    path, digest = weights
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    with pytest.raises(InceptionWeightsError, match="does not match the expected"):
        InceptionFeatureExtractor(path, expected_sha256=wrong)
    # The default expectation is the official file's hash prefix, which random weights fail.
    with pytest.raises(InceptionWeightsError, match="6726825d"):
        InceptionFeatureExtractor(path)
    # A prefix of the right digest is accepted; a too-short one is a usage error.
    InceptionFeatureExtractor(path, expected_sha256=digest[:12])
    with pytest.raises(InceptionWeightsError, match="at least 8"):
        InceptionFeatureExtractor(path, expected_sha256=digest[:4])


def test_missing_file_says_where_to_put_it_and_where_to_get_it(tmp_path):
    missing = str(tmp_path / "nowhere" / "inception.pth")
    with pytest.raises(InceptionWeightsError) as err:
        InceptionFeatureExtractor(missing)
    msg = str(err.value)
    assert missing in msg and TORCH_FIDELITY_WEIGHTS_URL in msg and "--inception-weights" in msg
