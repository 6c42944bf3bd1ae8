r"""Mini-batches of whole subtrees of one large nested signal."""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.utils.data
from torch import Tensor
from torch_geometric.utils import select

from hsa_geo._checks import (check_bool, check_index, check_int,
                             sparse_adjacency_key)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import (SIGNAL_KEYS, NestedSignal,
                                        is_cluster_key,
                                        select_cluster_attrs)
from hsa_geo.loader._inputs import signal_hierarchy


class _Partition(NamedTuple):
    r"""The subtrees of a hierarchy, computed once: every list is grouped by
    subtree (``*_perm``) with its boundaries (``*_ptr``, ``[U + 1]``)."""
    parent: Tensor  # [T] the hierarchy's parent vector
    edge_index: Tensor  # [2, E] the leaf edges, checked
    roots: Tensor  # [U] node id of each subtree's root
    leaf_ptr: Tensor
    leaf_perm: Tensor  # leaf ids
    cluster_ptr: Tensor
    cluster_perm: Tensor  # internal node ids
    above: Tensor  # [U, level] the ancestors of each root (-1: none)
    edge_ptr: Tensor
    edge_perm: Tensor  # leaf edges, by the subtree of their source
    family_ptr: Optional[Tensor]
    family_perm: Optional[Tensor]  # family-graph pairs inside a subtree
    top_family: Optional[Tensor]  # [2, *] pairs among roots and above


