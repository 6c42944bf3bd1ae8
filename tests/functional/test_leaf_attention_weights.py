r"""Tests of :func:`hsa_geo.functional.leaf_attention_weights`: the entries
of the HSA matrix on given leaf edges (docs/math.md, section 3.6).

The entries rebuilt from the family weights of the dynamic program are
checked against the dense closed form
(:func:`hsa_geo.hierarchical_attention_matrix`), which shares no code with
them, in float64 on random irregular forests with family graphs and pair
biases, at every ordered pair of leaves (self pairs and pairs across trees
included) and at random edge sets with repeats; on flat trees against
PyG's sparse softmax over the incoming edges; and their gradients against
the dense matrix's and by ``gradcheck``.
"""
import doctest
import importlib
import math

import pytest
import torch
from hypothesis import assume, given, strategies as st
from torch_geometric.utils import softmax

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.functional import FamilyWeights, leaf_attention_weights
from tests.helpers.attention import max_err, seeded_qkv
from tests.helpers.strategies import (fewer, flat_tree, Forest, forests,
                                      insert_chains)

SEEDS = st.integers(0, 2**31 - 1)
HEADS = st.sampled_from([None, 1, 3])  # None: 2-D [N, D] inputs
EXACT = 1e-12


def with_random_family_graph(h: Hierarchy, seed: int, p: float) -> Hierarchy:
    r"""``h`` with a random fraction ``p`` of its distinct sibling pairs as
    family graph (``p = 1``: no family graph)."""
    if p == 1.0:
        return h
    pairs = h.sibling_pairs
    off = pairs[:, pairs[0] != pairs[1]]
    g = torch.Generator().manual_seed(seed)
    return h.with_family_graph(off[:, torch.rand(off.size(1), generator=g)
                                   < p])


def all_pairs(n: int, seed: int) -> torch.Tensor:
    r"""``[2, n^2]`` every ordered pair of leaves, in random order."""
    j, i = torch.meshgrid(torch.arange(n), torch.arange(n), indexing='ij')
    edges = torch.stack([j.reshape(-1), i.reshape(-1)])
    g = torch.Generator().manual_seed(seed)
    return edges[:, torch.randperm(n * n, generator=g)]


