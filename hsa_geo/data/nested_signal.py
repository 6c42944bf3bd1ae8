r"""A nested signal as PyG data: leaves, leaf edges and the cluster tree."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.data.data import BaseData
from torch_geometric.data.storage import GlobalStorage
from torch_geometric.utils import select

from hsa_geo._checks import (check_bool, check_index, check_int,
                             first_out_of_range, is_int)
from hsa_geo.data.hierarchy import Hierarchy, distinct_sibling_pairs
from hsa_geo.data.induced_hierarchy import (induced_hierarchy,
                                            kept_clusters, leaf_subset)
from hsa_geo.data.tensor_state import same_state, tensor_state

# The family graph by the kinds of its ends: (is cluster, is cluster).
FAMILY_KEYS = {
    'family_ll_index': (False, False),
    'family_lc_index': (False, True),
    'family_cl_index': (True, False),
    'family_cc_index': (True, True),
}
# The pairs of ids by the kinds of their rows, shifted by leaves or clusters.
PAIR_KEYS = {'leaf_parent_index': (False, True), **FAMILY_KEYS}
# The keys that store the tree: each in its own index space, none of them
# per node or per edge.
HIERARCHY_KEYS = ('leaf_parent_index', 'cluster_parent_index', *FAMILY_KEYS,
                  'sparse_family', 'num_clusters', 'num_leaves')
# Every key a NestedSignal adds to its data: the tree and the leaf guard.
SIGNAL_KEYS = HIERARCHY_KEYS + ('leaf_index', )
# The counts of a signal: an int each, a [B] tensor in a batch.
COUNT_KEYS = ('num_clusters', 'num_leaves')

_CHANGED = ("a PyG operation (subgraph, NeighborLoader, RemoveIsolatedNodes, "
            "VirtualNode, ...) changed the nodes without the tree; use "
            "NestedSignal.subgraph, or rebuild the signal with "
            "NestedSignal.from_hierarchy")

# What collating batches of nested signals says: their counts (and PyG's
# batch vectors, of types with no rows in a batch) are already per signal.
REBATCH_REFUSED = (
    "a Batch of {cls}s cannot be batched again: batch the signals "
    "themselves, e.g. Batch.from_data_list(batch_a.to_data_list() + "
    "batch_b.to_data_list())")
# What concat of nested signals says (see NestedSignal.concat).
CONCAT_REFUSED = (
    "{cls}.concat is not supported: the tree of a signal is over its own "
    "nodes. For several signals side by side (a forest, one tree each), "
    "batch them: Batch.from_data_list([a, b]) or a DataLoader; for one tree "
    "over all their nodes, build that Hierarchy and {cls}.from_hierarchy")


class NestedSignalStorage(GlobalStorage):
    r"""The storage of a :class:`NestedSignal`.

    PyG tells per-node and per-edge attributes apart by their size when it
    selects, filters or pads nodes and edges (``Data.subgraph``,
    ``NeighborLoader``, ``RemoveIsolatedNodes``, ``VirtualNode``, ...). The
    keys of the tree live in their own index spaces, so here they are neither,
    whatever their size: such an operation leaves them unchanged, and
    :attr:`NestedSignal.hierarchy` then finds that the nodes no longer match
    the leaves. ``leaf_index`` is per node only. Nor are the per-cluster
    attributes (keys starting with ``cluster_``, see
    :func:`is_cluster_key`), whose rows follow the clusters: only
    :meth:`NestedSignal.subgraph` and the loaders of :mod:`hsa_geo.loader`
    select them. A list named as an edge attribute on a graph with as
    many edges as nodes is per edge (:func:`is_edge_list`). The decoded
    hierarchy is cached here, and is neither pickled nor deep-copied.

    A count (``num_clusters``, ``num_leaves``) given as a 0-d integer
    tensor is stored as an :obj:`int`, as :class:`NestedSignal` stores it,
    so that the signal batches with others. Once a signal with a tree gets
    its leaves (``x`` or ``num_nodes`` set after construction), it gets the
    leaf keys ``num_leaves`` and ``leaf_index`` it lacks.
    """
    def is_node_attr(self, key: str) -> bool:
        if key in HIERARCHY_KEYS or is_cluster_key(key) or \
                is_edge_list(self, key):
            return False
        return super().is_node_attr(key)

    def is_edge_attr(self, key: str) -> bool:
        if key in SIGNAL_KEYS or is_cluster_key(key):
            return False
        return is_edge_list(self, key) or super().is_edge_attr(key)

    def __setitem__(self, key: str, value: Any):
        if key in COUNT_KEYS and isinstance(value, Tensor) and \
                value.dim() == 0 and not value.is_floating_point() and \
                not value.is_complex() and value.dtype != torch.bool:
            # Also what separating a batch gives (see __cat_dim__); a
            # tensor among the ints of other signals would not collate.
            value = int(value)
        super().__setitem__(key, value)
        if key in ('x', 'num_nodes'):
            _default_leaf_keys(self)

    def __getstate__(self) -> Dict[str, Any]:
        out = super().__getstate__()
        # Derived data, rebuilt on use; a pickled Hierarchy would not load
        # with torch.load(weights_only=True).
        out.pop('_hierarchy_cache', None)
        out.pop('_cached_attr', None)
        return out


class NestedSignal(Data):
    r"""A nested signal: leaf features, optional leaf edges, and the
    :class:`Hierarchy` over the leaves, stored so that
    :class:`torch_geometric.loader.DataLoader` batches several signals into
    one forest.

    The hierarchy is kept as edge lists with their own index spaces (the
    leaves ``0..N-1`` and the clusters ``0..M-1``), which collate by plain
    offsets and keep all leaves of a batch first, in order, matching the
    batched ``x``:

    - ``leaf_parent_index`` ``[2, *]``: ``(leaf, cluster)`` for every leaf
      that has a parent;
    - ``cluster_parent_index`` ``[2, *]``: ``(cluster, parent cluster)`` for
      every non-root cluster;
    - ``num_clusters``: :math:`M`; ``num_leaves``: :math:`N`, the leaves of
      the tree (both an ``int``, a ``[B]`` tensor in a batch);
    - the family graph (sparse families) by the kinds of its two ends, each
      in its own index space: ``family_ll_index`` (leaf to leaf),
      ``family_lc_index`` (leaf to cluster), ``family_cl_index`` (cluster to
      leaf) and ``family_cc_index`` (cluster to cluster), each ``[2, *]``,
      empty without a family graph;
    - ``sparse_family`` ``[M]`` (bool): ``True`` where the family of a
      cluster attends along the family graph only, ``False`` where it is
      dense (every sibling sees every other one). A batch may mix signals
      with and without a family graph: each keeps its own attention.

    Cluster ``c`` is node ``N + c`` of the :class:`Hierarchy` that
    :attr:`hierarchy` returns. A signal built by calling
    :class:`NestedSignal` with ``leaf_parent_index``,
    ``cluster_parent_index`` and ``num_clusters`` (an :obj:`int` or a 0-d
    integer tensor) gets the other keys by default, so that it batches with
    any other signal, in any order: no family graph (every family sparse if
    family keys come without ``sparse_family``, as earlier versions stored
    them), ``num_leaves`` the number of nodes (the rows of ``x``, or
    ``num_nodes``; given at construction or set afterwards). So do the
    signals of :meth:`~torch_geometric.data.Batch.to_data_list` and of a
    dataset. A signal that never gets its leaves (neither ``x`` nor
    ``num_nodes``) has no ``num_leaves`` and does not batch. These keys are
    neither node nor edge attributes (see :class:`NestedSignalStorage`);
    the cached hierarchy is never saved, so ``torch.save`` and
    ``torch.load(..., weights_only=True)`` round-trip a signal.

    Per-cluster attributes are keys starting with ``cluster_`` (e.g.
    ``cluster_kind`` ``[M]``, ``cluster_grid_pos`` ``[M, 2]`` of the
    builders in :mod:`hsa_geo.transforms`), row ``c`` for cluster ``c``:
    they are concatenated in a batch (the clusters of a batch are those of
    its signals, one after the other), and :meth:`subgraph` keeps the rows
    of the kept clusters.

    Beside the tree, ``leaf_index`` ``[N]`` (``0..N-1``) is a node attribute:
    it moves with the nodes through any PyG operation, so that
    :attr:`hierarchy` raises a :class:`ValueError` once the nodes were
    dropped, added or reordered without the tree, instead of pairing leaves
    with the wrong rows. :meth:`subgraph` (and so
    :class:`~torch_geometric.transforms.LargestConnectedComponents`) returns
    the signal with the induced hierarchy (see
    :func:`~hsa_geo.data.induced_hierarchy`); ``edge_subgraph`` keeps all
    nodes and the hierarchy. :meth:`subgraph` of a
    :class:`~torch_geometric.data.Batch` subgraphs its signals one by one
    and batches them again (see there).

    Args:
        x (Tensor, optional): leaf features ``[N, F]`` (or token ids
            ``[N]``).
        edge_index (LongTensor, optional): leaf edges ``[2, E]``.
        edge_attr (Tensor, optional): ``[E, F_e]``.
        y (Tensor, optional): targets.
        leaf_parent_index (LongTensor, optional): see above.
        cluster_parent_index (LongTensor, optional): see above.
        num_clusters (int or Tensor, optional): see above (an int >= 0 or
            a 0-d integer tensor; anything else raises).
        **kwargs: further attributes, as for
            :class:`~torch_geometric.data.Data` (the other keys above among
            them).
    """
    def __init__(self, x: Optional[Tensor] = None,
                 edge_index: Optional[Tensor] = None,
                 edge_attr: Optional[Tensor] = None,
                 y: Optional[Tensor] = None,
                 leaf_parent_index: Optional[Tensor] = None,
                 cluster_parent_index: Optional[Tensor] = None,
                 num_clusters: Optional[int] = None, **kwargs):
        super().__init__()
        # Its own storage: the tree's keys are never node or edge attributes.
        self.__dict__['_store'] = NestedSignalStorage(_parent=self)
        attrs = dict(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y,
                     leaf_parent_index=leaf_parent_index,
                     cluster_parent_index=cluster_parent_index,
                     num_clusters=num_clusters, **kwargs)
        for key, value in attrs.items():
            setattr(self, key, value)
        _check_num_clusters(self._store)
        self._default_keys()

    def _default_keys(self):
        r"""Adds the keys a signal with a tree may lack, so that it collates
        with others (PyG takes a batch's keys from its first element)."""
        store = self._store
        lpi, m = store.get('leaf_parent_index'), store.get('num_clusters')
        # Only single signals: a collated store (e.g. an InMemoryDataset's)
        # must keep the keys its slices describe.
        if not isinstance(lpi, Tensor) or isinstance(m, Tensor):
            return
        kw = dict(dtype=torch.long, device=lpi.device)
        sparse = any(key in store for key in FAMILY_KEYS)
        for key in FAMILY_KEYS:
            if key not in store:
                store[key] = torch.empty(2, 0, **kw)
        if 'sparse_family' not in store and is_int(m, low=0):
            # Earlier signals with family keys had every family sparse.
            store['sparse_family'] = torch.full((m, ), sparse,
                                                dtype=torch.bool,
                                                device=lpi.device)
        _default_leaf_keys(store)

    def __getstate__(self) -> Dict[str, Any]:
        # The attribute classes of PyG's feature and graph stores are the same
        # for every Data, and no globals torch.load(weights_only=True)
        # allows: set again by Data.__init__ on loading.
        return {key: value for key, value in self.__dict__.items()
                if key not in ('_edge_attr_cls', '_tensor_attr_cls')}

    def __setstate__(self, mapping: Dict[str, Any]):
        Data.__init__(self)
        super().__setstate__(mapping)
        # Pickles of earlier versions: a plain storage and a cached tree.
        self.__dict__.pop('_hierarchy_cache', None)
        store = self.__dict__.get('_store')
        if store is not None and not isinstance(store, NestedSignalStorage):
            new = NestedSignalStorage(_parent=self)
            for key, value in store.items():
                new[key] = value
            self.__dict__['_store'] = new
            self._default_keys()

    # Construction ##########################################################

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy, x: Optional[Tensor] = None,
                       **kwargs) -> 'NestedSignal':
        r"""Stores :obj:`hierarchy` beside the leaf features :obj:`x`
        (``[N, *]``, row ``i`` for leaf ``i``) and any further attributes
        (e.g. ``edge_index``, ``y``)."""
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"'hierarchy' must be a Hierarchy, got "
                            f"{type(hierarchy).__name__}; build one with "
                            f"Hierarchy.from_parent or from_assignments")
        n = hierarchy.num_leaves
        if x is not None:
            _check_rows(x, 'x', n)
        taken = [key for key in SIGNAL_KEYS if key in kwargs]
        if taken:
            raise ValueError(
                f"'{taken[0]}' is derived from the hierarchy; do not pass "
                f"it to from_hierarchy (change the Hierarchy instead)")
        if kwargs.get('num_nodes', n) != n:
            raise ValueError(f"num_nodes={kwargs['num_nodes']!r} but the "
                             f"hierarchy has {n} leaves; leave it out")
        if x is None:
            kwargs['num_nodes'] = n
        data = cls(x=x, **tree_keys(hierarchy), **kwargs)
        check_cluster_attrs(data, hierarchy.num_clusters)
        data._store.__dict__['_hierarchy_cache'] = (data._cache_state(),
                                                    hierarchy)
        return data

    @classmethod
    def from_data(cls, data: Data, hierarchy: Hierarchy,
                  cluster_attrs_of_new_tree: bool = False) -> 'NestedSignal':
        r"""A :class:`NestedSignal` with every attribute of :obj:`data`
        (``x``, ``edge_index``, ``y``, ...) and :obj:`hierarchy` over its
        nodes, which become the leaves: what the builders in
        :mod:`hsa_geo.transforms` return. A tree that :obj:`data` already
        stores is replaced, and its per-cluster attributes (``cluster_*``)
        are dropped with it, unless :obj:`cluster_attrs_of_new_tree` says
        that they were already made for :obj:`hierarchy` (one row per
        cluster, checked)."""
        if not isinstance(data, Data):
            raise TypeError(f"'data' must be a torch_geometric Data, got "
                            f"{type(data).__name__}")
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"'hierarchy' must be a Hierarchy, got "
                            f"{type(hierarchy).__name__}")
        n = data.num_nodes
        if n != hierarchy.num_leaves:
            raise ValueError(
                f"data has {n} nodes but the hierarchy has "
                f"{hierarchy.num_leaves} leaves; node i must be leaf i")
        # The per-cluster attributes of a replaced tree go with it.
        replaced = 'leaf_parent_index' in data and \
            not check_bool(cluster_attrs_of_new_tree,
                           'cluster_attrs_of_new_tree')
        attrs = {k: v for k, v in data.to_dict().items()
                 if k not in SIGNAL_KEYS and
                 not (replaced and is_cluster_key(k))}
        x = attrs.pop('x', None)
        return cls.from_hierarchy(hierarchy, x, **attrs)

    # Batching ##############################################################

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if isinstance(self, Batch):  # (only collating asks a batch)
            raise ValueError(REBATCH_REFUSED.format(cls='NestedSignal'))
        # Tree ids shift by the leaves and clusters of the signals before;
        # leaf_index by their rows, so that a batch checks every row.
        if key == 'leaf_index':
            return self._store.num_nodes
        if key == 'cluster_parent_index':
            return self._total_clusters()
        kinds = PAIR_KEYS.get(key)
        if kinds is not None:
            n, m = self._total_leaves(), self._total_clusters()
            return _column(m if kinds[0] else n, m if kinds[1] else n)
        return super().__inc__(key, value, *args, **kwargs)

    def concat(self, data: Data) -> 'NestedSignal':
        r"""Refused: a signal's tree is over its own nodes, so the nodes of
        another signal would have no place in it. Raises
        :class:`ValueError`."""
        raise ValueError(CONCAT_REFUSED.format(cls='NestedSignal'))

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        # One count per signal: separating a batch gives it back as a 0-d
        # tensor (stored as an int), not as a [1] tensor.
        if key in COUNT_KEYS:
            return None
        return super().__cat_dim__(key, value, *args, **kwargs)

    def _total_clusters(self) -> int:
        return _count(self._store.get('num_clusters', 0), 'num_clusters')

    def _total_leaves(self) -> Optional[int]:
        n = self._store.get('num_leaves')
        return self._store.num_nodes if n is None else _count(n, 'num_leaves')

    # The hierarchy #########################################################

    def _cache_state(self) -> tuple:
        r"""What the hierarchy is decoded from. Tensors are compared by
        identity (the cache holds them, so their ids are not reused) and
        version (in-place changes)."""
        state = [tensor_state(self._store.get(key)) for key in SIGNAL_KEYS]
        x = self._store.get('x')
        rows = tuple(x.shape[:1]) if isinstance(x, Tensor) else None
        return tuple(state) + ((None, (self.num_nodes, rows)), )

    @property
    def hierarchy(self) -> Hierarchy:
        r"""The :class:`Hierarchy` over the leaves (of all signals in a
        batch: one forest). Built once and cached until the stored tensors
        change. Raises :class:`ValueError` if the nodes no longer match the
        leaves of the tree (``x`` replaced, or nodes dropped, added or
        reordered by a PyG operation)."""
        state = self._cache_state()
        cached = self._store.__dict__.get('_hierarchy_cache')
        if cached is not None and same_state(cached[0], state):
            return cached[1]
        hierarchy = self._build_hierarchy()
        # Beside the stored keys, not among them: it is not batched or saved.
        self._store.__dict__['_hierarchy_cache'] = (state, hierarchy)
        return hierarchy

    def _build_hierarchy(self) -> Hierarchy:
        store = self._store
        num_nodes = self.num_nodes
        if not num_nodes:
            raise ValueError("a NestedSignal needs leaves: set 'x' (or "
                             "'num_nodes')")
        if 'leaf_parent_index' not in store or \
                'cluster_parent_index' not in store:
            raise ValueError(
                "this NestedSignal stores no hierarchy: build it with "
                "NestedSignal.from_hierarchy(hierarchy, x, ...)")
        _check_tree_keys(store)
        n, m = self._total_leaves(), self._total_clusters()
        self._check_leaves(num_nodes, n)
        check_cluster_attrs(self, m)
        parent = _parent_vector(store, n, m)
        sparse = _sparse_flags(store, m, parent.device)
        family = _family_graph(store, parent, n, sparse)
        return Hierarchy.from_parent(parent, n, family)

    def _check_leaves(self, num_nodes: int, n: int):
        r"""The nodes are the leaves ``0..n-1``, in order."""
        if num_nodes != n:
            what = 'num_nodes' if 'num_nodes' in self._store else 'rows of x'
            raise ValueError(f"this NestedSignal has {num_nodes} nodes "
                             f"({what}) but its hierarchy has {n} leaves: "
                             f"{_CHANGED}")
        x = self._store.get('x')
        if isinstance(x, Tensor) and (x.dim() == 0 or x.size(0) != n):
            rows = x.size(0) if x.dim() else 'no'
            raise ValueError(
                f"'x' has {rows} rows but the hierarchy has {n} leaves; row "
                f"i of x must be leaf i: set x to [{n}, F] features, or "
                f"rebuild the signal for the new leaves with "
                f"NestedSignal.from_hierarchy")
        index = self._store.get('leaf_index')
        if index is None:
            return
        index = check_index(index, 'leaf_index', rows=None)
        expected = torch.arange(n, device=index.device)
        if index.numel() != n or not torch.equal(index, expected):
            bad = (index != expected[:index.numel()]).nonzero()
            j = int(bad[0]) if bad.numel() else min(index.numel(), n)
            got = int(index[j]) if j < index.numel() else 'missing'
            raise ValueError(f"leaf_index[{j}] is {got}, not {j}: the nodes "
                             f"were dropped, added or reordered; {_CHANGED}")

    # PyG operations ########################################################

    def subgraph(self, subset: Tensor) -> 'NestedSignal':
        r"""The signal induced by the leaves :obj:`subset` (``[K]`` distinct
        leaf ids or an ``[N]`` mask): node attributes and leaf edges as
        :meth:`torch_geometric.data.Data.subgraph` selects them (leaf
        ``subset[i]`` becomes leaf ``i``), the hierarchy that
        :func:`~hsa_geo.data.induced_hierarchy` induces on them (each family
        keeps its family graph or stays dense), and the rows of the kept
        clusters of the per-cluster attributes (``cluster_*``), in the
        induced tree's order.

        Of a :class:`~torch_geometric.data.Batch`, the batch of the
        subgraphs of its signals: :obj:`subset` must keep at least one leaf
        of every signal and list the kept leaves of each signal together,
        in the order of the signals (as a mask, or sorted ids, does);
        otherwise it raises :class:`ValueError`."""
        if isinstance(self, Batch):
            leaves = leaf_subset(subset, self.num_nodes)
            parts = split_by_signal(leaves, self.ptr, 'subset')
            check_kept_leaves(torch.tensor([p.numel() for p in parts]),
                              "'subset'")
            return map_batch(self, lambda i, data: data.subgraph(parts[i]),
                             'subgraph')
        hierarchy = self.hierarchy
        induced, node_map = induced_hierarchy(hierarchy, subset,
                                              return_node_map=True)
        n, k = hierarchy.num_leaves, induced.num_leaves
        clusters = kept_clusters(node_map, n)
        sparse = _sparse_flags(self._store, hierarchy.num_clusters,
                               hierarchy.device)[clusters]
        keys = tree_keys(induced)
        edges = induced.family_edge_index
        if edges is not None:
            # The pairs of dense families were only listed for the batch.
            edges = edges[:, sparse[induced.parent[edges[0]] - k]]
            keys.update(_split_family(edges, k))
        keys['sparse_family'] = sparse
        keys.update(select_cluster_attrs(self, clusters,
                                         hierarchy.num_clusters))
        data = super().subgraph(subset)
        for key, value in keys.items():
            data[key] = value
        return data


