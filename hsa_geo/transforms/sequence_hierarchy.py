r"""A fixed-size chunking hierarchy over a sequence (tokens, time steps)."""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from hsa_geo._checks import check_int
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal
from hsa_geo.transforms._inputs import check_num_nodes


class SequenceHierarchy(BaseTransform):
    r"""Turns a sequence into a nested signal by chunking it into consecutive
    pieces of fixed size, level by level (tokens -> chunks -> chunks of
    chunks -> ... -> one root).

    The :math:`N` leaves are the nodes of the input in order (the rows of
    ``data.x``, or ``0..data.num_nodes-1`` without ``x``). With chunk sizes
    :math:`(c_0, c_1, \dots, c_{L-1})`, level :math:`l` groups the
    :math:`n_l` nodes of the level below (:math:`n_0 = N`) into
    :math:`n_{l+1} = \lceil n_l / c_l \rceil` consecutive chunks: node
    :math:`i` of level :math:`l` goes to chunk :math:`\lfloor i / c_l
    \rfloor`. The last chunk of a level holds the remaining
    :math:`n_l - (n_{l+1} - 1) c_l` nodes, so it may be shorter (down to a
    single node: a single-child node, which HSA treats as transparent).
    Consequences, all relied upon by tests:

    - every leaf has the same depth, and a cluster of level :math:`l` has
      :attr:`Hierarchy.node_height` :math:`l`;
    - chunking stops early as soon as a level has a single node, which is
      then the root (no single-child chain above the root);
    - if more than one node is left after the last chunk size, one final
      root is put over all of them, so the result is always one tree;
    - a sequence of a single node gives a single leaf without parent (a
      tree of one node, no clusters).

    Node ids follow the tree: leaves ``0..N-1`` keep their input order,
    clusters are numbered level by level (level 1 first), in sequence order
    inside a level, so every family is a contiguous run of ids and
    :attr:`Hierarchy.sibling_rank` is the position inside the chunk. When
    :math:`N` is a multiple of :math:`c_0` and :math:`c_0` is a power of
    two, all bottom families are full and of one power-of-two width: the
    dynamic program of
    :func:`~hsa_geo.functional.hierarchical_attention` then runs its fused
    path on views of the leaf rows (no gather), also for a
    :class:`~torch_geometric.loader.DataLoader` batch of such sequences.

    Returns :meth:`NestedSignal.from_data(data, hierarchy)
    <hsa_geo.data.NestedSignal.from_data>`: every attribute of :obj:`data`
    unchanged (no row is moved), plus the hierarchy. A hierarchy already
    stored in :obj:`data` is replaced.

    Args:
        chunk_sizes (int or list of int): :math:`c_l \geq 2`, the number of
            nodes of level :math:`l` per chunk of level :math:`l + 1`; one
            int means a single level of chunks (and a root over them).

    Example:
        >>> data = Data(x=torch.randn(10, 8))
        >>> out = SequenceHierarchy([4, 2])(data)
        >>> out.hierarchy.parent.tolist()  # 3 chunks, 2 chunks, a root
        [10, 10, 10, 10, 11, 11, 11, 11, 12, 12, 13, 13, 14, 15, 15, -1]
    """
    def __init__(self, chunk_sizes: Union[int, Sequence[int]]):
        self.chunk_sizes = _check_chunk_sizes(chunk_sizes)

    def forward(self, data: Data) -> NestedSignal:
        n = check_num_nodes(data, 'SequenceHierarchy')
        device = data.x.device if isinstance(data.x, torch.Tensor) else None
        return NestedSignal.from_data(data, self.build(n, device))

    def build(self, num_leaves: int,
              device: Union[str, torch.device, None] = None) -> Hierarchy:
        r"""The hierarchy over :obj:`num_leaves` leaves in order, without
        any data."""
        size, assignments = check_int(num_leaves, 'num_leaves'), []
        for c in self.chunk_sizes:
            if size == 1:  # already one root: no chain above it
                break
            assignments.append(torch.arange(size, device=device) // c)
            size = -(-size // c)
        if size > 1:  # the final root over what is left
            assignments.append(torch.zeros(size, dtype=torch.long,
                                           device=device))
        if not assignments:  # a single leaf: a tree of one node
            return Hierarchy.from_parent(
                torch.full((1, ), -1, dtype=torch.long, device=device), 1)
        return Hierarchy.from_assignments(assignments)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(chunk_sizes={self.chunk_sizes})'


def _check_chunk_sizes(chunk_sizes) -> List[int]:
    one = isinstance(chunk_sizes, (str, bytes)) or not isinstance(
        chunk_sizes, Sequence)
    if one:
        try:
            chunk_sizes = [check_int(chunk_sizes, 'chunk_sizes', low=None)]
        except TypeError:
            raise TypeError(
                f"'chunk_sizes' must be an int or a list of ints >= 2 (one "
                f"per level, bottom first), got {chunk_sizes!r} "
                f"({type(chunk_sizes).__name__})") from None
    if len(chunk_sizes) == 0:
        raise ValueError("'chunk_sizes' is empty; give at least one chunk "
                         "size, e.g. [4]")
    sizes = []
    for i, c in enumerate(chunk_sizes):
        name = 'chunk_sizes' if one else f'chunk_sizes[{i}]'
        c = check_int(c, name, low=None)
        if c < 2:
            raise ValueError(
                f"{name} = {c} is below 2; a chunk of one node adds nothing "
                f"(single children are transparent to HSA), so use sizes >= "
                f"2 or drop that level")
        sizes.append(c)
    return sizes
