r"""The entries of the HSA attention matrix on given pairs of leaves.

The mathematics: docs/math.md, sections 3.4 and 3.6.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from hsa_geo._checks import check_device, check_floating, check_index
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.dynamic_program import FamilyWeights


def leaf_attention_weights(weights: FamilyWeights, hierarchy: Hierarchy,
                           edge_index: Tensor) -> Tensor:
    r"""The entries of the HSA attention matrix :math:`Q` on given leaf
    edges, from the family weights that
    :func:`~hsa_geo.functional.hierarchical_attention` returns with
    :obj:`return_weights=True`, without building :math:`Q`.

    The orientation is PyG's: an edge :math:`j \to i`
    (``edge_index[0] = j`` the source, ``edge_index[1] = i`` the target)
    carries the message from key :math:`j` to query :math:`i`, so
    ``alpha[e]`` is :math:`Q_{ij}`, as the ``alpha`` of
    :class:`~torch_geometric.nn.conv.TransformerConv` (which
    :class:`~torch_geometric.explain.algorithm.AttentionExplainer` reads).
    For leaves :math:`i \neq j` of one tree with lowest common ancestor
    :math:`F`, :math:`a` the child of :math:`F` above :math:`i` and
    :math:`b` the one above :math:`j`:

    .. math::
        Q_{ij} = \frac{r_F \, \pi_F(a \to b)}{|b|}, \qquad Q_{ii} = r_i,
        \qquad r_{\mathrm{root}} = 1, \quad r_a = r_F \, \pi_F(a \to a),

    and :math:`Q_{ij} = 0` for leaves of different trees and across a pair
    :math:`(a, b)` that a family graph does not list. Summed over all
    :math:`j`, a row of :math:`Q` is one, so the ``alpha`` of the incoming
    edges of :math:`i` sum to at most one (exactly one when they are all
    the leaves of its tree).

    The masses :math:`r` are products of self weights down the tree, level
    by level (:math:`O(T H)`); the lowest common ancestors are found by
    climbing from both ends at once (:math:`O(E \cdot \mathrm{depth})`);
    the family weights are read from a table with one slot per sibling
    pair (:math:`O(P + E)`). It is differentiable: gradients flow
    through :obj:`weights.weight` to the queries and keys.

    Args:
        weights (FamilyWeights): the family weights :math:`\pi_F(a \to b)`
            of :obj:`hierarchy`, as
            :func:`~hsa_geo.functional.hierarchical_attention` returns them
            (without dropout).
        hierarchy (Hierarchy): the forest the weights were computed on.
        edge_index (LongTensor): ``[2, E]`` pairs of leaf ids, source
            (key) first, target (query) second. Self loops give
            :math:`Q_{ii}`.

    :rtype: :class:`Tensor`

    Shapes:
        - **input:** weights ``([2, P], [P, H])`` (or ``([2, P], [P])`` for
          one head) with :math:`P` = :attr:`Hierarchy.num_sibling_pairs`,
          edge_index ``[2, E]``
        - **output:** ``[E, H]`` (or ``[E]``), in the dtype of the weights

    Examples:
        >>> from hsa_geo import Hierarchy, hierarchical_attention
        >>> # Two trees: leaves {0, 1} under node 3, and leaf 2 alone.
        >>> h = Hierarchy.from_parent([3, 3, -1, -1], 3)
        >>> q = k = v = torch.zeros(3, 1, 4)  # one head, equal scores
        >>> _, weights = hierarchical_attention(q, k, v, h,
        ...                                     return_weights=True)
        >>> edge_index = torch.tensor([[1, 0, 2, 0],   # source j
        ...                            [0, 0, 2, 2]])  # target i
        >>> leaf_attention_weights(weights, h, edge_index)
        tensor([[0.5000],
                [0.5000],
                [1.0000],
                [0.0000]])
    """
    index, weight, edge_index = _check(weights, hierarchy, edge_index)
    single_head = weight.dim() == 1
    if single_head:
        weight = weight.unsqueeze(-1)
    parent, size = hierarchy.parent, hierarchy.leaf_count
    table = _PairTable(hierarchy, parent, index)
    # One zero row for every pair the weights do not list (off the family
    # graph, across trees): a gather, no mask.
    weight = torch.cat([weight, weight.new_zeros(1, weight.size(1))])

    r = _subtree_masses(hierarchy, parent, table, weight)
    key, query = edge_index
    a, b = _children_below_lca(parent, hierarchy.node_depth, query, key,
                               hierarchy.depth)
    # (index_select: rows of [*, H] gather faster than advanced indexing)
    block = r.index_select(0, parent[a].clamp(min=0)) * weight.index_select(
        0, table.row(a, b)) / size[b].to(weight.dtype).unsqueeze(-1)
    # a == b only for a self loop (leaves have no children); this also
    # covers a leaf that is a tree alone, which has no self pair.
    alpha = torch.where((a == b).unsqueeze(-1), r.index_select(0, query),
                        block)
    return alpha.squeeze(-1) if single_head else alpha


class _PairTable:
    r"""The row of every sibling pair ``(a, b)`` in the weights, in a table
    of :math:`P + 1` slots: node ``a`` owns the ``|C(parent(a))|`` slots
    from ``start[a]``, one per sibling ``b`` by its rank (these rows add up
    to :math:`P`). Slot :math:`P`, and the slot of every pair the weights
    do not list, holds row :math:`P`, the zero row."""
    def __init__(self, hierarchy: Hierarchy, parent: Tensor, index: Tensor):
        num_pairs = index.size(1)
        has_parent = parent >= 0
        children = torch.bincount(parent[has_parent],
                                  minlength=parent.numel())
        width = torch.where(has_parent, children[parent.clamp(min=0)], 0)
        self.start = torch.cumsum(width, 0) - width
        self.rank = hierarchy.sibling_rank
        self.has_parent = has_parent
        self.rows = torch.full((num_pairs + 1, ), num_pairs,
                               dtype=torch.long, device=parent.device)
        self.rows[self.start[index[0]] + self.rank[index[1]]] = torch.arange(
            num_pairs, device=parent.device)

    def row(self, a: Tensor, b: Tensor) -> Tensor:
        r"""The rows of the pairs ``(a[k], b[k])`` (:math:`P`: unlisted);
        ``a`` and ``b`` are siblings or two roots."""
        slot = torch.where(self.has_parent[a], self.start[a] + self.rank[b],
                           self.rows.numel() - 1)
        return self.rows[slot]


def _subtree_masses(hierarchy: Hierarchy, parent: Tensor, table: _PairTable,
                    weight: Tensor) -> Tensor:
    r"""``[T, H]`` the mass :math:`r_n` a leaf under node :math:`n` keeps
    inside :math:`n`: 1 at roots, :math:`r_F \pi_F(a \to a)` below."""
    nodes = torch.arange(hierarchy.num_nodes, device=parent.device)
    rows = table.row(nodes, nodes)
    missing = (parent >= 0) & (rows == weight.size(0) - 1)
    if bool(missing.any()):
        node = int(missing.nonzero()[0])
        raise ValueError(
            f"'weights' lists no self pair ({node}, {node}), which every "
            f"child of a family has; pass the weights that "
            f"hierarchical_attention(..., return_weights=True) returned for "
            f"this hierarchy")
    stay = weight[rows]
    r = torch.ones_like(stay)
    # Parents before children: each level reads the masses of the one above.
    for level in hierarchy.levels[1:]:
        r[level] = r[parent[level]] * stay[level]
    return r


def _children_below_lca(parent: Tensor, depth: Tensor, i: Tensor, j: Tensor,
                        steps: int) -> Tuple[Tensor, Tensor]:
    r"""The ancestors ``(a, b)`` of ``i`` and ``j`` that are children of
    their lowest common ancestor; two different roots across trees, and
    ``a == b == i`` for ``i == j``. The deeper end climbs until both are at
    one depth, then both climb until they are siblings: at most
    :obj:`steps` (the depth of the forest) rounds, each over the pairs
    still climbing (edges of a graph mostly join near leaves)."""
    a, b = i.clone(), j.clone()
    climbing = torch.arange(i.numel(), device=i.device)
    for _ in range(steps):
        x, y = a[climbing], b[climbing]
        dx, dy, px, py = depth[x], depth[y], parent[x], parent[y]
        apart = (dx == dy) & (px != py)  # then neither is a root
        up_x, up_y = (dx > dy) | apart, (dy > dx) | apart
        a[climbing] = torch.where(up_x, px, x)
        b[climbing] = torch.where(up_y, py, y)
        climbing = climbing[up_x | up_y]
        if climbing.numel() == 0:
            break
    return a, b


def _check(weights: FamilyWeights, hierarchy: Hierarchy,
           edge_index: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Checks the arguments; returns the pair index, the weight and
    ``edge_index``, indices as ``long``."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    if not isinstance(weights, FamilyWeights):
        raise TypeError(
            f"'weights' must be the FamilyWeights that hierarchical_attention"
            f"(..., return_weights=True) returns, got "
            f"{type(weights).__name__}")
    index = check_index(weights.index, 'weights.index')
    weight = check_floating(weights.weight, 'weights.weight')
    num_pairs = hierarchy.num_sibling_pairs
    if index.size(1) != num_pairs or weight.dim() not in (1, 2) or \
            weight.size(0) != num_pairs:
        raise ValueError(
            f"'weights' must hold one row per sibling pair of the hierarchy "
            f"(index [2, {num_pairs}], weight [{num_pairs}, H] or "
            f"[{num_pairs}]), got index {tuple(index.shape)} and weight "
            f"{tuple(weight.shape)}; were they computed on another "
            f"hierarchy?")
    check_device(index, 'weights.index', hierarchy.device, 'the hierarchy')
    check_device(weight, 'weights.weight', hierarchy.device, 'the hierarchy')
    parent = hierarchy.parent
    t = hierarchy.num_nodes
    inside = ((index >= 0) & (index < t)).all(dim=0)
    pa = parent[index.clamp(0, t - 1)]
    bad = ~inside | (pa[0] != pa[1]) | (pa[0] < 0)
    if bool(bad.any()):
        p = int(bad.nonzero()[0])
        raise ValueError(
            f"weights.index[:, {p}] = ({int(index[0, p])}, "
            f"{int(index[1, p])}) is not a pair of siblings of this "
            f"hierarchy; pass the weights computed on it")

    edge_index = check_index(edge_index, 'edge_index')
    check_device(edge_index, 'edge_index', hierarchy.device, 'the hierarchy')
    n = hierarchy.num_leaves
    bad = ((edge_index < 0) | (edge_index >= n)).any(dim=0)
    if bool(bad.any()):
        e = int(bad.nonzero()[0])
        raise ValueError(
            f"edge_index[:, {e}] = ({int(edge_index[0, e])}, "
            f"{int(edge_index[1, e])}) is not a pair of leaf ids "
            f"(0..{n - 1}); edges join leaves, the rows of the node features")
    return index, weight, edge_index
