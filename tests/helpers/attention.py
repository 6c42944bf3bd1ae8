r"""HSA inputs for tests that compare trees: seeded float64 queries, keys
and values, and random family graphs."""
from typing import List

import torch
from torch import Tensor

from hsa_geo import Hierarchy, hierarchical_attention
from tests.helpers.strategies import children_of


def attention(hierarchy: Hierarchy, qkv: Tensor) -> Tensor:
    return hierarchical_attention(qkv[0], qkv[1], qkv[2], hierarchy)


def random_qkv(n: int, seed: int = 0) -> Tensor:
    r"""``[3, n, 2, 3]`` queries, keys and values of 2 heads."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, n, 2, 3, dtype=torch.float64, generator=g)


def random_pairs(parent: List[int], g: torch.Generator) -> Tensor:
    r"""``[2, E]`` a random half of the ordered pairs of distinct
    siblings."""
    pairs = [(a, b) for kids in children_of(parent).values() for a in kids
             for b in kids if a != b]
    coin = torch.rand(len(pairs), generator=g).tolist()
    kept = [p for p, c in zip(pairs, coin) if c < 0.5]
    return torch.tensor(kept, dtype=torch.long).view(-1, 2).t()


def fragment_forest(sizes: List[int]) -> Hierarchy:
    r"""Molecule-like trees, one per entry of :obj:`sizes` (at least 2
    leaves each): the leaves alternate between two fragments under the
    tree's root. Small families of leaves and of clusters: the pair list."""
    num_leaves = sum(sizes)
    parent, clusters = [], []
    for i, size in enumerate(sizes):
        first = num_leaves + 3 * i  # two fragments, then the root
        parent += [first + j % 2 for j in range(size)]
        clusters += [first + 2, first + 2, -1]
    return Hierarchy.from_parent(parent + clusters, num_leaves)
