r"""The dense matrix of query-resolved HSA, built pair by pair.

The reference :func:`~hsa_geo.functional.query_resolved_attention` is
tested against, so it shares no code with it: for every pair of leaves it
walks the tree in Python to find the block the key lies in as seen from the
query, and takes the block's mean of the dense score matrix. Use it for
small inputs; its cost is :math:`O(N^2 \cdot \mathrm{depth})` Python steps.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor

from hsa_geo._autocast import autocast_off
from hsa_geo._checks import check_float
from hsa_geo._memory import ensure_memory
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.dynamic_program import check_attention_inputs


def query_resolved_attention_matrix(q: Tensor, k: Tensor,
                                    hierarchy: Hierarchy,
                                    scale: Optional[float] = None) -> Tensor:
    r"""The dense matrix :math:`Q` of query-resolved HSA, so that
    ``query_resolved_attention(q, k, v, hierarchy)`` equals ``Q @ v`` per
    head.

    For leaves :math:`i \neq j` of one tree, let :math:`b` be the child of
    their lowest common ancestor above :math:`j` and :math:`M_{ij}` the
    mean of the scores :math:`s_{ij'} = \mathrm{scale} \cdot \langle q_i,
    k_{j'} \rangle` over the leaves :math:`j'` under :math:`b`;
    :math:`M_{ii} = s_{ii}`. Then :math:`Q_{i\cdot} =
    \operatorname{softmax}_j(M_{ij})`, zero across trees and, with a family
    graph, across pairs of siblings :math:`(a, b)` it does not list
    (:math:`a` the child above :math:`i`). The :math:`|b|` leaves of a
    block share its weight :math:`|b| e^{M_{ib}} / Z_i` evenly.

    Args:
        q (Tensor): ``[N, H, D]`` or ``[N, D]``.
        k (Tensor): same shape as :obj:`q`.
        hierarchy (Hierarchy): the forest over the ``N`` leaves.
        scale (float, optional): :math:`1/\sqrt{D}` if :obj:`None`.

    Returns:
        Tensor ``[H, N, N]`` (``[N, N]`` for 2-D inputs) in the wider
        dtype of :obj:`q` and :obj:`k`; rows sum to one.
    """
    check_attention_inputs(q, k, k, hierarchy)
    # in the wider dtype, as query_resolved_attention computes in float64
    # when one input is float64
    dtype = torch.promote_types(q.dtype, k.dtype)
    q, k = q.to(dtype), k.to(dtype)
    single_head = q.dim() == 2
    if single_head:
        q, k = q.unsqueeze(1), k.unsqueeze(1)
    ensure_memory(4 * q.size(1) * q.size(0)**2 * q.element_size(),
                  f'the dense {q.size(0)} x {q.size(0)} matrix', q.device,
                  'use query_resolved_attention, which never builds it')
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else check_float(
        scale, 'scale', 0.0, low_open=True)
    n = hierarchy.num_leaves
    parent: List[int] = hierarchy.parent.tolist()
    path = [_path(parent, i) for i in range(n)]
    under: Dict[int, List[int]] = {}
    for j in range(n):
        for node in path[j]:
            under.setdefault(node, []).append(j)
    allowed = None
    if hierarchy.family_edge_index is not None:
        allowed = set(map(tuple, hierarchy.family_edge_index.t().tolist()))

    # in that dtype also under autocast, as the dynamic program computes
    with autocast_off(q.device):
        s = scale * torch.einsum('ihd,jhd->hij', q, k)  # [H, N, N]
    m = torch.full_like(s, -math.inf)
    for i in range(n):
        m[:, i, i] = s[:, i, i]
        ancestors = {node: depth for depth, node in enumerate(path[i])}
        for j in range(n):
            if j == i or path[j][-1] != path[i][-1]:
                continue  # itself, or another tree
            # b: the last node on j's path before it meets i's path.
            up = next(t for t, node in enumerate(path[j])
                      if node in ancestors)
            b = path[j][up - 1]
            a = path[i][ancestors[path[j][up]] - 1]
            if allowed is None or (a, b) in allowed:
                m[:, i, j] = s[:, i, under[b]].mean(dim=-1)
    out = torch.softmax(m, dim=-1)
    return out.squeeze(0) if single_head else out


def _path(parent: List[int], node: int) -> List[int]:
    r"""The nodes from :obj:`node` up to its root, both included."""
    path = [node]
    while parent[path[-1]] >= 0:
        path.append(parent[path[-1]])
    return path
