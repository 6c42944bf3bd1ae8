r"""Tests of :class:`hsa_geo.transforms.tree_order.TreeOrder`: the order is
the depth-first order of the tree (checked against a plain-Python walk on
random forests); HSA on the reordered signal is HSA on the original with
rows permuted (:class:`hsa_geo.nn.HSAConv` with edge features and the dense
reference, float64, with and without family graphs); node and edge
attributes follow their nodes and edges; ``n_id`` maps back; the transform
is idempotent; balanced trees get the fused leaf layout;
:class:`~hsa_geo.transforms.GraphHierarchy` applies it with
``tree_order=True``; errors for bad input."""
import importlib.util
from typing import List

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Batch, Data

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention_matrix
from hsa_geo.nn import HSAConv
from hsa_geo.transforms import GraphHierarchy, TreeOrder
from tests.helpers.strategies import children_of, forests

pytestmark = pytest.mark.usefixtures('one_thread')

HAVE_METIS = importlib.util.find_spec('pymetis') is not None


def dfs_leaves(parent: List[int], n: int) -> List[int]:
    r"""The leaves in depth-first order: roots and children by id."""
    kids = children_of(parent)
    order: List[int] = []

    def visit(node):
        if node < n:
            order.append(node)
        for child in sorted(kids.get(node, [])):
            visit(child)

    for root in sorted(i for i, p in enumerate(parent) if p < 0):
        visit(root)
    return order


def random_signal(forest, seed: int, family: bool) -> NestedSignal:
    r"""A signal on :obj:`forest` with features, random leaf edges with
    features, a per-edge and a per-node attribute, and optionally a random
    family graph."""
    g = torch.Generator().manual_seed(seed)
    n = forest.num_leaves
    hierarchy = Hierarchy.from_parent(forest.parent, n)
    if family:
        pairs = hierarchy.sibling_pairs
        pairs = pairs[:, pairs[0] != pairs[1]]
        keep = torch.rand(pairs.size(1), generator=g) < 0.6
        hierarchy = Hierarchy.from_parent(forest.parent, n, pairs[:, keep])
    e = 3 * n
    edge_index = torch.randint(n, (2, e), generator=g)
    return NestedSignal.from_data(
        Data(x=torch.randn(n, 5, generator=g, dtype=torch.float64),
             edge_index=edge_index,
             edge_attr=torch.randn(e, 2, generator=g, dtype=torch.float64),
             edge_id=torch.arange(e), node_label=torch.arange(n) * 10,
             y=torch.tensor([1.5])), hierarchy)


@given(forest=forests(max_leaves=16), seed=st.integers(0, 2**16),
       family=st.booleans())
def test_hsa_equals_the_permuted_original(forest, seed, family):
    data = random_signal(forest, seed, family)
    out = TreeOrder()(data)
    perm = out.n_id
    n = forest.num_leaves
    assert perm.tolist() == dfs_leaves(forest.parent, n)
    assert sorted(perm.tolist()) == list(range(n))

    # Node attributes follow the nodes; the graph attribute stays.
    assert torch.equal(out.x, data.x[perm])
    assert torch.equal(out.node_label, data.node_label[perm])
    assert torch.equal(out.y, data.y)
    # Every edge, with its attributes, relabelled: old (u, v) -> new ids.
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    assert torch.equal(out.edge_index, inv[data.edge_index[:, out.edge_id]])
    assert torch.equal(out.edge_id, torch.arange(data.edge_index.size(1)))
    assert torch.equal(out.edge_attr, data.edge_attr)

    # The same tree, leaves relabelled: clusters and family graph kept.
    h, h0 = out.hierarchy, data.hierarchy
    assert h.num_clusters == h0.num_clusters
    assert torch.equal(h.parent[:n], h0.parent[perm])
    assert torch.equal(h.parent[n:], h0.parent[n:])
    assert (h.family_edge_index is None) == (h0.family_edge_index is None)

    # The dense reference: Q' = Q[perm][:, perm].
    q = torch.randn(n, 2, 3, dtype=torch.float64)
    k = torch.randn(n, 2, 3, dtype=torch.float64)
    ref = hierarchical_attention_matrix(q, k, h0)
    got = hierarchical_attention_matrix(q[perm], k[perm], h)
    torch.testing.assert_close(got, ref[:, perm][:, :, perm])

    # The layer, edge features included.
    torch.manual_seed(seed)
    conv = HSAConv(5, 3, heads=2, edge_dim=2).double()
    y0 = conv(data.x, h0, data.edge_index, data.edge_attr)
    y = conv(out.x, h, out.edge_index, out.edge_attr)
    torch.testing.assert_close(y, y0[perm])

    # Predictions map back with n_id.
    back = torch.empty_like(y)
    back[out.n_id] = y
    torch.testing.assert_close(back, y0)


