r"""Query-resolved hierarchical self-attention: the block constraint of HSA
kept on the key side only, so that every query leaf has weights of its own
(``docs/math.md``, section 6.10)."""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from hsa_geo._checks import check_bool, check_float
from hsa_geo._memory import ensure_memory
from hsa_geo.data.hierarchy import Hierarchy, path_sums
from hsa_geo.data.tensor_state import cache_mode
from hsa_geo.functional.dynamic_program import check_attention_inputs
from hsa_geo.functional.pair_pattern import DEVICES, PairPattern
from hsa_geo.functional.sparse_family_attention import scatter_logsumexp


def query_resolved_attention(q: Tensor, k: Tensor, v: Tensor,
                             hierarchy: Hierarchy,
                             scale: Optional[float] = None,
                             dropout_p: float = 0.0,
                             training: bool = False) -> Tensor:
    r"""Query-resolved hierarchical self-attention over the leaves of a
    :class:`~hsa_geo.data.Hierarchy`.

    For a leaf :math:`i`, the nodes :math:`a` on its path to the root
    (:math:`i` itself included) and their siblings :math:`S` (the other
    children of the parent of :math:`a`) partition the other leaves of its
    tree into blocks. Leaf :math:`i` gives each block one weight, spread
    evenly over its leaves, and itself one:

    .. math::
        w_i(S) \propto |S| \exp\big(\mathrm{scale} \cdot
            \langle q_i, \bar k_S \rangle\big), \qquad
        w_i(i) \propto \exp(s_{ii}), \qquad
        y_i = w_i(i) \, v_i + \sum_S w_i(S) \, \bar v_S ,

    with one softmax per query :math:`i` over its blocks and itself, and
    :math:`\bar k_S, \bar v_S` the means over the :math:`|S|` leaves under
    :math:`S`. It is the attention closest in KL to softmax attention among
    those in which a query attends to each such block as a whole; that
    family contains HSA's, so it is never further from softmax than
    :func:`~hsa_geo.functional.hierarchical_attention`. On a flat tree it
    is softmax attention. With a family graph
    (:attr:`~hsa_geo.data.Hierarchy.family_edge_index`), a leaf under
    :math:`a` sees sibling :math:`S` only along an edge :math:`(a, S)`.

    Time and memory are :math:`O(N \cdot \mathrm{depth} \cdot b \cdot H D)`
    for :math:`b` siblings per level; inputs that would not fit in memory
    are refused before anything is allocated.

    Args:
        q (Tensor): queries ``[N, H, D]`` (or ``[N, D]`` for one head).
        k (Tensor): keys, same shape as :obj:`q`.
        v (Tensor): values ``[N, H, D_v]`` (or ``[N, D_v]``).
        hierarchy (Hierarchy): the forest over the ``N`` leaves.
        scale (float, optional): score scale; :math:`1/\sqrt{D}` if
            :obj:`None`.
        dropout_p (float): dropout on the weights :math:`w_i` (each kept
            weight is divided by ``1 - dropout_p``) when :obj:`training`.
        training (bool): apply dropout.

    Returns:
        Tensor ``[N, H, D_v]`` (or ``[N, D_v]``) in the dtype of :obj:`v`,
        computed in float32 (float64 for float64 inputs).
    """
    check_attention_inputs(q, k, v, hierarchy)
    if scale is not None:
        scale = check_float(scale, 'scale', 0.0, low_open=True)
    dropout_p = check_float(dropout_p, 'dropout_p', 0.0, 1.0, high_open=True)
    check_bool(training, 'training')
    single_head = q.dim() == 2
    if single_head:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    out_dtype = v.dtype
    dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) \
        else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale

    heads, width = q.size(1), q.size(-1) + v.size(-1)
    n, t = q.size(0), hierarchy.num_nodes
    _ensure_fits(hierarchy, heads, width, q)
    leaf, node, query, block, pattern = _structure(hierarchy, heads)
    size = hierarchy.leaf_count.to(q.device)
    k_mean = subtree_means(k, leaf, node, size)
    v_mean = subtree_means(v, leaf, node, size)

    own = scale * (q * k).sum(-1)  # [N, H]
    if pattern is not None:
        table = torch.cat([q, q.new_zeros((t - n, ) + q.shape[1:])])
        dots = pattern.sampled_dot(table, k_mean)
        dots = dots.view(heads, -1).t()
    else:
        dots = torch.linalg.vecdot(q[query], k_mean[block])
    scores = torch.add(size[block].to(dtype).log().unsqueeze(-1), dots,
                       alpha=scale)
    # Over every query's blocks and itself, so that no segment is empty.
    lse = scatter_logsumexp(torch.cat([own, scores]),
                            torch.cat([torch.arange(n, device=q.device),
                                       query]), n, -math.inf)
    weight = F.dropout(torch.exp(scores - lse[query]), dropout_p, training)
    out = F.dropout(torch.exp(own - lse), dropout_p, training).unsqueeze(
        -1) * v
    if pattern is not None:
        context = pattern.matmul(weight.t().reshape(-1), v_mean)[:n]
    else:
        context = out.new_zeros(out.shape).index_add_(
            0, query, weight.unsqueeze(-1) * v_mean[block])
    out = (out + context).to(out_dtype)
    return out.squeeze(1) if single_head else out


