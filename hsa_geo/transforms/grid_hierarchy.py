r"""A quadtree hierarchy over an image cut into patches (a patch grid)."""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from hsa_geo._checks import check_bool, check_int
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal, edge_lists
from hsa_geo.transforms._inputs import check_data, check_no_sparse_adjacency
from hsa_geo.transforms._node_ids import (check_node_or_edge,
                                          node_id_lists, relabel_node_ids,
                                          select_nodes)

PairLike = Union[int, Sequence[int]]


class GridHierarchy(BaseTransform):
    r"""Turns an image, or a grid of patch features, into a nested signal
    whose hierarchy is a quadtree: patches, 2x2 blocks of patches, 2x2
    blocks of blocks, ..., one root.

    **Input.** A :class:`~torch_geometric.data.Data` with either

    - ``image`` ``[C, H, W]`` (channels first, any dtype): it is cut into
      :math:`p_h \times p_w` patches (:obj:`patch_size`), giving a grid of
      :math:`R = H / p_h` rows and :math:`K = W / p_w` columns of patches.
      Each patch becomes one leaf with features ``x`` ``[N, C p_h p_w]``,
      flattened channel first as in ViT:
      ``image.unfold(1, ph, ph).unfold(2, pw, pw)`` is ``[C, R, K, ph, pw]``
      and the patch at grid cell ``(r, c)`` is ``[:, r, c].reshape(-1)``.
      ``image`` is removed from the output (``x`` and ``patch_index`` hold
      it all). :math:`p_h, p_w` must divide :math:`H, W`, unless
      :obj:`pad` is set;
    - or ``x`` ``[N, *]``: one row per patch of an :math:`R \times K` grid
      in row-major order (row ``r * K + c`` is cell ``(r, c)``), with the
      grid shape in ``data.grid_size`` (``(R, K)``, as a tuple, list or
      tensor) or in the :obj:`grid_size` argument.

    **Tree.** The cell ``(r, c)`` of level :math:`l` (level 0: the patches)
    is the child of the cell ``(r // 2, c // 2)`` of level :math:`l + 1`;
    levels are added until a level has a single cell, the root. On a grid
    whose sides are not powers of two (or not equal) the blocks on the
    last row or column of a level are partial: a block holds 2x2, 2x1,
    1x2 or 1x1 cells (a 1x1 block is a single-child node, which HSA treats
    as transparent). So every leaf has the same depth
    :math:`\lceil \log_2 \max(R, K) \rceil`, a cluster of level :math:`l`
    has :attr:`Hierarchy.node_height` :math:`l` and covers the patches
    ``r * 2^l .. (r + 1) * 2^l - 1`` times ``c * 2^l .. (c + 1) * 2^l - 1``
    (clipped to the grid) of its cell ``(r, c)``; a 1x1 grid is a single
    leaf without parent.

    **Leaf order.** Leaves are the patches in Z (Morton) order: sorted by
    the code that interleaves the bits of ``r`` (higher) and ``c``, so inside
    every block the order is ``(0, 0), (0, 1), (1, 0), (1, 1)`` and every
    family, at every level, is a contiguous run of leaves. Clusters are
    numbered level by level (level 1 first), in Z order inside a level.
    When :math:`R` and :math:`K` are even (or :math:`R = 1` and :math:`K`
    even) all bottom families are full and of one power-of-two width, and
    :func:`~hsa_geo.functional.hierarchical_attention` runs its fused
    leaf path.

    **Output.** :meth:`NestedSignal.from_data
    <hsa_geo.data.NestedSignal.from_data>` with, for :math:`N` leaves and
    :math:`M` clusters (all ``LongTensor`` except ``x``):

    - ``x`` ``[N, *]``: the patch features in leaf (Z) order; every other
      node-level attribute given in row-major order (those for which
      ``data.is_node_attr(key)`` holds, e.g. ``pos``, per-patch ``y``, a
      numpy array or a list of patch names, other than the lists of node
      ids) is permuted the same way, as
      :meth:`~torch_geometric.data.Data.subgraph` selects nodes (a tuple
      comes out as a list), and ``edge_index`` and the other lists of node
      ids are relabelled and keep their order: the integer tensors that
      PyG offsets by the number of nodes in a batch, named ``face`` or
      with ``'index'`` but not ``'batch'`` in the name (e.g.
      ``edge_label_index`` or a 1-D ``query_index``; an integer numpy array
      so named raises, as PyG offsets only tensors); a 1-D one with one
      entry per patch could also be a node attribute and raises
      :class:`ValueError` (a list of ids is stored as ``[1, N]``), so does
      an entry that is no patch id in ``0..N-1`` (e.g. ``-1`` padding,
      which PyG would offset into another graph's patches). Other
      attributes are kept as they are. With as many edges as patches, an
      attribute that PyG could take for a node or an edge one raises, as in
      :class:`~hsa_geo.transforms.TreeOrder` (name edge attributes with
      ``'edge'``; those, lists too, keep the order of the edges);
    - ``patch_index`` ``[N]``: the row-major index ``r * K + c`` of the
      patch of every leaf, so ``x_row_major[patch_index] == x`` and
      ``x_row_major = x[patch_index.argsort()]``. In a DataLoader batch it
      is offset by the leaves of the earlier graphs (PyG increments
      attributes named ``*index*``), so it indexes the concatenation of
      the row-major grids;
    - ``leaf_coord`` ``[N, 2]``: the absolute grid cell ``(r, c)`` of the
      patch of every leaf (``0 <= r < R``, ``0 <= c < K``);
    - ``leaf_grid_pos`` ``[N, 2]``: the position ``(r % 2, c % 2)`` of every
      leaf inside the 2x2 block of its parent, each in ``{0, 1}``
      (``(0, 0)`` top left, ``(0, 1)`` top right, ``(1, 0)`` bottom left);
    - ``cluster_grid_pos`` ``[M, 2]``: the same for every cluster: the
      position ``(r % 2, c % 2)`` of its cell ``(r, c)`` of level :math:`l`
      inside the block of its parent at level :math:`l + 1` (the root:
      ``(0, 0)``);
    - ``cluster_coord`` ``[M, 2]``: the cell ``(r, c)`` of every cluster in
      the grid of its own level (:math:`\lceil R / 2^l \rceil \times \lceil
      K / 2^l \rceil` cells), so ``cluster_coord * 2**l`` is the top left
      patch it covers, with :math:`l` its ``node_height``;
    - ``grid_size`` ``[1, 2]``: ``(R, K)``, one row per graph in a batch.

    Rows of the per-cluster attributes follow the cluster ids, so in a
    batch they line up with the clusters of ``batch.hierarchy`` (node
    ``N + i`` is row ``i``).

    Args:
        patch_size (int or (int, int)): :math:`p_h, p_w` for an ``image``
            input (one int: square patches). Ignored for an ``x`` input.
        grid_size ((int, int), optional): :math:`(R, K)` for an ``x``
            input without ``data.grid_size``.
        pad (bool): zero-pad an ``image`` at the bottom and the right to a
            multiple of the patch size instead of raising an error; the
            padded patches are ordinary leaves.

    Example:
        >>> data = Data(image=torch.rand(3, 64, 48))
        >>> out = GridHierarchy(patch_size=16)(data)  # a 4 x 3 grid
        >>> out.x.shape, out.hierarchy.depth
        (torch.Size([12, 768]), 2)
    """
    def __init__(self, patch_size: PairLike = 16,
                 grid_size: Optional[PairLike] = None, pad: bool = False):
        self.patch_size = _pair(patch_size, 'patch_size')
        self.grid_size = None if grid_size is None else _pair(
            grid_size, 'grid_size')
        self.pad = check_bool(pad, 'pad')

    def forward(self, data: Data) -> NestedSignal:
        # A shallow copy: the caller's data keeps its image and rows.
        data = copy.copy(check_data(data, 'GridHierarchy'))
        check_no_sparse_adjacency(data, 'GridHierarchy')
        if 'patch_index' in data:
            raise ValueError(
                "data already has 'patch_index', so it is the output of "
                "GridHierarchy: its rows are in Z order, not row-major, and "
                "cutting them again would scramble them; apply "
                "GridHierarchy once, or restore the row-major grid first "
                "(x = data.x[data.patch_index.argsort()]) and delete "
                "data.patch_index")
        image = data['image'] if 'image' in data else None
        x = data.x
        if image is not None and x is not None:
            raise ValueError(
                "data has both 'image' and 'x'; GridHierarchy builds the "
                "leaves from one of them: delete 'x' to cut the image into "
                "patches, or 'image' to use 'x' as the patch grid")
        if image is None and x is None:
            raise ValueError(
                "data has neither 'image' ([C, H, W]) nor 'x' (a row-major "
                "patch grid [R*K, F] with 'grid_size' = (R, K))")
        if image is not None:
            patches, rows, cols = self._patches(image)
            del data.image
            data.x = patches
            data.num_nodes = patches.size(0)  # replaces any stale count
        else:
            rows, cols = self._grid_size(data)
            if not isinstance(x, Tensor):
                raise TypeError(f"data.x must be a tensor [R*K, F] of patch "
                                f"features, got {type(x).__name__}")
            if x.dim() == 0 or x.size(0) != rows * cols:
                raise ValueError(
                    f"x has shape {tuple(x.shape)} but grid_size=({rows}, "
                    f"{cols}) needs {rows * cols} rows, one per patch in "
                    f"row-major order")
        tree = _quadtree(rows, cols, data.x.device)
        # x, and any per-patch attribute or edge given in row-major order
        # (also beside an image), follow the patches into Z order.
        _permute_nodes(data, tree['patch_index'])
        for key in ('patch_index', 'leaf_coord', 'leaf_grid_pos'):
            data[key] = tree[key]
        data.grid_size = torch.tensor([[rows, cols]], device=data.x.device)
        # Per-cluster rows after from_data, which drops those of a tree
        # that data already stores (a signal given again).
        signal = NestedSignal.from_data(data, tree['hierarchy'])
        for key in ('cluster_grid_pos', 'cluster_coord'):
            signal[key] = tree[key]
        return signal

    def _patches(self, image) -> Tuple[Tensor, int, int]:
        ph, pw = self.patch_size
        if not isinstance(image, Tensor):
            raise TypeError(f"data.image must be a tensor [C, H, W], got "
                            f"{type(image).__name__}")
        if image.dim() != 3:
            raise ValueError(
                f"data.image must be [C, H, W] (channels first), got shape "
                f"{tuple(image.shape)}; add a channel with image[None] for "
                f"[H, W], or use image.permute(2, 0, 1) for [H, W, C]")
        c, h, w = image.shape
        if c == 0 or h == 0 or w == 0:
            raise ValueError(f"data.image of shape {tuple(image.shape)} is "
                             f"empty; it needs C, H, W >= 1")
        if h % ph or w % pw:
            if not self.pad:
                raise ValueError(
                    f"patch_size=({ph}, {pw}) does not divide the image size "
                    f"(H, W)=({h}, {w}); crop or pad the image to a multiple "
                    f"(e.g. ({-(-h // ph) * ph}, {-(-w // pw) * pw})), pick "
                    f"another patch size, or pass pad=True to zero-pad at "
                    f"the bottom and the right")
            image = F.pad(image, (0, -w % pw, 0, -h % ph))
            h, w = image.shape[1:]
        rows, cols = h // ph, w // pw
        patches = image.unfold(1, ph, ph).unfold(2, pw, pw)  # [C, R, K, p, p]
        patches = patches.permute(1, 2, 0, 3, 4).reshape(rows * cols, -1)
        return patches, rows, cols

    def _grid_size(self, data: Data) -> Tuple[int, int]:
        given = data['grid_size'] if 'grid_size' in data else None
        if given is not None:
            if isinstance(given, Tensor):
                if given.numel() != 2:
                    raise ValueError(
                        f"data.grid_size must hold 2 ints (R, K), got shape "
                        f"{tuple(given.shape)}; a batch of grids cannot be "
                        f"transformed, apply GridHierarchy per graph")
                given = given.view(-1).tolist()
            given = _pair(given, 'data.grid_size')
            if self.grid_size is not None and given != self.grid_size:
                raise ValueError(
                    f"data.grid_size={given} differs from the grid_size="
                    f"{self.grid_size} given to GridHierarchy; pass only one")
            return given
        if self.grid_size is None:
            raise ValueError(
                "an 'x' input needs the grid shape: set data.grid_size = "
                "(R, K) or pass GridHierarchy(grid_size=(R, K)); rows of x "
                "are the patches in row-major order")
        return self.grid_size

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(patch_size={self.patch_size}, '
                f'grid_size={self.grid_size}, pad={self.pad})')


