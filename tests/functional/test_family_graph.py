r"""Tests of the exact extensions of docs/math.md, section 6: family graphs
(sparse families) and pair (geometry) biases, in
:class:`hsa_geo.Hierarchy`, :func:`hsa_geo.hierarchical_attention`,
:func:`hsa_geo.hierarchical_attention_matrix`,
:class:`hsa_geo.nn.FamilyGeometryBias` and :class:`hsa_geo.nn.HSAConv`.

The dynamic program is checked against the dense closed form, which applies
the mask and the bias on its own, in float64 on random irregular forests;
both against masked / biased softmax attention on flat trees; and the dense
matrix against the KL minimiser of the constrained family (a third,
optimiser-side construction) with the same mask and bias.
"""
import math
import unittest.mock
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, strategies as st
from torch_geometric.loader import DataLoader

from tests.helpers.constrained_family import (
    ConstrainedFamily, lbfgs_kl, per_tree_log_softmax)
from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.nn import FamilyGeometryBias, HSAConv
from tests.helpers.attention import apply_q, max_err
from tests.helpers.layers import queries_keys_values
from tests.helpers.strategies import (
    balanced_assignments, fewer, flat_tree, Forest, forests, lca_children)

SEEDS = st.integers(0, 2**31 - 1)
HEADS = st.sampled_from([None, 1, 3])
EXACT = 1e-10


def random_family_graph(h: Hierarchy, seed: int, p: float = 0.5
                        ) -> torch.Tensor:
    r"""A random subset of the ordered pairs of distinct siblings."""
    pairs = h.sibling_pairs
    off = pairs[:, pairs[0] != pairs[1]]
    g = torch.Generator().manual_seed(seed)
    return off[:, torch.rand(off.size(1), generator=g) < p]


