r"""A learnable bias of where two siblings sit in their family."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Parameter

from hsa_geo._checks import check_device, check_int
from hsa_geo.data.hierarchy import Hierarchy


class FamilyGeometryBias(torch.nn.Module):
    r"""A learnable bias :math:`\beta_{ab}` of the relative position of
    siblings :math:`a` and :math:`b` within their family and of the
    family's level, added to the family logits :math:`l_{ab}` of HSA
    (HSA_MATH §4: a bias constant on the block of :math:`a` and :math:`b`
    keeps the attention the exact KL minimiser of its family):

    .. math::
        \beta_{ab} = \mathbf{B}\big[\min(\ell(F), L - 1),\;
            \mathrm{rank}(b) - \mathrm{rank}(a)\big] \in \mathbb{R}^H,

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

    Args:
        heads (int): :math:`H`, at least ``1``.
        max_branching (int): the largest family size it can encode, at
            least ``2``; the relative positions are
            :math:`-(b - 1) \dots b - 1`.
        num_levels (int): :math:`L`, levels with their own biases, at least
            ``1``.
        level (str): ``'height'`` or ``'depth'``, see above.

    A wrong type (``heads=True``, ``heads=2.0``, ``level=1``) raises
    :class:`TypeError`, a value out of range :class:`ValueError`.

    Shapes:
        - **input:** a :class:`~hsa_geo.data.Hierarchy`
        - **output:** ``[P, H]``, one row per pair of
          :attr:`~hsa_geo.data.Hierarchy.sibling_pairs`, the ``pair_bias``
          of :func:`~hsa_geo.functional.hierarchical_attention`.
    """
    def __init__(self, heads: int, max_branching: int = 16,
                 num_levels: int = 8, level: str = 'height'):
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
        self.level = level
        self.heads = heads
        self.max_branching = max_branching
        self.num_levels = num_levels
        self.weight = Parameter(
            torch.empty(num_levels, 2 * max_branching - 1, heads))
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.zeros_(self.weight)

    def forward(self, hierarchy: Hierarchy) -> Tensor:
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"'hierarchy' must be a hsa_geo.data.Hierarchy, "
                            f"got {type(hierarchy).__name__}")
        check_device(hierarchy.parent, 'hierarchy', self.weight.device,
                     'the bias')
        if hierarchy.max_branching > self.max_branching:
            raise ValueError(
                f"the hierarchy has a family of {hierarchy.max_branching} "
                f"children but this bias encodes at most max_branching="
                f"{self.max_branching}; build it with max_branching >= "
                f"{hierarchy.max_branching}")
        a, b = hierarchy.sibling_pairs
        rank = hierarchy.sibling_rank
        rel = rank[b] - rank[a] + (self.max_branching - 1)
        level = hierarchy.family_level(self.level)[a].clamp(
            max=self.num_levels - 1)
        return self.weight[level, rel]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(heads={self.heads}, '
                f'max_branching={self.max_branching}, '
                f'num_levels={self.num_levels}, level={self.level!r})')