def dense_at(Q: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    r"""``Q[i, j]`` per edge ``j -> i``: ``[E, H]`` (``[E]`` for 2-D)."""
    j, i = edge_index
    return Q[i, j] if Q.dim() == 2 else Q[:, i, j].t()


# Equal to the dense matrix ##################################################


@given(f=forests(max_leaves=20), heads=HEADS, d=st.integers(1, 4),
       seed=SEEDS, p=st.sampled_from([0.0, 0.5, 1.0]),
       with_bias=st.booleans())
def test_matches_dense_at_every_pair(f, heads, d, seed, p, with_bias):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    h = with_random_family_graph(h, seed, p)
    q, k, v = seeded_qkv(f.num_leaves, heads, d, seed)
    bias = None
    if with_bias:
        g = torch.Generator().manual_seed(seed + 1)
        bias = torch.randn(h.num_sibling_pairs, *q.shape[1:-1],
                           generator=g, dtype=torch.float64)
    _, weights = hierarchical_attention(q, k, v, h, pair_bias=bias,
                                        return_weights=True)
    edge_index = all_pairs(f.num_leaves, seed)
    alpha = leaf_attention_weights(weights, h, edge_index)
    Q = hierarchical_attention_matrix(q, k, h, pair_bias=bias)
    assert alpha.shape == (edge_index.size(1), ) + q.shape[1:-1]
    assert alpha.dtype == torch.float64
    assert max_err(alpha, dense_at(Q, edge_index)) <= EXACT


@given(f=forests(max_leaves=30, max_depth=7), heads=st.sampled_from([1, 2]),
       seed=SEEDS, num_edges=st.integers(0, 60))
def test_matches_dense_at_random_edges(f, heads, seed, num_edges):
    r"""Random edges with repeats, self loops and pairs across trees."""
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    q, k, v = seeded_qkv(f.num_leaves, heads, 3, seed)
    _, weights = hierarchical_attention(q, k, v, h, scale=0.7,
                                        return_weights=True)
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(f.num_leaves, (2, num_edges), generator=g)
    edge_index[:, ::5] = edge_index[0, ::5]  # some self loops
    alpha = leaf_attention_weights(weights, h, edge_index)
    Q = hierarchical_attention_matrix(q, k, h, scale=0.7)
    assert alpha.shape == (num_edges, heads)
    assert max_err(alpha, dense_at(Q, edge_index)) <= EXACT


def test_uneven_depths_and_long_chains():
    r"""Leaf 0 right under the root (depth 1), leaf 1 below a chain of 40
    single-child nodes (depth 42), leaves 2 and 3 a family below a chain of
    20 (depth 23); leaf 4 is a tree alone (depth 0)."""
    f = Forest([5, 6, 7, 7, -1, -1, 5, 6], 5)
    lengths = [0, 40, 0, 0, 0, 0, 0, 20]
    f = insert_chains(f, lengths + [0] * (len(f.parent) - len(lengths)))
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    assert h.node_depth[:5].tolist() == [1, 42, 23, 23, 0]
    q, k, v = seeded_qkv(5, 2, 3, 0)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    edge_index = all_pairs(5, 0)
    alpha = leaf_attention_weights(weights, h, edge_index)
    Q = hierarchical_attention_matrix(q, k, h)
    assert max_err(alpha, dense_at(Q, edge_index)) <= EXACT
    # Leaf 4 keeps all of its attention and gives none to the other tree.
    j, i = edge_index
    alone = alpha[(i == 4) & (j == 4)]
    assert torch.equal(alone, torch.ones_like(alone))
    assert bool((alpha[(i == 4) != (j == 4)] == 0).all())


def test_rows_sum_to_one_over_incoming_edges():
    r"""Over the incoming edges of every leaf from all leaves, ``alpha``
    sums to one: the target is the query (PyG's orientation)."""
    h = Hierarchy.from_parent([6, 6, 7, 7, 7, 8, 8, 8, -1], 6)
    q, k, v = seeded_qkv(6, 3, 4, 1)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    edge_index = all_pairs(6, 1)
    alpha = leaf_attention_weights(weights, h, edge_index)
    total = torch.zeros(6, 3, dtype=alpha.dtype).index_add_(
        0, edge_index[1], alpha)
    assert max_err(total, torch.ones_like(total)) <= EXACT


# Flat trees: softmax attention over the incoming edges ######################


@given(n=st.integers(1, 12), heads=st.sampled_from([1, 3]), seed=SEEDS,
       p=st.sampled_from([0.3, 1.0]))
def test_flat_tree_is_softmax_over_incoming_edges(n, heads, seed, p):
    r"""On one family of all leaves with a family graph, HSA is softmax
    attention over the graph's edges plus self loops: PyG's
    :func:`~torch_geometric.utils.softmax` grouped by the target."""
    f = flat_tree(n)
    h = with_random_family_graph(Hierarchy.from_parent(f.parent, n), seed, p)
    q, k, v = seeded_qkv(n, heads, 4, seed)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    if h.family_edge_index is None:
        graph = all_pairs(n, seed)
        graph = graph[:, graph[0] != graph[1]]
    else:
        graph = h.family_edge_index  # (a, b): a attends to b, edge b -> a
        graph = graph.flip(0)
    loops = torch.arange(n).repeat(2, 1)
    edge_index = torch.cat([graph, loops], dim=1)
    alpha = leaf_attention_weights(weights, h, edge_index)
    j, i = edge_index
    score = (q[i] * k[j]).sum(-1) / math.sqrt(4)
    assert max_err(alpha, softmax(score, edge_index[1], num_nodes=n)) \
        <= EXACT
    # A pair off the family graph has no weight.
    if h.family_edge_index is not None:
        listed = set(map(tuple, edge_index.t().tolist()))
        missing = [e for e in all_pairs(n, seed).t().tolist()
                   if tuple(e) not in listed]
        if missing:
            off = leaf_attention_weights(weights, h,
                                         torch.tensor(missing).t())
            assert bool((off == 0).all())


# Gradients ##################################################################


def test_gradcheck_tiny_tree():
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, 7, 7, -1], 5)
    h = h.with_family_graph(torch.tensor([[0, 2, 3, 5], [1, 3, 2, 6]]))
    q, k, _ = seeded_qkv(5, 2, 2, 3, requires_grad=True)
    edge_index = torch.tensor([[1, 0, 2, 4, 3, 0, 2], [0, 0, 1, 2, 2, 4, 3]])

    def alpha(q, k):
        _, weights = hierarchical_attention(q, k, q.detach(), h,
                                            return_weights=True)
        return leaf_attention_weights(weights, h, edge_index)

    assert torch.autograd.gradcheck(alpha, (q, k))


