r"""A multi-modal nested signal as PyG heterogeneous data: every leaf
modality a node type with features of its own width, one cluster tree over
the leaves of all of them."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Batch, HeteroData

from hsa_geo._checks import check_index, first_out_of_range
from hsa_geo.data.hetero_family_graph import (SIBLING_OF,
                                              read_family_graph,
                                              store_family_graph)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.induced_hierarchy import induced_hierarchy
from hsa_geo.data.nested_signal import (CONCAT_REFUSED, REBATCH_REFUSED,
                                        check_kept_leaves, is_cluster_key,
                                        map_batch, split_by_signal)
from hsa_geo.data.tensor_state import same_state, tensor_state

# The node type of the clusters, and the relation from a child to its parent
# cluster: (leaf type, CHILD_OF, CLUSTER) and (CLUSTER, CHILD_OF, CLUSTER).
CLUSTER = 'cluster'
CHILD_OF = 'child_of'


class HeteroNestedSignal(HeteroData):
    r"""A nested signal whose leaves come in several modalities (node types
    of a :class:`~torch_geometric.data.HeteroData`): a news item's words and
    image patches, a molecule's atoms and SMILES tokens. One
    :class:`~hsa_geo.data.Hierarchy` spans the leaves of all types, so that
    attention runs across modalities.

    The tree is stored as edge types, which PyG's
    :class:`~torch_geometric.loader.DataLoader` batches with the usual
    per-type increments:

    - ``data[t, 'child_of', 'cluster'].edge_index`` ``[2, N_t]``: ``(leaf,
      cluster)`` for every leaf of leaf type ``t`` (every leaf has exactly
      one parent cluster);
    - ``data['cluster', 'child_of', 'cluster'].edge_index``: ``(cluster,
      parent cluster)`` for every non-root cluster (``[2, 0]`` in a forest
      of one level; a signal without this edge type raises);
    - ``data['cluster'].num_nodes``: :math:`M`.

    Every other node type is a *leaf type*, with features ``data[t].x``
    ``[N_t, F_t]`` (any width) or ``data[t].num_nodes``; edges among leaves,
    of one type or between two, are ordinary edge types and are kept.

    **Global order.** :attr:`hierarchy` numbers the leaves node type by node
    type, in the order of :attr:`leaf_types` (the order in which the leaf
    types were added): the leaves of the first type, then those of the
    second, ...; cluster ``c`` is node :math:`N + c`. :attr:`leaf_slices`
    gives each type's rows, :meth:`cat_leaves` and :meth:`split_leaves`
    convert between ``x_dict`` and ``[N, *]`` tensors, so the whole core
    (:func:`~hsa_geo.functional.hierarchical_attention`, the dense
    reference, :class:`~hsa_geo.nn.HSAConv`) runs on the concatenated
    leaves unchanged. In a batch the leaves of one type from all signals
    come together, so a batch's order interleaves its signals; the tree
    follows.

    A family graph (sparse families) is kept as edge types by the node types
    of the two siblings: ``data[a, 'sibling_of', b].edge_index`` for every
    pair of types that has pairs, and per cluster
    ``data['cluster'].sparse_family`` (whether its family attends along the
    family graph only) and ``data['cluster'].family_pairs`` (how many pairs
    it has, checked when the tree is read, so that pairs lost by an
    operation raise); every pair of node types has its edge type, empty
    where it has no pairs, so that signals with and without family graphs
    batch together in any order.

    ``data.num_leaf_types`` records the number of leaf types: PyG's
    ``DataLoader`` batches only signals with the same node types correctly
    (a type missing from one signal shifts the others' tree), so a batch
    whose signals had different types raises. Give every signal every leaf
    type, with 0 rows where it has none.

    Example::

        h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)  # 3 words, 2
        data = HeteroNestedSignal.from_hierarchy(               # patches
            h, {'word': torch.randn(3, 16), 'patch': torch.randn(2, 48)})
        data.hierarchy        # the tree over the 5 leaves
        data.leaf_slices      # {'word': slice(0, 3), 'patch': slice(3, 5)}
    """

    # Construction ##########################################################

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy,
                       x_dict: Mapping[str, Any],
                       sparse_family: Optional[Tensor] = None,
                       **kwargs) -> 'HeteroNestedSignal':
        r"""Stores :obj:`hierarchy`, whose leaves are those of the types of
        :obj:`x_dict` in its order (the first ``N_1`` leaves of the first
        type, ...), beside the features. A value of :obj:`x_dict` is a
        tensor ``[N_t, *]`` or, for a type without features, its number of
        leaves ``N_t``. With a family graph, :obj:`sparse_family` ``[M]``
        (bool) marks the families that attend along it (default: all); the
        others are dense and their pairs are not stored. Further attributes
        (graph-level, e.g. ``y``) go to the signal as they would to a
        :class:`HeteroData`."""
        counts = _leaf_counts(hierarchy, x_dict)
        data = cls(**kwargs)
        for t, x in x_dict.items():
            if isinstance(x, Tensor):
                data[t].x = x
            else:
                data[t].num_nodes = counts[t]
        data._store_tree(hierarchy, counts, sparse_family)
        return data

    def _store_tree(self, hierarchy: Hierarchy, counts: Dict[str, int],
                    sparse: Optional[Tensor] = None):
        r"""Stores the parents of :obj:`hierarchy` as the ``child_of`` edge
        types, for leaf types with :obj:`counts` leaves in this order, and
        the pairs of the families :obj:`sparse` marks."""
        n = hierarchy.num_leaves
        parent, start = hierarchy.parent, 0
        for t, count in counts.items():
            leaves = torch.arange(count, device=parent.device)
            cluster = parent[start:start + count] - n
            if count > 0 and bool((cluster < 0).any()):
                i = int((cluster < 0).nonzero()[0])
                raise ValueError(
                    f"leaf {i} of type '{t}' (leaf {start + i} of the "
                    f"hierarchy) has no parent cluster; in a "
                    f"HeteroNestedSignal every leaf belongs to a cluster")
            self[t, CHILD_OF, CLUSTER].edge_index = torch.stack(
                [leaves, cluster])
            start += count
        clusters = parent[n:]
        child = (clusters >= 0).nonzero().view(-1)
        self[CLUSTER].num_nodes = hierarchy.num_clusters
        self[CLUSTER, CHILD_OF, CLUSTER].edge_index = torch.stack(
            [child, clusters[child] - n])
        if sparse is None:
            sparse = torch.full((hierarchy.num_clusters, ),
                                hierarchy.family_edge_index is not None)
        elif not isinstance(sparse, Tensor) or sparse.dtype != torch.bool \
                or sparse.shape != (hierarchy.num_clusters, ):
            raise ValueError(f"'sparse_family' must be a bool tensor "
                             f"[{hierarchy.num_clusters}] (one flag per "
                             f"cluster)")
        elif hierarchy.family_edge_index is None and bool(sparse.any()):
            raise ValueError("'sparse_family' marks families as sparse but "
                             "the hierarchy has no family graph: they would "
                             "attend to nothing but themselves; add the "
                             "family graph or pass no flags")
        store_family_graph(self, hierarchy, _slices(counts), sparse,
                           CLUSTER)
        self.num_leaf_types = len(counts)

    # The leaves ############################################################

    @property
    def leaf_types(self) -> List[str]:
        r"""The leaf node types, in the global order of the leaves."""
        return [t for t in self.node_types if t != CLUSTER]

    @property
    def leaf_slices(self) -> Dict[str, slice]:
        r"""Each leaf type's rows in the global order of the leaves."""
        return _slices({t: self._leaf_rows(t) for t in self.leaf_types})

    def node_modality(self) -> Tensor:
        r"""``[T]`` the modality of every node of :attr:`hierarchy`: the
        index of its leaf type in :attr:`leaf_types` for a leaf and for a
        cluster whose leaves all share one type, ``len(leaf_types)``
        ("mixed") for the others."""
        slices = self.leaf_slices
        counts = torch.tensor([s.stop - s.start for s in slices.values()])
        hierarchy = self.hierarchy
        leaf_type = torch.repeat_interleave(torch.arange(len(slices)),
                                            counts).to(hierarchy.parent.device)
        return node_modality(hierarchy, leaf_type, len(slices))

    def leaf_metadata(self) -> Tuple[List[str], List[Tuple[str, str, str]]]:
        r"""The leaf types and the edge types among leaves: the
        ``metadata`` for :func:`torch_geometric.nn.to_hetero` of the local
        layers, without the tree's ``'cluster'`` type and ``'child_of'``
        relations (messages along them would mix the tree into the
        features)."""
        leaves = self.leaf_types
        return leaves, [e for e in self.edge_types if e[0] in leaves
                        and e[2] in leaves and e[1] != SIBLING_OF]

    def cat_leaves(self, x_dict: Mapping[str, Tensor]) -> Tensor:
        r"""``[N, *]``: the tensors of :obj:`x_dict` (one per leaf type, rows
        of that type, the same trailing shape) in the global order."""
        missing = [t for t in self.leaf_types if t not in x_dict]
        if missing:
            raise ValueError(f"x_dict has no entry for leaf type "
                             f"'{missing[0]}'; it needs one per leaf type "
                             f"{self.leaf_types}")
        for t, rows in self.leaf_slices.items():
            value = x_dict[t]
            if not isinstance(value, Tensor) or value.dim() == 0 or \
                    value.size(0) != rows.stop - rows.start:
                got = tuple(value.shape) if isinstance(value, Tensor) \
                    else type(value).__name__
                raise ValueError(
                    f"x_dict['{t}'] must be a tensor of "
                    f"{rows.stop - rows.start} rows (one per leaf of that "
                    f"type), got {got}")
        return torch.cat([x_dict[t] for t in self.leaf_types])

    def split_leaves(self, x: Tensor) -> Dict[str, Tensor]:
        r"""The rows of ``x`` ``[N, *]`` (global order) by leaf type."""
        slices = self.leaf_slices
        n = max((s.stop for s in slices.values()), default=0)
        if not isinstance(x, Tensor) or x.dim() == 0 or x.size(0) != n:
            raise ValueError(f"'x' must be a tensor with one row per leaf "
                             f"({n}), got {getattr(x, 'shape', type(x))}")
        return {t: x[s] for t, s in slices.items()}

    def _leaf_rows(self, t: str) -> int:
        store = self[t]
        x = store.get('x')
        if isinstance(x, Tensor) and x.dim() > 0:
            return x.size(0)
        count = store.num_nodes
        if count is None:
            raise ValueError(
                f"leaf type '{t}' has neither features 'x' nor 'num_nodes'; "
                f"set data['{t}'].x = [N_t, F_t] features")
        return int(count)

    # PyG operations ########################################################

    def subgraph(self, subset_dict: Mapping[str, Tensor]
                 ) -> 'HeteroNestedSignal':
        r"""The signal induced by the leaves of :obj:`subset_dict` (leaf
        type to ``[K_t]`` distinct ids or an ``[N_t]`` mask; a leaf type not
        named keeps all its leaves): node attributes and edges among leaves
        as :meth:`HeteroData.subgraph` selects them (leaf ``subset[i]`` of a
        type becomes leaf ``i``), and the tree that
        :func:`~hsa_geo.data.induced_hierarchy` induces on the kept leaves
        (clusters without a kept leaf removed). The clusters follow the
        leaves, so ``'cluster'`` cannot be named. Per-cluster attributes
        follow the clusters from ``data['cluster']``; one on the global
        store (``data.cluster_*``) would not, and raises
        :class:`ValueError`.

        Of a :class:`~torch_geometric.data.Batch`, the batch of the
        subgraphs of its signals: every signal must keep a leaf, and the
        kept leaves of each type must list those of each signal together,
        in the order of the signals (as a mask, or sorted ids, does);
        otherwise it raises :class:`ValueError`."""
        if CLUSTER in subset_dict:
            raise ValueError(f"subset_dict names '{CLUSTER}'; select "
                             f"leaves only, the clusters follow them")
        self._check_no_global_cluster_keys()
        unknown = [t for t in subset_dict if t not in self.leaf_types]
        if unknown:
            raise ValueError(f"subset_dict names '{unknown[0]}', which is "
                             f"not a leaf type of {self.leaf_types}")
        if isinstance(self, Batch):
            return self._batch_subgraph(subset_dict)
        hierarchy, slices = self.hierarchy, self.leaf_slices
        kept = {t: _kept_leaves(subset_dict.get(t), s.stop - s.start, t)
                for t, s in slices.items()}
        induced, node_map = induced_hierarchy(hierarchy, torch.cat(
            [ids.to(hierarchy.device) + slices[t].start
             for t, ids in kept.items()]), return_node_map=True)
        # Kept clusters in their old order, as the induced tree numbers
        # them: per-cluster attributes follow.
        clusters = (node_map[hierarchy.num_leaves:] >= 0).nonzero().view(-1)
        data = super().subgraph({**kept, CLUSTER: clusters.cpu()})
        # The kept clusters' flags: each family stays sparse or dense.
        data._store_tree(induced, {t: ids.numel() for t, ids in kept.items()},
                         data[CLUSTER].get('sparse_family'))
        return data

    def _check_no_global_cluster_keys(self) -> None:
        r"""Per-cluster attributes live in ``data['cluster']``, where
        :meth:`subgraph` keeps them aligned with the kept clusters; one on
        the global store (a :class:`~hsa_geo.data.NestedSignal` habit)
        would keep its old rows, so :meth:`subgraph` refuses it."""
        keys = [key for key in self._global_store.keys()
                if is_cluster_key(key)]
        if keys:
            raise ValueError(
                f"subgraph: data.{keys[0]} is on the global store, where "
                f"subgraph cannot keep its rows aligned with the kept "
                f"clusters; store per-cluster attributes of a "
                f"HeteroNestedSignal in data['{CLUSTER}'] (e.g. "
                f"data['{CLUSTER}'].{keys[0][len('cluster_'):]})")

    def _batch_subgraph(self, subset_dict: Mapping[str, Tensor]) -> Batch:
        r""":meth:`subgraph` of a batch, signal by signal."""
        parts = {t: split_by_signal(
            _kept_leaves(subset, self._leaf_rows(t), t), self[t].ptr,
            f"subset_dict['{t}']") for t, subset in subset_dict.items()}
        # A type not named keeps all its leaves.
        kept = sum(torch.tensor([part.numel() for part in parts[t]])
                   if t in parts else self[t].ptr.diff().cpu()
                   for t in self.leaf_types)
        check_kept_leaves(kept, 'subset_dict')
        return map_batch(self, lambda i, data: data.subgraph(
            {t: part[i] for t, part in parts.items()}), 'subgraph')

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if isinstance(self, Batch):  # (only collating asks a batch)
            raise ValueError(
                REBATCH_REFUSED.format(cls='HeteroNestedSignal'))
        return super().__inc__(key, value, *args, **kwargs)

    def concat(self, data: HeteroData) -> 'HeteroNestedSignal':
        r"""Refused, as :meth:`hsa_geo.data.NestedSignal.concat`."""
        raise ValueError(CONCAT_REFUSED.format(cls='HeteroNestedSignal'))

    def node_type_subgraph(self, node_types: List[str]
                           ) -> 'HeteroNestedSignal':
        r"""The signal of the node types :obj:`node_types` only; dropping a
        leaf type induces the tree on the leaves of the others (see
        :meth:`subgraph`). Without ``'cluster'``, the result has no tree.
        Of a :class:`~torch_geometric.data.Batch`, the batch of the results
        of its signals."""
        dropped = [t for t in self.leaf_types if t not in node_types]
        if CLUSTER not in node_types or not dropped:
            return super().node_type_subgraph(node_types)
        if isinstance(self, Batch):
            return map_batch(
                self, lambda i, data: data.node_type_subgraph(node_types),
                'node_type_subgraph')
        pruned = self.subgraph({
            t: torch.zeros(self._leaf_rows(t), dtype=torch.bool)
            for t in dropped})
        out = HeteroData.node_type_subgraph(pruned, node_types)
        out.num_leaf_types = len(out.leaf_types)
        return out

    # The hierarchy #########################################################

    @property
    def hierarchy(self) -> Hierarchy:
        r"""The :class:`Hierarchy` over the leaves of all types (of all
        signals in a batch: one forest), in the global order. Built once and
        cached until the leaf counts or the tree's tensors change (a layer
        reads it on every call; a new hierarchy would derive its layout
        again). Raises a :class:`ValueError` naming the node type and index
        when the stored tree does not fit the leaves: a leaf without a
        parent cluster or with two, an id out of range, counts that do not
        match."""
        state = self._tree_state()
        cached = self.__dict__.get('_hierarchy_cache')
        if cached is not None and same_state(cached[0], state):
            return cached[1]
        hierarchy = self._build_hierarchy()
        # Beside the stores, not in them: it is not batched.
        self.__dict__['_hierarchy_cache'] = (state, hierarchy)
        return hierarchy

    def __getstate__(self) -> Dict[str, Any]:
        # Derived data, rebuilt on use (as a NestedSignal's).
        state = dict(self.__dict__)
        state.pop('_hierarchy_cache', None)
        return state

    def _tree_state(self) -> tuple:
        r"""What :attr:`hierarchy` is built from: the leaf types and their
        counts, the clusters' count and flags, the parent edges and the
        sibling pairs."""
        counts = tuple((t, s.stop - s.start)
                       for t, s in self.leaf_slices.items())
        clusters = self[CLUSTER].num_nodes \
            if CLUSTER in self.node_types else None
        flags = tuple(tensor_state(self[CLUSTER].get(key))
                      for key in ('sparse_family', 'family_pairs')) \
            if CLUSTER in self.node_types else ()
        layout = (tensor_state(self.get('num_leaf_types')), )
        return ((None, counts), (None, clusters)) + layout + flags + tuple(
            item for e in self.edge_types
            if e[1:] == (CHILD_OF, CLUSTER) or e[1] == SIBLING_OF
            for item in ((None, e), tensor_state(self[e].get('edge_index'))))

    def _build_hierarchy(self) -> Hierarchy:
        slices = self.leaf_slices
        n = max((s.stop for s in slices.values()), default=0)
        if n == 0:
            raise ValueError("a HeteroNestedSignal needs leaves: add a leaf "
                             "type with features (data['word'].x = ...)")
        if CLUSTER not in self.node_types:
            raise ValueError("this HeteroNestedSignal stores no clusters; "
                             "build it with HeteroNestedSignal."
                             "from_hierarchy(hierarchy, x_dict)")
        self._check_leaf_types(len(slices))
        m = int(self[CLUSTER].num_nodes)
        parent = torch.full((n + m, ), -1, dtype=torch.long,
                            device=self._device())
        for t, rows in slices.items():
            leaf, cluster = self._child_of(t, rows.stop - rows.start, m,
                                           parent.device)
            parent[leaf + rows.start] = cluster + n
        child, cluster = self._child_of(CLUSTER, m, m, parent.device)
        parent[child + n] = cluster + n
        has_child = torch.zeros(m, dtype=torch.bool, device=parent.device)
        has_child[parent[parent >= 0] - n] = True
        if not bool(has_child.all()):
            c = int((~has_child).nonzero()[0])
            raise ValueError(
                f"cluster {c} has no children: an operation removed its "
                f"leaves without the tree; HeteroNestedSignal.subgraph and "
                f".node_type_subgraph induce the tree on the kept leaves")
        return Hierarchy.from_parent(
            parent, n, read_family_graph(self, parent, slices, CLUSTER))

    def _check_leaf_types(self, count: int):
        r"""Raises unless every signal (of a batch) had :obj:`count` leaf
        types, as the batch has."""
        recorded = self.get('num_leaf_types')
        if recorded is None:
            raise ValueError("this HeteroNestedSignal has no "
                             "'num_leaf_types'; build it with "
                             "HeteroNestedSignal.from_hierarchy")
        recorded = torch.as_tensor(recorded).view(-1)
        fix = ("PyG's DataLoader mis-shifts the tree of signals whose node "
               "types differ; give every signal every leaf type (0 rows "
               "where it has none)")
        if not isinstance(self, Batch) and int(recorded[0]) != count:
            raise ValueError(
                f"this signal was built with {int(recorded[0])} leaf types "
                f"but has {count} ({self.leaf_types}): an operation dropped "
                f"or added node types without the tree (edge_type_subgraph "
                f"keeps only the types of the kept edges); "
                f"HeteroNestedSignal.node_type_subgraph induces the tree on "
                f"the kept leaf types")
        if bool((recorded != count).any()):
            i = int((recorded != count).nonzero()[0])
            raise ValueError(
                f"signal {i} of this batch had {int(recorded[i])} leaf types "
                f"but the batch has {count} ({self.leaf_types}): {fix}")
        # As many types but other names: a type then lacks some signals.
        for t in self.leaf_types:
            ptr = self[t].get('ptr')
            if ptr is not None and ptr.numel() != recorded.numel() + 1:
                raise ValueError(
                    f"leaf type '{t}' has the leaves of {ptr.numel() - 1} "
                    f"of the {recorded.numel()} signals of this batch: the "
                    f"signals' leaf types differ (the batch took "
                    f"{self.leaf_types} from its first signal): {fix}")

    def _child_of(self, t: str, rows: int, m: int, device: Any
                  ) -> Tuple[Tensor, Tensor]:
        r"""The checked ``(child, parent cluster)`` ids of type :obj:`t`;
        every leaf must have exactly one parent, a cluster at most one."""
        key = (t, CHILD_OF, CLUSTER)
        if key not in self.edge_types:
            # Stored by every signal, empty in a forest of one level: its
            # loss would split the trees silently.
            if t == CLUSTER:
                raise ValueError(
                    f"this HeteroNestedSignal lacks the edge type "
                    f"('{CLUSTER}', '{CHILD_OF}', '{CLUSTER}') (the parent "
                    f"of every non-root cluster): an operation removed it "
                    f"(edge_type_subgraph, del, ...); keep the tree's edge "
                    f"types, or rebuild the signal with HeteroNestedSignal."
                    f"from_hierarchy")
            raise ValueError(f"leaf type '{t}' has no parent clusters: "
                             f"store them as data['{t}', '{CHILD_OF}', "
                             f"'{CLUSTER}'].edge_index [2, N_t]")
        name = f"data['{t}', '{CHILD_OF}', '{CLUSTER}'].edge_index"
        if self[key].get('edge_index') is None:
            raise ValueError(f"{name} is missing (a transform such as "
                             f"ToSparseTensor may have replaced it); the "
                             f"tree's edge types need their edge_index")
        idx = check_index(self[key].edge_index, name)
        bad = first_out_of_range(idx, (rows, m))
        if bad is not None:
            row, j = bad
            raise ValueError(
                f"{name}[{row}, {j}] = {int(idx[row, j])} is not a node of "
                f"type '{(t, CLUSTER)[row]}' (0..{(rows, m)[row] - 1}); a PyG "
                f"operation may have changed the nodes without the tree")
        counts = torch.bincount(idx[0], minlength=rows)
        kind = 'leaf' if t != CLUSTER else 'cluster'
        if rows > 0 and int(counts.max()) > 1:
            j = int((counts > 1).nonzero()[0])
            raise ValueError(
                f"{kind} {j} of type '{t}' has {int(counts[j])} parent "
                f"clusters in {name}; a hierarchy is a forest. A transform "
                f"(ToUndirected, AddSelfLoops, Pad, ...) may have added "
                f"edges to the tree: apply it to the edge types among "
                f"leaves only")
        if t != CLUSTER and rows > 0 and int(counts.min()) == 0:
            j = int((counts == 0).nonzero()[0])
            raise ValueError(f"leaf {j} of type '{t}' has no parent cluster "
                             f"in {name}; every leaf belongs to a cluster")
        return idx[0], idx[1]

    def _device(self) -> Optional[torch.device]:
        for store in self.edge_stores:
            index = store.get('edge_index')
            if isinstance(index, Tensor):
                return index.device
        return None


