r"""Tests of query-resolved HSA (docs/math.md, section 6.10):
:func:`hsa_geo.functional.query_resolved_attention` against the dense
matrix :func:`hsa_geo.functional.query_resolved_attention_matrix` built pair
by pair, in float64 on random irregular forests (with and without family
graphs); softmax on flat trees; its total KL to softmax never above HSA's
and equal to the minimum a generic optimiser finds over its family (a third
construction, written here from the parent vector); gradients to second
order; bad input."""
import math
import sys
from typing import Dict, List, Tuple

import pytest
import torch
from hypothesis import given, strategies as st
from torch.autograd import gradcheck, gradgradcheck

from hsa_geo import Hierarchy, hierarchical_attention_matrix
from hsa_geo.functional import (query_resolved_attention,
                                query_resolved_attention_matrix)
from tests.helpers.attention import apply_q, random_pairs
from tests.helpers.constrained_family import per_tree_log_softmax
from tests.helpers.strategies import (Forest, flat_tree, forests,
                                      lca_children, leaves_under)

SEEDS = st.integers(0, 2**31 - 1)
HEADS = st.sampled_from([None, 1, 3])


def make(n, heads, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lead = (n, ) if heads is None else (n, heads)
    return [2 * torch.randn(*lead, d, generator=g, dtype=dtype)
            for _ in range(3)]


def hierarchy_of(f: Forest, graph_seed=None) -> Hierarchy:
    h = Hierarchy.from_parent(torch.tensor(f.parent), f.num_leaves)
    if graph_seed is None:
        return h
    g = torch.Generator().manual_seed(graph_seed)
    return h.with_family_graph(random_pairs(f.parent, g))


@given(forests(max_leaves=14), HEADS, SEEDS, st.booleans())
def test_equals_the_dense_matrix(f, heads, seed, graph):
    h = hierarchy_of(f, seed if graph else None)
    q, k, v = make(f.num_leaves, heads, 3, seed)
    out = query_resolved_attention(q, k, v, h)
    Q = query_resolved_attention_matrix(q, k, h)
    assert torch.allclose(Q.sum(-1), torch.ones(()).double())
    assert torch.allclose(out, apply_q(Q, v), atol=1e-12, rtol=0)


@given(st.integers(1, 12), HEADS, SEEDS)
def test_flat_tree_is_softmax(n, heads, seed):
    f = flat_tree(n)
    q, k, v = make(n, heads, 4, seed)
    out = query_resolved_attention(q, k, v, hierarchy_of(f), scale=0.7)
    p = per_tree_log_softmax(f, q.view(n, -1, 4)[:, 0], k.view(n, -1, 4)[
        :, 0], scale=0.7).exp() if heads in (None, 1) else None
    s = 0.7 * torch.einsum('ihd,jhd->hij', q.view(n, -1, 4),
                           k.view(n, -1, 4))
    ref = torch.einsum('hij,jhd->ihd', s.softmax(-1), v.view(n, -1, 4))
    assert torch.allclose(out.view(n, -1, 4), ref, atol=1e-12, rtol=0)
    if p is not None:
        assert torch.allclose(out.view(n, 4), p @ v.view(n, 4),
                              atol=1e-12, rtol=0)


def total_kl(Q: torch.Tensor, log_p: torch.Tensor) -> float:
    keep = Q > 0
    return float((Q[keep] * (Q[keep].log() - log_p[keep])).sum())


@given(forests(min_leaves=2, max_leaves=14), SEEDS)
def test_kl_never_above_hsa(f, seed):
    h = hierarchy_of(f)
    q, k, _ = make(f.num_leaves, None, 3, seed)
    log_p = per_tree_log_softmax(f, q, k)
    resolved = total_kl(query_resolved_attention_matrix(q, k, h), log_p)
    hsa = total_kl(hierarchical_attention_matrix(q, k, h), log_p)
    assert resolved <= hsa + 1e-10


def blocks_of(f: Forest) -> Dict[int, List[Tuple[int, List[int]]]]:
    r"""For every leaf ``i``: its blocks ``(block node, leaves)``, itself
    first, from the parent vector (not the library)."""
    under = leaves_under(f.parent, f.num_leaves)
    out = {i: [(i, [i])] for i in range(f.num_leaves)}
    for i in range(f.num_leaves):
        seen = set()
        for j in range(f.num_leaves):
            t = lca_children(f.parent, i, j) if j != i else None
            if t is not None and t[2] not in seen:
                seen.add(t[2])
                out[i].append((t[2], under[t[2]]))
    return out


class BlockFamily:
    r"""The query-resolved family with free logits per query and block,
    a block's weight spread evenly over its leaves."""
    def __init__(self, f: Forest):
        blocks, n = blocks_of(f), f.num_leaves
        rows, cols, which, sizes, owner = [], [], [], [], []
        for i in range(n):
            for _, members in blocks[i]:
                for j in members:
                    rows.append(i)
                    cols.append(j)
                    which.append(len(owner))
                    sizes.append(len(members))
                owner.append(i)
        self.rows, self.cols = torch.tensor(rows), torch.tensor(cols)
        self.which, self.owner = torch.tensor(which), torch.tensor(owner)
        self.log_size = torch.tensor(sizes).double().log()
        self.n = n

    def kl(self, theta: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        r"""``sum_i KL(Q_i || P_i)`` of the logits :obj:`theta`."""
        shift = theta.detach().max()
        z = torch.zeros(self.n, dtype=theta.dtype).index_add(
            0, self.owner, (theta - shift).exp()).log() + shift
        log_q = theta[self.which] - z[self.owner[self.which]] - \
            self.log_size
        target = log_p[self.rows, self.cols]
        return (log_q.exp() * (log_q - target)).sum()

    def logits_of(self, Q: torch.Tensor) -> torch.Tensor:
        r"""``log w_i(b)``: the log mass of every block in the rows of
        :obj:`Q`."""
        mass = torch.zeros(self.owner.numel(), dtype=Q.dtype).index_add(
            0, self.which, Q[self.rows, self.cols])
        return mass.log()


@given(forests(min_leaves=2, max_leaves=10, max_trees=2), SEEDS)
def test_kl_is_the_minimum_of_its_family(f, seed):
    r"""The KL is convex in each query's block weights, so a stationary
    point is the minimum: the gradient over free logits vanishes at the
    library's weights, and a short L-BFGS run from uniform weights never
    gets below them."""
    h = hierarchy_of(f)
    q, k, _ = make(f.num_leaves, None, 2, seed)
    log_p = per_tree_log_softmax(f, q, k)
    family = BlockFamily(f)
    Q = query_resolved_attention_matrix(q, k, h)
    theta = family.logits_of(Q).requires_grad_()
    value = family.kl(theta, log_p)
    assert abs(float(value) - total_kl(Q, log_p)) < 1e-10
    (grad, ) = torch.autograd.grad(value, theta)
    assert float(grad.abs().max()) < 1e-10
    start = torch.zeros_like(theta, requires_grad=True)
    opt = torch.optim.LBFGS([start], max_iter=60,
                            line_search_fn='strong_wolfe')

    def closure():
        opt.zero_grad()
        loss = family.kl(start, log_p)
        loss.backward()
        return loss
    opt.step(closure)
    assert float(family.kl(start.detach(), log_p)) >= float(value) - 1e-10


@pytest.mark.parametrize('graph', [False, True])
def test_gradients_to_second_order(graph):
    f = Forest([5, 5, 6, 6, 7, 6, 7, -1], 5)
    h = hierarchy_of(f, 3 if graph else None)
    q, k, v = [t.requires_grad_() for t in make(5, 2, 2, 0)]

    def fn(q, k, v):
        return query_resolved_attention(q, k, v, h)
    assert gradcheck(fn, (q, k, v))
    assert gradgradcheck(fn, (q, k, v))


def test_first_call_in_inference_mode_then_training():
    """The structure cached on a hierarchy's first call holds normal
    tensors: an evaluation under inference mode, then training (to second
    order, which saves the pair pattern too)."""
    h = hierarchy_of(Forest([5, 5, 6, 6, 7, 6, 7, -1], 5), 3)
    q, k, v = [t.requires_grad_() for t in make(5, 2, 2, 0)]
    with torch.inference_mode():
        expected = query_resolved_attention(q, k, v, h)
    out = query_resolved_attention(q, k, v, h)
    assert torch.equal(out.detach(), expected)
    grad, = torch.autograd.grad(out.sum(), q, create_graph=True)
    grad.sum().backward()
    assert k.grad is not None


def test_float32_inputs_and_one_head():
    f = Forest([5, 5, 6, 6, 6, 7, 7, -1], 5)
    h = hierarchy_of(f)
    q, k, v = make(5, None, 4, 1, torch.float32)
    out = query_resolved_attention(q, k, v, h)
    assert out.dtype == torch.float32 and out.shape == (5, 4)
    ref = apply_q(query_resolved_attention_matrix(q.double(), k.double(), h),
                  v.double())
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_bad_input_is_refused():
    h = hierarchy_of(Forest([3, 3, 3, -1], 3))
    q, k, v = make(3, 2, 4, 0)
    with pytest.raises(ValueError, match='3 rows'):
        query_resolved_attention(q, k, v, Hierarchy.from_parent(
            torch.tensor([2, 2, -1]), 2))
    with pytest.raises(ValueError, match='same shape'):
        query_resolved_attention(q, k[..., :3], v, h)
    with pytest.raises(ValueError, match='scale'):
        query_resolved_attention(q, k, v, h, scale=-1.0)
    with pytest.raises(TypeError, match='Hierarchy'):
        query_resolved_attention(q, k, v, [3, 3, 3, -1])
    assert math.isfinite(float(query_resolved_attention(
        100 * q, 100 * k, v, h).abs().max()))


@given(forests(max_leaves=12), SEEDS, st.booleans())
def test_gather_path_gives_the_same(f, seed, graph):
    r"""Where the device has no sparse CSR kernels, the pairs' rows are
    gathered instead: the same output and gradients."""
    module = sys.modules['hsa_geo.functional.query_resolved_attention']
    h = hierarchy_of(f, seed if graph else None)
    inputs = [t.requires_grad_() for t in make(f.num_leaves, 2, 3, seed)]
    results = []
    for devices in (module.DEVICES, ()):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(module, 'DEVICES', devices)
            fresh = Hierarchy.from_parent(h.parent, h.num_leaves,
                                          h.family_edge_index)
            out = query_resolved_attention(*inputs, fresh)
            results.append((out, *torch.autograd.grad(
                out.square().sum(), inputs)))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@given(forests(max_leaves=14), SEEDS, st.booleans())
def test_pairs_are_counted_as_listed(f, seed, graph):
    r"""The memory check counts the (query, block) pairs and the leaf paths
    without listing them: the counts are those of the lists."""
    module = sys.modules['hsa_geo.functional.query_resolved_attention']
    h = hierarchy_of(f, seed if graph else None)
    leaf, node = module.leaf_paths(h)
    query, _ = module.query_blocks(h, leaf, node)
    assert module._pair_counts(h) == (query.numel(), leaf.numel())


def test_too_many_pairs_are_refused_before_they_are_listed(monkeypatch):
    r"""A chain of families, each a leaf beside the rest of the chain, has
    about N^2 / 2 (query, block) pairs: refused before :func:`leaf_paths`
    lists any of them."""
    import hsa_geo._memory as memory
    module = sys.modules['hsa_geo.functional.query_resolved_attention']
    n = 3000
    # leaf i and node n + i - 1 under node n + i
    parent = torch.cat([torch.arange(n, 2 * n - 1), torch.tensor([2 * n - 2]),
                        torch.arange(n + 1, 2 * n - 1), torch.tensor([-1])])
    h = Hierarchy.from_parent(parent, n)
    q, k, v = make(n, 2, 4, 0, torch.float32)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 64e6)

    def listing(*args):
        raise AssertionError('the pairs were listed')

    monkeypatch.setattr(module, 'leaf_paths', listing)
    with pytest.raises(ValueError, match=r'4,50[0-9],[0-9]{3} \(query, '
                                         r'block\) pairs'):
        query_resolved_attention(q, k, v, h)
