r"""Tests of :func:`hsa_geo.hierarchical_attention` (the dynamic program) and
:func:`hsa_geo.hierarchical_attention_matrix` (the dense closed form).

Every property of docs/math.md, section 4 is checked on random irregular
forests (see ``tests/helpers/strategies.py``) in float64:

1. a flat tree is softmax attention;
2. the dense ``Q`` is row-stochastic, non-negative and satisfies the block
   constraint;
3. the dynamic program equals ``Q @ V`` and its family weights rebuild ``Q``;
4. ``Q`` minimises the total KL to per-tree softmax attention, checked with
   a third, optimiser-side construction of the constrained family;
5. single-child nodes are transparent, relabelling is equivariant, a forest
   gives each tree what it gets alone;
6. nothing of size N^2 is built.

Then gradients, dtypes, numerical range, dropout and input validation.
"""
import contextlib
import math
import unittest.mock
from typing import Dict, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from hypothesis import assume, given, strategies as st

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.functional.softmax_attention import softmax_attention
from tests.helpers.attention import FullSizeProducts, apply_q, dense_output, \
    fragment_forest, max_err, seeded_qkv
from tests.helpers.constrained_family import (
    ConstrainedFamily, lbfgs_kl, per_tree_log_softmax, same_tree_mask)
from tests.helpers.strategies import (
    balanced_assignments, fewer, flat_tree, Forest, forests, insert_chains,
    lca_children, leaves_under, relabel, single_trees)

SEEDS = st.integers(0, 2**31 - 1)
HEADS = st.sampled_from([None, 1, 3])  # None: 2-D [N, D] inputs
DIMS = st.integers(1, 5)
SCALES = st.one_of(st.none(), st.floats(0.05, 2.0))
EXACT = 1e-10  # float64 agreement between independent constructions


def build(f: Forest) -> Hierarchy:
    return Hierarchy.from_parent(f.parent, f.num_leaves)


# 1. Flat tree == softmax attention ##########################################


def leaf_sdpa(q, k, v, **kwargs):
    """Softmax attention over leaves given as [N, D] or [N, H, D]."""
    if q.dim() == 2:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
        **kwargs).transpose(0, 1)


@given(n=st.integers(1, 40), heads=HEADS, d=DIMS, dv=DIMS, seed=SEEDS,
       scale=SCALES)
def test_flat_tree_is_softmax(n, heads, d, dv, seed, scale):
    """One root whose children are all leaves: the constraint is empty, so
    HSA is exactly softmax attention."""
    q, k, v = seeded_qkv(n, heads, d, seed, dv=dv)
    out = hierarchical_attention(q, k, v, build(flat_tree(n)), scale=scale)
    ref = leaf_sdpa(q, k, v, scale=scale)
    assert out.shape == ref.shape
    assert max_err(out, ref) <= EXACT


@given(sizes=st.lists(st.integers(1, 8), min_size=1, max_size=5), heads=HEADS,
       d=DIMS, seed=SEEDS)
def test_forest_of_flat_trees_is_block_softmax(sizes, heads, d, seed):
    """Trees never attend to each other: softmax with a block-diagonal
    mask."""
    h = Hierarchy.batch([build(flat_tree(s)) for s in sizes])
    n = sum(sizes)
    q, k, v = seeded_qkv(n, heads, d, seed)
    tree = torch.repeat_interleave(torch.arange(len(sizes)),
                                   torch.tensor(sizes))
    mask = tree[:, None] == tree[None, :]
    ref = leaf_sdpa(q, k, v, attn_mask=mask)
    assert max_err(hierarchical_attention(q, k, v, h), ref) <= EXACT


# 2. The dense Q is row-stochastic and constrained ###########################


@given(f=forests(max_leaves=30), heads=HEADS, d=DIMS, seed=SEEDS,
       scale=SCALES)
def test_dense_q_rows_sum_to_one(f, heads, d, seed, scale):
    """Q >= 0, rows sum to 1, zero across trees, and every off-diagonal
    block (i under a, j under b != a, LCA F) is constant: the reference
    really lies in the constrained family."""
    h = build(f)
    q, k, _ = seeded_qkv(f.num_leaves, heads, d, seed, dv=1)
    Q = hierarchical_attention_matrix(q, k, h, scale=scale)
    n = f.num_leaves
    assert Q.shape == ((n, n) if heads is None else (heads, n, n))
    Q = Q.reshape(-1, n, n)
    assert bool((Q >= 0).all())
    assert max_err(Q.sum(-1), torch.ones(Q.shape[:2])) <= 1e-12
    across = ~same_tree_mask(f)
    assert bool((Q[:, across] == 0).all())
    blocks: Dict[tuple, torch.Tensor] = {}
    for i in range(n):
        for j in range(n):
            key = lca_children(f.parent, i, j) if i != j else None
            if key is None:
                continue
            if key in blocks:
                assert max_err(Q[:, i, j], blocks[key]) <= 1e-14
            else:
                blocks[key] = Q[:, i, j]


@given(f=forests(max_leaves=40), heads=HEADS, d=DIMS, seed=SEEDS)
def test_dp_rows_sum_to_one(f, heads, d, seed):
    """With all values one, every output is one (rows of Q sum to 1)."""
    q, k, _ = seeded_qkv(f.num_leaves, heads, d, seed, dv=1)
    v = torch.ones(q.shape[:-1] + (3, ), dtype=torch.float64)
    out = hierarchical_attention(q, k, v, build(f))
    assert max_err(out, torch.ones_like(out)) <= 1e-12


# 3. DP == dense Q @ V, and the family weights ##############################


@given(f=forests(max_leaves=40), heads=HEADS, d=DIMS, dv=DIMS, seed=SEEDS,
       scale=SCALES)
def test_dp_matches_dense(f, heads, d, dv, seed, scale):
    """The dynamic program equals Q @ V with Q built densely from the closed
    form (independent code), with value dim != query dim and any scale."""
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, heads, d, seed, dv=dv)
    out = hierarchical_attention(q, k, v, h, scale=scale)
    assert out.shape == v.shape and out.dtype == torch.float64
    Q = hierarchical_attention_matrix(q, k, h, scale=scale)
    assert max_err(out, apply_q(Q, v)) <= EXACT


def test_default_scale_is_inverse_sqrt_d():
    f = Forest([5, 5, 6, 6, 6, 6, -1], 5)
    q, k, v = seeded_qkv(5, 2, 4, 0, dv=3)
    h = build(f)
    a = hierarchical_attention(q, k, v, h)
    b = hierarchical_attention(q, k, v, h, scale=0.5)
    c = hierarchical_attention(q, k, v, h, scale=1.0)
    assert max_err(a, b) <= EXACT
    assert max_err(a, c) > 1e-6  # the scale does matter


def q_from_family_weights(f: Forest, index, weight) -> torch.Tensor:
    r"""Rebuilds Q ``[H, N, N]`` from pi by the downward pass of the closed
    form: ``r_root = 1``, ``r_a = r_F pi_F(a -> a)``,
    ``Q[i, j] = r_F pi_F(a -> b) / |b|``, ``Q[i, i] = r_i``."""
    n, parent = f.num_leaves, f.parent
    pi = {(a, b): weight[p] for p, (a, b) in enumerate(index.t().tolist())}
    size = [len(u) for u in leaves_under(parent, n)]
    heads = weight.size(1)
    r: Dict[int, torch.Tensor] = {}

    def mass(x):
        if x not in r:
            p = parent[x]
            r[x] = torch.ones(heads, dtype=weight.dtype) if p < 0 else \
                mass(p) * pi[(x, x)]
        return r[x]

    Q = torch.zeros(heads, n, n, dtype=weight.dtype)
    for i in range(n):
        Q[:, i, i] = mass(i)
        for j in range(n):
            t = lca_children(parent, i, j) if i != j else None
            if t is not None:
                fam, a, b = t
                Q[:, i, j] = mass(fam) * pi[(a, b)] / size[b]
    return Q


@given(f=forests(max_leaves=30), heads=st.sampled_from([1, 3]), d=DIMS,
       seed=SEEDS, scale=SCALES)
def test_family_weights(f, heads, d, seed, scale):
    """pi comes in the order of ``sibling_pairs``, each row (fixed a) is a
    distribution over the siblings of a, and pi rebuilds the dense Q."""
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, heads, d, seed, dv=2)
    out, (index, weight) = hierarchical_attention(q, k, v, h, scale=scale,
                                                  return_weights=True)
    assert max_err(out, hierarchical_attention(q, k, v, h, scale=scale)) == 0
    assert torch.equal(index, h.sibling_pairs)
    assert weight.shape == (index.size(1), heads)
    assert bool((weight >= 0).all())
    row_sum = torch.zeros(h.num_nodes, heads, dtype=weight.dtype)
    row_sum.index_add_(0, index[0], weight)
    has_parent = torch.tensor(f.parent) >= 0
    assert max_err(row_sum[has_parent],
                   torch.ones_like(row_sum[has_parent])) <= 1e-12
    assert bool((row_sum[~has_parent] == 0).all())
    Q = hierarchical_attention_matrix(q, k, h, scale=scale)
    assert max_err(q_from_family_weights(f, index, weight), Q) <= EXACT


