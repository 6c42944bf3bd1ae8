r"""Tests of :func:`hsa_geo.functional.softmax_attention.softmax_attention`:
softmax attention with its row log-partition.

Both paths (PyTorch's fused CPU kernel and the chunked one) are checked in
float64 against a plain einsum reference written here, for both outputs and
the gradients of all three inputs under random upstream gradients of both
outputs; on views of ``[F, W, H, D]`` tables (strided channels included),
``Dv != D``, one row, empty inputs, score tiles forced small, a key mask
of padding; with the output recomputed in the backward instead of stored;
by ``gradcheck`` and ``gradgradcheck``; and in float32 against float64.
"""
import doctest

import pytest
import torch

from hsa_geo.functional import softmax_attention as module
from hsa_geo.functional.softmax_attention import softmax_attention
from tests.helpers.attention import FullSizeProducts

EXACT = 1e-12
HAS_KERNEL = hasattr(torch.ops.aten,
                     '_scaled_dot_product_flash_attention_for_cpu')
PATHS = [pytest.param(True, id='fused', marks=pytest.mark.skipif(
    not HAS_KERNEL, reason="no CPU flash-attention kernel")),
    pytest.param(False, id='chunked')]


def reference(q, k, v, scale, key_mask=None):
    r"""``(out, lse)`` through the full ``[B, H, L, L]`` score table."""
    s = torch.einsum('bahd,bchd->bhac', q, k) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float('-inf'))
    w = torch.exp(s - s.amax(-1, keepdim=True))
    out = torch.einsum('bhac,bchd->bahd', w / w.sum(-1, keepdim=True), v)
    lse = torch.log(w.sum(-1)) + s.amax(-1)
    return out, lse.transpose(1, 2)


def make_qkv(shape, dv, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(*shape, generator=g, dtype=torch.float64)
            for _ in range(2))
    v = torch.randn(*shape[:3], dv, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


def outputs_and_grads(fn, q, k, v, seed, use=(True, True)):
    r"""Both outputs and the gradients of ``<out, g_out> + <lse, g_lse>``
    (a term dropped where ``use`` says so) in ``q``, ``k``, ``v``."""
    out, lse = fn(q, k, v)
    g = torch.Generator().manual_seed(seed + 1)
    loss = 0
    for t, used in zip((out, lse), use):
        if used:
            grad = torch.randn(t.shape, generator=g, dtype=torch.float64)
            grad = grad.to(t.dtype)
            loss = loss + (t * grad).sum()
    wrt = [t for t in (q, k, v) if t.requires_grad]
    return [out, lse, *torch.autograd.grad(loss, wrt)]


def assert_close(got, want, tol):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=0, atol=tol), (a - b).abs().max()


@pytest.mark.parametrize('fused', PATHS)
@pytest.mark.parametrize('shape,dv', [
    ((2, 7, 3, 4), 4),  # B > 1
    ((3, 6, 2, 5), 3),  # Dv < D
    ((2, 5, 2, 3), 7),  # Dv > D
    ((2, 1, 2, 4), 4),  # one row
    ((1, 33, 1, 8), 8),
])
def test_matches_reference(fused, shape, dv):
    q, k, v = make_qkv(shape, dv, seed=sum(shape) + dv)
    got = outputs_and_grads(
        lambda *a: softmax_attention(*a, scale=0.6, fused=fused), q, k, v, 3)
    want = outputs_and_grads(lambda *a: reference(*a, 0.6), q, k, v, 3)
    assert got[0].shape == (*shape[:3], dv) and got[1].shape == shape[:3]
    assert_close(got, want, EXACT)


@pytest.mark.parametrize('fused', PATHS)
@pytest.mark.parametrize('use', [(True, False), (False, True)])
def test_one_output_used(fused, use):
    q, k, v = make_qkv((2, 6, 2, 4), 5, seed=1)
    v.requires_grad_(use[0])  # v has no influence on lse alone
    got = outputs_and_grads(
        lambda *a: softmax_attention(*a, scale=0.4, fused=fused), q, k, v, 5,
        use)
    want = outputs_and_grads(lambda *a: reference(*a, 0.4), q, k, v, 5, use)
    assert_close(got, want, EXACT)