def make(n, heads, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lead = (n, ) if heads is None else (n, heads)
    return [torch.randn(*lead, d, generator=g, dtype=dtype) for _ in range(3)]


def make_bias(h: Hierarchy, heads, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (h.sibling_pairs.size(1), ) + (() if heads is None else (heads, ))
    return 2.0 * torch.randn(*shape, generator=g, dtype=dtype)


# DP == dense closed form ####################################################


@given(f=forests(max_leaves=30), heads=HEADS, d=st.integers(1, 4),
       seed=SEEDS, p=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       with_bias=st.booleans())
def test_dp_matches_dense_with_family_graph_and_bias(f, heads, d, seed, p,
                                                     with_bias):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    h = h.with_family_graph(random_family_graph(h, seed, p))
    q, k, v = make(f.num_leaves, heads, d, seed)
    bias = make_bias(h, heads, seed + 1) if with_bias else None
    Q = hierarchical_attention_matrix(q, k, h, pair_bias=bias)
    out = hierarchical_attention(q, k, v, h, pair_bias=bias)
    assert max_err(out, apply_q(Q, v)) <= EXACT
    assert torch.allclose(Q.sum(-1), torch.ones((), dtype=Q.dtype))


@given(f=forests(max_leaves=30), heads=HEADS, seed=SEEDS)
def test_bias_without_family_graph_matches_dense(f, heads, seed):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    q, k, v = make(f.num_leaves, heads, 3, seed)
    bias = make_bias(h, heads, seed + 1)
    Q = hierarchical_attention_matrix(q, k, h, pair_bias=bias)
    out = hierarchical_attention(q, k, v, h, pair_bias=bias)
    assert max_err(out, apply_q(Q, v)) <= EXACT


@pytest.mark.parametrize('n,branching', [(64, 4), (64, 8), (48, 4), (16, 16)])
@pytest.mark.parametrize('with_bias', [False, True])
def test_fused_leaf_path_with_family_graph_and_bias(n, branching, with_bias):
    """Leaves in order in equal power-of-two families run the fused leaf
    path; the mask and bias apply there too (a family graph that keeps 90%
    of the pairs is not sparse enough for the pair list)."""
    h = Hierarchy.from_assignments(balanced_assignments(n, branching))
    assert h.layout.leaf_blocks is not None
    h = h.with_family_graph(random_family_graph(h, n + branching, 0.9))
    assert h.layout.leaf_blocks is not None
    q, k, v = make(n, 2, 5, n)
    bias = make_bias(h, 2, 3) if with_bias else None
    Q = hierarchical_attention_matrix(q, k, h, pair_bias=bias)
    out = hierarchical_attention(q, k, v, h, pair_bias=bias)
    assert max_err(out, apply_q(Q, v)) <= EXACT


def test_dense_reference_applies_the_definition():
    """Across a pair the family graph leaves out, Q is 0; across a listed
    pair it is the shared block weight; rows sum to one."""
    f = Forest([6, 6, 6, 7, 7, 7, 8, 8, -1], 6)  # root 8 over 6 and 7
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    edges = torch.tensor([[0, 1, 6], [1, 2, 7]])  # 0->1, 1->2, 6->7
    h = h.with_family_graph(edges)
    q, k, _ = make(6, 2, 4, 0)
    Q = hierarchical_attention_matrix(q, k, h)
    allowed = {(0, 1), (1, 2), (6, 7)}
    for i in range(6):
        for j in range(6):
            if i == j:
                assert (Q[:, i, j] > 0).all()
                continue
            _, a, b = lca_children(f.parent, i, j)
            assert bool((Q[:, i, j] > 0).all()) == ((a, b) in allowed)
    assert torch.allclose(Q.sum(-1), torch.ones((), dtype=Q.dtype))
    # Family 7 has no edges: its leaves keep all the mass within 7 at home.
    assert torch.allclose(Q[:, 3:6, 3:6].diagonal(dim1=1, dim2=2).sum(-1),
                          Q[:, 3:6, 3:6].sum((-1, -2)))


@given(f=forests(max_leaves=25), heads=HEADS, seed=SEEDS)
def test_complete_family_graph_equals_dense_families(f, heads, seed):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    full = h.with_family_graph(random_family_graph(h, seed, 1.0))
    q, k, v = make(f.num_leaves, heads, 3, seed)
    assert max_err(hierarchical_attention(q, k, v, full),
                   hierarchical_attention(q, k, v, h)) <= EXACT
    assert max_err(hierarchical_attention_matrix(q, k, full),
                   hierarchical_attention_matrix(q, k, h)) <= EXACT


# Flat trees: masked / biased softmax attention ##############################


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
        attn_mask=mask).transpose(0, 1)


@given(n=st.integers(1, 25), heads=st.integers(1, 3), seed=SEEDS,
       p=st.sampled_from([0.0, 0.2, 0.6]))
def test_flat_family_graph_is_masked_softmax(n, heads, seed, p):
    f = flat_tree(n)
    h = Hierarchy.from_parent(f.parent, n)
    edges = random_family_graph(h, seed, p)
    h = h.with_family_graph(edges)
    q, k, v = make(n, heads, 4, seed)
    mask = torch.eye(n, dtype=torch.bool)
    mask[edges[0], edges[1]] = True
    assert max_err(hierarchical_attention(q, k, v, h),
                   _sdpa(q, k, v, mask)) <= EXACT


@pytest.mark.parametrize('n', [200, 1100])
def test_wide_family_with_a_dense_family_graph_keeps_its_mask(n):
    """A family graph that keeps most pairs of a wide family of leaves
    leaves it on its table (not the pair list); the table's mask must hold
    there too, where a family without a graph runs as plain softmax
    attention instead (1,100 leaves: exact width; 200: padded to 208)."""
    h = Hierarchy.from_parent([n] * n + [-1], n)
    edges = random_family_graph(h, seed=n, p=0.8)
    h = h.with_family_graph(edges)
    assert not any(b.sparse for b in h.layout.buckets)
    q, k, v = make(n, 2, 3, seed=n)
    mask = torch.eye(n, dtype=torch.bool)
    mask[edges[0], edges[1]] = True
    assert max_err(hierarchical_attention(q, k, v, h),
                   _sdpa(q, k, v, mask)) <= EXACT


@given(n=st.integers(1, 25), heads=st.integers(1, 3), seed=SEEDS)
def test_flat_pair_bias_is_additive_softmax_mask(n, heads, seed):
    f = flat_tree(n)
    h = Hierarchy.from_parent(f.parent, n)
    q, k, v = make(n, heads, 4, seed)
    bias = make_bias(h, heads, seed)
    a, b = h.sibling_pairs
    dense = torch.zeros(heads, n, n, dtype=torch.float64)
    off = a != b  # the diagonal keeps l_aa = g_a = s_aa
    dense[:, a[off], b[off]] = bias[off].t()
    assert max_err(hierarchical_attention(q, k, v, h, pair_bias=bias),
                   _sdpa(q, k, v, dense)) <= EXACT


# KL optimality with a mask and a bias ######################################


KL_FORESTS = forests(max_leaves=10, max_trees=2, max_depth=3)


@fewer(3)
@given(f=KL_FORESTS, d=st.integers(1, 3), seed=SEEDS,
       p=st.sampled_from([0.3, 0.7]), with_bias=st.booleans())
def test_kl_minimiser_with_family_graph_and_bias(f, d, seed, p, with_bias):
    """The closed form is the KL minimiser over the family constrained by
    the blocks and the family graph, against softmax attention whose scores
    carry the bias: a generic optimiser never does better (and converges to
    it from uniform weights), and random perturbations of the optimum never
    lower the KL."""
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    edges = random_family_graph(h, seed, p)
    h = h.with_family_graph(edges)
    q, k, v = make(f.num_leaves, None, d, seed)
    bias_t = make_bias(h, None, seed + 1) if with_bias else None
    bias: Dict[Tuple[int, int], float] = {}
    if bias_t is not None:
        bias = {(a, b): float(x) for (a, b), x in
                zip(h.sibling_pairs.t().tolist(), bias_t.tolist()) if a != b}
    family = ConstrainedFamily(f, set(map(tuple, edges.t().tolist())))
    assume(family.num_params > 0)
    log_p = per_tree_log_softmax(f, q, k, bias=bias)
    Q = hierarchical_attention_matrix(q, k, h, pair_bias=bias_t)
    _, (index, weight) = hierarchical_attention(
        q, k, v, h, return_weights=True, pair_bias=bias_t)
    theta_star = family.theta_from_weights(index, weight)
    assert max_err(family.log_q(theta_star).exp(), Q) <= EXACT
    kl_star = family.kl(family.log_q(theta_star), log_p).item()
    g = torch.Generator().manual_seed(seed + 2)
    for eps in (1e-3, 0.3, 3.0):
        for _ in range(5):
            delta = eps * torch.randn(family.num_params, generator=g,
                                      dtype=torch.float64)
            kl = family.kl(family.log_q(theta_star + delta), log_p).item()
            assert kl >= kl_star - 1e-12 * (1.0 + abs(kl_star))
    # From random logits L-BFGS may stall where a softmax saturates (the KL
    # is not convex in the logits); it converges from uniform weights.
    seen, _ = lbfgs_kl(family, log_p, torch.randn(
        family.num_params, generator=g, dtype=torch.float64), rounds=2,
        max_iter=300)
    uniform_seen, _ = lbfgs_kl(family, log_p, torch.zeros(
        family.num_params, dtype=torch.float64), rounds=6, max_iter=300)
    assert min(seen + uniform_seen) >= kl_star - 1e-9 * (1.0 + abs(kl_star))
    assert uniform_seen[-1] <= kl_star + 1e-5 * (1.0 + abs(kl_star))


def test_mask_changes_the_kl_target_family_not_p():
    """Sanity check of the machinery: ignoring the mask (uniform logits on
    the allowed pairs) is worse than the closed form."""
    f = Forest([6, 6, 6, 7, 7, 7, 8, 8, -1], 6)
    h = Hierarchy.from_parent(f.parent, 6).with_family_graph(
        torch.tensor([[0, 1, 1, 6, 3], [1, 0, 2, 7, 5]]))
    q, k, _ = make(6, None, 3, 5)
    family = ConstrainedFamily(f, {(0, 1), (1, 0), (1, 2), (6, 7), (3, 5)})
    log_p = per_tree_log_softmax(f, q, k)
    Q = hierarchical_attention_matrix(q, k, h)
    uniform = family.kl(family.log_q(torch.zeros(family.num_params,
                                                 dtype=torch.float64)),
                        log_p).item()
    closed = family.kl(Q.clamp_min(1e-300).log(), log_p).item()
    assert uniform > closed + 1e-6


# Weights, gradients, batching ##############################################


@given(f=forests(max_leaves=25), heads=st.sampled_from([None, 2]),
       seed=SEEDS)
def test_family_weights_follow_the_graph(f, heads, seed):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    edges = random_family_graph(h, seed)
    h = h.with_family_graph(edges)
    q, k, v = make(f.num_leaves, heads, 3, seed)
    _, (index, weight) = hierarchical_attention(q, k, v, h,
                                                return_weights=True)
    weight = weight.reshape(index.size(1), heads or 1)
    allowed = set(map(tuple, edges.t().tolist()))
    listed = torch.tensor([a == b or (a, b) in allowed
                           for a, b in index.t().tolist()], dtype=torch.bool)
    assert (weight[~listed] == 0).all()
    assert (weight[listed] > 0).all()
    sums = torch.zeros(h.num_nodes, weight.size(1), dtype=weight.dtype)
    sums.index_add_(0, index[0], weight)
    has_parent = h.parent >= 0
    assert torch.allclose(sums[has_parent], torch.ones(()).double())


DERIVATIVE_CHECKS = {
    'first': lambda f, inputs: torch.autograd.gradcheck(f, inputs),
    'second': lambda f, inputs: torch.autograd.gradgradcheck(
        f, inputs, eps=1e-6, atol=1e-6),
}


@pytest.mark.parametrize('order', sorted(DERIVATIVE_CHECKS))
@fewer(2)
@given(f=forests(max_leaves=7), heads=st.sampled_from([None, 2]), seed=SEEDS)
def test_derivatives_with_family_graph_and_bias(order, f, heads, seed):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    h = h.with_family_graph(random_family_graph(h, seed))
    q, k, v = (t.requires_grad_() for t in make(f.num_leaves, heads, 2, seed))
    bias = make_bias(h, heads, seed).requires_grad_()
    assert DERIVATIVE_CHECKS[order](
        lambda q, k, v, b: hierarchical_attention(q, k, v, h, pair_bias=b),
        (q, k, v, bias))


@pytest.mark.parametrize('order', sorted(DERIVATIVE_CHECKS))
def test_derivatives_fused_path_with_family_graph_and_bias(order):
    h = Hierarchy.from_assignments(balanced_assignments(16, 4))
    h = h.with_family_graph(random_family_graph(h, 1))
    q, k, v = (t.requires_grad_() for t in make(16, 2, 2, 0))
    bias = make_bias(h, 2, 0).requires_grad_()
    assert DERIVATIVE_CHECKS[order](
        lambda q, k, v, b: hierarchical_attention(q, k, v, h, pair_bias=b),
        (q, k, v, bias))


@pytest.mark.parametrize('order', sorted(DERIVATIVE_CHECKS))
def test_every_leaf_on_the_pair_list_in_small_chunks(order):
    """Every leaf in a family on the pair list: the output adds the
    parents' contexts U_F from the clusters' table a few rows at a time
    (chunks of one row forced), and the self terms r_a v_a with their own
    backward. Exact against the dense reference, derivatives too."""
    import hsa_geo.functional.dynamic_program as dp
    h = Hierarchy.from_assignments(balanced_assignments(16, 4))
    # (seed 1: the last leaf's parent has a context)
    h = h.with_family_graph(random_family_graph(h, 1))
    assert h.layout.leaves_outside_leaf_families.numel() == 16
    assert h.layout.sparse.leaf.numel() == 16
    q, k, v = (t.requires_grad_() for t in make(16, 2, 3, 1))
    with unittest.mock.patch.object(dp, '_CPU_CHUNK_ELEMENTS', 1):
        out = hierarchical_attention(q, k, v, h)
        assert max_err(out, apply_q(hierarchical_attention_matrix(
            q, k, h), v)) <= EXACT
        assert DERIVATIVE_CHECKS[order](
            lambda q, k, v: hierarchical_attention(q, k, v, h), (q, k, v))


def test_dataloader_batches_family_graphs():
    hs = []
    for i, f in enumerate([Forest([5, 5, 6, 6, 6, 7, 7, -1], 5),
                           Forest([3, 3, 3, -1], 3),
                           Forest([4, 4, 5, 5, 6, 6, -1], 4)]):
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        hs.append(h.with_family_graph(random_family_graph(h, i, 0.6)))
    xs = [torch.randn(h.num_leaves, 4, dtype=torch.float64) for h in hs]
    data = [NestedSignal.from_hierarchy(h, x) for h, x in zip(hs, xs)]
    batch = next(iter(DataLoader(data, batch_size=3)))
    joined = Hierarchy.batch(hs)
    assert torch.equal(batch.hierarchy.parent, joined.parent)
    as_set = lambda e: set(map(tuple, e.t().tolist()))  # noqa: E731
    assert as_set(batch.hierarchy.family_edge_index) == as_set(
        joined.family_edge_index)
    x = torch.cat(xs)
    out = hierarchical_attention(x, x, x, batch.hierarchy)
    alone = torch.cat([hierarchical_attention(x_, x_, x_, h)
                       for x_, h in zip(xs, hs)])
    assert max_err(out, alone) <= EXACT


def test_batch_of_dense_and_sparse_hierarchies():
    """A dense hierarchy joining sparse ones keeps all its pairs."""
    dense = Hierarchy.from_parent([4, 4, 4, 4, -1], 4)
    sparse = Hierarchy.from_parent([3, 3, 3, -1], 3).with_family_graph(
        torch.tensor([[0], [1]]))
    joined = Hierarchy.batch([dense, sparse])
    x1, x2 = torch.randn(4, 3), torch.randn(3, 3)
    out = hierarchical_attention(torch.cat([x1, x2]), torch.cat([x1, x2]),
                                 torch.cat([x1, x2]), joined)
    assert torch.allclose(out[:4], hierarchical_attention(x1, x1, x1, dense),
                          atol=1e-6)
    assert torch.allclose(out[4:], hierarchical_attention(x2, x2, x2, sparse),
                          atol=1e-6)


def test_to_keeps_the_family_graph():
    h = Hierarchy.from_assignments(balanced_assignments(16, 4))
    h = h.with_family_graph(random_family_graph(h, 0))
    moved = h.to('cpu')
    assert torch.equal(moved.family_edge_index, h.family_edge_index)
    q, k, v = make(16, 2, 3, 0)
    assert max_err(hierarchical_attention(q, k, v, moved),
                   hierarchical_attention(q, k, v, h)) == 0
    assert 'family_edges=' in repr(h)


def test_extreme_scores_with_empty_family_graph_rows_stay_finite():
    h = Hierarchy.from_assignments(balanced_assignments(32, 4))
    h = h.with_family_graph(random_family_graph(h, 0, 0.1))
    q, k, v = make(32, 2, 4, 0, torch.float32)
    out = hierarchical_attention(q * 1e4, k * 1e4, v, h,
                                 pair_bias=make_bias(h, 2, 0,
                                                     torch.float32) * 1e4)
    assert torch.isfinite(out).all()


# Validation ################################################################


BAD_EDGES = [
    (torch.tensor([0, 1]), r'shape \[2, E\]'),
    (torch.tensor([[0], [9]]), r'family_edge_index\[1, 0\] = 9 is not a node'),
    (torch.tensor([[0], [3]]), r'\(0, 3\) is not a pair of siblings'),
    (torch.tensor([[5], [7]]), r'\(5, 7\) is not a pair of siblings'),
    (torch.tensor([[1], [1]]), 'self pair'),
]


@pytest.mark.parametrize('edges,pattern', BAD_EDGES)
def test_bad_family_graph(edges, pattern):
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, 7, 7, -1], 5)
    with pytest.raises(ValueError, match=pattern):
        h.with_family_graph(edges)


