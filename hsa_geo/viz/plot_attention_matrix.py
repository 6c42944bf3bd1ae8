r"""Drawing the dense HSA attention matrix with its family blocks."""
from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from hsa_geo._checks import (check_device, check_flags, check_float,
                             check_floating, check_int)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.viz._figure import (check_axes, check_figure_args,
                                 save_figure, tree_order)

# An N x N image above this is unreadable and its dense matrix costly.
MAX_LEAVES = 2000
# hierarchical_attention_matrix (the reference) costs O(P N^2) in a Python
# loop over the P sibling pairs; above this many pairs Q is taken from the
# dynamic program instead (identity values), which is exact as well.
_MAX_REFERENCE_PAIRS = 20000


def plot_attention_matrix(q: Tensor, k: Optional[Tensor] = None,
                          hierarchy: Optional[Hierarchy] = None,
                          head: int = 0, softmax: bool = False,
                          scale: Optional[float] = None, ax=None,
                          path: Union[str, os.PathLike, None] = None,
                          log: bool = False, boundaries: bool = True,
                          cmap: str = 'viridis', title: Optional[str] = None,
                          figsize: Optional[Tuple[float, float]] = None,
                          dpi: int = 100, max_leaves: int = MAX_LEAVES):
    r"""Shows the dense HSA attention matrix :math:`Q` of one head as an
    image, with the boundaries of the family blocks drawn over it, and
    optionally softmax attention :math:`P` beside it.

    Two ways to call it:

    - ``plot_attention_matrix(q, k, hierarchy)``: :math:`Q` is computed
      from queries and keys ``[N, H, D]`` (or ``[N, D]``) by
      :func:`~hsa_geo.functional.hierarchical_attention_matrix` (for
      hierarchies with more than 20,000 sibling pairs, where that
      reference is slow, from the dynamic program with identity values:
      ``hierarchical_attention(q, k, I, hierarchy)`` is :math:`Q I = Q`);
      :obj:`softmax` adds :math:`P` (softmax within every tree, zero across
      trees) on the same colour scale, with
      :math:`\sum_i \mathrm{KL}(Q_i \,\|\, P_i)` in its title;
    - ``plot_attention_matrix(matrix, hierarchy=hierarchy)``: any matrix
      ``[N, N]`` or ``[H, N, N]`` (e.g. an HSA matrix computed elsewhere);
      :obj:`hierarchy` is optional there and only gives the block lines.

    With a hierarchy, rows and columns are shown in *tree order* (the leaf
    order of :func:`~hsa_geo.viz.plot_hierarchy`; ``0..N-1`` for the
    builders of :mod:`hsa_geo.transforms`), so that every family is a
    contiguous square. For every family :math:`F` the lines split its
    square into the blocks :math:`a \times b` of its children, on which
    :math:`Q` is constant off the diagonal; every tree gets an outline.

    Args:
        q (Tensor): queries ``[N, H, D]`` / ``[N, D]``, or the matrix when
            :obj:`k` is :obj:`None`.
        k (Tensor, optional): keys, same shape as :obj:`q`.
        hierarchy (Hierarchy, optional): required with :obj:`k`.
        head (int): the head to show, ``0..H-1``.
        softmax (bool): also show softmax attention (needs :obj:`k`).
        scale (float, optional): score scale, positive; :math:`1/\sqrt{D}`
            if :obj:`None`.
        ax (Axes or pair of Axes, optional): draw there (two axes with
            :obj:`softmax`); a new figure otherwise.
        path (str or PathLike, optional): also save the figure there (PNG
            unless the suffix names another format).
        log (bool): logarithmic colour scale (zeros, e.g. across trees or
            family-graph non-edges, are left blank).
        boundaries (bool): draw the family block lines.
        cmap (str or Colormap): matplotlib colour map.
        title (str, optional): title of the (first) axes.
        figsize ((float, float), optional): size of a new figure in inches.
        dpi (int): resolution of the saved PNG.
        max_leaves (int): refuse (``ValueError``) more leaves than this
            (default 2,000).

    Every argument is checked before anything is computed: a wrong type
    raises :class:`TypeError` (``head=True``, ``softmax=1``, integer
    :obj:`q`), a value out of range :class:`ValueError` (``head=-1``: heads
    are ``0..H-1``; shapes that do not fit; a :obj:`path` in a missing
    folder or with a suffix matplotlib cannot write); a matrix holding NaN,
    inf or negative entries raises :class:`ValueError` too.

    Returns:
        matplotlib.figure.Figure: the figure drawn into.
    """
    cmap = check_figure_args(path, cmap, title, figsize, dpi)
    check_flags(softmax=softmax, log=log, boundaries=boundaries)
    check_axes(ax, 2 if softmax else 1)
    _check_inputs(q, k, hierarchy, head, scale, softmax, max_leaves)
    mat, log_p = _head_matrices(q, k, hierarchy, head, scale, softmax)
    order, blocks, trees = None, [], []
    if hierarchy is not None:  # rows and columns in tree order
        order, blocks, trees = _blocks(hierarchy)
        perm = torch.tensor(order)
        mat = mat[perm][:, perm]
        if log_p is not None:
            log_p = log_p[perm][:, perm]

    panels = [(mat, title if title is not None else
               f"{'HSA attention Q' if k is not None else 'attention'}, "
               f"head {head}")]
    if log_p is not None:
        kl = _total_kl(mat, log_p)
        panels.append((log_p.exp(), f'softmax attention P, head {head}\n'
                       rf'$\sum_i$ KL($Q_i \| P_i$) = {kl:.4g}'))
    fig, axes = _figure_axes(ax, figsize, len(panels))
    norm = _colour_norm([m for m, _ in panels], log)
    for axes_i, (m, label) in zip(axes, panels):
        image = _draw_panel(axes_i, m, label, norm, cmap, log,
                            blocks if boundaries else [], trees, order)
    fig.colorbar(image, ax=axes, fraction=0.046 / len(axes), pad=0.02)
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


