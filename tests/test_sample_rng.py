"""Per-sample randomness: sample i's label and noise depend on (seed, i) and nothing else."""
import pytest
import torch

from dtr_scale.sampling import PerSampleNoise, draw_labels, sample_generators, sample_seed


def test_sample_seeds_are_distinct_and_reproducible():
    seeds = [sample_seed(s, i) for s in range(4) for i in range(2000)]
    assert len(set(seeds)) == len(seeds)
    assert sample_seed(7, 123) == sample_seed(7, 123)
    assert all(0 <= s < 2**64 for s in seeds)


@pytest.mark.parametrize("seed,index", [(-1, 0), (2**32, 0), (0, -1), (0, 2**32)])
def test_out_of_range_seed_or_index_is_refused(seed, index):
    with pytest.raises(ValueError, match="must be in"):
        sample_seed(seed, index)


def test_noise_rows_do_not_depend_on_batch_composition():
    like = torch.empty(6, 2, 4, 4)
    batch = PerSampleNoise(sample_generators(3, range(10, 16)))
    first, second = batch(like), batch(like)  # two successive sampler steps
    for row, index in enumerate(range(10, 16)):
        alone = PerSampleNoise(sample_generators(3, [index]))
        assert torch.equal(alone(like[:1])[0], first[row])
        assert torch.equal(alone(like[:1])[0], second[row])
    assert not torch.equal(first, second)
    assert not torch.equal(first[0], first[1])


def test_noise_refuses_a_batch_of_the_wrong_size():
    with pytest.raises(ValueError, match="3 rows but 2"):
        PerSampleNoise(sample_generators(0, [0, 1]))(torch.empty(3, 1))


def test_labels_uniform_and_balanced():
    indices = list(range(500))
    uniform = draw_labels(sample_generators(0, indices), indices, 10, "uniform")
    assert uniform.min() >= 0 and uniform.max() < 10
    assert len(torch.unique(uniform)) == 10
    assert torch.equal(uniform[100:110], draw_labels(sample_generators(0, indices[100:110]), indices[100:110], 10))
    balanced = draw_labels(sample_generators(0, indices), indices, 10, "balanced")
    assert balanced.tolist() == [i % 10 for i in indices]


def test_label_mode_does_not_change_the_noise_stream():
    gens_a, gens_b = sample_generators(5, [0, 1]), sample_generators(5, [0, 1])
    draw_labels(gens_a, [0, 1], 10, "uniform")
    draw_labels(gens_b, [0, 1], 10, "balanced")
    like = torch.empty(2, 1, 4, 4)
    assert torch.equal(PerSampleNoise(gens_a)(like), PerSampleNoise(gens_b)(like))


def test_unknown_label_mode_is_refused():
    with pytest.raises(ValueError, match="labels='random'"):
        draw_labels(sample_generators(0, [0]), [0], 10, "random")
