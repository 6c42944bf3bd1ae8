r"""The family attention of the dynamic program on a list of sibling pairs
(:class:`~hsa_geo.data.sparse_families.SparseFamilies`): scores, their
logsumexp per child and the contexts, each a gather, an elementwise step
and a scatter over the ``P'`` scored pairs (docs/math.md, 6.5)."""
from typing import Optional

import torch
from torch import Tensor

from hsa_geo.data.sparse_families import SparseFamilies


def sparse_scores(families: SparseFamilies, q: Tensor, k: Tensor,
                  log_size: Tensor, scale: float,
                  bias: Optional[Tensor] = None) -> Tensor:
    r"""``[P', H]`` the logits :math:`\ell_{ab} = \alpha \bar q_a^\top
    \bar k_b + \log |b| (+ \text{bias}_{ab})` of the scored pairs, from the
    member tables ``q, k`` ``[K, H, D]``, ``log_size`` ``[K]`` and the
    ``[P', H]`` rows of a pair bias."""
    src, dst = families.src, families.dst
    # (an elementwise product and a sum: einsum would run P * H tiny
    # matrix products)
    s = torch.linalg.vecdot(q.index_select(0, src),
                            k.index_select(0, dst)).mul_(scale)
    s = s + log_size.index_select(0, dst).unsqueeze(-1)
    return s if bias is None else s + bias


def scatter_logsumexp(s: Tensor, index: Tensor, size: int,
                      fill: float) -> Tensor:
    r"""``[size, H]`` the logsumexp of the rows of ``s`` ``[P', H]`` that
    share an :obj:`index`; :obj:`fill` where there is none (or all are
    ``-inf``). The gradient is finite everywhere."""
    heads = s.size(1)
    with torch.no_grad():  # any finite shift is exact; the max keeps exp
        top = s.new_full((size, heads), fill).scatter_reduce_(
            0, index.unsqueeze(-1).expand(-1, heads), s, 'amax')
        top = top.clamp_(min=torch.finfo(s.dtype).min)
    total = s.new_zeros(size, heads).index_add_(
        0, index, torch.exp(s - top.index_select(0, index)))
    empty = total == 0
    return torch.where(empty, fill,
                       top + torch.log(torch.where(empty, 1.0, total)))


def sparse_contexts(families: SparseFamilies, s: Tensor, shift: Tensor,
                    v: Tensor, keep: Optional[Tensor] = None) -> Tensor:
    r"""``[K, H, D_v]`` :math:`u_a = \sum_{b} \exp(\ell_{ab} - \text{shift}_a)
    \bar v_b` over the scored pairs of every member ``a``, with ``shift``
    ``[K, H]`` (the row logsumexp minus the parent's log mass), ``v``
    ``[K, H, D_v]`` and an optional dropout factor ``keep`` ``[P', H]``."""
    src = families.src
    w = torch.exp(s - shift.index_select(0, src))
    if keep is not None:
        w = w * keep
    terms = w.unsqueeze(-1) * v.index_select(0, families.dst)
    if not bool(torch.isfinite(v).all()):
        # A weight that underflowed to 0 is no term at all: an infinite or
        # NaN value reaches the rows that weigh it, not the others.
        terms = torch.where(w.unsqueeze(-1) > 0, terms, 0.0)
    out = v.new_zeros((families.num_members, ) + v.shape[1:])
    return out.index_add_(0, src, terms)
