r"""A molecule tree: atoms -> ring systems and chain fragments ->
molecule (RDKit)."""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from hsa_geo._checks import check_bool
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal
from hsa_geo.transforms._inputs import check_data

# OGB feature columns (ogb.utils.features.atom_to_feature_vector).
_ATOMIC_NUM, _CHARGE, _NUM_H, _RADICAL, _AROMATIC, _IN_RING = 0, 3, 4, 5, 7, 8
_NUM_ATOM_FEATURES = 9
# ogb.utils.features.get_atom_feature_dims(): values 0..dim-1 per column.
_ATOM_FEATURE_DIMS = (119, 5, 12, 12, 10, 6, 6, 2, 2)
_ATOM_FEATURE_NAMES = ('atomic number - 1', 'chirality', 'degree',
                       'formal charge + 5', 'number of hydrogens',
                       'radical electrons', 'hybridization', 'aromatic',
                       'in a ring')
# Said where features may have PyG's layout instead of OGB's.
_OTHER_LAYOUT = (
    "torch_geometric.utils.from_smiles and the MoleculeNet datasets use "
    "another 9-column layout (x[:, 0] the atomic number, other "
    "hybridization codes, bond types 1 = single .. 12 = aromatic), which "
    "MoleculeHierarchy does not read")
_CHARGE_OFFSET = 5  # possible_formal_charge_list starts at -5
# possible_bond_type_list: SINGLE, DOUBLE, TRIPLE, AROMATIC, misc.
_BOND_TYPES = ('SINGLE', 'DOUBLE', 'TRIPLE', 'AROMATIC', 'DATIVE')


