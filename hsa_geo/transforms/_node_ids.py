r"""Relabelling the lists of node ids that a graph carries, telling node
attributes from edge attributes and selecting the rows of node attributes,
for the transforms that reorder its nodes
(:class:`~hsa_geo.transforms.TreeOrder`,
:class:`~hsa_geo.transforms.GridHierarchy`)."""
from typing import Any, Collection, Dict

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import select

from hsa_geo._permutation import inverse_permutation
from hsa_geo.data.nested_signal import SIGNAL_KEYS, is_cluster_key
from hsa_geo.transforms._inputs import SOURCE

# Node attributes by name: PyG's own (those it counts the nodes by), the
# builders' per-leaf outputs and MultiModalHierarchy's node guard.
NODE_KEYS = frozenset(('x', 'feat', 'pos', 'batch', 'node_type', 'n_id',
                       'tf', 'patch_index', SOURCE))


def check_node_or_edge(data: Data, transform: str,
                       exempt: Collection[str] = ()) -> None:
    r"""Raises :class:`ValueError` where an attribute of a graph with as
    many edges as nodes could be either: PyG tells them apart by the name
    alone (``'edge'`` in it), and a wrong guess would permute an edge
    feature with the nodes while the edges keep their order. Node
    attributes by name (:data:`NODE_KEYS`, ``leaf_*``, and :obj:`exempt`),
    a tree's keys and ``[k, *]`` lists of node ids (:func:`is_id_list`)
    pass."""
    n = data.num_nodes
    if data.edge_index is None or data.num_edges != n:
        return
    for key, value in list(data.items()):
        if key in NODE_KEYS or key in exempt or key in SIGNAL_KEYS or \
                is_cluster_key(key) or key.startswith('leaf_') or \
                'edge' in key or (is_id_list(key, value) and
                                  value.dim() > 1):
            continue
        if data.is_node_attr(key):
            raise ValueError(
                f"'{key}' has one entry per node and one per edge ({n}): "
                f"{transform} permutes the nodes and keeps the edges in "
                f"order, and PyG tells node and edge attributes of such a "
                f"graph apart by the name alone; name an edge attribute "
                f"with 'edge' (e.g. 'edge_{key}'), or add it after the "
                f"transform")


def node_id_lists(data: Data, transform: str,
                  exempt: Collection[str] = ()) -> Dict[str, Tensor]:
    r"""The attributes of :obj:`data` that hold node ids (:func:`is_id_list`,
    PyG's rule), but not a tree's keys, :data:`NODE_KEYS` and the keys in
    :obj:`exempt`: the transform relabels them and keeps their order.

    Raises:
        ValueError: for a 1-D one that PyG takes for a node attribute (one
            entry per node): it could be a list of ids, only relabelled, or
            a node attribute, also permuted; for an id outside
            ``0..N-1``, padding such as ``-1`` included.
    """
    lists = {}
    for key, value in data.items():
        if key in exempt or key in NODE_KEYS or key in SIGNAL_KEYS or \
                is_cluster_key(key):
            continue
        if isinstance(value, np.ndarray) and _is_id_key(key) and \
                np.issubdtype(value.dtype, np.integer):
            raise ValueError(
                f"'{key}' is a numpy array named as a list of node ids: "
                f"{transform} relabels (and PyG offsets in a batch) only "
                f"tensors; convert it with torch.from_numpy")
        if not is_id_list(key, value):
            continue
        if value.dim() == 1 and data.is_node_attr(key):
            n = value.numel()
            raise ValueError(
                f"'{key}' holds node ids (PyG offsets a key with 'index' "
                f"in its name by the nodes of a batch) and has one entry "
                f"per node ({n}): it could be a list of node ids, which "
                f"{transform} relabels, or a node attribute, which it also "
                f"permutes; store a list as [1, {n}] "
                f"(value.view(1, -1)), name a node attribute without "
                f"'index', or add it after the transform")
        _check_in_range(key, value, data.num_nodes, transform)
        lists[key] = value
    return lists


def _check_in_range(key: str, value: Tensor, n: int, transform: str):
    r"""Raises :class:`ValueError` unless every entry of the list of node
    ids :obj:`value` is a node id, in ``0..n-1``: a negative one would
    index from the end, and PyG would offset padding such as ``-1`` into
    the nodes of another graph of a batch."""
    bad = (value < 0) | (value >= n)
    if not bool(bad.any()):
        return
    where = bad.nonzero()[0].tolist()
    raise ValueError(
        f"{key}[{', '.join(map(str, where))}] = {int(value[tuple(where)])} "
        f"is not a node id (0..{n - 1}): {transform} relabels '{key}' as a "
        f"list of node ids, as PyG offsets a key with 'index' in its name "
        f"(or 'face') by the nodes of a batch, which would turn padding "
        f"such as -1 into a node of another graph; drop the entries that "
        f"are no node, store the list under a name without 'index', or add "
        f"it after the transform")


def relabel_node_ids(data: Data, order: Tensor,
                     lists: Dict[str, Tensor]) -> None:
    r"""Sets, in :obj:`data`, the lists of node ids :obj:`lists` (from
    :func:`node_id_lists`, as they were before the nodes were reordered)
    relabelled for the new order (new node ``i`` is old node
    ``order[i]``), in their own order."""
    new_id = inverse_permutation(order)
    for key, value in lists.items():
        data[key] = new_id.to(value.device)[value]


def select_nodes(data: Data, key: str, value: Any, order: Tensor) -> Any:
    r"""The node attribute :obj:`value` of :obj:`data` with new node ``i``
    old node ``order[i]``, rows taken along PyG's
    :meth:`~torch_geometric.data.Data.__cat_dim__` as
    :meth:`~torch_geometric.data.Data.subgraph` takes them: a tensor, a
    list or tuple (as a list), or a numpy array, which PyG's
    :func:`~torch_geometric.utils.select` does not take."""
    dim = data.__cat_dim__(key, value)
    if isinstance(value, np.ndarray):
        return np.take(value, order.cpu().numpy(), axis=dim)
    index = order.to(value.device) if isinstance(value, Tensor) \
        else order.cpu()
    return select(value, index, dim)


def is_id_list(key: str, value) -> bool:
    r"""Whether :obj:`value` is a list of node ids by PyG's rule for the
    attributes it offsets by the number of nodes in a batch
    (:meth:`~torch_geometric.data.Data.__inc__`): an integer tensor named
    ``face`` or with ``'index'`` but not ``'batch'`` in its name (PyG
    offsets those by the number of graphs)."""
    return isinstance(value, Tensor) and \
        not (value.is_floating_point() or value.is_complex() or
             value.dtype == torch.bool) and _is_id_key(key)


def _is_id_key(key: str) -> bool:
    return (key == 'face' or 'index' in key) and 'batch' not in key
