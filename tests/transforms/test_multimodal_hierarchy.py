r"""MultiModalHierarchy: per-modality subtrees joined under one root (or a
given upper tree) into a HeteroNestedSignal, edges between modalities
relabelled, batched by PyG's DataLoader."""
import warnings

import pytest
import torch
from torch_geometric.data import Data, HeteroData
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.data import HeteroNestedSignal, NestedSignal, induced_hierarchy
from hsa_geo.transforms import (DocumentHierarchy, GraphHierarchy,
                                GridHierarchy, MultiModalHierarchy,
                                SequenceHierarchy, Vocabulary)

TEXT = 'Rain falls in Spain. It stays mainly on the plain.'


def news(seed: int = 0, body: str = TEXT) -> HeteroData:
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data['headline'].text = 'Rain in Spain.'
    data['body'].text = body
    data['image'].image = torch.rand(3, 24, 32, generator=g)
    data.y = torch.tensor([seed])
    return data


def news_builders():
    vocab = Vocabulary.build([TEXT, 'Rain in Spain.'])
    return {'headline': DocumentHierarchy(vocab=vocab),
            'body': DocumentHierarchy(vocab=vocab),
            'image': GridHierarchy(patch_size=8)}


def shifted_parent(signal: NestedSignal, leaf_off: int, total: int,
                   cluster_off: int) -> torch.Tensor:
    r"""A modality's parents in the joined numbering."""
    parent, n = signal.hierarchy.parent, signal.hierarchy.num_leaves
    out = torch.where(parent >= n, parent - n + total + cluster_off,
                      parent + leaf_off)
    return torch.where(parent < 0, parent, out)


def test_subtrees_are_the_builders_trees_under_one_root():
    builders = news_builders()
    data = news()
    out = MultiModalHierarchy(builders)(data)
    assert isinstance(out, HeteroNestedSignal)
    assert out.leaf_types == ['headline', 'body', 'image']
    h = out.hierarchy
    parent = h.parent
    root = h.num_nodes - 1
    assert int(parent[root]) == -1 and h.num_trees == 1
    total, leaf_off, cluster_off = h.num_leaves, 0, 0
    for t, builder in builders.items():
        alone = builder(Data(**data[t].to_dict()))
        rows = out.leaf_slices[t]
        assert rows.start == leaf_off
        assert torch.equal(out[t].x, alone.x)
        n, m = alone.hierarchy.num_leaves, alone.hierarchy.num_clusters
        expected = shifted_parent(alone, leaf_off, total, cluster_off)
        expected[expected < 0] = root  # each modality's root joins the root
        got = torch.cat([parent[leaf_off:leaf_off + n],
                         parent[total + cluster_off:
                                total + cluster_off + m]])
        assert torch.equal(got, expected)
        leaf_off, cluster_off = leaf_off + n, cluster_off + m
    assert torch.equal(out.y, data.y)
    assert out['headline'].text == 'Rain in Spain.'
    assert 'patch_index' in out['image'] and 'cluster_coord' not in \
        out['image']


def test_groups_make_the_upper_tree():
    out = MultiModalHierarchy(news_builders(),
                              groups={'headline': 'text', 'body': 'text'}
                              )(news())
    h = out.hierarchy
    root, text = h.num_nodes - 1, h.num_nodes - 2
    assert int(h.parent[text]) == root
    assert int(h.parent[root]) == -1
    children = (h.parent == text).nonzero().view(-1)
    assert children.numel() == 2  # the headline's root and the body's
    leaves = h.leaf_count[text]
    slices = out.leaf_slices
    assert int(leaves) == slices['body'].stop  # both texts, no patch
    image_root = int(h.parent[slices['image'].start])
    while int(h.parent[image_root]) != root:
        image_root = int(h.parent[image_root])
    assert int(h.parent[image_root]) == root


