r"""What both pictures share: the checks of their figure arguments and the
order in which they lay out a tree."""
from __future__ import annotations

import os
from typing import List, Tuple

import torch

from hsa_geo._checks import check_float, check_int
from hsa_geo.data.hierarchy import Hierarchy


def tree_order(hierarchy: Hierarchy) -> Tuple[List[List[int]], List[int]]:
    r"""Children of every node sorted by the smallest leaf id under them,
    and the roots in the same order (plain lists: small trees)."""
    parent = hierarchy.parent.cpu().tolist()
    t = len(parent)
    first_leaf = list(range(hierarchy.num_leaves)) + [t] * (
        t - hierarchy.num_leaves)
    depth = hierarchy.node_depth.cpu()
    children: List[List[int]] = [[] for _ in range(t)]
    for node in torch.argsort(depth, descending=True, stable=True).tolist():
        p = parent[node]
        if p >= 0:
            children[p].append(node)
            first_leaf[p] = min(first_leaf[p], first_leaf[node])
    for kids in children:
        kids.sort(key=first_leaf.__getitem__)
    roots = sorted((i for i in range(t) if parent[i] < 0),
                   key=first_leaf.__getitem__)
    return children, roots


def check_figure_args(path, cmap, title, figsize, dpi):
    r"""Checks the arguments that both pictures share and returns the
    colour map (:obj:`cmap` resolved)."""
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"'path' must be a str or os.PathLike (where to "
                            f"save the figure) or None, got "
                            f"{type(path).__name__}")
        name = os.fspath(path)
        if not name:
            raise ValueError("'path' is empty; give a file name such as "
                             "'tree.png' or None")
        # Fail before drawing, not in savefig after it.
        if os.path.isdir(name):
            raise ValueError(f"'path' {name!r} is a folder; give a file name")
        folder = os.path.dirname(name)
        if folder and not os.path.isdir(folder):
            raise ValueError(f"the folder of 'path' ({folder!r}) does not "
                             f"exist; create it first")
        from matplotlib.backend_bases import FigureCanvasBase
        formats = FigureCanvasBase.get_supported_filetypes()
        suffix = os.path.splitext(name)[1][1:].lower()
        if suffix and suffix not in formats:
            raise ValueError(f"'path' ends in '.{suffix}', a format "
                             f"matplotlib does not write; use one of "
                             f"{sorted(formats)} (e.g. 'tree.png')")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"'title' must be a str or None, got "
                        f"{type(title).__name__}")
    if figsize is not None:
        if not isinstance(figsize, (tuple, list)):
            raise TypeError(f"'figsize' must be a pair (width, height) in "
                            f"inches or None, got {type(figsize).__name__}")
        if len(figsize) != 2:
            raise ValueError(f"'figsize' must be a pair (width, height) in "
                             f"inches, got {len(figsize)} numbers")
        for i, size in enumerate(figsize):
            check_float(size, f'figsize[{i}]', low=0.0, low_open=True)
    check_int(dpi, 'dpi')
    return check_cmap(cmap)


def save_figure(fig, path, dpi: int):
    r"""Saves :obj:`fig` at :obj:`path` itself, in the format its suffix
    names, PNG without one (matplotlib alone would append the extension of
    ``rcParams['savefig.format']`` to a path without a suffix, and write
    that format)."""
    suffix = os.path.splitext(os.fspath(path))[1][1:].lower()
    fig.savefig(path, dpi=dpi, bbox_inches='tight', format=suffix or 'png')


def check_cmap(cmap):
    r"""The matplotlib colour map named by :obj:`cmap` (or :obj:`cmap`)."""
    from matplotlib import colormaps
    from matplotlib.colors import Colormap
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"'cmap' must be the name of a colour map (e.g. "
                        f"'viridis') or a matplotlib Colormap, got "
                        f"{type(cmap).__name__}")
    if cmap not in colormaps:
        raise ValueError(f"'cmap'={cmap!r} is not a matplotlib colour map; "
                         f"try 'viridis', 'magma' or 'Blues'")
    return colormaps[cmap]


def check_axes(ax, count: int):
    r"""Checks that :obj:`ax` is :obj:`None`, or :obj:`count` axes (one
    Axes, or a list or tuple of them)."""
    if ax is None:
        return
    from matplotlib.axes import Axes
    axes = list(ax) if isinstance(ax, (list, tuple)) else [ax]
    if count == 1 and isinstance(ax, (list, tuple)):
        raise TypeError("'ax' must be one matplotlib Axes, got a "
                        f"{type(ax).__name__}")
    bad = [a for a in axes if not isinstance(a, Axes)]
    if bad:
        raise TypeError(f"'ax' must be matplotlib Axes, got "
                        f"{type(bad[0]).__name__}")
    if len(axes) != count:
        extra = '; softmax adds one' if count == 2 else ''
        raise ValueError(f"'ax' must be {count} axes (one per panel{extra}),"
                         f" got {len(axes)}")
