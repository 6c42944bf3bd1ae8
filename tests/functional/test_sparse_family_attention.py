r"""The two ways the dynamic program runs a family: padded tables and the
list of sibling pairs (:class:`~hsa_geo.data.sparse_families.SparseFamilies`).

Small buckets and every family of a family graph take the pair list by
default. Here each property is checked with the layout forced both ways
(``SPARSE_PAIR_LIMIT`` 0: tables wherever there is no family graph; a huge
limit: the pair list everywhere but the fused leaf path), the pair list on
its fused CPU kernels where they are built (``pairs``) and on PyTorch
operations (``pairs_torch``), against the dense closed form in float64.
"""
import contextlib
import unittest.mock

import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.functional.fused_pair_kernels import fused_pairs
from hsa_geo.functional.sparse_family_attention import scatter_logsumexp
from tests.helpers.attention import dense_output, seeded_qkv
from tests.helpers.strategies import fewer, forests

SEEDS = st.integers(0, 2**31 - 1)
LAYOUTS = ['tables', 'pairs', 'pairs_torch']
EXACT = 1e-10


@contextlib.contextmanager
def layout(name: str):
    r"""Hierarchies built inside derive their layout with tables or with
    the pair list wherever they can."""
    limit = 0 if name == 'tables' else 2**62
    with unittest.mock.patch('hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT',
                             limit), fused_pairs(name != 'pairs_torch'):
        yield


def family_graph(h: Hierarchy, seed: int) -> Hierarchy:
    pairs = h.sibling_pairs
    pairs = pairs[:, pairs[0] != pairs[1]]
    keep = torch.rand(pairs.size(1),
                      generator=torch.Generator().manual_seed(seed)) < 0.5
    return h.with_family_graph(pairs[:, keep])


def sparse_buckets(h: Hierarchy):
    return [b.sparse for b in h.family_buckets if b.width > 1]


@pytest.mark.parametrize('name', LAYOUTS)
@given(f=forests(max_leaves=30), heads=st.sampled_from([1, 3]),
       width=st.sampled_from([4, 64]), seed=SEEDS, graph=st.booleans(),
       with_bias=st.booleans())
def test_both_layouts_match_dense(name, f, heads, width, seed, graph,
                                  with_bias):
    """64 channels per head take the CPU's other sparse product."""
    with layout(name):
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        if graph:
            h = family_graph(h, seed)
        q, k, v = seeded_qkv(f.num_leaves, heads, width, seed)
        bias = None
        if with_bias:
            bias = torch.randn(h.num_sibling_pairs, heads,
                               dtype=torch.float64)
        out, w = hierarchical_attention(q, k, v, h, pair_bias=bias,
                                        return_weights=True)
        Q = hierarchical_attention_matrix(q, k, h, pair_bias=bias)
        assert (out - torch.einsum('hij,jhd->ihd', Q, v)).abs().max() < EXACT
        if name != 'tables':  # all but a fused leaf bucket
            assert all(
                b.source_range == (0, f.num_leaves) and b.kind == 'leaf'
                for b in h.family_buckets if not b.sparse and b.width > 1)
        elif not graph:
            assert not any(sparse_buckets(h))
    # Family weights rebuild Q's diagonal blocks: checked through the
    # leaf-level rows of the flat families elsewhere; here they must agree
    # between the two layouts.
    with layout('pairs' if name == 'tables' else 'tables'):
        h2 = Hierarchy.from_parent(f.parent, f.num_leaves)
        if graph:
            h2 = family_graph(h2, seed)
        _, w2 = hierarchical_attention(q, k, v, h2, pair_bias=bias,
                                       return_weights=True)
    assert torch.equal(w.index, w2.index)
    assert w.weight.numel() == 0 or \
        (w.weight - w2.weight).abs().max() < EXACT


@pytest.mark.parametrize('name', LAYOUTS)
@fewer(4)  # second derivatives: the slowest check of the suite
@given(f=forests(max_leaves=7), seed=SEEDS, graph=st.booleans())
def test_gradcheck_both_layouts(name, f, seed, graph):
    with layout(name):
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        if graph:
            h = family_graph(h, seed)
        q, k, v = (t.requires_grad_()
                   for t in seeded_qkv(f.num_leaves, 2, 3, seed))
        bias = torch.randn(h.num_sibling_pairs, 2, dtype=torch.float64,
                           requires_grad=True)

        def fn(q, k, v, bias):
            return hierarchical_attention(q, k, v, h, pair_bias=bias)

        assert torch.autograd.gradcheck(fn, (q, k, v, bias))
        assert torch.autograd.gradgradcheck(fn, (q, k, v, bias))


