r"""Tests of :class:`hsa_geo.transforms.molecule_hierarchy.MoleculeHierarchy`
on real molecules that ship with RDKit (``Data/NCI/first_200.props.sdf`` and
``Data/NCI/first_5K.smi``) made into graphs with
:func:`ogb.utils.smiles2graph`: ring systems checked against an independent
graph computation (bridges), chain groups against BRICS, the rebuild from
OGB features against the SMILES route, permutation equivariance, batching,
use as a transform and a ``pre_transform``, and every error message."""
import copy
import os
import sys
from collections import defaultdict

import pytest
import torch
import torch_geometric.transforms as T
from hypothesis import given, settings, strategies as st
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.transforms.molecule_hierarchy import MoleculeHierarchy
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
def test_pyg_from_smiles_features_are_named(transform):
    from torch_geometric.utils import from_smiles
    with pytest.raises(ValueError, match=r"look like the features of "
                       r"torch_geometric.utils.from_smiles .* expects OGB"):
        transform(from_smiles('CCO'))
    benzene = from_smiles('c1ccccc1')
    del benzene.smiles
    with pytest.raises(ValueError, match=r"edge_attr holds the bond type 12 "
                       r".*OGB bond types are 0..4.*from_smiles"):
        transform(benzene)


@needs_rdkit
@given(st.lists(st.one_of(st.integers(-3, 130), st.just(None)), min_size=9,
                max_size=9), st.sampled_from(['CCO', 'c1ccccc1O']))
def test_random_features_give_a_tree_or_a_clear_error(row, smiles):
    source = without_smiles(graph(smiles))
    source.x = source.x.clone()
    for j, v in enumerate(row):
        if v is not None:
            source.x[0, j] = v
    try:
        out = MoleculeHierarchy()(source)
    except ValueError as e:
        assert 'x[' in str(e) or 'pass data.smiles' in str(e)
    else:
        assert out.hierarchy.num_leaves == source.num_nodes


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