@pytest.mark.parametrize('edges', [torch.tensor([[0.0], [1.0]]),
                                   torch.tensor([[True], [False]])])
def test_family_graph_of_the_wrong_dtype(edges):
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, 7, 7, -1], 5)
    with pytest.raises(TypeError, match='integer dtype'):
        h.with_family_graph(edges)


def test_bad_pair_bias():
    h = Hierarchy.from_parent([3, 3, 3, -1], 3)
    q = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match=r'shape \(9, 2\).*got \(9,\)'):
        hierarchical_attention(q, q, q, h, pair_bias=torch.zeros(9))
    with pytest.raises(TypeError, match='floating point'):
        hierarchical_attention(q, q, q, h,
                               pair_bias=torch.zeros(9, 2, dtype=torch.long))


@pytest.mark.parametrize('value', [math.nan, math.inf])
def test_nan_or_positive_infinite_pair_bias_is_refused(value):
    h = Hierarchy.from_parent([3, 3, 3, -1], 3)
    q = torch.randn(3, 2, 4)
    bias = torch.zeros(9, 2)
    bias[4, 1] = value
    with pytest.raises(ValueError, match=r"'pair_bias' row 4 holds NaN or "
                       r"\+inf"):
        hierarchical_attention(q, q, q, h, pair_bias=bias)


