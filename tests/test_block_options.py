"""The modern block options (qk-norm, RMSNorm, SwiGLU, 2-D RoPE): each changes the model, DTR
routes the block exactly as before, the options travel through config, export and loading, and a
tiny run with all of them trains. (Their match with LightningDiT's own code for the same weights
was measured once against its repository, outside the tests: see the README.)"""
import pytest
import torch

from dtr_scale.checkpoint_meta import fingerprint
from dtr_scale.config import ConfigError, load_config, validate
from dtr_scale.export import write_weights
from dtr_scale.models import DiT, RoutingConfig, create_model, dit_forward_flops, dtr_mask_table, load_weights
from dtr_scale.models.attention import HAS_XFORMERS
from dtr_scale.models.block_options import BlockOptions
from dtr_scale.models.pretrained import EXPORT_FORMAT
from dtr_scale.models.rope2d import apply_rope, rope2d_tables
from dtr_scale.objective import build_objective, dit_from_config
from dtr_scale.parallel.factory import build_engine
from dtr_scale.parallel.process_group import DistEnv
from dtr_scale.sampling.weights import load_sampling_model

ALL = BlockOptions(qk_norm=True, norm="rmsnorm", mlp="swiglu", pos_embed="rope2d")
ONE_EACH = {"qk_norm": BlockOptions(qk_norm=True), "rmsnorm": BlockOptions(norm="rmsnorm"),
            "swiglu": BlockOptions(mlp="swiglu"), "rope2d": BlockOptions(pos_embed="rope2d"),
            "qk_norm+rmsnorm": BlockOptions(qk_norm=True, norm="rmsnorm")}
TINY = {"input_size": 8, "in_channels": 4, "num_classes": 10}


def randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if p.dim() == 1 and "norm" in name else 0.0))
    return model.eval()


def inputs(n=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=gen), torch.tensor([0, 300, 700, 999][:n]), torch.arange(n) % 10


@pytest.mark.parametrize("name", list(ONE_EACH))
def test_each_option_changes_the_output(name):
    """Same weights wherever the two models share a parameter: only the option differs."""
    modern = randomized(create_model("DiT-T/2", **TINY, block=ONE_EACH[name], attention="math"))
    plain = create_model("DiT-T/2", **TINY, attention="math").eval()
    shared = {k: v for k, v in modern.state_dict().items() if k in plain.state_dict()
              and v.shape == plain.state_dict()[k].shape}
    plain.load_state_dict(shared, strict=False)
    x, t, y = inputs()
    with torch.no_grad():
        diff = (modern(x, t, y) - plain(x, t, y)).abs().max()
    assert diff > 1e-3, f"{name} did not change the output ({diff})"


def test_default_options_build_the_official_block():
    plain = create_model("DiT-T/2", **TINY)
    assert plain.block_options == BlockOptions() and plain.block_options.non_default() == {}
    names = {k for k in plain.state_dict()}
    assert not any(s in k for k in names for s in ("q_norm", "k_norm", "w12", "w3", "norm1.weight"))
    modern = create_model("DiT-T/2", **TINY, block=ALL)
    extra = {k for k in modern.state_dict() if k.startswith("blocks.0.")} - names
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.mlp.w12.weight", "blocks.0.norm1.weight"} <= extra


@pytest.mark.parametrize("options", [ALL, BlockOptions(qk_norm=True, pos_embed="rope2d")], ids=["all", "qk+rope"])
def test_routed_block_masks_the_input_and_routes_the_residual(options):
    """DTR with the options: block(x, m) = plain_block(x·m) + x·(1 − m), so the channels a task
    does not use pass straight through (a change there reaches the output unchanged)."""
    model = randomized(create_model("DiT-T/2", **TINY, block=options, routing=RoutingConfig(0.5), attention="math"))
    block = model.blocks[1]
    gen = torch.Generator().manual_seed(3)
    x, c = torch.randn(3, 16, 128, generator=gen), torch.randn(3, 128, generator=gen)
    m = dtr_mask_table(1000, 128, 0.5, 4.0).float()[torch.tensor([10, 600, 999])].unsqueeze(1)
    rope = model.rope_tables(x)
    with torch.no_grad():
        routed = block(x, c, m, rope)
        torch.testing.assert_close(routed, block(x * m, c, None, rope) + x * (1 - m), rtol=1e-5, atol=1e-5)
        d = torch.randn(x.shape, generator=gen) * (1 - m)  # only on the channels the mask drops
        torch.testing.assert_close(block(x + d, c, m, rope) - routed, d, rtol=1e-5, atol=1e-5)
        assert (routed - block(x, c, None, rope)).abs().max() > 1e-3  # and routing does change it