class MoleculeHierarchy(BaseTransform):
    r"""Turns a molecular graph into a nested signal whose leaves are its
    atoms, grouped into ring systems and acyclic fragments under one
    molecule root. Needs `RDKit <https://www.rdkit.org>`_
    (``pip install rdkit``).

    **Input.** A molecular graph as :func:`ogb.utils.smiles2graph` makes it,
    as PyG :class:`~torch_geometric.data.Data`: ``x`` the atom features
    ``[N, 9]`` (``node_feat``), ``edge_index`` ``[2, E]`` both directions of
    every bond, ``edge_attr`` ``[E, 3]`` (``edge_feat``), and usually
    ``smiles``. Also accepted: a SMILES :obj:`str`, or a ``Data`` with
    ``smiles`` and without ``x``; both are featurized with
    :func:`ogb.utils.smiles2graph` first. Every column of ``x`` must lie in
    its OGB range (:func:`ogb.utils.features.get_atom_feature_dims`), else
    a :class:`ValueError` names the atom, the column and the range. The
    9-column features of :func:`torch_geometric.utils.from_smiles` (and the
    MoleculeNet datasets) are *not* OGB features (``x[:, 0]`` is the
    atomic number itself, hybridization and bond types are coded
    differently) and are refused with a message that says so: delete
    ``x`` and ``edge_attr`` to featurize ``smiles`` with OGB. SMILES with
    dummy atoms (``'*'``) are refused too: OGB has no element for them.

    - With ``data.smiles`` the molecule is parsed from it
      (``Chem.MolFromSmiles``, as OGB does), and the atom order is checked
      against the graph: the same number of atoms, the atomic number of
      every atom (``x[:, 0] + 1``) and, with ``edge_index``, the same bonds.
      A mismatch raises a :class:`ValueError`.
    - Without ``smiles`` (e.g. the graphs of
      :class:`ogb.graphproppred.PygGraphPropPredDataset`) the molecule is
      rebuilt from the OGB features: element ``x[:, 0] + 1``, formal charge
      ``x[:, 3] - 5``, hydrogens ``x[:, 4]`` (all made explicit), radical
      electrons ``x[:, 5]``, aromaticity ``x[:, 7]``; one bond per atom
      pair of ``edge_index``, of type ``edge_attr[:, 0]`` (single, double,
      triple, aromatic; OGB's 'misc' type is read as a dative bond from the
      atom listed first). The rebuilt molecule is sanitized (partially
      where full sanitization fails, e.g. for metal complexes) and checked:
      its ring membership must equal ``x[:, 8]``. On the 4991 parsable
      molecules of RDKit's ``Data/NCI/first_5K.smi`` this gives the same
      tree as the SMILES route.

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
    graph unchanged, plus the hierarchy and ``cluster_kind``
    ``LongTensor [M]``, the kind of every cluster as an index into
    :attr:`KINDS` (``0`` molecule, ``1`` ring system, ``2`` chain group),
    row ``i`` for node ``N + i``.

    Args:
        brics (bool): cut the acyclic part at BRICS bonds; without, every
            connected piece of non-ring atoms is one group.
            (default: :obj:`True`)
        keep_single_atom_groups (bool): give single-atom chain groups a node
            (every atom then has depth 2). (default: :obj:`False`)

    Example:
        >>> data = MoleculeHierarchy()('c1ccccc1CC(=O)NC')
        >>> data.hierarchy.parent.tolist()  # ring, chain pieces, molecule
        [11, 11, 11, 11, 11, 11, 12, 12, 12, 13, 13, 14, 14, 14, -1]
    """
    #: Cluster kinds, as stored in ``cluster_kind``.
    KINDS = ('molecule', 'ring_system', 'chain')

    def __init__(self, brics: bool = True,
                 keep_single_atom_groups: bool = False):
        _import_rdkit()  # fail early, with the install hint
        self.brics = check_bool(brics, 'brics')
        self.keep_single_atom_groups = check_bool(
            keep_single_atom_groups, 'keep_single_atom_groups')

    def forward(self, data: Union[Data, str]) -> NestedSignal:
        chem, brics = _import_rdkit()
        data = self._featurized(data)
        n = data.num_nodes
        if not n:
            raise ValueError(
                f"the molecule has no atoms (num_nodes={n}"
                + (f", smiles={data['smiles']!r}" if 'smiles' in data else '')
                + "); MoleculeHierarchy needs at least one atom")
        if 'smiles' in data and data['smiles'] is not None:
            mol = _mol_from_smiles(chem, data['smiles'])
            _check_no_dummy_atoms(mol, data['smiles'])
            _check_atom_order(mol, data)
        else:
            mol = _mol_from_features(chem, data)
        group, kinds = self._groups(brics, mol)
        parent, cluster_kind = self._tree(group, kinds)
        hierarchy = Hierarchy.from_parent(torch.tensor(parent), n)
        data = copy.copy(data)  # forward() may be called on the caller's data
        data.cluster_kind = torch.tensor(cluster_kind, dtype=torch.long)
        return NestedSignal.from_data(data, hierarchy)

    # Steps #################################################################

    @staticmethod
    def _featurized(data: Union[Data, str]) -> Data:
        if isinstance(data, str):
            data = Data(smiles=data)
        check_data(data, 'MoleculeHierarchy', 'a torch_geometric Data (an OGB '
                   'molecular graph) or a SMILES str')
        if data.x is not None:
            _check_ogb_features(data.x)
            return data
        smiles = data['smiles'] if 'smiles' in data else None
        if smiles is None:
            raise ValueError(
                "data has neither 'x' (OGB atom features) nor 'smiles'; "
                "MoleculeHierarchy needs one of them")
        chem, _ = _import_rdkit()
        # Clear errors for a bad SMILES, and for atoms OGB cannot encode.
        _check_no_dummy_atoms(_mol_from_smiles(chem, smiles), smiles)
        from ogb.utils import smiles2graph
        graph = smiles2graph(smiles)
        data = Data(**{k: v for k, v in data.to_dict().items()
                       if k != 'num_nodes'})
        data.x = torch.from_numpy(graph['node_feat'])
        data.edge_index = torch.from_numpy(graph['edge_index'])
        data.edge_attr = torch.from_numpy(graph['edge_feat'])
        return data

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