def _head_matrices(q: Tensor, k: Optional[Tensor],
                   hierarchy: Optional[Hierarchy], head: int,
                   scale: Optional[float], softmax: bool
                   ) -> Tuple[Tensor, Optional[Tensor]]:
    r"""``Q`` of :obj:`head` (or the given matrix, :obj:`k` being
    :obj:`None`) and softmax attention's :math:`\log P` when asked for,
    ``[N, N]`` in float64 on the CPU; :class:`ValueError` if ``Q`` is not
    finite."""
    if k is None:
        mats = q.detach().unsqueeze(0) if q.dim() == 2 else q.detach()
        soft = None
    else:
        q, k = q.detach(), k.detach()
        if q.dim() == 2:
            q, k = q.unsqueeze(1), k.unsqueeze(1)
        mats = _hsa_matrix(q, k, hierarchy, scale)
        soft = _log_softmax_matrix(q, k, hierarchy, scale) if softmax \
            else None
    mat = mats[head].cpu().double()
    if not bool(mat.isfinite().all()):
        hint = '; are q and k finite?' if k is not None else ''
        raise ValueError(f"the attention matrix of head {head} holds NaN or "
                         f"inf{hint}")
    if bool((mat < 0).any()):  # (only a given matrix can be)
        raise ValueError(f"the attention matrix of head {head} has negative "
                         f"entries ({float(mat.min()):.3g}); attention "
                         f"weights are >= 0: pass weights, not scores")
    return mat, soft[head].cpu().double() if soft is not None else None


def _figure_axes(ax, figsize: Optional[Tuple[float, float]], count: int):
    r"""The figure and :obj:`count` axes to draw into: :obj:`ax` as given,
    or a new figure of that many panels side by side."""
    from matplotlib.figure import Figure
    if ax is not None:
        axes = list(ax) if isinstance(ax, (list, tuple)) else [ax]
        return axes[0].figure, axes
    fig = Figure(figsize=figsize if figsize is not None else
                 (5.2 * count, 4.6))
    return fig, [fig.add_subplot(1, count, i + 1) for i in range(count)]