def _leaf_counts(hierarchy: Hierarchy,
                 x_dict: Mapping[str, Any]) -> Dict[str, int]:
    r"""The number of leaves of every type of :obj:`x_dict`, checked
    against :obj:`hierarchy`."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    if not isinstance(x_dict, Mapping) or len(x_dict) == 0:
        raise ValueError("'x_dict' must map at least one leaf type to its "
                         "features [N_t, F_t] (or its number of leaves)")
    counts = {t: _leaf_count(t, x) for t, x in x_dict.items()}
    if CLUSTER in counts:
        raise ValueError(f"'{CLUSTER}' is the node type of the clusters; "
                         f"name the leaf type otherwise")
    n = sum(counts.values())
    if n != hierarchy.num_leaves:
        raise ValueError(
            f"x_dict holds {n} leaves ({counts}) but the hierarchy has "
            f"{hierarchy.num_leaves}; leaf i of the hierarchy is row i of "
            f"the leaf types' rows, type after type")
    return counts


def _leaf_count(t: str, x: Any) -> int:
    r"""The number of leaves of type :obj:`t` given as features ``[N_t,
    *]`` or as a count."""
    if not isinstance(t, str):
        raise TypeError(f"leaf types are node type names (str), got "
                        f"{type(t).__name__}")
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError(f"x_dict['{t}'] must be [N_t, F_t] features "
                             f"(or N_t), got a 0-d tensor")
        return x.size(0)
    if isinstance(x, int) and not isinstance(x, bool) and x >= 0:
        return x
    raise TypeError(f"x_dict['{t}'] must be a tensor of features [N_t, F_t] "
                    f"or a number of leaves, got {type(x).__name__}")


def _slices(counts: Mapping[str, int]) -> Dict[str, slice]:
    r"""The rows of every leaf type, the types one after the other."""
    out, start = {}, 0
    for t, count in counts.items():
        out[t] = slice(start, start + count)
        start += count
    return out


def _kept_leaves(subset: Optional[Tensor], count: int, t: str) -> Tensor:
    r"""``[K_t]`` the kept leaves of type :obj:`t` given as ids, a mask or
    :obj:`None` (all of them), checked."""
    if subset is None:
        return torch.arange(count)
    name = f"subset_dict['{t}']"
    if isinstance(subset, Tensor) and subset.dtype == torch.bool:
        if subset.dim() != 1 or subset.numel() != count:
            raise ValueError(f"{name} is a mask of shape "
                             f"{tuple(subset.shape)}; type '{t}' has "
                             f"{count} leaves, so it needs shape [{count}]")
        return subset.nonzero().view(-1).cpu()
    ids = check_index(subset, name, rows=None).cpu()
    bad = first_out_of_range(ids.view(1, -1), (count, ))
    if bad is not None:
        raise ValueError(f"{name}[{bad[1]}] = {int(ids[bad[1]])} is not a "
                         f"leaf of type '{t}' (0..{count - 1})")
    if ids.numel() and int(torch.bincount(ids).max()) > 1:
        raise ValueError(f"{name} lists a leaf twice; every kept leaf must "
                         f"appear once (use .unique())")
    return ids


def node_modality(hierarchy: Hierarchy, leaf_type: Tensor,
                  mixed: int) -> Tensor:
    r"""``[T]`` the modality of every node of :obj:`hierarchy`, given
    ``leaf_type`` ``[N]`` (in ``0..mixed-1``): a leaf's type; for a
    cluster, the type all its leaves share, or :obj:`mixed`."""
    parent = hierarchy.parent.to(leaf_type.device)
    n, t = hierarchy.num_leaves, parent.numel()
    low = torch.full((t, ), mixed, dtype=torch.long, device=parent.device)
    high = torch.full((t, ), -1, dtype=torch.long, device=parent.device)
    low[:n], high[:n] = leaf_type, leaf_type
    for nodes in reversed(hierarchy.levels[1:]):  # deepest first
        nodes = nodes.to(parent.device)
        up = parent[nodes]
        low.scatter_reduce_(0, up, low[nodes], 'amin')
        high.scatter_reduce_(0, up, high[nodes], 'amax')
    return torch.where(low == high, low, mixed)


# Datasets save signals and PyG loads them with torch.load(weights_only=True).
if hasattr(torch.serialization, 'add_safe_globals'):
    torch.serialization.add_safe_globals([HeteroNestedSignal])