def test_family_weights_single_head_and_no_family():
    f = Forest([4, 4, 5, 5, 5, -1], 4)
    q, k, v = seeded_qkv(4, None, 3, 1, dv=2)
    out, (index, weight) = hierarchical_attention(q, k, v, build(f),
                                                  return_weights=True)
    assert out.shape == (4, 2)
    assert weight.shape == (index.size(1), ) == (2 * 2 + 3 * 3, )
    # Leaves only: no family, no weights, every leaf attends to itself.
    h = Hierarchy.from_parent([-1, -1, -1], 3)
    q, k, v = seeded_qkv(3, 2, 3, 1, dv=2)
    out, (index, weight) = hierarchical_attention(q, k, v, h,
                                                  return_weights=True)
    assert index.shape == (2, 0) and weight.shape == (0, 2)
    assert max_err(out, v) == 0


# 4. Q minimises the KL to softmax ##########################################


KL_FORESTS = forests(max_leaves=12, max_trees=2, max_depth=3)


def _kl_setup(f, d, seed):
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, None, d, seed, dv=1)
    family = ConstrainedFamily(f)
    log_p = per_tree_log_softmax(f, q, k)
    Q = hierarchical_attention_matrix(q, k, h)
    _, (index, weight) = hierarchical_attention(q, k, v, h,
                                                return_weights=True)
    theta_star = family.theta_from_weights(index, weight)
    kl_star = family.kl(Q.log(), log_p).item()
    return family, log_p, Q, theta_star, kl_star


@fewer(4)
@given(f=KL_FORESTS, d=st.integers(1, 3), seed=SEEDS)
def test_kl_optimiser_never_beats_closed_form(f, d, seed):
    """A generic optimiser (L-BFGS) over the constrained family, started
    from random logits, never finds a lower total KL than the closed form;
    started from uniform family weights, it converges to it. (From a random
    start it may stall where a family's softmax saturates: the total
    KL(Q || P) is not convex in the logits, and its gradient vanishes
    there.)"""
    family, log_p, Q, theta_star, kl_star = _kl_setup(f, d, seed)
    assume(family.num_params > 0)
    # The third construction agrees with the dense one at the optimum.
    assert max_err(family.log_q(theta_star).exp(), Q) <= EXACT
    g = torch.Generator().manual_seed(seed + 1)
    seen, _ = lbfgs_kl(family, log_p, 2.0 * torch.randn(
        family.num_params, generator=g, dtype=torch.float64), rounds=3)
    uniform_seen, theta = lbfgs_kl(
        family, log_p, torch.zeros(family.num_params, dtype=torch.float64),
        rounds=3)
    tol = 1e-9 * (1.0 + kl_star)
    assert min(seen + uniform_seen) >= kl_star - tol
    final = family.kl(family.log_q(theta), log_p).item()
    assert final <= kl_star + 1e-6 * (1.0 + kl_star)


@fewer(2)
@given(f=KL_FORESTS, d=st.integers(1, 4), seed=SEEDS,
       eps=st.sampled_from([1e-4, 1e-2, 0.3, 3.0]))
def test_kl_closed_form_is_stationary_and_minimal(f, d, seed, eps):
    """The gradient of the total KL vanishes at the closed form's logits and
    random perturbations of them, small or large, never lower the KL."""
    family, log_p, Q, theta_star, kl_star = _kl_setup(f, d, seed)
    assume(family.num_params > 0)
    theta = theta_star.clone().requires_grad_()
    loss = family.kl(family.log_q(theta), log_p)
    assert abs(loss.item() - kl_star) <= 1e-10 * (1.0 + kl_star)
    (grad, ) = torch.autograd.grad(loss, theta)
    assert grad.abs().max().item() <= 1e-8
    g = torch.Generator().manual_seed(seed + 2)
    for _ in range(20):
        delta = eps * torch.randn(family.num_params, generator=g,
                                  dtype=torch.float64)
        kl = family.kl(family.log_q(theta_star + delta), log_p).item()
        assert kl >= kl_star - 1e-12 * (1.0 + kl_star)


def test_kl_detects_a_suboptimal_q():
    """Sanity check of the KL machinery itself: uniform family weights are
    worse than the closed form on a non-trivial tree."""
    f = Forest([6, 6, 7, 7, 7, 8, 8, 8, -1], 6)
    family, log_p, Q, theta_star, kl_star = _kl_setup(f, 3, 5)
    uniform = family.kl(family.log_q(torch.zeros(family.num_params,
                                                 dtype=torch.float64)),
                        log_p).item()
    assert uniform > kl_star + 1e-6


# 5. Transparency, equivariance, forests ####################################


@given(f=forests(max_leaves=25, chains=False), data=st.data(), heads=HEADS,
       d=DIMS, seed=SEEDS)
def test_single_child_nodes_are_transparent(f, data, heads, d, seed):
    """Inserting chains of single-child nodes anywhere (above roots, above
    leaves, between clusters), with shuffled internal ids, changes nothing."""
    lengths = data.draw(st.lists(st.integers(0, 3), min_size=f.num_nodes,
                                 max_size=f.num_nodes))
    g = insert_chains(f, lengths)
    m = g.num_nodes - g.num_leaves
    g = relabel(g, list(range(g.num_leaves)),
                data.draw(st.permutations(range(m))))
    q, k, v = seeded_qkv(f.num_leaves, heads, d, seed, dv=2)
    a = hierarchical_attention(q, k, v, build(f))
    b = hierarchical_attention(q, k, v, build(g))
    assert max_err(a, b) <= 1e-12


def test_single_child_root_above_flat_family():
    """Explicit case: a chain of 5 above the root and of 3 above one leaf of
    a flat tree still gives softmax attention."""
    f = insert_chains(flat_tree(6), [3, 0, 0, 0, 0, 0, 5])
    q, k, v = seeded_qkv(6, 2, 3, 7)
    ref = leaf_sdpa(q, k, v)
    assert max_err(hierarchical_attention(q, k, v, build(f)), ref) <= EXACT


@given(f=forests(max_leaves=30), data=st.data(), heads=HEADS, d=DIMS,
       seed=SEEDS)
def test_permutation_equivariance(f, data, heads, d, seed):
    """Renaming leaves (rows of q, k, v) and internal nodes with random
    permutations permutes the output rows the same way."""
    n, m = f.num_leaves, f.num_nodes - f.num_leaves
    leaf_perm = data.draw(st.permutations(range(n)))
    clus_perm = data.draw(st.permutations(range(m)))
    g = relabel(f, leaf_perm, clus_perm)
    q, k, v = seeded_qkv(n, heads, d, seed, dv=3)
    perm = torch.tensor(leaf_perm, dtype=torch.long)

    def moved(x):
        y = torch.empty_like(x)
        y[perm] = x
        return y

    a = hierarchical_attention(q, k, v, build(f))
    b = hierarchical_attention(moved(q), moved(k), moved(v), build(g))
    assert max_err(moved(a), b) <= 1e-12


@given(parts=st.lists(
    st.one_of(single_trees(max_leaves=10), st.just(Forest([-1], 1))),
    min_size=2, max_size=4), heads=HEADS, d=DIMS, seed=SEEDS)
def test_forest_equals_trees_alone(parts, heads, d, seed):
    """A batch of trees gives every tree exactly what it gets alone."""
    hs = [build(p) for p in parts]
    inputs = [
        seeded_qkv(p.num_leaves, heads, d, seed + i, dv=2)
        for i, p in enumerate(parts)
    ]
    alone = [hierarchical_attention(q, k, v, h)
             for (q, k, v), h in zip(inputs, hs)]
    q, k, v = (torch.cat(x) for x in zip(*inputs))
    together = hierarchical_attention(q, k, v, Hierarchy.batch(hs))
    assert max_err(together, torch.cat(alone)) <= 1e-12


# 6. Nothing N x N ###########################################################


