"""DTR mask tables: exact window positions, sizes, and reproducible random masks."""
import pytest
import torch

from dtr_scale.models import RoutingConfig, create_model, dtr_mask_table, random_mask_tables, window_starts
from dtr_scale.models.routing import TaskRouter

HIDDEN = {"DiT-B": 768, "DiT-L": 1024, "DiT-XL": 1152}


def expected_start(t, C, beta=0.8, alpha=4.0, T=1000):
    k = int(C * beta)
    return round(((t / (T - 1)) ** alpha) * (C - k))  # Python's round is half-even, like numpy's


@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_window_table_exact(name):
    C = HIDDEN[name]
    k = int(C * 0.8)
    table = dtr_mask_table(1000, C, 0.8, 4.0)
    assert table.shape == (1000, C)
    # The window size is constant: k = int(C·β) active channels for every task.
    assert (table.sum(1) == k).all()
    for t in (0, 1, 250, 500, 750, 900, 998, 999):
        row = table[t].nonzero().flatten()
        s = expected_start(t, C)
        assert row[0].item() == s and row[-1].item() == s + k - 1, (name, t)
        assert len(row) == k  # contiguous
    # The last task's window ends at the last channel.
    assert table[999, -1] == 1 and table[0, 0] == 1


def test_dit_l_values_from_the_paper_setup():
    # DiT-L/2, β = 0.8, α = 4: 819 channels per task, starts 0, 1, 13, 65, 135, 205.
    router = TaskRouter(RoutingConfig(sharing_ratio=0.8), hidden_size=1024, depth=24)
    assert router.shared and (router.masks[0].sum(1) == 819).all()  # k = int(C·β), truncated
    starts = window_starts(1000, 1024, 0.8, 4.0)
    assert [int(starts[t]) for t in (0, 250, 500, 750, 900, 999)] == [0, 1, 13, 65, 135, 205]
    assert (dtr_mask_table(1000, 1024, 0.8, 4.0).sum(1) == 819).all()


def test_alpha_changes_window_progression():
    lin = window_starts(1000, 768, 0.8, 1.0)
    quart = window_starts(1000, 768, 0.8, 4.0)
    assert lin[500] > quart[500] and lin[999] == quart[999] == 768 - 614


def test_random_masks_reproducible_and_distinct_per_block():
    a = random_mask_tables(4, 1000, 128, 0.5, seed=3)
    b = random_mask_tables(4, 1000, 128, 0.5, seed=3)
    c = random_mask_tables(4, 1000, 128, 0.5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a.sum(-1) == 64).all()
    for i in range(1, 4):
        assert not torch.equal(a[0], a[i])  # each block its own masks
    # and through the model: same seed, same masks
    cfg = RoutingConfig(0.5, init="random", seed=7)
    m1 = create_model("DiT-T/8", input_size=16, routing=cfg)
    m2 = create_model("DiT-T/8", input_size=16, routing=cfg)
    assert torch.equal(m1.router.masks, m2.router.masks) and m1.router.masks.shape[0] == m1.depth


def test_one_shared_table_for_dtr():
    m = create_model("DiT-T/8", input_size=16, routing=RoutingConfig(0.8))
    assert m.router.masks.shape == (1, 1000, 128)
    tables = [name for name, _ in m.named_buffers()]
    assert tables == ["router.masks"]  # no per-block copies


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_sharing_ratio_out_of_range(bad):
    with pytest.raises(ValueError, match="sharing_ratio"):
        RoutingConfig(bad)


def test_unknown_init():
    with pytest.raises(ValueError, match="routing.init"):
        RoutingConfig(0.8, init="window")


def test_beta_one_has_no_router():
    m = create_model("DiT-T/8", input_size=16, routing=RoutingConfig(1.0))
    assert m.router is None and len(list(m.buffers())) == 0


def test_router_gathers_per_sample_masks():
    m = create_model("DiT-T/8", input_size=16, routing=RoutingConfig(0.5))
    t = torch.tensor([0, 999, 500])
    masks = m.router(t, torch.float32)
    table = dtr_mask_table(1000, 128, 0.5, 4.0).float()
    assert masks.shape == (1, 3, 1, 128)
    assert torch.equal(masks[0, :, 0], table[t])