def is_edge_list(data: Any, key: str) -> bool:
    r"""Whether :obj:`key` of :obj:`data` (a ``Data`` or its storage) is a
    list or tuple named as an edge attribute (``'edge'`` in the name) on a
    graph with as many edges as nodes. PyG's
    :meth:`~torch_geometric.data.Data.is_node_attr` takes it for a node
    attribute (it goes by a list's length alone), so a subgraph would
    select it by the kept nodes and a permutation of the nodes would move
    it; it is an edge attribute."""
    value = data[key]
    return 'edge' in key and isinstance(value, (list, tuple)) and \
        'edge_index' in data and data.edge_index is not None and \
        len(value) == data.num_edges == data.num_nodes


def edge_lists(data: Data) -> List[str]:
    r"""The keys of :obj:`data` that :func:`is_edge_list` holds for."""
    return [key for key in data.keys() if is_edge_list(data, key)]


def is_cluster_key(key: str) -> bool:
    r"""Whether :obj:`key` names a per-cluster attribute of a
    :class:`NestedSignal`: it starts with ``cluster_`` and is not
    ``cluster_parent_index`` (the tree)."""
    return key.startswith('cluster_') and key not in HIERARCHY_KEYS


def select_cluster_attrs(data: Data, clusters: Tensor,
                         num_clusters: int) -> Dict[str, Any]:
    r"""The per-cluster attributes of :obj:`data` (see
    :func:`is_cluster_key`), each with one row per cluster of its
    :obj:`num_clusters`, at the rows :obj:`clusters` (the old ids of the
    kept clusters, in their new order).

    Raises:
        TypeError: if such an attribute is neither a tensor nor a list.
        ValueError: if it does not have one row per cluster, or is a list
            in a batch (PyG batches lists as the list of the signals'
            lists).
    """
    out = {}
    for key in cluster_keys(data):
        value = data[key]
        dim = _cluster_rows_dim(data, key, value, num_clusters)
        index = clusters.to(value.device) \
            if isinstance(value, Tensor) else clusters
        out[key] = select(value, index, dim)
    return out


