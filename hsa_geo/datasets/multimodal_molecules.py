r"""Molecules seen three ways at once (atom graph, SMILES tokens, 2D
depiction), with the measured labels of an RDKit dataset."""
import json
import os.path as osp
import re
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data, HeteroData
from torch_geometric.transforms import BaseTransform
from tqdm import tqdm

from hsa_geo._checks import check_int
from hsa_geo.data.hetero_nested_signal import HeteroNestedSignal
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal
from hsa_geo.datasets.chembl_activity import ChEMBLActivity
from hsa_geo.datasets.processed_meta import write_meta
from hsa_geo.datasets.rdkit_molecule_dataset import RDKitMoleculeDataset
from hsa_geo.transforms.grid_hierarchy import GridHierarchy
from hsa_geo.transforms.molecule_hierarchy import MoleculeHierarchy
from hsa_geo.transforms.multimodal_hierarchy import MultiModalHierarchy

# The sets whose molecules and labels are seen, by the name users pass.
_SOURCES = {'chembl': ChEMBLActivity}
_BOND = ('atom', 'bond', 'atom')
# The SMILES tokenizer of Schwaller et al. (2019), "Molecular Transformer",
# as most SMILES language models use it.
_SMILES_TOKEN = re.compile(
    r'(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|'
    r'\/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])')
_PAD = '[PAD]'


