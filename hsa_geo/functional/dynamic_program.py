r"""The exact dynamic program of hierarchical self-attention (HSA).

The mathematics: docs/math.md.
"""
from __future__ import annotations

import contextlib
import functools
import math
from functools import partial
from typing import (Callable, Dict, FrozenSet, Iterator, List, NamedTuple,
                    Optional, Sequence, Tuple, Union)

import torch
from torch import Tensor

from hsa_geo._autocast import autocast_off
from hsa_geo._checks import (check_bool, check_device, check_float,
                             check_floating, check_pair_bias)
from hsa_geo._memory import ASK_ABOVE, ensure_memory
from hsa_geo.data.hierarchy import FamilyBucket, Hierarchy, HierarchyLayout
from hsa_geo.functional.replayed_backward import replayed_backward
from hsa_geo.functional.softmax_attention import softmax_attention
from hsa_geo.functional.fused_pair_kernels import (
    fused_contexts, fused_pairs_apply, fused_scores_lse)
from hsa_geo.functional.pair_pattern import PairPattern
from hsa_geo.functional.sparse_family_attention import (all_finite,
                                                        pair_pattern,
                                                        scatter_logsumexp,
                                                        sparse_contexts,
                                                        sparse_scores)


class FamilyWeights(NamedTuple):
    r"""The family attention weights :math:`\pi_F(a \to b)`.

    Attributes:
        index (LongTensor): ``[2, P]`` the ordered sibling pairs ``(a, b)``
            (node ids, ``a == b`` included), as
            :attr:`Hierarchy.sibling_pairs`.
        weight (Tensor): ``[P, H]`` :math:`\pi_F(a \to b)` per head; for every
            ``a`` the weights over its siblings ``b`` sum to one.
    """
    index: Tensor
    weight: Tensor