class SubtreeLoader(torch.utils.data.DataLoader):
    r"""Mini-batches of a large :class:`~hsa_geo.data.NestedSignal` made of
    whole subtrees of its hierarchy, in the manner of
    :class:`~torch_geometric.loader.ClusterLoader` (Cluster-GCN): for
    node-level tasks on graphs too large for one pass of
    :class:`~hsa_geo.nn.HSAConv` with its gradients.

    The subtrees are rooted at the nodes at depth :obj:`level` of the
    hierarchy (``level=1``: the children of the roots; ``level=0``: the
    trees of a forest), plus every leaf that sits higher than
    :obj:`level` (a subtree of one leaf); each leaf lies in exactly one.
    The subtrees are numbered in the order of their roots' ids, and the
    leaves of each keep their order.
    A batch joins :obj:`batch_size` subtrees and is the signal that their
    leaves induce, as :meth:`NestedSignal.subgraph(n_id)
    <hsa_geo.data.NestedSignal.subgraph>` returns it: the node attributes
    of those leaves, the leaf edges between them (between two subtrees of
    the batch included) with their edge attributes, and the induced
    hierarchy (the subtrees whole, under the ancestors of their roots;
    see :func:`~hsa_geo.data.induced_hierarchy`). So HSA on a batch is
    exactly HSA over the hierarchy restricted to its leaves: the subtrees
    of a batch attend to each other through their common ancestors, and
    not to the subtrees of other batches.

    Graph-level attributes are copied to every batch, and the per-cluster
    ones (``cluster_*``) keep the rows of the batch's clusters. A batch also
    carries ``n_id`` (``[K]``, the node id in :obj:`data` of each of its
    leaves: ``out[i]`` of a model belongs to node ``n_id[i]``) and ``e_id``
    (the edge id in :obj:`data` of each of its edges), as PyG's loaders do.

    The subtrees, their leaves, internal nodes, edges and family-graph pairs
    are grouped once, at construction; a batch costs a few vectorised
    gathers over its own nodes and edges, plus one node map of the size of
    the hierarchy (as :func:`~torch_geometric.utils.map_index` uses).

    Args:
        data (NestedSignal): the signal (a graph with its hierarchy, e.g.
            from :class:`~hsa_geo.transforms.GraphHierarchy`).
        level (int, optional): the depth of the subtrees' roots, from ``0``
            to the depth of the hierarchy. (default: :obj:`1`)
        batch_size (int, optional): subtrees per batch. (default: :obj:`1`)
        shuffle (bool, optional): draw the subtrees of the batches in a new
            random order every epoch (reproducible with a
            :obj:`generator`). (default: :obj:`False`)
        **kwargs (optional): further arguments of
            :class:`torch.utils.data.DataLoader`, such as :obj:`drop_last`,
            :obj:`generator` or :obj:`num_workers` (not
            :obj:`collate_fn`: the loader makes its own batches). A
            :obj:`sampler` or :obj:`batch_sampler` of subtree ids must not
            repeat one within a batch (draw without replacement): a batch
            with a subtree twice raises :class:`ValueError`.

    Examples:
        >>> h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
        >>> data = NestedSignal.from_hierarchy(h, torch.randn(4, 8))
        >>> loader = SubtreeLoader(data, level=1, batch_size=1)
        >>> [batch.n_id.tolist() for batch in loader]
        [[0, 1], [2, 3]]
    """
    def __init__(self, data: NestedSignal, level: int = 1,
                 batch_size: int = 1, shuffle: bool = False, **kwargs):
        hierarchy = signal_hierarchy(data, 'SubtreeLoader')
        level = check_int(level, 'level', low=0)
        if level > hierarchy.depth:
            raise ValueError(
                f"'level' is {level} but the hierarchy has depth "
                f"{hierarchy.depth}; choose a level from 0 (one subtree per "
                f"tree) to {hierarchy.depth}")
        batch_size = check_int(batch_size, 'batch_size')
        check_bool(shuffle, 'shuffle')
        if 'collate_fn' in kwargs:
            raise TypeError(
                "SubtreeLoader makes its own batches and takes no "
                "'collate_fn'; transform the batches in the training loop")
        _check_no_sparse_adjacency(data)
        self.data = data
        self.hierarchy = hierarchy
        self.level = level
        self.partition = _partition(hierarchy, level, _edges(data, hierarchy))
        super().__init__(range(self.num_subtrees), batch_size=batch_size,
                         shuffle=shuffle, collate_fn=self._collate, **kwargs)

    @property
    def num_subtrees(self) -> int:
        r"""The number of subtrees :math:`U` (batches per epoch:
        :math:`\lceil U / \text{batch\_size} \rceil`)."""
        return self.partition.roots.numel()

    @property
    def subtree_roots(self) -> Tensor:
        r"""``[U]`` the node id in the hierarchy of each subtree's root."""
        return self.partition.roots.clone()

    def _collate(self, batch: Sequence[int]) -> NestedSignal:
        part = self.partition
        subtrees = torch.as_tensor(batch, dtype=torch.long,
                                   device=part.roots.device)
        _check_distinct(subtrees)
        n_id = part.leaf_perm[_gather_ranges(part.leaf_ptr, subtrees)]
        clusters = torch.cat([
            part.cluster_perm[_gather_ranges(part.cluster_ptr, subtrees)],
            part.above[subtrees].view(-1)
        ])
        # Sorted: induced clusters keep their previous order.
        clusters = clusters[clusters >= 0].unique()
        node_map = _NodeMap(torch.cat([n_id, clusters]))
        # Every parent of a kept node is kept (whole subtrees and the
        # ancestors of their roots); roots map to -1.
        parent = node_map(part.parent[node_map.kept])
        induced = Hierarchy.from_parent(parent, n_id.numel(),
                                        _family(part, subtrees, node_map))
        e_id = self._edge_ids(subtrees, node_map)
        attrs = self._attributes(n_id, e_id, node_map)
        attrs.update(select_cluster_attrs(
            self.data, clusters - self.hierarchy.num_leaves,
            self.hierarchy.num_clusters))
        return NestedSignal.from_hierarchy(induced, **attrs)

    def _edge_ids(self, subtrees: Tensor, node_map: _NodeMap) -> Tensor:
        r"""The edges from the batch's leaves to its leaves, in their order
        in :obj:`data`."""
        part = self.partition
        e_id = part.edge_perm[_gather_ranges(part.edge_ptr, subtrees)]
        if e_id.numel() == 0:
            return e_id
        e_id = e_id[node_map(part.edge_index[1, e_id]) >= 0]
        return e_id.sort().values

    def _attributes(self, n_id: Tensor, e_id: Tensor,
                    node_map: _NodeMap) -> Dict[str, Any]:
        r"""The batch's attributes: node and edge attributes selected,
        graph-level ones copied, ``edge_index`` relabelled."""
        data = self.data
        out: Dict[str, Any] = {}
        for key, value in data.items():
            if key in SIGNAL_KEYS or key == 'num_nodes' or \
                    is_cluster_key(key):
                continue
            if key == 'edge_index':
                out[key] = node_map(self.partition.edge_index[:, e_id])
            elif data.is_node_attr(key):
                out[key] = select(value, n_id, data.__cat_dim__(key, value))
            elif data.is_edge_attr(key):
                out[key] = select(value, e_id, data.__cat_dim__(key, value))
            else:
                out[key] = value
        out['n_id'], out['e_id'] = n_id, e_id
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_subtrees} subtrees at '
                f'level {self.level}, batch_size={self.batch_size})')


