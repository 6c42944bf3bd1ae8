r"""One nested signal from several modalities: each field of a sample turned
into a subtree by its own builder, the subtrees joined under one root."""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform

from hsa_geo.data.hetero_family_graph import SIBLING_OF
from hsa_geo.data.hetero_nested_signal import (CHILD_OF, CLUSTER,
                                               HeteroNestedSignal)
from hsa_geo.data.hierarchy import Hierarchy, distinct_sibling_pairs
from hsa_geo.data.nested_signal import SIGNAL_KEYS, NestedSignal
from hsa_geo.transforms._inputs import SOURCE

Builder = Callable[[Data], NestedSignal]
# SOURCE: the node attribute that follows every input node through a
# builder, so that the edges between modalities can be relabelled after it
# reorders its leaves (GridHierarchy's Z order, GraphHierarchy's tree
# order).
# The relation under which a builder's own leaf edges are stored (bonds
# that MoleculeHierarchy reads from a SMILES string).
BUILT_EDGES = 'to'


class MultiModalHierarchy(BaseTransform):
    r"""Turns a sample of several modalities (a news item's headline, body
    and image; a molecule's atom graph, SMILES tokens and depiction) into
    one :class:`~hsa_geo.data.HeteroNestedSignal`: every modality is a
    leaf type, turned into a subtree by its own builder
    (:class:`DocumentHierarchy`, :class:`GridHierarchy`,
    :class:`MoleculeHierarchy`, :class:`GraphHierarchy`,
    :class:`SequenceHierarchy`, or any callable returning a
    :class:`~hsa_geo.data.NestedSignal`), and the subtrees are joined under
    one root, or under a given upper tree (:obj:`groups`).

    **Input.** A :class:`~torch_geometric.data.HeteroData` with one node
    store per modality of :obj:`builders`, holding what that builder reads
    (``data['body'].text``, ``data['image'].image``, ``data['atom'].x``,
    ...). Builder :math:`t` is called on a
    :class:`~torch_geometric.data.Data` with the attributes of
    ``data[t]`` and, if the input has edge types from :math:`t` to
    :math:`t`, their ``edge_index`` concatenated (what
    :class:`GraphHierarchy` partitions) and their ``edge_attr``
    concatenated in the same order (the bond features from which
    :class:`MoleculeHierarchy` rebuilds a molecule without ``smiles``), if
    they have one: all of them or none. A heterogeneous *graph* thus
    becomes a nested signal with ``MultiModalHierarchy(GraphHierarchy())``:
    one builder for every node type.

    **Tree.** The hierarchy of modality :math:`t` (from its builder) keeps
    its clusters; its root is a child of the group of :math:`t` in
    :obj:`groups`, or of the root. A builder's forest of several trees gets
    one cluster over them first (the modality stays one subtree), and a
    single leaf without parent is a child of the group directly. So
    attention runs inside each modality at its own scales, and across
    modalities at the top, in one exact hierarchical softmax. The leaves
    are numbered modality by modality in the order of :obj:`builders`
    (the global order of :class:`~hsa_geo.data.HeteroNestedSignal`), the
    clusters: those of each modality's tree, in its builder's order, then
    the groups in the order they are first named, then the root.

    **Output.** A :class:`~hsa_geo.data.HeteroNestedSignal` with, for each
    modality :math:`t`:

    - ``data[t]``: the per-leaf attributes of its built signal (``x``,
      ``offsets``, ``patch_index``, ``leaf_coord``, ...) in its leaf order,
      and its non-tensor attributes (``text``, ``smiles``); its per-cluster
      attributes (``cluster_*``, numbered by the builder's clusters) are
      dropped;
    - the input's edge types between modalities (and within one) kept,
      relabelled to the leaf order each builder chose;
    - ``data[t, 'to', t]``: the leaf edges the builder made itself (with
      their ``edge_attr``), when the input had no edges of type
      :math:`t` to :math:`t` (a molecule's bonds read from SMILES).

    Graph-level attributes of the input (``y``, an id) are kept. The output
    is deterministic when the builders are, and batches through PyG's
    :class:`~torch_geometric.loader.DataLoader`.

    A builder's family graph (``GraphHierarchy(family_graph=True)``) is
    kept: its modality's families attend along it, the families above the
    modalities (groups, root, a cluster over a builder's forest) are dense.

    Args:
        builders (dict or callable): the builder of every modality, in the
            leaf order, e.g. ``{'headline': DocumentHierarchy(),
            'image': GridHierarchy(16)}``; one callable is used for every
            node type of the input, in its order.
        groups (dict, optional): the upper tree, as the parent group of
            modalities or groups, e.g. ``{'headline': 'text', 'body':
            'text'}`` puts both texts under one cluster ``'text'``, a child
            of the root; a modality or group not named as a key is a child
            of the root. (default: :obj:`None`, every modality a child of
            the root)

    Example:
        >>> data = HeteroData()
        >>> data['headline'].text = 'Rain in Spain.'
        >>> data['image'].image = torch.rand(3, 32, 32)
        >>> vocab = Vocabulary.build(['Rain in Spain.'])
        >>> transform = MultiModalHierarchy({
        ...     'headline': DocumentHierarchy(vocab=vocab),
        ...     'image': GridHierarchy(patch_size=8)})
        >>> out = transform(data)
        >>> out.leaf_slices
        {'headline': slice(0, 4, None), 'image': slice(4, 20, None)}
    """
    def __init__(self, builders: Union[Mapping[str, Builder], Builder],
                 groups: Optional[Mapping[str, str]] = None):
        if isinstance(builders, Mapping):
            if len(builders) == 0:
                raise ValueError("'builders' is empty; give the builder of "
                                 "at least one modality")
            for t, builder in builders.items():
                _check_builder(builder, f"builders['{t}']")
                _check_name(t, 'a modality')
            self.builders = dict(builders)
        else:
            _check_builder(builders, 'builders')
            self.builders = builders
        self.groups = _check_groups(groups, self.builders)

    def forward(self, data: HeteroData) -> HeteroNestedSignal:
        builders = self._builders_for(data)
        signals, sources = {}, {}
        for t, builder in builders.items():
            signals[t], sources[t] = _build(t, builder, data)
        forest, roots, sparse = _joined(signals)
        parent = self._upper_tree(forest, roots, list(signals))
        # The groups' and the root's families are dense.
        sparse = torch.cat([sparse, sparse.new_zeros(
            parent.numel() - forest.num_nodes)])
        hierarchy = Hierarchy.from_parent(
            parent, forest.num_leaves,
            _family_graph(forest, parent, sparse))
        x_dict = {t: s.x if isinstance(s.x, Tensor) else s.num_nodes
                  for t, s in signals.items()}
        out = HeteroNestedSignal.from_hierarchy(
            hierarchy, x_dict, sparse_family=sparse,
            **_graph_attributes(data))
        for t, signal in signals.items():
            _copy_leaf_attributes(signal, out[t])
        _copy_edges(data, out, sources, signals)
        return out

    def _builders_for(self, data: Any) -> Dict[str, Builder]:
        if not isinstance(data, HeteroData):
            raise TypeError(
                f"MultiModalHierarchy expects a HeteroData with one node "
                f"store per modality, got {type(data).__name__}")
        no_index = [e for e in data.edge_types
                    if 'edge_index' not in data[e]]
        if no_index:
            keys = ', '.join(repr(k) for k in data[no_index[0]].keys())
            raise ValueError(
                f"edge type {no_index[0]} has no 'edge_index' (it has "
                f"{keys}); MultiModalHierarchy reads and relabels the "
                f"edges from 'edge_index': apply T.ToSparseTensor after it")
        reserved = [e for e in data.edge_types
                    if e[1] in (CHILD_OF, SIBLING_OF)]
        if reserved:
            raise ValueError(
                f"edge type {reserved[0]} uses a relation that stores the "
                f"tree ('{CHILD_OF}', '{SIBLING_OF}'); rename it")
        if isinstance(self.builders, dict):
            missing = [t for t in self.builders if t not in data.node_types]
            if missing:
                raise ValueError(
                    f"the data has no node store '{missing[0]}' (it has "
                    f"{data.node_types}); set data['{missing[0]}'] to what "
                    f"its builder reads, e.g. .text or .image")
            extra = [t for t in data.node_types if t not in self.builders]
            if extra:
                raise ValueError(
                    f"node type '{extra[0]}' has no builder; add one to "
                    f"'builders' or delete data['{extra[0]}']")
            return self.builders
        if len(data.node_types) == 0:
            raise ValueError("the data has no node types; give each "
                             "modality a node store")
        if CLUSTER in data.node_types:
            raise ValueError(f"'{CLUSTER}' is the node type of the clusters; "
                             f"rename the input's node type")
        return {t: self.builders for t in data.node_types}

    def _upper_tree(self, forest: Hierarchy, roots: List[int],
                    modalities: List[str]) -> Tensor:
        r"""The parents of the forest's nodes, of the groups and of the
        root (the last node): every modality's root under its group."""
        names = _group_order(self.groups, modalities)
        base = forest.num_nodes
        node_of = {g: base + i for i, g in enumerate(names)}
        root = base + len(names)
        parent = torch.cat([forest.parent.cpu(), torch.full(
            (len(names) + 1, ), -1, dtype=torch.long)])
        for name, node in zip(modalities + names, roots + list(
                node_of.values())):
            up = self.groups.get(name)
            parent[node] = root if up is None else node_of[up]
        return parent

    def __repr__(self) -> str:
        if isinstance(self.builders, dict):
            inner = ', '.join(f'{t!r}: {b!r}' for t, b in
                              self.builders.items())
            inner = '{' + inner + '}'
        else:
            inner = repr(self.builders)
        groups = f', groups={self.groups}' if self.groups else ''
        return f'{self.__class__.__name__}({inner}{groups})'