def check_attention_inputs(q: Tensor, k: Tensor, v: Tensor,
                           hierarchy: Hierarchy):
    r"""Raises a :class:`TypeError` or :class:`ValueError` naming what is
    wrong with queries, keys and values ``[N(, H), D]`` for the leaves of
    :obj:`hierarchy`."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    for name, t in (('q', q), ('k', k), ('v', v)):
        check_floating(t, name)
        if t.dim() != q.dim() or t.dim() not in (2, 3):
            raise ValueError(
                f"q, k and v must all be [N, D] or all [N, H, D]; got shapes "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q and k must have the same shape and v the same [N(, H)]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(-1) == 0 or (q.dim() == 3 and q.size(1) == 0):
        raise ValueError(f"q and k need at least one head and one channel "
                         f"per head; got shape {tuple(q.shape)}")
    if v.size(-1) == 0:
        raise ValueError(f"v needs at least one channel per head; got shape "
                         f"{tuple(v.shape)}")
    if q.size(0) != hierarchy.num_leaves:
        raise ValueError(
            f"q, k and v have {q.size(0)} rows but the hierarchy has "
            f"{hierarchy.num_leaves} leaves; row i must be leaf i")
    for name, t in (('q', q), ('k', k), ('v', v)):
        check_device(t, name, hierarchy.device, 'the hierarchy')


def _invalid(bucket: FamilyBucket) -> Tensor:
    r"""Pairs without a logit: the diagonal (``l_aa = g_a`` enters
    separately), padding, and pairs off the family graph; ``[W, W]`` when
    all families share it, else ``[F, W, W]``."""
    if bucket.allowed is not None:  # never on the diagonal or in padding
        return ~bucket.allowed
    eye = torch.eye(bucket.width, dtype=torch.bool,
                    device=bucket.mask.device)
    if _only_diagonal_invalid(bucket):
        return eye
    return ~(bucket.mask[:, :, None] & bucket.mask[:, None, :] & ~eye)


def _only_diagonal_invalid(bucket: FamilyBucket) -> bool:
    r"""Whether :func:`_invalid` of :obj:`bucket` is the diagonal alone (no
    family graph, no padding)."""
    return bucket.allowed is None and bucket.kind != 'mixed'


# The padded width from which a bucket of families of leaves runs as softmax
# attention rather than on tables (docs/math.md, 6.6).
STREAMED_WIDTH = 32


def _streamed(layout: HierarchyLayout, plain: bool) -> FrozenSet[int]:
    r"""The buckets of wide families of leaves, which run as softmax
    attention without any table (docs/math.md, 6.6), when nothing needs
    their tables (:obj:`plain`: no pair bias, no dropout, no returned
    weights) and no family graph removes pairs from them."""
    if not plain:
        return frozenset()
    return frozenset(i for i, b in enumerate(layout.buckets)
                     if _only_leaves(b) and not b.sparse
                     and b.allowed is None and b.width >= STREAMED_WIDTH)


def _only_leaves(bucket: FamilyBucket) -> bool:
    r"""Whether every real slot of :obj:`bucket` is a leaf (padding aside)."""
    return bucket.kind == 'leaf' or (bucket.kind == 'mixed'
                                     and bucket.cluster_slot.numel() == 0)


def _ensure_fits(hierarchy: Hierarchy, layout: HierarchyLayout, heads: int,
                 dtype: torch.dtype, pairs: bool, backward: bool,
                 streamed: FrozenSet[int]):
    r"""Refuses, before anything is allocated, families whose padded score
    tables ``[H, F, W, W]`` cannot fit in the memory the device has left."""
    tabled = [b for i, b in enumerate(layout.buckets)
              if b.width > 1 and not b.sparse and i not in streamed]
    item = torch.finfo(dtype).bits // 8
    # (a bias or the returned weights add a table and the pair index)
    tables = _LIVE_SCORE_TABLES[backward] + pairs
    per_pair = tables * heads * item + 24 * pairs
    nbytes = int(per_pair * sum(b.num_families * b.width**2
                                for b in tabled))
    width = max((b.width for b in tabled), default=0)
    if width < _GUARDED_WIDTH and nbytes <= ASK_ABOVE:
        return  # (asking the system reads a file)
    node, children = hierarchy.widest_family
    ensure_memory(
        nbytes, f'hierarchical attention with {heads} heads',
        hierarchy.device, f"the widest family (node {node}) has {children} "
        f"children, padded to a table of {width} x {width} scores per head")


# Score tables alive at once at the peak of a forward without and with a
# backward (then also the gradients of the scores, of the logsumexp and of
# the contexts), measured on one family of 4,096 / 8,192 children: 1.6-2.1
# and 3.3, rounded up for temporaries; and the width from which the guard
# asks the system however small the total.
_LIVE_SCORE_TABLES = {False: 2.5, True: 5}
_GUARDED_WIDTH = 1024


def _bucket_biases(pair_bias: Optional[Tensor], hierarchy: Hierarchy,
                   buckets: List[FamilyBucket],
                   dtype: torch.dtype) -> List[Optional[Tensor]]:
    r"""The ``[P, H]`` pair bias laid out per bucket as ``[H, F, W, W]``
    (zeros in padding and on the diagonal); :obj:`None` per bucket without
    a bias. The sibling pairs of the buckets are only enumerated here."""
    if pair_bias is None:
        return [None] * len(buckets)
    out, offset = [], 0
    for b, (f, i, j) in zip(buckets, hierarchy.bucket_pairs):
        rows = pair_bias[offset:offset + f.numel()].to(dtype)
        offset += f.numel()
        if b.sparse:
            out.append(None)
            continue
        bias = rows.new_zeros(rows.size(1), b.num_families, b.width, b.width)
        bias[:, f, i, j] = rows.t()
        out.append(bias if b.width > 1 else None)
    return out


def _rows(x: Tensor, index: Tensor,
          span: Optional[Tuple[int, int]]) -> Tensor:
    r"""``x[index]``; a view when :obj:`index` is the range :obj:`span`
    (at large ``N`` every gathered copy is a fresh, page-faulted block)."""
    if span is None:
        return x.index_select(0, index)
    if span == (0, x.size(0)):  # a slice would cost a backward
        return x
    return x[span[0]:span[1]]


# Rows of a table: (index, span); with a span, the index is not read.
Rows = Tuple[Optional[Tensor], Optional[Tuple[int, int]]]


def _cluster_rows(bucket: FamilyBucket) -> Optional[Rows]:
    r"""The internal-node rows a bucket's slots hold, as ``(index, span)``:
    all slots in order for ``'cluster'`` buckets, the ``cluster_slot``
    slots for ``'mixed'`` ones; :obj:`None` for ``'leaf'`` buckets."""
    if bucket.kind == 'cluster':
        return bucket.source_index, bucket.source_range
    if bucket.kind == 'mixed':
        return bucket.cluster_node, None
    return None


def _add_rows_(out: Tensor, rows: Rows, x: Tensor):
    r"""``out[index] += x`` (``index`` may repeat); a slice for a span."""
    index, span = rows
    if span is not None:
        out[span[0]:span[1]] += x
    else:  # a strided source (a head of q, k, v) takes a slow CPU kernel
        out.index_add_(0, index, x.contiguous())


def _to_slots(bucket: FamilyBucket, leaf_x: Tensor,
              cluster_rows: Optional[Tensor] = None) -> Tensor:
    r"""The padded family table ``[F, W, *S]`` (zeros in padding) from the
    leaf rows ``[N, *S]`` and the bucket's internal-node rows
    (:func:`_cluster_rows`). Slots that are a range of leaves are a view:
    no copy at all."""
    shape = (bucket.num_families, bucket.width) + leaf_x.shape[1:]
    if bucket.kind == 'leaf':
        # reshape: a view unless the strides forbid it
        return _rows(leaf_x, bucket.source_index,
                     bucket.source_range).reshape(shape)
    if bucket.kind == 'cluster':
        return cluster_rows.reshape(shape)
    out = leaf_x.new_zeros((shape[0] * shape[1], ) + shape[2:])
    out[bucket.leaf_slot] = leaf_x[bucket.leaf_node]
    if cluster_rows is not None:  # (none in a padded bucket of leaves)
        out[bucket.cluster_slot] = cluster_rows
    return out.view(shape)


def _node_slots(bucket: FamilyBucket, leaf_x: Tensor,
                cluster_x: Tensor) -> Tensor:
    r""":func:`_to_slots` from whole per-node tables ``[N, *S]`` and
    ``[M, *S]``."""
    rows = _cluster_rows(bucket)
    return _to_slots(bucket, leaf_x,
                     None if rows is None else _rows(cluster_x, *rows))


def _set_rows_(out: Tensor, rows: Rows, x: Tensor):
    r"""``out[index] = x``; a slice for a span."""
    index, span = rows
    if span is not None:
        out[span[0]:span[1]] = x
    else:
        out[index] = x


def _from_slots(bucket: FamilyBucket, x: Tensor,
                leaf_out: Optional[Tensor]) -> Optional[Tensor]:
    r"""Writes the leaf slots of ``[F, W, *S]`` into :obj:`leaf_out` in
    place and returns the internal-node slots, the rows of
    :func:`_cluster_rows` (:obj:`None` for ``'leaf'`` buckets)."""
    x = x.flatten(0, 1)
    if bucket.kind == 'leaf':
        _set_rows_(leaf_out, (bucket.source_index, bucket.source_range), x)
        return None
    if bucket.kind == 'mixed':
        leaf_out[bucket.leaf_node] = x[bucket.leaf_slot]
        return x[bucket.cluster_slot]
    return x


# Families per chunk on the CPU: a head buffer of ~1 MiB stays in cache while
# it is reused by the product, the diagonal, the sums and the adds.
_CPU_CHUNK_ELEMENTS = 2**18


def _chunks(x: Tensor) -> List[Tuple[int, int]]:
    r"""Ranges of families of an ``[F, W, H, D]`` table to work on at a
    time: cache-sized on the CPU, the whole table on accelerators."""
    return _family_ranges(x.size(0), x.size(1) * x.size(3), x.device)


def _family_ranges(num_families: int, per_family: int,
                   device: torch.device) -> List[Tuple[int, int]]:
    if device.type != 'cpu':
        return [(0, num_families)]
    step = max(1, _CPU_CHUNK_ELEMENTS // max(1, per_family))
    return [(lo, min(lo + step, num_families))
            for lo in range(0, num_families, step)]


def _head_buffers(x: Tensor, chunks: List[Tuple[int, int]],
                  count: int) -> List[Tensor]:
    r"""Empty ``[C, W, D]`` buffers for one head of a chunk of ``C``
    families of an ``[F, W, H, D]`` table."""
    size = max(hi - lo for lo, hi in chunks) if chunks else 0
    return [x.new_empty((size, ) + x.shape[1:2] + x.shape[3:])
            for _ in range(count)]


def _head(x: Tensor, i: int, buf: Tensor) -> Tensor:
    # CPU bmm clones every matrix of a strided batch; one contiguous copy of
    # the head into a reused buffer is much cheaper.
    buf = buf[:x.size(0)]
    return buf.copy_(x[:, :, i])


@contextlib.contextmanager
def _cpu_threads(count: int, device: torch.device) -> Iterator[None]:
    r"""Runs the block with :obj:`count` intra-op threads on the CPU (the
    setting is global to the process: restored on exit)."""
    threads = torch.get_num_threads()
    if threads == count or device.type != 'cpu':
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _serial(kernel: Callable) -> Callable:
    r"""Runs :obj:`kernel` (a backward of the autograd functions below)
    with one intra-op thread on the CPU. The passes issue thousands
    of cache-sized operations, each a parallel region that waits for every
    thread: whenever another process holds a core, each one stalls for a
    time slice (19x slower with two threads on two busy cores, measured),
    and on an idle machine they gain little. The forward passes run in one
    such block as a whole (:func:`hierarchical_attention`); the backwards
    run later, from autograd, so each takes its own."""
    @functools.wraps(kernel)
    def run(ctx, *args):
        tensor = next((a for a in args if isinstance(a, Tensor)), None)
        if tensor is None:
            return kernel(ctx, *args)
        with _cpu_threads(1, tensor.device):
            return kernel(ctx, *args)
    return run


class _HeadwiseScores(torch.autograd.Function):
    r"""Scores inside families, their diagonal and the family sums:
    ``s[h, f, a, b] = alpha * <x[f, a, h], y[f, b, h]>`` (``[H, F, W, W]``),
    ``diag[f, a, h] = s[h, f, a, a]`` (``[F, W, H]``) and the sums of ``x``
    and ``y`` over each family (``[F, H, D]``), from two ``[F, W, H, D]``
    family tables. With a finite "minus infinity" :obj:`neg`, the
    diagonal of ``s`` is set to it and the off-diagonal row logsumexp
    ``[H, F, W]`` is a fifth output: its gradient then joins the scores'
    own chunk by chunk in the backward (on the chunk's scores recomputed),
    instead of as a second full-size gradient of ``s`` that autograd adds
    to the first.

    One batched product per head and chunk of families. Heads are staged
    through reused buffers (CPU ``bmm`` clones every matrix of a strided
    batch), and the backward writes each input's whole gradient into one
    tensor: generic autograd of per-head views would zero-fill a full-size
    gradient per head and allocate one more per term."""
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, alpha: float,
                neg: Optional[float] = None):
        ctx.alpha = alpha
        heads, width = x.size(2), y.size(1)
        out = x.new_empty(heads, x.size(0), x.size(1), width)
        lse = None if neg is None else out.new_empty(out.shape[:-1])
        diag = x.new_empty(x.shape[:3])
        x_sum = x.new_empty(x.size(0), heads, x.size(3))
        y_sum = y.new_empty(y.size(0), heads, y.size(3))
        chunks = _chunks(x)
        bx, by = _head_buffers(x, chunks, 2)
        for lo, hi in chunks:
            for i in range(heads):
                cx = _head(x[lo:hi], i, bx)
                cy = _head(y[lo:hi], i, by)
                s = _chunk_scores(cx, cy, alpha, neg, out[i, lo:hi])
                diag[lo:hi, :, i] = torch.linalg.vecdot(cx, cy)
                torch.sum(cx, dim=1, out=x_sum[lo:hi, i])
                torch.sum(cy, dim=1, out=y_sum[lo:hi, i])
                if lse is not None:
                    torch.logsumexp(s, dim=-1, out=lse[i, lo:hi])
        # Not the scores: the backward recomputes a chunk's where it needs
        # them, instead of holding them beside the input gradients.
        ctx.save_for_backward(x, y, lse)
        ctx.neg = neg
        outs = (out, diag.mul_(alpha), x_sum, y_sum)
        return outs if lse is None else outs + (lse, )

    @staticmethod
    def plain(x: Tensor, y: Tensor, alpha: float,
              neg: Optional[float] = None):
        r"""The forward in differentiable torch operations."""
        s = torch.einsum('fahd,fbhd->hfab', x, y) * alpha
        outs = (s, (x * y).sum(-1) * alpha, x.sum(1), y.sum(1))
        if neg is None:
            return outs
        eye = torch.eye(s.size(-1), dtype=torch.bool, device=s.device)
        s = s.masked_fill(eye, neg)
        return (s, ) + outs[1:] + (torch.logsumexp(s, dim=-1), )

    @staticmethod
    @_serial
    def backward(ctx, grad: Tensor, grad_diag: Tensor, grad_x_sum: Tensor,
                 grad_y_sum: Tensor, grad_lse: Optional[Tensor] = None):
        x, y, lse = ctx.saved_tensors
        alpha = ctx.alpha
        if torch.is_grad_enabled():
            return replayed_backward(
                _HeadwiseScores.plain, (x, y, alpha, ctx.neg),
                ctx.needs_input_grad,
                (grad, grad_diag, grad_x_sum, grad_y_sum, grad_lse))
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gy = torch.empty_like(y) if ctx.needs_input_grad[1] else None
        chunks = _chunks(x)
        bx, by, bo = _head_buffers(x, chunks, 3)
        bs = None if lse is None else _weight_buffer(grad, chunks)
        for lo, hi in chunks:
            for i in range(x.size(2)):
                cx = _head(x[lo:hi], i, bx)
                cy = _head(y[lo:hi], i, by)
                out = bo[:hi - lo]
                gd = grad_diag[lo:hi, :, i].unsqueeze(-1)
                gs = grad[i, lo:hi]
                if lse is not None:  # + the row logsumexp's gradient
                    sc = _chunk_scores(cx, cy, alpha, ctx.neg, bs[:hi - lo])
                    gs = _row_lse_gradient(sc, lse[i, lo:hi],
                                           grad_lse[i, lo:hi], sc).add_(gs)
                # alpha * (G Y + diag(g) Y) + broadcast of the family-sum
                # gradient.
                if gx is not None:
                    torch.bmm(gs, cy, out=out)
                    out.addcmul_(gd, cy)
                    gx[lo:hi, :, i] = out.mul_(alpha).add_(
                        grad_x_sum[lo:hi, i].unsqueeze(1))
                if gy is not None:
                    torch.bmm(gs.transpose(1, 2), cx, out=out)
                    out.addcmul_(gd, cx)
                    gy[lo:hi, :, i] = out.mul_(alpha).add_(
                        grad_y_sum[lo:hi, i].unsqueeze(1))
        return gx, gy, None, None


def _chunk_scores(cx: Tensor, cy: Tensor, alpha: float, neg: Optional[float],
                  out: Tensor) -> Tensor:
    r"""``alpha * cx @ cy^T`` of one head and chunk of families ``[C, W,
    W]`` into :obj:`out`, with the diagonal set to :obj:`neg` if given."""
    torch.bmm(cx, cy.transpose(1, 2), out=out).mul_(alpha)
    if neg is not None:
        out.diagonal(dim1=1, dim2=2).fill_(neg)
    return out


class _RowLogSumExp(torch.autograd.Function):
    r"""``logsumexp`` over the last dimension of the ``[H, F, W, W]`` family
    scores, in cache-sized chunks: neither direction allocates a full-size
    temporary besides the gradient itself."""
    @staticmethod
    def forward(ctx, s: Tensor) -> Tensor:
        out = s.new_empty(s.shape[:-1])
        for lo, hi in _family_ranges(s.size(1), s.size(2) * s.size(3),
                                     s.device):
            for i in range(s.size(0)):
                torch.logsumexp(s[i, lo:hi], dim=-1, out=out[i, lo:hi])
        ctx.save_for_backward(s, out)
        return out

    @staticmethod
    @_serial
    def backward(ctx, grad: Tensor) -> Tensor:
        s, lse = ctx.saved_tensors
        if torch.is_grad_enabled():
            return replayed_backward(partial(torch.logsumexp, dim=-1), (s, ),
                                     ctx.needs_input_grad, (grad, ))[0]
        out = torch.empty_like(s)
        for lo, hi in _family_ranges(s.size(1), s.size(2) * s.size(3),
                                     s.device):
            for i in range(s.size(0)):
                _row_lse_gradient(s[i, lo:hi], lse[i, lo:hi], grad[i, lo:hi],
                                  out[i, lo:hi])
        return out


def _row_lse_gradient(s: Tensor, lse: Tensor, grad: Tensor,
                      out: Tensor) -> Tensor:
    r"""The gradient ``exp(s - lse) grad`` of the row logsumexp ``lse``
    ``[C, W]`` of scores ``s`` ``[C, W, W]`` into :obj:`out` (which may be
    :obj:`s`)."""
    return torch.sub(s, lse.unsqueeze(-1), out=out).exp_().mul_(
        grad.unsqueeze(-1))


class _HeadwiseContext(torch.autograd.Function):
    r"""Context inside families:
    ``out[f, a, h] = sum_b attn[h, f, a, b] * v[f, b, h]
    (+ r[f, a, h] * v[f, a, h] + u[f, h])`` with
    ``attn = exp(s - shift) (* keep)``, from the scores ``s``
    ``[H, F, W, W]``, ``shift`` ``[H, F, W, 1]``, an optional dropout mask
    ``keep`` like ``s`` and ``v`` ``[F, W, H, D]``; with the optional self
    mass ``r`` ``[F, W, H]`` and the parent's context ``u`` ``[F, H, D]`` it
    is the whole output of a table of leaf families.

    The weights ``attn`` are recomputed per chunk of families in both
    directions instead of being stored: at large ``N`` every full-size
    temporary costs more in page faults than its arithmetic. Staged per head
    and chunk like :class:`_HeadwiseScores`."""
    @staticmethod
    def forward(ctx, s: Tensor, shift: Tensor, keep: Optional[Tensor],
                v: Tensor, r: Optional[Tensor], u: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(s, shift, keep, v, r)
        # u enters linearly: a replay needs its shape only.
        ctx.u_like = None if u is None else (u.shape, u.dtype, u.device)
        out = v.new_empty(v.shape)
        chunks = _chunks(v)
        bv, bo = _head_buffers(v, chunks, 2)
        ba = _weight_buffer(s, chunks)
        for lo, hi in chunks:
            finite = None if v.device.type in _HEADWISE_CHECKS else \
                _finite_heads(v[lo:hi])
            for i in range(v.size(2)):
                cv = _head(v[lo:hi], i, bv)
                a = _weights(s, shift, keep, i, lo, hi, ba)
                buf = bo[:hi - lo]
                torch.bmm(a, cv, out=buf)
                if not (math.isfinite(float(cv.sum())) if finite is None
                        else finite[i]):
                    _nonfinite_product_(buf, a, cv)
                if r is not None:
                    buf.addcmul_(r[lo:hi, :, i].unsqueeze(-1), cv)
                if u is not None:
                    buf.add_(u[lo:hi, i].unsqueeze(1))
                out[lo:hi, :, i] = buf
        return out

    @staticmethod
    def plain(s: Tensor, shift: Tensor, keep: Optional[Tensor], v: Tensor,
              r: Optional[Tensor], u: Optional[Tensor]) -> Tensor:
        r"""The forward in differentiable torch operations."""
        attn = torch.exp(s - shift)
        out = torch.einsum('hfab,fbhd->fahd',
                           attn if keep is None else attn * keep, v)
        if r is not None:
            out = out + r.unsqueeze(-1) * v
        return out if u is None else out + u.unsqueeze(1)

    @staticmethod
    @_serial
    def backward(ctx, grad: Tensor):
        s, shift, keep, v, r = ctx.saved_tensors
        if torch.is_grad_enabled():
            return replayed_backward(
                _HeadwiseContext.plain,
                (s, shift, keep, v, r, _zeros_like(ctx.u_like)),
                ctx.needs_input_grad, (grad, ))
        need_s, need_shift, _, need_v, need_r, need_u = ctx.needs_input_grad
        gs = torch.empty_like(s) if need_s or need_shift else None
        gshift = shift.new_empty(shift.shape) if need_shift else None
        gv = torch.empty_like(v) if need_v else None
        gr = r.new_empty(r.shape) if need_r else None
        gu = grad.sum(dim=1) if need_u else None
        chunks = _chunks(v)
        bv, bg, bo = _head_buffers(v, chunks, 3)
        ba = _weight_buffer(s, chunks)
        for lo, hi in chunks:
            for i in range(v.size(2)):
                cg = _head(grad[lo:hi], i, bg)
                cv = _head(v[lo:hi], i, bv)
                a = _weights(s, shift, keep, i, lo, hi, ba)
                if gs is not None:  # d attn / d s = attn, d / d shift = -attn
                    g_s = gs[i, lo:hi]
                    torch.bmm(cg, cv.transpose(1, 2), out=g_s).mul_(a)
                    if gshift is not None:
                        torch.sum(g_s, dim=-1, keepdim=True,
                                  out=gshift[i, lo:hi]).neg_()
                if gr is not None:
                    gr[lo:hi, :, i] = torch.linalg.vecdot(cg, cv)
                if gv is not None:
                    buf = bo[:hi - lo]
                    torch.bmm(a.transpose(1, 2), cg, out=buf)
                    if r is not None:
                        buf.addcmul_(r[lo:hi, :, i].unsqueeze(-1), cg)
                    gv[lo:hi, :, i] = buf
        return (gs if need_s else None), gshift, None, gv, gr, gu


# Devices where _HeadwiseContext checks each head's copy for non-finite
# values while it is in cache, rather than all heads of a chunk at once (on
# an accelerator one check, one synchronisation, instead of one per head).
_HEADWISE_CHECKS = ('cpu', )


def _finite_heads(v: Tensor) -> List[bool]:
    r"""Per head of a chunk ``[C, W, H, D]``, whether its values sum to a
    finite number (they do unless one is infinite or NaN, or the sum
    overflows: then the exact path runs for nothing)."""
    return torch.isfinite(v.sum(dim=(0, 1, 3))).tolist()


def _nonfinite_product_(out: Tensor, a: Tensor, v: Tensor) -> Tensor:
    r"""``out = a @ v`` (batched) as IEEE arithmetic gives the sum over the
    terms that exist: a zero of ``a`` (the diagonal, padding, pairs off the
    family graph) is no term at all, so an infinite or NaN value of ``v``
    reaches the rows that weigh it and no other (``0 * inf`` would make the
    skipping rows NaN)."""
    finite = torch.isfinite(v)
    torch.bmm(a, torch.where(finite, v, 0.0), out=out)
    used = (a > 0).to(v.dtype)
    pos, neg, nan = (torch.bmm(used, m.to(v.dtype)) > 0 for m in (
        v == math.inf, v == -math.inf, torch.isnan(v)))
    return out.masked_fill_(pos, math.inf).masked_fill_(
        neg, -math.inf).masked_fill_(nan | (pos & neg), math.nan)


def _weight_buffer(s: Tensor, chunks: List[Tuple[int, int]]) -> Tensor:
    size = max(hi - lo for lo, hi in chunks) if chunks else 0
    return s.new_empty((size, ) + s.shape[2:])


def _weights(s: Tensor, shift: Tensor, keep: Optional[Tensor], i: int,
             lo: int, hi: int, buf: Tensor) -> Tensor:
    r"""``exp(s - shift) (* keep)`` of head ``i`` and families ``lo:hi``."""
    a = torch.sub(s[i, lo:hi], shift[i, lo:hi], out=buf[:hi - lo]).exp_()
    return a if keep is None else a.mul_(keep[i, lo:hi])


Levels = List[Tuple[Tensor, Tensor]]


class _Paths(NamedTuple):
    r"""The paths of the cluster forest: its depth levels ``(child,
    parent)``; for deep trees, its pointer-doubling ancestor tables
    ``(node, ancestor)`` (:attr:`HierarchyLayout.cluster_jumps`), which
    replace the levels in the linear passes; and the clusters by depth,
    roots first, with the positions of every level's parents in that
    order."""
    levels: Levels
    jumps: Optional[Levels]
    order: Tensor
    order_parents: List[Tensor]


def _paths(layout: HierarchyLayout) -> _Paths:
    return _Paths(layout.cluster_levels, layout.cluster_jumps,
                  layout.cluster_order, layout.cluster_order_parents)


# The cost of a step (a level or a jump: a few small operations, about
# 40 us on a CPU) in gathered and added row elements (about 2.5 ns each);
# accelerators launch a kernel per operation, at a similar ratio.
_STEP_ELEMENTS = 16000


def _jumps_pay(paths: _Paths, row_size: int) -> bool:
    r"""Whether pointer doubling beats the levels for rows of
    :obj:`row_size` elements: it takes ``log2(depth)`` steps instead of
    ``depth``, but moves every row up to ``log2(depth)`` times instead of
    once, which only a deep tree, or small rows, repay."""
    jumps = paths.jumps
    if not jumps:
        return False
    extra_rows = sum(node.numel() for node, _ in jumps[1:])
    return (len(paths.levels) - len(jumps)) * _STEP_ELEMENTS > \
        extra_rows * row_size


def _gather_add_(x: Tensor, dst: Tensor, src: Tensor,
                 backwards: bool = False):
    r"""``x[dst] += x[src]`` (rows; ``dst`` may repeat), through cache-sized
    staging copies on the CPU: a full-level gather would be a fresh,
    page-faulted block at large ``N``. Chunks run in order (in reverse with
    :obj:`backwards`); no chunk may read a row an earlier one wrote (``dst``
    and ``src`` disjoint, or pointer-doubling rows in depth order)."""
    per_row = math.prod(x.shape[1:])
    chunks = _family_ranges(src.numel(), per_row, x.device)
    for lo, hi in (reversed(chunks) if backwards else chunks):
        x.index_add_(0, dst[lo:hi], x.index_select(0, src[lo:hi]))


def _sum_up_(x: Tensor, paths: _Paths) -> Tensor:
    r"""In place, bottom-up: every cluster row becomes the sum of its
    subtree's rows. With jumps, the transpose of :func:`_sum_down_`'s
    doubling: step ``j`` (last first) adds every row into its
    :math:`2^j`-th ancestor."""
    if _jumps_pay(paths, math.prod(x.shape[1:])):
        for node, up in reversed(paths.jumps):
            _gather_add_(x, up, node)  # shallowest nodes first
        return x
    for child, par in reversed(paths.levels):
        _gather_add_(x, par, child)
    return x


def _sum_down_(x: Tensor, paths: _Paths) -> Tensor:
    r"""In place, top-down: every cluster row becomes the sum of the rows on
    its path from the root (itself included); the adjoint of
    :func:`_sum_up_`. With jumps, after step ``j`` a row holds the sum over
    the :math:`2^{j+1}` nodes up from it: ``x(v) += x(anc_j(v))``."""
    if _jumps_pay(paths, math.prod(x.shape[1:])):
        for node, up in paths.jumps:
            _gather_add_(x, node, up, backwards=True)  # deepest first
        return x
    for child, par in paths.levels:
        _gather_add_(x, child, par)
    return x


def _sum_up(x: Tensor, paths: _Paths) -> Tensor:
    r""":func:`_sum_up_` out of place, in differentiable operations."""
    if _jumps_pay(paths, math.prod(x.shape[1:])):
        for node, up in reversed(paths.jumps):
            x = x.index_add(0, up, x[node])
        return x
    for child, par in reversed(paths.levels):
        x = x.index_add(0, par, x[child])
    return x


def _sum_down(x: Tensor, paths: _Paths) -> Tensor:
    r""":func:`_sum_down_` out of place, in differentiable operations."""
    if _jumps_pay(paths, math.prod(x.shape[1:])):
        for node, up in paths.jumps:
            x = x.index_add(0, node, x[up])
        return x
    for child, par in paths.levels:
        x = x.index_add(0, child, x[par])
    return x


class _SubtreeMean(torch.autograd.Function):
    r"""Means over the leaves of every cluster, read straight into the
    tables that use them: ``mean = A (S src) / |c|`` over ``[M, *S]``, with
    ``S`` the scatter of ``src`` ``[R, *S]`` into its clusters ``rows`` and
    ``A`` the subtree sum over the cluster forest's ``paths``; returns
    ``mean[r]`` for every ``r`` of ``reads`` (views for spans).

    The backward is the adjoint (scatter, divide, path sum, gather) in one
    ``[M, *S]`` buffer. Generic autograd of the level-by-level scatters
    would allocate a zero-filled ``[M, *S]`` gradient per level and read,
    and at large ``N`` every one is a fresh, page-faulted block."""
    @staticmethod
    def forward(ctx, src: Tensor, rows: Rows, paths: _Paths, size: Tensor,
                reads: List[Rows]):
        ctx.set_materialize_grads(False)
        out = src.new_zeros((size.numel(), ) + src.shape[1:])
        _add_rows_(out, rows, src)
        size = size.view((-1, ) + (1, ) * (src.dim() - 1))
        ctx.save_for_backward(size)
        ctx.rows, ctx.paths, ctx.reads = rows, paths, reads
        ctx.src_like = (src.shape, src.dtype, src.device)
        _sum_up_(out, paths).div_(size)
        return tuple(_rows(out, *r) for r in reads)

    @staticmethod
    def plain(src: Tensor, rows: Rows, paths: _Paths, size: Tensor,
              reads: List[Rows]) -> Tuple[Tensor, ...]:
        r"""The forward in differentiable torch operations."""
        out = _sum_up(_index_add(
            src.new_zeros((size.numel(), ) + src.shape[1:]), rows, src),
            paths)
        out = out / size.view((-1, ) + (1, ) * (src.dim() - 1))
        return tuple(_rows(out, *r) for r in reads)

    @staticmethod
    @_serial
    def backward(ctx, *grads: Optional[Tensor]):
        size, = ctx.saved_tensors
        if torch.is_grad_enabled():  # linear: replayed at a zero source
            return replayed_backward(
                _SubtreeMean.plain, (_zeros_like(ctx.src_like), ctx.rows,
                                     ctx.paths, size.view(-1), ctx.reads),
                ctx.needs_input_grad, grads)
        g = _gather_adjoint(grads, ctx.reads, size.size(0))
        if g is None:
            return None, None, None, None, None
        _sum_down_(g.div_(size), ctx.paths)
        return _rows(g, *ctx.rows), None, None, None, None


class _PathSum(torch.autograd.Function):
    r"""Contexts summed down the tree: ``u = A^T (sum_w S_w x_w)`` over
    ``[M, *S]``, with ``x_w`` scattered into the cluster rows ``writes[w]``
    and ``A^T`` the path sum from the roots; returns ``u[r]`` for every
    ``r`` of ``reads``. The backward is the adjoint subtree sum, in one
    buffer like :class:`_SubtreeMean`."""
    @staticmethod
    def forward(ctx, paths: _Paths, num_clusters: int, writes: List[Rows],
                reads: List[Rows], *xs: Tensor):
        ctx.set_materialize_grads(False)
        out = xs[0].new_zeros((num_clusters, ) + xs[0].shape[1:])
        for rows, x in zip(writes, xs):
            _add_rows_(out, rows, x)
        ctx.paths, ctx.writes, ctx.reads = paths, writes, reads
        ctx.num_clusters = num_clusters
        ctx.xs_like = [(x.shape, x.dtype, x.device) for x in xs]
        _sum_down_(out, paths)
        return tuple(_rows(out, *r) for r in reads)

    @staticmethod
    def plain(paths: _Paths, num_clusters: int, writes: List[Rows],
              reads: List[Rows], *xs: Tensor) -> Tuple[Tensor, ...]:
        r"""The forward in differentiable torch operations."""
        out = xs[0].new_zeros((num_clusters, ) + xs[0].shape[1:])
        for rows, x in zip(writes, xs):
            out = _index_add(out, rows, x)
        out = _sum_down(out, paths)
        return tuple(_rows(out, *r) for r in reads)

    @staticmethod
    @_serial
    def backward(ctx, *grads: Optional[Tensor]):
        if torch.is_grad_enabled():  # linear: replayed at zero inputs
            return replayed_backward(
                _PathSum.plain, (ctx.paths, ctx.num_clusters, ctx.writes,
                                 ctx.reads, *map(_zeros_like, ctx.xs_like)),
                ctx.needs_input_grad, grads)
        none = (None, ) * 4
        g = _gather_adjoint(grads, ctx.reads, ctx.num_clusters)
        if g is None:
            return none + (None, ) * len(ctx.writes)
        _sum_up_(g, ctx.paths)
        return none + tuple(_rows(g, *w) for w in ctx.writes)


def _index_add(out: Tensor, rows: Rows, x: Tensor) -> Tensor:
    r"""``out`` with ``x`` added into its rows, out of place (for the
    differentiable replays)."""
    index, span = rows
    if span is not None:
        index = torch.arange(span[0], span[1], device=out.device)
    return out.index_add(0, index, x)


def _zeros_like(like: Optional[tuple]) -> Optional[Tensor]:
    r"""Zeros of a recorded ``(shape, dtype, device)``."""
    return None if like is None else torch.zeros(like[0], dtype=like[1],
                                                 device=like[2])


def _gather_adjoint(grads: Sequence[Optional[Tensor]], reads: List[Rows],
                    num_rows: int) -> Optional[Tensor]:
    r"""The adjoint of the reads ``u[r]``: their gradients added into one
    zero ``[M, *S]`` buffer (:obj:`None` if none has a gradient)."""
    g = None
    for rows, grad in zip(reads, grads):
        if grad is None:
            continue
        if g is None:
            g = grad.new_zeros((num_rows, ) + grad.shape[1:])
        _add_rows_(g, rows, grad)
    return g


class _LogAddExp(torch.autograd.Function):
    r""":func:`torch.logaddexp` (one temporary-free kernel) with a backward
    in differentiable operations, ``exp(a - out)`` and ``exp(b - out)``:
    every derivative stays finite where one argument is the finite "minus
    infinity" of a row without siblings (the second derivative of
    :func:`torch.logaddexp` is ``inf / inf`` there)."""
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        out = torch.logaddexp(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    @_serial
    def backward(ctx, grad: Tensor):
        a, b, out = ctx.saved_tensors
        return grad * torch.exp(a - out), grad * torch.exp(b - out)


class _FamilyScale(torch.autograd.Function):
    r"""``x * r`` for a family table ``x`` ``[F, W, H, D]`` and a factor per
    family and head ``r`` ``[F, H]``. The gradient of ``r``, ``<grad, x>``
    per family and head, is reduced row by row (one batched product)
    instead of through autograd's full-size product ``grad * x``, which at
    a wide family is the largest temporary of the backward."""
    @staticmethod
    def forward(ctx, x: Tensor, r: Tensor) -> Tensor:
        ctx.save_for_backward(x, r)
        return _FamilyScale.plain(x, r)

    @staticmethod
    def plain(x: Tensor, r: Tensor) -> Tensor:
        r"""The forward in differentiable torch operations."""
        return x * r[:, None, :, None]

    @staticmethod
    def backward(ctx, grad: Tensor):  # large kernels: all threads
        x, r = ctx.saved_tensors
        if torch.is_grad_enabled():
            return replayed_backward(_FamilyScale.plain, (x, r),
                                     ctx.needs_input_grad, (grad, ))
        grad_x = grad_r = None
        if ctx.needs_input_grad[0]:
            grad_x = _FamilyScale.plain(grad, r)
        if ctx.needs_input_grad[1]:
            grad_r = _row_dot(grad, x).sum(dim=1)
        return grad_x, grad_r


def _cache_sized(x: Tensor) -> bool:
    r"""Whether :obj:`x` is no larger than a chunk: a temporary like it is
    no fresh, page-faulted block, so plain full-size kernels are the
    faster ones."""
    return x.numel() <= _CPU_CHUNK_ELEMENTS


def _row_dot(x: Tensor, y: Tensor) -> Tensor:
    r"""``<x, y>`` over the last dimension, ``[*S, D] -> [*S]``, as one
    batched product: :func:`torch.linalg.vecdot` forms the full-size
    product ``x * y`` first (at large ``N`` a fresh, page-faulted block).
    At cache size (:func:`_cache_sized`) vecdot: the batched product of
    many one-row matrices is the slower kernel there."""
    if _cache_sized(x):
        return torch.linalg.vecdot(x, y)
    d = x.size(-1)
    return torch.bmm(x.reshape(-1, 1, d), y.reshape(-1, d, 1)).view(
        x.shape[:-1])


class _RowDot(torch.autograd.Function):
    r""":func:`_row_dot` with the backward of the product: ``grad * y``
    and ``grad * x``."""
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(x, y)
        return _row_dot(x, y)

    @staticmethod
    def backward(ctx, grad: Tensor):  # large kernels: all threads
        x, y = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        return (grad * y if ctx.needs_input_grad[0] else None,
                grad * x if ctx.needs_input_grad[1] else None)


class _SelfTerm(torch.autograd.Function):
    r"""``u + r * v`` for ``u, v`` ``[N, H, D]`` and ``r`` ``[N, H, 1]``,
    into :obj:`u` itself when :obj:`in_place`. The gradient of ``r`` is
    one batched product (:func:`_row_dot`), where autograd's
    :func:`torch.addcmul` forms two full-size temporaries (``grad * v``
    and a copy of it scaled by 1)."""
    @staticmethod
    def forward(ctx, u: Tensor, r: Tensor, v: Tensor,
                in_place: bool) -> Tensor:
        ctx.save_for_backward(r, v)
        if not in_place:
            return torch.addcmul(u, r, v)
        ctx.mark_dirty(u)
        return u.addcmul_(r, v)

    @staticmethod
    def backward(ctx, grad: Tensor):  # large kernels: all threads
        r, v = ctx.saved_tensors
        need_u, need_r, need_v, _ = ctx.needs_input_grad
        grad_r = _row_dot(grad, v).unsqueeze(-1) if need_r else None
        return (grad if need_u else None, grad_r,
                grad * r if need_v else None, None)


class _AddParentRows(torch.autograd.Function):
    r"""``out += table[index]`` in place for ``out`` ``[N, *S]``, a table
    ``[M, *S]`` and ``index`` ``[N]``, gathered a cache-sized chunk of rows
    at a time into one reused buffer: a gather of all rows at once is a
    fresh ``[N, *S]`` block (at large ``N``, page-faulted). The backward
    passes the gradient on and adds it into the table's rows, a chunk at a
    time too: a gradient that is not contiguous (``out.sum()``'s is a
    broadcast) is copied a chunk at a time, not into one more block."""
    @staticmethod
    def forward(ctx, out: Tensor, table: Tensor, index: Tensor) -> Tensor:
        ctx.mark_dirty(out)
        ctx.save_for_backward(index)
        ctx.num_rows = table.size(0)
        ranges = _family_ranges(out.size(0), out[0].numel(), out.device)
        buf = table.new_empty((max(hi - lo for lo, hi in ranges), ) +
                              table.shape[1:]) if ranges else None
        for lo, hi in ranges:
            rows = torch.index_select(table, 0, index[lo:hi],
                                      out=buf[:hi - lo])
            out[lo:hi] += rows
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # differentiable: linear in grad
        index, = ctx.saved_tensors
        grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = grad.new_zeros((ctx.num_rows, ) + grad.shape[1:])
            for lo, hi in _family_ranges(grad.size(0), grad[0].numel(),
                                         grad.device):
                _add_rows_(grad_table, (index[lo:hi], None), grad[lo:hi])
        return grad, grad_table, None


def _dropout_keep(shape, p: float, like: Tensor) -> Tensor:
    return torch.empty(shape, device=like.device).bernoulli_(1.0 - p).bool()


def _dropout_scale(s: Tensor, p: float) -> Optional[Tensor]:
    r"""Inverted dropout factors like the logits :obj:`s` (``0`` or
    ``1 / (1 - p)``); :obj:`None` without dropout."""
    if p == 0.0:
        return None
    return _dropout_keep(s.shape, p, s).to(s.dtype) / (1.0 - p)


def hierarchical_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    hierarchy: Hierarchy,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    training: bool = False,
    return_weights: bool = False,
    pair_bias: Optional[Tensor] = None,
) -> Union[Tensor, Tuple[Tensor, FamilyWeights]]:
    r"""Hierarchical self-attention over the leaves of a :class:`Hierarchy`,
    computed exactly by the dynamic program of HSA.

    HSA is the attention matrix :math:`Q` closest in KL divergence to softmax
    attention :math:`P` among those in which a sub-signal attends to each
    sibling sub-signal as a whole. With :math:`\bar q_n, \bar k_n, \bar v_n`
    the means over the :math:`|n|` leaves under node :math:`n`:

    .. math::
        l_{ab} &= \mathrm{scale} \cdot \langle \bar q_a, \bar k_b \rangle
            + \log |b| \quad (b \neq a), \qquad l_{aa} = g_a, \\
        g_i &= \mathrm{scale} \cdot \langle q_i, k_i \rangle, \qquad
        g_F = \sum_{a \in C(F)} \tfrac{|a|}{|F|}
            \operatorname{logsumexp}_b l_{ab}, \\
        \pi_F(a \to b) &= \operatorname{softmax}_b(l_{ab}), \qquad
        r_a = r_F \, \pi_F(a \to a), \quad r_{\mathrm{root}} = 1, \\
        y_i &= r_i v_i + \sum_{F \text{ above } i} r_F
            \sum_{b \neq a_F(i)} \pi_F(a_F(i) \to b) \, \bar v_b ,

    with :math:`a_F(i)` the child of :math:`F` above leaf :math:`i`. The
    upward pass (means, :math:`g`) and the downward pass (:math:`r`,
    context) are scatter reductions level by level over the tree. On trees
    deeper than 32 levels, the linear ones (the means, :math:`r`, the
    contexts, and the backward of :math:`g`) take :math:`\log_2
    \mathrm{depth}` pointer-doubling steps instead wherever the steps saved
    outweigh the rows moved more often; only the forward of :math:`g`
    keeps one small step per level. The attention inside families is one
    batched product per family width. All of it runs in log space, and
    nothing larger than a family's table is built (:math:`N \times N` only
    for a flat tree that needs its table: a pair bias, dropout or returned
    weights): time and memory are :math:`O(T H D + P H D)` with :math:`P =
    \sum_F |C(F)|^2` sibling pairs (families are padded to a power-of-two width
    up to 64 children, at most quadrupling their pairs, and by at most an
    eighth above, at most 1.27x). A hierarchy whose family tables cannot fit
    in the device's memory is refused with a :class:`ValueError` naming the
    widest family before anything is allocated.

    Two exact extensions (docs/math.md, section 6) keep :math:`Q` the KL
    minimiser of its family. A *family graph*
    (:attr:`Hierarchy.family_edge_index`) restricts the softmax of
    :math:`\pi_F(a \to \cdot)` to the listed siblings (and :math:`a`
    itself): :math:`Q = 0` across a non-edge. A
    *pair bias* :math:`\beta_{ab}`, constant on the block of :math:`a` and
    :math:`b` (relative position within the family, level, edge type), is
    added to :math:`l_{ab}` for :math:`b \neq a`.

    When all leaves lie in order in families of one width (as builders of
    sequences, documents and balanced trees produce them) the leaf level
    runs on views of :obj:`q`, :obj:`k`, :obj:`v` without any gather, in two
    fused steps whose backward writes each input gradient once.

    Args:
        q (Tensor): queries ``[N, H, D]`` (or ``[N, D]`` for one head).
        k (Tensor): keys, same shape as :obj:`q`.
        v (Tensor): values ``[N, H, D_v]`` (or ``[N, D_v]``).
        hierarchy (Hierarchy): the forest over the ``N`` leaves.
        scale (float, optional): score scale, a positive finite number;
            :math:`1/\sqrt{D}` if :obj:`None`. A tensor is refused: to learn
            a temperature, multiply :obj:`q` by it.
        dropout_p (float): dropout on the family weights :math:`\pi` (each
            kept weight is divided by ``1 - dropout_p``) when
            :obj:`training`.
        training (bool): apply dropout.
        return_weights (bool): also return :class:`FamilyWeights`.
        pair_bias (Tensor, optional): ``[P, H]`` (or ``[P]`` for one head)
            :math:`\beta_{ab}`, one row per pair of
            :attr:`Hierarchy.sibling_pairs`. Rows of self pairs ``a == b``
            are not used: :math:`l_{aa} = g_a` is the log-partition of the
            subtree, not a block. ``-inf`` forbids a pair (as a missing
            family-graph edge does); NaN and ``+inf`` are refused.

    Returns:
        Tensor ``[N, H, D_v]`` (or ``[N, D_v]``) in the dtype of :obj:`v`;
        with :obj:`return_weights`, also the family weights. Computation is
        in float32 (float64 for float64 inputs), also under
        :func:`torch.autocast`.
    """
    check_attention_inputs(q, k, v, hierarchy)
    dropout_p = check_float(dropout_p, 'dropout_p', 0.0, 1.0, high_open=True)
    check_bool(training, 'training')
    check_bool(return_weights, 'return_weights')
    if scale is not None:  # a learnable temperature belongs in q
        scale = check_float(scale, 'scale', 0.0, low_open=True)
    single_head = q.dim() == 2
    if pair_bias is not None:
        pair_bias = check_pair_bias(pair_bias, hierarchy, q.shape[1:-1])
    if single_head:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    out_dtype = v.dtype
    dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) \
        else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    layout = hierarchy.layout
    drop = dropout_p if training else 0.0
    streamed = _streamed(layout, pair_bias is None and drop == 0.0
                         and not return_weights)
    _ensure_fits(hierarchy, layout, q.size(1), dtype,
                 pair_bias is not None or return_weights,
                 torch.is_grad_enabled() and any(
                     t is not None and t.requires_grad
                     for t in (q, k, v, pair_bias)), streamed)

    threads = torch.get_num_threads()
    with _cpu_threads(1, q.device), autocast_off(q.device):  # see _serial
        tree = _prepare(q, k, v, layout, scale, streamed, threads,
                        pair_bias is not None)
        means = _upward_means(tree)
        scores = _family_scores(
            tree, means,
            _bucket_biases(pair_bias, hierarchy, layout.buckets, dtype),
            None if pair_bias is None else pair_bias.to(dtype))
        parts = _log_partitions(tree, scores)
        passes = _Passes(tree, means, scores, parts,
                         _downward_masses(tree, parts, drop), drop)
        out = _downward_contexts(passes).to(out_dtype)

    if single_head:
        out = out.squeeze(1)
    if not return_weights:
        return out
    weight = _all_family_weights(passes)
    if single_head:
        weight = weight.squeeze(1)
    return out, FamilyWeights(hierarchy.sibling_pairs, weight)


# The passes of the dynamic program ##########################################


class _Tree(NamedTuple):
    r"""The inputs of the passes: ``q, k, v`` ``[N, H, D]`` in the compute
    dtype, the score scale, the finite "minus infinity" ``neg``, the
    layout, the leaf counts of the clusters ``[M]``, the fused leaf path
    when all leaves lie in order in families of one width (:obj:`None`
    otherwise), the buckets that run as softmax attention, the intra-op
    threads of the caller (the passes run on one) and the sparse kernels'
    pattern of the pair list (:obj:`None` without one)."""
    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    neg: float
    layout: HierarchyLayout
    cluster_size: Tensor
    fused: Optional['_FusedLeaves']
    streamed: FrozenSet[int]
    threads: int
    pattern: Optional[PairPattern]


class _FusedLeaves(NamedTuple):
    r"""The leaf families as views of ``q, k, v`` (the bucket
    :obj:`blocks`, ``v`` as its ``[F, W, H, D]`` table), their scores
    ``[H, F, W, W]``, the diagonal ``s_ii`` ``[F, W, H]`` and the family
    sums of ``q``, ``k``, ``v`` ``[F, H, D]``: computed once, in one step
    whose backward writes each input gradient once. Without a pair bias
    or a family graph that step also masks the diagonal and gives the
    off-diagonal row logsumexp ``[H, F, W]`` (else :obj:`None`)."""
    blocks: FamilyBucket
    v_table: Tensor
    scores: Tensor
    diag: Tensor
    sums: Tuple[Tensor, Tensor, Tensor]
    row_lse: Optional[Tensor]


class _Scores(NamedTuple):
    r"""Per bucket the off-diagonal logits ``l_ab`` ``[H, F, W, W]`` (masked
    entries hold ``neg``; :obj:`None` for single children), their row
    logsumexp per leaf ``[N, H]`` and per cluster ``[M, H]``, and the leaf
    diagonal ``g_i = s_ii`` ``[N, H]``; the logits of the sparse
    families' pairs ``[P', H]`` (:obj:`None` without any); per streamed
    bucket, its softmax attention ``[F, W, H, D_v]``."""
    tables: List[Optional[Tensor]]
    off_lse_leaf: Tensor
    off_lse_clus: Tensor
    g_leaf: Tensor
    pairs: Optional[Tensor]
    streamed: Dict[int, Tensor]


class _LogPartitions(NamedTuple):
    r"""``g`` (the per-leaf log-partition of every subtree) and the row
    logsumexp over all siblings, ``l_aa = g_a`` included, per leaf
    ``[N, H]`` and per cluster ``[M, H]``."""
    g_leaf: Tensor
    g_clus: Tensor
    lse_leaf: Tensor
    lse_clus: Tensor


class _Masses(NamedTuple):
    r"""``log r`` per leaf ``[N, H]`` and per cluster ``[M, H]``."""
    log_r_leaf: Tensor
    log_r_clus: Tensor


class _Passes(NamedTuple):
    r"""Everything the downward contexts and the family weights read."""
    tree: _Tree
    means: Dict[int, Tuple[Tensor, Tensor, Tensor]]
    scores: _Scores
    parts: _LogPartitions
    masses: _Masses
    dropout_p: float


def _prepare(q: Tensor, k: Tensor, v: Tensor, layout: HierarchyLayout,
             scale: Optional[float], streamed: FrozenSet[int],
             threads: int, biased: bool) -> _Tree:
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    # A finite "minus infinity": rows without off-diagonal entries stay
    # finite, so logsumexp and its gradient never see (-inf) - (-inf).
    neg = torch.finfo(q.dtype).min / 4
    blocks, fused = layout.leaf_blocks, None
    if blocks is not None and blocks.width > 1 and \
            not any(layout.buckets[i] is blocks for i in streamed):
        qv, kv, vv = (_to_slots(blocks, x) for x in (q, k, v))
        # Only the diagonal masked, nothing added to the scores (no bias):
        # their row logsumexp in the same step.
        plain = _only_diagonal_invalid(blocks) and not biased
        s, diag, q_sum, k_sum, *lse = _HeadwiseScores.apply(
            qv, kv, scale, neg if plain else None)
        fused = _FusedLeaves(blocks, vv, s, diag,
                             (q_sum, k_sum, vv.sum(dim=1)),
                             lse[0] if lse else None)
    size = layout.leaf_count[q.size(0):].to(q.dtype)
    return _Tree(q, k, v, scale, neg, layout, size, fused, streamed,
                 threads, pair_pattern(layout.sparse, q.size(1)))


def _upward_means(tree: _Tree) -> Dict[int, Tuple[Tensor, Tensor, Tensor]]:
    r"""Upward pass: the means of ``q``, ``k`` and ``v`` over every
    cluster's leaves, read straight into the tables of the buckets with
    internal children that attend (by bucket index)."""
    layout = tree.layout
    buckets = layout.buckets
    attending = [i for i, b in enumerate(buckets)
                 if b.kind != 'leaf' and b.width > 1 and not b.sparse]
    reads = [_cluster_rows(buckets[i]) for i in attending]
    if layout.sparse.cluster.numel() > 0:
        attending.append(_SPARSE)
        reads.append((layout.sparse.cluster, None))
    if not attending:
        return {}
    if tree.fused is not None:
        blocks = tree.fused.blocks
        sources = tree.fused.sums
        rows = (blocks.parent_cluster, blocks.parent_range)
    else:
        sources = tuple(_leaves_with_parent(layout, x)
                        for x in (tree.q, tree.k, tree.v))
        rows = (layout.leaf_parent_cluster, None)
    means = [_SubtreeMean.apply(src, rows, _paths(layout),
                                tree.cluster_size, reads) for src in sources]
    return {i: m for i, *m in zip(attending, *means)}


# The key of the sparse families among the buckets' means.
_SPARSE = -1


def _leaves_with_parent(layout: HierarchyLayout, x: Tensor) -> Tensor:
    r"""The rows of ``x`` ``[N, *S]`` of the leaves that have a parent:
    ``x`` itself when no leaf is a root."""
    rows = layout.leaves_with_parent
    return x if rows.numel() == x.size(0) else x[rows]


def _all_leaves_outside_leaf_families(layout: HierarchyLayout,
                                      num_leaves: int) -> bool:
    r"""Whether every leaf reads its parent's context ``U_F`` on its own
    (none is in a leaf family): the output then adds the clusters' whole
    table (:class:`_AddParentRows`), not a gathered copy."""
    return layout.leaves_outside_leaf_families.numel() == num_leaves


def _all_leaves_are_members(layout: HierarchyLayout, num_leaves: int
                            ) -> bool:
    r"""Whether the leaf members of the sparse families are all the leaves;
    members go by node id, so they are then the leaves in order."""
    return layout.sparse.leaf.numel() == num_leaves


def _members(tree: _Tree, leaf_x: Tensor, cluster_x: Optional[Tensor]
             ) -> Tensor:
    r"""A member table of the sparse families: leaf rows, then cluster
    rows (``[K, H, D]`` as they are: the rows of the pair kernels)."""
    sparse = tree.layout.sparse
    if sparse.leaf.numel() == 0 and cluster_x is not None:
        # Not an empty gather of leaf_x: its backward would fill a whole
        # [N, *S] gradient with zeros.
        return cluster_x
    if not _all_leaves_are_members(tree.layout, leaf_x.size(0)):
        leaf_x = leaf_x.index_select(0, sparse.leaf)
    return leaf_x if cluster_x is None else torch.cat([leaf_x, cluster_x])


def _split_members(x: Tensor, num_leaf: int) -> Tuple[Tensor, Tensor]:
    r"""The leaf rows and the cluster rows of a member table, as views
    whose backward is one ``cat`` (two slices would each fill a whole table
    of zeros for its gradient, and then add them)."""
    return x.split([num_leaf, x.size(0) - num_leaf])


def _sparse_scores(tree: _Tree, means: Dict[int, Tuple[Tensor, ...]],
                   bias: Optional[Tensor], off_lse_leaf: Tensor,
                   off_lse_clus: Tensor) -> Optional[Tensor]:
    r"""The logits of the sparse families' pairs; their logsumexp per
    member is written into the off-diagonal rows."""
    sparse = tree.layout.sparse
    if sparse.num_pairs == 0:
        return None
    qc, kc = means[_SPARSE][:2] if _SPARSE in means else (None, None)
    log_size = torch.cat([tree.q.new_zeros(sparse.leaf.numel()),
                          tree.cluster_size[sparse.cluster].log()])
    q, k = _members(tree, tree.q, qc), _members(tree, tree.k, kc)
    bias = None if bias is None else bias[sparse.row]
    if fused_pairs_apply(q, k, log_size, *([] if bias is None else [bias]),
                         products=sparse.num_pairs * q.size(1) * q.size(2)):
        with _cpu_threads(tree.threads, tree.q.device):  # kernels' threads
            s, lse = fused_scores_lse(sparse, q, k, log_size, tree.scale,
                                      tree.neg, bias)
    else:
        with _cpu_threads(tree.threads, tree.q.device):  # large kernels
            s = sparse_scores(sparse, q, k, log_size, tree.scale, bias,
                              tree.pattern)
        counts = None if tree.pattern is None else \
            tree.pattern.pairs_of  # (sorted rows)
        lse = scatter_logsumexp(s, sparse.src, sparse.num_members, tree.neg,
                                counts)
    lse_leaf, lse_clus = _split_members(lse, sparse.leaf.numel())
    if lse_leaf.numel() > 0:  # (an empty write's backward clones the rows)
        off_lse_leaf[sparse.leaf] = lse_leaf
    off_lse_clus[sparse.cluster] = lse_clus
    return s


def _streamed_family(tree: _Tree, b: FamilyBucket,
                     off_lse_leaf: Tensor) -> Tensor:
    r"""Softmax attention ``[F, W, H, D_v]`` inside the wide leaf families
    of :obj:`b`, their padding masked; their row logsumexp, the self pair
    included, goes into :obj:`off_lse_leaf`, and the caller sets their
    ``g`` to ``neg``, so that ``logaddexp(lse, neg) = lse`` and their self
    mass is 0: the softmax already weighs ``v_a`` (docs/math.md, 6.6)."""
    with _cpu_threads(tree.threads, tree.q.device):  # one large kernel
        # Below roots the contexts scale out (out of place), which then
        # dies before the backward: recomputed there, not held.
        out, lse = softmax_attention(
            *(_to_slots(b, x) for x in (tree.q, tree.k, tree.v)),
            tree.scale, key_mask=None if b.kind == 'leaf' else b.mask,
            recompute_output=not b.parents_are_roots)
    _from_slots(b, lse, off_lse_leaf)
    return out


def _family_scores(tree: _Tree, means: Dict[int, Tuple[Tensor, ...]],
                   biases: List[Optional[Tensor]],
                   pair_bias: Optional[Tensor]) -> _Scores:
    r"""The off-diagonal logits of every family and their logsumexp per
    row."""
    q, neg = tree.q, tree.neg
    num_leaves, heads = q.size(0), q.size(1)
    off_lse_leaf = q.new_full((num_leaves, heads), neg)
    off_lse_clus = q.new_full((tree.cluster_size.numel(), heads), neg)
    log_sizes = (q.new_zeros(num_leaves), tree.cluster_size.log())
    tables: List[Optional[Tensor]] = []
    diagonals: List[Tuple[FamilyBucket, Tensor]] = []
    for i, (b, bias) in enumerate(zip(tree.layout.buckets, biases)):
        if b.width == 1 or b.sparse or i in tree.streamed:
            tables.append(None)  # no sibling, on the pair list, streamed
            continue
        s, diagonal, lse = _bucket_scores(tree, i, means, bias, log_sizes)
        tables.append(s)
        if b.kind != 'cluster':
            diagonals.append((b, diagonal))
        rows = _from_slots(b, lse.permute(1, 2, 0), off_lse_leaf)
        if rows is not None:
            _set_rows_(off_lse_clus, _cluster_rows(b), rows)
    pairs = _sparse_scores(tree, means, pair_bias, off_lse_leaf,
                           off_lse_clus)
    # After the pair scores: autograd then runs the diagonal's backward
    # first, and its fresh gradients of q and k take the member tables'
    # rows in place (the other way round, views first, each sum is a fresh
    # [N, H, D] tensor).
    g_leaf = _leaf_diagonal(tree, diagonals)
    streamed = _streamed_families(tree, off_lse_leaf, g_leaf)
    return _Scores(tables, off_lse_leaf, off_lse_clus, g_leaf, pairs,
                   streamed)


def _bucket_scores(tree: _Tree, i: int,
                   means: Dict[int, Tuple[Tensor, ...]],
                   bias: Optional[Tensor],
                   log_sizes: Tuple[Tensor, Tensor]
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``[H, F, W, W]`` the logits ``l_ab`` of bucket :obj:`i`'s table,
    ``neg`` where masked, from the leaf and cluster log sizes, the scores
    ``s_aa`` ``[F, W, H]`` of its slots and the logits' row logsumexp
    ``[H, F, W]``."""
    b = tree.layout.buckets[i]
    fused = tree.fused
    if fused is not None and b is fused.blocks:
        if fused.row_lse is not None:  # masked and reduced in one step
            return fused.scores, fused.diag, fused.row_lse
        s, diagonal = fused.scores, fused.diag
    else:
        qc, kc = means[i][:2] if i in means else (None, None)
        s, diagonal = _HeadwiseScores.apply(
            _to_slots(b, tree.q, qc), _to_slots(b, tree.k, kc),
            tree.scale)[:2]
    if b.kind != 'leaf':  # log|b| = 0 for leaves
        s = s + _node_slots(b, *log_sizes).unsqueeze(1)
    if bias is not None:
        s = s + bias
    # Not recorded by autograd (which would allocate a masked copy of the
    # full gradient): a masked logit's gradient is exactly 0 anyway, as
    # its weight exp(neg - lse) underflows to 0 in both directions.
    with torch.no_grad():
        s.masked_fill_(_invalid(b), tree.neg)
    return s, diagonal, _RowLogSumExp.apply(s)