def test_deeper_groups_and_their_checks():
    builders = news_builders()
    groups = {'headline': 'title', 'title': 'text', 'body': 'text'}
    h = MultiModalHierarchy(builders, groups)(news()).hierarchy
    assert h.depth >= 4
    with pytest.raises(ValueError, match='cycle'):
        MultiModalHierarchy(builders, {'headline': 'a', 'a': 'b', 'b': 'a'})
    with pytest.raises(ValueError, match='is a modality'):
        MultiModalHierarchy(builders, {'headline': 'image'})
    with pytest.raises(ValueError, match="'headlin', which is neither"):
        MultiModalHierarchy(builders, {'headlin': 'text'})(news())
    # with one builder for every node type, checked against the data
    with pytest.raises(ValueError, match='is a modality'):
        MultiModalHierarchy(GridHierarchy(8), {'a': 'b'})(grids('a', 'b'))
    with pytest.raises(ValueError, match="'cluster' is the node type"):
        MultiModalHierarchy({'cluster': GridHierarchy(8)})


def grids(*types: str) -> HeteroData:
    data = HeteroData()
    for t in types:
        data[t].image = torch.rand(1, 16, 16)
    return data


def test_single_leaves_and_forests_stay_one_subtree_each():
    def forest(data):  # two trees of two leaves each
        h = Hierarchy.from_parent([4, 4, 5, 5, -1, -1], 4)
        return NestedSignal.from_hierarchy(h, data.x)

    data = HeteroData()
    data['token'].x = torch.randn(1, 3)
    data['pair'].x = torch.randn(4, 2)
    out = MultiModalHierarchy({'token': SequenceHierarchy(2),
                               'pair': forest})(data)
    h = out.hierarchy
    root = h.num_nodes - 1
    assert h.num_trees == 1
    assert int(h.parent[0]) == root  # the single token under the root
    over = int(h.parent[h.parent[1]])  # above the first pair's tree
    assert over != root and int(h.parent[over]) == root
    assert int(h.leaf_count[over]) == 4


def test_a_heterogeneous_graph_keeps_its_edges_relabelled():
    from torch_geometric.datasets import FakeHeteroDataset
    graph = FakeHeteroDataset(num_graphs=1, num_node_types=3,
                              num_edge_types=6, avg_num_nodes=40)[0]
    out = MultiModalHierarchy(GraphHierarchy(branching=4,
                                             tree_order=True))(graph)
    assert out.leaf_types == graph.node_types
    assert out.hierarchy.num_trees == 1
    for edge_type in graph.edge_types:
        src, _, dst = edge_type
        old, new = graph[edge_type].edge_index, out[edge_type].edge_index
        assert torch.equal(out[src].x[new[0]], graph[src].x[old[0]])
        assert torch.equal(out[dst].x[new[1]], graph[dst].x[old[1]])
    # node-level attributes follow their nodes
    assert torch.equal(out['v0'].y, graph['v0'].y[out['v0'].n_id])


def test_deterministic_and_batched_by_the_data_loader():
    transform = MultiModalHierarchy(news_builders())
    a, b = transform(news(0)), transform(news(0))
    assert torch.equal(a.hierarchy.parent, b.hierarchy.parent)
    assert torch.equal(a['image'].x, b['image'].x)
    # three signals of different sizes
    signals = [transform(news(s, ' '.join([TEXT] * (s + 1))))
               for s in range(3)]
    batch = next(iter(DataLoader(signals, batch_size=3)))
    h = batch.hierarchy
    assert h.num_trees == 3
    q = batch.cat_leaves({t: torch.randn(batch[t].num_nodes, 2,
                                         dtype=torch.float64)
                          for t in batch.leaf_types})
    out = hierarchical_attention(q, q, q, h)
    for i, signal in enumerate(signals):
        # the rows of signal i in the batch's global order
        rows = torch.cat([
            torch.arange(batch.leaf_slices[t].start, batch.leaf_slices[t]
                         .stop)[batch[t].batch == i]
            for t in batch.leaf_types])
        # against the signal's own tree, built alone
        dense = hierarchical_attention_matrix(q[rows], q[rows],
                                              signal.hierarchy)
        assert torch.allclose(out[rows], dense @ q[rows], atol=1e-12)


