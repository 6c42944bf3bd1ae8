r"""The fused CPU kernels of the pair list against the same arithmetic in
PyTorch operations (:mod:`hsa_geo.functional.sparse_family_attention`), in
every build this install has, on pair lists of random irregular forests
with family graphs (members without pairs, rows of one pair), pair biases
with masked pairs, and dropout factors. The whole attention through them is
checked against the dense closed form in
``test_sparse_family_attention.py`` (layouts ``pairs`` and
``pairs_torch``)."""
import unittest.mock

import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo import Hierarchy, hierarchical_attention
from hsa_geo.functional.fused_pair_kernels import (fused_contexts,
                                                   fused_pairs,
                                                   fused_pairs_apply,
                                                   fused_pairs_threaded,
                                                   fused_pairs_variant,
                                                   fused_pairs_variants,
                                                   fused_scores_lse)
from hsa_geo.functional.sparse_family_attention import (scatter_logsumexp,
                                                        sparse_contexts,
                                                        sparse_scores)
from tests.helpers.attention import seeded_qkv
from tests.helpers.strategies import fewer, forests

VARIANTS = fused_pairs_variants()
needs_kernels = pytest.mark.skipif(
    not VARIANTS, reason='the fused kernels were not built (no compiler)')
SEEDS = st.integers(0, 2**31 - 1)
# float32: both computations are about 1e-5 off the float64 result on
# gradients that sum a few hundred terms, in different orders.
TOL = {torch.float64: 1e-12, torch.float32: 1e-4}


def pair_list(f, seed: int, graph: bool):
    r"""The pair list of a forest (every multi-child family on it), thinned
    by a random family graph: members with no pair, rows of one pair."""
    with unittest.mock.patch('hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT',
                             2**62):
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        if graph:
            pairs = h.sibling_pairs
            pairs = pairs[:, pairs[0] != pairs[1]]
            g = torch.Generator().manual_seed(seed)
            h = h.with_family_graph(
                pairs[:, torch.rand(pairs.size(1), generator=g) < 0.5])
        return h.layout.sparse