@pytest.mark.parametrize('fused', PATHS)
@pytest.mark.parametrize('row_scale,lse_row', [
    (0.0, 1.0),  # a row of grad_out zero where lse has a gradient
    (0.0, 0.0),  # ... and where it has none
    (1e-30, 1.0),  # a subnormal squared norm (float32)
    (1e25, 1.0),  # an infinite squared norm (float32)
])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_gradient_rows_of_any_size(fused, row_scale, lse_row, dtype):
    # The fused backward folds the gradient of lse into the output rows
    # (dividing by the squared norm of the rows of grad_out) and adds a
    # channel where it cannot.
    q, k, v = make_qkv((2, 5, 2, 4), 4, seed=8, dtype=dtype)
    out, lse = softmax_attention(q, k, v, 0.5, fused=fused)
    g = torch.Generator().manual_seed(9)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    grad_out[1, 2, 0] *= row_scale
    grad_lse[1, 2, 0] *= lse_row
    grad_out, grad_lse = grad_out.to(dtype), grad_lse.to(dtype)
    got = torch.autograd.grad((out, lse), (q, k, v), (grad_out, grad_lse))
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(reference(q, k, v, 0.5), (q, k, v),
                               (grad_out.double(), grad_lse.double()))
    scale = max(1.0, row_scale)
    tol = EXACT if dtype == torch.float64 else 1e-5
    assert_close([t.double() / scale for t in got],
                 [t / scale for t in want], tol)


@pytest.mark.parametrize('fused', PATHS)
def test_views_of_family_tables(fused):
    # Slices of [F, W, H, *] tables: a bucket of families, channels taken
    # with a step (stride 2: the kernel needs dense channels) and heads
    # taken from a permuted table.
    g = torch.Generator().manual_seed(7)
    tq = torch.randn(5, 9, 3, 8, generator=g, dtype=torch.float64)
    tk = torch.randn(5, 9, 3, 8, generator=g, dtype=torch.float64)
    tv = torch.randn(3, 5, 9, 6, generator=g, dtype=torch.float64)
    for t in (tq, tk, tv):
        t.requires_grad_()
    views = (lambda: (tq[1:4, :, :, :4], tk[1:4, :, :, ::2],
                      tv.permute(1, 2, 0, 3)[1:4]))
    got = outputs_and_grads(
        lambda *_: softmax_attention(*views(), scale=0.5, fused=fused),
        tq, tk, tv, 11)
    want = outputs_and_grads(lambda *_: reference(*views(), 0.5),
                             tq, tk, tv, 11)
    assert not any(t.is_contiguous() for t in views())
    assert_close(got, want, EXACT)


@pytest.mark.parametrize('budget', [1, 2000, 9000])
def test_small_tiles(monkeypatch, budget):
    # One row per tile, several rows per tile, several groups per tile.
    monkeypatch.setattr(module, 'BLOCK_BYTES', budget)
    q, k, v = make_qkv((3, 10, 2, 4), 3, seed=budget)
    got = outputs_and_grads(
        lambda *a: softmax_attention(*a, scale=0.7, fused=False), q, k, v, 2)
    want = outputs_and_grads(lambda *a: reference(*a, 0.7), q, k, v, 2)
    assert_close(got, want, EXACT)


@pytest.mark.parametrize('fused', PATHS)
@pytest.mark.parametrize('shape', [(0, 4, 2, 3), (2, 0, 2, 3),
                                   (2, 4, 0, 3)])
def test_empty(fused, shape):
    q, k, v = make_qkv(shape, 2, seed=0)
    out, lse = softmax_attention(q, k, v, 1.0, fused=fused)
    assert out.shape == (*shape[:3], 2) and lse.shape == shape[:3]
    grads = torch.autograd.grad(out.sum() + lse.sum(), (q, k, v))
    assert [g.shape for g in grads] == [t.shape for t in (q, k, v)]


@pytest.mark.parametrize('fused', PATHS)
def test_gradcheck(fused):
    q, k, v = make_qkv((1, 3, 2, 2), 3, seed=3)

    def fn(*a):
        return softmax_attention(*a, scale=0.8, fused=fused)
    assert torch.autograd.gradcheck(fn, (q, k, v))
    # Random projections: the second derivative replays autograd's own.
    assert torch.autograd.gradgradcheck(fn, (q, k, v), fast_mode=True)


@pytest.mark.parametrize('fused', PATHS)
def test_float32(fused):
    q, k, v = make_qkv((2, 300, 2, 16), 8, seed=4, dtype=torch.float32)
    got = outputs_and_grads(
        lambda *a: softmax_attention(*a, scale=0.25, fused=fused), q, k, v,
        6)
    assert all(t.dtype == torch.float32 for t in got)
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = outputs_and_grads(lambda *a: reference(*a, 0.25), q, k, v, 6)
    assert_close([t.double() for t in got], want, 1e-5)