def test_bad_input_is_refused_with_the_modality_named():
    builders = news_builders()
    transform = MultiModalHierarchy(builders)
    with pytest.raises(TypeError, match='expects a HeteroData'):
        transform(NestedSignal(x=torch.randn(2, 2)))
    data = news()
    del data['body']
    with pytest.raises(ValueError, match="no node store 'body'"):
        transform(data)
    data = news()
    data['audio'].x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="'audio' has no builder"):
        transform(data)
    data = news()
    data['body'].text = ''
    with pytest.raises(ValueError, match="modality 'body'"):
        transform(data)
    with pytest.raises(TypeError, match='must be a builder'):
        MultiModalHierarchy({'body': 3})
    with pytest.raises(ValueError, match='empty'):
        MultiModalHierarchy({})


def test_family_graphs_of_builders_are_kept():
    from torch_geometric.datasets import KarateClub
    karate = KarateClub()[0]
    data = HeteroData()
    data['member'].x = karate.x
    data['member', 'knows', 'member'].edge_index = karate.edge_index
    data['note'].x = torch.randn(10, 3)
    builders = {'member': GraphHierarchy(branching=4, family_graph=True),
                'note': SequenceHierarchy(4)}
    out = MultiModalHierarchy(builders)(data)
    h = out.hierarchy
    assert h.family_edge_index is not None
    q = torch.randn(h.num_leaves, 1, 2, dtype=torch.float64)
    for t, builder in builders.items():
        alone = builder(Data(**data[t].to_dict(), edge_index=data[
            t, 'knows', t].edge_index if t == 'member' else None))
        rows = torch.arange(out.leaf_slices[t].start,
                            out.leaf_slices[t].stop)
        part = induced_hierarchy(h, rows)
        assert torch.allclose(
            hierarchical_attention_matrix(q[rows], q[rows], part),
            hierarchical_attention_matrix(q[rows], q[rows],
                                          alone.hierarchy))
    # the root's family (members, notes) is dense: both see each other
    dense = hierarchical_attention_matrix(q, q, h)
    assert (dense[:34, 34:] > 0).all() and (dense[34:, :34] > 0).all()


def test_lost_nodes_are_refused():
    graph = HeteroData()
    graph['a'].x = torch.randn(3, 2)
    graph['a', 'to', 'a'].edge_index = torch.tensor([[0, 1], [1, 2]])

    def drops_nodes(data):
        h = Hierarchy.from_parent([3, 3, 3, -1], 3)
        return NestedSignal.from_hierarchy(h, data.x)

    with pytest.raises(ValueError, match="dropped the node attribute"):
        MultiModalHierarchy({'a': drops_nodes})(graph)
    del graph['a', 'to', 'a']  # without edges to relabel, that is fine
    out = MultiModalHierarchy({'a': drops_nodes})(graph)
    assert torch.equal(out['a'].x, graph['a'].x)
    data = news()
    data['image', 'shows', 'body'].edge_index = torch.tensor([[0], [0]])
    with pytest.raises(ValueError, match="its input has no nodes"):
        MultiModalHierarchy(news_builders())(data)


def test_built_edges_are_stored_where_the_input_had_none():
    pytest.importorskip('rdkit')
    from hsa_geo.transforms import MoleculeHierarchy
    data = HeteroData()
    data['atom'].smiles = 'c1ccccc1O'
    out = MultiModalHierarchy({'atom': MoleculeHierarchy()})(data)
    assert out['atom'].x.size(0) == 7
    assert out['atom', 'to', 'atom'].edge_index.size(1) == 14
    assert out['atom', 'to', 'atom'].edge_attr.size(0) == 14


