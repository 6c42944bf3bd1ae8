r"""Measured activities of a ChEMBL compound series, from RDKit."""
import csv
import math
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from hsa_geo._checks import check_float
from hsa_geo.datasets.rdkit_molecule_dataset import (Record,
                                                     RDKitMoleculeDataset,
                                                     read_smiles_file)


class ChEMBLActivity(RDKitMoleculeDataset):
    r"""A series of 1,017 drug-like compounds with their measured
    activities, from the `ChEMBL <https://www.ebi.ac.uk/chembl/>`_ document
    ``CHEMBL2321810``, as it ships with `RDKit <https://www.rdkit.org>`_ for
    its Free-Wilson analysis (``Contrib/FreeWilson/data``): a congeneric
    series of aryl sulfonamides (a biaryl ether core with varied
    heteroaryl groups), the kind of set a medicinal chemistry project
    models. Needs RDKit (``pip install rdkit``); nothing is downloaded:
    :meth:`download` copies ``CHEMBL2321810.smi`` (SMILES and compound
    identifier) and ``CHEMBL2321810_act.csv`` (the activity ``Act`` of every
    identifier) from the installed RDKit into :obj:`raw_dir`.

    **Label.** ``Act`` is a measured potency on a negative decadic log
    molar scale (a pIC50 as RDKit's Free-Wilson analysis uses it: ``6.0``
    is an IC50 of 1 µM, ``9.0`` of 1 nM), from 4.27 to 9.22, mean 6.55.

    - ``task='regression'``: ``y`` ``FloatTensor [1, 1]`` is ``Act``
      (OGB's ``task_type`` ``'regression'``, metric ``'rmse'``);
    - ``task='classification'``: ``y`` ``LongTensor [1, 1]`` is ``1``
      (active) where ``Act >= threshold`` and ``0`` otherwise, as OGB's
      binary tasks store it (``'binary classification'``, metric
      ``'rocauc'``). With the default threshold of 6.0 (1 µM), 689 of the
      1,017 compounds (68%) are active; with 7.0 (100 nM), 353.

    The two tasks (and every threshold) are processed into files of their
    own (``regression.pt``, ``classification_6.0.pt``, named by the exact
    threshold), so they coexist under one :obj:`root`. Graphs and splits
    are as in :class:`~hsa_geo.datasets.RDKitMoleculeDataset`: OGB's
    features (``x`` ``[N, 9]``, ``edge_attr`` ``[E, 3]``), ``smiles``,
    ``compound_id`` (the identifier of the raw file), and
    :meth:`get_idx_split` (``'scaffold'``: 278 Bemis-Murcko scaffolds;
    ``'random'``). Every SMILES of the file parses, so :attr:`skipped` is
    empty.

    Args:
        root (str): Root directory; the files go to
            ``root/chembl2321810/{raw,processed}``.
        task (str): ``'regression'`` or ``'classification'`` (see above).
            (default: :obj:`'regression'`)
        threshold (float): The activity at and above which a compound is
            active, for ``task='classification'``.
            (default: :obj:`6.0`, 1 µM)
        transform (callable, optional): A function/transform that takes in
            a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            being saved to disk. (default: :obj:`None`)
        pre_filter (callable, optional): A function that takes in a
            :obj:`torch_geometric.data.Data` object and returns a boolean
            value, indicating whether the data object should be included in
            the final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset;
            needed to change the :obj:`pre_transform` or :obj:`pre_filter`
            of a task or threshold processed before (see
            :mod:`~hsa_geo.datasets.processed_meta`).
            (default: :obj:`False`)
        log (bool, optional): Whether to print to the console while
            processing. (default: :obj:`True`)

    **STATS:**

    .. list-table::
        :widths: 10 10 10 10 10
        :header-rows: 1

        * - #graphs
          - #nodes
          - #edges
          - #features
          - #tasks
        * - 1,017
          - ~32.7
          - ~71.5
          - 9
          - 1
    """
    name = 'chembl2321810'
    rdkit_files = (('RDContribDir', 'FreeWilson/data/CHEMBL2321810.smi'),
                   ('RDContribDir', 'FreeWilson/data/CHEMBL2321810_act.csv'))
    tasks = ('regression', 'classification')

    def __init__(
        self,
        root: str,
        task: str = 'regression',
        threshold: float = 6.0,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
    ) -> None:
        if task not in self.tasks:
            raise ValueError(f"'task' must be one of {self.tasks}, got "
                             f"{task!r}")
        self.task = task
        self.threshold = check_float(threshold, 'threshold')
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload, log=log)

    @property
    def processed_stem(self) -> str:
        if self.task == 'regression':
            return 'regression'
        # The exact threshold: 6.0 and 6.0000001 label differently.
        return f'classification_{self.threshold!r}'

    @property
    def task_type(self) -> str:
        return 'regression' if self.task == 'regression' \
            else 'binary classification'

    def label(self, value: float) -> Tensor:
        if self.task == 'regression':
            return super().label(value)
        return torch.tensor([[int(value >= self.threshold)]],
                            dtype=torch.long)

    def read_raw(self) -> List[Record]:
        activity: Dict[str, float] = {}
        path = self.raw_paths[1]
        with open(path, newline='', encoding='utf-8-sig') as f:
            reader = csv.DictReader(f)
            if not {'Name', 'Act'} <= set(reader.fieldnames or ()):
                raise ValueError(
                    f"'{path}' must start with the header line 'Name,Act', "
                    f"got the columns {reader.fieldnames}")
            for row in reader:
                name = (row['Name'] or '').strip()
                try:
                    value = float(row['Act'])
                except (TypeError, ValueError):
                    value = math.nan
                if not math.isfinite(value):
                    raise ValueError(
                        f"Line {reader.line_num} of '{path}': compound "
                        f"{name!r} has the activity {row['Act']!r}, which "
                        f"is not a finite number; remove the compound or "
                        f"give its measured value")
                if name in activity:
                    raise ValueError(
                        f"Line {reader.line_num} of '{path}': compound "
                        f"{name!r} has a second activity ({value}; the "
                        f"first is {activity[name]}); keep one value per "
                        f"compound")
                activity[name] = value
        records = []
        for smiles, compound_id in read_smiles_file(self.raw_paths[0]):
            if compound_id not in activity:
                raise ValueError(
                    f"Compound {compound_id} of '{self.raw_paths[0]}' "
                    f"has no activity in '{self.raw_paths[1]}'")
            records.append((smiles, compound_id, activity[compound_id]))
        return records

    def __repr__(self) -> str:
        threshold = '' if self.task == 'regression' else \
            f', threshold={self.threshold!r}'
        return (f'{self.__class__.__name__}({len(self)}, '
                f'task={self.task!r}{threshold})')