def _leaf_diagonal(tree: _Tree,
                   diagonals: List[Tuple[FamilyBucket, Tensor]]) -> Tensor:
    r"""``g_i = s_ii`` ``[N, H]``, from the diagonals of the tables with
    leaves where those hold every leaf outside the streamed families (whose
    ``g`` :func:`_streamed_families` sets): one ``<q_i, k_i>`` over all
    leaves would cost two more ``[N, H, D]`` tensors at once in its
    backward. Else that product."""
    q = tree.q
    if tree.fused is not None:
        return tree.fused.diag.view(q.shape[:2])
    held = sum(_leaf_count(b) for b, _ in diagonals)
    if held + _streamed_leaves(tree) < q.size(0):
        # At cache size, autograd's product is the faster one (_row_dot).
        dot = torch.linalg.vecdot if _cache_sized(q) else _RowDot.apply
        return dot(q, tree.k) * tree.scale
    g = q.new_empty(q.shape[:2])
    for b, diagonal in diagonals:
        _from_slots(b, diagonal, g)
    return g


def _streamed_families(tree: _Tree, off_lse_leaf: Tensor,
                       g_leaf: Tensor) -> Dict[int, Tensor]:
    r"""Per streamed bucket its softmax attention (:func:`_streamed_family`),
    with ``g = neg`` on its leaves. The wide families last, the largest
    last of all, so that their backward runs first: the other readers of
    ``q, k, v`` then add into its gradients, instead of holding three
    ``[N, H, D]`` sums beside the kernel's own gradients."""
    buckets = tree.layout.buckets
    streamed = {i: _streamed_family(tree, buckets[i], off_lse_leaf)
                for i in sorted(tree.streamed, key=lambda i: (
                    buckets[i].num_families * buckets[i].width, i))}
    for i in streamed:  # their whole row logsumexp is in off_lse_leaf
        _from_slots(buckets[i],
                    g_leaf.new_full(streamed[i].shape[:3], tree.neg), g_leaf)
    return streamed