def check_cluster_attrs(data: Data, num_clusters: int):
    r"""Raises as :func:`select_cluster_attrs` does unless every
    per-cluster attribute of :obj:`data` has :obj:`num_clusters` rows."""
    for key in cluster_keys(data):
        _cluster_rows_dim(data, key, data[key], num_clusters)


def cluster_keys(data: Data) -> List[str]:
    r"""The keys of the per-cluster attributes of :obj:`data` (see
    :func:`is_cluster_key`), without the ``cluster_*_batch`` and
    ``cluster_*_ptr`` that ``follow_batch`` adds to a batch (the signal of
    each cluster, and where each signal's clusters start)."""
    return [key for key in data.keys()
            if is_cluster_key(key) and not is_follow_batch_key(data, key)]


def is_follow_batch_key(data: BaseData, key: str,
                        store_key: Optional[Any] = None) -> bool:
    r"""Whether :obj:`key` (of the store :obj:`store_key` of a
    heterogeneous batch) is one that ``follow_batch`` added to the batch
    :obj:`data`: ``<attr>_batch`` or ``<attr>_ptr`` of a batched
    ``<attr>``."""
    if not isinstance(data, Batch) or not key.endswith(('_batch', '_ptr')):
        return False
    slices = data._slice_dict if store_key is None else \
        data._slice_dict.get(store_key, {})
    return key.rsplit('_', 1)[0] in slices