def test_as_a_pre_transform_saved_and_loaded_back(tmp_path):
    from tests.helpers.pre_transform_dataset import PreTransformDataset
    transform = MultiModalHierarchy(news_builders(), {'body': 'text'})
    items = [news(1), news(2, 'Rain in Spain.')]  # two trees of two sizes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        dataset = PreTransformDataset(str(tmp_path), lambda: items,
                                      transform)
    # loaded with weights_only=True, not by the unsafe fallback
    assert not [w for w in caught if 'Weights only' in str(w.message)]
    for item, stored in zip(items, dataset):
        expected = transform(item)
        assert isinstance(stored, HeteroNestedSignal)
        assert torch.equal(stored.hierarchy.parent,
                           expected.hierarchy.parent)
        assert torch.equal(stored['image'].x, expected['image'].x)
    assert 'MultiModalHierarchy' in repr(transform)


def test_edges_into_an_image_follow_its_patches_into_z_order():
    data = HeteroData()
    data['word'].x = torch.randn(2, 3)
    data['image'].image = torch.arange(16.).view(1, 4, 4)
    data['image'].num_nodes = 16  # patches in row-major order
    data['word', 'sees', 'image'].edge_index = torch.tensor([[0, 1],
                                                             [4, 9]])
    out = MultiModalHierarchy({'word': SequenceHierarchy(2),
                               'image': GridHierarchy(1)})(data)
    seen = out['word', 'sees', 'image'].edge_index[1]
    assert out['image'].patch_index[seen].tolist() == [4, 9]
    assert out['image'].x[seen].view(-1).tolist() == [4.0, 9.0]


def test_builders_that_lose_or_repeat_nodes_cannot_carry_edges():
    def repeats_a_node(data):  # 3 nodes in, 4 leaves out
        out = Data(x=data.x[[0, 1, 2, 2]],
                   source_node=data.source_node[[0, 1, 2, 2]])
        h = Hierarchy.from_parent([4, 4, 4, 4, -1], 4)
        return NestedSignal.from_data(out, h)

    data = HeteroData()
    data['a'].x = torch.randn(3, 2)
    data['a', 'to', 'a'].edge_index = torch.tensor([[0], [1]])
    with pytest.raises(ValueError, match='made 4 leaves from 3 input'):
        MultiModalHierarchy({'a': repeats_a_node})(data)


def test_leaf_attributes_edge_attributes_and_reserved_names():
    data = HeteroData()
    data['a'].x = torch.randn(5, 2)
    data['a'].knowledge = torch.arange(5)  # per leaf, 'edge' in its name
    data['a', 'to', 'a'].edge_index = torch.tensor([[0, 1], [1, 2]])
    data['a', 'to', 'a'].edge_weight = torch.tensor([0.5, 2.0])
    out = MultiModalHierarchy(SequenceHierarchy(2))(data)
    assert torch.equal(out['a'].knowledge, torch.arange(5))
    assert torch.equal(out['a', 'to', 'a'].edge_weight,
                       torch.tensor([0.5, 2.0]))
    for edge_type in (('a', 'child_of', 'a'), ('a', 'sibling_of', 'a')):
        bad = HeteroData()
        bad['a'].x = torch.randn(3, 2)
        bad[edge_type].edge_index = torch.tensor([[0], [1]])
        with pytest.raises(ValueError, match='stores the tree'):
            MultiModalHierarchy(SequenceHierarchy(2))(bad)
    bad = HeteroData()
    bad['cluster'].x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="node type of the clusters"):
        MultiModalHierarchy(SequenceHierarchy(2))(bad)


def test_repr_tells_the_builders_vocabularies_apart():
    first = Vocabulary.build(['the cat sat'])
    second = Vocabulary.build(['dog bird fish'])
    assert len(first) == len(second)
    a = MultiModalHierarchy({'text': DocumentHierarchy(vocab=first)})
    b = MultiModalHierarchy({'text': DocumentHierarchy(vocab=second)})
    assert repr(a) != repr(b)


def _atoms(smiles: str) -> Data:
    pytest.importorskip('rdkit')
    from torch_geometric.utils import from_smiles
    graph = from_smiles(smiles)
    return Data(x=graph.x, edge_index=graph.edge_index,
                edge_attr=graph.edge_attr)