@pytest.mark.parametrize('name', LAYOUTS)
def test_dropout_runs_on_both_layouts(name):
    # Unbiased in expectation: the mean over many masks approaches the
    # output without dropout.
    with layout(name):
        h = Hierarchy.from_parent([5, 5, 5, 6, 6, 6, 7, -1], 5)
        q, k, v = seeded_qkv(5, 2, 3, 0)
        ref = hierarchical_attention(q, k, v, h)
        torch.manual_seed(0)
        mean = torch.stack([
            hierarchical_attention(q, k, v, h, dropout_p=0.3, training=True)
            for _ in range(4000)]).mean(0)
    assert (mean - ref).abs().max() < 0.05


def test_small_buckets_take_the_pair_list_by_default():
    # A batch of small irregular families: every multi-child bucket is on
    # the one pair list; a bucket holding every leaf in order stays fused.
    h = Hierarchy.from_parent([7, 7, 7, 8, 8, 9, 9, 10, 10, 10, -1], 7)
    assert all(sparse_buckets(h))
    assert h.layout.sparse.num_members == 10  # 7 leaves, 3 clusters
    flat = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    leaf_bucket = next(b for b in flat.family_buckets if b.kind == 'leaf')
    assert not leaf_bucket.sparse and flat.layout.leaf_blocks is leaf_bucket


def test_sparse_family_graph_scores_only_its_pairs():
    # 40 children, 2 of the 1,600 pairs allowed: far below half of the
    # table, so the family runs on its pair list, even in a large bucket.
    edges = torch.tensor([[0, 5], [5, 0]])
    with layout('tables'):
        h = Hierarchy.from_parent([40] * 40 + [-1], 40)
        h = h.with_family_graph(edges)
        assert all(sparse_buckets(h))
    sparse = h.layout.sparse
    assert sparse.num_pairs == 2
    q, k, v = seeded_qkv(40, 2, 3, 0)
    assert (hierarchical_attention(q, k, v, h) - dense_output(q, k, v, h)
            ).abs().max() < EXACT
    assert torch.equal(sparse.row.sort().values,
                       sparse.row.sort().values.unique())


@given(f=forests(max_leaves=60), seed=SEEDS,
       keep=st.sampled_from([0.05, 0.3, 0.6, 0.9]))
def test_family_graph_scores_at_most_twice_its_pairs(f, seed, keep):
    g = torch.Generator().manual_seed(seed)
    with layout('tables'):  # only the family graph's density decides
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        pairs = h.sibling_pairs
        pairs = pairs[:, pairs[0] != pairs[1]]
        h = h.with_family_graph(
            pairs[:, torch.rand(pairs.size(1), generator=g) < keep])
        buckets = h.layout.buckets
    for b in buckets:
        if b.width > 1 and not b.sparse:  # a padded table scores it all
            assert b.num_families * b.width**2 <= 2 * int(b.allowed.sum())
    assert h.layout.sparse.num_pairs <= h.family_edge_index.size(1)


@pytest.mark.parametrize('fill', [-1e30, float('-inf')])
def test_scatter_logsumexp_empty_and_minus_infinite_rows(fill):
    s = torch.tensor([[0.0], [float('-inf')], [1.0], [2.0]],
                     requires_grad=True)
    index = torch.tensor([0, 1, 2, 2])
    out = scatter_logsumexp(s, index, 4, fill)
    expected = torch.tensor([[0.0], [fill],
                             [torch.tensor([1.0, 2.0]).logsumexp(0)], [fill]])
    assert torch.equal(out.isinf(), expected.isinf())
    assert torch.allclose(out[~out.isinf()], expected[~out.isinf()])
    out[~out.isinf()].sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[1].item() == 0.0


@pytest.mark.parametrize('layout', ['head_major', 'row_major'])
@pytest.mark.parametrize('counts', [False, True])
def test_scatter_logsumexp_second_derivatives(layout, counts):
    """Its one-step backward is exact to second order, in both layouts,
    sorted or not, with an empty row."""
    index = torch.tensor([0, 0, 1, 3, 3, 3])
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, 6, dtype=torch.float64, generator=g)
    s = (rows.t() if layout == 'head_major' else rows.t().contiguous())
    s = s.detach().requires_grad_()
    count = torch.bincount(index, minlength=4) if counts else None

    def f(s):
        return scatter_logsumexp(s, index, 4, -1e30, count)[[0, 1, 3]]
    assert torch.autograd.gradcheck(f, (s, ))
    assert torch.autograd.gradgradcheck(f, (s, ))