@pytest.mark.parametrize('fused', PATHS)
def test_autocast_computes_in_the_inputs_dtype(fused):
    """A forward under autocast (the backward outside it, as PyTorch
    recommends) gives float32's outputs and gradients, bit for bit: no
    product runs in the lower precision."""
    q, k, v = make_qkv((2, 40, 2, 8), 8, seed=5, dtype=torch.float32)

    def run(*a):
        return softmax_attention(*a, scale=0.25, fused=fused)

    def autocast_run(*a):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return run(*a)
    want = outputs_and_grads(run, q, k, v, 7)
    got = outputs_and_grads(autocast_run, q, k, v, 7)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize('fused', PATHS)
def test_non_finite_rows(fused):
    # Row 0 scores -inf against both keys: a zero output, as PyTorch's
    # kernel gives. Row 1 scores +inf: NaN.
    inf = float('inf')
    q = torch.tensor([[1., 1.], [-1., 1.]], dtype=torch.float64)
    k = torch.tensor([[-inf, 0.], [-inf, 1.]], dtype=torch.float64)
    v = torch.randn(2, 3, dtype=torch.float64)
    out, _ = softmax_attention(*(t.view(1, 2, 1, -1) for t in (q, k, v)),
                               1.0, fused=fused)
    assert (out[0, 0] == 0).all() and out[0, 1].isnan().all()


def padding_mask(groups, length, seed):
    r"""``[B, L]``: a random number of kept keys (at least one) per group,
    then padding, as the groups of a padded family table."""
    g = torch.Generator().manual_seed(seed)
    kept = torch.randint(1, length + 1, (groups, 1), generator=g)
    return torch.arange(length) < kept


@pytest.mark.parametrize('fused', PATHS)
@pytest.mark.parametrize('shape,dv', [((4, 9, 2, 3), 3), ((3, 6, 2, 5), 2),
                                      ((2, 1, 1, 4), 4)])
def test_key_mask(fused, shape, dv):
    q, k, v = make_qkv(shape, dv, seed=sum(shape))
    mask = padding_mask(shape[0], shape[1], seed=dv)
    got = outputs_and_grads(
        lambda *a: softmax_attention(*a, scale=0.6, fused=fused,
                                     key_mask=mask), q, k, v, 5)
    want = outputs_and_grads(lambda *a: reference(*a, 0.6, mask), q, k, v, 5)
    assert_close(got, want, EXACT)
    # Dropped keys change nothing: not the outputs, no gradient reaches them.
    assert (got[3][~mask] == 0).all() and (got[4][~mask] == 0).all()


@pytest.mark.parametrize('fused', PATHS)
def test_key_mask_gradcheck(fused):
    q, k, v = make_qkv((2, 4, 2, 2), 3, seed=8)
    mask = torch.tensor([[True, True, False, False], [True] * 4])

    def fn(*a):
        return softmax_attention(*a, scale=0.8, fused=fused, key_mask=mask)
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v), fast_mode=True)


@pytest.mark.parametrize('fused', PATHS)
def test_key_mask_changed_before_backward_is_refused(fused):
    q, k, v = make_qkv((2, 4, 2, 3), 3, seed=10)
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    out, _ = softmax_attention(q, k, v, 0.5, fused=fused, key_mask=mask)
    mask[1, 2] = False  # the backward would weigh other keys
    with pytest.raises(RuntimeError, match='modified by an inplace'):
        out.sum().backward()


def test_key_mask_small_tiles(monkeypatch):
    monkeypatch.setattr(module, 'BLOCK_BYTES', 300)
    q, k, v = make_qkv((3, 10, 2, 4), 3, seed=9)
    mask = padding_mask(3, 10, seed=1)
    got = outputs_and_grads(lambda *a: softmax_attention(
        *a, scale=0.7, fused=False, key_mask=mask), q, k, v, 2)
    want = outputs_and_grads(lambda *a: reference(*a, 0.7, mask), q, k, v, 2)
    assert_close(got, want, EXACT)


def test_fused_not_applicable():
    q, k, v = make_qkv((1, 3, 1, 2), 2, seed=0, dtype=torch.float16)
    with pytest.raises(ValueError, match='fused'):
        softmax_attention(q, k, v, 1.0, fused=True)
    out, lse = softmax_attention(q, k, v, 1.0)  # the chunked path
    assert out.dtype == lse.dtype == torch.float16