class MultiModalMolecules(RDKitMoleculeDataset):
    r"""The molecules and measured labels of an RDKit dataset (for
    :obj:`name='chembl'`: the 1,017 compounds of
    :class:`~hsa_geo.datasets.ChEMBLActivity`), each seen three ways at
    once, as one :class:`~hsa_geo.data.HeteroNestedSignal` built by
    :class:`~hsa_geo.transforms.MultiModalHierarchy`: the atom graph, the
    SMILES string as tokens, and the 2D depiction drawn by RDKit as image
    patches. Needs RDKit (``pip install rdkit``); nothing is downloaded:
    the source dataset (kept as :attr:`source`) copies its raw files from
    RDKit and reads the molecules and labels.

    Every modality is made from the *canonical* SMILES of the molecule
    (``Chem.MolToSmiles``), so an item depends on the molecule only, not on
    how the raw file writes it, and the atoms of the graph come in the
    order in which the SMILES writes them. The leaf types, in this order:

    - ``'atom'``: ``x`` ``LongTensor [N, 9]``, OGB's atom features
      (:func:`ogb.utils.smiles2graph`), ``smiles`` (:obj:`str`): the
      canonical SMILES; the bonds ``data['atom', 'bond', 'atom']``:
      ``edge_index`` ``[2, E]`` (both directions), ``edge_attr``
      ``LongTensor [E, 3]``, OGB's bond features. Subtree:
      :class:`~hsa_geo.transforms.MoleculeHierarchy` (ring systems and
      BRICS chain groups under the molecule).
    - ``'smiles'``: ``x`` ``LongTensor [L]``, the ids of the tokens of the
      SMILES in :attr:`smiles_vocabulary`. Tokens are matches of the
      SMILES regular expression of `Schwaller et al. (2019)
      <https://doi.org/10.1021/acscentsci.9b00576>`_ (a bracket atom such as
      ``[nH]`` or ``[C@@H]``, ``Cl``, ``Br``, other atoms, bonds, branch
      parentheses, ring digits and ``%nn``; see :meth:`tokenize`), so the
      tokens joined are the SMILES. Subtree: the *branches* of the SMILES,
      each parenthesised branch (its ``(`` and ``)`` included) a cluster
      inside the branch or main chain that holds it. A branch is a side
      chain that the SMILES grammar itself marks, so these clusters follow
      the chemistry, while fixed-size chunks
      (:class:`~hsa_geo.transforms.SequenceHierarchy`) would cut a
      substituent in two at an arbitrary token.
    - ``'image'``: ``x`` ``FloatTensor [P, 3 p^2]``, the :math:`p \times p`
      patches (:obj:`patch_size`) of the depiction
      (``rdkit.Chem.Draw.MolToImage``, :obj:`image_size` square) in
      :class:`~hsa_geo.transforms.GridHierarchy`'s Z order, RGB flattened
      channel first, intensities in :math:`[0, 1]` (white background: 1).
      RGB, not grayscale: RDKit colours the heteroatoms (N blue, O red, S
      yellow, halogens green), which grayscale would blur into similar
      intensities. Subtree: the quadtree of
      :class:`~hsa_geo.transforms.GridHierarchy`, with its ``patch_index``,
      ``leaf_coord`` and ``leaf_grid_pos``.

    The three subtrees are children of one root, so attention runs inside
    each modality at its own scales and across them at the top. The
    graph-level attributes are ``y`` ``[1, 1]`` as the source dataset
    stores it (``float`` for :obj:`task='regression'`, ``long`` for
    ``'classification'``) and ``compound_id`` (:obj:`str`). The SMILES
    string lives in ``data['atom'].smiles``, not in ``data.smiles``: PyG's
    :class:`~torch_geometric.data.HeteroData` cannot hold a graph
    attribute named as a node type.

    The vocabulary is fixed over all molecules of the source set (before
    :obj:`pre_filter`), the most frequent token first (ties in
    lexicographic order); id ``0`` (``'[PAD]'``) is reserved for padding
    and unknown tokens. Processing is deterministic (the same depiction
    pixels and token ids for the same RDKit) and writes
    ``{variant}_image{image_size}_patch{patch_size}`` files (the variant
    named as the source names it: ``regression``,
    ``classification_6.0``) to
    ``root/chembl2321810/multimodal`` (the source's files stay in
    ``root/chembl2321810/{raw,processed}``); the 1,017 depictions and trees
    take about 20 s on one CPU core, and their file holds about 60 MB.
    :meth:`get_idx_split`, :attr:`task_type`, :attr:`eval_metric` and
    :attr:`num_tasks` are as in
    :class:`~hsa_geo.datasets.RDKitMoleculeDataset`; the scaffold split of
    the full set is that of the source dataset.

    Args:
        root (str): Root directory; the source dataset's folder is made
            under it (see above).
        name (str): The source set: ``'chembl'``
            (:class:`~hsa_geo.datasets.ChEMBLActivity`).
            (default: :obj:`'chembl'`)
        task (str): ``'regression'`` or ``'classification'``, as the source
            dataset defines it. (default: :obj:`'regression'`)
        threshold (float): The activity at and above which a compound is
            active, for :obj:`task='classification'`. (default: :obj:`6.0`)
        image_size (int): The side of the depiction in pixels; a multiple
            of :obj:`patch_size`. (default: :obj:`64`)
        patch_size (int): The side of an image patch in pixels.
            (default: :obj:`8`)
        transform (callable, optional): A function/transform that takes in
            a :class:`~hsa_geo.data.HeteroNestedSignal` and returns a
            transformed version, on every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :class:`~hsa_geo.data.HeteroNestedSignal` and returns a
            transformed version, before saving to disk.
            (default: :obj:`None`)
        pre_filter (callable, optional): A function that takes in the
            molecule as the source dataset stores it (a
            :class:`~torch_geometric.data.Data` with ``smiles`` as in the raw
            file, ``compound_id``, ``y`` and the OGB graph) and returns
            whether to keep it; it runs before the depiction, so a subset
            processes quickly. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset
            and its source; needed to change the :obj:`pre_transform` or
            :obj:`pre_filter` of a variant processed before (see
            :mod:`~hsa_geo.datasets.processed_meta`).
            (default: :obj:`False`)
        log (bool, optional): Whether to print to the console (and show a
            progress bar) while processing. (default: :obj:`True`)

    **STATS** (:obj:`name='chembl'`, the defaults):

    .. list-table::
        :widths: 10 10 10 10 10 10
        :header-rows: 1

        * - #graphs
          - #atoms
          - #bonds (directed)
          - #tokens
          - #patches
          - #tasks
        * - 1,017
          - ~32.7
          - ~71.5
          - ~55.5
          - 64
          - 1
    """
    def __init__(
        self,
        root: str,
        name: str = 'chembl',
        task: str = 'regression',
        threshold: float = 6.0,
        image_size: int = 64,
        patch_size: int = 8,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
    ) -> None:
        source = _check_source(name, task)
        self.image_size = check_int(image_size, 'image_size')
        self.patch_size = check_int(patch_size, 'patch_size')
        if self.image_size % self.patch_size:
            raise ValueError(
                f"MultiModalMolecules: 'image_size' ({self.image_size}) must "
                f"be a multiple of 'patch_size' ({self.patch_size}), so that "
                f"the patches tile the depiction; e.g. image_size="
                f"{-(-self.image_size // self.patch_size) * self.patch_size}")
        # The molecules and labels, processed (and cached) by the source.
        self.source = source(root, task=task, threshold=threshold,
                             force_reload=force_reload, log=log)
        self.name = name
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload, log=log)
        with open(self.processed_paths[2]) as f:
            self.smiles_vocabulary: List[str] = json.load(f)

    # Vocabulary ############################################################

    @property
    def num_smiles_tokens(self) -> int:
        r"""The size of :attr:`smiles_vocabulary`, id ``0`` included (the
        number of embeddings the SMILES tokens need)."""
        return len(self.smiles_vocabulary)

    @staticmethod
    def tokenize(smiles: str) -> List[str]:
        r"""The tokens of :obj:`smiles`, whose concatenation is
        :obj:`smiles`; a :class:`ValueError` names a character that starts
        no token (an atom outside the organic subset written without
        brackets)."""
        tokens, end = [], 0
        for match in _SMILES_TOKEN.finditer(smiles):
            if match.start() != end:  # finditer skipped a character
                break
            tokens.append(match.group())
            end = match.end()
        if end != len(smiles):
            raise ValueError(
                f"character {end} ({smiles[end]!r}) of SMILES {smiles!r} "
                f"starts no SMILES token; write atoms outside the organic "
                f"subset in brackets (e.g. '[Na]', '[Si]')")
        return tokens

    # The source dataset's labels and splits ################################

    @property
    def task(self) -> str:
        return self.source.task

    @property
    def threshold(self) -> float:
        return self.source.threshold

    @property
    def task_type(self) -> str:
        return self.source.task_type

    @property
    def num_tasks(self) -> int:
        return self.source.num_tasks

    @property
    def smiles(self) -> List[str]:
        r"""The canonical SMILES of every molecule of the dataset, in its
        order."""
        return [self.get(i)['atom'].smiles for i in self.indices()]

    # PyG's dataset interface ###############################################

    @property
    def raw_dir(self) -> str:
        return self.source.raw_dir

    @property
    def raw_file_names(self) -> List[str]:
        return self.source.raw_file_names

    @property
    def processed_dir(self) -> str:
        # Its own folder: PyG keeps one pre_filter.pt per folder.
        return osp.join(self.root, self.source.name, 'multimodal')

    @property
    def processed_stem(self) -> str:
        return (f'{self.source.processed_stem}_image{self.image_size}_'
                f'patch{self.patch_size}')

    @property
    def processed_file_names(self) -> List[str]:
        return super().processed_file_names + [
            f'{self.processed_stem}_smiles_vocabulary.json']

    def process(self) -> None:
        molecules = [self.source.get(i) for i in range(len(self.source))]
        canonical = [_canonical(m.smiles) for m in molecules]
        vocabulary = _vocabulary(canonical)
        threads = torch.get_num_threads()
        # Every molecule is a few tiny tensors: on a loaded machine, more
        # intra-op threads make processing several times slower.
        torch.set_num_threads(1)
        try:
            data_list = self._signals(molecules, canonical, vocabulary)
        finally:
            torch.set_num_threads(threads)
        if not data_list:
            raise ValueError(
                f"{self.__class__.__name__}: 'pre_filter' kept none of the "
                f"{len(molecules)} molecules")
        self.save(data_list, self.processed_paths[0])
        write_meta(self.processed_paths[1], {'skipped': self.source.skipped},
                   self)
        with open(self.processed_paths[2], 'w') as f:
            json.dump(vocabulary, f)

    def _signals(self, molecules: List[Data], canonical: List[str],
                 vocabulary: List[str]) -> List[HeteroNestedSignal]:
        r"""The items: the molecules that :obj:`pre_filter` keeps, each
        made a nested signal and given to :obj:`pre_transform`."""
        builder = MultiModalHierarchy({
            'atom': MoleculeHierarchy(features='ogb'),
            'smiles': _BranchHierarchy(vocabulary),
            'image': GridHierarchy(self.patch_size)})
        data_list = []
        for molecule, smiles in tqdm(
                list(zip(molecules, canonical)), disable=not self.log,
                desc=f'Depicting {self.name} molecules'):
            if self.pre_filter is not None and not self.pre_filter(molecule):
                continue
            data = builder(self._modalities(molecule, smiles, vocabulary))
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)
        return data_list

    def _modalities(self, molecule: Data, smiles: str,
                    vocabulary: List[str]) -> HeteroData:
        r"""The input of :class:`MultiModalHierarchy`: one node store per
        modality, made from the canonical SMILES."""
        from ogb.utils import smiles2graph
        from rdkit import Chem

        graph = smiles2graph(smiles)
        ids = {token: i for i, token in enumerate(vocabulary)}
        data = HeteroData(y=molecule.y, compound_id=molecule.compound_id)
        data['atom'].x = torch.from_numpy(graph['node_feat'])
        data['atom'].smiles = smiles
        data[_BOND].edge_index = torch.from_numpy(graph['edge_index'])
        data[_BOND].edge_attr = torch.from_numpy(graph['edge_feat'])
        data['smiles'].x = torch.tensor(
            [ids[token] for token in self.tokenize(smiles)],
            dtype=torch.long)
        data['image'].image = _depiction(Chem.MolFromSmiles(smiles),
                                         self.image_size)
        return data

    def __repr__(self) -> str:
        threshold = '' if self.task == 'regression' else \
            f', threshold={self.threshold!r}'
        return (f'{self.__class__.__name__}({len(self)}, name={self.name!r}, '
                f'task={self.task!r}{threshold}, image_size='
                f'{self.image_size}, patch_size={self.patch_size})')