def _cluster_rows_dim(data: Data, key: str, value: Any,
                      num_clusters: int) -> int:
    r"""The dimension of the rows of per-cluster attribute :obj:`key`,
    checked to hold one row per cluster."""
    if isinstance(value, Tensor) and value.dim() > 0:
        dim = data.__cat_dim__(key, value)
        rows = value.size(dim)
    elif isinstance(value, list) and isinstance(data, Batch):
        # Its length is the number of signals: rows read from it would
        # belong to other clusters whenever the counts happen to agree.
        raise ValueError(
            f"'{key}' is a list, which PyG batches as the list of the "
            f"signals' lists, not one row per cluster of the batch; store "
            f"per-cluster values that are batched as a tensor "
            f"[{num_clusters}, *] (e.g. ids into a list kept aside), or "
            f"read the list from each signal (batch.to_data_list())")
    elif isinstance(value, list):
        dim, rows = 0, len(value)
    else:
        kind = '0-d tensor' if isinstance(value, Tensor) else \
            type(value).__name__
        raise TypeError(
            f"'{key}' is a {kind}, but keys starting with "
            f"'cluster_' hold one row per cluster (row c for cluster "
            f"c); store it as a tensor [{num_clusters}, *] or rename it")
    if rows != num_clusters:
        raise ValueError(
            f"'{key}' has {rows} rows but the hierarchy has "
            f"{num_clusters} clusters; keys starting with 'cluster_' "
            f"hold one row per cluster (row c for cluster c, node "
            f"N + c): give it {num_clusters} rows or rename it")
    return dim


