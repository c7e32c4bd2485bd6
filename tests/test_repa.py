"""REPA's alignment term (dtr_scale/objective/repa.py): the loss is REPA's formula, it trains, the
data carries the latent's own flip of the image, and bad REPA input fails before training."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dtr_scale.config import ConfigError, load_config
from dtr_scale.errors import UserError
from dtr_scale.objective import build_objective, dit_from_config
from repa_helpers import repa_overrides, tiny_encoder_file

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return tiny_encoder_file(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    from launch_helpers import run_module

    out = tmp_path_factory.mktemp("digits_images")
    run_module("dtr_scale.prep", ["--source", "digits", "--vae", "none", "--out", str(out), "--shard-size", "200",
                                  "--no-progress", "--store-images"])
    return str(out)


def tiny(encoder_file, objective="ddpm", extra=()):
    cfg = load_config(None, ["model.input_size=16", "model.in_channels=1", "model.num_classes=10",
                             "model.routing.sharing_ratio=0.8", f"diffusion.objective={objective}",
                             *repa_overrides(encoder_file), *extra])
    torch.manual_seed(0)
    return cfg, build_objective(cfg, dit_from_config(cfg))


def repa_by_hand(objective, encoder_file, x, t, y, noise, drop, images, k):
    """REPA's loss.py on the tokens after block k taken by a forward hook, features from timm's
    ViT loaded here directly, preprocessed as REPA's preprocess_raw_image (÷255, ImageNet
    mean/std, bicubic resize to grid × 14): per sample the token mean of −cos, summed, ÷ batch."""
    from safetensors.torch import load_file

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True,
                            depth=2, embed_dim=64, num_heads=1, img_size=112)
    vit.load_state_dict(load_file(encoder_file))
    vit.eval()
    raw = images.float().expand(-1, 3, -1, -1) / 255.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    raw = F.interpolate((raw - mean) / std, size=(112, 112), mode="bicubic")
    with torch.no_grad():
        z = vit.forward_features(raw)[:, 1:]
    kept = []
    handle = objective.dit.blocks[k - 1].register_forward_hook(lambda m, i, o: kept.append(o))
    repa, objective.repa = objective.repa, None
    try:
        base, _ = objective(x, t, y, noise, drop)  # the plain objective; the hook keeps block k's output
    finally:
        objective.repa = repa
        handle.remove()
    z_tilde = repa.projector(kept[0])
    proj = 0.0
    for z_j, zt_j in zip(z, z_tilde):
        proj = proj + (-(F.normalize(z_j, dim=-1) * F.normalize(zt_j, dim=-1)).sum(dim=-1)).mean()
    return base + 0.5 * proj / len(x), proj / len(x)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_loss_is_repas_formula(encoder_file, objective):
    cfg, obj = tiny(encoder_file, objective)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 16, 16, generator=gen)
    y = torch.tensor([0, 3, 5, 9])
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8, generator=gen)
    t = obj.sample_timesteps(4, gen)
    noise = torch.randn(x.shape, generator=gen)
    drop = torch.zeros(4, dtype=torch.bool)
    expected, proj = repa_by_hand(obj, encoder_file, x, t, y, noise, drop, images, cfg.repa.depth)
    loss, _ = obj(x, t, y, noise, drop, images)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert abs(proj.item()) > 1e-4  # the term is there: the check would see it missing
    names = [n for n, _ in obj.named_parameters() if n.startswith("repa.")]
    assert names and all(n.startswith("repa.projector.") for n in names)  # the encoder is no submodule
    grouped = {id(p) for g in obj.param_groups(1e-4, 0.0) for p in g["params"]}
    assert all(id(p) in grouped for p in obj.repa.parameters())


def test_the_loss_falls_for_a_routed_dit_with_repa(encoder_file, image_shards):
    from dtr_scale.data import LatentLoader
    from dtr_scale.randomness import rank_streams, training_inputs

    _, obj = tiny(encoder_file, "flow")
    assert obj.dit.router is not None
    batch = next(iter(LatentLoader(image_shards, 8, seed=0, images=True, shuffle_buffer=0, random_flip=True)))
    opt = torch.optim.Adam(obj.parameters(), lr=1e-3)
    losses, aligns = [], []
    for _ in range(8):
        x, y, t, noise, drop, images = training_inputs(obj, batch, *rank_streams(0, 0), 0, torch.device("cpu"))
        loss, _ = obj(x, t, y, noise, drop, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        with torch.no_grad():
            _, hidden = obj.dit(x, t, y, force_drop=drop, hidden_at=obj.repa.depth)
            aligns.append(obj.repa(hidden, images, obj.dit.x_embedder.grid_size).mean().item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert aligns[-1] < aligns[0] - 0.05, aligns  # the alignment itself improves, not only the MSE


def test_stored_images_follow_the_latents_flip(image_shards):
    from dtr_scale.data import LatentLoader

    loader = LatentLoader(image_shards, 32, seed=3, images=True, random_flip=True, shuffle_buffer=0)
    x, y, images = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (32, 1, 16, 16)
    assert json.load(open(os.path.join(image_shards, "dataset.json")))["image_shape"] == [1, 16, 16]
    # pixel mode: the latent is the image in [-1, 1], so each latent names the flip it drew
    back = (x + 1) * 127.5
    assert (back - images.float()).abs().max() < 0.5 + 255 * 1e-3  # float16 storage of the latent
    mirrored = (back - images.float().flip(-1)).abs().amax(dim=(1, 2, 3))
    assert (mirrored > 10).any()  # some samples are asymmetric enough that a wrong flip would show
    plain = LatentLoader(image_shards, 32, seed=3, images=False, random_flip=True, shuffle_buffer=0)
    x2, y2 = next(iter(plain))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # images on changes no draw


def check(argv):
    from dtr_scale.train import check_inputs, parse_args

    return check_inputs(parse_args(argv))


def argv(data, run_dir, *overrides):
    from launch_helpers import TINY_CONFIG

    return ["--config", TINY_CONFIG, f"data.path={data}", f"checkpoint.dir={run_dir}", *overrides]


def test_bad_repa_input_names_the_key_or_file(encoder_file, image_shards, digits_shards, tmp_path):
    run = str(tmp_path / "run")
    ok = repa_overrides(encoder_file)
    assert check(argv(image_shards, run, *ok)).repa.enabled
    with pytest.raises(UserError, match=r"data.path=.*prepped without --store-images"):
        check(argv(digits_shards, run, *ok))
    with pytest.raises(UserError, match=r"repa.encoder_weights=.*missing.safetensors: encoder weights not found.*huggingface"):
        check(argv(image_shards, run, *ok, f"repa.encoder_weights={tmp_path}/missing.safetensors"))
    with pytest.raises(UserError, match=r"holds a ViT of depth 2, width 64.*repa.encoder=dinov2-vit-b is depth 12"):
        check(argv(image_shards, run, *ok, "repa.encoder=dinov2-vit-b"))
    foreign = str(tmp_path / "foreign.safetensors")
    from safetensors.torch import save_file
    save_file({"weight": torch.zeros(2, 2)}, foreign)
    with pytest.raises(UserError, match=r"foreign.safetensors: not a DINOv2 ViT"):
        check(argv(image_shards, run, *ok, f"repa.encoder_weights={foreign}"))
    with pytest.raises(UserError, match=r"does not match repa.encoder_sha256=deadbeef"):
        check(argv(image_shards, run, *ok, "repa.encoder_sha256=deadbeef"))
    with pytest.raises(ConfigError, match=r"repa.depth=7: DiT-T/2 has 6 blocks"):
        check(argv(image_shards, run, *ok, "repa.depth=7"))
    assert check(argv(image_shards, run, *ok, "data.mode=global")).data.mode == "global"  # REPA reads images there too
    with pytest.raises(ConfigError, match=r"repa.encoder_weights: not set"):
        check(argv(image_shards, run, "repa.enabled=true", "repa.depth=3"))
    with pytest.raises(ConfigError, match=r"repa.coeff"):
        check(argv(image_shards, run, *ok, "repa.coeff=nan"))


def test_image_pairs_are_the_crop_and_its_mirror():
    from dtr_scale.data.encode_job import image_pair

    crop = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # HWC
    pair = image_pair(crop)
    assert pair.shape == (2, 3, 2, 3) and np.array_equal(pair[0], crop.transpose(2, 0, 1))
    assert np.array_equal(pair[1], crop.transpose(2, 0, 1)[..., ::-1])
