r"""Leaf-edge features as a learned pair bias of HSA."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.utils import scatter

from hsa_geo._checks import (check_device, check_dtype, check_floating,
                             check_index, check_int)
from hsa_geo._memory import ensure_pairs_fit
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.sparse_family_attention import all_finite


class EdgePairBias(torch.nn.Module):
    r"""Features of edges between leaves as a pair bias :math:`\beta_{ab}`
    of HSA (docs/math.md, section 6.2). An edge :math:`(i, j)`, :math:`i
    \neq j` in one tree, belongs to the block of the children :math:`a`
    and :math:`b` of the lowest common ancestor :math:`F` of :math:`i` and
    :math:`j` (:math:`a` above :math:`i`, :math:`b` above :math:`j`, as in
    section 3.1), and biases :math:`a` attending to :math:`b`: the first
    end attends to the second, the reverse of PyG's message direction
    (``edge_index[1]`` receives from ``edge_index[0]``); for undirected
    graphs both directions are listed anyway. The bias of a sibling pair is
    the mean of the projected features of its edges :math:`E_{ab}`:

    .. math::
        \beta_{ab} = \frac{1}{|E_{ab}|} \sum_{(i, j) \in E_{ab}}
            \mathbf{W} \mathbf{e}_{ij} + \mathbf{w}_0 \in \mathbb{R}^H,
        \qquad \beta_{ab} = 0 \ \text{if} \ E_{ab} = \emptyset .

    The bias is constant on each block, so HSA stays the exact KL
    minimiser of its family. For two sibling *leaves* the block is the
    single entry :math:`(i, j)`: the bias is exactly the edge's, and on a
    flat hierarchy HSA with this bias is softmax attention with the
    additive mask :math:`\mathbf{W} \mathbf{e}_{ij} + \mathbf{w}_0` on the
    edges and 0 elsewhere. Above the leaves the edges between two sibling
    subtrees share their mean.

    Edges between different trees (no common ancestor, and HSA has no
    attention across trees) and self-loops (the diagonal
    :math:`l_{aa} = g_a` is no block) are ignored. Repeated edges count
    once each in the mean.

    Args:
        edge_dim (int): :math:`F_e`, features per edge, at least ``1``.
        heads (int): :math:`H`, at least ``1``.

    Shapes:
        - **input:** a :class:`~hsa_geo.data.Hierarchy` with :math:`N`
          leaves, :obj:`edge_index` ``[2, E]`` (leaf ids in
          :math:`[0, N)`), :obj:`edge_attr` ``[E, F_e]``
        - **output:** ``[P, H]``, one row per pair of
          :attr:`~hsa_geo.data.Hierarchy.sibling_pairs`, the
          ``pair_bias`` of :func:`~hsa_geo.functional.hierarchical_attention`.
    """
    def __init__(self, edge_dim: int, heads: int):
        super().__init__()
        self.edge_dim = check_int(edge_dim, 'edge_dim')
        self.heads = check_int(heads, 'heads')
        self.lin = Linear(self.edge_dim, self.heads)
        self.reset_parameters()

    def reset_parameters(self):
        self.lin.reset_parameters()

    def forward(self, hierarchy: Hierarchy, edge_index: Tensor,
                edge_attr: Tensor) -> Tensor:
        edge_index, edge_attr = self.check_input(hierarchy, edge_index,
                                                 edge_attr)
        # The pair lists, their sorted keys and the [P, H] output: 80 bytes
        # per pair besides the output at the peak (measured on one family
        # of 4,000 children).
        ensure_pairs_fit(hierarchy, 80 + self.heads * edge_attr.element_size(),
                         'the edge bias')
        pair_row, keep = self.pair_of_edge(hierarchy, edge_index)
        value = self.lin(edge_attr[keep])
        return scatter(value, pair_row[keep], dim=0,
                       dim_size=hierarchy.num_sibling_pairs, reduce='mean')

    @staticmethod
    def pair_of_edge(hierarchy: Hierarchy,
                     edge_index: Tensor) -> Tuple[Tensor, Tensor]:
        r"""For every leaf edge :math:`(i, j)`, the row of
        :attr:`~hsa_geo.data.Hierarchy.sibling_pairs` that holds
        :math:`(a, b)`, and whether the edge is kept (``i != j`` in one
        tree; the row of a dropped edge is meaningless)."""
        parent, depth = hierarchy.parent, hierarchy.node_depth
        a, b = edge_index[0], edge_index[1]
        # Climb the deeper end to the depth of the other; then both ends
        # together until their parents agree. Every step moves all edges at
        # once, and at most depth steps are needed in either phase.
        for _ in range(hierarchy.depth):
            depth_a, depth_b = depth[a], depth[b]
            if not bool((depth_a != depth_b).any()):
                break
            a = torch.where(depth_a > depth_b, parent[a], a)
            b = torch.where(depth_b > depth_a, parent[b], b)
        for _ in range(hierarchy.depth):
            apart = parent[a] != parent[b]
            if not bool(apart.any()):
                break
            # Equal depths: two nodes whose parents differ are not roots.
            a = torch.where(apart, parent[a], a)
            b = torch.where(apart, parent[b], b)
        # Roots (parent -1 on both) here mean different trees.
        keep = (edge_index[0] != edge_index[1]) & (parent[a] >= 0)
        # Row of (a, b) in sibling_pairs by its key a * T + b.
        num_nodes = hierarchy.num_nodes
        pairs = hierarchy.sibling_pairs
        keys, order = (pairs[0] * num_nodes + pairs[1]).sort()
        where = torch.searchsorted(keys, a * num_nodes + b)
        row = order[where.clamp(max=max(keys.numel() - 1, 0))] \
            if keys.numel() else where
        return row, keep

    def check_input(self, hierarchy: Hierarchy, edge_index: Tensor,
                    edge_attr: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Checks the input of :meth:`forward` and returns
        :obj:`edge_index` (as ``long``) and :obj:`edge_attr`: edges between
        the hierarchy's leaves, ``[E, edge_dim]`` finite features of the
        layer's dtype, all on its devices."""
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, "
                            f"got {type(hierarchy).__name__}")
        edge_index = check_index(edge_index, 'edge_index')
        check_device(edge_index, 'edge_index', hierarchy.device,
                     'the hierarchy')
        num_leaves = hierarchy.num_leaves
        if edge_index.numel() and (int(edge_index.min()) < 0 or
                                   int(edge_index.max()) >= num_leaves):
            raise ValueError(
                f"'edge_index' holds ids from {int(edge_index.min())} to "
                f"{int(edge_index.max())} but the hierarchy has "
                f"{num_leaves} leaves; edges join leaves 0..{num_leaves - 1}"
                f" (the rows of x)")
        check_floating(edge_attr, 'edge_attr')
        num_edges = edge_index.size(1)
        if edge_attr.dim() != 2 or edge_attr.size(0) != num_edges or \
                edge_attr.size(1) != self.edge_dim:
            raise ValueError(
                f"'edge_attr' must have shape [E, edge_dim] = [{num_edges}, "
                f"{self.edge_dim}] (one row per column of edge_index), got "
                f"{tuple(edge_attr.shape)}")
        weight = self.lin.weight
        check_device(edge_attr, 'edge_attr', weight.device, 'the layer')
        check_dtype(edge_attr, 'edge_attr', weight, 'the edge projection')
        self.check_finite(edge_attr, 'edge_attr')
        return edge_index, edge_attr

    @staticmethod
    def check_finite(edge_attr: Tensor, name: str):
        r"""Checks that the edge features :obj:`edge_attr` ``[E, F_e]``
        (the argument :obj:`name`) hold no NaN or inf, naming the first
        edge that does: else the projected bias fails its own check, which
        names no input, or an inf silently forbids a pair (bias -inf)."""
        # One sum on every call; the row is looked for only when it is not
        # finite, an overflow of finite values included.
        if not all_finite(edge_attr):
            bad = ~torch.isfinite(edge_attr)
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                raise ValueError(f"'{name}' row {row} (edge {row}) holds "
                                 f"NaN or inf; edge features must be finite")

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(edge_dim={self.edge_dim}, '
                f'heads={self.heads})')