def _pair(value, name: str) -> Tuple[int, int]:
    if not isinstance(value, (list, tuple, Tensor)):
        # One int for both sides (check_int says if it is none).
        value = check_int(value, name)
        return value, value
    if len(value) != 2:
        raise ValueError(f"'{name}' must be an int or a pair of ints, got "
                         f"{len(value)} values {tuple(value)!r}")
    return tuple(check_int(v.item() if isinstance(v, Tensor) else v,
                           f'{name}[{i}]') for i, v in enumerate(value))


def _morton(r: Tensor, c: Tensor) -> Tensor:
    r"""Z-order code: the bits of ``r`` and ``c`` interleaved, ``r`` on the
    odd (higher) positions, so a 2x2 block reads row by row."""
    code = torch.zeros_like(r)
    bits = max(int(r.max()), int(c.max()), 1).bit_length()
    for b in range(bits):
        code |= ((r >> b) & 1) << (2 * b + 1)
        code |= ((c >> b) & 1) << (2 * b)
    return code


def _quadtree(rows: int, cols: int, device: torch.device) -> dict:
    r"""The quadtree of an ``rows x cols`` grid: the hierarchy (leaves in
    Z order) and the per-node grid attributes documented above."""
    r = torch.arange(rows, device=device).repeat_interleave(cols)
    c = torch.arange(cols, device=device).repeat(rows)
    order = torch.argsort(_morton(r, c))  # codes are distinct
    cell = torch.stack([r[order], c[order]], dim=1)  # [N, 2] level-0 cells
    n = rows * cols
    leaf_coord = cell
    parents, cluster_cells = [], []
    size = n
    while size > 1:
        up = cell >> 1
        # Z order of the cells is Z order of their parent blocks: the
        # members of a block are consecutive.
        _, inverse = torch.unique_consecutive(_morton(up[:, 0], up[:, 1]),
                                              return_inverse=True)
        num_blocks = int(inverse.max()) + 1
        first = torch.full((num_blocks, ), size, dtype=torch.long,
                           device=device).scatter_reduce_(
                               0, inverse, torch.arange(size, device=device),
                               reduce='amin')
        parents.append(inverse)
        cell = up[first]
        cluster_cells.append(cell)
        size = num_blocks
    if not parents:  # a single patch: one leaf, its own root
        hierarchy = Hierarchy.from_parent(
            torch.full((1, ), -1, dtype=torch.long, device=device), 1)
        cluster_coord = leaf_coord.new_zeros(0, 2)
    else:
        hierarchy = Hierarchy.from_assignments(parents)
        cluster_coord = torch.cat(cluster_cells)
    return dict(hierarchy=hierarchy, patch_index=r[order] * cols + c[order],
                leaf_coord=leaf_coord, leaf_grid_pos=leaf_coord & 1,
                cluster_coord=cluster_coord,
                cluster_grid_pos=cluster_coord & 1)


def _permute_nodes(data: Data, order: Tensor):
    r"""Reorders the node-level attributes of :obj:`data` (tensors, numpy
    arrays, and lists or tuples of one entry per node) so that new node
    ``i`` is old node ``order[i]``; relabels ``edge_index`` and the other
    lists of node ids (see
    :func:`~hsa_geo.transforms._node_ids.node_id_lists`)."""
    check_node_or_edge(data, 'GridHierarchy', exempt=('grid_size', ))
    lists = node_id_lists(data, 'GridHierarchy', exempt=('grid_size', ))
    edges = edge_lists(data)  # (the edges keep their order)
    for key, value in list(data.items()):
        if key in lists or key == 'grid_size' or key in edges or \
                not isinstance(value, (Tensor, list, tuple, np.ndarray)):
            continue  # grid_size is read already, and replaced
        if key == 'x' or data.is_node_attr(key):
            # As Data.subgraph (and so TreeOrder) permutes.
            data[key] = select_nodes(data, key, value, order)
    relabel_node_ids(data, order, lists)