def _log_partitions(tree: _Tree, scores: _Scores) -> _LogPartitions:
    r"""``g`` bottom-up: ``g_F = sum_a |a| / |F| lse_a``, with the row
    logsumexp ``lse_a = logaddexp(off-diagonal lse_a, g_a)``."""
    layout, size = tree.layout, tree.cluster_size
    leaf_parent = layout.leaf_parent_cluster
    g_leaf = scores.g_leaf
    lse_leaf = _LogAddExp.apply(scores.off_lse_leaf, g_leaf)
    from_leaves = g_leaf.new_zeros(size.numel(), g_leaf.size(1)).index_add(
        0, leaf_parent, _leaves_with_parent(layout, lse_leaf) /
        size[leaf_parent].unsqueeze(-1))
    parent = layout.cluster_parent
    # |c| / |F| of every cluster c in its parent F (0 at roots)
    share = torch.where(parent >= 0, size / size[parent.clamp(min=0)], 0.0)
    off = scores.off_lse_clus
    g_clus = _ClusterLogPartition.apply(from_leaves, off, share, parent,
                                        _paths(layout))
    return _LogPartitions(g_leaf, g_clus, lse_leaf,
                          _LogAddExp.apply(off, g_clus))


class _ClusterLogPartition(torch.autograd.Function):
    r"""``g`` of the clusters ``[M, H]``, bottom-up over the levels:
    ``g_F = base_F + sum_c share_c logaddexp(off_c, g_c)`` over the cluster
    children ``c`` of ``F``, from the leaf children's part ``base`` and
    the clusters' off-diagonal row logsumexp ``off`` (``share_c = |c| /
    |F|``).

    The forward is sequential in the depth: a tight loop of three small
    operations per level, recording nothing, on the rows renumbered by
    depth so that a level is a slice. The backward is linear, an affine
    recursion from the roots down, ``adj_c = grad_c + share_c sigmoid(g_c -
    off_c) adj_F``: one step per level, or pointer doubling over the jumps
    of a deep tree."""
    @staticmethod
    def forward(ctx, base: Tensor, off: Tensor, share: Tensor,
                parent: Tensor, paths: _Paths) -> Tensor:
        g = base.clone()
        levels = paths.levels
        if levels:
            # rows by depth, roots first; position of every row's parent
            order, up = paths.order, paths.order_parents
            counts = [p.numel() for p in up]
            g_d, off_d = g[order], off[order]
            share_d = share[order].unsqueeze(-1)
            hi = order.numel()
            for count, p in zip(reversed(counts), reversed(up)):
                lo = hi - count
                lse = torch.logaddexp(off_d[lo:hi], g_d[lo:hi])
                g_d.index_add_(0, p, lse.mul_(share_d[lo:hi]))
                hi = lo
            g[order] = g_d
        ctx.save_for_backward(base, g, off, share, parent)
        ctx.paths = paths
        return g

    @staticmethod
    def plain(base: Tensor, off: Tensor, share: Tensor, parent: Tensor,
              paths: _Paths) -> Tensor:
        r"""The forward in differentiable torch operations."""
        g = base
        for child, par in reversed(paths.levels):
            lse = _LogAddExp.apply(off[child], g[child])
            g = g.index_add(0, par, lse * share[child].unsqueeze(-1))
        return g

    @staticmethod
    @_serial
    def backward(ctx, grad: Tensor):
        base, g, off, share, parent = ctx.saved_tensors
        if torch.is_grad_enabled():
            return replayed_backward(
                _ClusterLogPartition.plain, (base, off, share, parent,
                                             ctx.paths),
                ctx.needs_input_grad[:2] + (False, ) * 3, (grad, ))
        lse = torch.logaddexp(off, g)
        share = share.unsqueeze(-1)
        adj = _affine_down(grad, share * torch.exp(g - lse), ctx.paths)
        adj_off = None
        if ctx.needs_input_grad[1]:
            adj_off = adj[parent.clamp(min=0)].mul_(share).mul_(
                torch.exp(off - lse))  # share is 0 at roots
        return adj, adj_off, None, None, None