def test_backends_agree_with_qk_norm_and_rope():
    model = randomized(create_model("DiT-T/2", **TINY, block=ALL, attention="math"))
    x, t, y = inputs()
    with torch.no_grad():
        reference = model(x, t, y)
        for block in model.blocks:
            block.attn.backend = "sdpa"
        torch.testing.assert_close(model(x, t, y), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_XFORMERS), reason="needs CUDA and xformers")
def test_xformers_takes_qk_norm_and_rope():
    model = randomized(create_model("DiT-T/2", **TINY, block=ALL, attention="math")).cuda()
    x, t, y = (u.cuda() for u in inputs())
    with torch.no_grad():
        reference = model(x, t, y)
        for block in model.blocks:
            block.attn.backend = "xformers"
        torch.testing.assert_close(model(x, t, y), reference, rtol=1e-4, atol=1e-4)


def test_rope_rotates_by_row_then_column():
    """The first half of a head turns with the token's row, the second with its column, and a
    rotation keeps norms and makes q·k depend on relative positions only."""
    cos, sin = rope2d_tables(8, 4)
    q = torch.randn(1, 16, 1, 8)
    rotated = apply_rope(q, (cos, sin))
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    row_only = torch.arange(16) // 4 * 4  # tokens of column 0, one per row
    assert torch.equal(cos[:, :, :4], cos[row_only, :, :4]) and not torch.equal(cos[:, :, 4:], cos[row_only, :, 4:])
    same = torch.randn(1, 1, 1, 8).expand(1, 16, 1, 8)
    r = apply_rope(same, (cos, sin))[0, :, 0]
    dots = r @ r.T  # token (i, j) · token (i + 1, j + 1) is the same for every (i, j) that has both
    pairs = [dots[i * 4 + j, (i + 1) * 4 + j + 1] for i in range(3) for j in range(3)]
    torch.testing.assert_close(torch.stack(pairs), pairs[0].expand(9))


def test_rope_needs_a_head_size_divisible_by_4():
    with pytest.raises(ValueError, match="model.pos_embed: rope2d needs a head size divisible by 4"):
        DiT(input_size=8, hidden_size=72, num_heads=4, depth=1, block=BlockOptions(pos_embed="rope2d"))


