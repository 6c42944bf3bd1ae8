r"""Positional encodings of the leaves of a nested signal from the positions
of their ancestors among their siblings."""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import Parameter

from hsa_geo._checks import (check_device, check_dtype, check_floating,
                             check_int)
from hsa_geo.data.hierarchy import FamilyBucket, Hierarchy
from hsa_geo.data.tensor_state import cache_mode

if TYPE_CHECKING:  # pragma: no cover
    from hsa_geo.data.nested_signal import NestedSignal

_MODES = ('sequence', 'grid', 'laplacian', 'random_walk')
_LEVELS = ('height', 'depth')

# Raw family-graph features per hierarchy: a Hierarchy is immutable (it keeps
# private copies of its tensors and derives everything at construction), so
# features computed from it stay valid for as long as it lives. Weak keys:
# an entry goes away with its hierarchy (e.g. a DataLoader batch).
# {hierarchy: {(mode, k): [T, k] float64 features}}
_FEATURE_CACHE: 'weakref.WeakKeyDictionary[Hierarchy, Dict]' = \
    weakref.WeakKeyDictionary()

# Entries of a unit eigenvector smaller than this count as zero when the
# sign is made canonical.
_SIGN_TOL = 1e-6
# Diagonal of the padding slots in the batched Laplacians: above the
# spectrum [0, 2] of every symmetric normalised Laplacian, so that padding
# eigenvectors sort last and never mix with those of the real children.
_PAD_EIGENVALUE = 3.0
# Buckets of families wider than this get their family-graph features from
# sparse methods, one family at a time: dense eigh and matrix powers cost
# O(W^3) in the padded width (25 s for one family of 2,049 children).
_DENSE_WIDTH = 256


