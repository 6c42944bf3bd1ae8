r"""Nodes in tree order: the leaves of every family as one run of rows, so
that the attention reads the families of the leaves as views of the node
features instead of gathering them."""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.transforms import BaseTransform

from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal, map_batch
from hsa_geo.transforms._inputs import check_no_sparse_adjacency
from hsa_geo.transforms._node_ids import (check_node_or_edge,
                                          node_id_lists, relabel_node_ids,
                                          select_nodes)


class TreeOrder(BaseTransform):
    r"""Permutes the nodes (leaves) of a
    :class:`~hsa_geo.data.NestedSignal` into the depth-first order of its
    hierarchy: the roots in increasing id, the children of every internal
    node in increasing id (so its leaves first, then its child clusters),
    each subtree's leaves before those of the next sibling.

    Every family's leaves then form one run of consecutive nodes, in the
    order of the clusters' ids wherever these follow the tree (breadth-first
    ids, as :class:`~hsa_geo.transforms.GraphHierarchy` and
    :meth:`~hsa_geo.data.Hierarchy.from_assignments` give). When all
    leaves sit in families of one width, the families of the leaves are
    consecutive blocks of rows (see
    :attr:`~hsa_geo.data.hierarchy.HierarchyLayout.leaf_blocks`) and the
    attention takes its fused path, without gathering or scattering leaf
    rows.

    The permutation :math:`\pi` is applied with
    :meth:`~hsa_geo.data.NestedSignal.subgraph` on all nodes: new node
    :math:`i` is old node :math:`\pi(i)`, every node attribute follows its
    node (a numpy array too, which PyG's subgraph does not take),
    :obj:`edge_index` is relabelled (edges and edge attributes keep
    their order), and so are, in their own order, the other lists of node
    ids: the integer tensors that PyG offsets by the number of nodes in a
    batch, named ``face`` or with ``'index'`` but not ``'batch'`` in the
    name (such as the ``edge_label_index`` of
    :class:`~torch_geometric.transforms.RandomLinkSplit`, an
    ``edge_index_neg`` or a 1-D ``root_index``), other than the tree's
    keys and ``patch_index`` (an integer numpy array so named raises
    :class:`ValueError`: PyG offsets only tensors); the internal nodes,
    the family graph and the dense or sparse kind of every family stay as
    they are. A 1-D such
    list with one entry per node could also be a node attribute and
    raises :class:`ValueError` (a list of ids is stored as ``[1, N]``), so
    does an entry of such a list that is no node id in ``0..N-1`` (PyG
    would offset padding such as ``-1`` into another graph's nodes), and
    so does an attribute of a graph with as many edges as nodes that PyG
    could take for either (its name decides: see the message). HSA on
    the result is HSA on the input, rows permuted:
    :math:`\mathrm{HSA}(X_\pi)_i = \mathrm{HSA}(X)_{\pi(i)}`.

    :math:`\pi` is stored as the node attribute :obj:`attr` (like PyG's
    :obj:`n_id`), so predictions map back with
    ``out_old[data.n_id] = out``. If the signal already has that attribute
    it is permuted with the nodes, so that it keeps pointing to the
    original nodes (applying :class:`TreeOrder` twice gives the same
    signal; the second permutation is the identity). In a batch, its values
    are node ids within each signal: a batch of ordered signals is in tree
    order, and :class:`TreeOrder` orders a
    :class:`~torch_geometric.data.Batch` signal by signal and batches them
    again (:class:`ValueError` if an attribute was set on the batch after
    batching: it cannot be split among the signals).

    A mini-batch of a neighbour loader (a signal with ``batch_size``, as
    :class:`~hsa_geo.loader.HierarchyNeighborLoader` gives) raises
    :class:`ValueError`: its seed nodes are its first ``batch_size`` nodes
    (``out[:batch.batch_size]``), and the permutation would move them
    while ``batch_size`` and ``input_id`` stay. To order such a batch
    anyway, delete its ``batch_size`` and find the seeds through the
    stored permutation: with ``TreeOrder(attr='perm')``, the rows where
    ``perm < batch_size``.

    Args:
        attr (str, optional): the node attribute that stores :math:`\pi`;
            :obj:`None` stores nothing. (default: :obj:`'n_id'`)
    """
    def __init__(self, attr: Optional[str] = 'n_id'):
        if attr is not None and not isinstance(attr, str):
            raise TypeError(f"'attr' must be a str or None, got "
                            f"{type(attr).__name__}")
        if attr is not None and not attr.isidentifier():
            raise ValueError(f"'attr' must be a valid attribute name, got "
                             f"{attr!r}")
        self.attr = attr

    def forward(self, data: NestedSignal) -> NestedSignal:
        r"""Returns :obj:`data` with its nodes in tree order."""
        if not isinstance(data, NestedSignal):
            raise TypeError(
                f"TreeOrder needs a NestedSignal (a graph with a hierarchy "
                f"over its nodes), got {type(data).__name__}; build one with "
                f"a hierarchy transform such as GraphHierarchy first")
        if isinstance(data, Batch):
            # Signal by signal: then the stored permutation is split with
            # the signals, and holds ids within each.
            return map_batch(data, lambda i, signal: self(signal),
                             'TreeOrder')
        check_no_sparse_adjacency(data, 'TreeOrder')
        _check_not_sampled(data)
        perm = _tree_order(data.hierarchy)
        check_node_or_edge(data, 'TreeOrder', exempt=(self.attr, ))
        lists = node_id_lists(data, 'TreeOrder', exempt=(self.attr, ))
        stored = self.attr is not None and self.attr in data
        if stored:  # an earlier permutation: composed by subgraph below
            value = data[self.attr]
            n = perm.numel()
            if not isinstance(value, Tensor) or value.dim() == 0 or \
                    value.size(0) != n:
                raise ValueError(
                    f"'{self.attr}' is already an attribute of this signal "
                    f"but not one entry per node ({n}); rename it or choose "
                    f"another 'attr'")
        if not torch.equal(perm, torch.arange(perm.numel(),
                                              device=perm.device)):
            data = _subgraph(data, perm)
            # From the lists as they were: subgraph permutes the columns of
            # a [k, N] one as if it were a node attribute.
            relabel_node_ids(data, perm, lists)
        if self.attr is not None and not stored:
            data[self.attr] = perm
        return data

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(attr={self.attr!r})'


