r"""Families whose attention runs on a list of their sibling pairs."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, List, Union

import torch
from torch import Tensor

if TYPE_CHECKING:  # the buckets come from hsa_geo.data.hierarchy
    from hsa_geo.data.hierarchy import FamilyBucket


@dataclass(frozen=True, eq=False)  # identity: a key of kernel caches
class SparseFamilies:
    r"""The families whose attention runs on the list of their sibling
    pairs instead of on padded :math:`[F, W, W]` tables: every family of a
    family graph (only its pairs are scored, so the work follows the
    allowed pairs) and the families of small buckets (see
    :data:`hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT`).

    The *members* are the children of these families, by node id (so
    leaves first); a pair
    list scores child ``a`` against sibling ``b != a`` as
    :math:`\ell_{ab} = \alpha\, \bar q_a^\top \bar k_b + \log |b|`, reduces
    the scores per ``a`` with a scattered logsumexp and scatters the
    contexts back (docs/math.md, 6.5).

    Attributes:
        leaf (LongTensor): ``[K_l]`` leaf id of each leaf member.
        cluster (LongTensor): ``[K_c]`` internal id (``0..M-1``) of each
            internal member.
        parent_cluster (LongTensor): ``[K]`` internal id of every member's
            parent.
        self_row (LongTensor): ``[K]`` row of the pair ``(a, a)`` of every
            member in :attr:`Hierarchy.sibling_pairs`.
        src, dst (LongTensor): ``[P']`` members ``a`` and ``b`` of every
            scored pair, sorted by ``src``, then ``dst`` (the order of a
            CSR matrix).
        row (LongTensor): ``[P']`` row of every scored pair in
            :attr:`Hierarchy.sibling_pairs`.
        transpose (LongTensor): ``[P']`` the scored pairs sorted by
            ``dst``, then ``src`` (the order of the transposed matrix).
    """
    leaf: Tensor
    cluster: Tensor
    parent_cluster: Tensor
    self_row: Tensor
    src: Tensor
    dst: Tensor
    row: Tensor
    transpose: Tensor

    @property
    def num_members(self) -> int:
        return self.parent_cluster.numel()

    @property
    def num_pairs(self) -> int:
        return self.src.numel()

    def to(self, device: Union[str, torch.device]) -> 'SparseFamilies':
        return SparseFamilies(*(getattr(self, f.name).to(device)
                                for f in fields(self)))


def sparse_families(buckets: List['FamilyBucket'],
                    num_leaves: int) -> SparseFamilies:
    r"""The :class:`SparseFamilies` of the buckets flagged
    :attr:`~hsa_geo.data.hierarchy.FamilyBucket.sparse`; row offsets count
    the real pairs of every bucket, in order, as
    :attr:`Hierarchy.sibling_pairs` does."""
    device = buckets[0].family.device if buckets else torch.device('cpu')
    parts, pair_offset, member_offset = [], 0, 0
    for b in buckets:
        count = b.mask.sum(1)
        if b.sparse:
            parts.append(_bucket_pairs(b, count, pair_offset, member_offset))
            member_offset += int(count.sum())
        pair_offset += int((count**2).sum())
    if not parts:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return SparseFamilies(*(empty, ) * 8)
    node, parent, self_row, src, dst, row = (torch.cat(x) for x in zip(*parts))
    # By node id, so leaves first: the member tables are then [leaf rows;
    # cluster rows], and when every leaf is a member, the leaf rows are the
    # leaves themselves, in order.
    perm = torch.argsort(node)
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(perm.numel(), device=device)
    node, parent, self_row = node[perm], parent[perm], self_row[perm]
    is_leaf = node < num_leaves
    src, dst, size = rank[src], rank[dst], perm.numel()
    order = torch.argsort(src * size + dst)
    src, dst, row = src[order], dst[order], row[order]
    return SparseFamilies(leaf=node[is_leaf],
                          cluster=node[~is_leaf] - num_leaves,
                          parent_cluster=parent, self_row=self_row,
                          src=src, dst=dst, row=row,
                          transpose=torch.argsort(dst * size + src))


def _bucket_pairs(b: 'FamilyBucket', count: Tensor, pair_offset: int,
                  member_offset: int) -> tuple:
    r"""Members and scored pairs of one bucket: ``(node, parent, self row,
    src, dst, row)`` with members numbered from :obj:`member_offset`."""
    # Real slots are the first count[f] of family f.
    first_pair = pair_offset + torch.cumsum(count**2, 0) - count**2
    first_slot = member_offset + torch.cumsum(count, 0) - count
    f, i = b.mask.nonzero(as_tuple=True)
    if b.allowed is not None:
        pf, pi, pj = b.allowed.nonzero(as_tuple=True)
    else:
        eye = torch.eye(b.width, dtype=torch.bool, device=b.mask.device)
        pf, pi, pj = (b.mask.unsqueeze(2) & b.mask.unsqueeze(1)
                      & ~eye).nonzero(as_tuple=True)
    return (b.children[f, i], b.parent_cluster[f],
            first_pair[f] + i * count[f] + i,
            first_slot[pf] + pi, first_slot[pf] + pj,
            first_pair[pf] + pi * count[pf] + pj)
