r"""Checks of the data handed to the builders of :mod:`hsa_geo.transforms`:
one rule and one message for "a single graph with at least one node", so
that every builder answers bad input the same way (:class:`TypeError` for
the wrong type, :class:`ValueError` for the right type holding the wrong
thing)."""
from __future__ import annotations

from typing import Any

from torch_geometric.data import Batch, Data

from hsa_geo._checks import sparse_adjacency_key

# The node attribute that MultiModalHierarchy adds to every builder's input
# (see there): per node, whatever the number of edges.
SOURCE = 'source_node'


def check_data(data: Any, transform: str, accepts: str = 'a '
               'torch_geometric Data') -> Data:
    r"""Returns :obj:`data` after checking that it is one
    :class:`~torch_geometric.data.Data` (:class:`TypeError` otherwise) and
    not a :class:`~torch_geometric.data.Batch` of several (:class:`ValueError`:
    a builder would silently make one tree over all of them).

    Args:
        data: what the user passed to :obj:`transform`.
        transform (str): the builder's name, for the message.
        accepts (str): what the builder accepts, for the message.
    """
    if not isinstance(data, Data):
        raise TypeError(f"{transform} expects {accepts}, got "
                        f"{type(data).__name__}")
    if isinstance(data, Batch):
        raise ValueError(
            f"{transform} got a Batch of {data.num_graphs} graphs; it builds "
            f"the tree of one graph: apply it to every graph before batching "
            f"(e.g. as the dataset's pre_transform or transform)")
    return data


def check_num_nodes(data: Any, transform: str, leaves: str = "the rows of "
                    "'x' (or 'num_nodes')") -> int:
    r"""Returns the number of nodes of :obj:`data` after checking that it is
    a single :class:`~torch_geometric.data.Data` (see :func:`check_data`)
    with at least one node (:class:`ValueError` otherwise).

    Args:
        data: what the user passed to :obj:`transform`.
        transform (str): the builder's name, for the message.
        leaves (str): where the builder takes its leaves from, for the
            message.
    """
    data = check_data(data, transform)
    n = data.num_nodes
    if n is None or n == 0:
        raise ValueError(
            f"{transform} got a graph without nodes (num_nodes={n}); the "
            f"leaves are {leaves}, so set at least one (filter out empty "
            f"graphs before the transform)")
    return int(n)


def check_no_sparse_adjacency(data: Any, transform: str):
    r"""Raises :class:`ValueError` if :obj:`data` stores its edges as a
    sparse adjacency (``adj_t`` of :class:`~torch_geometric.transforms.
    ToSparseTensor`, or any sparse tensor whose name holds ``'adj'``): the
    builders read and relabel ``edge_index`` only, so such an adjacency
    would be ignored, or left in the old node order after a permutation."""
    key = sparse_adjacency_key(data)
    if key is not None:
        raise ValueError(
            f"{transform} got '{key}', a sparse adjacency (as "
            f"T.ToSparseTensor makes it); {transform} reads and "
            f"relabels 'edge_index' only, so '{key}' would be ignored or "
            f"left in the old node order: apply T.ToSparseTensor after "
            f"{transform} (e.g. last in T.Compose)")
