r"""The exact dynamic program of hierarchical self-attention (HSA)."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from hsa_geo.data.hierarchy import FamilyBucket, Hierarchy


class FamilyWeights(NamedTuple):
    r"""The family attention weights :math:`\pi_F(a \to b)`.

    Attributes:
        index (LongTensor): ``[2, P]`` the ordered sibling pairs ``(a, b)``
            (node ids, ``a == b`` included), as
            :attr:`Hierarchy.sibling_pairs`.
        weight (Tensor): ``[P, H]`` :math:`\pi_F(a \to b)` per head; for every
            ``a`` the weights over its siblings ``b`` sum to one.
    """
    index: Tensor
    weight: Tensor


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, hierarchy: Hierarchy):
    if not isinstance(hierarchy, Hierarchy):
        raise ValueError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, got "
                         f"{type(hierarchy).__name__}")
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"'{name}' must be a floating point tensor")
        if t.dim() != q.dim() or t.dim() not in (2, 3):
            raise ValueError(
                f"q, k and v must all be [N, D] or all [N, H, D]; got shapes "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"q and k must have the same shape and v the same [N(, H)]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.size(0) != hierarchy.num_leaves:
        raise ValueError(
            f"q, k and v have {q.size(0)} rows but the hierarchy has "
            f"{hierarchy.num_leaves} leaves; row i must be leaf i")
    if q.device != hierarchy.device:
        raise ValueError(f"q is on {q.device} but the hierarchy is on "
                         f"{hierarchy.device}; call hierarchy.to(q.device)")


def _to_slots(bucket: FamilyBucket, leaf_x: Tensor, cluster_x: Tensor) -> Tensor:
    r"""Gathers per-node rows into the padded family table:
    ``[N, *S]`` and ``[M, *S]`` -> ``[F, W, *S]`` (zeros in padding)."""
    num_families = bucket.family.numel()
    out = leaf_x.new_zeros((num_families * bucket.width, ) + leaf_x.shape[1:])
    out[bucket.leaf_slot] = leaf_x[bucket.leaf_node]
    out[bucket.cluster_slot] = cluster_x[bucket.cluster_node]
    return out.view((num_families, bucket.width) + leaf_x.shape[1:])


def _from_slots(bucket: FamilyBucket, x: Tensor, leaf_out: Tensor,
                cluster_out: Tensor):
    r"""Scatters ``[F, W, *S]`` slot rows back to their nodes, in place."""
    x = x.flatten(0, 1)
    leaf_out[bucket.leaf_node] = x[bucket.leaf_slot]
    cluster_out[bucket.cluster_node] = x[bucket.cluster_slot]


def _dropout_keep(shape, p: float, like: Tensor) -> Tensor:
    return torch.empty(shape, device=like.device).bernoulli_(1.0 - p).bool()


def hierarchical_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    hierarchy: Hierarchy,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    training: bool = False,
    return_weights: bool = False,
) -> Union[Tensor, Tuple[Tensor, FamilyWeights]]:
    r"""Hierarchical self-attention over the leaves of a :class:`Hierarchy`,
    computed exactly by the dynamic program of HSA.

    HSA is the attention matrix :math:`Q` closest in KL divergence to softmax
    attention :math:`P` among those in which a sub-signal attends to each
    sibling sub-signal as a whole. With :math:`\bar q_n, \bar k_n, \bar v_n`
    the means over the :math:`|n|` leaves under node :math:`n`:

    .. math::
        l_{ab} &= \mathrm{scale} \cdot \langle \bar q_a, \bar k_b \rangle
            + \log |b| \quad (b \neq a), \qquad l_{aa} = g_a, \\
        g_i &= \mathrm{scale} \cdot \langle q_i, k_i \rangle, \qquad
        g_F = \sum_{a \in C(F)} \tfrac{|a|}{|F|}
            \operatorname{logsumexp}_b l_{ab}, \\
        \pi_F(a \to b) &= \operatorname{softmax}_b(l_{ab}), \qquad
        r_a = r_F \, \pi_F(a \to a), \quad r_{\mathrm{root}} = 1, \\
        y_i &= r_i v_i + \sum_{F \ni i} r_F \sum_{b \neq a}
            \pi_F(a \to b) \, \bar v_b .

    The upward pass (means, :math:`g`) and the downward pass (:math:`r`,
    context) are scatter reductions level by level over the tree; the
    attention inside families is one batched product per family width. All
    of it runs in log space, and nothing of size :math:`N \times N` is built:
    time and memory are :math:`O(T H D + P H D)` with :math:`P = \sum_F
    |C(F)|^2` sibling pairs.

    Args:
        q (Tensor): queries ``[N, H, D]`` (or ``[N, D]`` for one head).
        k (Tensor): keys, same shape as :obj:`q`.
        v (Tensor): values ``[N, H, D_v]`` (or ``[N, D_v]``).
        hierarchy (Hierarchy): the forest over the ``N`` leaves.
        scale (float, optional): score scale; :math:`1/\sqrt{D}` if
            :obj:`None`.
        dropout_p (float): dropout on the family weights :math:`\pi` (each
            kept weight is divided by ``1 - dropout_p``) when
            :obj:`training`.
        training (bool): apply dropout.
        return_weights (bool): also return :class:`FamilyWeights`.

    Returns:
        Tensor ``[N, H, D_v]`` (or ``[N, D_v]``) in the dtype of :obj:`v`;
        with :obj:`return_weights`, also the family weights. Computation is
        in float32 (float64 for float64 inputs).
    """
    _check_inputs(q, k, v, hierarchy)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"'dropout_p' must be in [0, 1), got {dropout_p}")
    single_head = q.dim() == 2
    if single_head:
        q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
    out_dtype = v.dtype
    dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) \
        else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    drop = dropout_p > 0.0 and training
    # A finite "minus infinity": rows without off-diagonal entries stay
    # finite, so logsumexp and its gradient never see (-inf) - (-inf).
    neg = torch.finfo(dtype).min / 4

    h = hierarchy
    num_leaves, num_clusters = h.num_leaves, h.num_clusters
    heads = q.size(1)
    lwp, lpc = h._leaf_with_parent, h._leaf_parent_cluster
    all_leaves_have_parent = lwp.numel() == num_leaves
    csize = h.leaf_count[num_leaves:].to(dtype)  # [M]

    def cluster_means(x: Tensor) -> Tensor:
        # Upward pass: leaf sums into parents, then clusters bottom-up.
        s = x.new_zeros((num_clusters, ) + x.shape[1:])
        s.index_add_(0, lpc, x if all_leaves_have_parent else x[lwp])
        for child, par in reversed(h._cluster_levels):
            s.index_add_(0, par, s[child])
        return s / csize.view(-1, 1, 1)

    qc, kc, vc = cluster_means(q), cluster_means(k), cluster_means(v)
    logsize_leaf = q.new_zeros(num_leaves)
    logsize_clus = csize.log()

    # Family scores: off-diagonal logits l_ab and their logsumexp per row a.
    scores = []
    off_lse_leaf = q.new_full((num_leaves, heads), neg)
    off_lse_clus = q.new_full((num_clusters, heads), neg)
    for b in h.family_buckets:
        qs = _to_slots(b, q, qc)
        ks = _to_slots(b, k, kc)
        logsize = _to_slots(b, logsize_leaf, logsize_clus)  # [F, W]
        s = torch.einsum('fahd,fbhd->fhab', qs, ks) * scale
        s = s + logsize[:, None, None, :]
        eye = torch.eye(b.width, dtype=torch.bool, device=s.device)
        valid = b.mask[:, :, None] & b.mask[:, None, :] & ~eye  # [F, W, W]
        s = s.masked_fill(~valid[:, None], neg)
        scores.append(s)
        _from_slots(b, torch.logsumexp(s, dim=-1).transpose(1, 2),
                    off_lse_leaf, off_lse_clus)

    # g (per-leaf log-partition of every subtree), bottom-up. The row
    # logsumexp over all siblings, the diagonal l_aa = g_a included, is
    # lse_a = logaddexp(off-diagonal lse_a, g_a).
    g_leaf = (q * k).sum(dim=-1) * scale  # [N, H]
    lse_leaf = torch.logaddexp(off_lse_leaf, g_leaf)
    g_clus = q.new_zeros(num_clusters, heads)
    g_clus.index_add_(
        0, lpc, (lse_leaf if all_leaves_have_parent else lse_leaf[lwp]) /
        csize[lpc].unsqueeze(-1))
    for child, par in reversed(h._cluster_levels):
        lse = torch.logaddexp(off_lse_clus[child], g_clus[child])
        g_clus.index_add_(0, par, lse * (csize[child] / csize[par])[:, None])
    lse_clus = torch.logaddexp(off_lse_clus, g_clus)

    # log pi_aa, with dropout on the self weights; roots keep mass 1.
    log_self_leaf = g_leaf - lse_leaf
    log_self_clus = g_clus - lse_clus
    if drop:
        bonus = -math.log1p(-dropout_p)
        log_self_leaf = torch.where(
            _dropout_keep(log_self_leaf.shape, dropout_p, q),
            log_self_leaf + bonus, float('-inf'))
        log_self_clus = torch.where(
            _dropout_keep(log_self_clus.shape, dropout_p, q),
            log_self_clus + bonus, float('-inf'))

    # Downward pass, masses: log r_a = log r_F + log pi_aa.
    log_r_clus = q.new_zeros(num_clusters, heads)
    for child, par in h._cluster_levels:
        log_r_clus[child] = log_r_clus[par] + log_self_clus[child]
    log_r_leaf = log_self_leaf.index_add(0, lwp, log_r_clus[lpc])

    # Downward pass, context: u_a = r_F sum_{b != a} pi_F(a->b) vbar_b.
    u_leaf = v.new_zeros(v.shape)
    u_clus = v.new_zeros(vc.shape)
    weights = []
    for b, s in zip(h.family_buckets, scores):
        lse = _to_slots(b, lse_leaf, lse_clus).transpose(1, 2)  # [F, H, W]
        log_r = log_r_clus[b.parent_cluster]  # [F, H]
        attn = torch.exp(s - lse.unsqueeze(-1) + log_r[:, :, None, None])
        if drop:
            keep = _dropout_keep(attn.shape, dropout_p, q)
            attn = attn * keep / (1.0 - dropout_p)
        vs = _to_slots(b, v, vc)
        _from_slots(b, torch.einsum('fhab,fbhd->fahd', attn, vs), u_leaf,
                    u_clus)
        if return_weights:
            gs = _to_slots(b, g_leaf, g_clus).transpose(1, 2)  # [F, H, W]
            eye = torch.eye(b.width, dtype=torch.bool, device=s.device)
            full = torch.where(eye, gs.unsqueeze(-1), s)  # l_aa = g_a
            pi = torch.exp(full - lse.unsqueeze(-1))
            pair = b.mask[:, :, None] & b.mask[:, None, :]
            f, i, j = pair.nonzero(as_tuple=True)
            weights.append(pi[f, :, i, j])

    # Contexts accumulate down the path: U_a = U_F + u_a.
    for child, par in h._cluster_levels:
        u_clus.index_add_(0, child, u_clus[par])
    out = u_leaf + torch.exp(log_r_leaf).unsqueeze(-1) * v
    out = out.index_add(0, lwp, u_clus[lpc])

    out = out.to(out_dtype)
    if single_head:
        out = out.squeeze(1)
    if not return_weights:
        return out
    weight = torch.cat(weights) if weights else q.new_zeros(0, heads)
    if single_head:
        weight = weight.squeeze(1)
    return out, FamilyWeights(h.sibling_pairs, weight)