def test_large_balanced_tree_is_linear():
    """200k leaves, branching 16: an N x N score matrix would need 160 GB.
    The number of sibling pairs is linear in N, and the output is right
    where it can be checked cheaply (rows sum to one)."""
    n = 200_000
    h = Hierarchy.from_assignments(balanced_assignments(n, 16))
    assert h.num_leaves == n and h.max_branching == 16
    assert h.sibling_pairs.size(1) <= n * h.max_branching * 2
    g = torch.Generator().manual_seed(0)
    q = torch.randn(n, 1, 8, generator=g)
    k = torch.randn(n, 1, 8, generator=g)
    v = torch.ones(n, 1, 8)
    out = hierarchical_attention(q, k, v, h)
    assert out.shape == (n, 1, 8)
    assert max_err(out, v) <= 1e-4


# Gradients #################################################################


GRAD_CASES = {
    'chains': insert_chains(Forest([5, 5, 6, 6, 6, 6, -1], 5),
                            [0, 2, 0, 1, 3, 1, 2]),
    'forest': Forest([4, 4, 5, -1, 5, 6, -1], 4),
    'root leaves': Forest([-1, 3, 3, -1], 3),
}


def _gradcheck(f, heads, d, dv, seed):
    q, k, v = seeded_qkv(f.num_leaves, heads, d, seed, dv=dv)
    h = build(f)
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: hierarchical_attention(q, k, v, h), inputs,
        eps=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', sorted(GRAD_CASES))
def test_gradcheck_cases(name):
    _gradcheck(GRAD_CASES[name], 2, 2, 3, 0)


@fewer(2)
@given(f=forests(max_leaves=7), heads=st.sampled_from([None, 2]),
       d=st.integers(1, 3), seed=SEEDS)
def test_gradcheck_random(f, heads, d, seed):
    _gradcheck(f, heads, d, 2, seed)


# Second derivatives ########################################################


def _gradgradcheck(h, q, k, v, **kwargs):
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: hierarchical_attention(q, k, v, h, **kwargs),
        inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', sorted(GRAD_CASES))
def test_gradgradcheck_cases(name):
    f = GRAD_CASES[name]
    _gradgradcheck(build(f), *seeded_qkv(f.num_leaves, 2, 2, 0, dv=3))


@fewer(4)
@given(f=forests(max_leaves=7), heads=st.sampled_from([None, 2]),
       seed=SEEDS)
def test_gradgradcheck_random(f, heads, seed):
    _gradgradcheck(build(f), *seeded_qkv(f.num_leaves, heads, 2, seed))


def test_gradgradcheck_fused_leaf_path():
    h = Hierarchy.from_assignments(balanced_assignments(16, 4))
    _gradgradcheck(h, *seeded_qkv(16, 2, 2, 0))


@pytest.mark.parametrize('name', sorted(GRAD_CASES))
def test_gradgradcheck_with_dropout(name):
    """With the generator reseeded before every call the dropout masks are
    fixed, so the dropped-out attention is a function gradgradcheck can
    differentiate twice."""
    f = GRAD_CASES[name]
    h = build(f)
    inputs = tuple(x.requires_grad_()
                   for x in seeded_qkv(f.num_leaves, 2, 2, 0, dv=3))

    def dropped(q, k, v):
        torch.manual_seed(0)
        return hierarchical_attention(q, k, v, h, dropout_p=0.3,
                                      training=True)
    assert not torch.equal(dropped(*inputs), hierarchical_attention(
        *inputs, h))
    assert torch.autograd.gradgradcheck(dropped, inputs, eps=1e-6,
                                        atol=1e-6)


def hessian_vector_products(attention, q, k, v, seed):
    r"""Second derivatives of a loss that depends on the output
    non-linearly, through a first backward with ``create_graph=True``:
    ``d/d(q, k, v) <grad L(q, k, v), u>`` for a random direction ``u``."""
    g = torch.Generator().manual_seed(seed)
    inputs = tuple(x.detach().requires_grad_() for x in (q, k, v))
    out = attention(*inputs)
    loss = (out.tanh() * torch.randn(out.shape, generator=g,
                                     dtype=out.dtype)).sum()
    grads = torch.autograd.grad(loss, inputs, create_graph=True,
                                allow_unused=True, materialize_grads=True)
    dot = sum((gr * torch.randn(gr.shape, generator=g,
                                dtype=gr.dtype)).sum() for gr in grads)
    return torch.cat([x.flatten() for x in torch.autograd.grad(
        dot, inputs, allow_unused=True, materialize_grads=True)])


@fewer(2)
@given(f=forests(max_leaves=14), heads=HEADS, d=DIMS, seed=SEEDS,
       scale=SCALES)
def test_second_derivatives_match_dense(f, heads, d, seed, scale):
    """Hessian-vector products of the dynamic program equal those of the
    dense closed form (which autograd differentiates on its own)."""
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, heads, d, seed, dv=2)
    dp = hessian_vector_products(
        lambda q, k, v: hierarchical_attention(q, k, v, h, scale=scale),
        q, k, v, seed)
    dense = hessian_vector_products(
        lambda q, k, v: apply_q(
            hierarchical_attention_matrix(q, k, h, scale=scale), v),
        q, k, v, seed)
    assert max_err(dp, dense) <= 1e-9


@given(n=st.integers(2, 20), heads=HEADS, seed=SEEDS)
def test_flat_tree_second_derivatives_are_softmax(n, heads, seed):
    q, k, v = seeded_qkv(n, heads, 3, seed, dv=2)
    h = build(flat_tree(n))
    hsa = hessian_vector_products(
        lambda q, k, v: hierarchical_attention(q, k, v, h), q, k, v, seed)
    sdpa = hessian_vector_products(leaf_sdpa, q, k, v, seed)
    assert max_err(hsa, sdpa) <= 1e-9


@fewer(2)
@given(f=forests(max_leaves=12), heads=st.sampled_from([None, 2]),
       seed=SEEDS)
def test_tree_passes_in_small_chunks(f, heads, seed):
    """The subtree sums (upward) and path sums (downward) over the cluster
    levels work through staging chunks of a few rows: with 2 to 4 rows each,
    random forests (repeated parents, chains, roots at every level) still
    give Q @ V and correct gradients."""
    import hsa_geo.functional.dynamic_program as dp
    q, k, v = seeded_qkv(f.num_leaves, heads, 2, seed)
    h = build(f)
    dense = dense_output(q, k, v, h)
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    with unittest.mock.patch.object(dp, '_CPU_CHUNK_ELEMENTS', 8):
        assert max_err(hierarchical_attention(q, k, v, h), dense) <= EXACT
        assert torch.autograd.gradcheck(
            lambda q, k, v: hierarchical_attention(q, k, v, h), inputs,
            eps=1e-6, atol=1e-7)


# Dtypes and numerical range ################################################


@given(f=forests(max_leaves=30), heads=HEADS, d=DIMS, seed=SEEDS)
def test_float32_and_bfloat16(f, heads, d, seed):
    """Lower precision inputs give outputs of their dtype, close to the
    float64 result on the same (rounded) inputs."""
    h = build(f)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        q, k, v = seeded_qkv(f.num_leaves, heads, d, seed, dv=3, dtype=dtype)
        out = hierarchical_attention(q, k, v, h)
        assert out.dtype == dtype and out.shape == v.shape
        ref = hierarchical_attention(q.double(), k.double(), v.double(), h)
        assert torch.allclose(out.double(), ref, atol=tol, rtol=tol)


@given(f=forests(max_leaves=30), heads=HEADS, seed=SEEDS)
def test_autocast_computes_in_float32(f, heads, seed):
    """Under autocast the passes still run in float32: the output and
    the gradients (the backward outside autocast, as PyTorch recommends)
    are float32's, bit for bit (lower-precision products would differ,
    and mixed dtypes would fail the in-place sums)."""
    h = build(f)
    q, k, v = (t.float().requires_grad_() for t in
               seeded_qkv(f.num_leaves, heads, 4, seed, dv=3))

    def run(autocast):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = hierarchical_attention(q, k, v, h)
        return [out, *torch.autograd.grad(out.square().sum(), (q, k, v))]
    assert all(torch.equal(a, b) for a, b in zip(run(True), run(False)))


def _extreme_inputs(case, n, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, 4, generator=g, dtype=torch.float64)
    w = torch.randn(n, 2, 4, generator=g, dtype=torch.float64)
    v = torch.randn(n, 2, 3, generator=g, dtype=torch.float64)
    q, k = {
        'random': (100 * z, 100 * w),  # scores ~ 1e4
        'self': (100 * z, 100 * z),  # huge self scores, diag dominant
        'anti-self': (100 * z, -100 * z),  # hugely negative self scores
        'constant': (100 * torch.ones_like(z), 100 * torch.ones_like(z)),
        'extreme': (1e4 * z, 1e4 * w),  # scores ~ 1e8
    }[case]
    return q.to(dtype), k.to(dtype), v.to(dtype)


