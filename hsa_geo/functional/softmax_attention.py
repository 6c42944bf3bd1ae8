r"""Softmax attention with its row log-partition, in memory linear in the
number of rows.

The mathematics of one group of rows and one head, with scores
:math:`s_{ab} = \tau \, q_a \cdot k_b` and weights
:math:`P_{ab} = \exp(s_{ab} - \ell_a)`:

.. math::
    \ell_a = \log \sum_b e^{s_{ab}}, \qquad o_a = \sum_b P_{ab} v_b.

With upstream gradients :math:`\bar o_a` and :math:`\bar \ell_a`, and the
row term :math:`\delta_a = \bar o_a \cdot o_a - \bar \ell_a`,

.. math::
    \bar s_{ab} = P_{ab} (\bar o_a \cdot v_b - \delta_a), \quad
    \bar q_a = \tau \sum_b \bar s_{ab} k_b, \quad
    \bar k_b = \tau \sum_a \bar s_{ab} q_a, \quad
    \bar v_b = \sum_a P_{ab} \bar o_a,

because :math:`\partial \ell_a / \partial s_{ab} = P_{ab}` and
:math:`\partial o_a / \partial s_{ab} = P_{ab} (v_b - o_a)`.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from hsa_geo._autocast import autocast_off
from hsa_geo._checks import (check_bool, check_device, check_float,
                             check_floating)
from hsa_geo.functional.replayed_backward import replayed_backward

# PyTorch's CPU flash-attention kernel and its backward (the kernel behind
# scaled_dot_product_attention on CPU); absent from some builds.
_FLASH = getattr(torch.ops.aten,
                 '_scaled_dot_product_flash_attention_for_cpu', None)
_FLASH_BACKWARD = getattr(
    torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu_backward',
    None)
_FUSED_DTYPES = (torch.float32, torch.float64)

# Bytes of one tile of scores in the chunked path. Its backward holds about
# three such tiles at once; tens of MiB keep each product large enough to be
# efficient while the memory stays a small multiple of the inputs.
BLOCK_BYTES = 32 * 2**20


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float,
                      fused: Optional[bool] = None,
                      key_mask: Optional[Tensor] = None,
                      recompute_output: bool = False
                      ) -> Tuple[Tensor, Tensor]:
    r"""Softmax attention inside each of :obj:`B` independent groups of
    :obj:`L` rows, per head, with the row log-partition:

    .. math::
        \mathrm{lse}_a = \log \sum_b \exp(\tau \, q_a \cdot k_b), \qquad
        \mathrm{out}_a = \sum_b \exp(\tau \, q_a \cdot k_b -
        \mathrm{lse}_a) \, v_b,

    with :math:`\tau` = :obj:`scale`, the sums over the keys :math:`b` of
    the group that :obj:`key_mask` keeps (all of them without one). Both
    outputs are differentiable in :obj:`q`, :obj:`k` and :obj:`v`. In
    plain torch (which materialises the ``L x L`` table that this function
    never does)::

        s = torch.einsum('bahd,bchd->bhac', q, k) * scale
        out = torch.einsum('bhac,bchd->bahd', s.softmax(-1), v)
        lse = s.logsumexp(-1).transpose(1, 2)

    with ``s`` set to :math:`-\infty` where ``key_mask[b, c]`` is
    :obj:`False` (the padding of groups of fewer than :obj:`L` rows: the
    padded rows' own outputs are computed too, from the kept keys).

    Two implementations, both computing in the dtype of the inputs (also
    under :func:`torch.autocast`):

    * fused (``float32`` and ``float64`` on CPU): PyTorch's flash-attention
      kernel, which also returns :math:`\mathrm{lse}`. Its backward takes no
      gradient of :math:`\mathrm{lse}`; that gradient :math:`\bar\ell` is
      folded in exactly by one extra channel: :obj:`q`, :obj:`k` and
      :obj:`v` get a zero channel, ``grad_out`` a channel of ones and
      ``out`` the channel :math:`-\bar\ell`. The kernel's row term
      :math:`\bar o_a \cdot o_a` becomes
      :math:`\bar o_a \cdot o_a - \bar\ell_a`, and
      :math:`\bar o_a \cdot v_b` and every score are unchanged (the extra
      channel of :obj:`v` and :obj:`k` is zero), which is the score
      gradient :math:`P_{ab}(\bar o_a \cdot v_b - \bar o_a \cdot o_a +
      \bar\ell_a)` of both outputs; the extra channel of the returned
      gradients is dropped. Where ``D == Dv`` and every row with
      :math:`\bar\ell_a \neq 0` has :math:`\bar o_a \neq 0`, no channel
      is added: ``out`` is replaced by
      :math:`o_a - \bar\ell_a \bar o_a / \lVert \bar o_a \rVert^2`,
      whose product with :math:`\bar o_a` is the same row term, and which
      is the only copy that the backward makes (its rounding error is of
      the size of :math:`\epsilon \, (\lvert \bar o_a \cdot o_a \rvert
      + \lvert \bar\ell_a \rvert)`, that of the row term itself). The
      kernel needs ``D == Dv``: the narrower inputs are padded with zero
      channels, which change no score and no output.
    * chunked (any device and dtype): plain torch over tiles of query rows
      whose ``[b, H, rows, L]`` score tile fits in :obj:`BLOCK_BYTES`
      (one query row per tile at least). The forward stores :math:`\mathrm
      {lse}`; the backward recomputes each tile's weights from it and
      applies the formulas of the module docstring.

    Either stores only :obj:`q`, :obj:`k`, :obj:`v`, ``out`` and
    ``lse`` for the backward: memory :math:`O(B L H (D + D_v))`. Besides,
    the chunked path holds a few score tiles; the fused backward holds the
    shifted ``out`` (one copy more than the backward of
    :func:`torch.nn.functional.scaled_dot_product_attention`), or, where a
    channel is added, five widened copies ``[B, L, H, max(D, Dv) + 1]``.
    With :obj:`recompute_output`, ``out`` is not stored: the backward
    computes it again (one more forward kernel) where it reads it (the
    fused path always, the chunked one only with a gradient of ``out``)
    and shifts that copy in place. A caller that keeps no reference to
    ``out`` until the backward (one that scales it out of place, say)
    then holds one ``[B, L, H, Dv]`` table less while the backward runs.
    A second derivative (``create_graph=True``) replays the plain form
    above with
    :func:`~hsa_geo.functional.replayed_backward.replayed_backward`, which
    does materialise ``[B, H, L, L]`` tables.

    Non-finite inputs follow PyTorch's CPU kernel where both paths can: a
    row whose scores are all :math:`-\infty` gets ``out`` zero (its
    ``lse`` is :math:`-\infty` in the chunked path and ``0`` from the
    kernel), a row with a :math:`+\infty` or NaN score gets NaN. Gradients
    are defined for finite inputs only.

    Args:
        q (torch.Tensor): ``[B, L, H, D]`` queries; any strides (a view of
            a ``[F, W, H, D]`` table, for instance).
        k (torch.Tensor): ``[B, L, H, D]`` keys.
        v (torch.Tensor): ``[B, L, H, Dv]`` values.
        scale (float): the factor :math:`\tau` of the scores.
        fused (bool, optional): :obj:`True` for the fused kernel
            (:class:`ValueError` where it does not apply), :obj:`False` for
            the chunked path, :obj:`None` for the fused kernel where it
            applies. Empty inputs always take the chunked path.
            (default: :obj:`None`)
        key_mask (torch.BoolTensor, optional): ``[B, L]``, :obj:`True` on
            the keys that rows attend to. (default: :obj:`None`: all)
        recompute_output (bool): recompute ``out`` in the backward instead
            of storing it. (default: :obj:`False`)

    Returns:
        ``(out, lse)``: ``[B, L, H, Dv]`` and ``[B, L, H]``.

    Examples:
        >>> q, k, v = torch.randn(3, 2, 5, 4, 8).unbind(0)
        >>> out, lse = softmax_attention(q, k, v, scale=8**-0.5)
        >>> s = torch.einsum('bahd,bchd->bhac', q, k) * 8**-0.5
        >>> torch.allclose(lse, s.logsumexp(-1).transpose(1, 2), atol=1e-5)
        True
    """
    _check_inputs(q, k, v)
    scale = check_float(scale, 'scale')
    if key_mask is not None:
        _check_key_mask(key_mask, q)
    check_bool(recompute_output, 'recompute_output')
    with autocast_off(q.device):
        return _SoftmaxAttention.apply(q, k, v, scale, _use_fused(q, fused),
                                       key_mask, recompute_output)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor):
    for name, t in (('q', q), ('k', k), ('v', v)):
        check_floating(t, name)
        if t.dim() != 4:
            raise ValueError(
                f"'{name}' must be 4-D ([B, L, H, D]: B groups of L rows, H "
                f"heads), got shape {tuple(t.shape)}; add missing dimensions "
                f"with 'unsqueeze'")
        check_device(t, name, q.device, "'q'")
        if t.dtype != q.dtype:
            raise TypeError(f"q, k and v must have the same dtype, got "
                            f"{q.dtype}, {k.dtype}, {v.dtype}; convert them "
                            f"with '.to(q.dtype)'")
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"k must have the shape of q ([B, L, H, D]) and v the same "
            f"[B, L, H] ([B, L, H, Dv]); got q {tuple(q.shape)}, k "
            f"{tuple(k.shape)}, v {tuple(v.shape)}")


def _check_key_mask(key_mask: Tensor, q: Tensor):
    if not isinstance(key_mask, Tensor) or key_mask.dtype != torch.bool:
        raise TypeError(f"'key_mask' must be a bool tensor, got "
                        f"{getattr(key_mask, 'dtype', type(key_mask))}")
    if key_mask.shape != q.shape[:2]:
        raise ValueError(
            f"'key_mask' must have shape [B, L] = {tuple(q.shape[:2])} (the "
            f"groups and rows of q), got {tuple(key_mask.shape)}")
    check_device(key_mask, 'key_mask', q.device, "'q'")


def _use_fused(q: Tensor, fused: Optional[bool]) -> bool:
    possible = _FLASH is not None and _FLASH_BACKWARD is not None and \
        q.device.type == 'cpu' and q.dtype in _FUSED_DTYPES
    if fused is not None and check_bool(fused, 'fused') and not possible:
        raise ValueError(
            f"'fused=True' needs PyTorch's CPU flash-attention kernel, a CPU "
            f"tensor and dtype float32 or float64; got {q.dtype} on "
            f"{q.device}. Pass 'fused=None' to choose automatically")
    # The kernel divides by zero on inputs without rows or heads.
    return possible and fused is not False and min(q.shape[:3]) > 0


class _SoftmaxAttention(torch.autograd.Function):
    r"""``(out, lse)`` of :func:`softmax_attention`, from ``q``, ``k``, ``v``
    ``[B, L, H, *]``, the scale, the choice of path, the key mask and
    whether to recompute ``out`` in the backward."""
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float,
                fused: bool, key_mask: Optional[Tensor], recompute: bool):
        # An unused output gets no gradient instead of a zero-filled one.
        ctx.set_materialize_grads(False)
        run = _fused_forward if fused else _chunked_forward
        out, lse = run(q, k, v, scale, key_mask)
        # (saved, so that a mask changed in place before the backward fails
        # autograd's version check instead of giving other gradients)
        ctx.save_for_backward(q, k, v, None if recompute else out, lse,
                              key_mask)
        ctx.scale, ctx.fused = scale, fused
        return out, lse

    @staticmethod
    def plain(q: Tensor, k: Tensor, v: Tensor, scale: float,
              key_mask: Optional[Tensor]):
        r"""The forward in differentiable torch operations."""
        s = torch.einsum('bahd,bchd->bhac', q, k) * scale
        if key_mask is not None:
            s = s.masked_fill(~key_mask[:, None, None, :], float('-inf'))
        out = torch.einsum('bhac,bchd->bahd', torch.softmax(s, -1), v)
        return out, torch.logsumexp(s, -1).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor],
                 grad_lse: Optional[Tensor]):
        q, k, v, out, lse, key_mask = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if (grad_out is None and grad_lse is None) or not any(needs):
            return (None, ) * 7
        if torch.is_grad_enabled():
            grads = replayed_backward(
                partial(_SoftmaxAttention.plain, scale=ctx.scale,
                        key_mask=key_mask),
                (q, k, v), needs, (grad_out, grad_lse))
        else:
            if grad_lse is not None and not bool(grad_lse.any()):
                # A zero gradient of lse (a family whose rows' lse feeds
                # only masses that underflow to 0) needs no shifted output.
                grad_lse = None
            # Recomputed (this backward's own copy) where it is read: by the
            # kernel always, by the chunked path only with grad_out.
            own = out is None and (ctx.fused or grad_out is not None)
            if own:
                forward = _fused_forward if ctx.fused else _chunked_forward
                out = forward(q, k, v, ctx.scale, key_mask)[0]
            args = (q, k, v, out, lse, grad_out, grad_lse, ctx.scale, needs,
                    key_mask)
            grads = _fused_backward(*args, own) if ctx.fused else \
                _chunked_backward(*args)
        return (*grads, None, None, None, None)


def _heads_first(t: Tensor, width: int) -> Tensor:
    r"""``t`` ``[B, L, H, C]`` as ``[B, H, L, width]`` for the kernel, which
    reads the channels as contiguous: a view where it can be, else a copy
    with zero channels from ``C`` on."""
    if t.size(-1) == width and t.stride(-1) == 1:
        return t.transpose(1, 2)
    buf = t.new_zeros(t.shape[:3] + (width, ))
    buf[..., :t.size(-1)] = t
    return buf.transpose(1, 2)


def _additive_mask(key_mask: Optional[Tensor],
                   like: Tensor) -> Optional[Tensor]:
    r"""The kernel's form of :obj:`key_mask`: ``[B, 1, 1, L]``, 0 on kept
    keys and :math:`-\infty` on the others (broadcast over heads and
    rows)."""
    if key_mask is None:
        return None
    return like.new_zeros(key_mask.shape).masked_fill_(
        ~key_mask, float('-inf'))[:, None, None, :]


def _fused_forward(q: Tensor, k: Tensor, v: Tensor, scale: float,
                   key_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    width = max(q.size(-1), v.size(-1))
    out, lse = _FLASH(*(_heads_first(t, width) for t in (q, k, v)), 0.0,
                      False, attn_mask=_additive_mask(key_mask, q),
                      scale=scale)
    # The kernel lays both out as [B, L, H, *] in memory: these are dense.
    return out.transpose(1, 2)[..., :v.size(-1)], lse.transpose(1, 2)


def _fused_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                    lse: Tensor, grad_out: Optional[Tensor],
                    grad_lse: Optional[Tensor], scale: float,
                    needs: Sequence[bool], key_mask: Optional[Tensor],
                    own: bool = False) -> Tuple[Optional[Tensor], ...]:
    r"""The kernel's backward; :obj:`own`: :obj:`out` is this backward's
    own copy, shifted in place."""
    d = q.size(-1)
    if grad_out is not None and grad_lse is not None and d == v.size(-1):
        shifted = _shifted_output(out, grad_out, grad_lse, own)
        if shifted is not None:  # lse's gradient is folded into it
            out, grad_lse = shifted, None
    # Else one more channel carries it (see softmax_attention).
    width = max(d, v.size(-1)) + (grad_lse is not None)
    if grad_out is None:
        grad_out = out.new_zeros(())
    grad_out = grad_out.expand_as(out)
    go, o = _heads_first(grad_out, width), _heads_first(out, width)
    if grad_lse is not None:  # both are fresh copies here
        go[..., -1] = 1
        o[..., -1] = -grad_lse.transpose(1, 2)
    grads = _FLASH_BACKWARD(go, *(_heads_first(t, width) for t in (q, k, v)),
                            o, lse.transpose(1, 2), 0.0, False,
                            attn_mask=_additive_mask(key_mask, q),
                            scale=scale)
    return tuple(g.transpose(1, 2)[..., :t.size(-1)] if n else None
                 for g, t, n in zip(grads, (q, k, v), needs))


def _shifted_output(out: Tensor, grad_out: Tensor, grad_lse: Tensor,
                    in_place: bool = False) -> Optional[Tensor]:
    r"""``out_a - grad_lse_a * grad_out_a / |grad_out_a|^2`` ``[B, L, H, Dv]``
    (see :func:`softmax_attention`; into :obj:`out` itself with
    :obj:`in_place`), or :obj:`None` where a row with a gradient of ``lse``
    has a ``grad_out`` whose squared norm is zero, subnormal or
    infinite."""
    # A norm reduces without the full-size product that vecdot makes.
    sq = torch.linalg.vector_norm(grad_out, dim=-1).square_()
    coef = torch.where(grad_lse == 0, 0.0, grad_lse / sq)
    usable = (grad_lse == 0) | ((sq >= torch.finfo(sq.dtype).tiny)
                                & sq.isfinite())
    if not bool((usable & coef.isfinite()).all()):
        return None
    if in_place:
        return out.addcmul_(coef.unsqueeze(-1), grad_out, value=-1)
    return torch.addcmul(out, coef.unsqueeze(-1), grad_out, value=-1)


def _tiles(shape: Sequence[int], itemsize: int) -> Iterator[
        Tuple[slice, slice]]:
    r"""``(groups, rows)`` slices of ``[B, L, H, *]`` tiling all query rows,
    each tile's ``[b, H, rows, L]`` scores within :obj:`BLOCK_BYTES` (one
    query row at least)."""
    groups, length, heads = shape[:3]
    if min(groups, length, heads) == 0:
        return
    rows = max(1, BLOCK_BYTES // (heads * length * itemsize))
    if rows >= length:  # whole groups per tile
        step = rows // length
        for lo in range(0, groups, step):
            yield slice(lo, lo + step), slice(0, length)
        return
    for group in range(groups):
        for lo in range(0, length, rows):
            yield slice(group, group + 1), slice(lo, lo + rows)


def _finite_or_zero(x: Tensor) -> Tensor:
    r"""``x`` with ``-inf`` replaced by zero: the shift of a row whose scores
    are all ``-inf``, so that its weights are zero (and its output zero, as
    PyTorch's kernel gives) rather than NaN."""
    return x.masked_fill(x == float('-inf'), 0.0)


def _masked_(s: Tensor, key_mask: Optional[Tensor], g: slice) -> Tensor:
    r"""The score tile ``s`` ``[b, H, rows, L]`` of the groups :obj:`g`, with
    :math:`-\infty` on the keys that :obj:`key_mask` drops, in place."""
    if key_mask is None:
        return s
    return s.masked_fill_(~key_mask[g, None, None, :], float('-inf'))


def _chunked_forward(q: Tensor, k: Tensor, v: Tensor, scale: float,
                     key_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    # Keys and values are read by every tile: made dense once.
    kt = k.permute(0, 2, 3, 1).contiguous()  # [B, H, D, L]
    vt = v.transpose(1, 2).contiguous()  # [B, H, L, Dv]
    out = v.new_empty(v.shape)
    lse = q.new_empty(q.shape[:3])
    out_h, lse_h = out.transpose(1, 2), lse.transpose(1, 2)
    for g, r in _tiles(q.shape, q.element_size()):
        # The tile is read four times and written twice; each pass is as
        # costly as the product, so none is spent on scaling or dividing
        # it: the scale goes into q, the normalisation into the output.
        s = _masked_(torch.matmul(q[g, r].transpose(1, 2) * scale, kt[g]),
                     key_mask, g)
        shift = _finite_or_zero(s.amax(dim=-1, keepdim=True))
        s.sub_(shift).exp_()
        total = s.sum(dim=-1, keepdim=True)
        tile = torch.matmul(s, vt[g])
        out_h[g, :, r] = tile.div_(total.masked_fill(total == 0, 1.0))
        lse_h[g, :, r] = shift.add_(total.log_()).squeeze(-1)
    return out, lse


def _chunked_backward(q: Tensor, k: Tensor, v: Tensor, out: Optional[Tensor],
                      lse: Tensor, grad_out: Optional[Tensor],
                      grad_lse: Optional[Tensor], scale: float,
                      needs: Sequence[bool], key_mask: Optional[Tensor]
                      ) -> Tuple[Optional[Tensor], ...]:
    r"""The backward of the chunked path, tile by tile (:obj:`out` is read
    only with :obj:`grad_out`)."""
    kt = k.transpose(1, 2).contiguous()  # [B, H, L, D]
    vt = v.transpose(1, 2).contiguous()  # [B, H, L, Dv]
    shift = _finite_or_zero(lse).transpose(1, 2).unsqueeze(-1)
    gq = q.new_empty(q.shape) if needs[0] else None
    gk = torch.zeros_like(kt) if needs[1] else None
    gv = torch.zeros_like(vt) if needs[2] and grad_out is not None else None
    for g, r in _tiles(q.shape, q.element_size()):
        qs = q[g, r].transpose(1, 2) * scale  # [b, H, rows, D]
        p = _masked_(torch.matmul(qs, kt[g].transpose(-1, -2)), key_mask, g)
        p.sub_(shift[g, :, r]).exp_()
        minus_delta = _minus_delta(lse, out, grad_out, grad_lse, g, r)
        if grad_out is None:  # ds = p * grad_lse, in place
            ds = p.mul_(minus_delta)
        else:
            go = grad_out[g, r].transpose(1, 2)
            if gv is not None:
                gv[g] += torch.matmul(p.transpose(-1, -2), go)
            ds = torch.matmul(go, vt[g].transpose(-1, -2))
            ds.add_(minus_delta).mul_(p)
        if gq is not None:
            gq[g, r] = torch.matmul(ds, kt[g]).mul_(scale).transpose(1, 2)
        if gk is not None:
            gk[g] += torch.matmul(ds.transpose(-1, -2), qs)
    if needs[2] and gv is None:  # out unused: v has no influence
        gv = torch.zeros_like(vt)
    return (gq, None if gk is None else gk.transpose(1, 2),
            None if gv is None else gv.transpose(1, 2))


def _minus_delta(lse: Tensor, out: Optional[Tensor],
                 grad_out: Optional[Tensor], grad_lse: Optional[Tensor],
                 g: slice, r: slice) -> Tensor:
    r"""The row term ``-delta_a = grad_lse_a - grad_out_a . out_a`` of the
    tile's rows, ``[b, H, rows, 1]`` (zero without either gradient): per
    tile, so that the product ``grad_out * out`` is never formed at full
    size."""
    term = torch.zeros_like(lse[g, r])
    if grad_out is not None:
        term -= torch.linalg.vecdot(grad_out[g, r], out[g, r])
    if grad_lse is not None:
        term += grad_lse[g, r]
    return term.transpose(1, 2).unsqueeze(-1)