def _check_builder(builder: Any, name: str):
    if not callable(builder):
        raise TypeError(f"{name} must be a builder (a transform that returns "
                        f"a NestedSignal), got {type(builder).__name__}")


def _check_name(name: Any, what: str):
    if not isinstance(name, str):
        raise TypeError(f"the name of {what} must be a str, got "
                        f"{type(name).__name__}")
    if name == CLUSTER:
        raise ValueError(f"'{CLUSTER}' is the node type of the clusters; "
                         f"name {what} otherwise")


def _check_groups(groups: Optional[Mapping[str, str]],
                  builders: Any) -> Dict[str, str]:
    r"""The parent map of the upper tree, checked: groups are not
    modalities, and following parents always ends at the root."""
    if groups is None:
        return {}
    if not isinstance(groups, Mapping):
        raise TypeError(f"'groups' must map a modality or group to its "
                        f"parent group, got {type(groups).__name__}")
    modalities = set(builders) if isinstance(builders, dict) else set()
    for child, group in groups.items():
        _check_name(child, 'a modality or group')
        _check_name(group, 'a group')
        if group in modalities:
            raise ValueError(f"groups['{child}'] = '{group}' is a modality; "
                             f"a parent must be a group (a cluster name "
                             f"that is not a modality)")
    for start in groups:
        seen, name = [start], groups[start]
        while name is not None:
            if name in seen:
                raise ValueError(f"'groups' has a cycle: "
                                 f"{' -> '.join(seen + [name])}")
            seen.append(name)
            name = groups.get(name)
    return dict(groups)


