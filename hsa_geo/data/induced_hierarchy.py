r"""The hierarchy that a subset of its leaves induces."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import Tensor

from hsa_geo._checks import check_bool, check_index, first_out_of_range
from hsa_geo.data.hierarchy import Hierarchy


def induced_hierarchy(hierarchy: Hierarchy, subset: Tensor,
                      return_node_map: bool = False
                      ) -> Union[Hierarchy, Tuple[Hierarchy, Tensor]]:
    r"""The hierarchy restricted to the leaves :obj:`subset`: the tree of a
    nested signal after :func:`torch_geometric.utils.subgraph` keeps only
    these nodes.

    Leaf ``subset[i]`` becomes leaf ``i``, as PyG's ``subgraph`` relabels
    nodes (a mask keeps the leaves in increasing order). Internal nodes
    without a kept leaf below them are removed; the others follow the leaves,
    renumbered in their previous order. Pairs of the family graph between two
    kept nodes are kept. A node left with a single child stays: single-child
    nodes are transparent to HSA, so the attention over the kept leaves is
    that of the tree built on them alone.

    Args:
        hierarchy (Hierarchy): the tree over :math:`N` leaves.
        subset (LongTensor or BoolTensor): the leaves to keep, as ``[K]``
            distinct leaf ids (in any order) or an ``[N]`` mask.
        return_node_map (bool, optional): also return the new id of every
            node. (default: :obj:`False`)

    Returns:
        :class:`Hierarchy` over :math:`K` leaves; with
        :obj:`return_node_map`, also ``node_map`` ``[T]``, the new id of
        every node of :obj:`hierarchy` (``-1`` where removed).

    Examples:
        >>> h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
        >>> induced_hierarchy(h, torch.tensor([3, 0])).parent.tolist()
        [3, 2, 4, 4, -1]
    """
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    check_bool(return_node_map, 'return_node_map')
    leaves = leaf_subset(subset, hierarchy.num_leaves).to(hierarchy.device)
    node_map = _node_map(hierarchy, leaves)
    kept = (node_map >= 0).nonzero().view(-1)
    old_parent = hierarchy.parent[kept]
    parent = torch.full_like(kept, -1)
    # The parent of a kept node has a kept leaf below it: it is kept too.
    parent[node_map[kept]] = torch.where(
        old_parent >= 0, node_map[old_parent.clamp(min=0)], old_parent)
    edges = hierarchy.family_edge_index
    if edges is not None:
        edges = node_map[edges]
        edges = edges[:, (edges >= 0).all(dim=0)]
    out = Hierarchy.from_parent(parent, leaves.numel(), edges)
    return (out, node_map) if return_node_map else out


def kept_clusters(node_map: Tensor, num_leaves: int) -> Tensor:
    r"""``[M']`` the old cluster ids (``0..M-1``) of the clusters that
    :func:`induced_hierarchy` keeps, from its ``node_map`` over a tree of
    :obj:`num_leaves` leaves: in their old order, which is the order of
    their new ids."""
    return (node_map[num_leaves:] >= 0).nonzero().view(-1)


def leaf_subset(subset: Tensor, num_leaves: int) -> Tensor:
    r"""``[K]`` the kept leaf ids of :obj:`subset`, leaf ids ``[K]`` or a
    bool mask ``[N]`` over :obj:`num_leaves` leaves, checked as
    :func:`induced_hierarchy` checks them (:class:`ValueError` for an id
    out of range or listed twice)."""
    if not isinstance(subset, Tensor):
        raise TypeError(f"'subset' must be a tensor of leaf ids [K] or a "
                        f"bool mask [N], got {type(subset).__name__}")
    if subset.dtype == torch.bool:
        if subset.dim() != 1 or subset.numel() != num_leaves:
            raise ValueError(
                f"'subset' is a mask of shape {tuple(subset.shape)} but the "
                f"hierarchy has {num_leaves} leaves; a mask needs shape "
                f"[{num_leaves}]")
        leaves = subset.nonzero().view(-1)
    else:
        leaves = check_index(subset, 'subset', rows=None)
        bad = first_out_of_range(leaves.view(1, -1), [num_leaves])
        if bad is not None:
            j = bad[1]
            raise ValueError(
                f"subset[{j}] = {int(leaves[j])} is not a leaf id "
                f"(0..{num_leaves - 1})")
        counts = torch.bincount(leaves, minlength=num_leaves)
        if bool((counts > 1).any()):
            leaf = int((counts > 1).nonzero()[0])
            raise ValueError(
                f"'subset' lists leaf {leaf} {int(counts[leaf])} times; "
                f"every kept leaf must appear once (use subset.unique())")
    if leaves.numel() == 0:
        raise ValueError("'subset' keeps no leaf, but a hierarchy needs at "
                         "least one")
    return leaves


def _node_map(hierarchy: Hierarchy, leaves: Tensor) -> Tensor:
    r"""``[T]`` new id of every node (``-1``: removed): :obj:`leaves` first,
    in their order, then the internal nodes above them, in id order."""
    parent, n = hierarchy.parent, hierarchy.num_leaves
    alive = torch.zeros(hierarchy.num_nodes, dtype=torch.bool,
                        device=parent.device)
    alive[leaves] = True
    # Deepest level first: a node is alive once a child below it is.
    for nodes in reversed(hierarchy.levels[1:]):
        nodes = nodes[alive[nodes]]
        alive[parent[nodes]] = True
    node_map = torch.full_like(parent, -1)
    node_map[leaves] = torch.arange(leaves.numel(), device=parent.device)
    clusters = alive[n:].nonzero().view(-1) + n
    node_map[clusters] = leaves.numel() + torch.arange(
        clusters.numel(), device=parent.device)
    return node_map