def _affine_down(b: Tensor, m: Tensor, paths: _Paths) -> Tensor:
    r"""``x_c = b_c + m_c x_{parent(c)}`` from the roots (``x = b``) down,
    ``[M, H]``: one step per level, or by pointer doubling, with ``x_v =
    b_j(v) + m_j(v) x_{anc_j(v)}`` after step ``j`` and ``(b, m)``
    composed with the ancestor's: ``(b + m b', m m')``."""
    x = b.clone()
    if not _jumps_pay(paths, math.prod(x.shape[1:])):
        for child, par in paths.levels:
            x.index_add_(0, child, m[child] * x[par])
        return x
    m = m.clone()
    last = len(paths.jumps) - 1
    for j, (node, up) in enumerate(paths.jumps):
        m_node = m[node]
        if j < last:
            m_up = m[up]  # read before x and m change
        x.index_add_(0, node, m_node * x[up])
        if j < last:
            m[node] = m_node.mul_(m_up)
    return x


def _downward_masses(tree: _Tree, parts: _LogPartitions,
                     dropout_p: float) -> _Masses:
    r"""Downward pass, masses: ``log r_a = log r_F + log pi_aa`` (roots keep
    mass 1), with dropout on the self weights ``pi_aa``: a sum over the
    path from the root."""
    log_self_leaf = parts.g_leaf - parts.lse_leaf
    log_self_clus = parts.g_clus - parts.lse_clus
    if dropout_p > 0.0:
        bonus = -math.log1p(-dropout_p)
        log_self_leaf, log_self_clus = (torch.where(
            _dropout_keep(x.shape, dropout_p, x), x + bonus, float('-inf'))
            for x in (log_self_leaf, log_self_clus))
    layout = tree.layout
    num_clusters = log_self_clus.size(0)
    log_self_clus = torch.where(layout.cluster_parent.unsqueeze(-1) >= 0,
                                log_self_clus, 0.0)  # the roots' r is 1
    everything = (None, (0, num_clusters))
    log_r_clus, = _PathSum.apply(_paths(layout), num_clusters, [everything],
                                 [everything], log_self_clus)
    log_r_leaf = log_self_leaf.index_add(
        0, layout.leaves_with_parent,
        log_r_clus[layout.leaf_parent_cluster])
    return _Masses(log_r_leaf, log_r_clus)


