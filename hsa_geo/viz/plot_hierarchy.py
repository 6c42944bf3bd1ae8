r"""Drawing a :class:`~hsa_geo.data.Hierarchy` and its family attention."""
from __future__ import annotations

import os
from typing import (Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import numpy as np
import torch
from torch import Tensor

from hsa_geo._checks import (check_float, check_floating, check_index,
                             check_int)
from hsa_geo.data.hetero_nested_signal import HeteroNestedSignal
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.viz._figure import (check_axes, check_figure_args,
                                 save_figure, tree_order)

# Above these sizes a picture is unreadable and drawing it slow: refuse
# instead of hanging.
MAX_NODES = 2000
MAX_ARROWS = 20000
# Node ids are written next to the nodes up to this many nodes by default.
_AUTO_LABELS = 100

LabelsLike = Union[None, bool, Sequence[str], Mapping[int, str]]


def plot_hierarchy(hierarchy: Hierarchy, weights=None, head: int = 0,
                   ax=None, path: Union[str, os.PathLike, None] = None,
                   node_labels: LabelsLike = None, min_weight: float = 0.0,
                   cmap: str = 'viridis', title: Optional[str] = None,
                   figsize: Optional[Tuple[float, float]] = None,
                   dpi: int = 100, max_nodes: int = MAX_NODES,
                   max_arrows: int = MAX_ARROWS):
    r"""Draws a hierarchy top-down, optionally with the family attention
    weights :math:`\pi_F(a \to b)` of one head.

    **Layout** (a tidy layered layout, no graphviz needed): roots at the
    top, an internal node at the height of its depth, every leaf on the
    bottom row. Leaves are laid out left to right in *tree order*: a
    depth-first walk that visits the trees and, inside a family, the
    children by the smallest leaf id under them; for the builders of
    :mod:`hsa_geo.transforms` (contiguous families) that is ``0..N-1``. An
    internal node sits above the middle of its children.

    **What is drawn.** Tree edges in grey; leaves as small circles, internal
    nodes as larger ones. The family graph (if the hierarchy has one) as
    dashed arcs between the siblings it links. With :obj:`weights`:

    - every non-root node is coloured by its self weight
      :math:`\pi_F(a \to a)` (the share of the attention its leaves pay
      at the level of its parent :math:`F` that stays inside it); roots
      (no family above them) are white;
    - every pair ``a -> b`` of siblings with :math:`\pi_F(a \to b) >`
      :obj:`min_weight` is an arrow from ``a`` to ``b`` whose colour, width
      and opacity grow with the weight (``a -> b`` and ``b -> a`` bend to
      opposite sides); a colour bar gives the scale of both.

    Given a :class:`~hsa_geo.data.HeteroNestedSignal`, its tree is drawn
    and, without :obj:`weights`, every node is coloured by its modality (a
    leaf's type; a cluster's, when all its leaves share one; grey for
    mixed clusters), with a legend.

    Args:
        hierarchy (Hierarchy or HeteroNestedSignal): the tree (forest) to
            draw.
        weights (FamilyWeights, optional): the second output of
            ``hierarchical_attention(q, k, v, hierarchy,
            return_weights=True)``: ``index`` ``[2, P]`` sibling pairs (node
            ids of :obj:`hierarchy`) and ``weight`` ``[P, H]`` (or ``[P]``).
        head (int): the head of :obj:`weights` to show, ``0..H-1``.
        ax (matplotlib.axes.Axes, optional): draw into these axes; a new
            figure otherwise.
        path (str or PathLike, optional): also save the figure there (PNG
            unless the suffix names another format).
        node_labels: :obj:`None` writes the node ids if there are at most
            100 nodes; :obj:`True` / :obj:`False` always / never; a sequence
            of ``T`` strings or a mapping ``{node id: str}`` gives custom
            labels (nodes missing from a mapping stay unlabelled).
        min_weight (float): arrows are drawn for weights above this, in
            :math:`[0, 1)`.
        cmap (str or Colormap): matplotlib colour map of the weights.
        title (str, optional): axes title.
        figsize ((float, float), optional): size of a new figure in inches;
            grows with the number of leaves and the depth by default.
        dpi (int): resolution of the saved PNG.
        max_nodes (int): refuse (``ValueError``) hierarchies with more
            nodes than this (default 2,000).
        max_arrows (int): refuse to draw more weight arrows or family-graph
            arcs than this (default 20,000): raise :obj:`min_weight` or
            draw a smaller hierarchy.

    Every argument is checked before drawing: a wrong type raises
    :class:`TypeError` (``head=True``, a ``bool`` node id in
    :obj:`node_labels`, ``dpi=72.5``), a value out of range
    :class:`ValueError` (``head=-1``: heads are ``0..H-1``; a
    :obj:`min_weight` outside :math:`[0, 1)`; weights outside
    :math:`[0, 1]`; a :obj:`path` in a missing folder or with a suffix
    matplotlib cannot write).

    Returns:
        matplotlib.figure.Figure: the figure drawn into.
    """
    hierarchy, modality, names = _tree_of(hierarchy)
    # The range of head is checked against the weights, when there are any.
    head = check_int(head, 'head', low=None if weights is not None else 0)
    colours = check_figure_args(path, cmap, title, figsize, dpi)
    check_axes(ax, 1)
    min_weight = check_float(min_weight, 'min_weight', 0.0, 1.0,
                             high_open=True)
    max_nodes = check_int(max_nodes, 'max_nodes')
    max_arrows = check_int(max_arrows, 'max_arrows')
    picture = _checked_picture(hierarchy, weights, head, node_labels,
                               min_weight, max_nodes, max_arrows)
    fig, ax = _axes(ax, figsize, picture.num_leaves, hierarchy.depth)
    _draw(fig, ax, picture, colours, modality, names)
    if title is None:
        title = f'{hierarchy!r}' + (f', head {head}' if weights is not None
                                    else '')
    if title:
        ax.set_title(title, fontsize=9)
    if path is not None:
        save_figure(fig, path, dpi)
    return fig


class _Picture(NamedTuple):
    r"""What :func:`plot_hierarchy` draws, checked: the tidy layout, the
    tree, the weights of one head (``{node: pi(a->a)}`` or :obj:`None`, and
    the arrows ``(a, b, pi(a->b))``), the family-graph arcs and the
    labels."""
    x: List[float]
    y: List[float]
    parent: Tensor
    num_leaves: int
    self_w: Optional[Dict[int, float]]
    arrows: List[Tuple[int, int, float]]
    arcs: List[Tuple[int, int]]
    labels: Mapping[int, str]


def _checked_picture(hierarchy: Hierarchy, weights, head: int,
                     node_labels: LabelsLike, min_weight: float,
                     max_nodes: int, max_arrows: int) -> _Picture:
    r"""The :class:`_Picture` of :obj:`hierarchy`, after checking that it
    is small enough to draw and that the weights and labels fit it."""
    t, n = hierarchy.num_nodes, hierarchy.num_leaves
    if t > max_nodes:
        raise ValueError(
            f"the hierarchy has {t} nodes, more than max_nodes={max_nodes}; "
            f"such a picture is unreadable: draw one graph of a batch or a "
            f"smaller example (or raise max_nodes)")
    parent = hierarchy.parent.cpu()
    x, y, _ = _tidy_layout(hierarchy)
    self_w, arrows = _check_weights(weights, head, parent, min_weight)
    labels = _labels(node_labels, t)
    arcs = _family_arcs(hierarchy)
    for what, count in (('weight arrows', len(arrows)),
                        ('family-graph arcs', len(arcs))):
        if count > max_arrows:
            raise ValueError(
                f"{count} {what} to draw, more than max_arrows="
                f"{max_arrows}; raise min_weight, draw a smaller hierarchy "
                f"or raise max_arrows")
    return _Picture(x, y, parent, n, self_w, arrows, arcs, labels)


def _draw(fig, ax, picture: _Picture, colours,
          modality: Optional[Tensor], names: List[str]):
    r"""The colour bar (with weights), the tree edges and family-graph
    arcs, the weight arrows, the nodes (and a legend of the modalities)
    and the labels, in this order, into :obj:`ax`."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    x, y, parent, n = picture.x, picture.y, picture.parent, picture.num_leaves
    norm = Normalize(0.0, 1.0)
    small = 1.0 / max(1.0, n / 40.0)  # shrink marks on wide trees
    if picture.self_w is not None or picture.arrows:
        # Before the arcs are laid out: the colour bar takes space from ax.
        fig.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=ax,
                     fraction=0.03, pad=0.01,
                     label=r'$\pi_F(a\to a)$ (nodes), $\pi_F(a\to b)$ '
                     r'(arrows)')
    ax.set_xlim(min(x) - 1.0, max(x) + 1.0)
    ax.set_ylim(min(y) - 0.8, max(y) + 0.6)
    ax.set_axis_off()
    _draw_edges(ax, x, y, parent, picture.arcs)
    if picture.arrows:
        _draw_arrows(ax, x, y, picture.arrows, colours, norm, small)
    _draw_nodes(ax, x, y, parent, n, _faces(
        ax, parent, n, picture.self_w, colours, norm, modality, names), small)
    _draw_labels(ax, x, y, picture.labels, n)


def _tree_of(hierarchy) -> Tuple[Hierarchy, Optional[torch.Tensor],
                                 List[str]]:
    r"""The :class:`Hierarchy` to draw, and for a
    :class:`~hsa_geo.data.HeteroNestedSignal` its node modalities and leaf
    type names."""
    modality, names = None, []
    if isinstance(hierarchy, HeteroNestedSignal):
        modality, names = hierarchy.node_modality().cpu(), \
            hierarchy.leaf_types
        hierarchy = hierarchy.hierarchy
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy or "
                        f"a HeteroNestedSignal, got "
                        f"{type(hierarchy).__name__}")
    return hierarchy, modality, names


def _family_arcs(hierarchy: Hierarchy) -> List[Tuple[int, int]]:
    r"""The family graph's sibling pairs ``(a, b)``, ``a < b``, once each
    (none without a family graph)."""
    family = hierarchy.family_edge_index
    if family is None:
        return []
    return sorted({(min(a, b), max(a, b))
                   for a, b in family.cpu().t().tolist()})


def _axes(ax, figsize: Optional[Tuple[float, float]], n: int, depth: int):
    r"""``(figure, axes)``: those of :obj:`ax`, or a new figure sized by
    the leaves and the depth."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure
    if figsize is None:
        figsize = (min(max(4.0, 0.4 * n + 1.0), 40.0),
                   min(max(3.0, 1.1 * (depth + 1)), 20.0))
    # A bare Figure, not pyplot: no global state, works on any backend.
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _draw_edges(ax, x: List[float], y: List[float], parent: torch.Tensor,
                arcs: List[Tuple[int, int]]):
    r"""Tree edges in grey, family-graph arcs dashed."""
    from matplotlib.collections import LineCollection
    child = (parent >= 0).nonzero().view(-1).tolist()
    segs = [((x[c], y[c]), (x[int(parent[c])], y[int(parent[c])]))
            for c in child]
    ax.add_collection(LineCollection(segs, colors='0.6', linewidths=1.0,
                                     zorder=1))
    if arcs:
        lines, _ = _arcs(ax, x, y, arcs, [0.0] * len(arcs), rad=0.35)
        ax.add_collection(LineCollection(lines, colors='0.45',
                                         linewidths=0.8, linestyles='--',
                                         zorder=2))


def _draw_arrows(ax, x: List[float], y: List[float], arrows, colours, norm,
                 small: float):
    r"""The weight arrows ``(a, b, w)``, coloured by ``w``, more opaque and
    wider the larger ``w``."""
    from matplotlib.collections import LineCollection, PolyCollection
    w = np.array([a[2] for a in arrows])
    rgba = colours(norm(w))
    rgba[:, 3] = 0.25 + 0.75 * w
    lines, heads = _arcs(ax, x, y, [a[:2] for a in arrows],
                         2.5 + 4.0 * w, rad=0.3)
    ax.add_collection(LineCollection(
        lines, colors=rgba, linewidths=0.5 + 3.0 * w * small, zorder=2))
    ax.add_collection(PolyCollection(heads, facecolors=rgba,
                                     edgecolors='none', zorder=2))


def _faces(ax, parent: torch.Tensor, n: int, self_w, colours, norm,
           modality: Optional[torch.Tensor], names: List[str]) -> list:
    r"""A face colour per node: its self weight, else its modality, else
    leaf or cluster."""
    t = parent.numel()
    if self_w is not None:
        return [colours(norm(self_w[i])) if i in self_w else
                ((1.0, 1.0, 1.0, 1.0) if bool(parent[i] < 0) else
                 (0.8, 0.8, 0.8, 1.0)) for i in range(t)]
    if modality is not None:
        return _modality_faces(ax, modality, names)
    return ['tab:blue' if i < n else 'tab:orange' for i in range(t)]


def _draw_nodes(ax, x: List[float], y: List[float], parent: torch.Tensor,
                n: int, face: list, small: float):
    r"""Leaves as small circles, internal nodes as larger ones."""
    sizes = [(25.0 if i < n else 70.0) * max(small, 0.3)
             for i in range(parent.numel())]
    ax.scatter(x, y, s=sizes, c=face, edgecolors='k', linewidths=0.6,
               zorder=3)


def _draw_labels(ax, x: List[float], y: List[float], labels, n: int):
    r"""Labels below the leaves and above the internal nodes."""
    for node, text in labels.items():
        below = node < n
        ax.annotate(text, (x[node], y[node]),
                    xytext=(0, -9 if below else 7), textcoords='offset points',
                    ha='center', va='top' if below else 'bottom',
                    fontsize=7, zorder=4)


def _arcs(ax, x: List[float], y: List[float], pairs, head_px,
          rad: float, shrink_px: float = 5.0, points: int = 16,
          max_bulge_px: float = 30.0):
    r"""Curved arrows ``a -> b`` as polylines and head triangles in data
    coordinates, laid out in display space (so that bends and heads keep
    their shape whatever the aspect of the axes): a quadratic Bezier whose
    middle control point lies ``rad`` times the distance off the chord (at
    most ``max_bulge_px``), to the right of the direction of travel
    (``a -> b`` and ``b -> a`` bend to opposite sides), shortened by
    ``shrink_px`` pixels at both ends."""
    to_disp, to_data = ax.transData, ax.transData.inverted()
    idx = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    xy = np.stack([np.asarray(x), np.asarray(y)], axis=1)
    p0 = to_disp.transform(xy[idx[:, 0]])
    p2 = to_disp.transform(xy[idx[:, 1]])
    d = p2 - p0
    length = np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    # Bulge proportional to the chord, capped so that arcs between far
    # siblings stay near their row.
    bulge = rad * np.minimum(length, max_bulge_px / max(rad, 1e-9)) / length
    ctrl = 0.5 * (p0 + p2) + bulge * np.stack([d[:, 1], -d[:, 0]], axis=1)
    cut = np.minimum(shrink_px / length, 0.3)  # [A, 1]
    t = cut + (1.0 - 2.0 * cut) * np.linspace(0.0, 1.0, points)  # [A, S]
    t = t[:, :, None]
    curve = ((1 - t)**2 * p0[:, None] + 2 * t * (1 - t) * ctrl[:, None] +
             t**2 * p2[:, None])  # [A, S, 2]
    tip = curve[:, -1]
    tangent = 2 * (1 - t[:, -1]) * (ctrl - p0) + 2 * t[:, -1] * (p2 - ctrl)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True),
                          1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    size = np.broadcast_to(np.asarray(head_px, dtype=float),
                           (idx.shape[0], ))[:, None]
    heads = np.stack([tip, tip - size * (1.6 * tangent - normal),
                      tip - size * (1.6 * tangent + normal)], axis=1)

    def back(a: np.ndarray) -> np.ndarray:
        return to_data.transform(a.reshape(-1, 2)).reshape(a.shape)

    return back(curve), back(heads)