@given(forest=forests(max_leaves=16), seed=st.integers(0, 2**16))
def test_idempotent(forest, seed):
    once = TreeOrder()(random_signal(forest, seed, True))
    twice = TreeOrder()(once)
    assert torch.equal(twice.n_id, once.n_id)
    assert torch.equal(twice.x, once.x)
    assert torch.equal(twice.edge_index, once.edge_index)
    assert torch.equal(twice.hierarchy.parent, once.hierarchy.parent)
    # On a signal without n_id, the identity is stored.
    plain = once.clone()
    del plain.n_id
    assert torch.equal(TreeOrder()(plain).n_id,
                       torch.arange(forest.num_leaves))


def test_existing_n_id_is_composed():
    parent = [4, 5, 4, 5, 6, 6, -1]
    data = NestedSignal.from_hierarchy(Hierarchy.from_parent(parent, 4),
                                       torch.arange(4.).view(4, 1))
    data.n_id = torch.tensor([10, 11, 12, 13])  # e.g. from a loader
    out = TreeOrder()(data)
    assert out.n_id.tolist() == [10, 12, 11, 13]
    assert out.x.view(-1).tolist() == [0., 2., 1., 3.]
    assert TreeOrder(attr=None)(data).keys() == data.keys()
    assert TreeOrder(attr='perm')(data).perm.tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize('family', [False, True])
def test_balanced_tree_gets_the_fused_leaf_layout(family):
    n, b = 64, 4  # 16 families of 4 leaves, 4 clusters, a root
    parent = torch.empty(n + 21, dtype=torch.long)
    parent[torch.randperm(n, generator=torch.Generator().manual_seed(0))] = \
        n + 5 + torch.arange(n) // b
    parent[n + 5:] = n + 1 + torch.arange(16) // b
    parent[n + 1:n + 5] = n
    parent[n] = -1
    h = Hierarchy.from_parent(parent, n)
    if family:
        pairs = h.sibling_pairs
        h = Hierarchy.from_parent(parent, n, pairs[:, pairs[0] != pairs[1]])
    data = NestedSignal.from_hierarchy(h, torch.randn(n, 4,
                                                      dtype=torch.float64))
    assert data.hierarchy.layout.leaf_blocks is None
    out = TreeOrder()(data)
    blocks = out.hierarchy.layout.leaf_blocks
    assert blocks is not None and blocks.width == b
    conv = HSAConv(4, 2, heads=2).double()
    torch.testing.assert_close(conv(out.x, out.hierarchy),
                               conv(data.x, data.hierarchy)[out.n_id])


@pytest.mark.skipif(not HAVE_METIS, reason='pymetis missing')
def test_graph_hierarchy_option():
    g = torch.Generator().manual_seed(1)
    n = 256  # 16 x 16: METIS fills every family
    edge_index = torch.randint(n, (2, 1500), generator=g)
    data = Data(x=torch.randn(n, 4, dtype=torch.float64),
                edge_index=edge_index)
    plain = GraphHierarchy(branching=16, family_graph=True)(data)
    ordered = GraphHierarchy(branching=16, family_graph=True,
                             tree_order=True)(data)
    assert 'n_id' not in plain
    # Without the family graph every family is a block of the order; with
    # it (under half of the pairs kept) the families run on the pair list.
    assert GraphHierarchy(branching=16, tree_order=True)(
        data).hierarchy.layout.leaf_blocks is not None
    assert ordered.hierarchy.layout.leaf_blocks is None
    expected = TreeOrder()(plain)
    assert torch.equal(ordered.n_id, expected.n_id)
    assert torch.equal(ordered.x, data.x[ordered.n_id])
    assert torch.equal(ordered.hierarchy.family_edge_index,
                       expected.hierarchy.family_edge_index)
    conv = HSAConv(4, 2, heads=2).double()
    torch.testing.assert_close(conv(ordered.x, ordered.hierarchy),
                               conv(plain.x, plain.hierarchy)[ordered.n_id])
    assert repr(GraphHierarchy(tree_order=True)).endswith(
        'tree_order=True)')
    with pytest.raises(TypeError, match='tree_order'):
        GraphHierarchy(tree_order=1)


@given(fs=st.lists(forests(max_leaves=10), min_size=1, max_size=3),
       seed=st.integers(0, 2**16), attr=st.sampled_from(['n_id', None]))
