r"""The deterministic Bemis-Murcko scaffold split of molecules."""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from hsa_geo.datasets.random_split import split_points


def scaffold_split(
    smiles: Sequence[str],
    fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1),
    include_chirality: bool = True,
) -> Dict[str, Tensor]:
    r"""Splits molecules by their Bemis-Murcko scaffold, as the scaffold
    splits of `OGB <https://ogb.stanford.edu/docs/graphprop/>`_ and of
    `MoleculeNet / DeepChem <https://arxiv.org/abs/1703.00564>`_ do: no
    scaffold is shared by two parts, so the validation and test molecules
    have ring systems and linkers the model has not seen in training.
    Needs RDKit (``pip install rdkit``).

    The scaffold of a molecule is
    :func:`rdkit.Chem.Scaffolds.MurckoScaffold.MurckoScaffoldSmiles`
    (its ring systems and the linkers between them; ``''`` for an acyclic
    molecule, so all acyclic molecules form one set). The scaffold sets are
    taken from largest to smallest (ties: the set whose first index is
    larger first, as in the split that OGB's molecule datasets were made
    with, `Hu et al. (2020) <https://arxiv.org/abs/1905.12265>`_, and
    DeepChem's) and each
    goes to the training part if it fits under
    :math:`\lfloor f_\text{train} n \rfloor` molecules, else to the
    validation part if that keeps training and validation under
    :math:`\lfloor (f_\text{train} + f_\text{valid}) n \rfloor`, else to
    the test part. So the large, common scaffolds are trained on and the
    rare ones are tested: the split is deterministic and harder than a
    random one.

    Args:
        smiles (Sequence[str]): The SMILES of the molecules; every one must
            be parsable by RDKit.
        fractions (Tuple[float, float, float]): The fractions of the
            training, validation and test parts; non-negative, summing to 1.
            (default: :obj:`(0.8, 0.1, 0.1)`)
        include_chirality (bool): Keep stereochemistry in the scaffolds,
            so that stereoisomeric scaffolds are different sets.
            (default: :obj:`True`)

    Returns:
        A :obj:`dict` with the keys ``'train'``, ``'valid'`` and ``'test'``,
        each a sorted ``LongTensor`` of indices into :obj:`smiles`, as
        OGB's :meth:`get_idx_split` returns.

    Example:
        >>> # Phenol and aniline share benzene; cyclohexanol and ethanol
        >>> # are sets of one (the later one first).
        >>> split = scaffold_split(['c1ccccc1O', 'c1ccccc1N', 'C1CCCCC1O',
        ...                         'CCO'], fractions=(0.5, 0.25, 0.25))
        >>> {part: index.tolist() for part, index in split.items()}
        {'train': [0, 1], 'valid': [3], 'test': [2]}
    """
    train_end, valid_end = split_points(len(smiles), fractions)
    groups: Dict[str, List[int]] = {}
    for i, scaffold in enumerate(murcko_scaffolds(smiles,
                                                  include_chirality)):
        groups.setdefault(scaffold, []).append(i)
    # Ties by the first index, as Hu et al.'s splitters.py sorts them
    # ((len(x[1]), x[1][0]), reverse=True); a group's indices ascend.
    ordered = sorted(groups.values(), key=lambda group: (len(group),
                                                         group[0]),
                     reverse=True)
    train: List[int] = []
    valid: List[int] = []
    test: List[int] = []
    for group in ordered:
        if len(train) + len(group) <= train_end:
            train.extend(group)
        elif len(train) + len(valid) + len(group) <= valid_end:
            valid.extend(group)
        else:
            test.extend(group)
    return {part: torch.tensor(sorted(index), dtype=torch.long)
            for part, index in (('train', train), ('valid', valid),
                                ('test', test))}


def murcko_scaffolds(smiles: Sequence[str],
                     include_chirality: bool = True) -> List[str]:
    r"""The Bemis-Murcko scaffold SMILES of every molecule of
    :obj:`smiles`; a :class:`ValueError` names the first SMILES that RDKit
    cannot parse."""
    try:
        from rdkit import Chem, rdBase
        from rdkit.Chem.Scaffolds import MurckoScaffold
    except ImportError as e:
        raise ImportError(
            f"scaffold_split needs RDKit, which is not installed ({e}); "
            f"install it with 'pip install rdkit'") from e
    scaffolds = []
    with rdBase.BlockLogs():  # a bad SMILES is reported below, not logged
        for i, text in enumerate(smiles):
            mol = Chem.MolFromSmiles(text)
            if mol is None:
                raise ValueError(f"RDKit cannot parse SMILES {i} ({text!r}),"
                                 f" so it has no scaffold; drop it first")
            scaffolds.append(MurckoScaffold.MurckoScaffoldSmiles(
                mol=mol, includeChirality=include_chirality))
    return scaffolds