@fewer(2)
@given(f=forests(max_leaves=16), heads=HEADS, seed=SEEDS)
def test_minus_infinite_bias_is_a_missing_family_graph_edge(f, heads, seed):
    """A bias of -inf forbids a pair exactly as leaving it out of the family
    graph does."""
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    q, k, v = make(f.num_leaves, heads, 2, seed)
    bias = make_bias(h, heads, seed)
    pairs = h.sibling_pairs
    kept = random_family_graph(h, seed)
    allowed = set(zip(*kept.tolist()))
    off = torch.tensor([a != b and (a, b) not in allowed
                        for a, b in zip(*pairs.tolist())], dtype=torch.bool)
    bias[off] = -math.inf
    sparse = h.with_family_graph(kept)
    masked = make_bias(sparse, heads, seed)
    assert torch.equal(sparse.sibling_pairs, pairs)
    masked[~off] = bias[~off]
    out = hierarchical_attention(q, k, v, h, pair_bias=bias)
    ref = hierarchical_attention(q, k, v, sparse, pair_bias=masked)
    assert max_err(out, ref) <= EXACT


# FamilyGeometryBias and HSAConv ############################################


@pytest.mark.parametrize('level', ['height', 'depth'])
def test_geometry_bias_reads_relative_position_and_level(level):
    #        11            uneven depths: family 10 mixes leaves 5, 6, 7
    #      /    \           and the cluster 9 of leaves 3, 4
    #     8      10
    #   / | \  / | | \
    #  0  1 2  5 6 7  9
    #                / \
    #               3   4
    h = Hierarchy.from_parent([8, 8, 8, 9, 9, 10, 10, 10, 11, 10, 11, -1], 8)
    bias = FamilyGeometryBias(heads=2, max_branching=4, num_levels=3,
                              level=level)
    with torch.no_grad():
        bias.weight.copy_(torch.arange(bias.weight.numel(),
                                       dtype=torch.float).view_as(
                                           bias.weight))
    out = bias(h)
    # Independent levels: by hand from the drawing of the tree.
    family_level = {'height': {8: 0, 9: 0, 10: 1, 11: 2},
                    'depth': {8: 2, 9: 3, 10: 2, 11: 1}}[level]
    rank = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 0, 6: 1, 7: 2, 9: 3, 8: 0,
            10: 1}
    parent = h.parent.tolist()
    for p, (a, b) in enumerate(h.sibling_pairs.t().tolist()):
        lvl = min(family_level[parent[a]], 2)
        expect = bias.weight[lvl, rank[b] - rank[a] + 3]
        assert torch.equal(out[p], expect)
    assert repr(bias) == ('FamilyGeometryBias(heads=2, max_branching=4, '
                          f"num_levels=3, level='{level}')")