def _bucket_context(passes: _Passes, i: int,
                    parent_context: Optional[Tensor]) -> Tensor:
    r"""``u_a = r_F sum_{b != a} pi_F(a -> b) vbar_b (+ U_F)`` ``[F, W, H,
    D]`` of bucket :obj:`i`; for the fused leaf bucket the whole output
    ``y = A v + r v + U_F``."""
    tree, parts = passes.tree, passes.parts
    b, s = tree.layout.buckets[i], passes.scores.tables[i]
    lse = _node_slots(b, parts.lse_leaf, parts.lse_clus).permute(2, 0, 1)
    log_r = _rows(passes.masses.log_r_clus, b.parent_cluster,
                  b.parent_range).t()
    # attn = r_F pi_F(a -> b) = exp(l_ab - lse_a + log r_F), b != a.
    shift = lse.unsqueeze(-1) - log_r[:, :, None, None]  # [H, F, W, 1]
    keep = _dropout_scale(s, passes.dropout_p)
    if tree.fused is not None and b is tree.fused.blocks:
        r = torch.exp(passes.masses.log_r_leaf).view(
            b.num_families, b.width, -1)
        return _HeadwiseContext.apply(s, shift, keep, tree.fused.v_table, r,
                                      parent_context)
    vc = passes.means[i][2] if i in passes.means else None
    return _HeadwiseContext.apply(s, shift, keep, _to_slots(b, tree.v, vc),
                                  None, parent_context)


