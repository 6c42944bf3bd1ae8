r"""Deep trees in :func:`hsa_geo.hierarchical_attention`: the sums over paths
and subtrees by pointer doubling (:attr:`HierarchyLayout.cluster_jumps`)
and the log-partitions with their linear backward, against the dense
reference in float64, on both paths (one step per level, and doubling)
forced by the depth from which a hierarchy derives its jumps.
"""
import contextlib
import random
import unittest.mock
from typing import List

import pytest
import torch
from hypothesis import assume, given, strategies as st

import hsa_geo.data.hierarchy as hierarchy_module
import hsa_geo.functional.dynamic_program as dynamic_program
from hsa_geo import Hierarchy, hierarchical_attention
from tests.helpers.attention import dense_output
from tests.helpers.strategies import Forest, fewer, forests, insert_chains

EXACT = 1e-10
PATHS = ('levels', 'jumps')


@contextlib.contextmanager
def forced(paths: str):
    r"""Hierarchies built inside derive their jumps from depth 1 on and the
    dynamic program always takes them (``'jumps'``), or neither
    (``'levels'``); the sums over rows run in chunks of a few rows, whose
    order the jumps rely on."""
    jumps = paths == 'jumps'
    patch = unittest.mock.patch.object
    with patch(hierarchy_module, 'DOUBLING_DEPTH', 0 if jumps else 2**62), \
            patch(dynamic_program, '_STEP_ELEMENTS', 2**62 if jumps else 0), \
            patch(dynamic_program, '_CPU_CHUNK_ELEMENTS', 16):
        yield


def build(f: Forest, paths: str) -> Hierarchy:
    r"""The hierarchy of :obj:`f`, its layout derived under
    :func:`forced`."""
    with forced(paths):
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        layout = h.layout
    assert (layout.cluster_jumps is not None) == (
        paths == 'jumps' and h.depth > 0)
    return h


def caterpillar(depth: int) -> Forest:
    r"""Cluster ``t`` has children leaf ``t`` and cluster ``t + 1``; the
    last cluster has two leaves."""
    n = depth + 1
    parent = [n + t for t in range(depth)] + [n + depth - 1]
    parent += [-1] + [n + t for t in range(depth - 1)]
    return Forest(parent, n)


def recursive_tree(num_clusters: int, extra_leaves: int, seed: int,
                   window: int) -> Forest:
    r"""A random recursive tree: cluster ``c`` hangs below a uniform one of
    the :obj:`window` clusters before it (a small window makes it deep);
    every cluster has a leaf, the extra leaves hang anywhere."""
    rng = random.Random(seed)
    owner = list(range(num_clusters)) + [
        rng.randrange(num_clusters) for _ in range(extra_leaves)]
    rng.shuffle(owner)
    n = len(owner)
    parent = [n + c for c in owner] + [-1] + [
        n + rng.randrange(max(0, c - window), c)
        for c in range(1, num_clusters)]
    return Forest(parent, n)


def forest_of(*trees: Forest) -> Forest:
    r"""The trees side by side: leaves first, then the clusters, in order."""
    n = sum(t.num_leaves for t in trees)
    leaves: List[int] = []
    clusters: List[int] = []
    leaf_off, clus_off = 0, n
    for t in trees:
        def move(p, t=t, clus_off=clus_off):
            return -1 if p < 0 else p - t.num_leaves + clus_off
        leaves += [move(p) for p in t.parent[:t.num_leaves]]
        clusters += [move(p) for p in t.parent[t.num_leaves:]]
        leaf_off += t.num_leaves
        clus_off += t.num_nodes - t.num_leaves
    return Forest(leaves + clusters, n)


DEEP = {
    'caterpillar': caterpillar(40),
    'recursive': recursive_tree(90, 20, 0, 3),
    'chain above a leaf': insert_chains(Forest([3, 3, 3, -1], 3),
                                        [37, 0, 0, 0]),
    'chain above the root': insert_chains(Forest([3, 3, 3, -1], 3),
                                          [0, 0, 0, 37]),
    'unbalanced forest': forest_of(
        caterpillar(33), Forest([-1], 1), Forest([2, 2, -1], 2),
        insert_chains(caterpillar(3), [0, 5, 0, 0, 9, 0, 3])),
}