def _check_atom_order(mol, data: Data):
    n = data.num_nodes
    smiles = data['smiles']
    if mol.GetNumAtoms() != n:
        raise ValueError(
            f"smiles {smiles!r} has {mol.GetNumAtoms()} atoms but the graph "
            f"has {n} nodes; the graph must be made from this SMILES with "
            f"ogb.utils.smiles2graph (same atoms, same order)")
    if data.x is not None:
        got = (data.x[:, _ATOMIC_NUM] + 1).tolist()
        if all(got[i] - 1 == a.GetAtomicNum() for i, a in enumerate(
                mol.GetAtoms())):
            raise ValueError(
                f"the features of smiles {smiles!r} look like the features "
                f"of torch_geometric.utils.from_smiles (x[:, 0] is the "
                f"atomic number of every atom), but MoleculeHierarchy "
                f"expects OGB features (ogb.utils.smiles2graph: x[:, 0] is "
                f"the atomic number - 1); {_OTHER_LAYOUT}: delete data.x, "
                f"data.edge_attr (and keep data.smiles) to featurize with "
                f"OGB")
        for i, atom in enumerate(mol.GetAtoms()):
            z = atom.GetAtomicNum()
            if got[i] != z:
                raise ValueError(
                    f"atom {i} of smiles {smiles!r} is {atom.GetSymbol()} "
                    f"(atomic number {z}) but x[{i}, 0] + 1 = {got[i]}; the "
                    f"rows of x are not in the atom order of the SMILES "
                    f"(or x is not OGB features, where column 0 is the "
                    f"atomic number - 1): build the graph with "
                    f"ogb.utils.smiles2graph")
    if data.edge_index is not None:
        given = _bond_pairs(data.edge_index)
        bonds = {(min(a, b), max(a, b)) for a, b in (
            (bd.GetBeginAtomIdx(), bd.GetEndAtomIdx())
            for bd in mol.GetBonds())}
        if given != bonds:
            diff = sorted(given ^ bonds)[0]
            where = 'edge_index' if diff in given else 'the SMILES'
            raise ValueError(
                f"the bonds of smiles {smiles!r} differ from edge_index: "
                f"atoms {diff} are bonded only in {where}; the graph must be "
                f"made from this SMILES with ogb.utils.smiles2graph")


def _bond_pairs(edge_index: Tensor) -> set:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got "
                         f"{tuple(edge_index.shape)}")
    return {(min(a, b), max(a, b)) for a, b in edge_index.t().tolist()
            if a != b}


def _check_ogb_features(x: Any):
    r"""Checks that :obj:`x` holds OGB atom features: an integer tensor
    ``[N, 9]`` with every column in its OGB range."""
    if not isinstance(x, Tensor) or x.is_floating_point() or \
            x.is_complex() or x.dtype == torch.bool:
        what = x.dtype if isinstance(x, Tensor) else type(x).__name__
        shape = tuple(x.shape) if isinstance(x, Tensor) else ''
        raise TypeError(
            f"data.x must hold the {_NUM_ATOM_FEATURES} integer OGB atom "
            f"features of ogb.utils.smiles2graph (shape [N, "
            f"{_NUM_ATOM_FEATURES}]), got {what} {shape}; featurize with "
            f"ogb.utils.smiles2graph, or pass data.smiles without x")
    if x.dim() != 2 or x.size(1) != _NUM_ATOM_FEATURES:
        raise ValueError(
            f"data.x must hold the {_NUM_ATOM_FEATURES} integer OGB atom "
            f"features of ogb.utils.smiles2graph (shape [N, "
            f"{_NUM_ATOM_FEATURES}]), got {x.dtype} {tuple(x.shape)}; "
            f"featurize with ogb.utils.smiles2graph, or pass data.smiles "
            f"without x")
    dims = torch.tensor(_ATOM_FEATURE_DIMS, device=x.device)
    bad = (x < 0) | (x >= dims)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"x[{i}, {j}] = {int(x[i, j])} is outside "
            f"0..{_ATOM_FEATURE_DIMS[j] - 1}, the OGB range of column {j} "
            f"({_ATOM_FEATURE_NAMES[j]}) of atom {i}; data.x must be OGB "
            f"atom features (ogb.utils.smiles2graph); {_OTHER_LAYOUT}")