def _streamed_context(passes: _Passes, i: int,
                      parent_context: Optional[Tensor]) -> Tensor:
    r"""``y_a = r_F softmax-attention_a + U_F`` ``[F, W, H, D_v]`` of a
    streamed bucket."""
    layout = passes.tree.layout
    b = layout.buckets[i]
    out = passes.scores.streamed[i]
    # Under roots r_F = 1 with no gradient (their log r is the constant 0):
    # no full-size product in either direction.
    if not b.parents_are_roots:
        r = _rows(passes.masses.log_r_clus, b.parent_cluster,
                  b.parent_range).exp()
        if torch.is_grad_enabled() and (out.requires_grad or r.requires_grad):
            out = _FamilyScale.apply(out, r)
        else:  # the kernel's fresh output, which nothing else reads
            out = out.mul_(r[:, None, :, None])
        if parent_context is not None:  # into the fresh product: one
            return out.add_(parent_context.unsqueeze(1))  # [N, H, D] less
    return out if parent_context is None else \
        out + parent_context.unsqueeze(1)


def _family_context(passes: _Passes, i: int,
                    parent_context: Optional[Tensor]) -> Tensor:
    r"""The contexts ``[F, W, H, D_v]`` of bucket :obj:`i`, streamed or on
    its table."""
    run = _streamed_context if i in passes.tree.streamed else \
        _bucket_context
    return run(passes, i, parent_context)


