"""Weights in the official DiT / DTR layouts load strictly; mismatches name their keys."""
import pytest
import torch

from dtr_scale.models import RoutingConfig, create_model, dtr_mask_table, load_pretrained, official_state_dict

import reference_dit as ref

DEPTH, C, HEADS, P, IN, CLASSES, SIZE = 6, 128, 4, 4, 4, 10, 16  # DiT-T/4 on 16×16 latents


def official_dit_state_dict(seed=0):
    """Keys and shapes as written by the official DiT training script (timm Attention/Mlp,
    Conv2d patch embed, learn_sigma=True, a null class row for CFG), filled at random."""
    gen = torch.Generator().manual_seed(seed)
    L, out = (SIZE // P) ** 2, 2 * IN
    shapes = {
        "pos_embed": (1, L, C),
        "x_embedder.proj.weight": (C, IN, P, P),
        "x_embedder.proj.bias": (C,),
        "t_embedder.mlp.0.weight": (C, 256),
        "t_embedder.mlp.0.bias": (C,),
        "t_embedder.mlp.2.weight": (C, C),
        "t_embedder.mlp.2.bias": (C,),
        "y_embedder.embedding_table.weight": (CLASSES + 1, C),
        "final_layer.linear.weight": (P * P * out, C),
        "final_layer.linear.bias": (P * P * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * C, C),
        "final_layer.adaLN_modulation.1.bias": (2 * C,),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.qkv.weight": (3 * C, C), b + "attn.qkv.bias": (3 * C,),
            b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
            b + "mlp.fc1.weight": (4 * C, C), b + "mlp.fc1.bias": (4 * C,),
            b + "mlp.fc2.weight": (C, 4 * C), b + "mlp.fc2.bias": (C,),
            b + "adaLN_modulation.1.weight": (6 * C, C), b + "adaLN_modulation.1.bias": (6 * C,),
        })
    return {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}


def model(routing=None):
    return create_model("DiT-T/4", input_size=SIZE, in_channels=IN, num_classes=CLASSES,
                        routing=routing, attention="math").eval()


def batch():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(4, IN, SIZE, SIZE, generator=gen), torch.tensor([0, 300, 700, 999]), torch.tensor([1, 2, 3, 10])


def test_official_dit_layout_loads_strictly():
    sd = official_dit_state_dict()
    for routing in (None, RoutingConfig(0.8)):
        m = load_pretrained(model(routing), sd)
        ours = official_state_dict(m)
        assert ours.keys() == sd.keys()
        for k in sd:
            assert torch.equal(ours[k], sd[k]), k


def test_official_dtr_checkpoint_masks_verified():
    sd = official_dit_state_dict()
    table = dtr_mask_table(1000, C, 0.8, 4.0).float()
    for i in range(DEPTH):
        sd[f"blocks.{i}.routing._unit_mapping"] = table.clone()
    m = load_pretrained(model(RoutingConfig(0.8)), sd)
    assert m.router.shared and torch.equal(m.router.masks[0].float(), table)


def test_official_dtr_random_masks_adopted_and_used():
    sd = official_dit_state_dict()
    gen = torch.Generator().manual_seed(9)
    tables = []
    for i in range(DEPTH):
        t = torch.zeros(1000, C)
        idx = torch.rand(1000, C, generator=gen).argsort(1)[:, : int(C * 0.5)]
        t.scatter_(1, idx, 1.0)
        tables.append(t)
        sd[f"blocks.{i}.routing._unit_mapping"] = t
    m = load_pretrained(model(RoutingConfig(0.5, init="random", seed=0)), sd)
    assert not m.router.shared
    x, t, y = batch()
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, y), ref.forward(m, x, t, y, tables), rtol=1e-5, atol=1e-5)
    # our own state dict carries the adopted masks, so a resumed model keeps them
    again = load_pretrained(model(RoutingConfig(0.5, init="random", seed=0)), m.state_dict())
    assert torch.equal(again.router.masks, m.router.masks)


@pytest.mark.parametrize("routing", [None, RoutingConfig(1.0)], ids=["routing=None", "beta=1"])
def test_all_ones_dtr_masks_load_into_a_plain_dit(routing):
    """The reference code trained with sharing_ratio = 1.0 saves all-ones masks: a plain DiT."""
    sd = official_dit_state_dict()
    plain = load_pretrained(model(None), sd)
    for i in range(DEPTH):
        sd[f"blocks.{i}.routing._unit_mapping"] = torch.ones(1000, C)
    m = load_pretrained(model(routing), sd)
    assert m.router is None
    assert torch.equal(m(*batch()), plain(*batch()))


def test_routed_dtr_masks_into_plain_model_name_the_keys():
    sd = official_dit_state_dict()
    table = dtr_mask_table(1000, C, 0.8, 4.0).float()
    for i in range(DEPTH):
        sd[f"blocks.{i}.routing._unit_mapping"] = table.clone() if i in (1, 4) else torch.ones(1000, C)
    with pytest.raises(ValueError, match=r"blocks\.1\.routing\._unit_mapping, blocks\.4\.routing\._unit_mapping "
                                         r"are not all ones.*without routing"):
        load_pretrained(model(None), sd)
    sd = official_dit_state_dict()
    sd[f"blocks.{DEPTH}.routing._unit_mapping"] = torch.ones(1000, C)  # a block the model lacks
    with pytest.raises(ValueError, match=rf"blocks\.{DEPTH}\.routing\._unit_mapping"):
        load_pretrained(model(None), sd)


def test_wrong_shape_names_the_key():
    sd = official_dit_state_dict()
    sd["blocks.3.attn.qkv.weight"] = torch.zeros(3 * C, C + 1)
    with pytest.raises(ValueError, match=r"blocks\.3\.attn\.qkv\.weight"):
        load_pretrained(model(None), sd)


def test_missing_and_unexpected_keys_named():
    sd = official_dit_state_dict()
    del sd["final_layer.linear.bias"]
    sd["blocks.9.attn.qkv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: final_layer\.linear\.bias.*unexpected keys: blocks\.9"):
        load_pretrained(model(None), sd)


def test_wrong_mask_table_shape_named():
    sd = official_dit_state_dict()
    for i in range(DEPTH):
        sd[f"blocks.{i}.routing._unit_mapping"] = torch.ones(250, C)
    with pytest.raises(ValueError, match="_unit_mapping"):
        load_pretrained(model(RoutingConfig(0.8)), sd)


def test_files_and_wrapper_prefixes(tmp_path):
    sd = official_dit_state_dict()
    # DiT's training checkpoints: {"model", "ema", "opt", "args"}; the EMA weights are used.
    torch.save({"model": {k: v * 0 for k, v in sd.items()}, "ema": sd, "opt": {}}, tmp_path / "ckpt.pt")
    m = load_pretrained(model(None), tmp_path / "ckpt.pt")
    assert torch.equal(m.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])
    # DDP-wrapped keys ("module.") load too.
    m2 = load_pretrained(model(None), {"module." + k: v for k, v in sd.items()})
    assert torch.equal(m2.final_layer.linear.weight, sd["final_layer.linear.weight"])
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_pretrained(model(None), tmp_path / "nothere.pt")