class _NodeMap:
    r"""The new id of the kept nodes of a batch (their position in
    :obj:`kept`), looked up by binary search: its cost follows the batch,
    not the whole hierarchy."""
    def __init__(self, kept: Tensor):
        self.kept = kept
        self.sorted, self.order = kept.sort()

    def __call__(self, index: Tensor) -> Tensor:
        r"""The new id of every node id in :obj:`index` (``-1`` where it is
        not kept)."""
        pos = torch.searchsorted(self.sorted, index)
        pos = pos.clamp(max=self.sorted.numel() - 1)
        return torch.where(self.sorted[pos] == index, self.order[pos], -1)


def _check_distinct(subtrees: Tensor):
    r"""Raises :class:`ValueError` if a batch draws a subtree twice (a
    sampler with replacement): its leaves would sit twice in one tree,
    which no induced signal holds."""
    ids = subtrees.sort().values
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.numel() > 0:
        raise ValueError(
            f"the sampler put subtree {int(repeated[0])} into one batch "
            f"more than once; a batch holds every leaf once: use a sampler "
            f"without replacement (e.g. WeightedRandomSampler(..., "
            f"replacement=False))")


def _check_no_sparse_adjacency(data: NestedSignal):
    r"""Raises :class:`ValueError` if :obj:`data` stores its edges as a
    sparse adjacency (a sparse attribute whose key holds ``'adj'``, as
    ``adj_t`` of :class:`~torch_geometric.transforms.ToSparseTensor`):
    batches take their edges from ``edge_index``, and would get the whole
    adjacency copied and none of its edges."""
    key = sparse_adjacency_key(data)
    if key is not None:
        raise ValueError(
            f"'{key}' is a sparse adjacency; SubtreeLoader takes the "
            f"edges of a batch from 'edge_index' and would copy "
            f"'{key}' whole into every batch, with none of its edges: "
            f"load the signal with its [2, E] 'edge_index' (before "
            f"T.ToSparseTensor()) and apply T.ToSparseTensor() to each "
            f"batch")


def _edges(data: NestedSignal, hierarchy: Hierarchy) -> Tensor:
    r"""The leaf edges ``[2, E]`` of :obj:`data` (empty without), checked."""
    edge_index = data.edge_index
    if edge_index is None:
        return hierarchy.parent.new_empty(2, 0)
    edge_index = check_index(edge_index, 'edge_index')
    n = hierarchy.num_leaves
    bad = (edge_index < 0) | (edge_index >= n)
    if bool(bad.any()):
        row, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"edge_index[{row}, {j}] = {int(edge_index[row, j])} is not a "
            f"node id (0..{n - 1}); edges join the leaves of the signal")
    return edge_index.to(hierarchy.device)