def _colour_norm(mats: List[Tensor], log: bool):
    r"""One colour scale for all panels, linear from 0 or logarithmic over
    the positive entries."""
    from matplotlib.colors import LogNorm, Normalize
    top = max(float(m.max()) for m in mats)
    if not log:
        return Normalize(vmin=0.0, vmax=top if top > 0 else 1.0)
    vmax = top if top > 0 else 1.0
    vmin = min((float(m[m > 0].min()) for m in mats if bool((m > 0).any())),
               default=vmax)
    vmin = max(vmin, vmax * 1e-12)
    # A constant picture (one leaf, all ones) still needs a range.
    return LogNorm(vmin=vmin if vmin < vmax else vmax / 10, vmax=vmax)


def _draw_panel(axes, m: Tensor, label: str, norm, cmap, log: bool,
                blocks: List, trees: List[Tuple[int, int]],
                order: Optional[List[int]]):
    r"""One matrix as an image with its family block lines, tree outlines,
    leaf ticks (up to 40 leaves) and labels; returns the image."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle
    n = m.size(0)
    shown = m.masked_fill(m <= 0, float('nan')) if log else m
    image = axes.imshow(shown.numpy(), cmap=cmap, norm=norm,
                        interpolation='nearest')
    if blocks:
        axes.add_collection(LineCollection(
            blocks, colors='w', linewidths=max(0.3, 1.2 - n / 400),
            alpha=0.8))
    for lo, hi in trees:
        axes.add_patch(Rectangle((lo - 0.5, lo - 0.5), hi - lo, hi - lo,
                                 fill=False, edgecolor='r', linewidth=1.0))
    if n <= 40:
        ticks = list(range(n))
        names = [str(i) for i in (order if order is not None else ticks)]
        axes.set_xticks(ticks, names, fontsize=6, rotation=90)
        axes.set_yticks(ticks, names, fontsize=6)
    axes.set_xlabel('key leaf' + (' (tree order)' if order is not None
                                  else ''), fontsize=8)
    axes.set_ylabel('query leaf', fontsize=8)
    axes.set_title(label, fontsize=9)
    return image


def _check_inputs(q, k, hierarchy, head, scale, softmax: bool,
                  max_leaves) -> None:
    r"""Checks the tensors, the head and the sizes."""
    check_floating(q, 'q')
    if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy or "
                        f"None, got {type(hierarchy).__name__}")
    check_int(head, 'head', low=None)  # the range once H is known
    if scale is not None:
        check_float(scale, 'scale', low=0.0, low_open=True)
    max_leaves = check_int(max_leaves, 'max_leaves')
    if k is None:
        if softmax:
            raise ValueError("softmax=True needs queries and keys: call "
                             "plot_attention_matrix(q, k, hierarchy, ...)")
        if q.dim() not in (2, 3) or q.size(-1) != q.size(-2):
            raise ValueError(f"a matrix must be [N, N] or [H, N, N], got "
                             f"shape {tuple(q.shape)}")
        n, heads = q.size(-1), q.size(0) if q.dim() == 3 else 1
    else:
        check_floating(k, 'k')
        if hierarchy is None:
            raise ValueError("plot_attention_matrix(q, k, ...) needs the "
                             "hierarchy: plot_attention_matrix(q, k, "
                             "hierarchy)")
        if q.shape != k.shape or q.dim() not in (2, 3):
            raise ValueError(
                f"q and k must have one shape, [N, D] or [N, H, D]; got "
                f"{tuple(q.shape)} and {tuple(k.shape)}")
        check_device(k, 'k', q.device, 'q')
        n, heads = q.size(0), q.size(1) if q.dim() == 3 else 1
    if n == 0 or heads == 0:
        raise ValueError(f"nothing to draw: {tuple(q.shape)} holds no "
                         f"leaves or no heads")
    if n > max_leaves:
        raise ValueError(
            f"{n} leaves is more than max_leaves={max_leaves}; an N x N "
            f"picture of that size is unreadable and costly: show one graph "
            f"of a batch or a slice of the sequence (or raise max_leaves)")
    if hierarchy is not None and n != hierarchy.num_leaves:
        raise ValueError(f"the {'matrix' if k is None else 'queries'} cover "
                         f"{n} leaves but the hierarchy has "
                         f"{hierarchy.num_leaves}; row i must be leaf i")
    check_int(head, 'head', 0, heads - 1)


def _hsa_matrix(q: Tensor, k: Tensor, hierarchy: Hierarchy,
                scale: Optional[float]) -> Tensor:
    r"""``[H, N, N]`` the HSA matrix of ``[N, H, D]`` queries and keys."""
    if hierarchy.sibling_pairs.size(1) <= _MAX_REFERENCE_PAIRS:
        from hsa_geo.functional import hierarchical_attention_matrix
        return hierarchical_attention_matrix(q, k, hierarchy, scale=scale)
    from hsa_geo.functional import hierarchical_attention
    n, heads = q.size(0), q.size(1)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    out = hierarchical_attention(q, k, eye.unsqueeze(1).expand(n, heads, n),
                                 hierarchy, scale=scale)  # [N, H, N]
    return out.permute(1, 0, 2)


def _tree_of_leaves(hierarchy: Hierarchy) -> Tensor:
    r"""``[N]`` the root above every leaf (pointer doubling)."""
    parent = hierarchy.parent.cpu()
    anc = torch.arange(parent.numel())
    up = torch.where(parent >= 0, parent, anc)
    for _ in range(max(1, hierarchy.depth).bit_length() + 1):
        anc = up[anc]
        up = up[up]
    return anc[:hierarchy.num_leaves]


def _log_softmax_matrix(q: Tensor, k: Tensor, hierarchy: Hierarchy,
                        scale: Optional[float]) -> Tensor:
    r"""``[H, N, N]`` the log-weights of softmax attention within every tree
    of the forest, in float64 (where weights of float32 would underflow to
    zero, and their logarithms to :math:`-\infty`, for scores apart by
    about 100)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    s = scale * torch.einsum('ihd,jhd->hij', q.double(), k.double())
    tree = _tree_of_leaves(hierarchy).to(q.device)
    same = tree.unsqueeze(1) == tree.unsqueeze(0)
    return torch.log_softmax(s.masked_fill(~same, float('-inf')), dim=-1)


