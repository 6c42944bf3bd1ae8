r"""The family attention of the dynamic program on a list of sibling pairs
(:class:`~hsa_geo.data.sparse_families.SparseFamilies`): scores, their
logsumexp per child and the contexts over the ``P'`` scored pairs
(docs/math.md, 6.5). The two products run as sparse matrix kernels on a
:class:`~hsa_geo.functional.pair_pattern.PairPattern` where the device has
them, and as gathers and scatters of ``[P', H, D]`` rows elsewhere."""
import weakref
from typing import Dict, Optional

import torch
from torch import Tensor

from hsa_geo.data.sparse_families import SparseFamilies
from hsa_geo.data.tensor_state import cache_mode
from hsa_geo.functional.pair_pattern import DEVICES, PairPattern


# The patterns of the pair lists in use, by head count: a hierarchy's layout
# keeps its SparseFamilies, and a pattern costs about as much to build as
# the pair kernels of a batch of molecules take to run.
_PATTERNS: 'weakref.WeakKeyDictionary[SparseFamilies, Dict[int, PairPattern]]' \
    = weakref.WeakKeyDictionary()


def pair_pattern(families: SparseFamilies,
                 heads: int) -> Optional[PairPattern]:
    r"""The :class:`PairPattern` of the scored pairs for :obj:`heads`
    heads (built once per pair list and head count); :obj:`None` without
    pairs or on a device without sparse CSR kernels."""
    if families.num_pairs == 0 or families.src.device.type not in DEVICES:
        return None
    patterns = _PATTERNS.setdefault(families, {})
    if heads not in patterns:
        # Never inference tensors: a later double backward saves them.
        with cache_mode():
            patterns[heads] = PairPattern.build(
                families.src, families.dst, families.transpose,
                families.num_members, heads)
    return patterns[heads]


def sparse_scores(families: SparseFamilies, q: Tensor, k: Tensor,
                  log_size: Tensor, scale: float,
                  bias: Optional[Tensor] = None,
                  pattern: Optional[PairPattern] = None) -> Tensor:
    r"""``[P', H]`` the logits :math:`\ell_{ab} = \alpha \bar q_a^\top
    \bar k_b + \log |b| (+ \text{bias}_{ab})` of the scored pairs, from the
    member tables ``q, k`` ``[K, H, D]``, ``log_size`` ``[K]`` and the
    ``[P', H]`` rows of a pair bias; on :obj:`pattern` if given."""
    src, dst = families.src, families.dst
    if pattern is not None:
        dots = pattern.sampled_dot(q, k)
        dots = dots.view(q.size(1), -1).t()
    else:  # (a product and a sum: einsum would run P * H tiny products)
        dots = torch.linalg.vecdot(q.index_select(0, src),
                                   k.index_select(0, dst))
    s = torch.add(log_size.index_select(0, dst).unsqueeze(-1), dots,
                  alpha=scale)
    return s if bias is None else s + bias


def scatter_logsumexp(s: Tensor, index: Tensor, size: int, fill: float,
                      counts: Optional[Tensor] = None) -> Tensor:
    r"""``[size, H]`` the logsumexp of the rows of ``s`` ``[P', H]`` that
    share an :obj:`index`; :obj:`fill` where there is none (or all are
    ``-inf``). The gradient is finite everywhere. With :obj:`counts`
    ``[size]``, the number of rows of every index, the rows are sorted by
    index (the maximum is then a segment reduction, several times
    cheaper)."""
    heads = s.size(1)
    # Head-major pairs (the pair kernels' scores, a dense [H, P] seen as
    # [P, H]) are reduced, gathered and added along each head's row: the add
    # 4x faster on the CPU, the whole 1.15x on a batch of molecules. Decided
    # by strides, not is_contiguous(): a size-1 dimension passes that with
    # any stride, and segment_reduce then reads other memory.
    head_major = s.stride(0) == 1 and s.stride(1) == s.size(0)
    with torch.no_grad():  # any finite shift is exact; the max keeps exp
        if counts is None:
            top = s.new_full((size, heads), fill).scatter_reduce_(
                0, index.unsqueeze(-1).expand(-1, heads), s, 'amax')
        elif head_major:
            top = torch.segment_reduce(
                s.t(), 'max', lengths=counts.expand(heads, -1), axis=1,
                unsafe=True).t()
        else:
            top = torch.segment_reduce(s, 'max', lengths=counts, unsafe=True)
        top = top.clamp_(min=torch.finfo(s.dtype).min)
        shift = top.t().index_select(1, index).t() if head_major else \
            top.index_select(0, index)
    terms = torch.exp(s - shift)
    if head_major:
        total = s.new_zeros(heads, size).index_add_(1, index, terms.t()).t()
    else:
        total = s.new_zeros(size, heads).index_add_(0, index, terms)
    empty = total == 0
    return torch.where(empty, fill,
                       top + torch.log(torch.where(empty, 1.0, total)))


def all_finite(x: Tensor) -> bool:
    r"""Whether every entry of :obj:`x` is finite (the sparse products and
    the fused kernels take only finite values)."""
    with torch.no_grad():  # one pass: NaN and inf reach the sum
        return bool(torch.isfinite(x.sum()))


def sparse_contexts(families: SparseFamilies, s: Tensor, shift: Tensor,
                    v: Tensor, keep: Optional[Tensor] = None,
                    pattern: Optional[PairPattern] = None) -> Tensor:
    r"""``[K, H, D_v]`` :math:`u_a = \sum_{b} \exp(\ell_{ab} - \text{shift}_a)
    \bar v_b` over the scored pairs of every member ``a``, with ``shift``
    ``[K, H]`` (the row logsumexp minus the parent's log mass), ``v``
    ``[K, H, D_v]`` and an optional dropout factor ``keep`` ``[P', H]``;
    on :obj:`pattern` if given."""
    src = families.src
    w = torch.exp(s - shift.index_select(0, src))
    if keep is not None:
        w = w * keep
    finite = all_finite(v)
    if pattern is not None and finite:
        return pattern.matmul(w.t().reshape(-1), v)
    terms = w.unsqueeze(-1) * v.index_select(0, families.dst)
    if not finite:
        # A weight that underflowed to 0 is no term at all: an infinite or
        # NaN value reaches the rows that weigh it, not the others. (A sum
        # of finite values that overflows lands here too: exact as well.)
        terms = torch.where(w.unsqueeze(-1) > 0, terms, 0.0)
    out = v.new_zeros((families.num_members, ) + v.shape[1:])
    return out.index_add_(0, src, terms)