def test_bond_features_reach_the_builder():
    from hsa_geo.transforms import MoleculeHierarchy
    mol = _atoms('CC(=O)Oc1ccccc1C(=O)O')  # aspirin
    data = HeteroData()
    data['atom'].x = mol.x
    data['atom', 'bond', 'atom'].edge_index = mol.edge_index
    data['atom', 'bond', 'atom'].edge_attr = mol.edge_attr
    out = MultiModalHierarchy({'atom': MoleculeHierarchy()})(data)
    alone = MoleculeHierarchy()(mol)
    n = alone.num_nodes
    assert out['atom'].x.size(0) == n
    assert torch.equal(out['atom'].x, alone.x)
    assert out.hierarchy.parent[:n].tolist() == \
        alone.hierarchy.parent[:n].tolist()
    assert torch.equal(out['atom', 'bond', 'atom'].edge_attr, mol.edge_attr)


def test_edge_attributes_of_several_edge_types_are_concatenated():
    mol = _atoms('CC(=O)O')
    double = mol.edge_attr[:, 0] == 2  # PyG's bond type DOUBLE
    seen = []

    def builder(data):
        seen.append(data)
        return SequenceHierarchy(2)(data)

    data = HeteroData()
    data['atom'].x = mol.x
    for name, keep in (('single', ~double), ('double', double)):
        data['atom', name, 'atom'].edge_index = mol.edge_index[:, keep]
        data['atom', name, 'atom'].edge_attr = mol.edge_attr[keep]
    MultiModalHierarchy({'atom': builder})(data)
    given = seen[0]
    assert given.edge_attr.size(0) == given.edge_index.size(1)
    # every edge with its own features
    features = {tuple(e): a.tolist() for e, a in zip(
        mol.edge_index.t().tolist(), mol.edge_attr)}
    assert [features[tuple(e)] for e in given.edge_index.t().tolist()] == \
        given.edge_attr.tolist()

    del data['atom', 'double', 'atom'].edge_attr
    with pytest.raises(ValueError, match=r"modality 'atom': edge type "
                       r"\('atom', 'single', 'atom'\) has edge_attr but "
                       r"\('atom', 'double', 'atom'\) has none"):
        MultiModalHierarchy({'atom': builder})(data)
    data['atom', 'double', 'atom'].edge_attr = mol.edge_attr[double][:, :2]
    with pytest.raises(ValueError, match=r"modality 'atom': the edge_attr "
                       r"of its edge types do not concatenate"):
        MultiModalHierarchy({'atom': builder})(data)


def test_a_grid_with_as_many_edges_as_patches():
    """The node guard that MultiModalHierarchy adds is a node attribute,
    however many edges the modality has."""
    from hsa_geo.transforms import GridHierarchy
    rows, cols = 2, 3
    ei = torch.stack([torch.arange(6), (torch.arange(6) + 1) % 6])
    d = HeteroData()
    d['patch'].x = torch.arange(6).float().view(-1, 1)
    d['patch'].grid_size = (rows, cols)
    d['patch', 'next', 'patch'].edge_index = ei
    out = MultiModalHierarchy({'patch': GridHierarchy()})(d)
    x = out['patch'].x.view(-1).long()  # the row-major id of every leaf
    assert torch.equal(x[out['patch', 'next', 'patch'].edge_index], ei)
    assert torch.equal(x, out['patch'].patch_index)


def test_edge_types_without_edge_index_are_refused():
    import torch_geometric.transforms as T
    d = HeteroData()
    d['a'].x = torch.randn(8, 2)
    d['a', 'r', 'a'].edge_index = torch.randint(0, 8, (2, 10))
    with pytest.raises(ValueError, match="has no 'edge_index' \\(it has "
                       "'adj_t'\\)"):
        MultiModalHierarchy(GraphHierarchy(branching=3))(
            T.ToSparseTensor()(d))
