r"""A seeded random train/valid/test split, as index tensors."""
import math
from typing import Dict, Tuple

import torch
from torch import Tensor

from hsa_geo._checks import check_int


def random_split(
    num_items: int,
    fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> Dict[str, Tensor]:
    r"""Splits the indices ``0..num_items - 1`` at random into a training,
    a validation and a test part, in the format of OGB's
    :meth:`get_idx_split`: a :obj:`dict` with the keys ``'train'``,
    ``'valid'`` and ``'test'``, each a sorted ``LongTensor``.

    The parts hold :math:`\lfloor f_\text{train} n \rfloor`,
    :math:`\lfloor (f_\text{train} + f_\text{valid}) n \rfloor -
    \lfloor f_\text{train} n \rfloor` and the remaining indices of a
    permutation drawn by a :class:`torch.Generator` seeded with :obj:`seed`,
    so the same arguments give the same split on every machine and in
    every process (the global random state is neither read nor changed).

    Args:
        num_items (int): The number of items to split.
        fractions (Tuple[float, float, float]): The fractions of the
            training, validation and test parts; non-negative, summing to 1.
            (default: :obj:`(0.8, 0.1, 0.1)`)
        seed (int): The seed of the permutation. (default: :obj:`0`)

    Example:
        >>> split = random_split(10, seed=0)
        >>> [len(split[part]) for part in ('train', 'valid', 'test')]
        [8, 1, 1]
    """
    check_int(num_items, 'num_items', low=0)
    check_int(seed, 'seed', low=0)
    train_end, valid_end = split_points(num_items, fractions)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_items, generator=generator)
    return {
        'train': order[:train_end].sort().values,
        'valid': order[train_end:valid_end].sort().values,
        'test': order[valid_end:].sort().values,
    }


def split_points(num_items: int,
                 fractions: Tuple[float, float, float]) -> Tuple[int, int]:
    r"""Checks :obj:`fractions` and returns where the training and the
    validation parts of :obj:`num_items` items end."""
    if (len(fractions) != 3 or any(f < 0 for f in fractions)
            or abs(sum(fractions) - 1.0) > 1e-6):
        raise ValueError(
            f"'fractions' must be three non-negative numbers (train, valid, "
            f"test) that sum to 1, got {tuple(fractions)}")
    # A product meant to be an integer may round just below it in floating
    # point (0.29 * 100 = 28.999999999999996): the floor of the fractions
    # as written.
    train_end = math.floor(fractions[0] * num_items + 1e-9)
    valid_end = math.floor((fractions[0] + fractions[1]) * num_items + 1e-9)
    return train_end, valid_end