class _BranchHierarchy(BaseTransform):
    r"""The builder of the ``'smiles'`` modality: the tree of the
    parenthesised branches over the token ids ``x`` ``[L]``."""
    def __init__(self, vocabulary: List[str]):
        self.vocabulary = vocabulary

    def forward(self, data: Data) -> NestedSignal:
        tokens = [self.vocabulary[i] for i in data.x.tolist()]
        return NestedSignal.from_data(data, _branch_tree(tokens))


def _branch_tree(tokens: Sequence[str]) -> Hierarchy:
    r"""Leaves: the tokens; clusters: the branches, numbered by their
    ``(``, then the root (the whole SMILES). A token's parent is the
    innermost branch around it (its own for ``(`` and ``)``)."""
    n = len(tokens)
    branch_parent: List[int] = []  # per branch; -1: the root
    inside = [-1]  # the open branches, innermost last
    token_parent = []
    for i, token in enumerate(tokens):
        if token == '(':
            branch_parent.append(inside[-1])
            inside.append(len(branch_parent) - 1)
        token_parent.append(inside[-1])
        if token == ')':
            if len(inside) == 1:
                raise ValueError(f"token {i} of the SMILES {''.join(tokens)!r}"
                                 f" closes a branch that was never opened")
            inside.pop()
    if len(inside) > 1:
        raise ValueError(f"the SMILES {''.join(tokens)!r} leaves "
                         f"{len(inside) - 1} branch(es) open")
    root = n + len(branch_parent)
    node = [root if b == -1 else n + b for b in token_parent + branch_parent]
    return Hierarchy.from_parent(torch.tensor(node + [-1]), n)