def _modality_faces(ax, modality: torch.Tensor, names: List[str]) -> list:
    r"""A colour per node by its modality (grey: mixed), and a legend."""
    from matplotlib.lines import Line2D
    palette = [f'C{i % 10}' for i in range(len(names))] + ['0.75']
    ax.legend(handles=[
        Line2D([], [], marker='o', linestyle='', markerfacecolor=colour,
               markeredgecolor='k', label=label)
        for colour, label in zip(palette, names + ['mixed'])],
        loc='upper right', fontsize=7, frameon=False)
    return [palette[int(m)] for m in modality]


def _tidy_layout(hierarchy: Hierarchy
                 ) -> Tuple[List[float], List[float], List[int]]:
    r"""``(x, y, leaf order)``: leaves at ``y = -depth`` of the hierarchy in
    tree order ``x = 0, 1, ...``; internal nodes at ``y = -node depth``,
    above the middle of their children."""
    children, roots = tree_order(hierarchy)
    t, bottom = hierarchy.num_nodes, -float(hierarchy.depth)
    depth = hierarchy.node_depth.cpu().tolist()
    x, order = [0.0] * t, []
    post = []  # children before parents
    stack = [(r, False) for r in reversed(roots)]
    while stack:  # iterative: deep chains must not hit the recursion limit
        node, done = stack.pop()
        if done or not children[node]:
            post.append(node)
            if not children[node]:
                x[node] = float(len(order))
                order.append(node)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(children[node]))
    for node in post:
        kids = children[node]
        if kids:
            x[node] = 0.5 * (min(x[c] for c in kids) + max(x[c] for c in kids))
    y = [bottom if not children[i] else -float(depth[i]) for i in range(t)]
    return x, y, order