def split_by_signal(ids: Tensor, ptr: Tensor, name: str) -> List[Tensor]:
    r"""The node ids :obj:`ids` ``[K]`` of a batch whose signals start at
    :obj:`ptr` ``[B + 1]``, split by signal as ids within each signal.

    Raises:
        ValueError: if the ids of a signal do not come together, in the
            order of the signals.
    """
    ptr = ptr.to(ids.device)
    signal = torch.bucketize(ids, ptr[1:], right=True)
    back = (signal[1:] < signal[:-1]).nonzero().view(-1)
    if back.numel():
        j = int(back[0]) + 1
        raise ValueError(
            f"{name}[{j}] = {int(ids[j])} is a node of signal "
            f"{int(signal[j])} of this batch, after one of signal "
            f"{int(signal[j - 1])}; a batch keeps the nodes of each signal "
            f"together, in the order of the signals: sort the ids (e.g. "
            f"{name}.sort().values), or subgraph the signals before "
            f"batching them")
    counts = torch.bincount(signal, minlength=ptr.numel() - 1)
    return list((ids - ptr[signal]).split(counts.tolist()))


def check_kept_leaves(counts: Tensor, name: str):
    r"""Raises :class:`ValueError` unless every signal of a batch keeps
    some of its leaves (:obj:`counts` ``[B]``) in a subgraph."""
    if bool((counts == 0).any()):
        i = int((counts == 0).nonzero()[0])
        raise ValueError(
            f"{name} keeps no leaf of signal {i} of this batch, but every "
            f"signal needs leaves; remove that signal from the list before "
            f"batching")


