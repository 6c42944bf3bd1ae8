r"""A learnable bias of where two siblings sit in their family."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor
from torch.nn import Parameter

from hsa_geo._checks import check_device, check_int
from hsa_geo._memory import ensure_pairs_fit
from hsa_geo.data.hierarchy import Hierarchy


class FamilyGeometryBias(torch.nn.Module):
    r"""A learnable bias :math:`\beta_{ab}` of the relative position of
    siblings :math:`a` and :math:`b` within their family and of the
    family's level, added to the family logits :math:`l_{ab}` of HSA
    (docs/math.md, section 6.2: a bias constant on the block of :math:`a`
    and :math:`b` keeps the attention the exact KL minimiser of its
    family):

    .. math::
        \beta_{ab} = \mathbf{B}\big[\min(\ell(F), L - 1),\;
            s(\mathrm{rank}(b) - \mathrm{rank}(a))\big] \in \mathbb{R}^H,

    where :math:`\ell(F)` is the level of the common family
    (:meth:`~hsa_geo.data.Hierarchy.family_level`: counted from the leaves
    with :obj:`level='height'`, from the roots with :obj:`level='depth'`,
    as in :class:`~hsa_geo.nn.HierarchicalPositionalEncoding`; levels
    :math:`L - 1` and beyond share a row), and :math:`\mathrm{rank}` the
    order of a node among its siblings
    (:attr:`~hsa_geo.data.Hierarchy.sibling_rank`: the position in a
    sequence for :class:`~hsa_geo.transforms.SequenceHierarchy` and
    document trees). :math:`\mathbf{B}` starts at zero, so a fresh bias
    leaves HSA unchanged.

    The relative position :math:`d` goes through the bucket :math:`s(d)`
    of :meth:`relative_bucket`, as T5's relative position buckets do
    (Raffel et al., *Exploring the Limits of Transfer Learning with a
    Unified Text-to-Text Transformer*, JMLR 2020): with :math:`b` =
    :obj:`max_branching`, :math:`K` = :obj:`num_far_buckets` and :math:`D`
    = :obj:`max_distance`,

    .. math::
        s(d) = \mathrm{sign}(d) \cdot \begin{cases}
            |d| & |d| < b \\
            b + \min\Big(K - 1, \Big\lfloor K
            \frac{\log(|d| / b)}{\log(D / b)} \Big\rfloor\Big)
            & |d| \geq b,
        \end{cases}

    so every offset of a family of at most :math:`b` children has its own
    bias, and a wider family never fails: its offsets from :math:`b` on
    share :math:`K` log-spaced buckets per sign, the last from :math:`D`
    on. Column :math:`s + b - 1` of :math:`\mathbf{B}` holds the exact
    buckets :math:`|s| < b` (the layout of the table before the far
    buckets existed, which :meth:`load_state_dict` still reads, with zero
    far buckets); columns :math:`2b - 1 + (s - b)` and
    :math:`2b - 1 + K + (|s| - b)` the far buckets of positive and negative
    :math:`s`.

    Args:
        heads (int): :math:`H`, at least ``1``.
        max_branching (int): :math:`b`, the largest family whose relative
            positions :math:`-(b - 1) \dots b - 1` each have their own bias,
            at least ``2``. (default: :obj:`16`)
        num_levels (int): :math:`L`, levels with their own biases, at least
            ``1``. (default: :obj:`8`)
        level (str): ``'height'`` or ``'depth'``, see above.
            (default: :obj:`'height'`)
        num_far_buckets (int): :math:`K`, log-spaced buckets per sign for
            the offsets :math:`|d| \geq b`, at least ``1``.
            (default: :obj:`8`)
        max_distance (int, optional): :math:`D`, the offset from which on
            all share the last bucket, more than :math:`b`; :obj:`None`:
            :math:`8 b`. (default: :obj:`None`)

    A wrong type (``heads=True``, ``heads=2.0``, ``level=1``) raises
    :class:`TypeError`, a value out of range :class:`ValueError`.

    Shapes:
        - **input:** a :class:`~hsa_geo.data.Hierarchy`
        - **output:** ``[P, H]``, one row per pair of
          :attr:`~hsa_geo.data.Hierarchy.sibling_pairs`, the ``pair_bias``
          of :func:`~hsa_geo.functional.hierarchical_attention`.
    """
    def __init__(self, heads: int, max_branching: int = 16,
                 num_levels: int = 8, level: str = 'height',
                 num_far_buckets: int = 8,
                 max_distance: Optional[int] = None):
        super().__init__()
        heads = check_int(heads, 'heads')
        max_branching = check_int(max_branching, 'max_branching', low=2)
        num_levels = check_int(num_levels, 'num_levels')
        if not isinstance(level, str):
            raise TypeError(f"'level' must be 'height' or 'depth', got "
                            f"{level!r} ({type(level).__name__})")
        if level not in ('height', 'depth'):
            raise ValueError(f"'level' must be 'height' or 'depth', got "
                             f"{level!r}")
        num_far_buckets = check_int(num_far_buckets, 'num_far_buckets')
        if max_distance is None:
            max_distance = 8 * max_branching
        max_distance = check_int(max_distance, 'max_distance',
                                 low=max_branching + 1)
        self.level = level
        self.heads = heads
        self.max_branching = max_branching
        self.num_levels = num_levels
        self.num_far_buckets = num_far_buckets
        self.max_distance = max_distance
        # |d| from which on the far bucket is at least j, for j = 1..K-1.
        self._thresholds = _far_thresholds(max_branching, max_distance,
                                           num_far_buckets)
        self.weight = Parameter(torch.empty(
            num_levels, 2 * max_branching - 1 + 2 * num_far_buckets, heads))
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.zeros_(self.weight)

    def relative_bucket(self, offset: Tensor) -> Tensor:
        r"""The signed bucket :math:`s(d)` of every relative position
        :math:`d` in the integer tensor :obj:`offset` (see above): :math:`d`
        itself for :math:`|d| <` :obj:`max_branching`, and from there on
        monotone in :math:`|d|`, odd in :math:`d`, at most
        :obj:`max_branching` + :obj:`num_far_buckets` - 1 in size."""
        size = offset.abs()
        thresholds = torch.tensor(self._thresholds, dtype=size.dtype,
                                  device=size.device)
        far = self.max_branching + torch.bucketize(size, thresholds,
                                                   right=True)
        size = torch.where(size < self.max_branching, size, far)
        return torch.where(offset < 0, -size, size)

    def forward(self, hierarchy: Hierarchy) -> Tensor:
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, "
                            f"got {type(hierarchy).__name__}")
        check_device(hierarchy.parent, 'hierarchy', self.weight.device,
                     'the bias')
        # The pair lists it caches and its index temporaries, besides the
        # [P, H] output: 88 bytes per pair at the peak (measured on one
        # family of 4,000 children).
        ensure_pairs_fit(hierarchy, 88 + self.heads *
                         self.weight.element_size(), 'the geometry bias')
        a, b = hierarchy.sibling_pairs
        rank = hierarchy.sibling_rank
        bucket = self.relative_bucket(rank[b] - rank[a])
        far = 2 * self.max_branching - 1 + bucket.abs() - self.max_branching
        column = torch.where(
            bucket.abs() < self.max_branching,
            bucket + (self.max_branching - 1),
            torch.where(bucket > 0, far, far + self.num_far_buckets))
        level = hierarchy.family_level(self.level)[a].clamp(
            max=self.num_levels - 1)
        return self.weight[level, column]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A table saved before the far buckets existed has only the
        # 2b - 1 exact columns, which keep their place: pad it with zero
        # far buckets, the bias it gave (none: it refused wide families).
        key = prefix + 'weight'
        old = state_dict.get(key)
        exact = 2 * self.max_branching - 1
        if isinstance(old, Tensor) and old.dim() == 3 and \
                old.size(1) == exact and self.weight.size(1) != exact:
            pad = old.new_zeros(old.size(0), 2 * self.num_far_buckets,
                                old.size(2))
            state_dict[key] = torch.cat([old, pad], dim=1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __repr__(self) -> str:
        extra = ''
        if self.num_far_buckets != 8:
            extra += f', num_far_buckets={self.num_far_buckets}'
        if self.max_distance != 8 * self.max_branching:
            extra += f', max_distance={self.max_distance}'
        return (f'{self.__class__.__name__}(heads={self.heads}, '
                f'max_branching={self.max_branching}, '
                f'num_levels={self.num_levels}, level={self.level!r}'
                f'{extra})')


def _far_thresholds(b: int, max_distance: int, k: int) -> List[int]:
    r"""``t[j - 1]``, the least :math:`n \geq b` with
    :math:`\lfloor k \log(n / b) / \log(D / b) \rfloor \geq j`, for
    :math:`j = 1 \dots k - 1`: :math:`n^k \geq b^{k - j} D^j`, decided in
    integers so that no rounding moves a bucket boundary."""
    thresholds = []
    for j in range(1, k):
        bound = b**(k - j) * max_distance**j
        n = max(b, math.ceil(b * (max_distance / b)**(j / k)) - 1)
        while n**k < bound:
            n += 1
        thresholds.append(n)
    return thresholds
