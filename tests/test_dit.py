"""Routed DiT forward semantics against an independent literal reference."""
import pytest
import torch

from dtr_scale.models import RoutingConfig, create_model, dtr_mask_table
from dtr_scale.models.attention import HAS_XFORMERS

import reference_dit as ref


def randomize(model, seed=0):
    """DiT zero-initialises adaLN and the output layer; give every weight a value so that
    every path through the block actually contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def inputs(n=6, c=4, size=16, classes=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=gen)
    t = torch.tensor([0, 1, 250, 500, 900, 999][:n])
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, t, y


def build(routing=None, name="DiT-T/4", **kw):
    torch.manual_seed(0)
    kw.setdefault("num_classes", 10)
    return randomize(create_model(name, input_size=16, routing=routing, attention="math", **kw)).eval()


@pytest.mark.parametrize("init", ["dtr", "random"])
def test_routed_forward_matches_reference(init):
    model = build(RoutingConfig(0.6, init=init, seed=5))
    x, t, y = inputs()
    tables = [tab.float() for tab in model.router.block_tables()]
    with torch.no_grad():
        ours = model(x, t, y)
        theirs = ref.forward(model, x, t, y, tables)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # and routing really changes the output compared with plain DiT
    with torch.no_grad():
        plain = ref.forward(model, x, t, y, None)
    assert (ours - plain).abs().max() > 1e-3


def test_block_formula_single_block():
    model = build(RoutingConfig(0.5))
    block = model.blocks[2]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 16, 128, generator=gen)
    c = torch.randn(3, 128, generator=gen)
    t = torch.tensor([10, 600, 999])
    m = dtr_mask_table(1000, 128, 0.5, 4.0).float()[t].unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(block(x, c, m), ref.routed_block(block, x, c, m), rtol=1e-5, atol=1e-5)
        out = block(x, c, m)
    # Inactive channels skip the branches: perturbing them shifts the output by exactly the
    # perturbation there and leaves every other value alone.
    inactive = (m == 0).expand_as(x)
    delta = torch.randn(x.shape, generator=gen) * inactive
    with torch.no_grad():
        shifted = block(x + delta, c, m)
    torch.testing.assert_close(shifted - out, delta, rtol=0, atol=1e-5)


def test_beta_one_is_plain_dit():
    plain = build(None)
    beta1 = build(RoutingConfig(1.0))
    beta1.load_state_dict(plain.state_dict())
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(plain(x, t, y), beta1(x, t, y))
        torch.testing.assert_close(plain(x, t, y), ref.forward(plain, x, t, y, None), rtol=1e-5, atol=1e-5)


def test_all_ones_masks_equal_plain_dit():
    routed = build(RoutingConfig(0.5))
    plain = build(None)
    plain.load_state_dict({k: v for k, v in routed.state_dict().items() if k != "router.masks"})
    routed.router.adopt(torch.ones(routed.depth, 1000, 128))
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(routed(x, t, y), plain(x, t, y), rtol=0, atol=0)


def test_embedders_and_final_layer_untouched_by_routing():
    routed = build(RoutingConfig(0.5))
    plain = build(None)
    plain.load_state_dict({k: v for k, v in routed.state_dict().items() if k != "router.masks"})
    seen = {}

    def grab(tag):
        def hook(module, args, out):
            seen[tag] = (args, out)
        return hook

    x, t, y = inputs()
    for tag, model in (("r", routed), ("p", plain)):
        hooks = [
            model.x_embedder.register_forward_hook(grab(tag + "x")),
            model.t_embedder.register_forward_hook(grab(tag + "t")),
            model.y_embedder.register_forward_hook(grab(tag + "y")),
            model.blocks[-1].register_forward_hook(grab(tag + "last")),
            model.final_layer.register_forward_hook(grab(tag + "final")),
        ]
        with torch.no_grad():
            model(x, t, y)
        for h in hooks:
            h.remove()
    for part in "xty":
        assert torch.equal(seen["r" + part][1], seen["p" + part][1])
    # The final layer receives the last block's full output: inactive channels are not zeroed.
    assert torch.equal(seen["rfinal"][0][0], seen["rlast"][1])
    assert (seen["rfinal"][0][0] == 0).float().mean() < 0.01


def test_sdpa_matches_math():
    math_model = build(RoutingConfig(0.8))
    sdpa_model = create_model("DiT-T/4", input_size=16, routing=RoutingConfig(0.8), attention="sdpa", num_classes=10).eval()
    sdpa_model.load_state_dict(math_model.state_dict())
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(sdpa_model(x, t, y), math_model(x, t, y), rtol=1e-5, atol=1e-5)


def test_unknown_attention_backend():
    with pytest.raises(ValueError, match="model.attention"):
        create_model("DiT-T/4", input_size=16, attention="flash3")


def test_xformers_unavailable_on_cpu_is_a_clear_error():
    model = create_model("DiT-T/4", input_size=16, attention="xformers", num_classes=10)
    x, t, y = inputs()
    with pytest.raises(RuntimeError, match="xformers"):
        model(x, t, y)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_XFORMERS, reason="xformers not installed")
def test_xformers_matches_math_on_cuda():
    math_model = build(RoutingConfig(0.8)).cuda()
    xf = create_model("DiT-T/4", input_size=16, routing=RoutingConfig(0.8), attention="xformers", num_classes=10).cuda().eval()
    xf.load_state_dict(math_model.state_dict())
    x, t, y = (u.cuda() for u in inputs())
    with torch.no_grad():
        torch.testing.assert_close(xf(x, t, y), math_model(x, t, y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("routing", [None, RoutingConfig(0.8), RoutingConfig(0.5, init="random")])
def test_activation_checkpointing_same_loss_and_grads(routing):
    base = build(routing, class_dropout_prob=0.0).train()
    ckpt = build(routing, class_dropout_prob=0.0, checkpointing=1.0).train()
    ckpt.load_state_dict(base.state_dict())
    assert ckpt.num_checkpointed == ckpt.depth
    x, t, y = inputs()
    losses, grads = [], []
    for model in (base, ckpt):
        loss = model(x, t, y).pow(2).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_fraction():
    model = create_model("DiT-T/4", input_size=16, checkpointing=0.5)
    assert model.num_checkpointed == 3
    with pytest.raises(ValueError, match="checkpointing"):
        create_model("DiT-T/4", input_size=16, checkpointing=1.5)


@pytest.mark.parametrize("cfg_channels", [None, 3])
def test_forward_with_cfg(cfg_channels):
    model = build(RoutingConfig(0.8))
    x, t, y = inputs(n=4)
    x = torch.cat([x[:2], x[:2]])
    t = torch.cat([t[:2], t[:2]])
    y = torch.tensor([3, 4, 10, 10])  # second half: the null class
    scale = 4.0
    with torch.no_grad():
        out = model.forward_with_cfg(x, t, y, scale, cfg_channels=cfg_channels)
        raw = model(x, t, y)
    n = 4 if cfg_channels is None else cfg_channels
    cond, uncond = raw[:2], raw[2:]
    expected = uncond[:, :n] + scale * (cond[:, :n] - uncond[:, :n])
    torch.testing.assert_close(out[:2, :n], expected)
    torch.testing.assert_close(out[2:, :n], expected)
    torch.testing.assert_close(out[:, n:], raw[:, n:])


def test_unknown_model_name_lists_allowed():
    with pytest.raises(ValueError, match="DiT-XL/2"):
        create_model("DiT-H/2", input_size=32)


@pytest.mark.parametrize("name,params_m", [("DiT-S/2", 33.0), ("DiT-B/2", 130.5), ("DiT-L/2", 458.1), ("DiT-XL/2", 675.1)])
def test_model_sizes_match_dit_paper(name, params_m):
    # Trainable parameter counts of DiT's Table 1 configurations at 256×256 (32×32 latents).
    model = create_model(name, input_size=32)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    assert abs(n - params_m) / params_m < 0.01, n