def map_batch(batch: Batch, fn: Callable[[int, BaseData], BaseData],
              operation: str) -> Batch:
    r"""The batch of ``fn(i, data)`` for every signal ``data`` of
    :obj:`batch` (``i``: its position), batched as :obj:`batch` was (the
    same ``follow_batch`` keys).

    Raises:
        ValueError: if :obj:`batch` has an attribute that was set after
            batching: it cannot be split among the signals.
    """
    follow = set()
    for store in batch.stores:
        slices = batch._slice_dict if store._key is None else \
            batch._slice_dict.get(store._key, {})
        for key in store.keys():
            if key in slices or key in ('batch', 'ptr', 'num_nodes'):
                continue
            if is_follow_batch_key(batch, key, store._key):
                follow.add(key.rsplit('_', 1)[0])
            else:
                where = f"['{store._key}']" if store._key else ''
                raise ValueError(
                    f"'{key}'{where} was set on this batch after batching "
                    f"and cannot be split among its signals, which "
                    f"{operation} works on one by one; set it on the "
                    f"signals before batching, or apply {operation} to "
                    f"them (batch.to_data_list()) and batch the results")
    items = [fn(i, data) for i, data in enumerate(batch.to_data_list())]
    return Batch.from_data_list(items, follow_batch=sorted(follow))


def tree_keys(hierarchy: Hierarchy) -> Dict[str, Any]:
    r"""The keys under which a :class:`NestedSignal` stores
    :obj:`hierarchy` (see there), ``leaf_index`` included."""
    n, m, parent = hierarchy.num_leaves, hierarchy.num_clusters, \
        hierarchy.parent
    leaf = (parent[:n] >= 0).nonzero().view(-1)
    cluster = (parent[n:] >= 0).nonzero().view(-1)
    edges = hierarchy.family_edge_index
    keys = dict(
        leaf_parent_index=torch.stack([leaf, parent[leaf] - n]),
        cluster_parent_index=torch.stack([cluster, parent[cluster + n] - n]),
        num_clusters=m,
        num_leaves=n,
        leaf_index=torch.arange(n, device=parent.device),
        sparse_family=torch.full((m, ), edges is not None, dtype=torch.bool,
                                 device=parent.device),
    )
    if edges is None:
        edges = parent.new_empty(2, 0)
    keys.update(_split_family(edges, n))
    return keys