def test_geometry_bias_errors():
    with pytest.raises(ValueError, match="'max_branching' must be an int"):
        FamilyGeometryBias(2, max_branching=1)
    # bool is an int subclass; True must not pass as one head
    with pytest.raises(TypeError, match="'heads' must be an int"):
        FamilyGeometryBias(True)
    with pytest.raises(ValueError, match="'num_far_buckets' must be an"):
        FamilyGeometryBias(2, num_far_buckets=0)
    with pytest.raises(ValueError, match="'max_distance' must be an int in"):
        FamilyGeometryBias(2, max_branching=4, max_distance=4)
    with pytest.raises(TypeError, match="'max_distance' must be an int"):
        FamilyGeometryBias(2, max_distance=64.0)
    with pytest.raises(ValueError, match="'level' must be 'height' or"):
        FamilyGeometryBias(2, level='width')
    with pytest.raises(ValueError, match="'by' must be 'height'"):
        Hierarchy.from_parent([5] * 5 + [-1], 5).family_level('width')


# The old rule, before wide families were bucketed: column
# rank(b) - rank(a) + max_branching - 1, row min(level, num_levels - 1).
# The cells (row, column) below were printed by that code.
OLD_RULE_CELLS = [
    ([8, 8, 8, 9, 9, 10, 10, 10, 11, 10, 11, -1], 8, 4, 3, 'height',
     [(0, 3), (0, 4), (0, 2), (0, 3), (2, 3), (2, 4), (2, 2), (2, 3),
      (0, 3), (0, 4), (0, 5), (0, 2), (0, 3), (0, 4), (0, 1), (0, 2),
      (0, 3), (1, 3), (1, 4), (1, 5), (1, 6), (1, 2), (1, 3), (1, 4),
      (1, 5), (1, 1), (1, 2), (1, 3), (1, 4), (1, 0), (1, 1), (1, 2),
      (1, 3)]),
    ([3, 3, 3, -1], 3, 3, 2, 'depth',
     [(1, 2), (1, 3), (1, 4), (1, 1), (1, 2), (1, 3), (1, 0), (1, 1),
      (1, 2)]),
    ([4, 4, 5, 5, 6, 6, -1], 4, 2, 2, 'height',
     [(0, 1), (0, 2), (0, 0), (0, 1), (0, 1), (0, 2), (0, 0), (0, 1),
      (1, 1), (1, 2), (1, 0), (1, 1)]),
]