EXTREME_TREES = [
    insert_chains(Forest([5, 5, 6, 6, 6, 6, -1], 5),
                  [1, 0, 2, 0, 0, 1, 1]),
    Forest([6, 6, 7, 7, 8, 8, 9, 9, 9, -1], 6),
    flat_tree(5),
]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('case',
                         ['random', 'self', 'anti-self', 'constant',
                          'extreme'])
@pytest.mark.parametrize('tree', range(len(EXTREME_TREES)))
def test_huge_scores_stay_finite(tree, case, dtype):
    """Scores of magnitude 1e4 (and 1e8) give finite outputs and gradients;
    in float64 the result still matches the dense closed form."""
    f = EXTREME_TREES[tree]
    h = build(f)
    q, k, v = _extreme_inputs(case, f.num_leaves, tree, dtype)
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    out = hierarchical_attention(q, k, v, h)
    assert bool(torch.isfinite(out).all())
    out.backward(torch.randn(out.shape, dtype=dtype,
                             generator=torch.Generator().manual_seed(1)))
    for x in (q, k, v):
        assert bool(torch.isfinite(x.grad).all())
    # Outputs are convex combinations of the values.
    assert out.abs().max() <= v.abs().max() * (1 + 1e-5)
    if dtype == torch.float64 and case != 'extreme':
        Q = hierarchical_attention_matrix(q.detach(), k.detach(), h)
        assert max_err(out.detach(), apply_q(Q, v.detach())) <= 1e-8


def _caterpillar(depth: int) -> Forest:
    r"""Cluster t has children leaf t and cluster t+1; the last cluster has
    two leaves: leaves at depth ``depth``."""
    n = depth + 1
    parent = [n + t for t in range(depth)] + [n + depth - 1]
    parent += [-1] + [n + t for t in range(depth - 1)]
    return Forest(parent, n)


DEEP_TREES = {
    'caterpillar': _caterpillar(60),
    'chain above leaf': insert_chains(Forest([3, 3, 3, -1], 3),
                                      [60, 0, 0, 0]),
    'chain above root': insert_chains(Forest([3, 3, 3, -1], 3),
                                      [0, 0, 0, 60]),
}


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('name', sorted(DEEP_TREES))
def test_deep_trees_do_not_underflow(name, dtype):
    """Depth 60: the mass r of deep leaves is a product of 60 self weights,
    far below the smallest float when self scores are very negative; kept in
    log space it never turns into NaN, and rows still sum to one."""
    f = DEEP_TREES[name]
    h = build(f)
    assert h.depth >= 60
    g = torch.Generator().manual_seed(0)
    z = torch.randn(f.num_leaves, 2, 4, generator=g, dtype=torch.float64)
    for q, k in ((z, z), (10 * z, -10 * z), (100 * z, -100 * z)):
        q, k = q.to(dtype), k.to(dtype)
        ones = torch.ones(f.num_leaves, 2, 1, dtype=dtype)
        out = hierarchical_attention(q, k, ones, h)
        assert bool(torch.isfinite(out).all())
        assert max_err(out, ones) <= (1e-10 if dtype == torch.float64 else
                                      1e-4)
        qq = q.clone().requires_grad_()
        hierarchical_attention(qq, k, z[..., :3].to(dtype), h).sum().backward()
        assert bool(torch.isfinite(qq.grad).all())
        if dtype == torch.float64:
            v = z[..., :3]
            Q = hierarchical_attention_matrix(q, k, h)
            assert max_err(hierarchical_attention(q, k, v, h),
                           apply_q(Q, v)) <= 1e-8


# Dropout ###################################################################


DROPOUT_FORESTS = forests(min_leaves=3, max_leaves=8, max_trees=2,
                          root_leaves=False)


@fewer(2)
@given(f=DROPOUT_FORESTS, seed=SEEDS)
def test_dropout_off_is_a_no_op(f, seed):
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, 2, 3, seed, dv=2)
    ref = hierarchical_attention(q, k, v, h)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        assert torch.equal(
            hierarchical_attention(q, k, v, h, dropout_p=0.5,
                                   training=False), ref)
        assert torch.equal(
            hierarchical_attention(q, k, v, h, dropout_p=0.0, training=True),
            ref)


def test_dropout_changes_output():
    f = Forest([5, 5, 6, 6, 6, 6, -1], 5)
    h = build(f)
    q, k, v = seeded_qkv(5, 2, 3, 0, dv=2)
    ref = hierarchical_attention(q, k, v, h)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        outs = [hierarchical_attention(q, k, v, h, dropout_p=0.3,
                                       training=True) for _ in range(3)]
    for out in outs:
        assert bool(torch.isfinite(out).all())
        assert max_err(out, ref) > 1e-3
    assert max_err(outs[0], outs[1]) > 1e-3  # fresh masks every call


@fewer(4)
@given(f=DROPOUT_FORESTS, seed=SEEDS, p=st.sampled_from([0.1, 0.5]))
def test_dropout_is_unbiased(f, seed, p):
    """Dropout on the family weights, rescaled by 1/(1-p), keeps the output
    unbiased: the mean over many samples approaches the output without
    dropout. The samples are heads with identical inputs (independent
    masks); the bound is 6 standard errors per entry."""
    h = build(f)
    samples = 4000
    q, k, v = seeded_qkv(f.num_leaves, 1, 3, seed, dv=2)
    ref = hierarchical_attention(q, k, v, h)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        out = hierarchical_attention(q.expand(-1, samples, -1),
                                     k.expand(-1, samples, -1),
                                     v.expand(-1, samples, -1), h,
                                     dropout_p=p, training=True)
    mean, std = out.mean(dim=1), out.std(dim=1)
    assert max_err(out, ref.expand_as(out)) > 0  # dropout did something
    bound = 6 * std / math.sqrt(samples) + 1e-9
    assert bool(((mean - ref[:, 0]).abs() <= bound).all())


# Input validation ##########################################################


def _valid():
    h = build(Forest([4, 4, 5, 5, 5, -1], 4))
    q, k, v = seeded_qkv(4, 2, 3, 0, dv=5)
    return q, k, v, h


def test_wrong_row_count():
    q, k, v, h = _valid()
    with pytest.raises(ValueError, match=r'have 3 rows but the hierarchy has '
                       r'4 leaves'):
        hierarchical_attention(q[:3], k[:3], v[:3], h)
    with pytest.raises(ValueError, match=r'rows|same'):
        hierarchical_attention(q, k, v[:3], h)


@pytest.mark.parametrize('shapes', [
    ((4, 2, 3), (4, 2, 4), (4, 2, 5)),  # k dim != q dim
    ((4, 2, 3), (4, 1, 3), (4, 2, 5)),  # k heads != q heads
    ((4, 2, 3), (4, 2, 3), (4, 1, 5)),  # v heads != q heads
    ((4, 2, 3), (4, 2, 3), (5, 2, 5)),  # v rows != q rows
    ((4, 2, 3), (4, 6), (4, 2, 5)),  # 3-D with 2-D
    ((4, 3), (4, 3), (4, 2, 5)),  # 2-D with 3-D
    ((4, 1, 2, 3), (4, 1, 2, 3), (4, 1, 2, 5)),  # 4-D
    ((12, ), (12, ), (12, )),  # 1-D
])
def test_mismatched_shapes(shapes):
    h = build(Forest([4, 4, 5, 5, 5, -1], 4))
    q, k, v = (torch.randn(s, dtype=torch.float64) for s in shapes)
    with pytest.raises(ValueError, match=r'q, k and v|q and k'):
        hierarchical_attention(q, k, v, h)


@pytest.mark.parametrize('which', [0, 1, 2])
@pytest.mark.parametrize('dtype', [torch.long, torch.int32, torch.bool,
                                   torch.complex64])
def test_non_float_inputs(which, dtype):
    q, k, v, h = _valid()
    args = [q, k, v]
    args[which] = args[which].to(dtype)
    name = 'qkv'[which]
    with pytest.raises(TypeError,
                       match=rf"'{name}' must be a floating point tensor"):
        hierarchical_attention(*args, h)


def test_non_tensor_input():
    q, k, v, h = _valid()
    with pytest.raises(TypeError, match=r"'q' must be a floating point"):
        hierarchical_attention(q.tolist(), k, v, h)


@pytest.mark.parametrize('p', [-0.1, 1.0, 1.5, float('nan')])
def test_dropout_p_out_of_range(p):
    q, k, v, h = _valid()
    with pytest.raises(ValueError, match=r"'dropout_p' must be a finite "
                       r"number in \[0.0, 1.0\)"):
        hierarchical_attention(q, k, v, h, dropout_p=p, training=True)
    # Checked even when dropout is off: a bad value is a bug either way.
    with pytest.raises(ValueError, match=r"'dropout_p'"):
        hierarchical_attention(q, k, v, h, dropout_p=p, training=False)