def test_a_batch_is_ordered_signal_by_signal(fs, seed, attr):
    r"""As ordering every signal before batching: ``attr`` holds node ids
    within each signal, and the batch separates again."""
    signals = [random_signal(f, seed + i, i % 2 == 1)
               for i, f in enumerate(fs)]
    signals[0].cluster_id = torch.arange(signals[0].num_clusters)
    for s in signals[1:]:
        s.cluster_id = torch.arange(s.num_clusters) + 100
    transform = TreeOrder(attr)
    expected = [transform(s) for s in signals]
    out = transform(Batch.from_data_list(signals))
    assert isinstance(out, Batch)
    reference = Batch.from_data_list(expected)
    assert set(out.keys()) == set(reference.keys())
    for key in reference.keys():
        assert torch.equal(out[key], reference[key]), key
    for got, exp in zip(out.to_data_list(), expected):
        assert torch.equal(got.hierarchy.parent, exp.hierarchy.parent)
        if attr is not None:
            assert torch.equal(got.n_id, exp.n_id)


def test_errors():
    with pytest.raises(TypeError, match='NestedSignal'):
        TreeOrder()(Data(x=torch.randn(3, 1)))
    with pytest.raises(TypeError, match="'attr'"):
        TreeOrder(attr=3)
    with pytest.raises(ValueError, match="'attr'"):
        TreeOrder(attr='not a name')
    data = NestedSignal.from_hierarchy(
        Hierarchy.from_parent([3, 3, 3, -1], 3), torch.randn(3, 1))
    data.n_id = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="'n_id' is already"):
        TreeOrder()(data)
    with pytest.raises(ValueError, match='hierarchy'):
        TreeOrder()(NestedSignal(x=torch.randn(3, 1)))
    assert repr(TreeOrder()) == "TreeOrder(attr='n_id')"


def test_a_neighbour_loader_batch_is_refused():
    """Its seeds are its first batch_size rows: ordered, out[:batch_size]
    would read other nodes."""
    from hsa_geo.loader import HierarchyNeighborLoader
    from tests.helpers.loaders import FirstNeighbors
    g = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, 40, (2, 120), generator=g)
    signal = GraphHierarchy(branching=4)(Data(
        x=torch.randn(40, 2, generator=g), edge_index=edge_index))
    loader = HierarchyNeighborLoader(
        signal, [2, 2], input_nodes=torch.tensor([3, 17, 25, 31]),
        batch_size=4, neighbor_sampler=FirstNeighbors(edge_index, 40, [2, 2]),
        transform=TreeOrder())
    with pytest.raises(ValueError, match="has 'batch_size' \\(4\\): it is a "
                       "mini-batch of a neighbour loader"):
        next(iter(loader))
    # the way the message gives: the seeds where perm < batch_size
    loader.signal_transform = None
    batch = next(iter(loader))
    del batch.batch_size
    out = TreeOrder(attr='perm')(batch)
    seeds = out.n_id[(out.perm < 4).nonzero().view(-1)]
    assert sorted(seeds.tolist()) == [3, 17, 25, 31]


# Attributes that PyG tells apart by name #################################


def _ring(n=12, **attrs):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return Data(x=torch.randn(n, 3), edge_index=torch.stack(
        [perm, perm.roll(1)]), **attrs)


def test_attributes_of_nodes_or_edges_are_refused():
    """With as many edges as nodes, 'bond' could be either: permuted with
    the nodes, an edge feature would land on other edges."""
    with pytest.raises(ValueError, match="'bond' has one entry per node "
                       "and one per edge"):
        GraphHierarchy(branching=3, tree_order=True)(
            _ring(bond=torch.arange(12)))
    d = _ring(edge_bond=torch.arange(12), pos=torch.arange(12.))
    out = GraphHierarchy(branching=3, tree_order=True)(d)
    assert torch.equal(out.edge_bond, d.edge_bond)
    assert torch.equal(out.pos, d.pos[out.n_id])
    assert torch.equal(out.n_id[out.edge_index], d.edge_index)
    # a list of one entry per edge stays with its edge, as edge tensors do
    # (PyG's is_node_attr goes by the length of a list alone)
    with pytest.raises(ValueError, match="'bond_index' has one entry per "
                       "node and one per edge"):  # 1-D: no list of ids
        GraphHierarchy(branching=3, tree_order=True)(
            _ring(bond_index=torch.arange(12)))
    kinds = [f'bond {i}' for i in range(12)]
    d = _ring(edge_kind=kinds, edge_bond=torch.arange(12))
    out = GraphHierarchy(branching=3, tree_order=True)(d)
    assert out.edge_kind == kinds and d.edge_kind == kinds
    assert torch.equal(out.edge_bond, d.edge_bond)


def _graph(n=30, **attrs):
    import torch_geometric.transforms as T
    g = torch.Generator().manual_seed(0)
    return T.ToUndirected()(Data(
        x=torch.randn(n, 4, generator=g),
        edge_index=torch.randint(0, n, (2, 80), generator=g), **attrs))