def _ensure_fits(hierarchy: Hierarchy, heads: int, width: int, q: Tensor):
    r"""Refuses, before the pairs are listed, a call whose (query, block)
    pairs (:math:`O(N \cdot \mathrm{depth} \cdot b)`: quadratic in
    :math:`N` on a chain of families) cannot fit: the listing itself, its
    temporaries and pattern, and the scores and weights per pair kept for
    the backward (without the sparse kernels also the gathered rows of q,
    mean keys and values)."""
    pairs, entries = _pair_counts(hierarchy)
    listed = 0 if heads in _STRUCTURES[hierarchy] else \
        80 * pairs + 16 * entries
    kernels = q.device.type in DEVICES
    per_pair = 4 * heads if kernels else 3 * heads * width
    ensure_memory(listed + (per_pair * pairs + 3 * hierarchy.num_nodes *
                            heads * width) * q.element_size(),
                  'query-resolved attention', q.device,
                  f'{pairs:,} (query, block) pairs')


def _pair_counts(hierarchy: Hierarchy) -> Tuple[int, int]:
    r"""The number of (query, block) pairs of :func:`query_blocks` and of
    entries of :func:`leaf_paths`, counted without listing them (once per
    hierarchy)."""
    cache = _STRUCTURES.setdefault(hierarchy, {})
    if 'counts' not in cache:
        pairs = hierarchy.family_edge_index
        if pairs is None:
            pairs = hierarchy.sibling_pairs
        parent, n = hierarchy.parent, hierarchy.num_leaves
        # Blocks seen by a node: its siblings (along the family graph).
        blocks = torch.bincount(pairs[0, pairs[0] != pairs[1]],
                                minlength=parent.numel())
        # (roots have no siblings: path_sums leaving them out loses none)
        per_leaf = path_sums(parent, blocks)[:n]
        depth = hierarchy.node_depth[:n]
        cache['counts'] = (int(per_leaf.sum()), int(depth.sum()) + n)
    return cache['counts']


# What a hierarchy's pairs are, derived once per hierarchy (and head count
# for the pattern): the layers of a model attend over one tree in turn.
_STRUCTURES: 'weakref.WeakKeyDictionary[Hierarchy, Dict[Any, Any]]' = \
    weakref.WeakKeyDictionary()


def _structure(hierarchy: Hierarchy, heads: int) -> Tuple[
        Tensor, Tensor, Tensor, Tensor, Optional[PairPattern]]:
    r"""The leaf paths and (query, block) pairs of :obj:`hierarchy`, and
    their :class:`PairPattern` over the tree's nodes for :obj:`heads`
    heads (:obj:`None` without pairs or sparse kernels)."""
    cache = _STRUCTURES.setdefault(hierarchy, {})
    if 'pairs' not in cache:
        with cache_mode():  # saved by backwards after this call
            leaf, node = leaf_paths(hierarchy)
            cache['pairs'] = (leaf, node) + query_blocks(hierarchy, leaf,
                                                         node)
    leaf, node, query, block = cache['pairs']
    if heads not in cache:
        cache[heads] = None
        if query.numel() and query.device.type in DEVICES:
            t = hierarchy.num_nodes
            with cache_mode():  # a double backward saves it
                transpose = torch.argsort(block * t + query, stable=True)
                cache[heads] = PairPattern.build(query, block, transpose, t,
                                                 heads)
    return leaf, node, query, block, cache[heads]


def leaf_paths(hierarchy: Hierarchy) -> Tuple[Tensor, Tensor]:
    r"""``(leaf, node)`` ``[L]`` each: every leaf with every node on its
    path to its root, itself and the root included; depth by depth."""
    parent = hierarchy.parent
    leaf = torch.arange(hierarchy.num_leaves, device=parent.device)
    leaves, nodes, node = [leaf], [leaf], leaf
    while True:
        up = parent[node]
        keep = up >= 0
        if not keep.any():
            break
        leaf, node = leaf[keep], up[keep]
        leaves.append(leaf)
        nodes.append(node)
    return torch.cat(leaves), torch.cat(nodes)


def subtree_means(x: Tensor, leaf: Tensor, node: Tensor,
                  size: Tensor) -> Tensor:
    r"""``[T, ...]`` the mean of the rows of :obj:`x` ``[N, ...]`` over the
    leaves under every node (pairs :obj:`leaf`, :obj:`node` of
    :func:`leaf_paths`; :obj:`size` ``[T]`` the leaves per node)."""
    total = x.new_zeros((size.numel(), ) + x.shape[1:])
    total = total.index_add(0, node, x[leaf])
    return total / size.to(x.dtype).view((-1, ) + (1, ) * (x.dim() - 1))


def query_blocks(hierarchy: Hierarchy, leaf: Tensor, node: Tensor
                 ) -> Tuple[Tensor, Tensor]:
    r"""``(query, block)`` ``[P]`` each: every leaf with every sibling of
    every node on its path (:func:`leaf_paths`), along the family graph
    where the hierarchy has one."""
    pairs = hierarchy.family_edge_index
    if pairs is None:
        pairs = hierarchy.sibling_pairs
    pairs = pairs[:, pairs[0] != pairs[1]]
    order = torch.argsort(pairs[0], stable=True)
    source, target = pairs[0, order], pairs[1, order]
    count = torch.bincount(source, minlength=hierarchy.num_nodes)
    start = torch.cumsum(count, 0) - count
    per_path = count[node]
    query = torch.repeat_interleave(leaf, per_path)
    first = torch.repeat_interleave(start[node], per_path)
    offset = torch.arange(query.numel(), device=query.device) - \
        torch.repeat_interleave(torch.cumsum(per_path, 0) - per_path,
                                per_path)
    block = target[first + offset]
    # Sorted by query, then block: the order of the CSR pattern.
    order = torch.argsort(query * hierarchy.num_nodes + block, stable=True)
    return query[order], block[order]
