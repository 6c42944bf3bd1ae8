r"""HSA inputs for tests that compare trees: seeded float64 queries, keys
and values, random family graphs, and the dense reference output; a spy
on full-size products."""
from typing import List, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from tests.helpers.strategies import children_of


def attention(hierarchy: Hierarchy, qkv: Tensor) -> Tensor:
    return hierarchical_attention(qkv[0], qkv[1], qkv[2], hierarchy)


def seeded_qkv(n: int, heads: Optional[int], d: int, seed: int,
               dv: Optional[int] = None, dtype: torch.dtype = torch.float64,
               mag: float = 1.0, requires_grad: bool = False
               ) -> List[Tensor]:
    r"""Queries and keys ``[N, H, D]`` and values ``[N, H, Dv]`` (``[N, D]``
    and ``[N, Dv]`` where :obj:`heads` is ``None``; ``Dv = D`` unless given),
    drawn in float64 in that order from one generator seeded with
    :obj:`seed`, queries and keys times :obj:`mag`, then cast to
    :obj:`dtype`."""
    g = torch.Generator().manual_seed(seed)
    lead = (n, ) if heads is None else (n, heads)
    q = torch.randn(*lead, d, generator=g, dtype=torch.float64) * mag
    k = torch.randn(*lead, d, generator=g, dtype=torch.float64) * mag
    v = torch.randn(*lead, dv if dv is not None else d, generator=g,
                    dtype=torch.float64)
    return [x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v)]


def apply_q(Q: Tensor, v: Tensor) -> Tensor:
    r"""``Q @ V`` per head: ``[H, N, N]`` x ``[N, H, Dv]`` (or ``[N, N]`` x
    ``[N, Dv]``)."""
    if v.dim() == 2:
        return Q @ v
    return torch.einsum('hij,jhd->ihd', Q, v)


def max_err(a: Tensor, b: Tensor) -> float:
    r"""The largest absolute difference, in float64 on the CPU; 0 where
    either is empty."""
    if a.numel() == 0 or b.numel() == 0:
        return 0.0
    diff = a.detach().cpu().double() - b.detach().cpu().double()
    return diff.abs().max().item()


def dense_output(q: Tensor, k: Tensor, v: Tensor, hierarchy: Hierarchy,
                 pair_bias: Optional[Tensor] = None) -> Tensor:
    r"""HSA's output from the dense closed form:
    ``hierarchical_attention_matrix`` applied to :obj:`v`."""
    return apply_q(
        hierarchical_attention_matrix(q, k, hierarchy, pair_bias=pair_bias),
        v)


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


class FullSizeProducts(TorchDispatchMode):
    r"""Records the products ``mul`` of two tensors of one shape
    :obj:`shape` (an ``[N, H, D]`` product or a full-size family table's):
    each is a full-size temporary, forward or backward."""
    def __init__(self, shape):
        super().__init__()
        self.shape, self.seen = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split('.')[0] == 'mul' and all(
                isinstance(a, Tensor) and tuple(a.shape) == self.shape
                for a in args[:2]):
            self.seen += 1
        return func(*args, **(kwargs or {}))
