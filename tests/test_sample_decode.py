"""Decoding latents with a local diffusers VAE: the data's scale/shift are inverted, the output is
RGB NHWC uint8 at the VAE's resolution, and a missing VAE is a clear error."""
import os

import numpy as np
import pytest
import torch

from dtr_scale.export import write_weights
from dtr_scale.models import create_model
from dtr_scale.models.pretrained import EXPORT_FORMAT
from dtr_scale.sample import main
from dtr_scale.sampling import PixelDecoder, VaeDecoder, make_decoder, to_uint8

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny AutoencoderKL (2× downsampling, 4 latent channels) saved as clusters keep one."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 8), norm_num_groups=4, sample_size=16)
    path = str(tmp_path_factory.mktemp("vae") / "tiny-vae")
    vae.save_pretrained(path)
    return path


def test_vae_decoder_inverts_the_data_scale_and_shift(vae_dir):
    meta = {"data": {"vae": {"name": vae_dir}, "scale_factor": 0.5, "shift_factor": 0.1}}
    decoder = make_decoder(None, meta, device=torch.device("cpu"))
    assert isinstance(decoder, VaeDecoder) and decoder.scale_factor == 0.5 and decoder.shift_factor == 0.1
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = decoder.vae.decode(z / 0.5 + 0.1).sample  # training stored z = (latent - shift) * scale
    torch.testing.assert_close(decoder(z), expected)
    assert to_uint8(decoder(z)).shape == (2, 16, 16, 3)


def test_vae_none_overrides_metadata_and_missing_vae_is_explained(vae_dir, tmp_path):
    meta = {"data": {"vae": {"name": vae_dir}, "scale_factor": 0.5}}
    assert isinstance(make_decoder("none", meta, device=torch.device("cpu")), PixelDecoder)
    with pytest.raises(ValueError, match="names no VAE.*vae=none"):
        make_decoder(None, {}, device=torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="does not exist.*save_pretrained"):
        make_decoder(str(tmp_path / "gone"), meta, device=torch.device("cpu"))


def test_cli_latent_model_with_vae_writes_rgb_images(vae_dir, tmp_path):
    torch.manual_seed(0)
    model = create_model("DiT-T/2", input_size=8, in_channels=4, num_classes=5)
    meta = {"format": EXPORT_FORMAT,
            "model": {"name": "DiT-T/2", "input_size": 8, "in_channels": 4, "num_classes": 5,
                      "learn_sigma": True, "class_dropout_prob": 0.1},
            "routing": None, "step": 0, "diffusion": {"schedule": "linear", "steps": 1000},
            "data": {"vae": {"name": vae_dir}, "scale_factor": 0.18215, "shift_factor": 0.0}}
    weights, _ = write_weights(model, meta, str(tmp_path / "latent.pt"))
    out = str(tmp_path / "out")
    assert main(["--weights", weights, "--out", out, "num_samples=3", "steps=2", "cfg_channels=3",
                 "cfg_scale=4.0", "progress=false"]) == 0
    images = np.load(os.path.join(out, "samples.npz"))["arr_0"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