def _sparse_contexts(passes: _Passes) -> Optional[Tensor]:
    r"""``[K, H, D_v]`` the contexts ``u_a`` of the sparse families'
    members."""
    tree, parts = passes.tree, passes.parts
    sparse, s = tree.layout.sparse, passes.scores.pairs
    if s is None:
        return None
    lse = _members(tree, parts.lse_leaf, parts.lse_clus[sparse.cluster])
    shift = lse - passes.masses.log_r_clus[sparse.parent_cluster]
    keep = _dropout_scale(s, passes.dropout_p)
    vc = passes.means[_SPARSE][2] if _SPARSE in passes.means else None
    v = _members(tree, tree.v, vc)
    fused = fused_pairs_apply(
        s, shift, v, *([] if keep is None else [keep]),
        products=sparse.num_pairs * v.size(1) * v.size(2)) and all_finite(v)
    with _cpu_threads(tree.threads, tree.q.device):  # large kernels
        if fused:
            return fused_contexts(sparse, s, shift, v, keep)
        return sparse_contexts(sparse, s, shift, v, keep, tree.pattern)


def _downward_contexts(passes: _Passes) -> Tensor:
    r"""Downward pass, contexts and output ``[N, H, D_v]``: the families
    with internal children first, so that the contexts ``U_F`` (summed
    down the path, ``U_a = U_F + u_a``) are known when the leaf families
    run; those add ``U_F`` to ``u_a`` right away."""
    tree = passes.tree
    layout, v = tree.layout, tree.v
    buckets = layout.buckets
    u_leaf, own, writes = _upper_contexts(passes)
    # U_F, read by the leaf families and by the leaves outside them (single
    # children, mixed families, root leaves): where those are every leaf,
    # the whole table, added in chunks by _leaf_output.
    num_clusters = tree.cluster_size.numel()
    leaf_families = [i for i, b in enumerate(buckets)
                     if b.kind == 'leaf' and b.width > 1 and not b.sparse]
    parent_contexts = [None] * len(leaf_families)
    rest_context = None
    if writes:
        reads = [(buckets[i].parent_cluster, buckets[i].parent_range)
                 for i in leaf_families]
        reads.append((None, (0, num_clusters))  # the whole table
                     if _all_leaves_outside_leaf_families(layout, v.size(0))
                     else (layout.outside_parent_cluster, None))
        *parent_contexts, rest_context = _PathSum.apply(
            _paths(layout), num_clusters, [w[0] for w in writes], reads,
            *(w[1] for w in writes))
    for i, parent_context in zip(leaf_families, parent_contexts):
        ctx = _family_context(passes, i, parent_context)
        if buckets[i] is layout.leaf_blocks:
            # All leaves, the whole output: fused (its context has r v) or
            # streamed (the softmax weighs v_a itself, r_a = 0).
            return ctx.view(v.shape)
        if u_leaf is None:
            u_leaf = v.new_zeros(v.shape)
        _from_slots(buckets[i], ctx, u_leaf)
    if u_leaf is None:
        u_leaf = v.new_zeros(v.shape)
    return _leaf_output(passes, u_leaf, own, rest_context)


def _leaf_output(passes: _Passes, u_leaf: Tensor, own: bool,
                 rest_context: Optional[Tensor]) -> Tensor:
    r"""The output ``[N, H, D_v]`` from the leaves' contexts ``u_a``
    (:obj:`own`: a buffer of this pass) with the self terms ``r_a v_a`` and
    the contexts ``U_F`` of the leaves outside leaf families: gathered
    ``[R, H, D_v]``, or where those are every leaf, the clusters' whole
    table."""
    tree = passes.tree
    v, rest = tree.v, tree.layout.leaves_outside_leaf_families
    out = u_leaf
    # The self term r_a v_a is 0 on the leaves of streamed families (the
    # softmax weighs v_a itself); where they are all the leaves, it is not
    # formed, nor its [N, H, D] gradient of v, which would wait through the
    # wide families' backward for their gradients of v.
    if not (own and _streamed_leaves(tree) == v.size(0)):
        # The buffer is this pass's own, saved by no backward: the adds run
        # in place, without two more [N, H, D] tensors. Not into the pair
        # kernels' output, a view that autograd would rebase on its base
        # (copying the base's gradient in the backward).
        r = torch.exp(passes.masses.log_r_leaf).unsqueeze(-1)
        out = _SelfTerm.apply(u_leaf, r, v, own)
    if rest_context is not None and \
            _all_leaves_outside_leaf_families(tree.layout, v.size(0)):
        # Every leaf, in order (rest is sorted).
        out = _AddParentRows.apply(out, rest_context,
                                   tree.layout.outside_parent_cluster)
    elif rest_context is not None and rest.numel() > 0:
        out.index_add_(0, rest, rest_context)
    return out


def _streamed_leaves(tree: _Tree) -> int:
    r"""The number of leaves in streamed families (each in one family)."""
    return sum(_leaf_count(tree.layout.buckets[i]) for i in tree.streamed)


def _leaf_count(bucket: FamilyBucket) -> int:
    r"""The number of leaves among a bucket's children."""
    return bucket.children.numel() if bucket.kind == 'leaf' else \
        bucket.leaf_slot.numel()


def _upper_contexts(passes: _Passes
                    ) -> Tuple[Optional[Tensor], bool,
                               List[Tuple[Rows, Tensor]]]:
    r"""The contexts ``u_a`` of the families with internal children and of
    the pair list: ``(u_leaf, own, writes)``, the leaves' ``[N, H, D_v]``
    (:obj:`None` until one is written; ``own``: whether it is a buffer of
    this pass rather than a view) and the clusters' ``(rows, contexts)``."""
    tree = passes.tree
    layout, v = tree.layout, tree.v
    buckets, tables = layout.buckets, passes.scores.tables
    u_leaf = None  # allocated only when needed: 1 GiB at N = 2^20
    own = True
    writes: List[Tuple[Rows, Tensor]] = []
    for i, b in enumerate(buckets):
        if b.kind == 'leaf' or (tables[i] is None and i not in tree.streamed):
            continue
        if u_leaf is None and b.kind != 'cluster':
            u_leaf = v.new_zeros(v.shape)
        # (a padded bucket of leaves: their U_F is added with the rest's)
        rows = _from_slots(b, _family_context(passes, i, None), u_leaf)
        if rows is not None:
            writes.append((_cluster_rows(b), rows))
    sparse_u = _sparse_contexts(passes)
    if sparse_u is None:
        return u_leaf, own, writes
    leaf_u, cluster_u = _split_members(sparse_u, layout.sparse.leaf.numel())
    if u_leaf is None and _all_leaves_are_members(layout, v.size(0)):
        # (then no leaf family below writes into it)
        u_leaf, own = leaf_u, False
    elif leaf_u.numel() > 0:
        if u_leaf is None:
            u_leaf = v.new_zeros(v.shape)
        u_leaf[layout.sparse.leaf] = leaf_u
    if cluster_u.size(0) > 0:
        writes.append(((layout.sparse.cluster, None), cluster_u))
    return u_leaf, own, writes


def _all_family_weights(passes: _Passes) -> Tensor:
    r"""``[P, H]`` the family weights in the order of the sibling pairs."""
    parts, tree = passes.parts, passes.tree
    weights = [
        parts.g_leaf.new_zeros(int((b.mask.sum(1)**2).sum()),
                               parts.g_leaf.size(1)) if b.sparse else
        _family_weights(b, s,
                        _node_slots(b, parts.lse_leaf,
                                    parts.lse_clus).permute(2, 0, 1),
                        _node_slots(b, parts.g_leaf, parts.g_clus))
        for b, s in zip(tree.layout.buckets, passes.scores.tables)]
    out = torch.cat(weights) if weights else parts.g_leaf.new_zeros(
        0, parts.g_leaf.size(1))
    sparse = tree.layout.sparse
    if sparse.num_members > 0:
        lse = _members(tree, parts.lse_leaf, parts.lse_clus[sparse.cluster])
        g = _members(tree, parts.g_leaf, parts.g_clus[sparse.cluster])
        out = out.index_put((sparse.self_row, ), torch.exp(g - lse))
        if passes.scores.pairs is not None:
            out = out.index_put((sparse.row, ), torch.exp(
                passes.scores.pairs - lse[sparse.src]))
    return out


def _family_weights(bucket: FamilyBucket, s: Optional[Tensor], lse: Tensor,
                    g: Tensor) -> Tensor:
    r"""``[P_bucket, H]`` pi_F(a -> b) on the real pairs of a bucket, in the
    order of :attr:`Hierarchy.sibling_pairs`."""
    g = g.permute(2, 0, 1)  # [H, F, W]
    eye = torch.eye(bucket.width, dtype=torch.bool, device=g.device)
    logits = g.unsqueeze(-1) if s is None else torch.where(
        eye, g.unsqueeze(-1), s)  # l_aa = g_a
    pi = torch.exp(logits - lse.unsqueeze(-1))  # [H, F, W, W]
    pair = bucket.mask[:, :, None] & bucket.mask[:, None, :]
    f, i, j = pair.nonzero(as_tuple=True)
    return pi[:, f, i, j].t()