@pytest.mark.parametrize('bad', [
    None,
    torch.tensor([4, 4, 5, 5, 5, -1]),
    [4, 4, 5, 5, 5, -1],
])
def test_non_hierarchy(bad):
    q, k, v, _ = _valid()
    with pytest.raises(TypeError, match=r"'hierarchy' must be a "
                       r"hsa_geo.data.Hierarchy"):
        hierarchical_attention(q, k, v, bad)


@pytest.mark.parametrize('p', ['0.1', True, torch.tensor(0.1), None])
def test_dropout_p_of_the_wrong_type(p):
    q, k, v, h = _valid()
    with pytest.raises(TypeError, match=r"'dropout_p' must be a real"):
        hierarchical_attention(q, k, v, h, dropout_p=p, training=True)


@pytest.mark.parametrize('scale,error', [
    (float('nan'), ValueError), (float('inf'), ValueError),
    (0.0, ValueError), (-1.0, ValueError), ('a', TypeError),
    (True, TypeError), (torch.tensor(0.5), TypeError),
    (torch.tensor(0.5, requires_grad=True), TypeError)])
def test_bad_scale(scale, error):
    """A tensor scale is refused rather than half supported: its gradient
    was None on one path and wrong on another."""
    q, k, v, h = _valid()
    with pytest.raises(error, match=r"'scale' must be a"):
        hierarchical_attention(q, k, v, h, scale=scale)


def test_numpy_scale_is_a_number():
    q, k, v, h = _valid()
    import numpy as np
    assert torch.equal(hierarchical_attention(q, k, v, h, scale=np.float64(
        0.5)), hierarchical_attention(q, k, v, h, scale=0.5))


@pytest.mark.parametrize('name', ['training', 'return_weights'])
@pytest.mark.parametrize('value', [1, 'yes', None])
def test_flags_must_be_bools(name, value):
    q, k, v, h = _valid()
    with pytest.raises(TypeError, match=rf"'{name}' must be True or False"):
        hierarchical_attention(q, k, v, h, **{name: value})


@pytest.mark.parametrize('shape', [(4, 2, 0), (4, 0, 3), (4, 0)])
def test_no_channels_or_no_heads(shape):
    h = build(Forest([4, 4, 5, 5, 5, -1], 4))
    q = torch.randn(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match='at least one head and one channel'):
        hierarchical_attention(q, q, q, h)


@pytest.mark.parametrize('heads', [None, 2])
def test_values_without_channels(heads):
    h = build(Forest([4, 4, 5, 5, 5, -1], 4))
    lead = (4, ) if heads is None else (4, heads)
    q = torch.randn(*lead, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match='v needs at least one channel'):
        hierarchical_attention(q, q, q.new_zeros(*lead, 0), h)


@pytest.mark.parametrize('which', [0, 1, 2])
def test_inputs_on_another_device(which):
    q, k, v, h = _valid()
    args = [q, k, v]
    args[which] = args[which].to('meta')
    with pytest.raises(ValueError, match=rf"'{'qkv'[which]}' is on meta but "
                       r"the hierarchy is on cpu"):
        hierarchical_attention(*args, h)


@fewer(2)
@given(f=forests(max_leaves=16), heads=HEADS, seed=SEEDS, data=st.data())
def test_non_finite_values_propagate_as_ieee(f, heads, seed, data):
    """An infinite or NaN value reaches exactly the outputs that weigh it:
    ``y_i = sum_j Q_ij v_j`` over the terms with ``Q_ij > 0`` (a zero weight
    is no term, not ``0 * inf``), per element."""
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, heads, 2, seed, dv=3)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, f.num_leaves - 1))
        v[i, ..., data.draw(st.integers(0, 2))] = data.draw(
            st.sampled_from([math.inf, -math.inf, math.nan]))
    _check_ieee(q, k, v, h)


def _check_ieee(q, k, v, h):
    r"""The output is ``sum_j Q_ij v_j`` over the terms with ``Q_ij > 0``,
    per element, NaN and infinities included."""
    out = hierarchical_attention(q, k, v, h)
    Q = hierarchical_attention_matrix(q, k, h)
    if v.dim() == 2:
        Q, v3 = Q.unsqueeze(0), v.unsqueeze(1)
    else:
        v3 = v
    terms = Q.unsqueeze(-1) * v3.permute(1, 0, 2).unsqueeze(1)  # [H,N,N,D]
    ref = torch.where(Q.unsqueeze(-1) > 0, terms, 0.0).sum(2)  # [H, N, D]
    ref = ref.permute(1, 0, 2).reshape(out.shape)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    finite = ~torch.isnan(ref)
    assert torch.equal(out[finite].isinf(), ref[finite].isinf())
    assert torch.allclose(out[finite], ref[finite], atol=1e-10)


@pytest.mark.parametrize('per_head', [True, False])
def test_non_finite_values_on_the_fused_leaf_path(monkeypatch, per_head):
    """The fused leaf path checks the values for infinities and NaN per
    head of each chunk (the CPU) or for all heads of a chunk at once (an
    accelerator: one synchronisation); either way a non-finite value
    reaches exactly the outputs that weigh it, in whichever head and chunk
    it lies."""
    import hsa_geo.functional.dynamic_program as dp
    monkeypatch.setattr(dp, '_CPU_CHUNK_ELEMENTS', 16)
    monkeypatch.setattr(dp, '_HEADWISE_CHECKS', ('cpu', ) if per_head else ())
    h = Hierarchy.from_assignments(balanced_assignments(64, 4))
    assert h.layout.leaf_blocks is not None
    q, k, v = seeded_qkv(64, 3, 2, 0, dv=3)
    for leaf, head, value in ((5, 0, math.inf), (40, 2, -math.inf),
                              (41, 2, math.inf), (63, 1, math.nan)):
        v[leaf, head, 1] = value
    _check_ieee(q, k, v, h)


def test_moved_hierarchy_gives_same_output():
    q, k, v, h = _valid()
    assert torch.equal(hierarchical_attention(q, k, v, h.to('cpu')),
                       hierarchical_attention(q, k, v, h))


@pytest.mark.parametrize('branching,levels', [(4, 3), (2, 4), (8, 2)])
def test_fused_contiguous_leaf_path_in_small_chunks(monkeypatch, branching,
                                                    levels):
    """Leaves in order in families of one power-of-two width take the fused
    leaf path;
    with tiny chunks its head-wise loops run over many chunks of families.
    q, k, v are strided views of one packed tensor, as HSAConv makes them."""
    import hsa_geo.functional.dynamic_program as dp
    monkeypatch.setattr(dp, '_CPU_CHUNK_ELEMENTS', 16)
    n = branching**levels
    h = Hierarchy.from_assignments(balanced_assignments(n, branching))
    assert any(b.kind == 'leaf' and b.source_range == (0, n)
               for b in h.family_buckets)
    gen = torch.Generator().manual_seed(branching)
    packed = torch.randn(n, 3, 2, 3, dtype=torch.float64, generator=gen,
                         requires_grad=True)
    q, k, v = packed.unbind(1)
    out, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    dense = hierarchical_attention_matrix(q, k, h)
    assert max_err(out, torch.einsum('hij,jhd->ihd', dense, v)) <= EXACT
    row_sums = torch.zeros(h.num_nodes, 2, dtype=torch.float64).index_add_(
        0, weights.index[0], weights.weight)
    assert max_err(row_sums[h.parent >= 0],
                   torch.ones_like(row_sums[h.parent >= 0])) <= EXACT
    # fast_mode: random directions, not all 1,152 inputs one by one, each a
    # pass over many tiny chunks (the full check took most of a minute).
    assert torch.autograd.gradcheck(
        lambda t: hierarchical_attention(*t.unbind(1), h), (packed, ),
        fast_mode=True)


# Inputs too large for the machine ##########################################


def wide_cluster_family(n: int) -> Hierarchy:
    r"""A root over ``n`` clusters of one leaf each: a family of ``n``
    internal children, which runs on a table (a wide family of leaves runs
    as softmax attention, without one)."""
    return Hierarchy.from_parent(
        torch.cat([torch.arange(n, 2 * n), torch.full((n, ), 2 * n),
                   torch.tensor([-1])]), n)


def test_family_too_wide_for_any_machine_is_refused_before_allocating():
    """200,000 children in one family: 4 * 10^10 scores per head. The error
    comes before any table is allocated and names the family."""
    n = 200_000
    h = wide_cluster_family(n)
    q = torch.zeros(n, 1, 1)
    with pytest.raises(ValueError, match=rf"would need about .* GiB.*widest "
                       rf"family \(node {2 * n}\) has {n} children, padded "
                       rf"to a table of {n} x {n}"):
        hierarchical_attention(q, q, q, h)