def _group_order(groups: Dict[str, str], modalities: List[str]
                 ) -> List[str]:
    r"""The groups above the modalities, in the order they are first
    named going up from each modality in turn."""
    parents = set(groups.values())
    for child, group in groups.items():
        if child not in modalities and child not in parents:
            raise ValueError(
                f"groups names '{child}', which is neither a modality "
                f"{modalities} nor a group above one; check its spelling")
        if group in modalities:
            raise ValueError(f"groups['{child}'] = '{group}' is a modality; "
                             f"a parent must be a group (a cluster name "
                             f"that is not a modality)")
    names: List[str] = []
    for t in modalities:
        up = groups.get(t)
        while up is not None and up not in names:
            names.append(up)
            up = groups.get(up)
    return names


def _build(t: str, builder: Builder, data: HeteroData
           ) -> Tuple[NestedSignal, Optional[Tensor]]:
    r"""Runs the builder of modality :obj:`t`; returns its signal and, if
    the input had nodes and the builder kept their attributes, the input
    node of every leaf."""
    store = data[t]
    inputs = Data(**{k: v for k, v in store.to_dict().items()})
    intra = [e for e in data.edge_types if e[0] == t and e[2] == t]
    if intra:
        inputs.edge_index = torch.cat([data[e].edge_index for e in intra],
                                      dim=1)
        edge_attr = _edge_attr(t, data, intra)
        if edge_attr is not None:
            inputs.edge_attr = edge_attr
    has_nodes = 'x' in store or 'num_nodes' in store
    if has_nodes:
        inputs[SOURCE] = torch.arange(store.num_nodes)
    try:
        signal = builder(inputs)
    except (ValueError, TypeError) as error:
        raise type(error)(f"modality '{t}': {error}") from error
    if not isinstance(signal, NestedSignal):
        raise TypeError(f"the builder of modality '{t}' returned "
                        f"{type(signal).__name__}, not a NestedSignal")
    source = signal[SOURCE] if SOURCE in signal else None
    return signal, source


