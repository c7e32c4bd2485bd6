"""`data.mode=global` in one process: the tar index, exact epochs, a sample order and per-sample
draws that do not depend on world size, accumulation or workers, and resume across world sizes.
Synthetic shards carry their sample id as their value (moments with std > 0 add a per-position ε,
so a value also says which position drew it)."""
import itertools

import pytest
import torch

from dtr_scale.config import ConfigError, load_config, validate
from dtr_scale.data import DataError, GlobalLoader, read_manifest
from dtr_scale.data.synthetic import write_synthetic_shards
from dtr_scale.data.sample_index import join_rows, scan_shard_rows
from dtr_scale.data.tar_index import _scan_headers, _tarfile_members

COUNTS = [11, 7, 13, 5, 9]  # 45 samples: a global batch of 12 straddles every epoch boundary
B = 12


@pytest.fixture
def ids_shards(tmp_path):
    return write_synthetic_shards(tmp_path / "ids", counts=COUNTS, latent_shape=(1, 2, 2))


@pytest.fixture
def eps_shards(tmp_path):
    return write_synthetic_shards(tmp_path / "eps", counts=COUNTS, latent_shape=(1, 2, 2),
                                  field="moments.npy", std=0.25)


def take(loader, n):
    return list(itertools.islice(loader, n))


def by_position(loader, steps, grad_accum=1):
    """{global position: (x, y)} of this loader's first `steps` optimizer steps."""
    out = {}
    for b in take(loader, steps * grad_accum):
        for p, x, y in zip(b.positions.tolist(), b.x, b.y.tolist()):
            out[p] = (x, y)
    return out


def test_header_scan_matches_tarfile(eps_shards):
    m = read_manifest(eps_shards)
    for shard in m.shards:
        path = m.shard_path(shard)
        assert _scan_headers(path) == _tarfile_members(path)
    rows = join_rows(scan_shard_rows(m))
    assert len(rows) == sum(COUNTS) and rows["key"][:2].tolist() == [b"000000_000000", b"000000_000001"]


def test_epochs_are_exact_across_ranks(ids_shards):
    """Rank slices of 3 epochs' steps tile the positions; each epoch holds every sample once."""
    n, steps = sum(COUNTS), 3 * sum(COUNTS) // B + 1
    ranks = [GlobalLoader(ids_shards, B, rank=r, world_size=2, grad_accum=2, seed=4) for r in range(2)]
    sample_at = {}
    for r, loader in enumerate(ranks):
        for b in take(loader, steps * 2):
            ids = b.x.reshape(len(b.x), -1)[:, 0].round().long().tolist()
            assert b.y.tolist() == [i % 10 for i in ids]
            sample_at.update(zip(b.positions.tolist(), ids))
    assert sorted(sample_at) == list(range(steps * B))
    epochs = [[sample_at[p] for p in range(e * n, (e + 1) * n)] for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(n))  # shuffled, anew each epoch
    assert ranks[0].epoch == steps * B // n


def test_order_and_draws_do_not_depend_on_world_size_accum_or_workers(eps_shards):
    steps = 5
    ref = by_position(GlobalLoader(eps_shards, B, seed=9), steps)
    assert len(ref) == steps * B
    for world, accum, workers in [(2, 2, 2), (3, 1, 1), (4, 3, 0)]:
        got = {}
        for r in range(world):
            got.update(by_position(GlobalLoader(eps_shards, B, rank=r, world_size=world, grad_accum=accum,
                                                num_workers=workers, seed=9), steps, accum))
        assert got.keys() == ref.keys()
        for p in ref:
            assert torch.equal(got[p][0], ref[p][0]) and got[p][1] == ref[p][1], (world, accum, workers, p)
    # ε is drawn per position: the same sample at two positions (two epochs) differs.
    other = by_position(GlobalLoader(eps_shards, B, seed=10), steps)
    assert any(not torch.equal(other[p][0], ref[p][0]) for p in ref)


def test_resume_on_another_world_size_continues_at_the_global_position(eps_shards):
    straight = by_position(GlobalLoader(eps_shards, B, seed=2), 7)
    two = [GlobalLoader(eps_shards, B, rank=r, world_size=2, seed=2) for r in range(2)]
    for loader in two:
        take(loader, 3)
    state = two[0].state_dict()
    assert state == two[1].state_dict() and state["position"] == 3 * B and state["micro"] == 0
    one = GlobalLoader(eps_shards, B, grad_accum=2, num_workers=1, seed=2)
    one.load_state_dict(state)
    resumed = by_position(one, 4, grad_accum=2)
    assert sorted(resumed) == list(range(3 * B, 7 * B))
    for p, (x, y) in resumed.items():
        assert torch.equal(x, straight[p][0]) and y == straight[p][1]
    bad = dict(state, seed=3)
    with pytest.raises(ValueError, match="seed"):
        one.load_state_dict(bad)


def test_bad_shard_names_the_file(eps_shards):
    shard = sorted(eps_shards.glob("shard-*.tar"))[1]
    shard.write_bytes(shard.read_bytes()[:-700])
    with pytest.raises(DataError, match=shard.name):
        GlobalLoader(eps_shards, B)


def test_ant_uw_with_global_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="diffusion.loss_weighting=ant_uw.*data.mode=global"):
        load_config("configs/digits-tiny.yaml", ["data.mode=global", "diffusion.loss_weighting=ant_uw"])
    validate(load_config("configs/digits-tiny.yaml", ["data.mode=global", "diffusion.loss_weighting=min_snr"]))


def test_training_draws_follow_the_position_not_the_batch():
    from dtr_scale.diffusion import create_diffusion
    from dtr_scale.models import create_model
    from dtr_scale.objective import DDPMObjective
    from dtr_scale.randomness import PositionDraws

    torch.manual_seed(0)
    dit = create_model("DiT-T/2", input_size=8, in_channels=1, num_classes=10, class_dropout_prob=0.5)
    objective = DDPMObjective(dit, create_diffusion(diffusion_steps=1000))
    t, noise, drop = objective.draw_inputs(torch.zeros(8, 1, 8, 8), PositionDraws(5, torch.arange(40, 48)))
    t2, noise2, drop2 = objective.draw_inputs(torch.zeros(2, 1, 8, 8), PositionDraws(5, torch.tensor([44, 47])))
    assert torch.equal(t[[4, 7]], t2) and torch.equal(noise[[4, 7]], noise2) and torch.equal(drop[[4, 7]], drop2)
    assert len(set(t.tolist())) > 4 and 0 < int(drop.sum()) < 8
    # An explicit drop mask replaces the DiT's own draw: dropped labels become the null class.
    y = torch.randint(0, 10, (8,))
    null_y = torch.where(drop, torch.full_like(y, 10), y)
    emb = dit.y_embedder
    assert torch.equal(emb(y, True, drop), emb.embedding_table(null_y))
    assert torch.equal(emb(y, False, drop), emb.embedding_table(y))  # eval: no dropout
    dit.train()
    assert dit(torch.randn(8, 1, 8, 8), t, y, force_drop=drop).shape == (8, 2, 8, 8)
    assert dit(torch.randn(8, 1, 8, 8), t, y).shape == (8, 2, 8, 8)  # model(x, t, y) still works


def test_header_scan_reads_pax_long_names(tmp_path):
    import io
    import tarfile

    path = tmp_path / "long.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("d" * 120 + "/k1.cls", b"3"), ("k2.latent.npy", b"x" * 700), ("é/k3.cls", b"1")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = _scan_headers(str(path))
    assert members == _tarfile_members(str(path)) and members[0][0].startswith("d" * 120)
