r"""Families whose attention runs on a list of their sibling pairs."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Iterator, List, Tuple, Union

import torch
from torch import Tensor

from hsa_geo._permutation import inverse_permutation

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


def sparse_families(buckets: List['FamilyBucket'], num_leaves: int,
                    num_nodes: int) -> SparseFamilies:
    r"""The :class:`SparseFamilies` of the buckets flagged
    :attr:`~hsa_geo.data.hierarchy.FamilyBucket.sparse` of a hierarchy of
    :obj:`num_nodes` nodes; row offsets count the real pairs of every
    bucket, in order, as :attr:`Hierarchy.sibling_pairs` does."""
    sparse = list(_sparse_buckets(buckets))
    if not sparse:
        device = buckets[0].family.device if buckets else \
            torch.device('cpu')
        empty = torch.empty(0, dtype=torch.long, device=device)
        return SparseFamilies(*(empty, ) * 8)
    # A hierarchy with a family graph gives every bucket its table of
    # allowed pairs (dense families allow every pair); one without, none.
    if all(b.allowed is None for b, _, _ in sparse):
        return _all_siblings(sparse, num_leaves, num_nodes)
    parts, member_offset = [], 0
    for b, count, pair_offset in sparse:
        parts.append(_bucket_pairs(b, count, pair_offset, member_offset))
        member_offset += int(count.sum())
    node, parent, self_row, src, dst, row, src_rank, dst_rank = (
        torch.cat(x) for x in zip(*parts))
    rank, perm = _by_node_id(node, num_nodes)
    node, parent, self_row = (x.index_select(0, perm)
                              for x in (node, parent, self_row))
    src, dst = rank.index_select(0, src), rank.index_select(0, dst)
    # Sorted by (src, dst) and by (dst, src): a pair's place is past the
    # pairs of the members before, plus its rank among its member's pairs
    # (a family's slots, hence its members, are in increasing node id).
    at = _first(src, node.numel()) + src_rank
    t_at = _first(dst, node.numel()) + dst_rank
    src, dst, row = (torch.empty_like(x).scatter_(0, at, x)
                     for x in (src, dst, row))
    return _with_members(node, num_leaves, parent_cluster=parent,
                         self_row=self_row, src=src, dst=dst, row=row,
                         transpose=torch.empty_like(at).scatter_(0, t_at,
                                                                 at))


def _sparse_buckets(buckets: List['FamilyBucket']
                    ) -> Iterator[Tuple['FamilyBucket', Tensor, int]]:
    r"""The sparse buckets, each with its families' child counts and the
    row in :attr:`Hierarchy.sibling_pairs` of its first pair."""
    pair_offset = 0
    for b in buckets:
        count = b.mask.sum(1)
        if b.sparse:
            yield b, count, pair_offset
        pair_offset += int((count * count).sum())


def _by_node_id(node: Tensor, num_nodes: int) -> Tuple[Tensor, Tensor]:
    r"""The rank of every member :obj:`node` (distinct ids) by node id, and
    the permutation that sorts them. By node id, so leaves first: the member
    tables are then [leaf rows; cluster rows], and when every leaf is a
    member, the leaf rows are the leaves themselves, in order."""
    # Counted, not sorted: sorts and advanced indexing cost several times
    # more on the CPU, and this runs on every new batch.
    present = torch.zeros(num_nodes, dtype=torch.long, device=node.device)
    present.index_fill_(0, node, 1)
    rank = (torch.cumsum(present, 0) - 1).index_select(0, node)
    return rank, inverse_permutation(rank)


def _with_members(node: Tensor, num_leaves: int,
                  **pairs: Tensor) -> SparseFamilies:
    r""":class:`SparseFamilies` of the members :obj:`node` (by node id)
    and the other fields."""
    is_leaf = node < num_leaves
    return SparseFamilies(leaf=node[is_leaf],
                          cluster=node[~is_leaf] - num_leaves, **pairs)


def _all_siblings(sparse: List[Tuple['FamilyBucket', Tensor, int]],
                  num_leaves: int, num_nodes: int) -> SparseFamilies:
    r""":func:`sparse_families` where every sparse family scores all pairs
    of distinct siblings (no family graph): the pairs in closed form, a few
    operations per bucket instead of a pass over each bucket's pairs."""
    count, node, parent, first_row = (torch.cat(x) for x in zip(*(
        (c, b.children[b.mask], b.parent_cluster,
         offset + torch.cumsum(c * c, 0) - c * c) for b, c, offset in sparse)))
    device = node.device
    # Per member, by node id: its family, slot i and family size c.
    rank, perm = _by_node_id(node, num_nodes)
    family = torch.repeat_interleave(
        torch.arange(count.numel(), device=device), count)
    start = torch.cumsum(count, 0) - count  # a family's first member
    slot = torch.arange(node.numel(), device=device) - \
        start.index_select(0, family)
    node, family, slot = (x.index_select(0, perm)
                          for x in (node, family, slot))
    size = count.index_select(0, family)
    row0 = first_row.index_select(0, family) + slot * size
    # Member a's pairs (a, b), b != a, in slot order, which is node order:
    # the list comes out sorted by (src, dst).
    src = torch.repeat_interleave(
        torch.arange(node.numel(), device=device), size - 1)
    r = torch.arange(src.numel(), device=device) - _before(size - 1, src)
    i = slot.index_select(0, src)
    j = r + (r >= i).long()
    dst = rank.index_select(
        0, start.index_select(0, family.index_select(0, src)) + j)
    # The list is symmetric, so sorting it by (dst, src) swaps every pair:
    # (b, a) is pair i - [i > j] of b.
    return _with_members(
        node, num_leaves, parent_cluster=parent.index_select(0, family),
        self_row=row0 + slot, src=src, dst=dst,
        row=row0.index_select(0, src) + j,
        transpose=_before(size - 1, dst) + i - (i > j).long())