class HierarchicalPositionalEncoding(torch.nn.Module):
    r"""Hierarchical positional encoding of the leaves of a nested signal:
    the position of every node among its siblings is embedded per level, and
    each leaf receives the sum over its path to the root,

    .. math::
        \mathrm{pe}(i) = \sum_{n \in \mathrm{path}(i)}
        E_{\ell(n)}\big(\mathrm{pos}(n)\big),
        \qquad
        \mathbf{x}^{\prime}_i = \mathbf{x}_i + \mathrm{pe}(i),

    where :math:`\mathrm{path}(i)` holds leaf :math:`i` and all its
    ancestors up to its root, :math:`\ell(n)` is the level of node :math:`n`
    (clamped to :obj:`num_levels - 1`) and :math:`\mathrm{pos}(n)` its
    position in its family, one of

    - :obj:`mode='sequence'`: the order among the siblings
      (:attr:`~hsa_geo.data.Hierarchy.sibling_rank` :math:`p`, increasing
      node id; roots: 0). With :obj:`max_branching` given, :math:`E_\ell` is
      a learnable table of :obj:`max_branching` rows per level (families
      can be no wider). Without (the default), any rank works, as on
      documents whose sentences and paragraphs have any length:
      :math:`E_\ell(p) = \mathbf{W}_\ell\, \mathbf{s}(p) + \mathbf{b}_\ell`
      with the sinusoidal code of the Transformer,
      :math:`\mathbf{s}(p)_{2j} = \sin(p / 10000^{2j/C})`,
      :math:`\mathbf{s}(p)_{2j+1} = \cos(p / 10000^{2j/C})`, and a
      learnable :math:`C \times C` map per level;
    - :obj:`mode='grid'`: the 2-D cell :math:`(r, c)` of the node inside its
      parent's block (``grid_pos`` ``[T, 2]``, e.g. ``leaf_grid_pos`` and
      ``cluster_grid_pos`` as :class:`~hsa_geo.transforms.GridHierarchy`
      stores them; roots :math:`(0, 0)`),
      :math:`E_\ell(r, c) = R_\ell(r) + C_\ell(c)`;
    - :obj:`mode='laplacian'`: the :math:`k` eigenvectors of the smallest
      non-trivial eigenvalues of the symmetric normalised Laplacian
      :math:`\mathbf{I} - \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` of
      the node's family graph (the :obj:`family_edge_index` of the
      hierarchy restricted to the family, symmetrised), as
      :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE`
      computes them for a graph; during training their signs are flipped
      at random, independently per family and eigenvector;
    - :obj:`mode='random_walk'`: the return probabilities
      :math:`\big[(\mathbf{D}^{-1}\mathbf{A})^t\big]_{nn}`,
      :math:`t = 1..k`, of the family graph, as
      :class:`~torch_geometric.transforms.AddRandomWalkPE` computes them;

    and for the last two :math:`E_\ell(\mathbf{p}) = \mathbf{W}_\ell
    \mathbf{p} + \mathbf{b}_\ell` is a learnable linear map
    :math:`k \to C` per level. Families with fewer than :math:`k + 1`
    children get zeros in the missing Laplacian columns. The family-graph
    features depend only on the hierarchy and are cached for as long as
    the (immutable) :class:`~hsa_geo.data.Hierarchy` lives. Their cost:

    - families of up to 256 children (padded width :math:`W`): all
      families of one :class:`~hsa_geo.data.FamilyBucket` at once, one
      batched :func:`torch.linalg.eigh` or matrix power on the
      ``[F, W, W]`` adjacencies, :math:`O(F W^3)` time and
      :math:`O(F W^2)` memory;
    - wider families: one at a time on the sparse family graph with SciPy
      (``scipy.sparse``; a dependency of ``ogb``), sparse matrix powers for
      the random walks and shift-invert Lanczos
      (``scipy.sparse.linalg.eigsh``) for the :math:`k + 1` smallest
      Laplacian eigenpairs: about linear in the edges of a path-like family
      graph (0.3 s for a path of 2,049 or 20,000 children, where the dense
      route took 21 s at 2,049);
    - dense families (no family graph) in :obj:`'random_walk'` mode: a
      closed form (the walk on a complete graph), for any width.

    **Levels.** With :obj:`level='height'` (default) the level of a node is
    that of its family counted from the bottom: :math:`\ell(n) =
    \mathrm{height}(\mathrm{parent}(n)) - 1` (a root: its own height).
    Siblings therefore always share one table, the finest families (those
    of the leaves in a bottom-up hierarchy) are level 0 in every tree, and
    trees of different depths in one batch (short and long sequences, small
    and large images) encode "position within a word / patch block"
    identically; clamping merges the coarsest, rarest levels. With
    :obj:`level='depth'`, :math:`\ell(n)` is the depth of :math:`n` (roots:
    0): best for top-down hierarchies of a fixed schema (document, section,
    paragraph, ...), where depth carries the meaning; clamping then merges
    the deepest levels.

    The root term :math:`E_{\ell(r)}(0)` of every tree is a learnable bias.
    Without a family graph every family is complete: the random-walk
    features then only tell the family size, and the Laplacian eigenvectors
    of a complete graph span one degenerate eigenspace in an arbitrary
    basis (noise, not position), so :obj:`mode='laplacian'` raises a
    :class:`ValueError` for a hierarchy without family graph. As for
    :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE`,
    eigenvectors of repeated eigenvalues (symmetric family graphs) are an
    arbitrary basis of their eigenspace; signs are made canonical (first
    clearly non-zero entry positive) before the random training flips.

    Every argument is checked in every mode, also where the mode does not
    use it, so that a typo is not ignored: a value of the wrong type raises
    :class:`TypeError`, one out of range (``k=0``, ``grid_size=(2, 0)``)
    :class:`ValueError`.

    Args:
        channels (int): size :math:`C` of the encoding (of each leaf
            feature it is added to).
        mode (str, optional): ``'sequence'``, ``'grid'``, ``'laplacian'`` or
            ``'random_walk'``, see above. (default: :obj:`'sequence'`)
        num_levels (int, optional): number of per-level tables / maps;
            deeper (or higher) levels share the last one.
            (default: :obj:`4`)
        max_branching (int, optional): rows of each table in
            :obj:`'sequence'` mode: at least the largest number of children
            of any node (:attr:`Hierarchy.max_branching`); :obj:`None`: the
            sinusoidal code, for families of any width. Unused in the other
            modes. (default: :obj:`None`)
        grid_size (int or (int, int), optional): rows and columns of the
            parent's block in :obj:`'grid'` mode; unused in the others.
            (default: :obj:`2`)
        k (int, optional): number of eigenvectors (:obj:`'laplacian'`) or
            walk length (:obj:`'random_walk'`); unused in the others.
            (default: :obj:`4`)
        level (str, optional): ``'height'`` or ``'depth'``, see above.
            (default: :obj:`'height'`)

    Shapes:
        - **input:** leaf features :math:`(N, C)`; a
          :class:`~hsa_geo.data.Hierarchy` with :math:`T` nodes, :math:`N`
          of them leaves (or a :class:`~hsa_geo.data.NestedSignal`, whose
          ``.hierarchy`` and, in grid mode, ``leaf_grid_pos`` :math:`(N, 2)`
          and ``cluster_grid_pos`` :math:`(T - N, 2)` are used);
          ``grid_pos`` :math:`(T, 2)` (grid mode)
        - **output:** :math:`(N, C)`
    """
    def __init__(
        self,
        channels: int,
        mode: str = 'sequence',
        num_levels: int = 4,
        max_branching: Optional[int] = None,
        grid_size: Union[int, Tuple[int, int]] = 2,
        k: int = 4,
        level: str = 'height',
    ):
        super().__init__()
        for name, value in (('mode', mode), ('level', level)):
            if not isinstance(value, str):
                raise TypeError(f"'{name}' must be a str, got "
                                f"{type(value).__name__}")
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of "
                             f"{', '.join(repr(m) for m in _MODES)}")
        if level not in _LEVELS:
            raise ValueError(f"unknown level {level!r}; choose 'height' "
                             f"(levels counted from the leaves) or 'depth' "
                             f"(counted from the roots)")
        channels = check_int(channels, 'channels')
        num_levels = check_int(num_levels, 'num_levels')
        # Checked in every mode, also where unused, so that a typo is not
        # ignored.
        if max_branching is not None:
            max_branching = check_int(max_branching, 'max_branching')
        size = (grid_size, grid_size) if not isinstance(
            grid_size, (tuple, list)) else tuple(grid_size)
        if len(size) != 2:
            raise ValueError(f"'grid_size' must be a positive int or a "
                             f"pair of them, got {grid_size!r}")
        size = tuple(check_int(v, f'grid_size[{i}]')
                     for i, v in enumerate(size))
        k = check_int(k, 'k')
        self.channels = channels
        self.mode = mode
        self.num_levels = num_levels
        self.level = level
        self.max_branching = None
        self.grid_size = None
        self.k = None

        if mode == 'sequence' and max_branching is not None:
            self.max_branching = max_branching
            self.emb = Parameter(torch.empty(num_levels, max_branching,
                                             channels))
        elif mode == 'grid':
            self.grid_size = size
            self.row_emb = Parameter(torch.empty(num_levels, size[0],
                                                 channels))
            self.col_emb = Parameter(torch.empty(num_levels, size[1],
                                                 channels))
        else:
            # The sinusoidal code of a rank has one entry per channel.
            self.k = k = channels if mode == 'sequence' else k
            self.weight = Parameter(torch.empty(num_levels, k, channels))
            self.bias = Parameter(torch.empty(num_levels, channels))
        self.reset_parameters()

    def reset_parameters(self):
        r"""Embeddings :math:`\mathcal{N}(0, 1/L)` (:math:`L` =
        :obj:`num_levels`, so that a whole path sums to about unit
        variance); linear maps as :class:`torch.nn.Linear` weights, zero
        biases."""
        std = 1.0 / math.sqrt(self.num_levels)
        if self.max_branching is not None:
            torch.nn.init.normal_(self.emb, std=std)
        elif self.mode == 'grid':
            # Row and column embeddings add up: halve each variance.
            torch.nn.init.normal_(self.row_emb, std=std / math.sqrt(2))
            torch.nn.init.normal_(self.col_emb, std=std / math.sqrt(2))
        else:
            bound = 1.0 / math.sqrt(self.k)
            torch.nn.init.uniform_(self.weight, -bound, bound)
            torch.nn.init.zeros_(self.bias)

    # Public API #############################################################

    def forward(self, x: Tensor, hierarchy: Union[Hierarchy, 'NestedSignal'],
                grid_pos: Optional[Tensor] = None) -> Tensor:
        r"""Adds the encoding to the leaf features.

        Args:
            x (Tensor): leaf features ``[N, C]``.
            hierarchy (Hierarchy): the forest over the ``N`` leaves (or a
                :class:`~hsa_geo.data.NestedSignal`).
            grid_pos (LongTensor, optional): ``[T, 2]`` cell of every node in
                its parent's block (grid mode only; taken from the
                NestedSignal when not given).

        Returns:
            ``x + pe``, ``[N, C]``.

        Raises :class:`TypeError` for an :obj:`x` that is not a floating
        point tensor of the encoding's dtype (any dtype under autocast), as
        the other layers do, and :class:`ValueError` for one that is not
        ``[N, C]``.
        """
        h, _ = self._resolve(hierarchy)
        check_floating(x, 'x')
        check_dtype(x, 'x', next(self.parameters()),
                    "the encoding's parameters")
        if x.dim() != 2 or x.size(0) != h.num_leaves or \
                x.size(1) != self.channels:
            raise ValueError(
                f"'x' must be a [N, C] = [{h.num_leaves}, {self.channels}] "
                f"tensor of leaf features (one row per leaf of the "
                f"hierarchy, channels={self.channels}), got "
                f"{tuple(x.shape)}")
        pe = self.encode(hierarchy, grid_pos)
        return x + pe.to(x.dtype)  # (under autocast, x may be half)

    def encode(self, hierarchy: Union[Hierarchy, 'NestedSignal'],
               grid_pos: Optional[Tensor] = None) -> Tensor:
        r"""The encoding alone: ``pe`` ``[N, C]``, the sum of
        :meth:`node_encoding` over the path of every leaf to its root."""
        h, _ = self._resolve(hierarchy)
        return _sum_down_paths(self.node_encoding(hierarchy, grid_pos), h)

    def node_encoding(self, hierarchy: Union[Hierarchy, 'NestedSignal'],
                      grid_pos: Optional[Tensor] = None) -> Tensor:
        r"""The term of every node, :math:`E_{\ell(n)}(\mathrm{pos}(n))`,
        ``[T, C]`` (with the random sign flips of the Laplacian mode in
        training)."""
        h, signal = self._resolve(hierarchy)
        self._check_device(h)
        lvl = self.node_levels(h)
        if self.mode == 'sequence':
            self._no_grid_pos(grid_pos)
            if self.max_branching is not None:
                return self.emb[lvl, self._ranks(h)]
            return self._linear(_sinusoid(self._ranks(h), self.k,
                                          self.weight.dtype), lvl)
        if self.mode == 'grid':
            pos = self._grid_pos(h, signal, grid_pos)
            return self.row_emb[lvl, pos[:, 0]] + self.col_emb[lvl, pos[:, 1]]
        self._no_grid_pos(grid_pos)
        feat = _family_features(h, self.mode, self.k).to(self.weight.dtype)
        if self.mode == 'laplacian' and self.training and h.num_clusters > 0:
            # One random sign per family and eigenvector (PyG flips one per
            # graph and eigenvector; here every family is its own graph).
            sign = torch.randint(0, 2, (h.num_clusters, self.k),
                                 device=feat.device).to(feat.dtype) * 2 - 1
            fam = (h.parent - h.num_leaves).clamp(min=0)  # roots: zeros
            feat = feat * sign[fam]
        return self._linear(feat, lvl)

    def _linear(self, feat: Tensor, lvl: Tensor) -> Tensor:
        r"""``[T, C]``: :math:`\mathbf{W}_{\ell} \mathbf{p} +
        \mathbf{b}_{\ell}` for the features ``[T, k]`` of every node at its
        level."""
        # One matrix product for all levels: scatter each feature row into
        # the block of its level, [T, L * k] @ [L * k, C].
        t = lvl.numel()
        blocks = feat.new_zeros(t, self.num_levels, self.k)
        blocks = blocks.index_put(
            (torch.arange(t, device=feat.device), lvl), feat)
        out = blocks.view(t, -1) @ self.weight.view(-1, self.channels)
        return out + self.bias[lvl]

    def positional_features(self, hierarchy: Union[Hierarchy, 'NestedSignal'],
                            grid_pos: Optional[Tensor] = None) -> Tensor:
        r"""The raw position of every node, before any learnable map:
        ``'sequence'``: sibling ranks ``[T]`` (long); ``'grid'``: cells
        ``[T, 2]`` (long); ``'laplacian'`` / ``'random_walk'``: family-graph
        features ``[T, k]`` (canonical signs, no random flips; zeros for
        roots)."""
        h, signal = self._resolve(hierarchy)
        if self.mode == 'sequence':
            self._no_grid_pos(grid_pos)
            return self._ranks(h).clone()
        if self.mode == 'grid':
            return self._grid_pos(h, signal, grid_pos).clone()
        self._no_grid_pos(grid_pos)
        return _family_features(h, self.mode, self.k).to(
            self.weight.dtype, copy=True)

    def node_levels(self, hierarchy: Union[Hierarchy, 'NestedSignal']
                    ) -> Tensor:
        r"""``[T]`` the level :math:`\ell(n)` of every node (which table or
        map it uses), clamped to :obj:`num_levels - 1`."""
        h, _ = self._resolve(hierarchy)
        return h.family_level(self.level).clamp(max=self.num_levels - 1)

    def __repr__(self) -> str:
        extra = {
            'sequence': f'max_branching={self.max_branching}',
            'grid': f'grid_size={self.grid_size}',
        }.get(self.mode, f'k={self.k}')
        return (f'{self.__class__.__name__}({self.channels}, '
                f'mode={self.mode!r}, num_levels={self.num_levels}, {extra}, '
                f'level={self.level!r})')

    # Helpers ################################################################

    def _resolve(self, hierarchy) -> Tuple[Hierarchy, Optional[object]]:
        if isinstance(hierarchy, Hierarchy):
            return hierarchy, None
        if isinstance(getattr(hierarchy, 'hierarchy', None), Hierarchy):
            return hierarchy.hierarchy, hierarchy
        raise TypeError(f"'hierarchy' must be a Hierarchy or a NestedSignal, "
                        f"got {type(hierarchy).__name__}")

    def _check_device(self, h: Hierarchy):
        device = next(self.parameters()).device
        if h.device != device:
            raise ValueError(
                f"the hierarchy is on {h.device} but the encoding's "
                f"parameters are on {device}; move one of them "
                f"(hierarchy.to(device) or module.to(device))")

    def _ranks(self, h: Hierarchy) -> Tensor:
        if self.max_branching is not None and \
                h.max_branching > self.max_branching:
            raise ValueError(
                f"the hierarchy has a node with {h.max_branching} children, "
                f"so sibling ranks go up to {h.max_branching - 1}, but this "
                f"encoding was built with max_branching={self.max_branching} "
                f"(ranks 0..{self.max_branching - 1}); build it with "
                f"max_branching >= {h.max_branching} (the largest "
                f"Hierarchy.max_branching of your data), or with "
                f"max_branching=None for families of any width")
        return h.sibling_rank

    def _no_grid_pos(self, grid_pos: Optional[Tensor]):
        if grid_pos is not None:
            raise ValueError(f"'grid_pos' is only used with mode='grid', but "
                             f"this encoding has mode={self.mode!r}; drop it")

    def _grid_pos(self, h: Hierarchy, signal, grid_pos: Optional[Tensor]
                  ) -> Tensor:
        t, n = h.num_nodes, h.num_leaves
        if grid_pos is None and signal is not None:
            leaf = getattr(signal, 'leaf_grid_pos', None)
            clus = getattr(signal, 'cluster_grid_pos', None)
            if clus is None and leaf is not None and t == n:
                clus = leaf.new_zeros(0, 2)
            if leaf is not None and clus is not None:
                for name, value, rows in (('leaf_grid_pos', leaf, n),
                                          ('cluster_grid_pos', clus, t - n)):
                    _check_grid_tensor(value, name, rows)
                grid_pos = torch.cat([leaf, clus], dim=0)
        if grid_pos is None:
            raise ValueError(
                "mode='grid' needs the cell of every node in its parent's "
                "block: pass 'grid_pos' [T, 2] (leaves first, then internal "
                "nodes), or a NestedSignal with 'leaf_grid_pos' [N, 2] and "
                "'cluster_grid_pos' [T - N, 2] (as "
                "hsa_geo.transforms.GridHierarchy stores them)")
        _check_grid_tensor(grid_pos, 'grid_pos', t)
        grid_pos = grid_pos.long()
        check_device(grid_pos, 'grid_pos', h.device, 'the hierarchy')
        size = torch.tensor(self.grid_size, device=grid_pos.device)
        bad = (grid_pos < 0) | (grid_pos >= size)
        if bool(bad.any()):
            i, j = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"grid_pos[{i}, {j}] = {int(grid_pos[i, j])} is outside the "
                f"{'rows' if j == 0 else 'columns'} 0..{self.grid_size[j] - 1}"
                f" of a block (grid_size={self.grid_size}); build the "
                f"encoding with a larger grid_size")
        return grid_pos