@pytest.mark.parametrize("override,needle", [
    ("model.norm=batchnorm", "model.norm: got 'batchnorm'; allowed: layernorm, rmsnorm"),
    ("model.mlp=relu", "model.mlp: got 'relu'; allowed: gelu, swiglu"),
    ("model.pos_embed=rope", "model.pos_embed: got 'rope'; allowed: sincos, rope2d"),
    ("model.qk_norm=maybe", "model.qk_norm: expected true or false"),
])
def test_bad_block_options_are_config_errors(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate(load_config(None, [override]))


def test_options_reach_the_model_fingerprint_and_export(tmp_path):
    plain_cfg = validate(load_config(None, ["model.name=DiT-T/2"]))
    assert set(fingerprint(plain_cfg)["model"]) == {"name", "input_size", "in_channels", "num_classes",
                                                     "learn_sigma", "class_dropout_prob"}  # as before
    cfg = validate(load_config(None, ["model.name=LightningDiT-B/1", "model.qk_norm=true", "model.norm=rmsnorm",
                                      "model.mlp=swiglu", "model.pos_embed=rope2d"]))
    assert fingerprint(cfg)["model"]["mlp"] == "swiglu"
    cfg.model.input_size, cfg.model.in_channels, cfg.model.num_classes = 4, 4, 10
    model = dit_from_config(cfg)
    assert model.block_options == ALL and model.patch_size == 1 and model.hidden_size == 768
    # Export's metadata holds the options, and the sampler's loader rebuilds the model from it alone.
    tiny = randomized(create_model("DiT-T/2", **TINY, block=ALL, routing=RoutingConfig(0.8)))
    meta = {"format": EXPORT_FORMAT, "model": {"name": "DiT-T/2", **TINY, "learn_sigma": True,
            "class_dropout_prob": 0.1} | tiny.block_options.non_default() | {"time_input": "discrete"},
            "routing": tiny.routing.to_dict(), "step": 1, "objective": "ddpm"}
    pt, st = write_weights(tiny, meta, str(tmp_path / "w.pt"))
    x, t, y = inputs()
    with torch.no_grad():
        expected = tiny(x, t, y)
        for path in (pt, st):
            loaded, _ = load_weights(path)
            assert loaded.block_options == ALL
            assert torch.equal(loaded(x, t, y), expected)
        sampler_model, _ = load_sampling_model(st)  # no model flags
        assert torch.equal(sampler_model(x, t, y), expected)


def test_swiglu_flops():
    plain = create_model("DiT-S/2", input_size=32)
    C, L, D = 384, 256, 12
    h = int(2 / 3 * 4 * C)  # 1024
    swiglu = create_model("DiT-S/2", input_size=32, block=BlockOptions(mlp="swiglu"))
    assert dit_forward_flops(swiglu, 1) - dit_forward_flops(plain, 1) == D * 2 * L * (3 * C * h - 8 * C * C)
    assert sum(p.numel() for p in swiglu.blocks[0].mlp.parameters()) == C * 2 * h + 2 * h + h * C + C


def _train(cfg_overrides, steps, seed=0):
    cfg = load_config(None, ["model.name=DiT-T/2", "train.lr=1e-3", "train.global_batch_size=8",
                             "model.qk_norm=true", "model.norm=rmsnorm", "model.mlp=swiglu",
                             "model.pos_embed=rope2d", *cfg_overrides])
    cfg.model.input_size, cfg.model.in_channels, cfg.model.num_classes = 8, 4, 10
    torch.manual_seed(seed)
    dit = dit_from_config(validate(cfg))
    assert dit.block_options == ALL and dit.router is not None
    objective = build_objective(cfg, dit)
    engine = build_engine(objective, cfg, DistEnv(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, 8, 8, generator=gen) * 0.5 + torch.linspace(-1, 1, 8)
    y = torch.arange(8) % 10
    losses = []
    for _ in range(steps):
        t = objective.sample_timesteps(8, gen)
        with engine.accumulate(sync=True):
            loss, per_sample = engine.module(x, t, y, torch.randn(x.shape, generator=gen))
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
            engine.backward(loss)
        assert engine.step().applied
        losses.append(per_sample.mean().item())
    return losses, dit


def test_tiny_run_with_every_option_learns():
    losses, dit = _train([], steps=16)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    assert (dit.blocks[0].attn.q_norm.weight - 1).abs().max() > 0  # the qk-norm scales trained


def test_bf16_autocast_with_every_option_runs_on_cpu():
    """train.precision=bf16 (autocast; fp32 master weights): qk-norm and RMSNorm take their fp32
    statistics path and RoPE its bf16 tables; the loss stays fp32 and finite."""
    _, dit = _train(["train.precision=bf16"], steps=2)
    assert all(p.dtype == torch.float32 for p in dit.parameters())
    model = randomized(create_model("DiT-T/2", **TINY, block=ALL, attention="math"))
    x, t, y = inputs()
    with torch.no_grad():
        full = model(x, t, y)
        half = model.to(torch.bfloat16)(x, t, y)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert ((half - full).norm() / full.norm()) < 0.05



def test_meta_device_build_gives_the_eager_weights():
    """Sharded builds (FSDP2 meta-init, ZeRO-3) fill each parameter from DiT.init_plan(): the
    plan covers the new norm scales, and the product's meta build (parallel/fsdp.py MetaBuild)
    gives exactly the weights of the eager constructor for the same seed."""
    from dtr_scale.parallel.fsdp import MetaBuild

    cfg = load_config(None, ["model.name=DiT-T/2"])
    torch.manual_seed(0)
    eager = create_model("DiT-T/2", **TINY, block=ALL, routing=RoutingConfig(0.8))
    torch.manual_seed(0)
    with torch.device("meta"):
        dit = create_model("DiT-T/2", **TINY, block=ALL, routing=RoutingConfig(0.8))
    assert {n for n, _ in dit.init_plan()} == {n for n, _ in dit.named_parameters()}
    objective = build_objective(cfg, dit)
    MetaBuild(objective).materialize(torch.device("cpu"))
    for name, p in eager.named_parameters():
        assert torch.equal(p, dict(dit.named_parameters())[name]), name
