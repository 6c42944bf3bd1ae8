r"""A molecule tree: atoms -> ring systems and chain fragments ->
molecule (RDKit)."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils.smiles import e_map, x_map

from hsa_geo._checks import check_bool
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal
from hsa_geo.transforms._inputs import check_data

# The columns that OGB's and PyG's 9 atom features share (formal charges
# start at -5 in both); what differs is said by a _Layout.
_ATOMIC_NUM, _CHIRALITY, _CHARGE, _NUM_H, _RADICAL = 0, 1, 3, 4, 5
_AROMATIC, _IN_RING = 7, 8
_NUM_ATOM_FEATURES = 9
_CHARGE_OFFSET = 5
_COLUMN_NAMES = ('atomic number', 'chirality', 'degree', 'formal charge + 5',
                 'number of hydrogens', 'radical electrons', 'hybridization',
                 'aromatic', 'in a ring')


class _Layout(NamedTuple):
    r"""What the 9 atom features and the bond types of one featurization
    mean."""
    name: str  # the value of MoleculeHierarchy(features=...)
    label: str
    source: str  # the function that makes them
    offset: int  # the atomic number is x[:, 0] + offset
    dims: Tuple[int, ...]  # column j holds 0..dims[j] - 1
    misc: bool  # the last value of columns 0, 3, 4, 5 is 'misc', no number
    bond_types: Tuple[str, ...]  # the RDKit BondType of edge_attr[:, 0]
    bond_names: str

    def column(self, j: int) -> str:
        return _COLUMN_NAMES[j] + (' - 1' if j == 0 and self.offset else '')


# ogb.utils.features: get_atom_feature_dims(), possible_bond_type_list
# (its 'misc' bond is read as dative).
_OGB = _Layout('ogb', 'OGB', 'ogb.utils.smiles2graph', 1,
               (119, 5, 12, 12, 10, 6, 6, 2, 2), True,
               ('SINGLE', 'DOUBLE', 'TRIPLE', 'AROMATIC', 'DATIVE'),
               'single, double, triple, aromatic, misc')
# torch_geometric.utils.smiles: x_map, e_map (RDKit's BondType order).
_PYG = _Layout('pyg', 'PyG', 'torch_geometric.utils.from_smiles', 0,
               tuple(len(values) for values in x_map.values()), False,
               tuple(e_map['bond_type']), "e_map['bond_type'] of "
               "torch_geometric.utils.smiles: 1 single .. 12 aromatic")
_LAYOUTS = {'ogb': _OGB, 'pyg': _PYG}
_FEATURES = ('auto', 'ogb', 'pyg', 'zinc')


class _Reference(NamedTuple):
    r"""The molecule that ``smiles`` or ``mol`` gives, and how messages
    name it."""
    mol: Any
    name: str  # "smiles 'CCO'" or 'data.mol'
    short: str  # 'the SMILES' or 'data.mol'


class _Reading(NamedTuple):
    r"""A molecule read from the features in one layout, and how well they
    fit it: ``3`` they are what the layout's featurizer makes of it (or a
    reference molecule confirmed them); ``2`` the same, but RDKit could only
    partly sanitize it; ``1`` they differ, as :obj:`difference` says."""
    mol: Any
    fit: int
    difference: str = ''


class MoleculeHierarchy(BaseTransform):
    r"""Turns a molecular graph into a nested signal whose leaves are its
    atoms, grouped into ring systems and acyclic fragments under one
    molecule root. Needs `RDKit <https://www.rdkit.org>`_
    (``pip install rdkit``).

    **Input.** One molecule, as a :class:`~torch_geometric.data.Data` with
    atom features ``x``, ``edge_index`` ``[2, E]`` (both directions of
    every bond) and bond features ``edge_attr``, in one of the common
    featurizations (:obj:`features`):

    - ``'ogb'``: :func:`ogb.utils.smiles2graph` and
      :class:`ogb.graphproppred.PygGraphPropPredDataset`: ``x`` ``[N, 9]``
      with ``x[:, 0]`` the atomic number - 1, ``edge_attr`` ``[E, 3]`` with
      bond types ``0`` single .. ``3`` aromatic, ``4`` misc;
    - ``'pyg'``: :func:`torch_geometric.utils.from_smiles` (and
      :func:`~torch_geometric.utils.from_rdmol`) and
      :class:`~torch_geometric.datasets.MoleculeNet`: ``x`` ``[N, 9]`` with
      ``x[:, 0]`` the atomic number itself and other codes
      (``torch_geometric.utils.smiles.x_map``), ``edge_attr`` ``[E, 3]``
      with the bond types of ``e_map['bond_type']`` (``1`` single, ``2``
      double, ``3`` triple, ``12`` aromatic, ...);
    - ``'zinc'``: atom types ``x`` ``[N, 1]``, as
      :class:`~torch_geometric.datasets.ZINC` has them: indices into a
      dictionary that PyG does not ship, so the molecule must come as
      ``smiles`` or ``mol`` too.

    Also accepted: a SMILES :obj:`str`, an RDKit ``Mol``, or a ``Data``
    with ``smiles`` or ``mol`` and without ``x``: featurized first, in the
    atom order of the SMILES or ``Mol``, with OGB's features
    (``features='auto'`` or ``'ogb'``) or PyG's (``'pyg'``).

    **Reading the molecule.** Every column of ``x`` must lie in its range
    in the featurization read, else a :class:`ValueError` names the atom,
    the column and the range.

    - With ``data.mol`` (an RDKit ``Mol``; it wins over ``smiles``) or
      ``data.smiles`` (parsed with ``Chem.MolFromSmiles``, as OGB and PyG
      do), the tree is that molecule's, and the graph is checked against
      it: the same number of atoms, the same bonds (``edge_index``), and the
      element of every atom, ``x[:, 0] + 1`` (OGB) or ``x[:, 0]`` (PyG); for
      ZINC types, that atoms of one type are of one element. A mismatch
      raises a :class:`ValueError`.
    - Without them, the molecule is rebuilt from OGB or PyG features
      (ZINC types raise a :class:`ValueError` that asks for ``smiles``):
      its element, formal charge ``x[:, 3] - 5``, hydrogens ``x[:, 4]``
      (all made explicit), radical electrons ``x[:, 5]`` and aromaticity
      ``x[:, 7]``; one bond per atom pair of ``edge_index``, of type
      ``edge_attr[:, 0]`` (OGB's 'misc' type is read as a dative bond from
      the atom listed first). The molecule is sanitized (partially where
      full sanitization fails, e.g. for metal complexes) and checked: its
      ring membership must equal ``x[:, 8]``. On the 4991 parsable
      molecules of RDKit's ``Data/NCI/first_5K.smi`` this gives the same
      tree as the SMILES route, from either featurization.

    SMILES with dummy atoms (``'*'``) are refused with OGB features, which
    have no element for them, and read with PyG's.

    **Detection.** With ``features='auto'``, one column means ZINC types,
    nine OGB or PyG features. Most values fit both of these, so the layout
    is decided, never guessed: with ``smiles`` or ``mol`` by the elements
    (at most one layout matches them); without, by reading the features in
    both layouts and keeping the one whose featurizer, run on the molecule
    rebuilt, gives ``x`` back (chirality aside, which is not rebuilt; on
    real molecules the hybridization codes alone tell the layouts apart).
    Where both or neither do, a :class:`ValueError` asks for
    :obj:`features` or ``smiles``. A given :obj:`features` is not detected
    but checked: features that only the other layout reads so raise a
    :class:`ValueError` that says so.

    **Tree.** Leaves ``0..N-1`` are the atoms in the input order (the rows
    of ``x``; nothing is permuted, so a group need not be a contiguous run
    of leaves). Level 1 holds the *groups*, which partition the atoms:

    - a *ring system* for every set of rings that share atoms (fused,
      spiro and bridged rings are one system; rings joined by a bond are
      two), holding all atoms of these rings (RDKit's ring perception,
      ``GetRingInfo().AtomRings()``): naphthalene is one group of 10 atoms,
      biphenyl two of 6;
    - a *chain* group for every connected piece of the atoms in no ring
      once the bonds between two such atoms that BRICS would break
      (``rdkit.Chem.BRICS.FindBRICSBonds``) are cut (all bonds kept with
      ``brics=False``). So a chain group is connected, lies inside one
      BRICS fragment, and never holds a ring atom: substituents on two
      sides of a ring are two groups.

    Level 2 is the molecule: the root, one per graph (also for disconnected
    SMILES such as salts, ``'CC(=O)[O-].[Na+]'``). A chain group of a single
    atom gets no node of its own unless :obj:`keep_single_atom_groups` (the
    atom is a child of the root directly; a single-child node is
    transparent to HSA, so this only saves nodes). A single-atom molecule is
    one atom under the root. Families are what the chemistry gives, with no
    branching limit: a ring system has as many children as atoms (60 for
    C60), the root one child per group (and per directly attached atom).

    Groups are numbered in the order of their lowest atom index; the root is
    the last cluster.

    **Output.** :meth:`NestedSignal.from_data
    <hsa_geo.data.NestedSignal.from_data>`: every attribute of the input
    graph unchanged (for a ``str`` or ``Mol`` input: the features made,
    and ``smiles`` or ``mol``; PyG warns when it loads a saved ``mol``, so
    delete it in a ``pre_transform`` that does not need it), plus the
    hierarchy and ``cluster_kind``
    ``LongTensor [M]``, the kind of every cluster as an index into
    :attr:`KINDS` (``0`` molecule, ``1`` ring system, ``2`` chain group),
    row ``i`` for node ``N + i``.

    Args:
        brics (bool): cut the acyclic part at BRICS bonds; without, every
            connected piece of non-ring atoms is one group.
            (default: :obj:`True`)
        keep_single_atom_groups (bool): give single-atom chain groups a node
            (every atom then has depth 2). (default: :obj:`False`)
        features (str): the featurization of ``x`` and ``edge_attr``:
            ``'ogb'``, ``'pyg'`` or ``'zinc'`` (see above), or ``'auto'`` to
            detect it. Also the featurization made for a SMILES or ``Mol``
            without ``x`` (OGB's for ``'auto'``; ``'zinc'`` makes none).
            (default: :obj:`'auto'`)

    Example:
        >>> data = MoleculeHierarchy()('c1ccccc1CC(=O)NC')
        >>> data.hierarchy.parent.tolist()  # ring, chain pieces, molecule
        [11, 11, 11, 11, 11, 11, 12, 12, 12, 13, 13, 14, 14, 14, -1]
        >>> from torch_geometric.utils import from_smiles
        >>> pyg = MoleculeHierarchy()(from_smiles('c1ccccc1CC(=O)NC'))
        >>> pyg.hierarchy.parent.tolist() == data.hierarchy.parent.tolist()
        True
    """
    #: Cluster kinds, as stored in ``cluster_kind``.
    KINDS = ('molecule', 'ring_system', 'chain')

    def __init__(self, brics: bool = True,
                 keep_single_atom_groups: bool = False,
                 features: str = 'auto'):
        _import_rdkit()  # fail early, with the install hint
        self.brics = check_bool(brics, 'brics')
        self.keep_single_atom_groups = check_bool(
            keep_single_atom_groups, 'keep_single_atom_groups')
        if not isinstance(features, str):
            raise TypeError(f"'features' must be a str, one of {_FEATURES}, "
                            f"got {type(features).__name__}")
        if features not in _FEATURES:
            raise ValueError(
                f"unknown features {features!r}; choose one of {_FEATURES} "
                f"('ogb': ogb.utils.smiles2graph, 'pyg': "
                f"torch_geometric.utils.from_smiles and MoleculeNet, 'zinc': "
                f"ZINC atom types, 'auto': detect)")
        self.features = features

    def forward(self, data: Union[Data, str, Any]) -> NestedSignal:
        chem, brics = _import_rdkit()
        data = _as_data(chem, data)
        reference = _reference(chem, data)
        mol = None
        if data.x is None:
            data = self._featurized(data, reference)
            mol = reference.mol  # the features are made from it
        n = data.num_nodes
        if not n:
            raise ValueError(
                f"the molecule has no atoms (num_nodes={n}"
                + (f", smiles={data['smiles']!r}" if 'smiles' in data else '')
                + "); MoleculeHierarchy needs at least one atom")
        if mol is None:
            mol = self._read(chem, data, reference)
        group, kinds = self._groups(brics, mol)
        parent, cluster_kind = self._tree(group, kinds)
        hierarchy = Hierarchy.from_parent(torch.tensor(parent), n)
        # Set after from_data, which drops a tree's per-cluster rows that
        # data already stores (a signal given again).
        signal = NestedSignal.from_data(data, hierarchy)
        signal.cluster_kind = torch.tensor(cluster_kind, dtype=torch.long)
        return signal

    # Steps #################################################################

    def _featurized(self, data: Data, reference: Optional[_Reference]
                    ) -> Data:
        if reference is None:
            raise ValueError(
                "data has neither 'x' (atom features) nor 'smiles' (or an "
                "RDKit Mol as 'mol'); MoleculeHierarchy needs one of them")
        if self.features == 'zinc':
            raise ValueError(
                f"features='zinc' makes no features for {reference.name}: "
                f"the dictionary of ZINC atom types is not part of PyG; give "
                f"data.x, or choose features='ogb' or 'pyg' to featurize it")
        given = [k for k in ('edge_index', 'edge_attr')
                 if k in data and data[k] is not None]
        if given:
            raise ValueError(
                f"data has {' and '.join(repr(k) for k in given)} but no "
                f"'x': MoleculeHierarchy featurizes {reference.name} "
                f"itself, with its own bonds and bond features, which would "
                f"replace data.{given[0]}; delete "
                f"{' and '.join('data.' + k for k in given)}, or give the "
                f"atom features x too (then the bonds are checked against "
                f"the molecule)")
        layout = _PYG if self.features == 'pyg' else _OGB
        if layout is _OGB:
            _check_no_dummy_atoms(reference)
        try:
            x, edge_index, edge_attr = _featurize(reference.mol, layout)
        except ValueError as e:  # from_rdmol: a value outside x_map
            raise ValueError(f"{layout.source} cannot featurize "
                             f"{reference.name}: {e}") from None
        data = Data(**{k: v for k, v in data.to_dict().items()
                       if k != 'num_nodes'})
        data.x, data.edge_index, data.edge_attr = x, edge_index, edge_attr
        return data

    def _read(self, chem, data: Data, reference: Optional[_Reference]):
        r"""The molecule that the features describe, in the featurization
        :obj:`features` or the one detected."""
        x = _check_x(data.x, self.features)
        if reference is not None:
            reference = _with_hydrogens(chem, reference, data.num_nodes)
            _check_graph(reference, data)
        if x.size(1) == 1:
            return _read_atom_types(x, reference)
        if self.features == 'auto':
            return _detected(chem, x, data, reference)
        return _checked(chem, x, data, reference, _LAYOUTS[self.features])

    def _groups(self, brics, mol) -> Tuple[List[int], List[int]]:
        r"""The group of every atom (groups numbered by lowest atom) and
        the kind of every group."""
        n = mol.GetNumAtoms()
        find = _UnionFind(n)
        in_ring = [False] * n
        for ring in mol.GetRingInfo().AtomRings():
            for a in ring:
                in_ring[a] = True
                find.union(ring[0], a)
        cut = set()
        if self.brics:
            cut = {frozenset(pair) for pair, _ in brics.FindBRICSBonds(mol)}
        for bond in mol.GetBonds():
            a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            if not in_ring[a] and not in_ring[b] and \
                    frozenset((a, b)) not in cut:
                find.union(a, b)
        label: Dict[int, int] = {}
        group, kinds = [], []
        for a in range(n):  # in atom order: groups by their lowest atom
            root = find.find(a)
            if root not in label:
                label[root] = len(kinds)
                kinds.append(1 if in_ring[a] else 2)
            group.append(label[root])
        return group, kinds

    def _tree(self, group: List[int], kinds: List[int]
              ) -> Tuple[List[int], List[int]]:
        n = len(group)
        size = [0] * len(kinds)
        for g in group:
            size[g] += 1
        node, cluster_kind = {}, []
        for g, kind in enumerate(kinds):
            if size[g] > 1 or self.keep_single_atom_groups:
                node[g] = n + len(cluster_kind)
                cluster_kind.append(kind)
        root = n + len(cluster_kind)
        cluster_kind.append(0)
        parent = [node.get(g, root) for g in group]
        parent += [root] * (len(cluster_kind) - 1) + [-1]
        return parent, cluster_kind

    def __repr__(self) -> str:
        args = []
        if not self.brics:
            args.append('brics=False')
        if self.keep_single_atom_groups:
            args.append('keep_single_atom_groups=True')
        if self.features != 'auto':
            args.append(f'features={self.features!r}')
        return f'{self.__class__.__name__}({", ".join(args)})'


class _UnionFind:
    def __init__(self, n: int):
        self.up = list(range(n))

    def find(self, a: int) -> int:
        while self.up[a] != a:
            self.up[a] = self.up[self.up[a]]
            a = self.up[a]
        return a

    def union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.up[max(a, b)] = min(a, b)


def _import_rdkit() -> Tuple[Any, Any]:
    try:
        from rdkit import Chem
        from rdkit.Chem import BRICS
    except ImportError as e:
        raise ImportError(
            f"MoleculeHierarchy needs RDKit, which is not installed ({e}); "
            f"install it with 'pip install rdkit'") from e
    return Chem, BRICS


def _quiet():
    r"""Silences RDKit's logging (it prints parse errors to stderr) where
    the RDKit version allows (``BlockLogs``: RDKit 2022.03 and later)."""
    from rdkit import rdBase
    block = getattr(rdBase, 'BlockLogs', None)
    return block() if block is not None else contextlib.nullcontext()


# Inputs #####################################################################


def _as_data(chem, data: Any) -> Data:
    if isinstance(data, str):
        return Data(smiles=data)
    if isinstance(data, chem.Mol):
        return Data(mol=data)
    return check_data(data, 'MoleculeHierarchy', 'a torch_geometric Data (a '
                      'molecular graph), an RDKit Mol or a SMILES str')


def _reference(chem, data: Data) -> Optional[_Reference]:
    r"""The molecule of ``data.mol`` (a sanitized copy) or else of
    ``data.smiles``; :obj:`None` without either."""
    mol = data['mol'] if 'mol' in data else None
    if mol is not None:
        if not isinstance(mol, chem.Mol):
            raise TypeError(
                f"data.mol must be an RDKit Mol (rdkit.Chem.Mol), got "
                f"{type(mol).__name__}; a batch of molecules cannot be "
                f"transformed, apply MoleculeHierarchy to one molecule at a "
                f"time")
        mol = chem.Mol(mol)  # sanitizing must not touch the caller's Mol
        _sanitize(chem, mol)
        return _Reference(mol, 'data.mol', 'data.mol')
    smiles = data['smiles'] if 'smiles' in data else None
    if smiles is None:
        return None
    return _Reference(_mol_from_smiles(chem, smiles), f'smiles {smiles!r}',
                      'the SMILES')


def _mol_from_smiles(chem, smiles: Any):
    if not isinstance(smiles, str):
        raise ValueError(
            f"data.smiles must be a str, got {type(smiles).__name__}; a "
            f"batch of molecules cannot be transformed, apply "
            f"MoleculeHierarchy to one molecule at a time")
    with _quiet():
        mol = chem.MolFromSmiles(smiles)
        if mol is not None:
            return mol
        # Say why: a syntax error, or a chemically invalid molecule.
        raw = chem.MolFromSmiles(smiles, sanitize=False)
        reason = 'RDKit cannot parse it'
        if raw is not None:
            try:
                chem.SanitizeMol(raw)
            except Exception as e:  # RDKit raises several types
                reason = f'RDKit rejects the molecule: {str(e).strip()}'
    raise ValueError(
        f"smiles {smiles!r} is not a valid SMILES ({reason}); fix or drop "
        f"this molecule before the transform")


def _with_hydrogens(chem, reference: _Reference, n: int) -> _Reference:
    r"""The molecule of a SMILES with its hydrogens as atoms
    (``Chem.AddHs``, as ``from_smiles(..., with_hydrogen=True)`` makes the
    graph) where that, and not the SMILES as parsed, has the graph's
    :obj:`n` atoms; the checks of the atoms and bonds then follow."""
    mol = reference.mol
    if reference.name == 'data.mol' or mol.GetNumAtoms() == n:
        return reference
    with_h = chem.AddHs(mol)
    if with_h.GetNumAtoms() != n:
        return reference
    return _Reference(with_h, f'{reference.name} with its hydrogens as '
                      f'atoms (Chem.AddHs)', f'{reference.short} with '
                      f'hydrogens (Chem.AddHs)')


def _check_no_dummy_atoms(reference: _Reference):
    dummies = [a.GetIdx() for a in reference.mol.GetAtoms()
               if a.GetAtomicNum() == 0]
    if dummies:
        raise ValueError(
            f"{reference.name} has dummy atoms ('*', atomic number 0) at "
            f"{dummies}; OGB features have no element for them, so the atom "
            f"order cannot be checked nor the molecule rebuilt: replace them "
            f"by real atoms (e.g. '[H]' for open valences), drop this "
            f"molecule, or use PyG's features, which have them "
            f"(features='pyg')")


def _featurize(mol, layout: _Layout) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``x``, ``edge_index`` and ``edge_attr`` of :obj:`mol` in its atom
    order, as :obj:`layout`'s featurizer makes them."""
    if layout is _PYG:
        from torch_geometric.utils import from_rdmol
        graph = from_rdmol(mol)
        return graph.x, graph.edge_index, graph.edge_attr
    # ogb.utils.smiles2graph, from a Mol instead of a SMILES.
    from ogb.utils.features import (atom_to_feature_vector,
                                    bond_to_feature_vector)
    x = [atom_to_feature_vector(atom) for atom in mol.GetAtoms()]
    edges, attrs = [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        edges += [(i, j), (j, i)]
        attrs += [bond_to_feature_vector(bond)] * 2
    return (torch.tensor(x, dtype=torch.long).view(-1, _NUM_ATOM_FEATURES),
            torch.tensor(edges, dtype=torch.long).view(-1, 2).t().contiguous(),
            torch.tensor(attrs, dtype=torch.long).view(-1, 3))


def _check_x(x: Any, features: str) -> Tensor:
    r"""Checks that :obj:`x` is an integer tensor whose shape fits
    :obj:`features`: ``[N, 9]`` (OGB, PyG) or ``[N, 1]`` (ZINC)."""
    expected = {
        'auto': "the 9 integer OGB atom features (ogb.utils.smiles2graph) "
                "or PyG atom features (torch_geometric.utils.from_smiles), "
                "shape [N, 9], or integer ZINC-style atom types, shape "
                "[N, 1]",
        'ogb': "the 9 integer OGB atom features of ogb.utils.smiles2graph, "
               "shape [N, 9]",
        'pyg': "the 9 integer PyG atom features of "
               "torch_geometric.utils.from_smiles, shape [N, 9]",
        'zinc': "integer ZINC-style atom types, shape [N, 1]",
    }[features]
    if not isinstance(x, Tensor) or x.is_floating_point() or \
            x.is_complex() or x.dtype == torch.bool:
        what = x.dtype if isinstance(x, Tensor) else type(x).__name__
        shape = tuple(x.shape) if isinstance(x, Tensor) else ''
        raise TypeError(
            f"data.x must hold {expected}, got {what} {shape}; featurize "
            f"the molecule with one of these, or pass data.smiles without x")
    if x.dim() != 2 or x.size(1) not in (1, _NUM_ATOM_FEATURES):
        raise ValueError(
            f"data.x must hold {expected}, got {x.dtype} {tuple(x.shape)}; "
            f"featurize the molecule with one of these, or pass data.smiles "
            f"without x")
    found = 'ZINC-style atom types' if x.size(1) == 1 else \
        'OGB or PyG atom features'
    if (features == 'zinc') != (x.size(1) == 1) and features != 'auto':
        raise ValueError(
            f"data.x has shape {tuple(x.shape)}, like {found}, but "
            f"features={features!r} was given, which expects {expected}; "
            f"pass features='auto' to detect the featurization")
    return x.long().cpu()


# Checks against the molecule of smiles or mol ##############################


def _check_graph(reference: _Reference, data: Data):
    r"""Checks the atom count and the bonds of the graph against the
    reference molecule, whatever the features."""
    mol, n = reference.mol, data.num_nodes
    if mol.GetNumAtoms() != n:
        raise ValueError(
            f"{reference.name} has {mol.GetNumAtoms()} atoms but the graph "
            f"has {n} nodes; the graph must be made from this molecule "
            f"(same atoms, same order), e.g. with ogb.utils.smiles2graph or "
            f"torch_geometric.utils.from_smiles")
    if data.edge_index is None:
        return
    given = _bond_pairs(data.edge_index)
    bonds = {(min(a, b), max(a, b)) for a, b in (
        (bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
        for bond in mol.GetBonds())}
    if given != bonds:
        diff = sorted(given ^ bonds)[0]
        where = 'edge_index' if diff in given else reference.short
        raise ValueError(
            f"the bonds of {reference.name} differ from edge_index: atoms "
            f"{diff} are bonded only in {where}; the graph must be made from "
            f"this molecule (same atoms, same order)")


def _bond_pairs(edge_index: Tensor) -> set:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got "
                         f"{tuple(edge_index.shape)}")
    return {(min(a, b), max(a, b)) for a, b in edge_index.t().tolist()
            if a != b}


def _check_elements(reference: _Reference, x: Tensor, layout: _Layout):
    got = (x[:, _ATOMIC_NUM] + layout.offset).tolist()
    plus = f' + {layout.offset}' if layout.offset else ''
    for i, atom in enumerate(reference.mol.GetAtoms()):
        z = atom.GetAtomicNum()
        if got[i] != z:
            raise ValueError(
                f"atom {i} of {reference.name} is {atom.GetSymbol()} "
                f"(atomic number {z}) but x[{i}, 0]{plus} = {got[i]}; the "
                f"rows of x are not in the atom order of {reference.short} "
                f"(or x is not {layout.label} features, where column 0 is "
                f"the {layout.column(0)}): build the graph from this "
                f"molecule with {layout.source}")


def _read_atom_types(x: Tensor, reference: Optional[_Reference]):
    r"""The reference molecule, after checking that ZINC-style atom types
    fit it: one type, one element."""
    if reference is None:
        raise ValueError(
            "data.x holds ZINC-style atom types (shape [N, 1], as in "
            "torch_geometric.datasets.ZINC), which cannot be turned into a "
            "molecule: the dictionary of the types is not part of PyG. Add "
            "the molecule as data.smiles (or an RDKit Mol as data.mol), its "
            "atoms in the order of the rows of x")
    first: Dict[int, int] = {}
    atoms = list(reference.mol.GetAtoms())
    for i, t in enumerate(x[:, 0].tolist()):
        if t < 0:
            raise ValueError(f"x[{i}, 0] = {t} is not a ZINC-style atom "
                             f"type (an index, at least 0)")
        j = first.setdefault(t, i)
        a, b = atoms[j], atoms[i]
        if a.GetAtomicNum() != b.GetAtomicNum():
            raise ValueError(
                f"x[{i}, 0] = {t} is the atom type of atom {j} "
                f"({a.GetSymbol()}) and of atom {i} ({b.GetSymbol()}) of "
                f"{reference.name}, but an atom type is one element: the "
                f"rows of x are not in the atom order of {reference.short}")
    return reference.mol


# Detection ##################################################################


def _reading(chem, x: Tensor, data: Data, layout: _Layout,
             reference: Optional[_Reference]) -> _Reading:
    r"""The molecule that :obj:`x` describes in :obj:`layout`, and how well
    they fit; a :class:`ValueError` where they cannot be read so."""
    _check_ranges(x, layout)
    if reference is not None:
        if layout is _OGB:
            _check_no_dummy_atoms(reference)
        _check_elements(reference, x, layout)
        return _Reading(reference.mol, 3)
    mol, sanitized = _mol_from_features(chem, x, data, layout)
    difference = _difference(mol, x, layout)
    if difference:
        return _Reading(mol, 1, difference)
    return _Reading(mol, 3 if sanitized else 2)


def _difference(mol, x: Tensor, layout: _Layout) -> str:
    r"""Where :obj:`x` differs from what :obj:`layout`'s featurizer makes of
    :obj:`mol` (chirality aside: it is not rebuilt); ``''`` nowhere."""
    try:
        made = _featurize(mol, layout)[0]
    except ValueError as e:  # from_rdmol: a value outside x_map
        return f"{layout.source} cannot featurize it ({e})"
    columns = [j for j in range(_NUM_ATOM_FEATURES) if j != _CHIRALITY]
    diff = (made[:, columns] != x[:, columns]).nonzero()
    if diff.numel() == 0:
        return ''
    i, j = int(diff[0, 0]), columns[int(diff[0, 1])]
    return (f"x[{i}, {j}] = {int(x[i, j])} but {layout.source} gives "
            f"{int(made[i, j])} ({layout.column(j)}) for atom {i} of it")


def _detected(chem, x: Tensor, data: Data,
              reference: Optional[_Reference]):
    r"""The molecule of the one layout that fits the features best, where
    they are at least that layout's features of it (fit 2); else a
    :class:`ValueError` that gives the reading of every layout."""
    readings, reasons = {}, []
    for layout in _LAYOUTS.values():
        head = f"read as {layout.label} features ({layout.source})"
        try:
            readings[layout] = reading = _reading(chem, x, data, layout,
                                                  reference)
        except ValueError as e:
            reasons.append(f"{head}: {e}")
            continue
        if reading.fit < 2:
            reasons.append(f"{head}, they describe a molecule but are not "
                           f"its {layout.label} features: "
                           f"{reading.difference}")
        else:
            partly = '' if reading.fit == 3 else \
                ' (which RDKit sanitizes only partly)'
            reasons.append(f"{head}, they are the {layout.label} features "
                           f"of the molecule they describe{partly}")
    best = max((r.fit for r in readings.values()), default=0)
    top = [r for r in readings.values() if r.fit == best]
    if best >= 2 and len(top) == 1:
        return top[0].mol
    what = 'the molecule they describe' if reference is None else \
        reference.name
    if not readings:
        raise ValueError(
            f"data.x and data.edge_attr are neither OGB nor PyG features "
            f"of {what}: {'; '.join(reasons)}. Pass features='ogb' or "
            f"'pyg' to read them one way only, or pass data.smiles")
    raise ValueError(
        f"cannot tell whether data.x and data.edge_attr are OGB or PyG "
        f"features: {'; '.join(reasons)}. MoleculeHierarchy does not "
        f"guess: pass features='ogb' or features='pyg', or pass "
        f"data.smiles (or data.mol) so that the elements decide")


def _checked(chem, x: Tensor, data: Data, reference: Optional[_Reference],
             layout: _Layout):
    r"""The molecule that :obj:`x` describes in the given :obj:`layout`;
    a :class:`ValueError` that names the other layout where only that one
    fits."""
    try:
        reading, error = _reading(chem, x, data, layout, reference), None
    except ValueError as e:
        reading, error = None, e
    if reading is not None and reading.fit >= 2:
        return reading.mol
    other = _PYG if layout is _OGB else _OGB
    try:
        fits_other = _reading(chem, x, data, other, reference).fit >= 2
    except ValueError:
        fits_other = False
    if fits_other:
        found = (f"x[:, 0] looks like the {other.column(0)} of every "
                 f"atom ({other.label} layout of {other.source})"
                 if reference is not None else
                 f"data.x and data.edge_attr look like {other.label} "
                 f"features ({other.source}: read so, they are the "
                 f"{other.label} features of the molecule they describe)")
        why = str(error) if reading is None else (
            f"they describe a molecule but are not its {layout.label} "
            f"features: {reading.difference}")
        raise ValueError(
            f"{found}, but features={layout.name!r} was given "
            f"({layout.label} layout of {layout.source}, x[:, 0] the "
            f"{layout.column(0)}); read as {layout.label} features: {why}. "
            f"Pass features={other.name!r} (or 'auto')")
    if error is not None:
        raise error
    return reading.mol


# Rebuilding from OGB or PyG features ########################################


def _check_ranges(x: Tensor, layout: _Layout):
    dims = torch.tensor(layout.dims)
    bad = (x < 0) | (x >= dims)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"x[{i}, {j}] = {int(x[i, j])} is outside "
            f"0..{layout.dims[j] - 1}, the {layout.label} range of column "
            f"{j} ({layout.column(j)}) of atom {i}; data.x must be "
            f"{layout.label} atom features ({layout.source})")


def _mol_from_features(chem, x: Tensor, data: Data, layout: _Layout
                       ) -> Tuple[Any, bool]:
    r"""The RDKit molecule that atom and bond features in :obj:`layout`
    describe, and whether RDKit sanitized it fully."""
    mol = chem.RWMol()
    _add_atoms(chem, mol, x, layout)
    _add_bonds(chem, mol, data, layout)
    mol = mol.GetMol()
    sanitized = _sanitize(chem, mol)
    in_ring = x[:, _IN_RING].tolist()
    for i, atom in enumerate(mol.GetAtoms()):
        if bool(in_ring[i]) != atom.IsInRing():
            raise ValueError(
                f"atom {i} has x[{i}, 8] = {in_ring[i]} (in a ring) but the "
                f"molecule rebuilt from x, edge_index and edge_attr "
                f"{'has' if atom.IsInRing() else 'has no'} ring through it; "
                f"the graph is not {layout.label} features of one molecule: "
                f"pass data.smiles")
    return mol, sanitized


def _add_atoms(chem, mol, x: Tensor, layout: _Layout):
    for i, row in enumerate(x.tolist()):
        for j in (_ATOMIC_NUM, _CHARGE, _NUM_H, _RADICAL):
            if layout.misc and row[j] == layout.dims[j] - 1:
                raise ValueError(
                    f"x[{i}, {j}] = {row[j]} is {layout.label}'s 'misc' "
                    f"value of column {j} ({layout.column(j)}), not a "
                    f"number; the molecule cannot be rebuilt from it: pass "
                    f"data.smiles")
        atom = chem.Atom(row[_ATOMIC_NUM] + layout.offset)
        atom.SetFormalCharge(row[_CHARGE] - _CHARGE_OFFSET)
        # x[:, 4] counts all hydrogens: make them explicit, add none.
        atom.SetNumExplicitHs(row[_NUM_H])
        atom.SetNoImplicit(True)
        atom.SetNumRadicalElectrons(row[_RADICAL])
        atom.SetIsAromatic(bool(row[_AROMATIC]))
        mol.AddAtom(atom)


def _add_bonds(chem, mol, data: Data, layout: _Layout):
    edge_index, n = data.edge_index, mol.GetNumAtoms()
    if edge_index is None or edge_index.numel() == 0:
        return
    edge_attr = data.edge_attr
    if edge_attr is None or edge_attr.size(0) != edge_index.size(1):
        raise ValueError(
            f"data.edge_attr ({layout.label} bond features, [E, 3]) is "
            f"needed to rebuild the molecule from its graph, one row per "
            f"column of edge_index; or pass data.smiles")
    types = edge_attr.view(edge_attr.size(0), -1)[:, 0].tolist()
    seen = set()
    for (a, b), t in zip(edge_index.t().tolist(), types):
        key = (min(a, b), max(a, b))
        if a == b or key in seen:
            continue
        seen.add(key)
        if not 0 <= a < n or not 0 <= b < n:
            raise ValueError(f"edge_index holds the pair ({a}, {b}) but "
                             f"the molecule has {n} atoms")
        if not 0 <= t < len(layout.bond_types):
            raise ValueError(
                f"edge_attr holds the bond type {t} for atoms ({a}, {b}); "
                f"{layout.label} bond types are "
                f"0..{len(layout.bond_types) - 1} ({layout.bond_names}), "
                f"as {layout.source} makes them")
        name = layout.bond_types[t]
        mol.AddBond(a, b, getattr(chem.BondType, name))
        if name == 'AROMATIC':
            mol.GetBondBetweenAtoms(a, b).SetIsAromatic(True)


def _sanitize(chem, mol) -> bool:
    r"""Sanitizes :obj:`mol` in place, partially where full sanitization
    fails (e.g. metal complexes); whether it was full."""
    with _quiet():
        try:
            chem.SanitizeMol(mol)
            return True
        except Exception:  # RDKit raises several types
            mol.UpdatePropertyCache(strict=False)
            flags = chem.SanitizeFlags
            chem.SanitizeMol(
                mol, flags.SANITIZE_ALL ^ flags.SANITIZE_PROPERTIES
                ^ flags.SANITIZE_KEKULIZE ^ flags.SANITIZE_SETAROMATICITY,
                catchErrors=True)
            return False