@pytest.mark.parametrize('parent,num_leaves,max_branching,num_levels,level,'
                         'cells', OLD_RULE_CELLS)
def test_geometry_bias_within_max_branching_keeps_the_old_rule(
        parent, num_leaves, max_branching, num_levels, level, cells):
    h = Hierarchy.from_parent(parent, num_leaves)
    bias = FamilyGeometryBias(heads=2, max_branching=max_branching,
                              num_levels=num_levels, level=level)
    assert bias.weight.shape[1] == 2 * max_branching - 1 + 2 * 8
    with torch.no_grad():
        bias.weight.normal_()
    rows, columns = torch.tensor(cells).t()
    assert torch.equal(bias(h), bias.weight[rows, columns])


def _bucket_by_formula(d: int, b: int, k: int, dist: int) -> int:
    r"""The docstring's :math:`s(d)`, in floating point."""
    if abs(d) < b:
        return d
    far = min(k - 1, math.floor(k * math.log(abs(d) / b) / math.log(dist / b)))
    return int(math.copysign(b + far, d))


@pytest.mark.parametrize('b,k,dist', [(4, 4, 32), (16, 8, 128), (2, 1, 3),
                                      (3, 5, 10)])
def test_geometry_bias_buckets_monotone_symmetric_log_spaced(b, k, dist):
    bias = FamilyGeometryBias(1, max_branching=b, num_far_buckets=k,
                              max_distance=dist)
    d = torch.arange(0, 4 * dist)
    s = bias.relative_bucket(d)
    assert torch.equal(bias.relative_bucket(-d), -s)  # symmetric in sign
    assert bool((s[1:] >= s[:-1]).all())  # monotone in |d|
    assert torch.equal(s[:b], d[:b])  # exact below max_branching
    assert bool((s[b:] >= b).all())
    assert bool((s[dist:] == b + k - 1).all())  # one bucket from D on
    assert s.unique().numel() <= b + k
    for value in range(-4 * dist + 1, 4 * dist):
        assert bias.relative_bucket(torch.tensor(value)).item() == \
            _bucket_by_formula(value, b, k, dist), value