def _split_family(edges: Tensor, n: int) -> Dict[str, Tensor]:
    r"""The family graph ``[2, E]`` (node ids) by the kinds of its ends."""
    if edges.numel() == 0:  # boolean masks cost a builder ~0.1 ms a tree
        return {key: edges.new_empty(2, 0) for key in FAMILY_KEYS}
    is_cluster = edges >= n
    local = torch.where(is_cluster, edges - n, edges)
    return {
        key: local[:, (is_cluster[0] == ca) & (is_cluster[1] == cb)]
        for key, (ca, cb) in FAMILY_KEYS.items()
    }


def _check_num_clusters(store: GlobalStorage):
    r"""Raises unless ``num_clusters`` (if given) is an ``int`` >= 0 (a 0-d
    integer tensor is stored as one), or the ``[B]`` counts of a collated
    store (with its ``[B]`` ``num_leaves``, as a dataset loads it); an
    integer of another type (NumPy's) is stored as an ``int``."""
    m = store.get('num_clusters')
    if m is None or (type(m) is int and m >= 0):
        return
    n = store.get('num_leaves')
    if isinstance(m, Tensor):
        if m.dim() == 1 and isinstance(n, Tensor) and n.shape == m.shape:
            return  # collated: checked when the tree is read
        raise TypeError(
            f"'num_clusters' must be an int or a 0-d integer tensor (the "
            f"clusters of one signal), got a {m.dtype} tensor of shape "
            f"{tuple(m.shape)}; pass int(num_clusters)")
    store['num_clusters'] = check_int(m, 'num_clusters', low=0)


def _default_leaf_keys(store: GlobalStorage):
    r"""Adds ``num_leaves`` and ``leaf_index`` to the store of a single
    signal that has a tree and leaves (``x`` or ``num_nodes``) but lacks
    them."""
    lpi, m = store.get('leaf_parent_index'), store.get('num_clusters')
    # A collated store ([B] counts) keeps the keys its slices describe.
    if not isinstance(lpi, Tensor) or isinstance(m, Tensor):
        return
    if 'num_leaves' not in store:
        n = store.get('num_nodes')
        x = store.get('x')
        if n is None and isinstance(x, Tensor) and x.dim() > 0:
            n = x.size(0)
        if is_int(n, low=0):
            store['num_leaves'] = n
    n = store.get('num_leaves')
    if 'leaf_index' not in store and is_int(n, low=0):
        store['leaf_index'] = torch.arange(n, dtype=torch.long,
                                           device=lpi.device)


# Decoding the stored keys ##################################################


def _check_rows(x: Any, name: str, n: int):
    if not isinstance(x, Tensor):
        raise TypeError(f"'{name}' must be a tensor with one row per leaf "
                        f"([{n}, F] features or [{n}] token ids), got "
                        f"{type(x).__name__}; convert it with torch.tensor")
    if x.dim() == 0 or x.size(0) != n:
        rows = x.size(0) if x.dim() else 'no'
        raise ValueError(f"{name} has {rows} rows but the hierarchy has {n} "
                         f"leaves; row i of {name} must be leaf i")


@lru_cache(maxsize=4096)
def _column(a: int, b: int) -> Tensor:
    r"""``[[a], [b]]``: the increment of a pair key, made once per value (a
    batch asks for one per signal and key). Created in inference mode, so
    that no in-place change can alter the shared tensor."""
    with torch.inference_mode():
        return torch.tensor([[a], [b]])


def _count(value: Any, name: str) -> int:
    r"""An ``int`` count, or the total of a batch's ``[B]`` counts."""
    if type(value) is int and value >= 0:  # the common case, first
        return value
    if not isinstance(value, Tensor):
        return check_int(value, name, low=0)
    if value.dtype == torch.bool or value.is_floating_point() or \
            value.is_complex() or value.dim() > 1:
        raise TypeError(f"'{name}' must be an int (a [B] integer tensor in a "
                        f"batch), got a {value.dtype} tensor of shape "
                        f"{tuple(value.shape)}")
    if bool((value < 0).any()):
        raise ValueError(f"'{name}' must not be negative, got "
                         f"{value.tolist()}")
    return int(value.sum())


def _parent_vector(store, n: int, m: int) -> Tensor:
    r"""``[N + M]`` parent of every node, from the two parent indices."""
    device = store['leaf_parent_index'].device
    parent = torch.full((n + m, ), -1, dtype=torch.long, device=device)
    for name, rows, offset in (('leaf_parent_index', n, 0),
                               ('cluster_parent_index', m, n)):
        idx = _checked_pairs(store, name, rows, m, ('child', 'parent'))
        counts = torch.bincount(idx[0], minlength=rows)
        if idx.numel() > 0 and int(counts.max()) > 1:
            j = int((counts > 1).nonzero()[0])
            raise ValueError(f"{name} gives node {j} more than one "
                             f"parent; a hierarchy is a forest")
        parent[idx[0] + offset] = idx[1] + n
    return parent