def test_memory_guard_counts_heads_and_pair_tables(monkeypatch):
    import hsa_geo._memory as memory
    h = wide_cluster_family(2000)  # wider than 1024: not padded
    q = torch.randn(2000, 2, 1, requires_grad=True)
    tables = 2000**2 * 2 * 4  # bytes of one float32 table of all heads
    monkeypatch.setattr(memory, 'available_memory', lambda device: 5 * tables)
    hierarchical_attention(q, q, q, h)  # five tables fit a backward
    with pytest.raises(ValueError, match='hierarchical attention with 2 '
                       'heads would need'):
        hierarchical_attention(q, q, q, h, return_weights=True)
    with pytest.raises(ValueError, match='hierarchical attention with 2 '
                       'heads would need'):
        hierarchical_attention(q.double(), q.double(), q.double(), h)
    # Without a backward, fewer tables are alive at once.
    monkeypatch.setattr(memory, 'available_memory', lambda device: 3 * tables)
    with torch.no_grad():
        hierarchical_attention(q, q, q, h)
    with pytest.raises(ValueError, match='would need'):
        hierarchical_attention(q, q, q, h)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 10**6)
    with pytest.raises(ValueError, match='the sibling pairs of this '
                       'hierarchy .* would need'):
        h.sibling_pairs


def test_many_narrow_families_are_counted_together(monkeypatch):
    r"""No family is wide, but all their tables together do not fit: 64
    families of 512 leaves with dropout (which needs their tables), about
    0.6 GB, in 32 MB are refused before allocating."""
    import hsa_geo._memory as memory
    n, w = 64 * 512, 512
    parent = torch.cat([n + torch.arange(n) // w, torch.full((64, ), n + 64),
                        torch.tensor([-1])])
    h = Hierarchy.from_parent(parent, n)
    q = torch.randn(n, 2, 4, requires_grad=True)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 32e6)
    with pytest.raises(ValueError, match=r'hierarchical attention with 2 '
                       r'heads would need .*the widest family \(node '
                       r'\d+\) has 512 children'):
        hierarchical_attention(q, q, q, h, dropout_p=0.1, training=True)


# Hostile input: a clear error or a correct result ##########################


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.builds(torch.tensor, st.floats(-2, 2)))


VALID = {'scale': st.one_of(st.none(), st.floats(0.01, 10)),
         'dropout_p': st.one_of(st.just(0.0), st.floats(0.0, 0.9)),
         'training': st.booleans()}


@fewer(2)
@given(f=forests(max_leaves=10), seed=SEEDS, data=st.data(),
       bad=st.sampled_from([None, 'scale', 'dropout_p', 'training']),
       mag=st.sampled_from([1.0, 1e4, 1e12]))
def test_any_argument_gives_a_clear_error_or_the_dense_result(
        f, seed, data, bad, mag):
    """Valid arguments but at most one (:obj:`bad`), drawn from anything:
    an error that names that argument, or the dense result (also for
    queries and keys of magnitude up to 1e12)."""
    args = {name: data.draw(ANY_VALUE if name == bad else valid, name)
            for name, valid in VALID.items()}
    h = build(f)
    q, k, v = seeded_qkv(f.num_leaves, 2, 3, seed, dv=2, mag=mag)
    try:
        out = hierarchical_attention(q, k, v, h, **args)
    except (TypeError, ValueError) as e:
        assert bad is not None and f"'{bad}'" in str(e)
        return
    assert out.isfinite().all()
    if args['dropout_p'] == 0 or args['training'] is False:  # exact
        scale = args['scale']
        Q = hierarchical_attention_matrix(
            q, k, h, scale=None if scale is None else float(scale))
        assert max_err(out, apply_q(Q, v)) <= 1e-8


# The dense reference's own input checks ####################################


@pytest.mark.parametrize('change,error,pattern', [
    (dict(hierarchy=[4, 4, 5]), TypeError, "'hierarchy' must be a"),
    (dict(q=[[1.0]]), TypeError, "'q' must be a floating point"),
    (dict(k=torch.ones(4, 2, 3, dtype=torch.long)), TypeError,
     "'k' must be a floating point"),
    (dict(k=torch.ones(4, 2, 4)), ValueError, 'q and k must both be'),
    (dict(q=torch.ones(4, 2, 0), k=torch.ones(4, 2, 0)), ValueError,
     'D >= 1'),
    (dict(q=torch.ones(3, 2, 3), k=torch.ones(3, 2, 3)), ValueError,
     'q has 3 rows but the hierarchy has 4 leaves'),
    (dict(k=torch.ones(4, 2, 3, device='meta')), ValueError, "'k' is on meta"),
    (dict(scale=torch.tensor(1.0)), TypeError, "'scale' must be a real"),
    (dict(scale=-1.0), ValueError, "'scale' must be a finite number"),
    (dict(pair_bias=torch.zeros(3, 2)), ValueError,
     r"'pair_bias' must have shape \(13, 2\)"),
])
def test_dense_reference_bad_input(change, error, pattern):
    h = build(Forest([4, 4, 5, 5, 5, -1], 4))
    args = dict(q=torch.ones(4, 2, 3), k=torch.ones(4, 2, 3), hierarchy=h)
    args.update(change)
    with pytest.raises(error, match=pattern):
        hierarchical_attention_matrix(**args)


def test_dense_reference_refuses_a_matrix_that_cannot_fit():
    n = 300_000  # 4 heads x 300,000^2 floats: 1.4 TB
    h = build(flat_tree(n))
    q = torch.zeros(n, 4, 1)
    with pytest.raises(ValueError, match=r'the dense 300000 x 300000 HSA '
                       r'matrix would need .*use hierarchical_attention'):
        hierarchical_attention_matrix(q, q, h)


# Wide families of leaves: softmax attention without tables #################