def test_geometry_bias_bucket_boundary_is_exact():
    # k log(n / b) / log(D / b) = 2 log(n / 3) / log(4) is exactly 1 at
    # n = 6, where a floating-point floor may give 0.
    bias = FamilyGeometryBias(1, max_branching=3, num_far_buckets=2,
                              max_distance=12)
    s = bias.relative_bucket(torch.tensor([5, 6, 11, 12, -6, -5]))
    assert s.tolist() == [3, 4, 4, 4, -4, -3]


def _wide_hierarchy(width: int) -> Hierarchy:
    r"""A family of :obj:`width` leaves and one of 3, under one root."""
    n = width + 3
    return Hierarchy.from_parent([n] * width + [n + 1] * 3 + [n + 2] * 2
                                 + [-1], n)


def test_geometry_bias_family_of_200_children():
    h = Hierarchy.from_parent([200] * 200 + [-1], 200)
    bias = FamilyGeometryBias(heads=3)  # max_branching=16
    with torch.no_grad():
        bias.weight.normal_()
    out = bias(h)
    assert out.shape == (200 * 200, 3)
    out.square().sum().backward()
    # Every bucket of the level-0 row is used, the far ones included.
    assert bool((bias.weight.grad[0] != 0).all())
    assert bool((bias.weight.grad[1:] == 0).all())


