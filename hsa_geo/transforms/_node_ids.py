r"""Relabelling the lists of node ids that a graph carries, and telling
node attributes from edge attributes, for the transforms that reorder its
nodes (:class:`~hsa_geo.transforms.TreeOrder`,
:class:`~hsa_geo.transforms.GridHierarchy`)."""
from typing import Collection

import torch
from torch import Tensor
from torch_geometric.data import Data

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
    a tree's keys and lists of node ids (:func:`is_id_list`) pass."""
    n = data.num_nodes
    if data.edge_index is None or data.num_edges != n:
        return
    for key, value in list(data.items()):
        if key in NODE_KEYS or key in exempt or key in SIGNAL_KEYS or \
                is_cluster_key(key) or key.startswith('leaf_') or \
                'edge' in key or is_id_list(key, value):
            continue
        if data.is_node_attr(key):
            raise ValueError(
                f"'{key}' has one entry per node and one per edge ({n}): "
                f"{transform} permutes the nodes and keeps the edges in "
                f"order, and PyG tells node and edge attributes of such a "
                f"graph apart by the name alone; name an edge attribute "
                f"with 'edge' (e.g. 'edge_{key}'), or add it after the "
                f"transform")


def relabel_node_ids(data: Data, order: Tensor,
                     skip: Collection[str] = ()) -> None:
    r"""Relabels, in place, the attributes of :obj:`data` that hold node
    ids after its nodes were reordered (new node ``i`` is old node
    ``order[i]``): ``[k, *]`` integer tensors that PyG increments by the
    number of nodes in a batch (``edge_index``, ``face``, any
    ``*_index``), but not a tree's keys nor the keys in :obj:`skip`."""
    new_id = inverse_permutation(order)
    for key, value in list(data.items()):
        if key in skip or key in SIGNAL_KEYS or is_cluster_key(key) or \
                not is_id_list(key, value):
            continue
        data[key] = new_id.to(value.device)[value]


def is_id_list(key: str, value) -> bool:
    r"""Whether :obj:`value` is a list of node ids that PyG increments by
    the number of nodes in a batch: a ``[k, *]`` integer tensor named
    ``face`` or ``*_index``."""
    return isinstance(value, Tensor) and value.dim() >= 2 and \
        not (value.is_floating_point() or value.is_complex() or
             value.dtype == torch.bool) and \
        (key == 'face' or key.endswith('_index'))