@fewer(4)
@given(f=forests(min_leaves=2, max_leaves=10), seed=SEEDS)
def test_gradients_match_dense(f, seed):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    assume(h.num_families > 0)  # else nothing depends on q and k
    q, k, v = seeded_qkv(f.num_leaves, 2, 3, seed, requires_grad=True)
    edge_index = all_pairs(f.num_leaves, seed)
    g = torch.Generator().manual_seed(seed)
    seed_grad = torch.randn(edge_index.size(1), 2, generator=g,
                            dtype=torch.float64)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    alpha = leaf_attention_weights(weights, h, edge_index)
    grads = torch.autograd.grad((alpha * seed_grad).sum(), (q, k))
    Q = hierarchical_attention_matrix(q, k, h)
    dense = torch.autograd.grad(
        (dense_at(Q, edge_index) * seed_grad).sum(), (q, k))
    for got, want in zip(grads, dense):
        assert max_err(got, want) <= 1e-10


# Shapes, dtypes and edge cases ##############################################


def test_single_head_float32_empty_and_no_family():
    h = Hierarchy.from_parent([3, 3, 3, -1], 3)
    q, k, v = (x.float() for x in seeded_qkv(3, None, 2, 0))
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    edge_index = torch.tensor([[0, 1], [1, 1]], dtype=torch.int32)
    alpha = leaf_attention_weights(weights, h, edge_index)
    assert alpha.shape == (2, ) and alpha.dtype == torch.float32
    empty = leaf_attention_weights(weights, h,
                                   torch.empty(2, 0, dtype=torch.long))
    assert empty.shape == (0, )
    # Leaves only: every leaf is its own tree and attends to itself.
    h = Hierarchy.from_parent([-1, -1, -1], 3)
    q, k, v = seeded_qkv(3, 2, 2, 0)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    alpha = leaf_attention_weights(weights, h, torch.tensor([[0, 1, 2],
                                                             [0, 0, 2]]))
    assert torch.equal(alpha, torch.tensor([[1., 1.], [0., 0.], [1., 1.]],
                                           dtype=torch.float64))


def test_docstring_example():
    # (the package's function of the same name hides the module attribute)
    module = importlib.import_module(
        'hsa_geo.functional.leaf_attention_weights')
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# Bad input ##################################################################


def _setup():
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    q, k, v = seeded_qkv(4, 2, 3, 0)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    return h, weights, torch.tensor([[0, 1, 2], [1, 3, 2]])


def test_bad_types():
    h, weights, edge_index = _setup()
    with pytest.raises(TypeError, match='hierarchy'):
        leaf_attention_weights(weights, h.parent, edge_index)
    with pytest.raises(TypeError, match='FamilyWeights'):
        leaf_attention_weights(tuple(weights), h, edge_index)
    with pytest.raises(TypeError, match='edge_index'):
        leaf_attention_weights(weights, h, edge_index.float())
    with pytest.raises(TypeError, match='weights.weight'):
        leaf_attention_weights(
            FamilyWeights(weights.index, weights.weight.long()), h,
            edge_index)


@pytest.mark.parametrize('bad', [-1, 4, 6])  # 4 and 6 are clusters
def test_edge_out_of_range_names_the_edge(bad):
    h, weights, edge_index = _setup()
    edge_index[1, 2] = bad
    with pytest.raises(ValueError, match=r'edge_index\[:, 2\].*leaf ids'):
        leaf_attention_weights(weights, h, edge_index)


def test_bad_edge_shape():
    h, weights, edge_index = _setup()
    with pytest.raises(ValueError, match=r'\[2, E\]'):
        leaf_attention_weights(weights, h, edge_index[0])


def test_weights_of_another_hierarchy():
    h, weights, edge_index = _setup()
    other = Hierarchy.from_parent([4, 4, 4, 5, 6, 6, -1], 4)
    with pytest.raises(ValueError, match='one row per sibling pair'):
        leaf_attention_weights(weights, other, edge_index)
    # Same number of pairs, other siblings: (0, 1) and (2, 3) regrouped.
    other = Hierarchy.from_parent([4, 5, 4, 5, 6, 6, -1], 4)
    with pytest.raises(ValueError, match='not a pair of siblings'):
        leaf_attention_weights(weights, other, edge_index)
    with pytest.raises(ValueError, match='one row per sibling pair'):
        leaf_attention_weights(
            FamilyWeights(weights.index, weights.weight[None]), h,
            edge_index)


def test_weights_without_a_self_pair():
    h, weights, edge_index = _setup()
    index = weights.index.clone()
    self_pair = int(((index[0] == 5) & (index[1] == 5)).nonzero())
    index[:, self_pair] = torch.tensor([5, 4])  # a duplicate of (5, 4)
    with pytest.raises(ValueError, match=r'self pair \(5, 5\)'):
        leaf_attention_weights(FamilyWeights(index, weights.weight), h,
                               edge_index)