def test_other_lists_of_node_ids_are_relabelled():
    import torch_geometric.transforms as T
    train, _, _ = T.RandomLinkSplit(num_val=0.1, num_test=0.1)(_graph())
    out = GraphHierarchy(branching=4, tree_order=True)(train)
    assert torch.equal(out.n_id[out.edge_index], train.edge_index)
    assert torch.equal(out.n_id[out.edge_label_index],
                       train.edge_label_index)
    assert torch.equal(out.edge_label, train.edge_label)
    again = TreeOrder()(out)  # already in tree order: unchanged
    assert torch.equal(again.edge_label_index, out.edge_label_index)
    mesh = _graph(face=torch.randint(0, 30, (3, 20)))
    out = GraphHierarchy(branching=4, tree_order=True)(mesh)
    assert torch.equal(out.n_id[out.face], mesh.face)


def test_every_key_pyg_offsets_by_the_nodes_is_relabelled():
    """PyG offsets in a batch every key with 'index' in its name: 1-D
    lists, edge_index_neg, and a [k, N] list whose columns are not nodes
    keep their order and point to the same nodes."""
    g = torch.Generator().manual_seed(1)
    lists = dict(root_index=torch.tensor([5, 7]),
                 edge_index_neg=torch.randint(0, 30, (2, 9), generator=g),
                 edge_label_index=torch.randint(0, 30, (2, 30), generator=g),
                 anchor_index=torch.tensor(4))
    data = _graph(**lists)
    out = GraphHierarchy(branching=4, tree_order=True)(data)
    for key, value in lists.items():
        assert torch.equal(out.n_id[out[key]], value), key
    # in a batch, the ids within each signal
    signals = [GraphHierarchy(branching=3)(_graph(
        n=n, root_index=torch.tensor([2]),
        edge_index_neg=torch.tensor([[0], [6]]))) for n in (30, 7)]
    batch = Batch.from_data_list(signals)
    ordered = TreeOrder()(batch)
    assert torch.equal(ordered.x[ordered.root_index], batch.x[batch.root_index])
    assert torch.equal(ordered.x[ordered.edge_index_neg],
                       batch.x[batch.edge_index_neg])


def test_a_list_of_node_ids_with_one_per_node_is_refused():
    """It could be a node attribute too: permuted, or only relabelled."""
    signal = GraphHierarchy(branching=4)(_graph())
    signal.nbr_index = torch.arange(30).roll(1)
    with pytest.raises(ValueError, match="'nbr_index' holds node ids .* one "
                       "entry per node \\(30\\).*store a list as \\[1, 30\\]"):
        TreeOrder()(signal)
    signal.nbr_index = signal.nbr_index.view(1, -1)  # the message's way
    out = TreeOrder()(signal)
    assert torch.equal(out.n_id[out.nbr_index], signal.nbr_index)


def test_numpy_node_attributes_follow_their_nodes():
    """PyG's subgraph takes no numpy array: they are permuted aside."""
    names = np.array([f'v{i}' for i in range(30)])
    data = _graph(names=names, y=np.arange(60).reshape(30, 2),
                  meta=np.arange(3))
    out = GraphHierarchy(branching=4, tree_order=True)(data)
    assert out.names.tolist() == [f'v{i}' for i in out.n_id.tolist()]
    assert np.array_equal(out.y, data.y[out.n_id.numpy()])
    assert np.array_equal(out.meta, data.meta)  # not per node: kept
    assert data.names is names  # the input keeps its arrays
    data = _graph(root_index=np.array([5]))
    with pytest.raises(ValueError, match="'root_index' is a numpy array "
                       "named as a list of node ids.*torch.from_numpy"):
        GraphHierarchy(branching=4, tree_order=True)(data)


@pytest.mark.parametrize('bad', [-1, 30])
def test_an_id_that_is_no_node_is_refused(bad):
    """-1 padding would be relabelled as the last node, and PyG offsets it
    into another graph's nodes in a batch."""
    signal = GraphHierarchy(branching=4)(_graph())
    signal.nbr_index = torch.tensor([[1, bad], [0, 2]])
    with pytest.raises(ValueError, match=f"nbr_index\\[0, 1\\] = {bad} is not "
                       f"a node id \\(0..29\\): TreeOrder relabels"):
        TreeOrder()(signal)


def test_a_sparse_adjacency_is_refused():
    import torch_geometric.transforms as T
    h = Hierarchy.from_parent(torch.tensor([6, 7, 6, 7, 6, 7, 8, 8, -1]), 6)
    ei = torch.stack([torch.arange(5), torch.arange(1, 6)])
    data = T.ToSparseTensor()(Data(x=torch.randn(6, 2), edge_index=ei))
    with pytest.raises(ValueError, match="T.ToSparseTensor after TreeOrder"):
        TreeOrder()(NestedSignal.from_data(data, h))