def inputs(n: int, heads: int, seed: int, dims=(3, 3, 2)):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, heads, d, generator=g, dtype=torch.float64)
                 for d in dims)


def check_against_dense(h: Hierarchy, q, k, v):
    r"""Output and gradients of the dynamic program equal those of ``Q v``
    with the dense ``Q``."""
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    w = torch.randn(v.shape, generator=torch.Generator().manual_seed(1),
                    dtype=v.dtype)
    out = hierarchical_attention(q, k, v, h)
    dense = dense_output(q, k, v, h)
    assert (out - dense).abs().max().item() <= EXACT
    # (q and k of a tree that is a single leaf are unused)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v),
                                allow_unused=True, materialize_grads=True)
    expected = torch.autograd.grad((dense * w).sum(), (q, k, v),
                                   allow_unused=True, materialize_grads=True)
    for got, want in zip(grads, expected):
        assert (got - want).abs().max().item() <= EXACT


@pytest.mark.parametrize('paths', PATHS)
@pytest.mark.parametrize('name', sorted(DEEP))
def test_deep_trees_match_dense(name, paths):
    f = DEEP[name]
    h = build(f, paths)
    assert h.depth > 32
    with forced(paths):
        check_against_dense(h, *inputs(f.num_leaves, 2, 0))


@fewer(4)
@given(f=forests(max_leaves=20, max_depth=8, max_branching=3),
       seed=st.integers(0, 2**31 - 1), paths=st.sampled_from(PATHS))
def test_random_forests_match_dense(f, seed, paths):
    h = build(f, paths)
    # As many jumps as levels (depth <= 2): no doubling to take.
    jumps = h.layout.cluster_jumps
    assume(paths == 'levels' or (
        jumps and len(jumps) < len(h.layout.cluster_levels)))
    with forced(paths):
        check_against_dense(h, *inputs(f.num_leaves, 2, seed))


@pytest.mark.parametrize('paths', PATHS)
def test_paths_agree_in_float32(paths):
    r"""The doubling sums in another order than the levels: the same up to
    rounding, also in float32 on a tree too large for the dense matrix."""
    f = recursive_tree(3000, 1000, 1, 50)
    q, k, v = (x.float() for x in inputs(f.num_leaves, 2, 2))
    h = build(f, paths)
    with forced(paths):
        out = hierarchical_attention(q, k, v, h)
    ref = hierarchical_attention(q.double(), k.double(), v.double(),
                                 build(f, 'levels'))
    assert (out.double() - ref).abs().max().item() <= 1e-4


SMALL = {
    'caterpillar': caterpillar(4),
    'chains': insert_chains(Forest([3, 3, 4, 4, -1], 3), [0, 2, 1, 3, 2]),
}


@pytest.mark.parametrize('paths', PATHS)
@pytest.mark.parametrize('name', sorted(SMALL))
def test_gradcheck_and_gradgradcheck(name, paths):
    f = SMALL[name]
    h = build(f, paths)
    args = tuple(x.requires_grad_()
                 for x in inputs(f.num_leaves, 1, 3, (2, 2, 1)))

    def attention(q, k, v):
        return hierarchical_attention(q, k, v, h)
    with forced(paths):
        assert torch.autograd.gradcheck(attention, args, eps=1e-6,
                                        atol=1e-7)
        assert torch.autograd.gradgradcheck(attention, args, eps=1e-6,
                                            atol=1e-6)


def test_dropout_is_the_same_on_both_paths():
    r"""Dropout draws its masks in the same order on both paths: with the
    generator reseeded, the outputs agree."""
    f = DEEP['unbalanced forest']
    q, k, v = inputs(f.num_leaves, 2, 4)
    outs = []
    for paths in PATHS:
        h = build(f, paths)
        torch.manual_seed(5)
        with forced(paths):
            outs.append(hierarchical_attention(q, k, v, h, dropout_p=0.3,
                                               training=True))
    assert (outs[0] - outs[1]).abs().max().item() <= EXACT
    torch.manual_seed(6)
    other = hierarchical_attention(q, k, v, build(f, 'jumps'), dropout_p=0.3,
                                   training=True)
    assert (other - outs[1]).abs().max().item() > EXACT