def _check_source(name: str, task: str) -> type:
    r"""The source dataset class of :obj:`name`, after checking that it
    offers :obj:`task`."""
    if name not in _SOURCES:
        raise ValueError(f"MultiModalMolecules: 'name' must be one of "
                         f"{tuple(_SOURCES)}, got {name!r}")
    source = _SOURCES[name]
    if task not in source.tasks:
        raise ValueError(f"MultiModalMolecules: 'task' must be one of "
                         f"{source.tasks} for name={name!r}, got {task!r}")
    return source


def _canonical(smiles: str) -> str:
    from rdkit import Chem
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


def _vocabulary(smiles: Sequence[str]) -> List[str]:
    r"""``'[PAD]'``, then the tokens of :obj:`smiles`, the most frequent
    first (ties in lexicographic order, so the ids do not depend on the
    order of the molecules)."""
    counts: Dict[str, int] = Counter()
    for text in smiles:
        counts.update(MultiModalMolecules.tokenize(text))
    return [_PAD] + sorted(counts, key=lambda t: (-counts[t], t))


def _depiction(mol, size: int) -> Tensor:
    r"""``[3, size, size]`` the RGB depiction of :obj:`mol` in
    :math:`[0, 1]`."""
    from rdkit.Chem import Draw

    image = Draw.MolToImage(mol, size=(size, size)).convert('RGB')
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(size, size, 3).permute(2, 0, 1).float() / 255
