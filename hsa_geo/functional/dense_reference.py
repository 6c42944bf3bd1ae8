r"""The dense HSA attention matrix, built from the closed form.

This is the reference the dynamic program is tested against, so it shares no
code with it: it walks the tree in Python, takes block means of the dense
score matrix instead of dot products of mean vectors, and fills the
:math:`N \times N` matrix block by block. Use it for small inputs (tests,
pictures); its cost is :math:`O(N^2)` memory and :math:`O(P N^2)` time.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from hsa_geo._autocast import autocast_off
from hsa_geo._checks import (check_device, check_float, check_floating,
                             check_pair_bias)
from hsa_geo._memory import ensure_memory
from hsa_geo.data.hierarchy import Hierarchy


def hierarchical_attention_matrix(q: Tensor, k: Tensor, hierarchy: Hierarchy,
                                  scale: Optional[float] = None,
                                  pair_bias: Optional[Tensor] = None
                                  ) -> Tensor:
    r"""The dense HSA attention matrix :math:`Q`, so that
    ``hierarchical_attention(q, k, v, hierarchy)`` equals ``Q @ v`` per head.

    For leaves :math:`i \neq j` with lowest common ancestor :math:`F`,
    :math:`i` under child :math:`a` and :math:`j` under child :math:`b`:

    .. math::
        Q_{ij} = r_F \, \pi_F(a \to b) / |b|, \qquad Q_{ii} = r_i,

    where :math:`l_{ab}` is the mean of the scores :math:`s_{ij} =
    \mathrm{scale} \cdot \langle q_i, k_j\rangle` over the block
    :math:`a \times b` plus :math:`\log |b|`, :math:`l_{aa} = g_a` (the
    per-leaf log-partition of subtree :math:`a`), :math:`\pi_F(a \to \cdot) =
    \operatorname{softmax}(l_{a \cdot})` and :math:`r_a = r_F \pi_F(a \to a)`
    with :math:`r = 1` at roots.

    With a family graph (:attr:`Hierarchy.family_edge_index`), :math:`l_{ab}
    = -\infty` for every pair of distinct siblings it does not list, so
    :math:`Q_{ij} = 0` across those blocks. A :obj:`pair_bias`
    :math:`\beta_{ab}` is added to :math:`l_{ab}` for :math:`b \neq a`.

    Args:
        q (Tensor): ``[N, H, D]`` or ``[N, D]``.
        k (Tensor): same shape as :obj:`q`.
        hierarchy (Hierarchy): the forest over the ``N`` leaves.
        scale (float, optional): :math:`1/\sqrt{D}` if :obj:`None`.
        pair_bias (Tensor, optional): ``[P, H]`` (``[P]`` for 2-D inputs),
            one row per pair of :attr:`Hierarchy.sibling_pairs`.

    Returns:
        Tensor ``[H, N, N]`` (``[N, N]`` for 2-D inputs) in the wider
        dtype of :obj:`q` and :obj:`k`; rows sum to one.
    """
    _check(q, k, hierarchy, pair_bias)
    # in the wider dtype, as hierarchical_attention computes in float64
    # when one input is float64
    dtype = torch.promote_types(q.dtype, k.dtype)
    q, k = q.to(dtype), k.to(dtype)
    single_head = q.dim() == 2
    if single_head:
        q, k = q.unsqueeze(1), k.unsqueeze(1)
    # [H, N, N] scores and the matrix, with room for their temporaries
    ensure_memory(4 * q.size(1) * q.size(0)**2 * q.element_size(),
                  f'the dense {q.size(0)} x {q.size(0)} HSA matrix',
                  q.device, 'use hierarchical_attention, which never '
                  'builds it')
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else check_float(
        scale, 'scale', 0.0, low_open=True)
    n = hierarchy.num_leaves
    parent: List[int] = hierarchy.parent.tolist()
    children, post, leaves = _tree(parent, n)
    allowed = None
    if hierarchy.family_edge_index is not None:
        allowed = set(map(tuple, hierarchy.family_edge_index.t().tolist()))
    bias: Dict[tuple, Tensor] = {}
    if pair_bias is not None:
        rows = pair_bias.reshape(pair_bias.size(0), q.size(1))
        for p, (a, b) in enumerate(hierarchy.sibling_pairs.t().tolist()):
            bias[(a, b)] = rows[p]

    # in that dtype also under autocast, as the dynamic program computes
    with autocast_off(q.device):
        s = scale * torch.einsum('ihd,jhd->hij', q, k)  # [H, N, N]
    g: Dict[int, Tensor] = {i: s[:, i, i] for i in range(n)}
    log_pi: Dict[int, Tensor] = {}
    for fam in post:  # children before parents
        if fam < n:
            continue
        kids = children[fam]
        logits = _family_logits(s, g, kids, leaves, allowed, bias)
        lse = torch.logsumexp(logits, dim=-1)  # [H, C]
        sizes = torch.tensor([len(leaves[a]) for a in kids], dtype=s.dtype,
                             device=s.device)
        g[fam] = (lse * sizes / len(leaves[fam])).sum(dim=-1)
        log_pi[fam] = logits - lse.unsqueeze(-1)
    out = _spread(s, parent, n, post, children, leaves, log_pi)
    return out.squeeze(0) if single_head else out


def _tree(parent: List[int], n: int) -> Tuple[Dict[int, List[int]],
                                              List[int],
                                              Dict[int, List[int]]]:
    r"""The children of every internal node, the nodes in post-order
    (children before parents) and the leaves under every node."""
    children: Dict[int, List[int]] = {}
    for node, p in enumerate(parent):
        if p >= 0:
            children.setdefault(p, []).append(node)
    # Post-order without recursion: deep chains.
    post, stack = [], [(r, False) for r in range(len(parent)) if parent[r] < 0]
    while stack:
        node, expanded = stack.pop()
        if expanded or node < n:
            post.append(node)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children[node])
    leaves: Dict[int, List[int]] = {}
    for node in post:
        leaves[node] = [node] if node < n else [
            i for c in children[node] for i in leaves[c]
        ]
    return children, post, leaves


def _family_logits(s: Tensor, g: Dict[int, Tensor], kids: List[int],
                   leaves: Dict[int, List[int]], allowed, bias
                   ) -> Tensor:
    r"""``[H, C, C]`` the logits of a family of ``C`` children: ``g_a`` on
    the diagonal, the mean score of the two blocks plus ``log |b|`` (and the
    pair bias) off it, ``-inf`` where the family graph has no edge."""
    logits = s.new_empty(s.size(0), len(kids), len(kids))
    for ai, a in enumerate(kids):
        for bi, b in enumerate(kids):
            if a == b:
                logits[:, ai, bi] = g[a]
            elif allowed is not None and (a, b) not in allowed:
                logits[:, ai, bi] = -math.inf
            else:
                block = s[:, leaves[a]][:, :, leaves[b]]
                logits[:, ai, bi] = block.mean(dim=(1, 2)) + math.log(
                    len(leaves[b]))
                if (a, b) in bias:
                    logits[:, ai, bi] += bias[(a, b)]
    return logits


def _spread(s: Tensor, parent: List[int], n: int, post: List[int],
            children: Dict[int, List[int]], leaves: Dict[int, List[int]],
            log_pi: Dict[int, Tensor]) -> Tensor:
    r"""``[H, N, N]``: top-down, the mass ``r_a = r_F pi_F(a -> a)`` of
    every child, and the weight ``r_F pi_F(a -> b)`` of a sibling ``b``
    spread evenly over its leaves; a leaf keeps its own mass."""
    log_r: Dict[int, Tensor] = {}
    out = s.new_zeros(s.shape)
    for fam in reversed(post):  # parents before children
        if parent[fam] < 0:
            log_r[fam] = s.new_zeros(s.size(0))
        if fam < n:
            out[:, fam, fam] = log_r[fam].exp()
            continue
        kids = children[fam]
        for ai, a in enumerate(kids):
            log_r[a] = log_r[fam] + log_pi[fam][:, ai, ai]
            for bi, b in enumerate(kids):
                if a != b:
                    weight = (log_r[fam] + log_pi[fam][:, ai, bi]).exp()
                    rows = torch.tensor(leaves[a])
                    cols = torch.tensor(leaves[b])
                    out[:, rows[:, None], cols[None, :]] = (
                        weight / len(leaves[b]))[:, None, None]
    return out


def _check(q: Tensor, k: Tensor, hierarchy: Hierarchy,
           pair_bias: Optional[Tensor]):
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, got "
                        f"{type(hierarchy).__name__}")
    check_floating(q, 'q')
    check_floating(k, 'k')
    if q.shape != k.shape or q.dim() not in (2, 3) or q.size(-1) == 0:
        raise ValueError(f"q and k must both be [N, D] or [N, H, D] with "
                         f"D >= 1; got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if q.size(0) != hierarchy.num_leaves:
        raise ValueError(f"q has {q.size(0)} rows but the hierarchy has "
                         f"{hierarchy.num_leaves} leaves")
    check_device(q, 'q', hierarchy.device, 'the hierarchy')
    check_device(k, 'k', hierarchy.device, 'the hierarchy')
    if pair_bias is not None:
        check_pair_bias(pair_bias, hierarchy, q.shape[1:-1])