def _edge_attr(t: str, data: HeteroData,
               edge_types: List[Tuple[str, str, str]]) -> Optional[Tensor]:
    r"""The ``edge_attr`` of the :obj:`edge_types` within modality
    :obj:`t`, concatenated in their order (as their ``edge_index``), or
    :obj:`None` if none has one."""
    given = [e for e in edge_types if 'edge_attr' in data[e]]
    if not given:
        return None
    if len(given) < len(edge_types):
        missing = next(e for e in edge_types if e not in given)
        raise ValueError(
            f"modality '{t}': edge type {given[0]} has edge_attr but "
            f"{missing} has none, so the builder cannot get one row per "
            f"edge; set edge_attr on every edge type from '{t}' to '{t}' "
            f"or on none")
    values = [data[e].edge_attr for e in edge_types]
    try:
        return torch.cat(values, dim=0)
    except (RuntimeError, TypeError):
        shapes = [tuple(v.shape) if isinstance(v, Tensor) else
                  type(v).__name__ for v in values]
        raise ValueError(
            f"modality '{t}': the edge_attr of its edge types do not "
            f"concatenate (shapes {shapes} of {edge_types}); give them the "
            f"same features per edge") from None


def _joined(signals: Dict[str, NestedSignal]
            ) -> Tuple[Hierarchy, List[int], Tensor]:
    r"""The forest of the modalities' trees (each made one tree), the root
    of each in it, and ``[M]`` whether each cluster's family attends along
    its modality's family graph."""
    trees, roots, sparse, leaf_off, cluster_off = [], [], [], 0, 0
    for signal in signals.values():
        h = signal.hierarchy.to('cpu')
        parent, n = h.parent, h.num_leaves
        flags = torch.full((h.num_clusters, ), h.family_edge_index
                           is not None)
        top = (parent == -1).nonzero().view(-1)
        if top.numel() > 1:  # a forest: one (dense) cluster over its trees
            parent = torch.cat([parent, parent.new_full((1, ), -1)])
            parent[top] = h.num_nodes
            h = Hierarchy.from_parent(parent, n, h.family_edge_index)
            top = parent.new_tensor([h.num_nodes - 1])
            flags = torch.cat([flags, flags.new_zeros(1)])
        trees.append(h)
        roots.append(int(top[0]))
        sparse.append(flags)
    total = sum(h.num_leaves for h in trees)
    shifted = []
    for h, r in zip(trees, roots):
        shifted.append(leaf_off + r if r < h.num_leaves
                       else total + cluster_off + r - h.num_leaves)
        leaf_off += h.num_leaves
        cluster_off += h.num_clusters
    return Hierarchy.batch(trees), shifted, torch.cat(sparse)


