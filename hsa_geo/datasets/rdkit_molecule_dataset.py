r"""The base of the molecule datasets whose raw files ship inside RDKit."""
import os.path as osp
import shutil
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from hsa_geo.datasets.processed_meta import (folder_record_ignored,
                                             load_processed, write_meta)
from hsa_geo.datasets.random_split import random_split
from hsa_geo.datasets.scaffold_split import scaffold_split

# One molecule of a raw file: (SMILES, compound identifier, label value).
Record = Tuple[str, str, float]


def read_smiles_file(path: str) -> List[Tuple[str, str]]:
    r"""The ``(SMILES, compound identifier)`` of every line of a ``.smi``
    file of RDKit's (blank lines skipped); a line without both raises a
    :class:`ValueError` naming it."""
    molecules = []
    with open(path) as f:
        for i, line in enumerate(f):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(
                    f"Line {i + 1} of '{path}' is {line.strip()!r}, but a "
                    f"line holds a SMILES and a compound identifier "
                    f"separated by a blank")
            molecules.append((fields[0], fields[1]))
    return molecules


class RDKitMoleculeDataset(InMemoryDataset):
    r"""The base of the molecule datasets of :mod:`hsa_geo.datasets`: sets
    of molecules with one label each, whose raw files ship inside the
    installed `RDKit <https://www.rdkit.org>`_ (``pip install rdkit``), so
    that they load without a network.

    :meth:`download` copies the raw files from RDKit's installation (the
    directories :obj:`rdkit.RDConfig.RDDataDir` and
    :obj:`rdkit.RDConfig.RDContribDir`) into :obj:`raw_dir`;
    :meth:`process` parses every SMILES with RDKit and featurizes it as
    :func:`ogb.utils.smiles2graph` does, so that OGB's
    :class:`~ogb.graphproppred.mol_encoder.AtomEncoder` and
    :class:`~ogb.graphproppred.mol_encoder.BondEncoder` apply:

    - ``x`` ``LongTensor [N, 9]``: OGB's atom features,
    - ``edge_index`` ``LongTensor [2, E]``: both directions of every bond,
    - ``edge_attr`` ``LongTensor [E, 3]``: OGB's bond features,
    - ``y`` ``[1, 1]``: the label (``float`` for regression, ``long`` for
      binary classification, as in
      :class:`~ogb.graphproppred.PygGraphPropPredDataset`),
    - ``smiles`` and ``compound_id`` (:obj:`str`): the molecule and its
      identifier in the raw file.

    Molecules that RDKit cannot parse are skipped with a warning and listed
    in :attr:`skipped`; then :obj:`pre_filter` and :obj:`pre_transform`
    apply, in this order (for example
    :class:`~hsa_geo.transforms.MoleculeHierarchy` as :obj:`pre_transform`).
    Every variant (:attr:`processed_stem`) records the two with its files,
    and loading it with others raises a :class:`ValueError` until
    :obj:`force_reload=True` processes it again (see
    :mod:`~hsa_geo.datasets.processed_meta`).
    :meth:`get_idx_split` gives a scaffold or a random split in the format
    of OGB's, and :attr:`task_type`, :attr:`eval_metric` and
    :attr:`num_tasks` are named as OGB names them.

    A subclass sets :attr:`name` (the folder under :obj:`root`) and
    :attr:`rdkit_files` (``(RDConfig attribute, path under it)`` of each
    raw file) and implements :meth:`read_raw`.
    """
    name: str = ''
    rdkit_files: Tuple[Tuple[str, str], ...] = ()

    def __init__(
        self,
        root: str,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
    ) -> None:
        with folder_record_ignored():  # load_processed checks the variant
            super().__init__(root, transform, pre_transform, pre_filter,
                             log=log, force_reload=force_reload)
        meta = load_processed(self)
        self.skipped: List[Tuple[str, str]] = [
            (compound_id, smiles) for compound_id, smiles in
            meta['skipped']]

    # What a subclass defines ###############################################

    def read_raw(self) -> List[Record]:
        r"""Reads the raw files in :obj:`raw_dir` into one
        ``(smiles, compound_id, value)`` record per molecule, in file
        order."""
        raise NotImplementedError

    def label(self, value: float) -> Tensor:
        r"""The label ``y`` ``[1, 1]`` of a raw value (regression: the value
        itself, as ``float``)."""
        return torch.tensor([[value]], dtype=torch.float)

    @property
    def processed_stem(self) -> str:
        r"""The name of the processed file, without its suffix; a subclass
        whose labels depend on its arguments names them here, so that the
        variants coexist."""
        return 'data'

    @property
    def task_type(self) -> str:
        r"""``'regression'`` or ``'binary classification'``, as OGB names
        them."""
        return 'regression'

    @property
    def eval_metric(self) -> str:
        r"""The metric to report, as OGB names it: ``'rmse'`` for
        regression, ``'rocauc'`` for binary classification."""
        return 'rocauc' if self.task_type == 'binary classification' \
            else 'rmse'

    @property
    def num_tasks(self) -> int:
        r"""The number of labels per molecule (the columns of ``y``)."""
        return 1

    # PyG's dataset interface ###############################################

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.name, 'raw')

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, self.name, 'processed')

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.basename(path) for _, path in self.rdkit_files]

    @property
    def processed_file_names(self) -> List[str]:
        return [f'{self.processed_stem}.pt',
                f'{self.processed_stem}_skipped.json']

    def download(self) -> None:
        r"""Copies the raw files from the installed RDKit into
        :obj:`raw_dir`; there is nothing to download."""
        for source, target in zip(self.rdkit_paths(), self.raw_paths):
            shutil.copyfile(source, target)

    def rdkit_paths(self) -> List[str]:
        r"""Where the raw files are in the installed RDKit; an
        :class:`ImportError` or :class:`FileNotFoundError` says what to
        install where RDKit or a file is missing."""
        try:
            from rdkit import RDConfig
        except ImportError as e:
            raise ImportError(
                f"{self.__class__.__name__} reads its raw files from RDKit, "
                f"which is not installed ({e}); install it with "
                f"'pip install rdkit'") from e
        paths = [osp.join(getattr(RDConfig, directory), path)
                 for directory, path in self.rdkit_files]
        missing = [path for path in paths if not osp.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"{self.__class__.__name__} reads its raw files from the "
                f"installed RDKit, which lacks {missing} (some RDKit builds "
                f"leave out 'Data' or 'Contrib'); install the full package "
                f"with 'pip install rdkit', or copy the files "
                f"{self.raw_file_names} into '{self.raw_dir}'")
        return paths

    def process(self) -> None:
        from ogb.utils import smiles2graph
        from rdkit import Chem, rdBase

        records = self.read_raw()
        data_list: List[Data] = []
        skipped: List[Tuple[str, str]] = []
        for smiles, compound_id, value in records:
            with rdBase.BlockLogs():  # unparsable SMILES are reported below
                if Chem.MolFromSmiles(smiles) is None:
                    skipped.append((compound_id, smiles))
                    continue
                graph = smiles2graph(smiles)
            data = Data(x=torch.from_numpy(graph['node_feat']),
                        edge_index=torch.from_numpy(graph['edge_index']),
                        edge_attr=torch.from_numpy(graph['edge_feat']),
                        y=self.label(value), smiles=smiles,
                        compound_id=compound_id)
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)

        if skipped:
            warnings.warn(
                f"{self.__class__.__name__}: RDKit cannot parse {len(skipped)}"
                f" of the {len(records)} SMILES of '{self.raw_file_names[0]}'"
                f"; skipped compounds {[c for c, _ in skipped]} (listed in "
                f"the dataset's 'skipped')", stacklevel=2)
        if not data_list:
            raise ValueError(
                f"{self.__class__.__name__}: 'pre_filter' kept none of the "
                f"{len(records) - len(skipped)} molecules")
        self.save(data_list, self.processed_paths[0])
        write_meta(self.processed_paths[1], {'skipped': skipped}, self)

    # Splits and summary ####################################################

    def get_idx_split(self, split: str = 'scaffold',
                      seed: int = 0) -> Dict[str, Tensor]:
        r"""The training, validation and test indices (80/10/10), as OGB's
        :meth:`~ogb.graphproppred.PygGraphPropPredDataset.get_idx_split`
        returns them: a :obj:`dict` with the keys ``'train'``, ``'valid'``
        and ``'test'``, each a sorted ``LongTensor`` of indices into this
        dataset.

        Args:
            split (str): ``'scaffold'``: by Bemis-Murcko scaffold, no
                scaffold in two parts, deterministic (see
                :func:`~hsa_geo.datasets.scaffold_split`); ``'random'``: a
                random permutation drawn with :obj:`seed` (see
                :func:`~hsa_geo.datasets.random_split`).
                (default: :obj:`'scaffold'`)
            seed (int): The seed of the random split; the scaffold split
                does not use it. (default: :obj:`0`)
        """
        if split == 'scaffold':
            return scaffold_split(self.smiles)
        if split == 'random':
            return random_split(len(self), seed=seed)
        raise ValueError(f"'split' must be 'scaffold' or 'random', got "
                         f"{split!r}")

    @property
    def smiles(self) -> List[str]:
        r"""The SMILES of every molecule of the dataset, in its order."""
        return [self.get(i).smiles for i in self.indices()]

    @property
    def num_skipped(self) -> int:
        r"""How many molecules of the raw file RDKit could not parse."""
        return len(self.skipped)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, '
                f'task_type={self.task_type!r})')