@pytest.mark.parametrize('fused', PATHS)
@pytest.mark.parametrize('masked', [False, True])
def test_recomputed_output(fused, masked):
    # Not stored for the backward, recomputed there and shifted in place:
    # the same values, and a retained graph gives the same gradients twice.
    q, k, v = make_qkv((2, 6, 2, 4), 4, seed=12)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2]) \
        if masked else None
    want = outputs_and_grads(lambda *a: reference(*a, 0.7, mask), q, k, v, 6)
    for _ in range(2):
        got = outputs_and_grads(lambda *a: softmax_attention(
            *a, scale=0.7, fused=fused, key_mask=mask,
            recompute_output=True), q, k, v, 6)
        assert_close(got, want, EXACT)
    out, lse = softmax_attention(q, k, v, 0.7, fused=fused, key_mask=mask,
                                 recompute_output=True)
    grads = [torch.randn_like(out), torch.randn_like(lse)]
    loss = (out * grads[0]).sum() + (lse * grads[1]).sum()
    first = torch.autograd.grad(loss, (q, k, v), retain_graph=True)
    assert_close(torch.autograd.grad(loss, (q, k, v)), first, 0.0)
    assert torch.autograd.gradcheck(lambda *a: softmax_attention(
        *a, scale=0.7, fused=fused, key_mask=mask, recompute_output=True),
        (q, k, v))
    assert torch.autograd.gradgradcheck(lambda *a: softmax_attention(
        *a, scale=0.7, fused=fused, key_mask=mask, recompute_output=True),
        (q, k, v))


@pytest.mark.parametrize('recompute', [False, True])
def test_recomputed_output_is_not_stored(recompute):
    q, k, v = make_qkv((2, 6, 2, 4), 5, seed=13)
    saved = []

    def pack(t):
        saved.append(t.data_ptr())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = softmax_attention(q, k, v, 0.5, recompute_output=recompute)
    assert saved.count(out.data_ptr()) == 1 - recompute


def test_output_recomputed_only_where_read():
    # With a gradient of lse alone, the chunked backward does not read out:
    # one forward kernel in all, and the gradients of the reference.
    q, k, v = make_qkv((2, 6, 2, 4), 3, seed=14)
    v = v.detach()  # (lse does not depend on it)
    want = outputs_and_grads(lambda *a: reference(*a, 0.6), q, k, v, 3,
                             use=(False, True))
    calls = []
    forward = module._chunked_forward

    def counted(*args):
        calls.append(1)
        return forward(*args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, '_chunked_forward', counted)
        got = outputs_and_grads(lambda *a: softmax_attention(
            *a, scale=0.6, fused=False, recompute_output=True), q, k, v, 3,
            use=(False, True))
    assert len(calls) == 1
    assert_close(got, want, EXACT)


def test_chunked_row_term_per_tile(monkeypatch):
    # The row term grad_out . out is reduced tile by tile: the chunked
    # backward forms no [B, L, H, Dv] product (a full-size temporary).
    monkeypatch.setattr(module, 'BLOCK_BYTES', 2000)
    q, k, v = make_qkv((3, 10, 2, 4), 4, seed=15)
    got = softmax_attention(q, k, v, scale=0.7, fused=False)
    want = reference(q, k, v, 0.7)
    g = torch.Generator().manual_seed(16)
    grads = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in got]
    spy = FullSizeProducts(v.shape)
    with spy:
        got = [*got, *torch.autograd.grad(got, (q, k, v), grads)]
    assert spy.seen == 0
    assert_close(got, [*want, *torch.autograd.grad(want, (q, k, v), grads)],
                 EXACT)


def test_argument_errors():
    q, k, v = make_qkv((2, 3, 2, 4), 5, seed=0)
    with pytest.raises(ValueError, match='4-D'):
        softmax_attention(q[0], k[0], v[0], 1.0)
    with pytest.raises(ValueError, match='shape of q'):
        softmax_attention(q, k[:, :2], v, 1.0)
    with pytest.raises(ValueError, match='shape of q'):
        softmax_attention(q, k, v[:, :, :1], 1.0)
    with pytest.raises(TypeError, match='same dtype'):
        softmax_attention(q, k.float(), v, 1.0)
    with pytest.raises(TypeError, match='floating'):
        softmax_attention(q, k, v.long(), 1.0)
    with pytest.raises(TypeError, match='scale'):
        softmax_attention(q, k, v, torch.tensor(1.0))
    with pytest.raises(ValueError, match='scale'):
        softmax_attention(q, k, v, float('inf'))
    with pytest.raises(TypeError, match='fused'):
        softmax_attention(q, k, v, 1.0, fused=1)
    with pytest.raises(TypeError, match='recompute_output'):
        softmax_attention(q, k, v, 1.0, recompute_output=None)
    with pytest.raises(TypeError, match="'key_mask' must be a bool"):
        softmax_attention(q, k, v, 1.0, key_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"shape \[B, L\] = \(2, 3\)"):
        softmax_attention(q, k, v, 1.0, key_mask=torch.ones(3, 2).bool())


def test_doctest():
    assert doctest.testmod(module, raise_on_error=True).attempted > 0