def _check_weights(weights, head: int, parent: Tensor, min_weight: float):
    r"""``({node: pi(a->a)}, [(a, b, pi(a->b)) above min_weight])`` of one
    head; ``(None, [])`` without weights."""
    if weights is None:
        return None, []
    if not isinstance(weights, (tuple, list)):
        raise TypeError(
            f"'weights' must be the FamilyWeights (index, weight) returned "
            f"by hierarchical_attention(..., return_weights=True), got "
            f"{type(weights).__name__}")
    if len(weights) != 2:
        raise ValueError(
            f"'weights' must be the FamilyWeights (index, weight) returned "
            f"by hierarchical_attention(..., return_weights=True), got "
            f"{len(weights)} items")
    index = check_index(weights[0], 'weights.index', rows=2)
    weight = check_floating(weights[1], 'weights.weight')
    if weight.dim() not in (1, 2) or weight.size(0) != index.size(1):
        raise ValueError(
            f"weights.weight must be [P, H] or [P] with P = "
            f"{index.size(1)} pairs, got {tuple(weight.shape)}")
    heads = 1 if weight.dim() == 1 else weight.size(1)
    check_int(head, 'head', 0, heads - 1)
    # Logits or NaN would be drawn as some colour without a warning.
    if weight.numel() > 0 and not bool(
            ((weight >= 0) & (weight <= 1)).all()):
        raise ValueError("weights.weight must hold attention weights in "
                         "[0, 1] (no NaN); were they taken from "
                         "hierarchical_attention(..., return_weights=True)?")
    t = parent.numel()
    index = index.detach().cpu().long()
    if index.numel() > 0 and (int(index.min()) < 0 or int(index.max()) >= t):
        raise ValueError(
            f"weights.index holds node ids outside 0..{t - 1}; were the "
            f"weights computed with this hierarchy?")
    pa, pb = parent[index[0]], parent[index[1]]
    bad = (pa != pb) | (pa < 0)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise ValueError(
            f"weights.index[:, {j}] = ({int(index[0, j])}, "
            f"{int(index[1, j])}) is not a pair of siblings of this "
            f"hierarchy; were the weights computed with it?")
    w = weight.detach().cpu().double()
    w = w if w.dim() == 1 else w[:, head]
    a, b, w = index[0].tolist(), index[1].tolist(), w.tolist()
    self_w = {i: wi for i, j, wi in zip(a, b, w) if i == j}
    arrows = [(i, j, wi) for i, j, wi in zip(a, b, w)
              if i != j and wi > min_weight]
    return self_w, arrows


def _labels(node_labels: LabelsLike, t: int) -> Mapping[int, str]:
    r"""``{node id: label}`` of the nodes to label."""
    if node_labels is None:
        node_labels = t <= _AUTO_LABELS
    if node_labels is True:
        return {i: str(i) for i in range(t)}
    if node_labels is False:
        return {}
    if isinstance(node_labels, Mapping):
        for key in node_labels:
            check_int(key, 'node_labels key', 0, t - 1)
        return {int(k): str(v) for k, v in node_labels.items()}
    if isinstance(node_labels, (str, bytes)) or not isinstance(
            node_labels, Sequence):
        raise TypeError(f"'node_labels' must be None, a bool, a sequence of "
                        f"{t} labels or a mapping {{node id: label}}, got "
                        f"{type(node_labels).__name__}")
    if len(node_labels) != t:
        raise ValueError(f"node_labels has {len(node_labels)} entries but the "
                         f"hierarchy has {t} nodes; give one per node, leaves "
                         f"first (or a mapping for some nodes)")
    return {i: str(v) for i, v in enumerate(node_labels)}
