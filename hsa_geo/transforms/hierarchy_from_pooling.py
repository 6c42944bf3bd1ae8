r"""A :class:`~hsa_geo.data.Hierarchy` from a chain of PyG pooling outputs."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.pool.consecutive import consecutive_cluster

from hsa_geo._checks import check_index, check_int
from hsa_geo.data.hierarchy import Hierarchy

Level = Union[Tensor, Sequence[int]]


def hierarchy_from_pooling(levels: Sequence[Level],
                           num_nodes: Optional[int] = None,
                           family_edge_index: Optional[Tensor] = None
                           ) -> Hierarchy:
    r"""Turns the outputs of a chain of PyG poolings into a
    :class:`~hsa_geo.data.Hierarchy`: the nodes of the input graph are the
    leaves and the clusters of every pooling level the internal nodes.

    Every level is one of

    - a ``cluster`` vector ``[n_l]`` (integer), as
      :func:`~torch_geometric.nn.pool.graclus` or
      :func:`~torch_geometric.nn.pool.voxel_grid` return it (for
      :func:`~torch_geometric.nn.pool.fps`, which returns the indices of
      the sampled points, assign every point to one, e.g. with
      :func:`~torch_geometric.nn.pool.nearest`): node ``i`` of level
      ``l`` goes to cluster ``cluster[i]``. Ids need not be
      consecutive; the clusters are its distinct ids in increasing order,
      relabelled ``0, 1, ...`` as
      :func:`~torch_geometric.nn.pool.consecutive.consecutive_cluster` (and
      so every PyG pooling) numbers the nodes of the pooled graph. ``-1``
      marks a node without parent (a root).
    - a dense assignment matrix ``S`` ``[n_l, c_l]`` (floating), as
      :func:`~torch_geometric.nn.dense.dense_diff_pool` or
      :func:`~torch_geometric.nn.dense.dense_mincut_pool` take it (logits or
      probabilities): node ``i`` goes to cluster ``S[i].argmax()`` (ties:
      the first). The pooled graph has all ``c_l`` clusters, so the next
      level has ``c_l`` entries; clusters that no node chose are dropped
      (with their entry in the next level) and the rest relabelled in
      order.

    Level ``l + 1`` applies to the clusters of level ``l`` (its entry ``j``
    is cluster ``j`` of level ``l``, in the order above), so its length is
    the number of clusters of level ``l``. Level ``0`` applies to the
    leaves. The clusters of the last level are roots: append a level of
    zeros (``torch.zeros(c, dtype=torch.long)``) for a single tree.

    Node ids: leaves ``0..N-1``, then the kept clusters of level 0 in
    order, then those of level 1, ... (the numbering of
    :meth:`Hierarchy.from_assignments`, in which :obj:`family_edge_index`
    is given).

    A batched DiffPool ``S`` ``[B, n, c]`` is not accepted: pass each graph's
    ``S[b][mask[b]]`` and join the hierarchies with
    :meth:`Hierarchy.batch`.

    Args:
        levels (list of Tensor): the cluster vectors or assignment matrices,
            bottom-up.
        num_nodes (int, optional): :math:`N`, checked against level 0.
        family_edge_index (LongTensor, optional): ``[2, E]`` the family graph
            (see :class:`~hsa_geo.data.Hierarchy`).

    Example:
        .. code-block:: python

            cluster = graclus(data.edge_index, num_nodes=data.num_nodes)
            pooled = max_pool(cluster, data)  # node j: cluster j
            s = mlp(pooled.x)  # [pooled.num_nodes, 8] DiffPool scores
            hierarchy = hierarchy_from_pooling(
                [cluster, s, torch.zeros(8, dtype=torch.long)])
    """
    if isinstance(levels, Tensor) or not isinstance(levels, (list, tuple)):
        raise TypeError(
            f"'levels' must be a list of cluster vectors or assignment "
            f"matrices, got {type(levels).__name__}; wrap a single level in "
            f"a list: [cluster]")
    if len(levels) == 0:
        raise ValueError("'levels' is empty; pass at least the pooling of "
                         "the leaves")
    if num_nodes is not None:
        num_nodes = check_int(num_nodes, 'num_nodes')
    if family_edge_index is not None:
        family_edge_index = check_index(family_edge_index,
                                        'family_edge_index')
    assignments: List[Tensor] = []
    kept: Optional[Tensor] = None  # rows of this level that still exist
    expected = num_nodes
    for lvl, level in enumerate(levels):
        index, num_clusters = _cluster_index(level, lvl)
        rows = index.numel()
        if lvl == 0 and rows == 0:
            raise ValueError("levels[0] has no entries; a hierarchy needs at "
                             "least one leaf")
        if expected is not None and rows != expected:
            what = (f"num_nodes={expected}" if lvl == 0 else
                    f"levels[{lvl - 1}] has {expected} clusters")
            raise ValueError(
                f"levels[{lvl}] has {rows} entries (rows) but {what}; level "
                f"{lvl} needs one entry per "
                f"{'leaf' if lvl == 0 else f'cluster of level {lvl - 1}'}")
        if kept is not None:
            index = index[kept]
        # Clusters nobody chose (empty DiffPool columns, or chosen only by
        # dropped rows) go; the rest keep their order.
        has = index >= 0
        used, inverse = torch.unique(index[has], return_inverse=True)
        assign = torch.full_like(index, -1)
        assign[has] = inverse
        assignments.append(assign)
        kept, expected = used, num_clusters
    return Hierarchy.from_assignments(assignments, family_edge_index)


def _cluster_index(level: Level, lvl: int) -> Tuple[Tensor, int]:
    r"""The cluster of every row of one level in ``0..c-1`` (``-1``: a
    root), and the number ``c`` of clusters of the pooled graph."""
    name = f'levels[{lvl}]'
    level = _level_tensor(level, name)
    if level.dim() == 1:
        return _from_cluster_vector(level, name)
    if level.dim() == 2:
        return _from_assignment(level, name)
    if level.dim() == 3:
        raise ValueError(
            f"{name} has shape {tuple(level.shape)}: a batched assignment "
            f"[B, n, c] is not accepted; build one hierarchy per graph from "
            f"S[b][mask[b]] and join them with Hierarchy.batch")
    raise ValueError(f"{name} must be a cluster vector [n] or an assignment "
                     f"matrix [n, c], got shape {tuple(level.shape)}")


def _level_tensor(level: Level, name: str) -> Tensor:
    r""":obj:`level` as a real, non-boolean tensor."""
    if not isinstance(level, Tensor):
        try:
            level = torch.as_tensor(level)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a tensor (a cluster vector or "
                            f"an assignment matrix) ({e})") from None
        if level.numel() == 0:
            level = level.long()
    if level.is_complex() or level.dtype == torch.bool:
        raise TypeError(f"{name} has dtype {level.dtype}; pass an integer "
                        f"cluster vector [n] or a floating assignment "
                        f"matrix [n, c]")
    return level


def _from_cluster_vector(level: Tensor, name: str) -> Tuple[Tensor, int]:
    r"""The consecutive cluster ids of a cluster vector ``[n]`` (``-1``
    kept: roots) and their number."""
    if level.is_floating_point():
        raise TypeError(
            f"{name} is a 1-D floating tensor; a cluster vector must be "
            f"integer (convert with '.long()'), and an assignment matrix "
            f"must be 2-D [n, c]")
    cluster = level.long()
    bad = cluster < -1
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise ValueError(
            f"{name}[{j}] = {int(cluster[j])} is negative; use -1 for a "
            f"node without parent (a root) and cluster ids >= 0")
    has = cluster >= 0
    index = torch.full_like(cluster, -1)
    num = 0
    if bool(has.any()):
        index[has], perm = consecutive_cluster(cluster[has])
        num = perm.numel()
    return index, num


def _from_assignment(level: Tensor, name: str) -> Tuple[Tensor, int]:
    r"""The argmax cluster of every row of an assignment matrix ``[n, c]``
    and ``c``."""
    if not level.is_floating_point():
        raise TypeError(
            f"{name} is a 2-D integer tensor of shape "
            f"{tuple(level.shape)}; an assignment matrix must be "
            f"floating [n, c] and a cluster vector 1-D [n]")
    if level.size(1) == 0 and level.size(0) > 0:
        raise ValueError(f"{name} has shape {tuple(level.shape)}: no "
                         f"clusters to assign the {level.size(0)} rows "
                         f"to; it needs c >= 1 columns")
    finite = torch.isfinite(level)
    if not bool(finite.all()):
        i, j = (int(x) for x in (~finite).nonzero()[0])
        raise ValueError(f"{name}[{i}, {j}] = {float(level[i, j])} is "
                         f"not finite; the argmax of a row needs finite "
                         f"scores")
    index = level.argmax(dim=1) if level.size(0) > 0 else \
        torch.empty(0, dtype=torch.long, device=level.device)
    return index, level.size(1)
