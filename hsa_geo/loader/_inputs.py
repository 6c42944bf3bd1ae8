r"""Checks of the data handed to the loaders of :mod:`hsa_geo.loader`: one
rule and one message for "a nested signal that stores its hierarchy"."""
from __future__ import annotations

from typing import Any

from torch_geometric.data import Batch, Data, HeteroData

from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal


def signal_hierarchy(data: Any, loader: str) -> Hierarchy:
    r"""Returns the :class:`~hsa_geo.data.Hierarchy` of :obj:`data` after
    checking that it is a :class:`~hsa_geo.data.NestedSignal`
    (:class:`TypeError` for anything that is no
    :class:`~torch_geometric.data.Data`, :class:`ValueError` for a
    :class:`~torch_geometric.data.Data` without a hierarchy or whose nodes
    no longer match its leaves).

    Args:
        data: what the user passed to :obj:`loader`.
        loader (str): the loader's name, for the message.
    """
    if isinstance(data, HeteroData):
        raise TypeError(
            f"{loader} takes a homogeneous NestedSignal, got HeteroData; "
            f"HSA runs over one hierarchy: convert the graph with "
            f"data.to_homogeneous() and build the hierarchy over all its "
            f"nodes")
    if not isinstance(data, Data):
        raise TypeError(f"{loader} takes a hsa_geo.data.NestedSignal, got "
                        f"{type(data).__name__}")
    if isinstance(data, Batch):
        raise ValueError(
            f"{loader} takes one NestedSignal, got a Batch of "
            f"{data.num_graphs} signals, whose per-signal attributes (ptr, "
            f"graph-level ones such as y) it would copy whole into every "
            f"mini-batch; batch small signals with "
            f"torch_geometric.loader.DataLoader, or pass the loader one "
            f"signal (batch.get_example(i))")
    if not isinstance(data, NestedSignal):
        raise ValueError(
            f"{loader} needs a NestedSignal (a Data with a hierarchy over its "
            f"nodes), got a {type(data).__name__} without one; build it with "
            f"a builder of hsa_geo.transforms (e.g. "
            f"GraphHierarchy()(data)) or NestedSignal.from_data(data, "
            f"hierarchy)")
    # Raises ValueError, saying how to fix it, without a tree or when the
    # nodes no longer match the leaves.
    return data.hierarchy