def inputs(sparse, heads: int, width: int, seed: int, dtype, masked: bool):
    r"""Member tables, log sizes, a pair bias (a third of it ``-inf`` when
    :obj:`masked`: whole rows can be masked) and dropout factors."""
    K, P = sparse.num_members, sparse.num_pairs
    q, k, v = seeded_qkv(K, heads, width, seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    log_size = torch.rand(K, generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(P, heads, generator=g, dtype=torch.float64)
    if masked:
        bias[torch.rand(P, heads, generator=g) < 0.3] = float('-inf')
    keep = (torch.rand(P, heads, generator=g) < 0.7).to(dtype) / 0.7
    return q, k, v, log_size, bias.to(dtype), keep


def plain(sparse, q, k, v, log_size, bias, keep, fill):
    s = sparse_scores(sparse, q, k, log_size, 0.5, bias)
    lse = scatter_logsumexp(s, sparse.src, sparse.num_members, fill)
    shift = lse - 0.25  # the parent's log mass, a constant here
    return s, lse, sparse_contexts(sparse, s, shift, v, keep)


def fused(sparse, q, k, v, log_size, bias, keep, fill):
    s, lse = fused_scores_lse(sparse, q, k, log_size, 0.5, fill, bias)
    return s, lse, fused_contexts(sparse, s, lse - 0.25, v, keep)


def close(a, b, tol: float) -> bool:
    r"""Equal infinities in the same places, finite entries within tol."""
    if not torch.equal(a.isinf(), b.isinf()):
        return False
    fin = a.isfinite() & b.isfinite()
    return bool(((a - b)[fin].abs() <= tol * (1 + b[fin].abs())).all())


@needs_kernels
@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@given(f=forests(max_leaves=40), seed=SEEDS, graph=st.booleans(),
       heads=st.sampled_from([1, 3, 4]), width=st.sampled_from([1, 5, 16]),
       masked=st.booleans(), with_keep=st.booleans(),
       fill=st.sampled_from([-1e30, float('-inf')]))
def test_fused_kernels_match_torch_operations(variant, dtype, f, seed,
                                              graph, heads, width, masked,
                                              with_keep, fill):
    """Values and every gradient (q, k, log sizes, bias, v)."""
    sparse = pair_list(f, seed, graph)
    q, k, v, log_size, bias, keep = inputs(sparse, heads, width, seed,
                                           dtype, masked)
    keep = keep if with_keep else None
    leaves = [t.requires_grad_() for t in (q, k, v, log_size, bias)]
    results = []
    for run in (plain, fused):
        with fused_pairs(True, variant):
            s, lse, u = run(sparse, q, k, v, log_size, bias, keep, fill)
        # Only finite logsumexps carry a gradient (an empty row's fill
        # does not depend on the inputs).
        loss = (lse.where(lse.isfinite(), 0) * 0.3).sum() + (u * u).sum()
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((s, lse, u) + tuple(
            torch.zeros_like(x) if g is None else g
            for x, g in zip(leaves, grads)))
    for a, b in zip(*results):
        assert close(b.detach(), a.detach(), TOL[dtype])


@needs_kernels
@pytest.mark.parametrize('variant', VARIANTS)
@fewer(5)  # second derivatives replay the PyTorch operations
@given(f=forests(max_leaves=8), seed=SEEDS, graph=st.booleans(),
       with_keep=st.booleans())
def test_fused_kernels_gradcheck_to_second_order(variant, f, seed, graph,
                                                 with_keep):
    sparse = pair_list(f, seed, graph)
    q, k, v, log_size, bias, keep = inputs(sparse, 2, 3, seed,
                                           torch.float64, False)
    keep = keep if with_keep else None

    def fn(q, k, v, log_size, bias):
        with fused_pairs(True, variant):
            _, lse, u = fused(sparse, q, k, v, log_size, bias, keep, -1e30)
        return lse, u

    args = tuple(t.requires_grad_() for t in (q, k, v, log_size, bias))
    if sparse.num_pairs == 0:
        return
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@needs_kernels
def test_kernels_are_deterministic_and_outlive_the_switch():
    """The same bits on every call; a backward after the block that chose
    the kernels still runs them."""
    h = Hierarchy.from_parent([9, 9, 9, 10, 10, 10, 10, 11, 11, 12, 12, 12,
                               -1], 9)
    assert h.layout.sparse.num_pairs > 0
    q, k, v = seeded_qkv(9, 2, 4, 0, dtype=torch.float32,
                         requires_grad=True)
    outs = []
    for _ in range(2):
        with fused_pairs(True):
            out = hierarchical_attention(q, k, v, h)
        with fused_pairs(False):
            out.square().sum().backward()
        outs.append((out.detach(), q.grad.clone()))
        q.grad = None
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def uneven_forest(seed: int):
    r"""A forest whose pair list is long enough for the kernels' threads
    (at least 2^15 products at 4 heads x 16): 60 families of 1 to 12
    leaves under 20 clusters of 3 families, rows of very different
    lengths."""
    from tests.helpers.strategies import Forest
    g = torch.Generator().manual_seed(seed)
    widths = torch.randint(1, 13, (60, ), generator=g).tolist()
    num_leaves = sum(widths)
    parent, family = [], num_leaves  # family clusters first
    for w in widths:
        parent += [family] * w
        family += 1
    # the families under 20 clusters in turn, those under a root
    parent += [family + i % 20 for i in range(len(widths))]
    parent += [family + 20] * 20 + [-1]
    return Forest(parent=parent, num_leaves=num_leaves)


@needs_kernels
@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('graph', [False, True])
def test_threads_split_rows_not_results(variant, dtype, graph):
    """A list long enough for several threads: the kernels match the
    PyTorch operations, and give the same bits on one thread and on two
    (every row is written by one loop)."""
    sparse = pair_list(uneven_forest(3), 3, graph)
    assert sparse.num_pairs * 4 * 16 >= 2**15
    q, k, v, log_size, bias, keep = inputs(sparse, 4, 16, 0, dtype, True)
    leaves = [t.requires_grad_() for t in (q, k, v, log_size, bias)]
    results = []
    for threads, run in ((2, fused), (1, fused), (2, plain)):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with fused_pairs(True, variant):
                s, lse, u = run(sparse, q, k, v, log_size, bias, keep, -1e30)
                grads = torch.autograd.grad(
                    (s.exp() * keep).sum() + lse.sum() + u.square().sum(),
                    leaves)
        finally:
            torch.set_num_threads(before)
        results.append([lse, u] + list(grads))
    for two, one, ops in zip(*results):
        assert torch.equal(two, one)
        assert close(two, ops, TOL[dtype])


def test_threaded_kernels_share_pytorchs_openmp_runtime():
    """A threaded build binds to the OpenMP runtime PyTorch loaded: one
    library of the soname the kernels need (``libgomp.so.1``) in the
    process, so the kernels' threads are PyTorch's own. (Other packages
    may bring their own renamed copies, such as scikit-learn's
    ``libgomp-<hash>.so.1``; the kernels do not bind to those.)"""
    import os
    import re
    assert isinstance(fused_pairs_threaded(), bool)
    with fused_pairs(False):
        assert fused_pairs_threaded() is False
    if not fused_pairs_threaded() or not os.path.exists('/proc/self/maps'):
        pytest.skip('no threaded kernels here, or no /proc/self/maps')
    with open('/proc/self/maps') as maps:
        runtimes = {line.split()[-1] for line in maps
                    if re.search(r'/libgomp\.so\.1(\.\d+)*$', line.strip())}
    assert len(runtimes) == 1, runtimes


@needs_kernels
def test_nonfinite_values_take_the_exact_path():
    """An infinite value reaches only the rows that weigh it, as the
    PyTorch operations give it (the kernel would give 0 * inf = NaN where
    a weight underflowed)."""
    h = Hierarchy.from_parent([6, 6, 6, 7, 7, 8, 8, 8, -1], 6)
    assert h.layout.sparse.num_pairs > 0
    q, k, v = seeded_qkv(6, 1, 2, 0, mag=40.0)
    v[0, 0, 0] = float('inf')
    with fused_pairs(True):
        fast = hierarchical_attention(q, k, v, h)
    with fused_pairs(False):
        slow = hierarchical_attention(q, k, v, h)
    assert torch.equal(fast.isnan(), slow.isnan())
    assert close(fast.nan_to_num(0.0), slow.nan_to_num(0.0), 1e-12)


def test_fused_pairs_apply_only_to_cpu_float32_and_float64():
    x32, x64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    with fused_pairs(True):
        expected = bool(VARIANTS)
        assert fused_pairs_apply(x32, x32) is expected
        assert fused_pairs_apply(x64) is expected
        assert not fused_pairs_apply(x32, x64)  # mixed dtypes
        assert not fused_pairs_apply(x32.half())
        assert not fused_pairs_apply(x32.bfloat16())
        assert fused_pairs_variant() == (VARIANTS[0] if VARIANTS else None)
    with fused_pairs(False):
        assert not fused_pairs_apply(x32)
        assert fused_pairs_variant() is None


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant 'sse9' is not available"):
        with fused_pairs(True, 'sse9'):
            pass


@needs_kernels
@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_nan_and_infinite_scores_propagate_as_in_torch(variant, dtype):
    """A NaN query and a +inf bias make NaN rows, in the same places."""
    from tests.helpers.strategies import Forest
    f = Forest(parent=[9, 9, 9, 10, 10, 10, 10, 11, 11, 12, 12, 12, -1],
               num_leaves=9)
    sparse = pair_list(f, 0, False)
    q, k, v, log_size, bias, keep = inputs(sparse, 2, 4, 0, dtype, True)
    q[1, 0, 2] = float('nan')
    bias[sparse.src == 5, 1] = float('inf')
    with fused_pairs(True, variant):
        got = fused(sparse, q, k, v, log_size, bias, keep, -1e30)
    expected = plain(sparse, q, k, v, log_size, bias, keep, -1e30)
    for a, b in zip(got, expected):
        assert a.isnan().any() and torch.equal(a.isnan(), b.isnan())
        assert close(a.nan_to_num(0.0), b.nan_to_num(0.0), TOL[dtype])


@needs_kernels
@pytest.mark.parametrize('variant', VARIANTS)
def test_expanded_gradients(variant):
    """A loss ``out.sum()`` sends stride-0 gradients into both backwards;
    the kernels read dense copies of them."""
    from tests.helpers.strategies import Forest
    f = Forest(parent=[9, 9, 9, 10, 10, 10, 10, 11, 11, 12, 12, 12, -1],
               num_leaves=9)
    sparse = pair_list(f, 0, False)
    q, k, v, log_size, bias, keep = inputs(sparse, 2, 4, 0, torch.float64,
                                           False)
    leaves = [t.requires_grad_() for t in (q, k, v, log_size, bias)]
    grads = []
    for run in (plain, fused):
        with fused_pairs(True, variant):
            _, lse, u = run(sparse, q, k, v, log_size, bias, keep, -1e30)
        for _ in range(3):  # freed copies would be reused by now
            torch.empty(10**6).fill_(float('nan'))
        grads.append(torch.autograd.grad(lse.sum() + u.sum(), leaves))
    for a, b in zip(*grads):
        assert close(b, a, TOL[torch.float64])


def _pair_list_calls(h: Hierarchy, q, k, v, **switch) -> tuple:
    import hsa_geo.functional.dynamic_program as dp
    with fused_pairs(True, **switch), unittest.mock.patch.object(
            dp, 'fused_scores_lse', wraps=dp.fused_scores_lse) as spy:
        out = hierarchical_attention(q, k, v, h)
    return spy.call_count, out


@needs_kernels
@pytest.mark.parametrize('limit, calls', [(0, 0), (9 * 2 * 4 - 1, 0),
                                          (10**9, 1)])
def test_lists_above_the_limit_take_torch_operations(limit, calls):
    """The attention runs a list of more products than the limit
    (FUSED_PAIRS_LIMIT, or fused_pairs' max_products) on PyTorch operations
    (where the kernels lose to PyTorch's sparse products), with the same
    result."""
    h = Hierarchy.from_parent([9, 9, 9, 10, 10, 10, 10, 11, 11, 12, 12, 12,
                               -1], 9)
    q, k, v = seeded_qkv(9, 2, 4, 0)
    expected = hierarchical_attention(q, k, v, h)
    assert h.layout.sparse.num_pairs * 2 * 4 > 9 * 2 * 4 - 1
    count, out = _pair_list_calls(h, q, k, v, max_products=limit)
    assert count == calls
    assert close(out, expected, TOL[torch.float64])
    # The limit is the block's: the default one holds again after it.
    assert _pair_list_calls(h, q, k, v)[0] == 1


@pytest.mark.parametrize('bad', [-1, 2.5, True, '10'])
def test_max_products_must_be_a_count(bad):
    with pytest.raises(ValueError, match='max_products'):
        with fused_pairs(True, max_products=bad):
            pass


@pytest.mark.parametrize('value, expected', [('0', None), ('off', None),
                                             ('1', 'default')])
def test_environment_switch(value, expected):
    """``HSA_GEO_FUSED_PAIRS=0`` starts a process without the kernels;
    ``fused_pairs(True)`` still turns them on there."""
    import os
    import subprocess
    import sys
    code = ('from hsa_geo.functional.fused_pair_kernels import *\n'
            'print(fused_pairs_variant())\n'
            'with fused_pairs(True):\n'
            '    print(fused_pairs_variant())\n')
    env = dict(os.environ, HSA_GEO_FUSED_PAIRS=value)
    out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    default = VARIANTS[0] if VARIANTS else None
    assert out[0] == str(default if expected == 'default' else None)
    assert out[1] == str(default)