def _subgraph(data: NestedSignal, perm: Tensor) -> NestedSignal:
    r""":meth:`~hsa_geo.data.NestedSignal.subgraph` of the nodes
    :obj:`perm`, with the numpy arrays, which PyG's select does not take,
    set aside and put back: those of one row per node permuted."""
    arrays = {key: value for key, value in data.items()
              if isinstance(value, np.ndarray)}
    rest = copy.copy(data)  # (the caller's data keeps its arrays)
    for key in arrays:
        del rest[key]
    out = rest.subgraph(perm)
    for key, value in arrays.items():
        out[key] = select_nodes(data, key, value, perm) \
            if data.is_node_attr(key) else value
    return out


def _check_not_sampled(data: NestedSignal):
    r"""Raises :class:`ValueError` if :obj:`data` is a mini-batch of a
    neighbour loader (it has ``batch_size``): its seeds are its first
    ``batch_size`` nodes, which the permutation would move while
    ``batch_size`` and ``input_id`` stay."""
    if 'batch_size' not in data:
        return
    raise ValueError(
        f"this signal has 'batch_size' ({data.batch_size}): it is a "
        f"mini-batch of a neighbour loader (such as "
        f"HierarchyNeighborLoader), whose seed nodes are its first "
        f"batch_size nodes (out[:batch_size]); TreeOrder would move them "
        f"while 'batch_size' and 'input_id' stay. Use the batch as it is, "
        f"or delete 'batch_size' first and find the seeds through the "
        f"stored permutation (with TreeOrder(attr='perm'), the rows where "
        f"perm < batch_size)")


def _tree_order(hierarchy: Hierarchy) -> Tensor:
    r"""``[N]`` the leaves of :obj:`hierarchy` in depth-first order (see
    :class:`TreeOrder`): entry :math:`i` is the leaf that comes
    :math:`i`-th. Every node's first leaf is placed top-down, one level at
    a time: a root after the leaves of the roots before it, a child after
    its parent's first leaf and the leaves of its earlier siblings."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    n, parent = hierarchy.num_leaves, hierarchy.parent
    count = hierarchy.leaf_count
    start = torch.zeros_like(parent)
    levels = hierarchy.levels  # each in increasing id
    roots = levels[0]
    start[roots] = torch.cumsum(count[roots], 0) - count[roots]
    for nodes in levels[1:]:
        # Group by parent, increasing id inside a group (stable sort).
        nodes = nodes[torch.argsort(parent[nodes], stable=True)]
        par = parent[nodes]
        before = torch.cumsum(count[nodes], 0) - count[nodes]
        # Leaves of earlier siblings: subtract what precedes the group.
        first = torch.ones_like(par, dtype=torch.bool)
        first[1:] = par[1:] != par[:-1]
        group = torch.cumsum(first, 0) - 1
        start[nodes] = start[par] + before - before[first][group]
    perm = torch.empty(n, dtype=torch.long, device=parent.device)
    perm[start[:n]] = torch.arange(n, device=parent.device)
    return perm
