r"""Tests of :class:`hsa_geo.transforms.molecule_hierarchy.MoleculeHierarchy`
on real molecules that ship with RDKit (``Data/NCI/first_200.props.sdf`` and
``Data/NCI/first_5K.smi``) made into graphs with
:func:`ogb.utils.smiles2graph`: ring systems checked against an independent
graph computation (bridges), chain groups against BRICS, the rebuild from
OGB features against the SMILES route, permutation equivariance, batching,
use as a transform and a ``pre_transform``, and every error message; then
the other featurizations (PyG's ``from_smiles`` and MoleculeNet, ZINC-style
atom types, RDKit ``Mol`` inputs) against the SMILES route, their
detection, and HSAConv with a geometry bias on batches of molecules."""
import copy
import os
import sys
from collections import defaultdict

import pytest
import torch
import torch_geometric.transforms as T
from hypothesis import example, given, settings, strategies as st
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.transforms.molecule_hierarchy import MoleculeHierarchy
from tests.helpers.layers import queries_keys_values
from tests.helpers.pre_transform_dataset import PreTransformDataset

try:  # optional: every test but test_missing_rdkit needs it
    import networkx as nx
    from ogb.utils import smiles2graph
    from rdkit import Chem, RDConfig, rdBase
    from rdkit.Chem import BRICS
except ImportError:
    Chem = None
needs_rdkit = pytest.mark.skipif(Chem is None, reason='rdkit is not '
                                 'installed (pip install rdkit)')

KIND = {name: i for i, name in enumerate(MoleculeHierarchy.KINDS)}
NCI = os.path.join(RDConfig.RDDataDir, 'NCI') if Chem is not None else ''
# A ferrocene from first_5K.smi: dative bonds (OGB's 'misc' bond type).
FERROCENE = 'CN(C)C[C-]12C3=C4C5=C1[Fe++]23456789[C-]%10C6=C7C8=C9%10'


def _load_molecules():
    path = os.path.join(NCI, 'first_200.props.sdf')
    if Chem is None or not os.path.exists(path):
        return []
    with rdBase.BlockLogs():
        mols = [m for m in Chem.SDMolSupplier(path) if m is not None]
    return [Chem.MolToSmiles(m) for m in mols]


SMILES = _load_molecules()


def graph(smiles: str, **attrs) -> Data:
    r"""An OGB molecular graph as PyG data."""
    g = smiles2graph(smiles)
    return Data(x=torch.from_numpy(g['node_feat']),
                edge_index=torch.from_numpy(g['edge_index']),
                edge_attr=torch.from_numpy(g['edge_feat']), smiles=smiles,
                **attrs)


def without_smiles(data: Data) -> Data:
    out = copy.copy(data)
    del out.smiles
    return out


@pytest.fixture(scope='module')
def graphs():
    assert len(SMILES) == 200, 'RDKit ships Data/NCI/first_200.props.sdf'
    return [graph(s) for s in SMILES]


@pytest.fixture(scope='module')
def transform():
    return MoleculeHierarchy()


# Independent checks #########################################################


def groups_of(data: NestedSignal):
    r"""``{cluster: set of atoms}`` for the groups, and the atoms that hang
    from the root directly."""
    h, n = data.hierarchy, data.num_nodes
    parent = h.parent.tolist()
    root = h.num_nodes - 1
    groups, direct = defaultdict(set), set()
    for atom in range(n):
        if parent[atom] == root:
            direct.add(atom)
        else:
            groups[parent[atom] - n].add(atom)
    return dict(groups), direct


def ring_systems(data: Data):
    r"""Ring systems without RDKit: the connected pieces that remain of the
    bond graph once its bridges are removed (every other bond is on a
    cycle), with more than one atom."""
    g = nx.Graph()
    g.add_nodes_from(range(data.num_nodes))
    g.add_edges_from(map(tuple, data.edge_index.t().tolist()))
    g.remove_edges_from(list(nx.bridges(g)))
    return {frozenset(c) for c in nx.connected_components(g) if len(c) > 1}