def _family_graph(forest: Hierarchy, parent: Tensor, sparse: Tensor
                  ) -> Optional[Tensor]:
    r"""The joined tree's family graph: the modalities' pairs in their
    sparse families, every pair in the others; :obj:`None` if all are
    dense."""
    if not bool(sparse.any()):
        return None
    n, edges = forest.num_leaves, forest.family_edge_index
    edges = edges[:, sparse[parent[edges[0]] - n]]
    return torch.cat([edges, distinct_sibling_pairs(parent, n, ~sparse)],
                     dim=1)


def _graph_attributes(data: HeteroData) -> Dict[str, Any]:
    r"""The input's graph-level attributes (``y``, an id)."""
    # to_dict()'s documented layout: the global store under this key.
    return dict(data.to_dict()['_global_store'])


def _copy_leaf_attributes(signal: NestedSignal, store):
    r"""The per-leaf and non-tensor attributes of a built signal, without
    its tree, edges and per-cluster attributes."""
    skip = (SOURCE, 'x', 'num_nodes', 'edge_index') + SIGNAL_KEYS
    for key, value in signal.to_dict().items():
        if key in skip or key.startswith('cluster_'):
            continue
        plain = not isinstance(value, Tensor) and \
            not signal.is_edge_attr(key)
        if plain or signal.is_node_attr(key):
            store[key] = value


def _copy_edges(data: HeteroData, out: HeteroNestedSignal,
                sources: Dict[str, Optional[Tensor]],
                signals: Dict[str, NestedSignal]):
    r"""The input's edges among modalities, relabelled to the built leaf
    order; a builder's own edges where the input had none."""
    new_id = {t: _new_ids(t, source, data[t].num_nodes, signals[t])
              for t, source in sources.items() if source is not None}
    for edge_type in data.edge_types:
        src, _, dst = edge_type
        if src not in signals or dst not in signals:
            continue
        store = copy.copy(data[edge_type])
        index = store.edge_index
        for t in (src, dst):
            if isinstance(new_id.get(t), str):
                raise ValueError(f"edge type {edge_type} cannot be "
                                 f"relabelled: {new_id[t]}")
            if t not in new_id:
                raise ValueError(
                    f"edge type {edge_type} joins modality '{t}', whose "
                    f"leaves cannot be matched to the input's nodes: its "
                    f"input has no nodes (set data['{t}'].x or .num_nodes) "
                    f"or its builder dropped the node attribute "
                    f"'{SOURCE}' (a builder must keep node attributes)")
        store.edge_index = torch.stack([
            new_id[src].to(index.device)[index[0]],
            new_id[dst].to(index.device)[index[1]]])
        for key, value in store.items():
            out[edge_type][key] = value
    for t, signal in signals.items():
        has_input_edges = any(e[0] == t and e[2] == t
                              for e in data.edge_types)
        if has_input_edges or signal.edge_index is None:
            continue
        out[t, BUILT_EDGES, t].edge_index = signal.edge_index
        for key, value in signal.to_dict().items():
            if key != 'edge_index' and signal.is_edge_attr(key) and \
                    key not in SIGNAL_KEYS:
                out[t, BUILT_EDGES, t][key] = value


def _new_ids(t: str, source: Tensor, num_inputs: int,
             signal: NestedSignal):
    r"""``[n]`` the leaf of every input node of modality :obj:`t`, or why
    there is none (a str): the builder must keep every input node exactly
    once."""
    n = signal.num_nodes
    if source.numel() != n or n != num_inputs or not torch.equal(
            torch.sort(source.cpu()).values, torch.arange(n)):
        return (f"the builder of modality '{t}' made {n} leaves from "
                f"{num_inputs} input nodes, not one leaf per node (its "
                f"'{SOURCE}' is not a permutation of the input nodes)")
    out = torch.full_like(source, -1)
    out[source] = torch.arange(n, device=source.device)
    return out
