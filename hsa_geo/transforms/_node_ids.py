r"""Relabelling the lists of node ids that a graph carries, for the
transforms that reorder its nodes (:class:`~hsa_geo.transforms.TreeOrder`,
:class:`~hsa_geo.transforms.GridHierarchy`)."""
from typing import Collection

import torch
from torch import Tensor
from torch_geometric.data import Data

from hsa_geo._permutation import inverse_permutation
from hsa_geo.data.nested_signal import SIGNAL_KEYS, is_cluster_key


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
                not isinstance(value, Tensor) or value.dim() < 2 or \
                value.is_floating_point() or value.is_complex() or \
                value.dtype == torch.bool or not (
                    key == 'face' or key.endswith('_index')):
            continue
        data[key] = new_id.to(value.device)[value]