def check_molecule(data: NestedSignal, source: Data, brics: bool = True,
                   singles: bool = False):
    h, n = data.hierarchy, data.num_nodes
    m = h.num_clusters
    # The graph is unchanged; the atoms are the leaves, in order.
    assert n == source.num_nodes
    for key in source.keys():
        value = source[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(data[key], value)
        else:
            assert data[key] == value
    # One tree, the molecule last, groups below it.
    assert h.num_trees == 1 and int(h.leaf_count[-1]) == n
    assert data.cluster_kind.shape == (m, )
    assert data.cluster_kind[-1] == KIND['molecule']
    assert (data.cluster_kind[:-1] > 0).all()
    assert (h.parent[n:-1] == h.num_nodes - 1).all()
    groups, direct = groups_of(data)
    assert sorted(groups) == list(range(m - 1))
    # Groups are numbered by their lowest atom.
    firsts = [min(groups[c]) for c in range(m - 1)]
    assert firsts == sorted(firsts)
    kind = data.cluster_kind.tolist()
    rings = {frozenset(a) for c, a in groups.items()
             if kind[c] == KIND['ring_system']}
    assert rings == ring_systems(source)
    in_ring = source.x[:, 8].bool().tolist()
    assert {a for r in rings for a in r} == {a for a in range(n)
                                             if in_ring[a]}
    # Chain groups: connected, no ring atom, more than one atom (unless
    # kept), split from each other only at BRICS bonds.
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(map(tuple, source.edge_index.t().tolist()))
    chain_of = {a: ('direct', a) for a in direct}
    for c, atoms in groups.items():
        if kind[c] == KIND['chain']:
            assert not any(in_ring[a] for a in atoms)
            assert nx.is_connected(g.subgraph(atoms))
            assert len(atoms) > 1 or singles
            chain_of.update({a: c for a in atoms})
    assert not any(in_ring[a] for a in direct)
    if singles:
        assert not direct and (h.node_depth[:n] == 2).all()
    cut = set()
    if brics:
        mol = Chem.MolFromSmiles(source.smiles)
        cut = {frozenset(p) for p, _ in BRICS.FindBRICSBonds(mol)}
    for a, b in g.edges:
        if not in_ring[a] and not in_ring[b]:
            same = chain_of[a] == chain_of[b]
            assert same == (frozenset((a, b)) not in cut)


# Real molecules #############################################################


@needs_rdkit
def test_real_molecules(graphs, transform):
    kinds = defaultdict(int)
    for source in graphs:
        data = transform(source)
        assert isinstance(data, NestedSignal)
        check_molecule(data, source)
        for k in data.cluster_kind.tolist():
            kinds[MoleculeHierarchy.KINDS[k]] += 1
    # The set has rings, chains and multi-ring systems.
    assert kinds['ring_system'] > 100 and kinds['chain'] > 100
    assert kinds['molecule'] == len(graphs)


@needs_rdkit
def test_real_molecules_options(graphs):
    plain = MoleculeHierarchy(brics=False)
    keep = MoleculeHierarchy(keep_single_atom_groups=True)
    for source in graphs[::4]:
        check_molecule(plain(source), source, brics=False)
        check_molecule(keep(source), source, singles=True)


@needs_rdkit
def test_rebuild_from_features(graphs, transform):
    r"""Without ``smiles`` the molecule is rebuilt from the OGB features:
    the same tree as from the SMILES."""
    more = [graph(FERROCENE)]
    with open(os.path.join(NCI, 'first_5K.smi')) as f:
        lines = [next(f).split()[0] for _ in range(300)]
    with rdBase.BlockLogs():
        more += [graph(s) for s in lines[200:] if Chem.MolFromSmiles(s)]
    for source in graphs + more:
        a = transform(source)
        b = transform(without_smiles(source))
        assert a.hierarchy.parent.tolist() == b.hierarchy.parent.tolist()
        assert torch.equal(a.cluster_kind, b.cluster_kind)
        assert 'smiles' not in b
    ferrocene = transform(without_smiles(more[0]))
    assert int((ferrocene.cluster_kind == KIND['ring_system']).sum()) == 1


@needs_rdkit
def test_hand_checked_examples(transform):
    cases = {
        # benzyl amide: ring, CH2-C(=O) (BRICS cuts C(=O)-N), N-CH3
        'c1ccccc1CC(=O)NC': ([11] * 6 + [12] * 3 + [13] * 2 +
                             [14, 14, 14, -1], [1, 2, 2, 0]),
        'C': ([1, -1], [0]),  # a single atom under the molecule
        '[Na+].[Cl-]': ([2, 2, -1], [0]),
        'CC(=O)[O-].[Na+]': ([5, 5, 5, 5, 6, 6, -1], [2, 0]),
        'c1ccc2ccccc2c1': ([10] * 10 + [11, -1], [1, 0]),  # fused: one
        'c1ccccc1-c1ccccc1': ([12] * 6 + [13] * 6 + [14, 14, -1],
                              [1, 1, 0]),  # joined by a bond: two
        'C1CC12CC2': ([5] * 5 + [6, -1], [1, 0]),  # spiro: one
        # cresol: methyl and hydroxyl, single atoms on two sides of the ring
        'Cc1ccc(O)cc1': ([9, 8, 8, 8, 8, 9, 8, 8, 9, -1], [1, 0]),
    }
    for smiles, (parent, kinds) in cases.items():
        data = transform(smiles)
        assert data.hierarchy.parent.tolist() == parent, smiles
        assert data.cluster_kind.tolist() == kinds, smiles
    keep = MoleculeHierarchy(keep_single_atom_groups=True)('Cc1ccc(O)cc1')
    # Methyl and hydroxyl: two single-atom groups, not one.
    assert keep.hierarchy.parent.tolist() == [
        8, 9, 9, 9, 9, 10, 9, 9, 11, 11, 11, -1
    ]
    assert keep.cluster_kind.tolist() == [2, 1, 2, 0]


@needs_rdkit
def test_input_forms(transform):
    smiles = 'CC(=O)Oc1ccccc1C(=O)O'  # aspirin
    a = transform(graph(smiles, y=torch.tensor([[1.5]])))
    b = transform(smiles)
    c = transform(Data(smiles=smiles, y=torch.tensor([[1.5]])))
    for other in (b, c):
        assert other.hierarchy.parent.tolist() == a.hierarchy.parent.tolist()
        assert torch.equal(other.x, a.x)
        assert torch.equal(other.edge_index, a.edge_index)
        assert torch.equal(other.edge_attr, a.edge_attr)
    assert c.y.tolist() == [[1.5]] and b.smiles == smiles
    source = graph(smiles)
    transform(source)
    assert set(source.keys()) == {'x', 'edge_index', 'edge_attr', 'smiles'}


# Permutations ###############################################################


@needs_rdkit
@settings(max_examples=max(5, settings().max_examples // 2))
@given(index=st.integers(0, 199), seed=st.integers(0, 2**31 - 1))
def test_permuted_atoms(graphs, transform, index, seed):
    r"""Rebuilt from features, a graph with its atoms permuted gets the
    permuted groups."""
    source = graphs[index]
    n = source.num_nodes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    # Atom perm[i] of the source is atom i of the permuted graph.
    permuted = Data(x=source.x[perm], edge_index=inverse[source.edge_index],
                    edge_attr=source.edge_attr)
    a, _ = groups_of(transform(source))
    b, _ = groups_of(transform(permuted))
    mapped = {frozenset(perm[i].item() for i in atoms)
              for atoms in b.values()}
    assert mapped == {frozenset(atoms) for atoms in a.values()}


# Batching and transforms ####################################################


@needs_rdkit
def test_dataloader_batches(graphs, transform):
    singles = [transform(g) for g in graphs[:10]]
    for batch in DataLoader(singles, batch_size=4):
        part = singles[:batch.num_graphs]
        singles = singles[batch.num_graphs:]
        expected = Hierarchy.batch([s.hierarchy for s in part])
        assert batch.hierarchy.parent.tolist() == expected.parent.tolist()
        assert torch.equal(batch.cluster_kind,
                           torch.cat([s.cluster_kind for s in part]))
        assert torch.equal(batch.x, torch.cat([s.x for s in part]))
        assert batch.smiles == [s.smiles for s in part]


@needs_rdkit
def test_compose_deterministic_and_copies(graphs, transform):
    composed = T.Compose([transform, T.ToDevice('cpu')])
    for source in graphs[:5]:
        a = composed(source)
        b = copy.deepcopy(transform)(source)
        c = MoleculeHierarchy()(source)
        for other in (b, c):
            assert other.hierarchy.parent.tolist() == \
                a.hierarchy.parent.tolist()
            assert torch.equal(other.cluster_kind, a.cluster_kind)


@needs_rdkit
def test_pre_transform(tmp_path, transform):
    dataset = PreTransformDataset(
        str(tmp_path), lambda: [graph(s, y=torch.tensor([[float(i)]]))
                                for i, s in enumerate(SMILES[:12])],
        transform)
    assert len(dataset) == 12
    for i, smiles in enumerate(SMILES[:12]):
        stored, fresh = dataset[i], transform(graph(smiles))
        assert isinstance(stored, NestedSignal)
        assert stored.hierarchy.parent.tolist() == \
            fresh.hierarchy.parent.tolist()
        assert stored.smiles == smiles and stored.y.item() == float(i)


@needs_rdkit
def test_repr():
    assert repr(MoleculeHierarchy()) == 'MoleculeHierarchy()'
    assert repr(MoleculeHierarchy(brics=False,
                                  keep_single_atom_groups=True)) == (
        'MoleculeHierarchy(brics=False, keep_single_atom_groups=True)')


# Errors #####################################################################


@needs_rdkit
def test_bad_smiles(transform):
    with pytest.raises(ValueError, match=r"smiles 'C1CC\(' is not a valid "
                       r"SMILES \(RDKit cannot parse it\)"):
        transform('C1CC(')
    with pytest.raises(ValueError, match=r"smiles 'C\(C\)\(C\)\(C\)\(C\)C' "
                       r"is not a valid SMILES \(RDKit rejects the molecule: "
                       r".*valence"):
        transform('C(C)(C)(C)(C)C')
    bad = graph('CCO')
    bad.smiles = 'C1CC('
    with pytest.raises(ValueError, match='is not a valid SMILES'):
        transform(bad)
    with pytest.raises(ValueError, match=r'the molecule has no atoms '
                       r"\(num_nodes=0, smiles=''\)"):
        transform('')
    with pytest.raises(ValueError, match='data.smiles must be a str, got '
                       'list; a batch of molecules'):
        transform(Data(smiles=['C', 'O']))


@needs_rdkit
def test_atom_order_mismatch(transform):
    source = graph('OCC')
    wrong = copy.copy(source)
    wrong.smiles = 'CCO'  # same atoms, another order
    with pytest.raises(ValueError, match=r"atom 0 of smiles 'CCO' is C "
                       r"\(atomic number 6\) but x\[0, 0\] \+ 1 = 8; the "
                       r"rows of x are not in the atom order"):
        transform(wrong)
    wrong.smiles = 'CCCO'
    with pytest.raises(ValueError, match="smiles 'CCCO' has 4 atoms but the "
                       "graph has 3 nodes"):
        transform(wrong)
    # Same atoms in the same order, other bonds: C1-C2-O3 vs C1-O3-C2.
    source = graph('CCO')
    wrong = copy.copy(source)
    wrong.edge_index = torch.tensor([[0, 2, 2, 1], [2, 0, 1, 2]])
    with pytest.raises(ValueError, match=r"the bonds of smiles 'CCO' differ "
                       r"from edge_index: atoms \(0, 1\) are bonded only in "
                       r"the SMILES"):
        transform(wrong)


@needs_rdkit
def test_bad_graphs(transform):
    source = graph('c1ccccc1O')
    for x, error, shape in (
            (source.x.float(), TypeError, r'torch.float32 \(7, 9\)'),
            (source.x[:, :3], ValueError, r'torch.int64 \(7, 3\)')):
        bad = copy.copy(source)
        bad.x = x
        with pytest.raises(error, match=r'data.x must hold the 9 '
                           r'integer OGB atom features .* got ' + shape):
            transform(bad)
    bad = without_smiles(source)
    bad.x = source.x.clone()
    bad.x[6, 8] = 1  # the O claims to be in a ring
    with pytest.raises(ValueError, match=r'atom 6 has x\[6, 8\] = 1 \(in a '
                       r'ring\) but the molecule rebuilt .* has no ring '
                       r'through it'):
        transform(bad)
    bad = without_smiles(source)
    bad.edge_attr = None
    with pytest.raises(ValueError, match=r'data.edge_attr \(OGB bond '
                       r'features, \[E, 3\]\) is needed'):
        transform(bad)
    bad = without_smiles(source)
    bad.edge_attr = source.edge_attr.clone()
    bad.edge_attr[0, 0] = 7
    with pytest.raises(ValueError, match='edge_attr holds the bond type 7'):
        transform(bad)
    bad = without_smiles(source)
    bad.x = source.x.clone()
    bad.x[0, 0] = 200
    with pytest.raises(ValueError, match=r'x\[0, 0\] = 200 is outside '
                       r'0..118, the OGB range of column 0 \(atomic number'):
        transform(bad)
    with pytest.raises(ValueError, match="data has neither 'x' .* nor "
                       "'smiles'"):
        transform(Data(y=torch.tensor([1])))
    with pytest.raises(TypeError, match='expects a torch_geometric Data .* '
                       'or a SMILES str, got int'):
        transform(3)
    with pytest.raises(TypeError, match='expects a torch_geometric Data .* '
                       'or a SMILES str, got NoneType'):
        transform(None)


DIMS = (119, 5, 12, 12, 10, 6, 6, 2, 2)  # ogb get_atom_feature_dims()


@needs_rdkit
@pytest.mark.parametrize('column', range(9))
@pytest.mark.parametrize('with_smiles', [False, True])
def test_out_of_range_ogb_features(transform, column, with_smiles):
    source = graph('CCO')
    for value in (-1, DIMS[column]):
        bad = copy.copy(source) if with_smiles else without_smiles(source)
        bad.x = source.x.clone()
        bad.x[1, column] = value
        with pytest.raises(ValueError, match=(
                rf'x\[1, {column}\] = {value} is outside '
                rf'0..{DIMS[column] - 1}, the OGB range of column {column} ')):
            transform(bad)


@needs_rdkit
def test_negative_hydrogen_count(transform):
    bad = without_smiles(graph('CCO'))
    bad.x = bad.x.clone()
    bad.x[1, 4] = -1  # was an OverflowError from RDKit
    with pytest.raises(ValueError, match=r'x\[1, 4\] = -1 is outside 0..9, '
                       r'the OGB range of column 4 \(number of hydrogens\)'):
        transform(bad)


@needs_rdkit
@pytest.mark.parametrize('column', [0, 3, 4, 5])
def test_misc_features_are_not_rebuilt(transform, column):
    bad = without_smiles(graph('CCO'))
    bad.x = bad.x.clone()
    bad.x[2, column] = DIMS[column] - 1
    with pytest.raises(ValueError, match=rf"x\[2, {column}\] = "
                       rf"{DIMS[column] - 1} is OGB's 'misc' value"):
        transform(bad)


@needs_rdkit
def test_dummy_atoms(transform):
    from ogb.utils import smiles2graph
    g = smiles2graph('*CC*')
    with_x = Data(x=torch.from_numpy(g['node_feat']),
                  edge_index=torch.from_numpy(g['edge_index']),
                  edge_attr=torch.from_numpy(g['edge_feat']), smiles='*CC*')
    for data in ('*CC*', Data(smiles='*CC*'), with_x):
        with pytest.raises(ValueError, match=r"smiles '\*CC\*' has dummy "
                           r"atoms \('\*', atomic number 0\) at \[0, 3\]"):
            transform(data)


@needs_rdkit
def test_pyg_from_smiles_features_are_read(transform):
    from torch_geometric.utils import from_smiles
    for smiles in ('CCO', 'c1ccccc1'):
        expected = transform(smiles).hierarchy.parent.tolist()
        pyg = from_smiles(smiles)
        assert transform(pyg).hierarchy.parent.tolist() == expected
        assert transform(without_smiles(pyg)).hierarchy.parent.tolist() \
            == expected
    benzene = without_smiles(from_smiles('c1ccccc1'))
    with pytest.raises(ValueError, match=r"look like PyG features .* but "
                       r"features='ogb' was given .* edge_attr holds the "
                       r"bond type 12 .*OGB bond types are 0..4"):
        MoleculeHierarchy(features='ogb')(benzene)


@needs_rdkit
@given(st.dictionaries(st.sampled_from(range(len(DIMS))), st.one_of(
    st.integers(0, 1), st.integers(-3, 130)), max_size=3),
       st.sampled_from(['CCO', 'c1ccccc1O']))
@example({}, 'c1ccccc1O')  # (the tree branch runs in every run)
@example({0: 7}, 'CCO')
def test_random_features_give_a_tree_or_a_clear_error(row, smiles):
    """Up to three features of the first atom changed, to small values
    (mostly in their OGB range) or anything: a clear error, or the tree of
    the molecule's bonds (ring systems and chains do not depend on the
    atoms' features) over the features as given."""
    source = without_smiles(graph(smiles))
    source.x = source.x.clone()
    for j, v in row.items():
        source.x[0, j] = v
    try:
        out = MoleculeHierarchy()(source)
    except ValueError as e:
        assert 'x[' in str(e) or 'pass data.smiles' in str(e)
    else:
        tree = MoleculeHierarchy()(graph(smiles)).hierarchy
        assert out.hierarchy.parent.tolist() == tree.parent.tolist()
        assert torch.equal(out.x, source.x)


def test_missing_rdkit(monkeypatch):
    transform = MoleculeHierarchy() if Chem is not None else None
    for name in [m for m in sys.modules if m == 'rdkit' or
                 m.startswith('rdkit.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'rdkit', None)  # import rdkit fails
    with pytest.raises(ImportError, match=r"MoleculeHierarchy needs RDKit, "
                       r"which is not installed .*'pip install rdkit'"):
        MoleculeHierarchy()
    if transform is not None:  # made while RDKit was there
        with pytest.raises(ImportError, match="pip install rdkit"):
            transform('CCO')


# Other featurizations #######################################################


def _load_nci(count: int):
    r"""The first :obj:`count` molecules of ``first_5K.smi`` that RDKit
    parses and that have no dummy atoms (OGB features cannot hold them)."""
    if Chem is None:
        return []
    with open(os.path.join(NCI, 'first_5K.smi')) as f:
        lines = [line.split()[0] for line in f]
    out = []
    with rdBase.BlockLogs():
        for smiles in lines:
            mol = Chem.MolFromSmiles(smiles)
            if mol is not None and all(a.GetAtomicNum() > 0
                                       for a in mol.GetAtoms()):
                out.append(smiles)
            if len(out) == count:
                return out
    return out


NCI_SMILES = _load_nci(200)
# ZINC-style atom types: a dictionary of (element, charge, hydrogens), as
# ZINC's, made up here; only "one type, one element" matters.
ATOM_TYPES = {}


def zinc_style(source: str, **attrs) -> Data:
    r"""The molecule of SMILES :obj:`source` as
    torch_geometric.datasets.ZINC stores it: atom types ``x [N, 1]``,
    kekulized bond types ``1..3`` as ``edge_attr [E]``."""
    from torch_geometric.utils import from_smiles
    mol = Chem.MolFromSmiles(source)
    x = [ATOM_TYPES.setdefault((a.GetAtomicNum(), a.GetFormalCharge(),
                                a.GetTotalNumHs()), len(ATOM_TYPES))
         for a in mol.GetAtoms()]
    kekule = Chem.Mol(mol)
    Chem.Kekulize(kekule, clearAromaticFlags=True)
    edge_index = from_smiles(source).edge_index
    edge_attr = [int(kekule.GetBondBetweenAtoms(a, b).GetBondTypeAsDouble())
                 for a, b in edge_index.t().tolist()]
    return Data(x=torch.tensor(x).view(-1, 1), edge_index=edge_index,
                edge_attr=torch.tensor(edge_attr, dtype=torch.long), **attrs)


def same_tree(a: NestedSignal, b: NestedSignal) -> bool:
    return a.hierarchy.parent.tolist() == b.hierarchy.parent.tolist() and \
        torch.equal(a.cluster_kind, b.cluster_kind)


def routes():
    r"""``(name, transform, input from a SMILES)`` for every featurization
    and input form that should give the tree of the SMILES route."""
    from torch_geometric.utils import from_smiles
    auto, as_pyg = MoleculeHierarchy(), MoleculeHierarchy(features='pyg')
    as_ogb = MoleculeHierarchy(features='ogb')
    as_zinc = MoleculeHierarchy(features='zinc')
    mol = Chem.MolFromSmiles
    return [
        ('ogb', auto, graph),
        ('ogb without smiles', auto, lambda s: without_smiles(graph(s))),
        ('ogb given', as_ogb, lambda s: without_smiles(graph(s))),
        ('pyg', auto, from_smiles),
        ('pyg without smiles', auto,
         lambda s: without_smiles(from_smiles(s))),
        ('pyg given', as_pyg, lambda s: without_smiles(from_smiles(s))),
        ('zinc with smiles', auto, lambda s: zinc_style(s, smiles=s)),
        ('zinc with mol', as_zinc, lambda s: zinc_style(s, mol=mol(s))),
        ('mol', auto, mol),
        ('data.mol', auto, lambda s: Data(mol=mol(s))),
        ('smiles made pyg', as_pyg, lambda s: s),
        ('mol made pyg', as_pyg, mol),
    ]


@needs_rdkit
def test_every_featurization_gives_the_smiles_tree(transform):
    r"""Every molecule through the SMILES route and two others, in turn:
    each route sees about 30 molecules."""
    assert len(NCI_SMILES) == 200
    all_routes = routes()
    seen = defaultdict(int)
    for i, smiles in enumerate(NCI_SMILES):
        expected = transform(smiles)
        for r in (2 * i, 2 * i + 1):
            name, route, make = all_routes[r % len(all_routes)]
            assert same_tree(route(make(smiles)), expected), (name, smiles)
            seen[name] += 1
    assert min(seen.values()) >= 30 and len(seen) == len(all_routes)


@needs_rdkit
def test_rebuild_from_pyg_features_with_dative_bonds(transform):
    from torch_geometric.utils import from_smiles
    pyg = from_smiles(FERROCENE)
    assert {16, 17} & set(pyg.edge_attr[:, 0].tolist())  # DATIVE(ONE)
    a, b = transform(FERROCENE), transform(without_smiles(pyg))
    assert same_tree(a, b)


@needs_rdkit
def test_mol_inputs(transform):
    smiles = 'CC(=O)Oc1ccccc1C(=O)O'
    mol = Chem.MolFromSmiles(smiles)
    before = Chem.MolToMolBlock(mol)
    out = transform(mol)
    assert Chem.MolToMolBlock(mol) == before  # the caller's Mol untouched
    assert Chem.MolToSmiles(out.mol) == Chem.MolToSmiles(mol)
    assert 'smiles' not in out
    expected = graph(smiles)  # OGB features, the atom order of the Mol
    for key in ('x', 'edge_index', 'edge_attr'):
        assert torch.equal(out[key], expected[key])
    assert same_tree(out, transform(smiles))
    # An unsanitized Mol, and a Mol that wins over another smiles.
    raw = Chem.MolFromSmiles(smiles, sanitize=False)
    assert same_tree(transform(raw), out)
    assert same_tree(transform(Data(mol=mol, smiles='CCO')), out)
    with pytest.raises(TypeError, match='data.mol must be an RDKit Mol '
                       r'\(rdkit.Chem.Mol\), got str'):
        transform(Data(mol=smiles))
    with pytest.raises(TypeError, match='expects a torch_geometric Data .*'
                       'an RDKit Mol or a SMILES str, got int'):
        transform(3)


@needs_rdkit
def test_moleculenet_style_data(tmp_path):
    r"""MoleculeNet stores ``from_smiles(smiles)`` with ``y [1, tasks]``;
    as a ``pre_transform`` the tree is the SMILES route's."""
    from torch_geometric.utils import from_smiles

    def make():
        out = []
        for i, smiles in enumerate(NCI_SMILES[:12]):
            data = from_smiles(smiles)
            data.y = torch.tensor([[float(i), float('nan')]])
            out.append(data)
        return out

    transform = MoleculeHierarchy()
    dataset = PreTransformDataset(str(tmp_path), make, transform)
    for i, smiles in enumerate(NCI_SMILES[:12]):
        stored = dataset[i]
        assert same_tree(stored, transform(smiles))
        assert torch.equal(stored.x, from_smiles(smiles).x)
        assert stored.y[0, 0] == i and stored.smiles == smiles
    batch = next(iter(DataLoader(dataset, batch_size=5)))
    assert batch.num_graphs == 5 and batch.hierarchy.num_trees == 5


@needs_rdkit
def test_zinc_style_atom_types():
    transform = MoleculeHierarchy(features='zinc')
    smiles = 'c1ccccc1CC(=O)NC'
    expected = transform(zinc_style(smiles, smiles=smiles))
    assert same_tree(expected, MoleculeHierarchy()(smiles))
    assert expected.x.shape == (11, 1)
    for data in (zinc_style(smiles), zinc_style(smiles, mol=None)):
        with pytest.raises(ValueError, match=r'data.x holds ZINC-style atom '
                           r'types .* cannot be turned into a molecule: .* '
                           r'Add the molecule as data.smiles'):
            transform(data)
    wrong = zinc_style(smiles, smiles=smiles)
    wrong.x[8] = wrong.x[7]  # the O typed as the C bonded to it
    with pytest.raises(ValueError, match=r"x\[8, 0\] = \d+ is the atom type "
                       r"of atom \d \(C\) and of atom 8 \(O\) of smiles "
                       r"'c1ccccc1CC\(=O\)NC', but an atom type is one "
                       r"element"):
        transform(wrong)
    wrong = zinc_style(smiles, mol=Chem.MolFromSmiles(smiles + 'C'))
    with pytest.raises(ValueError, match='data.mol has 12 atoms but the '
                       'graph has 11 nodes'):
        transform(wrong)
    wrong = zinc_style('C1CCCCC1', mol=Chem.MolFromSmiles('CCCCCC'))
    with pytest.raises(ValueError, match=r'the bonds of data.mol differ from '
                       r'edge_index: atoms \(0, 5\) are bonded only in '
                       r'edge_index'):
        transform(wrong)
    wrong = zinc_style(smiles, smiles=smiles)
    wrong.x[3, 0] = -1
    with pytest.raises(ValueError, match=r'x\[3, 0\] = -1 is not a '
                       r'ZINC-style atom type'):
        transform(wrong)
    with pytest.raises(ValueError, match=r"features='zinc' makes no features "
                       r"for smiles 'CCO'"):
        transform('CCO')


@needs_rdkit
def test_dummy_atoms_with_pyg_features(transform):
    from torch_geometric.utils import from_smiles
    as_pyg = MoleculeHierarchy(features='pyg')
    out = as_pyg('*CC*')
    assert out.x[:, 0].tolist() == [0, 6, 6, 0]
    for data in (from_smiles('*CC*'), without_smiles(from_smiles('*CC*'))):
        assert same_tree(transform(data), out)
    with pytest.raises(ValueError, match=r"has dummy atoms .* use PyG's "
                       r"features, which have them \(features='pyg'\)"):
        transform('*CC*')


# Explicit features and detection ############################################


@needs_rdkit
def test_features_given_explicitly_are_checked():
    from torch_geometric.utils import from_smiles
    as_ogb = MoleculeHierarchy(features='ogb')
    as_pyg = MoleculeHierarchy(features='pyg')
    smiles = 'CCO'
    ogb, pyg = graph(smiles), from_smiles(smiles)
    assert same_tree(as_ogb(ogb), as_pyg(pyg))
    with pytest.raises(ValueError, match=(
            r"x\[:, 0\] looks like the atomic number of every atom \(PyG "
            r"layout of torch_geometric.utils.from_smiles\), but "
            r"features='ogb' was given \(OGB layout of "
            r"ogb.utils.smiles2graph, x\[:, 0\] the atomic number - 1\); "
            r"read as OGB features: atom 0 of smiles 'CCO' is C \(atomic "
            r"number 6\) but x\[0, 0\] \+ 1 = 7; .* Pass features='pyg'")):
        as_ogb(pyg)
    with pytest.raises(ValueError, match=(
            r"x\[:, 0\] looks like the atomic number - 1 of every atom \(OGB "
            r"layout .*features='pyg' was given .* atom 0 of smiles 'CCO' "
            r"is C \(atomic number 6\) but x\[0, 0\] = 5; .* Pass "
            r"features='ogb'")):
        as_pyg(ogb)
    # Without smiles: the rebuilt molecule's own features disagree.
    with pytest.raises(ValueError, match=(
            r"data.x and data.edge_attr look like PyG features .* but "
            r"features='ogb' was given .* read as OGB features: they "
            r"describe a molecule but are not its OGB features: x\[0, 6\] = "
            r"4 but ogb.utils.smiles2graph gives 2 \(hybridization\) for "
            r"atom 0 of it. Pass features='pyg'")):
        as_ogb(without_smiles(pyg))
    with pytest.raises(ValueError, match=(
            r"look like OGB features .* features='pyg' was given .* "
            r"x\[0, 6\] = 2 but torch_geometric.utils.from_smiles gives 4 "
            r"\(hybridization\) .* Pass features='ogb'")):
        as_pyg(without_smiles(ogb))
    zinc = zinc_style(smiles, smiles=smiles)
    for features in ('ogb', 'pyg'):
        with pytest.raises(ValueError, match=(
                rf"data.x has shape \(3, 1\), like ZINC-style atom types, "
                rf"but features='{features}' was given, which expects the 9 "
                rf"integer")):
            MoleculeHierarchy(features=features)(zinc)
    with pytest.raises(ValueError, match=(
            r"data.x has shape \(3, 9\), like OGB or PyG atom features, but "
            r"features='zinc' was given, which expects integer ZINC-style")):
        MoleculeHierarchy(features='zinc')(ogb)


@needs_rdkit
def test_ambiguous_features_are_refused(transform):
    r"""With the hybridization column blanked, both layouts read the
    features as a molecule and neither gives them back: the transform
    refuses to guess, unless smiles or features= decide."""
    from torch_geometric.utils import from_smiles
    for smiles in ('CCO', 'c1ccccc1O'):
        for source in (graph(smiles), from_smiles(smiles)):
            blank = without_smiles(source)
            blank.x = blank.x.clone()
            blank.x[:, 6] = 0
            with pytest.raises(ValueError, match=(
                    r"cannot tell whether data.x and data.edge_attr are OGB "
                    r"or PyG features: read as OGB features .*; read as PyG "
                    r"features .*MoleculeHierarchy does not guess: pass "
                    r"features='ogb' or features='pyg', or pass "
                    r"data.smiles")):
                transform(blank)
            expected = transform(smiles)
            with_smiles = copy.copy(blank)
            with_smiles.smiles = smiles
            assert same_tree(transform(with_smiles), expected)
    # Given explicitly, the features are read so: the other layout does
    # not fit them better.
    blank = without_smiles(graph('CCO'))
    blank.x = blank.x.clone()
    blank.x[:, 6] = 0
    assert same_tree(MoleculeHierarchy(features='ogb')(blank),
                     transform('CCO'))


@needs_rdkit
def test_detection_names_every_reading(transform):
    source = without_smiles(graph('CCO'))
    source.x = source.x.clone()
    source.x[0, 3] = 11  # OGB: 'misc' charge; PyG: +6
    with pytest.raises(ValueError, match=(
            r"read as OGB features \(ogb.utils.smiles2graph\): x\[0, 3\] = "
            r"11 is OGB's 'misc' value .*; read as PyG features "
            r"\(torch_geometric.utils.from_smiles\), they describe a "
            r"molecule but are not its PyG features")):
        transform(source)
    with pytest.raises(ValueError, match=(
            r"data.x and data.edge_attr are neither OGB nor PyG features of "
            r"smiles 'CCO': read as OGB features .*: atom 0 of smiles 'CCO' "
            r"is C \(atomic number 6\) but x\[0, 0\] \+ 1 = 8; .*read as "
            r"PyG features .*: atom 0 of smiles 'CCO' is C \(atomic number "
            r"6\) but x\[0, 0\] = 7")):
        bad = graph('OCC')
        bad.smiles = 'CCO'
        transform(bad)


@needs_rdkit
def test_features_argument():
    for features in ('ogb', 'pyg', 'zinc'):
        assert repr(MoleculeHierarchy(features=features)) == \
            f"MoleculeHierarchy(features='{features}')"
    assert repr(MoleculeHierarchy(features='auto')) == 'MoleculeHierarchy()'
    with pytest.raises(TypeError, match="'features' must be a str, one of "
                       r"\('auto', 'ogb', 'pyg', 'zinc'\), got NoneType"):
        MoleculeHierarchy(features=None)
    with pytest.raises(ValueError, match="unknown features 'moleculenet'; "
                       "choose one of"):
        MoleculeHierarchy(features='moleculenet')


# HSA on molecules ###########################################################

C60 = ('c12c3c4c5c1c1c6c7c2c2c8c3c3c9c4c4c%10c5c5c1c1c6c6c%11c7c2c2c7c8c3c3'
       'c8c9c4c4c9c%10c5c5c1c1c6c6c%11c2c2c7c3c3c8c4c4c9c5c1c1c6c2c3c41')
CORONENE = 'c1cc2ccc3ccc4ccc5ccc6ccc1c1c2c3c4c5c61'


@needs_rdkit
def test_hsa_conv_geometry_bias_on_wide_molecules():
    r"""Families wider than ``max_branching`` (C60's ring system of 60
    atoms, coronene's of 24, chains of 20 and 19) share the far buckets of
    the geometry bias: HSAConv runs over a DataLoader of molecules, and
    equals the dense reference on the batches small enough for it."""
    from hsa_geo.functional import hierarchical_attention_matrix
    from hsa_geo.nn import HSAConv
    transform = MoleculeHierarchy()
    molecules = [transform(s) for s in [C60, 'C' * 20, CORONENE,
                                        'CCCCCCCCCCCCCCCCCCO']
                 + NCI_SMILES[:2]]
    widest = [int(torch.bincount(m.hierarchy.parent[:-1]).max())
              for m in molecules]
    assert widest[:4] == [60, 20, 24, 19]
    torch.manual_seed(0)
    conv = HSAConv(9, 4, heads=2, geometry_bias=True, max_branching=16,
                   root_weight=False).double()
    with torch.no_grad():
        conv.geometry_bias.weight.normal_()
    checked = 0
    for batch in DataLoader(molecules, batch_size=2):
        x = batch.x.double()
        out = conv(x, batch.hierarchy)
        assert torch.isfinite(out).all()
        out.square().sum().backward()
        n = x.size(0)
        if n > 50:  # the dense reference is O(N^2) Python work
            continue
        q, k, v = queries_keys_values(conv, x)
        Q = hierarchical_attention_matrix(
            q, k, batch.hierarchy, pair_bias=conv.geometry_bias(
                batch.hierarchy))
        expected = torch.einsum('hij,jhd->ihd', Q, v).reshape(n, 8)
        assert (out - expected).abs().max() <= 1e-10
        checked += 1
    assert checked == 2
    # The far buckets of the leaf level learn from the wide families.
    assert conv.geometry_bias.weight.grad[0, 16:].abs().sum() > 0


def test_a_signal_given_again_keeps_its_cluster_kinds():
    t = MoleculeHierarchy()
    once = t('c1ccccc1CC(=O)NC')
    twice = t(once)
    assert torch.equal(twice.cluster_kind, once.cluster_kind)
    assert twice.hierarchy.parent.tolist() == once.hierarchy.parent.tolist()


@pytest.mark.parametrize('smiles', ['c1ccccc1O', 'CCO', 'CC(=O)[O-].[Na+]'])
def test_pyg_graph_with_hydrogens_and_its_smiles(smiles):
    from rdkit import Chem
    from torch_geometric.utils import from_smiles
    graph = from_smiles(smiles, with_hydrogen=True)
    out = MoleculeHierarchy()(graph)
    expected = MoleculeHierarchy()(Chem.AddHs(Chem.MolFromSmiles(smiles)))
    assert out.hierarchy.parent.tolist() == \
        expected.hierarchy.parent.tolist()
    assert torch.equal(out.x, graph.x)


def test_hydrogens_in_another_atom_order_still_raise():
    from torch_geometric.utils import from_smiles
    graph = from_smiles('CCO', with_hydrogen=True)
    graph.smiles = 'OCC'  # the same 9 atoms with Hs, in another order
    with pytest.raises(ValueError, match='atomic number|bonds'):
        MoleculeHierarchy()(graph)


@pytest.mark.parametrize('attrs', [
    dict(edge_index=torch.tensor([[0, 2], [2, 0]])),
    dict(edge_attr=torch.ones(4, 3, dtype=torch.long)),
])
def test_edges_without_x_are_not_replaced_silently(attrs):
    with pytest.raises(ValueError, match="but no 'x': MoleculeHierarchy "
                       "featurizes"):
        MoleculeHierarchy()(Data(smiles='CCO', **attrs))
    out = MoleculeHierarchy()(Data(smiles='CCO', y=torch.tensor([1.])))
    assert out.edge_index.size(1) == 4 and out.x.shape == (3, 9)