def _check_grid_tensor(value, name: str, rows: int):
    if not isinstance(value, Tensor) or value.is_floating_point() or \
            value.is_complex() or value.dtype == torch.bool:
        raise TypeError(
            f"'{name}' must be an integer tensor of (row, col) cells, got "
            f"{value.dtype if isinstance(value, Tensor) else type(value)}")
    if value.dim() != 2 or value.size(0) != rows or value.size(1) != 2:
        raise ValueError(f"'{name}' must have shape [{rows}, 2] (one (row, "
                         f"col) per node), got {tuple(value.shape)}")


def _sinusoid(position: Tensor, channels: int,
              dtype: torch.dtype) -> Tensor:
    r"""``[T, channels]`` the sinusoidal code of the Transformer for the
    integer positions ``[T]``: :math:`\sin(p / 10000^{2j/C})` in column
    :math:`2j`, :math:`\cos` of the same in column :math:`2j + 1`."""
    # float64: positions of wide families (tens of thousands) keep their
    # phase; the code is cast afterwards.
    freq = torch.arange(0, channels, 2, dtype=torch.float64,
                        device=position.device)
    angle = position.to(torch.float64).unsqueeze(1) / 10000 ** (
        freq / channels)
    out = angle.new_empty(position.numel(), channels)
    out[:, 0::2] = angle.sin()
    out[:, 1::2] = angle.cos()[:, :channels // 2]
    return out.to(dtype)


def _sum_down_paths(node_pe: Tensor, h: Hierarchy) -> Tensor:
    r"""``[N, C]``: for every leaf the sum of ``node_pe`` over the leaf and
    its ancestors. Level by level from the roots down, each node adds its
    parent's accumulated path sum (vectorised per level)."""
    if h.depth == 0:
        return node_pe[:h.num_leaves]
    acc = node_pe.clone()
    parent = h.parent
    for nodes in h.levels[1:]:
        acc.index_add_(0, nodes, acc[parent[nodes]])
    return acc[:h.num_leaves]


def _family_features(h: Hierarchy, mode: str, k: int) -> Tensor:
    r"""``[T, k]`` float64 Laplacian or random-walk features of every node in
    its family graph (zeros for roots), cached per hierarchy."""
    key = (mode, k)
    entry = _FEATURE_CACHE.get(h)
    if entry is not None and key in entry:
        return entry[key]
    # Without a family of two children there is no family graph to read:
    # every node is isolated, and its features are zeros either way.
    if mode == 'laplacian' and h.family_edge_index is None and \
            h.max_branching >= 2:
        raise ValueError(
            "mode='laplacian' needs a family graph: this hierarchy has dense "
            "families (no family_edge_index), whose complete graphs have one "
            "degenerate Laplacian eigenspace and hence no positional "
            "information; give the hierarchy a family graph "
            "(Hierarchy.with_family_graph) or use mode='sequence' (ordered "
            "children), 'grid' or 'random_walk'")
    with cache_mode():  # the cache outlives an inference mode
        out = torch.zeros(h.num_nodes, k, dtype=torch.float64,
                          device=h.device)
        for bucket in h.family_buckets:
            if bucket.width == 1:
                continue  # single children: isolated nodes, all zeros
            if mode == 'random_walk' and bucket.allowed is None:
                feat = _complete_walk_features(bucket.mask, k)
            elif bucket.width <= _DENSE_WIDTH:
                adj = _family_adjacency(bucket)
                feat = (_laplacian_features(adj, bucket.mask, k)
                        if mode == 'laplacian' else
                        _random_walk_features(adj, k))
            else:
                _sparse_family_features(h, bucket, mode, k, out)
                continue
            out[bucket.children[bucket.mask]] = feat[bucket.mask]
    _FEATURE_CACHE.setdefault(h, {})[key] = out
    return out


def _complete_walk_features(mask: Tensor, k: int) -> Tensor:
    r"""``[F, W, k]``: the return probabilities of the random walk on the
    complete graph of every family, in closed form: with :math:`m` children
    the walk leaves a node for one of the :math:`m - 1` others, so
    :math:`p_t = \big(1 + (m - 1)(-1 / (m - 1))^t\big) / m`."""
    m = mask.sum(1, keepdim=True).to(torch.float64)  # [F, 1]
    t = torch.arange(1, k + 1, dtype=torch.float64, device=mask.device)
    ratio = -1.0 / (m - 1).clamp(min=1)
    p = (1 + (m - 1) * ratio.pow(t)) / m.clamp(min=1)  # [F, k]
    p = torch.where(m > 1, p, torch.zeros_like(p))  # one child: no walk
    return p.unsqueeze(1) * mask.unsqueeze(2)


def _family_adjacency(b: FamilyBucket) -> Tensor:
    r"""``[F, W, W]`` float64 symmetric adjacency of every family graph of a
    bucket (complete graphs for dense families), zero on padding."""
    real = b.mask.unsqueeze(2) & b.mask.unsqueeze(1)
    if b.allowed is None:
        eye = torch.eye(b.width, dtype=torch.bool, device=real.device)
        adj = real & ~eye
    else:
        adj = (b.allowed | b.allowed.transpose(1, 2)) & real
    return adj.to(torch.float64)


def _laplacian_features(adj: Tensor, mask: Tensor, k: int) -> Tensor:
    r"""``[F, W, k]``: eigenvectors ``1..k`` (ascending eigenvalues) of the
    symmetric normalised Laplacian of each family, as PyG's
    ``get_laplacian(normalization='sym')`` builds it (isolated nodes: a
    diagonal 1), with canonical signs; zero columns beyond the family
    size."""
    num_fam, width, _ = adj.shape
    deg = adj.sum(-1)
    dis = torch.where(deg > 0, deg.clamp(min=1e-300).rsqrt(),
                      torch.zeros_like(deg))
    lap = -dis.unsqueeze(2) * adj * dis.unsqueeze(1)
    diag = torch.where(mask, 1.0, _PAD_EIGENVALUE).to(adj.dtype)
    lap = lap + torch.diag_embed(diag)
    _, vecs = torch.linalg.eigh(lap)  # columns: ascending eigenvalues
    vecs = vecs[:, :, 1:k + 1]
    # Canonical sign: the first clearly non-zero entry of every vector is
    # positive (LAPACK and cuSOLVER may return either sign).
    nonzero = (vecs.abs() > _SIGN_TOL) & mask.unsqueeze(2)
    first = nonzero.to(torch.int8).argmax(dim=1, keepdim=True)  # [F, 1, k']
    sign = torch.where(vecs.gather(1, first) < 0, -1.0, 1.0).to(vecs.dtype)
    vecs = vecs * sign
    # Columns past the family's own spectrum are padding eigenvectors.
    size = mask.sum(1, keepdim=True)  # [F, 1]
    col = torch.arange(1, vecs.size(2) + 1, device=adj.device)
    vecs = vecs * (col < size).unsqueeze(1) * mask.unsqueeze(2)
    if vecs.size(2) < k:
        vecs = torch.cat([vecs, vecs.new_zeros(num_fam, width,
                                               k - vecs.size(2))], dim=2)
    return vecs


def _random_walk_features(adj: Tensor, k: int) -> Tensor:
    r"""``[F, W, k]``: the diagonals of :math:`(D^{-1} A)^t`, ``t = 1..k``,
    as :class:`~torch_geometric.transforms.AddRandomWalkPE` (degrees clamped
    to at least 1)."""
    walk = adj / adj.sum(-1, keepdim=True).clamp(min=1)
    out, power = [], walk
    for t in range(k):
        if t > 0:
            power = power @ walk
        out.append(power.diagonal(dim1=1, dim2=2))
    return torch.stack(out, dim=-1)


def _sparse_family_features(h: Hierarchy, bucket: FamilyBucket, mode: str,
                            k: int, out: Tensor):
    r"""Writes the features of the children of every family of a wide
    bucket into :obj:`out`, one family at a time on its sparse family graph
    (SciPy): random walks as sparse matrix powers, Laplacian eigenvectors
    with the shift-invert Lanczos method (``eigsh``), so that the cost
    follows the edges of the family graph, not the cube of its width."""
    edges = h.family_edge_index.cpu()
    edges = edges[:, edges[0] != edges[1]]
    owner = h.parent.cpu()[edges[0]]
    order = torch.argsort(owner)
    edges, owner = edges[:, order], owner[order]
    local = torch.full((h.num_nodes, ), -1, dtype=torch.long)
    for f in range(bucket.family.numel()):
        family = int(bucket.family[f])
        members = bucket.children[f][bucket.mask[f]].cpu()
        local[members] = torch.arange(members.numel())
        lo, hi = (int(i) for i in torch.searchsorted(
            owner, torch.tensor([family, family + 1])))
        adj = _sparse_adjacency(local[edges[:, lo:hi]].numpy(),
                                members.numel())
        feat = (_sparse_laplacian_features(adj, k) if mode == 'laplacian'
                else _sparse_random_walk_features(adj, k))
        out[members.to(out.device)] = torch.from_numpy(feat).to(out.device)


def _sparse_adjacency(pairs, size: int):
    r"""The symmetric 0/1 adjacency (``scipy.sparse`` CSR) of local pairs
    ``[2, E]``."""
    import scipy.sparse as sp
    row = np.concatenate([pairs[0], pairs[1]])
    col = np.concatenate([pairs[1], pairs[0]])
    adj = sp.csr_matrix((np.ones(row.size), (row, col)), shape=(size, size))
    adj.data[:] = 1.0  # duplicate pairs were summed
    return adj


def _sparse_random_walk_features(adj, k: int):
    r"""``[m, k]`` as :func:`_random_walk_features`, by sparse powers."""
    import scipy.sparse as sp
    deg = np.maximum(np.asarray(adj.sum(1)).ravel(), 1)
    walk = sp.diags(1.0 / deg) @ adj
    out, power = [], walk
    for t in range(k):
        if t > 0:
            power = power @ walk
        out.append(power.diagonal())
    return np.stack(out, axis=1)


def _sparse_laplacian_features(adj, k: int):
    r"""``[m, k]`` as :func:`_laplacian_features` for one family: the
    eigenvectors of the ``k + 1`` smallest eigenvalues by shift-invert
    Lanczos just below 0, where the normalised Laplacian (eigenvalues in
    ``[0, 2]``) is positive definite; a fixed start vector keeps it
    deterministic."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh
    size = adj.shape[0]
    deg = np.asarray(adj.sum(1)).ravel()
    dis = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    lap = sp.identity(size, format='csc') - (
        sp.diags(dis) @ adj @ sp.diags(dis)).tocsc()
    num = min(k + 1, size - 1)
    start = np.random.default_rng(0).standard_normal(size)
    vals, vecs = eigsh(lap, k=num, sigma=-1e-9, which='LM', v0=start, tol=0)
    vecs = vecs[:, np.argsort(vals)][:, 1:k + 1]
    first = (np.abs(vecs) > _SIGN_TOL).argmax(axis=0)
    vecs = vecs * np.where(vecs[first, np.arange(vecs.shape[1])] < 0, -1, 1)
    if vecs.shape[1] < k:
        vecs = np.concatenate([vecs, np.zeros((size, k - vecs.shape[1]))], 1)
    return vecs