def _partition(hierarchy: Hierarchy, level: int,
               edge_index: Tensor) -> _Partition:
    r"""Groups the leaves, internal nodes, edges and family-graph pairs by
    the subtree rooted at depth :obj:`level` that holds them."""
    n, parent, depth = hierarchy.num_leaves, hierarchy.parent, \
        hierarchy.node_depth
    ids = torch.arange(hierarchy.num_nodes, device=parent.device)
    # top[v]: the ancestor of v at depth min(depth(v), level), level by
    # level downwards (the levels below `level` take their parent's).
    top = ids.clone()
    for nodes in hierarchy.levels[level + 1:]:
        top[nodes] = top[parent[nodes]]
    is_root = (depth == level) | ((ids < n) & (depth < level))
    roots = is_root.nonzero().view(-1)
    subtree = torch.full_like(ids, -1)
    subtree[roots] = torch.arange(roots.numel(), device=ids.device)
    # -1 for the internal nodes above the subtrees.
    subtree = subtree[top]
    num = roots.numel()
    leaf_ptr, leaf_perm = _group(subtree[:n], num)
    cluster_ptr, cluster_perm = _group(subtree[n:], num)
    cluster_perm = cluster_perm + n
    above = torch.full((num, level), -1, dtype=torch.long,
                       device=ids.device)
    node = parent[roots]
    for j in range(level):
        above[:, j] = node
        node = torch.where(node >= 0, parent[node.clamp(min=0)], node)
    edge_ptr, edge_perm = _group(subtree[edge_index[0]], num)
    family_ptr = family_perm = top_family = None
    pairs = hierarchy.family_edge_index
    if pairs is not None:
        # A pair belongs to the subtree of its family, or links roots (and
        # the nodes above them) when the family sits above the subtrees.
        of_pair = subtree[parent[pairs[0]]]
        family_ptr, family_perm = _group(of_pair, num)
        family_perm = pairs[:, family_perm]
        top_family = pairs[:, of_pair < 0]
    return _Partition(parent, edge_index, roots, leaf_ptr, leaf_perm,
                      cluster_ptr, cluster_perm, above, edge_ptr, edge_perm,
                      family_ptr, family_perm, top_family)


def _group(group: Tensor, num_groups: int) -> Tuple[Tensor, Tensor]:
    r"""``(ptr [num_groups + 1], perm)``: the positions of :obj:`group` with
    a value ``>= 0``, by value (stable), and the boundaries of each."""
    counts = torch.bincount(group[group >= 0], minlength=num_groups)
    ptr = torch.zeros(num_groups + 1, dtype=torch.long, device=group.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    # -1 sorts first: those positions are skipped.
    order = torch.sort(group, stable=True).indices
    return ptr, order[order.numel() - int(ptr[-1]):]


def _gather_ranges(ptr: Tensor, groups: Tensor) -> Tensor:
    r"""The positions ``ptr[g]..ptr[g + 1]-1`` of every group ``g`` in
    :obj:`groups`, concatenated in that order, without a Python loop."""
    start = ptr[groups]
    count = ptr[groups + 1] - start
    total = int(count.sum())
    offset = torch.repeat_interleave(start - (count.cumsum(0) - count),
                                     count, output_size=total)
    return offset + torch.arange(total, device=ptr.device)


def _family(part: _Partition, subtrees: Tensor,
            node_map: _NodeMap) -> Optional[Tensor]:
    r"""The family graph of a batch in its node ids: the pairs inside its
    subtrees, and those above them between two kept nodes."""
    if part.family_perm is None:
        return None
    pairs = torch.cat([
        part.family_perm[:, _gather_ranges(part.family_ptr, subtrees)],
        part.top_family
    ], dim=1)
    pairs = node_map(pairs)
    return pairs[:, (pairs >= 0).all(dim=0)]