def _check_no_dummy_atoms(mol, smiles: str):
    dummies = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 0]
    if dummies:
        raise ValueError(
            f"smiles {smiles!r} has dummy atoms ('*', atomic number 0) at "
            f"{dummies}; OGB features have no element for them, so the atom "
            f"order cannot be checked nor the molecule rebuilt: replace them "
            f"by real atoms (e.g. '[H]' for open valences) or drop this "
            f"molecule")


def _mol_from_features(chem, data: Data):
    r"""The RDKit molecule described by OGB atom and bond features."""
    x = data.x.long().cpu()
    n = x.size(0)
    mol = chem.RWMol()
    for i, row in enumerate(x.tolist()):
        for j in (_ATOMIC_NUM, _CHARGE, _NUM_H, _RADICAL):
            if row[j] == _ATOM_FEATURE_DIMS[j] - 1:  # the last is 'misc'
                raise ValueError(
                    f"x[{i}, {j}] = {row[j]} is OGB's 'misc' value of column "
                    f"{j} ({_ATOM_FEATURE_NAMES[j]}), not a number; the "
                    f"molecule cannot be rebuilt from it: pass data.smiles")
        z = row[_ATOMIC_NUM] + 1
        atom = chem.Atom(z)
        atom.SetFormalCharge(row[_CHARGE] - _CHARGE_OFFSET)
        # x[:, 4] counts all hydrogens: make them explicit, add none.
        atom.SetNumExplicitHs(row[_NUM_H])
        atom.SetNoImplicit(True)
        atom.SetNumRadicalElectrons(row[_RADICAL])
        atom.SetIsAromatic(bool(row[_AROMATIC]))
        mol.AddAtom(atom)
    edge_index = data.edge_index
    if edge_index is not None and edge_index.numel() > 0:
        edge_attr = data.edge_attr
        if edge_attr is None or edge_attr.size(0) != edge_index.size(1):
            raise ValueError(
                "data.edge_attr (OGB bond features, [E, 3]) is needed to "
                "rebuild the molecule from its graph, one row per column of "
                "edge_index; or pass data.smiles")
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
            if not 0 <= t < len(_BOND_TYPES):
                raise ValueError(
                    f"edge_attr holds the bond type {t} for atoms ({a}, "
                    f"{b}); OGB bond types are 0..{len(_BOND_TYPES) - 1} "
                    f"(single, double, triple, aromatic, misc), as "
                    f"ogb.utils.smiles2graph makes them; {_OTHER_LAYOUT}")
            bond_type = getattr(chem.BondType, _BOND_TYPES[t])
            mol.AddBond(a, b, bond_type)
            if _BOND_TYPES[t] == 'AROMATIC':
                mol.GetBondBetweenAtoms(a, b).SetIsAromatic(True)
    mol = mol.GetMol()
    with _quiet():
        try:
            chem.SanitizeMol(mol)
        except Exception:  # e.g. metal complexes: sanitize what we can
            mol.UpdatePropertyCache(strict=False)
            flags = chem.SanitizeFlags
            chem.SanitizeMol(
                mol, flags.SANITIZE_ALL ^ flags.SANITIZE_PROPERTIES
                ^ flags.SANITIZE_KEKULIZE ^ flags.SANITIZE_SETAROMATICITY,
                catchErrors=True)
    in_ring = x[:, _IN_RING].tolist()
    for i, atom in enumerate(mol.GetAtoms()):
        if bool(in_ring[i]) != atom.IsInRing():
            raise ValueError(
                f"atom {i} has x[{i}, 8] = {in_ring[i]} (in a ring) but the "
                f"molecule rebuilt from x, edge_index and edge_attr "
                f"{'has' if atom.IsInRing() else 'has no'} ring through it; "
                f"the graph is not OGB features of one molecule: pass "
                f"data.smiles")
    return mol
