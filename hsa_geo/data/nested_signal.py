r"""A nested signal as PyG data: leaves, leaf edges and the cluster tree."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor
from torch_geometric.data import Data

from hsa_geo.data.hierarchy import Hierarchy


class NestedSignal(Data):
    r"""A nested signal: leaf features, optional leaf edges, and the
    :class:`Hierarchy` over the leaves, stored so that
    :class:`torch_geometric.loader.DataLoader` batches several signals into
    one forest.

    The hierarchy is kept as two edge lists with their own index spaces (the
    leaves ``0..N-1`` and the clusters ``0..M-1``), which collate by plain
    offsets and keep all leaves of a batch first, in order, matching the
    batched ``x``:

    - ``leaf_parent_index`` ``[2, *]``: ``(leaf, cluster)`` for every leaf
      that has a parent;
    - ``cluster_parent_index`` ``[2, *]``: ``(cluster, parent cluster)`` for
      every non-root cluster;
    - ``num_clusters``: :math:`M`.

    Cluster ``c`` is node ``N + c`` of the :class:`Hierarchy` that
    :attr:`hierarchy` returns. A family graph (sparse families) is stored
    by the kinds of its two ends, each in its own index space, so that it
    collates by offsets too: ``family_ll_index`` (leaf to leaf),
    ``family_lc_index`` (leaf to cluster), ``family_cl_index`` (cluster to
    leaf) and ``family_cc_index`` (cluster to cluster), each ``[2, *]``.

    Args:
        x (Tensor, optional): leaf features ``[N, F]`` (or token ids
            ``[N]``).
        edge_index (LongTensor, optional): leaf edges ``[2, E]``.
        edge_attr (Tensor, optional): ``[E, F_e]``.
        y (Tensor, optional): targets.
        leaf_parent_index (LongTensor, optional): see above.
        cluster_parent_index (LongTensor, optional): see above.
        num_clusters (int, optional): see above.
        **kwargs: further attributes, as for
            :class:`~torch_geometric.data.Data`.
    """
    def __init__(self, x: Optional[Tensor] = None,
                 edge_index: Optional[Tensor] = None,
                 edge_attr: Optional[Tensor] = None,
                 y: Optional[Tensor] = None,
                 leaf_parent_index: Optional[Tensor] = None,
                 cluster_parent_index: Optional[Tensor] = None,
                 num_clusters: Optional[int] = None, **kwargs):
        super().__init__(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y,
                         **kwargs)
        if leaf_parent_index is not None:
            self.leaf_parent_index = leaf_parent_index
        if cluster_parent_index is not None:
            self.cluster_parent_index = cluster_parent_index
        if num_clusters is not None:
            self.num_clusters = num_clusters

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy, x: Optional[Tensor] = None,
                       **kwargs) -> 'NestedSignal':
        r"""Stores :obj:`hierarchy` beside the leaf features :obj:`x` (and any
        further attributes, e.g. ``edge_index``, ``y``)."""
        if not isinstance(hierarchy, Hierarchy):
            raise ValueError(f"'hierarchy' must be a Hierarchy, got "
                             f"{type(hierarchy).__name__}")
        n = hierarchy.num_leaves
        if x is not None and x.size(0) != n:
            raise ValueError(
                f"x has {x.size(0)} rows but the hierarchy has {n} leaves; "
                f"row i of x must be leaf i")
        parent = hierarchy.parent
        leaf = (parent[:n] >= 0).nonzero().view(-1)
        cluster = (parent[n:] >= 0).nonzero().view(-1)
        data = cls(
            x=x,
            leaf_parent_index=torch.stack([leaf, parent[leaf] - n]),
            cluster_parent_index=torch.stack(
                [cluster, parent[cluster + n] - n]),
            num_clusters=hierarchy.num_clusters,
            **kwargs,
        )
        if x is None:
            data.num_nodes = n
        edges = hierarchy.family_edge_index
        if edges is not None:
            is_cluster = edges >= n
            local = torch.where(is_cluster, edges - n, edges)
            for key, (ca, cb) in _FAMILY_KEYS.items():
                keep = (is_cluster[0] == ca) & (is_cluster[1] == cb)
                data[key] = local[:, keep]
        data.__dict__['_hierarchy_cache'] = (data._hierarchy_key(), hierarchy)
        return data

    @classmethod
    def from_data(cls, data: Data, hierarchy: Hierarchy) -> 'NestedSignal':
        r"""A :class:`NestedSignal` with every attribute of :obj:`data`
        (``x``, ``edge_index``, ``y``, ...) and :obj:`hierarchy` over its
        nodes, which become the leaves: what the builders in
        :mod:`hsa_geo.transforms` return."""
        if not isinstance(data, Data):
            raise ValueError(f"'data' must be a torch_geometric Data, got "
                             f"{type(data).__name__}")
        n = data.num_nodes
        if n != hierarchy.num_leaves:
            raise ValueError(
                f"data has {n} nodes but the hierarchy has "
                f"{hierarchy.num_leaves} leaves; node i must be leaf i")
        attrs = {k: v for k, v in data.to_dict().items()
                 if k not in _HIERARCHY_KEYS}
        x = attrs.pop('x', None)
        out = cls.from_hierarchy(hierarchy, x, **attrs)
        out.num_nodes = n
        return out

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        n, m = self.num_nodes, self._total_clusters
        if key == 'leaf_parent_index':
            return torch.tensor([[n], [m]])
        if key == 'cluster_parent_index':
            return m
        if key in _FAMILY_KEYS:
            ca, cb = _FAMILY_KEYS[key]
            return torch.tensor([[m if ca else n], [m if cb else n]])
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def _total_clusters(self) -> int:
        m = self._store.get('num_clusters', 0)
        return int(m.sum()) if isinstance(m, Tensor) else int(m)

    def _hierarchy_key(self) -> tuple:
        tensors = [self._store.get(k) for k in _HIERARCHY_KEYS[:-1]]
        # Inference tensors have no version counter: they cannot be changed
        # in place outside inference mode anyway.
        return tuple((id(t), t.data_ptr(),
                      None if t.is_inference() else t._version, t.device,
                      t.shape) if t is not None else None
                     for t in tensors) + (self.num_nodes,
                                          self._total_clusters)

    @property
    def hierarchy(self) -> Hierarchy:
        r"""The :class:`Hierarchy` over the leaves (of all signals in a
        batch: one forest). Built once and cached until the stored tensors
        change."""
        key = self._hierarchy_key()
        cached = self.__dict__.get('_hierarchy_cache')
        if cached is not None and cached[0] == key:
            return cached[1]
        hierarchy = self._build_hierarchy()
        # Data.__setattr__ would put it in the store, where it gets batched.
        self.__dict__['_hierarchy_cache'] = (key, hierarchy)
        return hierarchy

    def _build_hierarchy(self) -> Hierarchy:
        n, m = self.num_nodes, self._total_clusters
        if n is None or n == 0:
            raise ValueError("a NestedSignal needs leaves: set 'x' (or "
                             "'num_nodes')")
        leaf_idx = self._store.get('leaf_parent_index')
        clus_idx = self._store.get('cluster_parent_index')
        if leaf_idx is None or clus_idx is None:
            raise ValueError(
                "this NestedSignal stores no hierarchy: build it with "
                "NestedSignal.from_hierarchy(hierarchy, x, ...)")
        device = leaf_idx.device
        parent = torch.full((n + m, ), -1, dtype=torch.long, device=device)
        for name, idx, rows, cols, offset in (
            ('leaf_parent_index', leaf_idx, n, m, 0),
            ('cluster_parent_index', clus_idx, m, m, n),
        ):
            if (idx.dim() != 2 or idx.size(0) != 2
                    or idx.is_floating_point() or idx.dtype == torch.bool):
                raise ValueError(f"'{name}' must be an integer tensor of "
                                 f"shape [2, *], got {idx.dtype} "
                                 f"{tuple(idx.shape)}")
            for row, size, what in ((0, rows, 'child'), (1, cols, 'parent')):
                bad = (idx[row] < 0) | (idx[row] >= size)
                if bool(bad.any()):
                    j = int(bad.nonzero()[0])
                    raise ValueError(
                        f"{name}[{row}, {j}] = {int(idx[row, j])} is not a "
                        f"valid {what} id (0..{size - 1}); rebuild the signal "
                        f"with NestedSignal.from_hierarchy")
            idx = idx.long()
            counts = torch.bincount(idx[0], minlength=rows)
            if bool((counts > 1).any()):
                j = int((counts > 1).nonzero()[0])
                raise ValueError(f"{name} gives node {j} more than one "
                                 f"parent; a hierarchy is a forest")
            parent[idx[0] + offset] = idx[1] + n
        edges = []
        for key, (ca, cb) in _FAMILY_KEYS.items():
            idx = self._store.get(key)
            if idx is None:
                continue
            if idx.dim() != 2 or idx.size(0) != 2 or idx.is_floating_point():
                raise ValueError(f"'{key}' must be an integer tensor of "
                                 f"shape [2, *], got {idx.dtype} "
                                 f"{tuple(idx.shape)}")
            idx = idx.long()
            edges.append(torch.stack([idx[0] + (n if ca else 0),
                                      idx[1] + (n if cb else 0)]))
        family = torch.cat(edges, dim=1) if edges else None
        return Hierarchy.from_parent(parent, n, family)


# The family graph by the kinds of its ends: (is cluster, is cluster).
_FAMILY_KEYS = {
    'family_ll_index': (False, False),
    'family_lc_index': (False, True),
    'family_cl_index': (True, False),
    'family_cc_index': (True, True),
}
_HIERARCHY_KEYS = ('leaf_parent_index', 'cluster_parent_index',
                   *_FAMILY_KEYS, 'num_clusters')

# Datasets saved with NestedSignal items (e.g. a builder as pre_transform)
# load with torch.load(weights_only=True), as PyG's own data classes do.
if hasattr(torch.serialization, 'add_safe_globals'):
    torch.serialization.add_safe_globals([NestedSignal])