@contextlib.contextmanager
def streamed_leaf_families(padded=False, chunked=False):
    r"""Every bucket of families of leaves of two or more children counts as
    wide and runs as softmax attention (where no pair bias, dropout or
    returned weights need its table); its table has the exact width of
    its families, or with :obj:`padded` the usual padded width, whose
    padding the kernel masks. With :obj:`chunked`, the softmax attention
    takes the chunked path that accelerators run (instead of the CPU
    kernel), one query row per tile."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(unittest.mock.patch(
            'hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT', 0))
        stack.enter_context(unittest.mock.patch(
            'hsa_geo.functional.dynamic_program.STREAMED_WIDTH', 2))
        if not padded:
            stack.enter_context(unittest.mock.patch(
                'hsa_geo.data.hierarchy.WIDE_FAMILY', 1))
        if chunked:
            stack.enter_context(unittest.mock.patch(
                'hsa_geo.functional.softmax_attention._use_fused',
                lambda q, fused: False))
            stack.enter_context(unittest.mock.patch(
                'hsa_geo.functional.softmax_attention.BLOCK_BYTES', 1))
        yield


PADDED = pytest.mark.parametrize('padded', [False, True],
                                 ids=['exact', 'padded'])
CHUNKED = pytest.mark.parametrize('chunked', [False, True],
                                  ids=['kernel', 'chunked'])


@CHUNKED
@PADDED
@fewer(2)
@given(f=forests(max_leaves=20), heads=HEADS, d=DIMS, dv=DIMS, seed=SEEDS)
def test_streamed_leaf_families_match_dense(padded, chunked, f, heads, d, dv,
                                            seed):
    with streamed_leaf_families(padded, chunked):
        h = build(f)
        q, k, v = (t.requires_grad_() for t in
                   seeded_qkv(f.num_leaves, heads, d, seed, dv=dv))
        out = hierarchical_attention(q, k, v, h)
    ref = dense_output(q, k, v, h)
    assert max_err(out, ref) <= EXACT
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v), allow_unused=True,
                              materialize_grads=True)
    want = torch.autograd.grad((ref * g).sum(), (q, k, v), allow_unused=True,
                               materialize_grads=True)
    assert max(max_err(a, b) for a, b in zip(got, want)) <= EXACT


@CHUNKED
@PADDED
@fewer(8)
@given(f=forests(max_leaves=6), seed=SEEDS)
def test_streamed_leaf_families_second_derivatives(padded, chunked, f, seed):
    with streamed_leaf_families(padded, chunked):
        h = build(f)
        q, k, v = (t.requires_grad_() for t in
                   seeded_qkv(f.num_leaves, 2, 2, seed))
        assert torch.autograd.gradgradcheck(
            lambda q, k, v: hierarchical_attention(q, k, v, h), (q, k, v))


def _dense_check_under(spy, h: Hierarchy, q, k, v, pair_bias=None):
    r"""The output and the gradients of ``q, k, v``, run inside the context
    :obj:`spy` (a dispatch mode or a patch), against the dense reference."""
    with spy:
        out = hierarchical_attention(q, k, v, h, pair_bias=pair_bias)
        g = torch.randn_like(out)
        got = torch.autograd.grad((out * g).sum(), (q, k, v))
    ref = dense_output(q, k, v, h, pair_bias=pair_bias)
    want = torch.autograd.grad((ref * g).sum(), (q, k, v))
    assert max_err(out, ref) <= EXACT
    assert max(max_err(a, b) for a, b in zip(got, want)) <= EXACT


# Paragraphs of 5, 7 and 3 words under a document root: the families of 5
# and 7 share a bucket of width 8, padded, which runs as softmax attention
# with its padding masked; the family of 3 shares a bucket with the root.
PARAGRAPHS = ([15] * 5 + [16] * 7 + [17] * 3 + [18, 18, 18, -1], 15)


def test_padded_bucket_of_leaves_is_streamed():
    parent, num_leaves = PARAGRAPHS
    with streamed_leaf_families(padded=True):
        h = Hierarchy.from_parent(parent, num_leaves)
        kinds = [(b.kind, b.width, b.num_families) for b in h.layout.buckets]
        assert kinds == [('mixed', 4, 2), ('mixed', 8, 2)]
        q, k, v = (t.requires_grad_() for t in
                   seeded_qkv(num_leaves, 2, 3, 1, dv=4))
        calls = []

        def spy(*args, key_mask=None, **kwargs):
            calls.append(key_mask)
            return softmax_attention(*args, key_mask=key_mask, **kwargs)
        _dense_check_under(unittest.mock.patch(
            'hsa_geo.functional.dynamic_program.softmax_attention', spy),
            h, q, k, v)
    assert [m.sum(1).tolist() for m in calls] == [[5, 7]]


# All leaves in order in equal-width families: the streamed output is the
# whole output (no copy into a fresh table), and under a root r_F = 1 is
# not multiplied in. Flat; two families under a root; two flat trees; and
# families under non-root clusters (their r_F < 1 and U_F count).
STREAMED_SHAPES = [
    ([6] * 6 + [-1], 6),
    ([6, 6, 6, 7, 7, 7, 8, 8, -1], 6),
    ([6, 6, 6, 7, 7, 7, -1, -1], 6),
    ([8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, -1], 8),
]


@pytest.mark.parametrize('parent,num_leaves', STREAMED_SHAPES)
def test_streamed_leaves_in_order_match_dense(parent, num_leaves):
    h = Hierarchy.from_parent(parent, num_leaves)
    q, k, v = (t.requires_grad_() for t in
               seeded_qkv(num_leaves, 2, 3, len(parent), dv=2))
    with streamed_leaf_families():
        assert h.layout.leaf_blocks is not None
        out = hierarchical_attention(q, k, v, h)
        assert torch.autograd.gradgradcheck(
            lambda q, k, v: hierarchical_attention(q, k, v, h), (q, k, v))
    ref = dense_output(q, k, v, h)
    assert max_err(out, ref) <= EXACT
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    want = torch.autograd.grad((ref * g).sum(), (q, k, v))
    assert max(max_err(a, b) for a, b in zip(got, want)) <= EXACT


# A document of paragraphs of 5, 6 and 7 words under a root, with every
# family of leaves streamed: every leaf lies in a streamed family (one
# padded bucket), and the root's family of three clusters runs on the pair
# list.
DOCUMENT = ([18] * 5 + [19] * 6 + [20] * 7 + [21, 21, 21, -1], 18)


class _WastedLeafRows(TorchDispatchMode):
    r"""Records, on ``[num_rows, ...]`` tensors, the gathers and scatters
    that read or write no row (their backward or result is a whole tensor
    of zeros or a copy) and the products ``addcmul`` (the self term)."""
    def __init__(self, num_rows):
        super().__init__()
        self.num_rows, self.seen = num_rows, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split('.')[0]
        if name in ('addcmul', 'addcmul_') and \
                args[0].size(0) == self.num_rows:
            self.seen.append(name)
        if name in ('index_select', 'index_add', 'index_add_', 'index'):
            index = args[2] if name != 'index' else args[1][0]
            if isinstance(index, torch.Tensor) and index.numel() == 0 and \
                    args[0].size(0) == self.num_rows:
                self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_document_of_streamed_paragraphs_matches_dense_without_waste():
    """The self term r_a v_a, 0 on every leaf of a streamed family, is not
    formed, and the root's family of clusters gathers and writes no leaf
    rows: none of them leaves a whole gradient of zeros waiting for the
    paragraphs' backward. The result and its derivatives are exact."""
    parent, num_leaves = DOCUMENT
    h = Hierarchy.from_parent(parent, num_leaves)
    with unittest.mock.patch('hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT', 16):
        kinds = [(b.kind, b.width, b.sparse) for b in h.layout.buckets]
    assert kinds == [('mixed', 4, True), ('mixed', 8, False)]
    q, k, v = (t.requires_grad_()
               for t in seeded_qkv(num_leaves, 2, 3, 3, dv=4))
    spy = _WastedLeafRows(num_leaves)
    with unittest.mock.patch(
            'hsa_geo.functional.dynamic_program.STREAMED_WIDTH', 2):
        _dense_check_under(spy, h, q, k, v)
        assert torch.autograd.gradgradcheck(
            lambda q, k, v: hierarchical_attention(q, k, v, h),
            tuple(t.requires_grad_() for t in seeded_qkv(num_leaves, 1, 2, 4)))
    assert spy.seen == []


def test_streamed_paragraph_masses_take_no_full_size_product():
    """The paragraphs' softmax attention is scaled by their masses r_F <
    1; the gradient of r_F reduces <grad, out> without the full-size
    product grad * out. The result and its derivatives are exact."""
    parent, num_leaves = DOCUMENT
    h = Hierarchy.from_parent(parent, num_leaves)
    with unittest.mock.patch('hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT', 16):
        assert not h.layout.buckets[1].sparse  # (the layout is kept)
    q, k, v = (t.requires_grad_()
               for t in seeded_qkv(num_leaves, 2, 3, 5, dv=3))
    spy = FullSizeProducts((3, 8, 2, 3))  # paragraphs padded to 8 slots
    # No chunk is cache-sized (where the plain product is the faster one).
    with unittest.mock.patch(
            'hsa_geo.functional.dynamic_program.STREAMED_WIDTH', 2), \
            unittest.mock.patch(
                'hsa_geo.functional.dynamic_program._CPU_CHUNK_ELEMENTS', 0):
        _dense_check_under(spy, h, q, k, v)
        assert spy.seen == 0
        # Without gradients the output is scaled in place: no second table.
        scaled = _TableProducts((3, 8, 2, 3))
        with torch.no_grad(), scaled:
            out = hierarchical_attention(q, k, v, h)
    assert max_err(out, dense_output(q, k, v, h)) <= EXACT
    assert scaled.seen == ['mul_']


class _TableProducts(TorchDispatchMode):
    r"""Records the products ``mul`` and ``mul_`` whose output has the
    shape :obj:`shape`."""
    def __init__(self, shape):
        super().__init__()
        self.shape, self.seen = tuple(shape), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split('.')[0]
        if name in ('mul', 'mul_') and tuple(out.shape) == self.shape:
            self.seen.append(name)
        return out


# A root over paragraphs of 3 and 5 words (each family in a table), and
# the same with a paragraph of 1 word (a single child): g_i = <q_i, k_i>
# comes from the tables' diagonals where they hold every leaf.
WORDS = {False: ([8] * 3 + [9] * 5 + [10, 10, -1], 8),
         True: ([9] * 3 + [10] * 5 + [11, 12, 12, 12, -1], 9)}


@pytest.mark.parametrize('single', [False, True],
                         ids=['tables', 'single_child'])
def test_leaf_diagonal_from_the_tables(single):
    parent, num_leaves = WORDS[single]
    h = Hierarchy.from_parent(parent, num_leaves)
    q, k, v = (t.requires_grad_()
               for t in seeded_qkv(num_leaves, 2, 3, 6, dv=4))
    spy = _RowDots(q.shape)
    # No chunk is cache-sized: the row products are batched, as at large N.
    with unittest.mock.patch('hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT', 0), \
            unittest.mock.patch(
                'hsa_geo.functional.dynamic_program._CPU_CHUNK_ELEMENTS', 0):
        assert h.layout.leaf_blocks is None
        assert not any(b.sparse for b in h.layout.buckets)
        _dense_check_under(spy, h, q, k, v)
        assert torch.autograd.gradgradcheck(
            lambda q, k, v: hierarchical_attention(q, k, v, h), (q, k, v))
    # The product over all leaves, only where a leaf is outside every table.
    assert spy.seen == single