def _total_kl(qm: Tensor, log_p: Tensor) -> float:
    r""":math:`\sum_i \mathrm{KL}(Q_i \| P_i)` from :math:`\log P`
    (terms with :math:`Q = 0` vanish)."""
    pos = qm > 0
    return float((qm[pos] * (qm[pos].log() - log_p[pos])).sum())


def _blocks(hierarchy: Hierarchy
            ) -> Tuple[List[int], list, List[Tuple[int, int]]]:
    r"""Tree order of the leaves, the block lines of every family in that
    order (segments in image coordinates) and the range of every tree."""
    children, roots = tree_order(hierarchy)
    n = hierarchy.num_leaves
    order: List[int] = []
    span = {}
    stack = [(r, False) for r in reversed(roots)]
    start = {}
    while stack:
        node, done = stack.pop()
        if node < n:
            span[node] = (len(order), len(order) + 1)
            order.append(node)
        elif done:
            span[node] = (start[node], len(order))
        else:
            start[node] = len(order)
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(children[node]))
    segs = []
    for node in range(n, hierarchy.num_nodes):
        kids = children[node]
        if len(kids) < 2:
            continue
        lo, hi = span[node]
        for c in kids[1:]:
            cut = span[c][0] - 0.5
            segs.append(((cut, lo - 0.5), (cut, hi - 0.5)))
            segs.append(((lo - 0.5, cut), (hi - 0.5, cut)))
    trees = [span[r] for r in roots]
    return order, segs, trees
