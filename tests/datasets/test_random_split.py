import pytest
import torch

from hsa_geo.datasets import random_split


@pytest.mark.parametrize('num_items', [0, 1, 10, 1017])
def test_parts_are_disjoint_sorted_and_cover(num_items):
    split = random_split(num_items, seed=3)
    assert list(split) == ['train', 'valid', 'test']
    for index in split.values():
        assert index.dtype == torch.long
        assert torch.equal(index, index.sort().values)
    everything = torch.cat(list(split.values()))
    assert sorted(everything.tolist()) == list(range(num_items))
    assert len(split['train']) == int(0.8 * num_items)
    assert len(split['train']) + len(split['valid']) == int(0.9 * num_items)


def test_seeded_and_independent_of_the_global_random_state():
    torch.manual_seed(0)
    first = random_split(100, seed=7)
    state = torch.get_rng_state()
    torch.manual_seed(123)
    second = random_split(100, seed=7)
    for part in first:
        assert torch.equal(first[part], second[part])
    other = random_split(100, seed=8)
    assert not torch.equal(first['test'], other['test'])
    torch.manual_seed(0)
    random_split(100, seed=7)
    assert torch.equal(torch.get_rng_state(), state)


def test_fractions():
    split = random_split(20, fractions=(0.5, 0.25, 0.25), seed=0)
    assert [len(index) for index in split.values()] == [10, 5, 5]
    # 0.29 * 100 is 28.999999999999996 in floating point: the floor of
    # the fractions as written
    split = random_split(100, fractions=(0.29, 0.01, 0.7), seed=0)
    assert [len(index) for index in split.values()] == [29, 1, 70]
    for bad in [(0.8, 0.1), (0.8, 0.2, 0.1), (1.2, -0.1, -0.1)]:
        with pytest.raises(ValueError, match='sum to 1'):
            random_split(10, fractions=bad)
    with pytest.raises(TypeError, match="'seed'"):
        random_split(10, seed=0.5)