class _RowDots(FullSizeProducts):
    r"""Counts the row products ``<x_i, y_i>`` over all rows of ``[N, H,
    D]`` tensors (one batched product of ``[N H, 1, D]`` and ``[N H, D,
    1]``) as well as the full-size products."""
    def __init__(self, shape):
        super().__init__(shape)
        rows, d = shape[0] * shape[1], shape[2]
        self.row_shapes = [(rows, 1, d), (rows, d, 1)]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = [tuple(a.shape) for a in args[:2] if isinstance(a, Tensor)]
        if func.__name__.split('.')[0] == 'bmm' and \
                shapes == self.row_shapes:
            self.seen += 1
        return super().__torch_dispatch__(func, types, args, kwargs)


def _strided(x) -> list:
    r"""The strided tensors in a nest of arguments or results."""
    return [t for t in torch.utils._pytree.tree_leaves(x)
            if isinstance(t, Tensor) and t.layout == torch.strided]


class _FreshTables(TorchDispatchMode):
    r"""Counts the operations whose output of shape :obj:`shape` is a fresh
    tensor (not a view of, or written into, one of their arguments)."""
    def __init__(self, shape):
        super().__init__()
        self.shape, self.seen = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in _strided(
            (args, kwargs))}
        self.seen += sum(1 for t in _strided(out)
                         if tuple(t.shape) == self.shape
                         and t.untyped_storage().data_ptr() not in given)
        return out


@pytest.mark.parametrize('bias', [False, True], ids=['plain', 'pair_bias'])
def test_fused_leaf_scores_take_one_gradient(bias):
    """The fused leaf families' scores feed their row logsumexp and their
    context: the backward forms one gradient of the scores, not one per
    use and their sum. With a pair bias (added to the scores after the
    product) the row logsumexp is its own step. Exact either way, to the
    second derivative."""
    h = Hierarchy.from_assignments(balanced_assignments(16, 4))
    assert h.layout.leaf_blocks is not None
    q, k, v = (t.requires_grad_() for t in seeded_qkv(16, 2, 2, 7))
    spy = _FreshTables((2, 4, 4, 4))  # [H, F, W, W]
    beta = torch.randn(h.sibling_pairs.size(1), 2, dtype=torch.float64,
                       requires_grad=True) if bias else None
    _dense_check_under(spy, h, q, k, v, pair_bias=beta)
    if not bias:
        assert spy.seen == 2  # the scores and one gradient
    inputs = (q, k, v) + ((beta, ) if bias else ())
    assert torch.autograd.gradgradcheck(
        lambda q, k, v, *b: hierarchical_attention(
            q, k, v, h, pair_bias=b[0] if b else None), inputs)


class _SliceBackwards(TorchDispatchMode):
    r"""Records slices' backwards: each is a whole table of zeros around
    the slice's gradient."""
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split('.')[0] == 'slice_backward':
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_pair_list_splits_member_tables_without_zero_tables():
    """On the pair list (molecule-like trees), the member tables split into
    leaf and cluster rows without a table of zeros per part in the
    backward (and their sum); the result and its gradients are exact."""
    h = fragment_forest([3, 5, 8, 4, 6, 7])
    assert h.layout.sparse.num_members > h.num_leaves  # and fragments
    q, k, v = (t.requires_grad_()
               for t in seeded_qkv(h.num_leaves, 2, 3, 5, dv=4))
    spy = _SliceBackwards()
    _dense_check_under(spy, h, q, k, v)
    assert spy.seen == []


def test_wide_flat_family_needs_no_table(monkeypatch):
    """5,000 leaves in one family: a table per head would be 100 MB; as
    softmax attention it needs memory linear in N, so a guard that refuses
    20 MB never fires, and the result is softmax attention."""
    import hsa_geo._memory as memory
    monkeypatch.setattr(memory, 'available_memory', lambda device: 20e6)
    n = 5000
    h = build(flat_tree(n))
    q, k, v = seeded_qkv(n, 2, 4, 0, dv=3)
    out = hierarchical_attention(q, k, v, h)
    assert max_err(out, leaf_sdpa(q, k, v)) <= EXACT
    with pytest.raises(ValueError, match='would need'):  # tables needed
        hierarchical_attention(q, k, v, h, return_weights=True)


def test_passes_leave_the_thread_count_as_they_found_it():
    """The passes run on one intra-op thread (docs/math.md, 6.8) and give
    the caller's setting back, after the forward and after the backward,
    with the same result."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        h = Hierarchy.from_assignments(balanced_assignments(64, 4))
        q, k, v = (t.requires_grad_() for t in seeded_qkv(64, 2, 3, 0))
        out = hierarchical_attention(q, k, v, h)
        assert torch.get_num_threads() == 2
        out.sum().backward()
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert max_err(hierarchical_attention(q, k, v, h), out) <= EXACT
    finally:
        torch.set_num_threads(threads)


_HOST_READS = ('item', 'tolist', 'cpu', 'numpy', 'nonzero', 'unique',
               'masked_select', 'bincount', '__bool__', '__float__',
               '__int__', '__index__')


@contextlib.contextmanager
def _host_reads(monkeypatch) -> Iterator[list]:
    r"""Records every read of tensor values into Python in the block,
    forward and backward (on an accelerator each one waits for the device):
    the methods that read, boolean-mask indexing, and ``repeat_interleave``
    without ``output_size``, patched on the tensor class and in
    :mod:`torch` for the block."""
    seen: list = []

    def counted(name, original):
        def method(*args, **kwargs):
            seen.append(name)
            return original(*args, **kwargs)
        return method

    for name in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, name,
                            counted(name, getattr(torch.Tensor, name)))
        if hasattr(torch, name):
            monkeypatch.setattr(torch, name, counted(name, getattr(torch,
                                                                   name)))
    getitem, repeat = torch.Tensor.__getitem__, torch.repeat_interleave

    def masked_getitem(self, index):
        indices = index if isinstance(index, tuple) else (index, )
        if any(isinstance(i, Tensor) and i.dtype == torch.bool
               for i in indices):
            seen.append('boolean mask')
        return getitem(self, index)

    def repeat_interleave(x, repeats=None, *args, **kwargs):
        if isinstance(repeats, Tensor) and 'output_size' not in kwargs:
            seen.append('repeat_interleave')
        return repeat(x, repeats, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, '__getitem__', masked_getitem)
    monkeypatch.setattr(torch, 'repeat_interleave', repeat_interleave)
    try:
        yield seen
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize('shape,most', [
    ('small trees', 1),  # the pair list's check for non-finite values
    ('flat', 0),  # streamed as softmax attention
    ('balanced', 2),  # one chunk of fused leaf families, the pair list
])
def test_host_reads_per_step(monkeypatch, shape, most):
    """Once its layout is derived, a forward and backward read tensor values
    into Python only where named above, with the checks an accelerator
    runs: the passes never wait for the device."""
    import hsa_geo.functional.dynamic_program as dp
    h = {'small trees': lambda: fragment_forest([5, 9, 3, 12, 7] * 8),
         'flat': lambda: build(flat_tree(1500)),
         'balanced': lambda: Hierarchy.from_assignments(
             balanced_assignments(4096, 16))}[shape]()
    qkv = seeded_qkv(h.num_leaves, 4, 8, 0, requires_grad=True)
    hierarchical_attention(*qkv, h).sum().backward()  # derives the layout
    with monkeypatch.context() as patch:
        patch.setattr(dp, '_HEADWISE_CHECKS', ())  # as on an accelerator
        with _host_reads(patch) as reads:
            hierarchical_attention(*qkv, h).sum().backward()
    assert len(reads) <= most, reads


def test_host_reads_are_counted_in_the_backward(monkeypatch):
    """The count sees a read made inside a custom backward: here one added
    to the head copies of the fused leaf path, which its backward makes."""
    import hsa_geo.functional.dynamic_program as dp
    head = dp._head

    def reading_head(x, i, buf):
        x.sum().item()
        return head(x, i, buf)

    h = Hierarchy.from_assignments(balanced_assignments(256, 16))
    qkv = seeded_qkv(256, 4, 8, 0, requires_grad=True)
    out = hierarchical_attention(*qkv, h)
    with monkeypatch.context() as patch:
        patch.setattr(dp, '_head', reading_head)
        with _host_reads(patch) as reads:
            out.sum().backward()
    assert reads.count('item') >= 4  # (one per head at least)