def test_geometry_bias_equals_table_lookup_on_wide_family():
    b, k, dist = 4, 3, 20
    h = _wide_hierarchy(30)
    bias = FamilyGeometryBias(heads=2, max_branching=b, num_levels=2,
                              num_far_buckets=k, max_distance=dist)
    with torch.no_grad():
        bias.weight.normal_()
    out = bias(h)
    rank = h.sibling_rank.tolist()
    level = h.family_level('height').tolist()
    for p, (x, y) in enumerate(h.sibling_pairs.t().tolist()):
        s = _bucket_by_formula(rank[y] - rank[x], b, k, dist)
        if abs(s) < b:
            column = s + b - 1
        elif s > 0:
            column = 2 * b - 1 + s - b
        else:
            column = 2 * b - 1 + k - s - b
        assert torch.equal(out[p], bias.weight[min(level[x], 1), column])


def test_geometry_bias_loads_a_table_without_far_buckets():
    old = torch.randn(3, 2 * 4 - 1, 2)
    bias = FamilyGeometryBias(heads=2, max_branching=4, num_levels=3)
    bias.load_state_dict({'weight': old})
    assert torch.equal(bias.weight[:, :7], old)
    assert bool((bias.weight[:, 7:] == 0).all())


def test_hsa_conv_geometry_bias_wider_than_max_branching():
    torch.manual_seed(0)
    h = _wide_hierarchy(20)
    n = h.num_leaves
    conv = HSAConv(6, 3, heads=2, geometry_bias=True, max_branching=4,
                   root_weight=False).double()
    with torch.no_grad():
        conv.geometry_bias.weight.normal_()
    x = torch.randn(n, 6, dtype=torch.float64)
    out = conv(x, h)
    q, k, v = queries_keys_values(conv, x)
    expected = hierarchical_attention(q, k, v, h,
                                      pair_bias=conv.geometry_bias(h))
    assert max_err(out, expected.reshape(n, 6)) <= EXACT
    out.sum().backward()
    # The far buckets (columns 7 on) of the level-0 row learn.
    assert conv.geometry_bias.weight.grad[0, 7:].abs().sum() > 0


def test_hsa_conv_geometry_bias_equals_functional():
    torch.manual_seed(0)
    h = Hierarchy.from_assignments(balanced_assignments(32, 4))
    h = h.with_family_graph(random_family_graph(h, 2, 0.6))
    conv = HSAConv(6, 3, heads=2, geometry_bias=True, max_branching=4,
                   root_weight=False).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    plain = conv(x, h)
    with torch.no_grad():  # starts at zero: plain HSA
        conv.geometry_bias.weight.normal_()
    out = conv(x, h)
    assert not torch.allclose(out, plain)
    q, k, v = queries_keys_values(conv, x)
    Q = hierarchical_attention_matrix(q, k, h,
                                      pair_bias=conv.geometry_bias(h))
    assert max_err(out, apply_q(Q, v).reshape(32, 6)) <= EXACT
    out.sum().backward()
    assert conv.geometry_bias.weight.grad.abs().sum() > 0
    conv.reset_parameters()
    assert (conv.geometry_bias.weight == 0).all()