@pytest.mark.parametrize('counts', [False, True])
def test_scatter_logsumexp_same_in_both_layouts(counts):
    # The pair kernels give head-major scores [P, H] (the transpose of a
    # dense [H, P]): the sums run along the other dimension there.
    index = torch.tensor([0, 0, 1, 3, 3, 3])
    rows = torch.randn(3, 6, dtype=torch.float64)
    head_major = rows.t().requires_grad_()
    row_major = rows.t().contiguous().requires_grad_()
    assert head_major.t().is_contiguous()
    count = torch.bincount(index, minlength=4) if counts else None
    outs = [scatter_logsumexp(s, index, 4, -1e30, count)
            for s in (head_major, row_major)]
    assert torch.allclose(outs[0], outs[1])
    weights = torch.randn(4, 3, dtype=torch.float64)
    grads = [torch.autograd.grad((o * weights).sum(), s)[0]
             for o, s in zip(outs, (head_major, row_major))]
    assert torch.allclose(grads[0], grads[1])
    assert torch.allclose(outs[1][2], torch.full((3, ), -1e30,
                                                 dtype=torch.float64))


@pytest.mark.parametrize('shape,stride', [((1, 2), (2, 1)), ((1, 2), (1, 1)),
                                          ((3, 1), (1, 3)), ((3, 1), (1, 1)),
                                          ((3, 2), (1, 3)), ((3, 2), (2, 1))])
def test_scatter_logsumexp_any_strides(shape, stride):
    # Every layout of the scores, size-1 dimensions with any stride included
    # (one pair of two heads once read other memory as its maximum). Scores
    # near -1000: a wrong shift near 0 would underflow every term.
    values = torch.randn(shape[0] * shape[1], dtype=torch.float64) - 1000
    s = values.as_strided(shape, stride)
    index = torch.tensor([0, 2, 2])[:shape[0]]
    count = torch.bincount(index, minlength=3)
    expected = torch.full((3, shape[1]), -1e30, dtype=torch.float64)
    for row in range(3):
        if bool((index == row).any()):
            expected[row] = s[index == row].logsumexp(0)
    for _ in range(3):
        out = scatter_logsumexp(s, index, 3, -1e30, count)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize('heads', [1, 3])
def test_output_is_contiguous_when_every_leaf_is_on_the_pair_list(heads):
    # Every leaf is a member: their contexts come from the pair kernels'
    # head-major output, but the result is laid out as any tensor.
    h = Hierarchy.from_parent([3, 3, 3, -1], 3)
    assert h.layout.sparse.leaf.numel() == 3
    q, k, v = seeded_qkv(3, heads, 4, 0)
    out = hierarchical_attention(q, k, v, h)
    assert out.is_contiguous()
    assert torch.equal(out.view(3, heads * 4).view(3, heads, 4), out)
    assert (out - dense_output(q, k, v, h)).abs().max() < EXACT


def test_first_call_in_inference_mode_keeps_higher_derivatives():
    # The pair kernels' pattern is built on the first call and kept: built
    # in inference mode, it must still serve a later double backward.
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, 7, 7, -1], 5)
    q, k, v = (t.requires_grad_() for t in seeded_qkv(5, 2, 4, 1))
    with torch.inference_mode():
        hierarchical_attention(q, k, v, h)
    out = hierarchical_attention(q, k, v, h)
    g, = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    grads = torch.autograd.grad(g.sum(), (q, k, v))
    assert all(torch.isfinite(x).all() for x in grads)
    assert torch.autograd.gradgradcheck(
        lambda a, b, c: hierarchical_attention(a, b, c, h), (q, k, v))


@pytest.mark.parametrize('name', LAYOUTS)
@pytest.mark.parametrize('parent, n', [
    ([6] * 6 + [-1], 6),  # one family: one factor per weight
    ([7, 7, 8, 8, 8, 9, 9, 9, 9, -1], 7),  # leaves beside clusters
])
def test_dropout_drops_every_kind_of_weight(name, parent, n):
    """With one-hot values, out[i, j] is Q_ij times the dropout factors on
    the path of the weights that carry i to j: 0 where one of them was
    dropped, else Q_ij / (1 - p)^m. Weights to siblings (off the diagonal)
    must be dropped too, not only the self weights."""
    p, heads = 0.5, 3
    with layout(name):
        h = Hierarchy.from_parent(parent, n)
        q, k, _ = seeded_qkv(n, heads, 4, 0)
        v = torch.eye(n, dtype=q.dtype).unsqueeze(1).repeat(1, heads, 1)
        dense = hierarchical_attention_matrix(q, k, h)  # [H, N, N]
        torch.manual_seed(0)
        out = hierarchical_attention(q, k, v, h, dropout_p=p,
                                     training=True).permute(1, 0, 2)
    ratio = out / dense
    factors = torch.tensor([0.0] + [(1 - p)**-m for m in range(1, 4)],
                           dtype=q.dtype)
    assert ((ratio.unsqueeze(-1) - factors).abs().min(-1).values <
            EXACT).all()
    off = ~torch.eye(n, dtype=torch.bool)
    dropped = (out == 0) & off
    assert dropped.any() and (~dropped & off).any()
    if len(parent) == n + 1:  # one family: each pair has its own factor
        assert (ratio[:, off] == 0).sum() > 0.3 * off.sum() * heads