def _first(member: Tensor, size: int) -> Tensor:
    r"""For every pair of :obj:`member` ``[P']``, the number of pairs of
    the members before its own (of :obj:`size`)."""
    return _before(torch.bincount(member, minlength=size), member)


def _before(count: Tensor, group: Tensor) -> Tensor:
    r"""For every item of :obj:`group`, the number of items of the groups
    before its own, given every group's :obj:`count` (flattened)."""
    count = count.view(-1)
    return (torch.cumsum(count, 0) - count).index_select(0, group)


def _bucket_pairs(b: 'FamilyBucket', count: Tensor, pair_offset: int,
                  member_offset: int) -> tuple:
    r"""Members and scored pairs (those of its family graph table
    :attr:`allowed`) of one bucket: ``(node, parent, self row,
    src, dst, row, src rank, dst rank)`` with members numbered from
    :obj:`member_offset`; a pair's ranks are its place among the pairs of
    its ``src`` (by ``dst``) and among those of its ``dst`` (by ``src``)."""
    # Real slots are the first count[f] of family f.
    first_pair = pair_offset + torch.cumsum(count**2, 0) - count**2
    first_slot = member_offset + torch.cumsum(count, 0) - count
    f, i = b.mask.nonzero(as_tuple=True)
    pf, pi, pj = b.allowed.nonzero(as_tuple=True)
    slot = first_slot.index_select(0, pf)
    return (b.children[f, i], b.parent_cluster[f],
            first_pair[f] + i * count[f] + i, slot + pi, slot + pj,
            first_pair.index_select(0, pf) + pi * count.index_select(0, pf)
            + pj, *_pair_ranks(b.allowed, pf, pi, pj))


def _pair_ranks(allowed: Tensor, f: Tensor, i: Tensor,
                j: Tensor) -> Tuple[Tensor, Tensor]:
    r"""The rank of every pair ``(f, i, j)`` (listed row-major) among the
    pairs of its row ``(f, i)`` and among those of its column ``(f, j)``
    in the family graph's table :obj:`allowed`, in :math:`O(P)` memory,
    never the :math:`[F, W, W]` sums of that table (gigabytes for a wide
    family)."""
    width = allowed.size(1)
    # A row's pairs are consecutive; a column's, after a stable sort.
    key = f * width + j
    by_column = inverse_permutation(torch.argsort(key, stable=True))
    row = torch.arange(f.numel(), device=f.device) - \
        _before(allowed.sum(2), f * width + i)
    return row, by_column - _before(allowed.sum(1), key)