def _checked_pairs(store, name: str, rows: int, cols: int,
                   what: Tuple[str, str]) -> Tensor:
    r"""``store[name]`` as ``[2, E]`` ids in ``0..rows-1`` (row 0) and
    ``0..cols-1`` (row 1)."""
    idx = check_index(store[name], name)
    if idx.numel() == 0:
        return idx
    # The bounds of both rows at once; the first bad entry only on failure.
    (low0, low1), (high0, high1) = torch.stack(idx.aminmax(dim=1)).tolist()
    if min(low0, low1) >= 0 and high0 < rows and high1 < cols:
        return idx
    row, j = first_out_of_range(idx, (rows, cols))
    size = (rows, cols)[row]
    raise ValueError(
        f"{name}[{row}, {j}] = {int(idx[row, j])} is not a valid "
        f"{what[row]} id (0..{size - 1}); rebuild the signal with "
        f"NestedSignal.from_hierarchy")


def _check_tree_keys(store):
    r"""Raises :class:`ValueError` where a key of the tree that the others
    need is missing (an operation dropped it: ``DataLoader(exclude_keys=
    ...)``, ``del``), rather than decoding another tree or family graph.
    Signals get every key when built (:meth:`NestedSignal._default_keys`),
    so a missing one was removed."""
    fix = ("an operation removed a key (DataLoader(exclude_keys=...), "
           "del, ...); keep the tree's keys, or rebuild the signal with "
           "NestedSignal.from_hierarchy")
    if 'num_clusters' not in store:
        raise ValueError(f"this NestedSignal stores a tree but no "
                         f"'num_clusters' (the number of its clusters): "
                         f"{fix}")
    present = [key for key in FAMILY_KEYS if key in store]
    if not present:  # no family graph: every family dense
        return
    missing = [key for key in FAMILY_KEYS if key not in store]
    if missing:
        raise ValueError(
            f"the family graph is stored in the four keys "
            f"{', '.join(FAMILY_KEYS)} (empty [2, 0] where a kind has no "
            f"pairs); this NestedSignal lacks {', '.join(missing)}, so its "
            f"pairs would be lost: {fix}")
    if 'sparse_family' not in store:
        raise ValueError(
            f"this NestedSignal has the family graph's keys but no "
            f"'sparse_family' ([M] bool: which families attend along the "
            f"family graph), without which no family is known to be "
            f"dense: {fix}")


def _sparse_flags(store, m: int, device: torch.device) -> Tensor:
    r"""``[M]`` whether each family uses the family graph (none without
    the family graph's keys; see :func:`_check_tree_keys`)."""
    flags = store.get('sparse_family')
    if flags is None:
        return torch.zeros(m, dtype=torch.bool, device=device)
    if not isinstance(flags, Tensor) or flags.dtype != torch.bool:
        got = flags.dtype if isinstance(flags, Tensor) else \
            type(flags).__name__
        raise TypeError(f"'sparse_family' must be a bool tensor [M], got "
                        f"{got}")
    if flags.dim() != 1 or flags.numel() != m:
        raise ValueError(f"'sparse_family' must have shape [{m}] (one flag "
                         f"per cluster), got {tuple(flags.shape)}")
    return flags.to(device)


def _family_graph(store, parent: Tensor, n: int,
                  sparse: Tensor) -> Optional[Tensor]:
    r"""The family graph ``[2, E]`` in node ids: the stored pairs, plus every
    pair of siblings in the dense families when some family is sparse;
    :obj:`None` when all families are dense."""
    m = parent.numel() - n
    parts = []
    for key, (ca, cb) in FAMILY_KEYS.items():
        if key not in store:
            continue
        idx = _checked_pairs(store, key, m if ca else n, m if cb else n,
                             ('cluster' if ca else 'leaf',
                              'cluster' if cb else 'leaf'))
        if idx.numel() == 0:  # usually: no family graph
            continue
        idx = torch.stack([idx[0] + (n if ca else 0),
                           idx[1] + (n if cb else 0)])
        family = parent[idx[0]]
        dense = (family >= 0) & ~sparse[(family - n).clamp(min=0)]
        if bool(dense.any()):
            j = int(dense.nonzero()[0])
            raise ValueError(
                f"{key}[:, {j}] is a pair in the family of cluster "
                f"{int(family[j]) - n}, which 'sparse_family' marks dense; "
                f"set its flag to True or remove the pair")
        parts.append(idx)
    if not bool(sparse.any()):
        return None
    parts.append(distinct_sibling_pairs(parent, n, ~sparse))
    return torch.cat(parts, dim=1)


# Datasets saved with NestedSignal items (e.g. a builder as pre_transform)
# load with torch.load(weights_only=True), as PyG's own data classes do.
if hasattr(torch.serialization, 'add_safe_globals'):
    torch.serialization.add_safe_globals([NestedSignal, NestedSignalStorage])
