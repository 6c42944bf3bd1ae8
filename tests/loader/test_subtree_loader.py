r"""Tests of :class:`hsa_geo.loader.SubtreeLoader`: every batch is the signal
that its leaves induce (against ``NestedSignal.subgraph(n_id)``, a
plain-Python construction of the subtrees and of the induced forest, and
the dense HSA matrix), every node is in one batch per epoch, shuffling is
reproducible, and bad arguments are refused."""
from typing import Dict, List

import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Data, HeteroData

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.loader import SubtreeLoader
from hsa_geo.nn import HSAConv
from tests.helpers.layers import EXACT, SEEDS
from tests.helpers.loaders import (check_cluster_rows, random_signal,
                                   reference_conv, with_cluster_rows)
from tests.helpers.strategies import (Forest, ancestors, depth_of, fewer,
                                      forests, induced_forest)

pytestmark = pytest.mark.usefixtures('one_thread')


def expected_subtrees(f: Forest, level: int) -> Dict[int, List[int]]:
    r"""The leaves of every subtree, by the id of its root: the ancestor of
    each leaf at depth ``min(depth, level)``."""
    depth = depth_of(f.parent)
    subtrees: Dict[int, List[int]] = {}
    for leaf in range(f.num_leaves):
        path = ancestors(f.parent, leaf)  # leaf ... root
        root = path[max(0, depth[leaf] - level)]
        subtrees.setdefault(root, []).append(leaf)
    return dict(sorted(subtrees.items()))


def edge_set(data) -> set:
    return {(a, b, tuple(attr)) for (a, b), attr in zip(
        data.edge_index.t().tolist(), data.edge_attr.tolist())}


def test_example():
    #       6          level 1: subtrees 4 (leaves 0, 1) and 5 (2, 3);
    #     /   \        level 0: the whole tree; level 2: every leaf.
    #    4     5
    #   / \   / \
    #  0   1 2   3
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    data = NestedSignal.from_hierarchy(
        h, torch.randn(4, 8), edge_index=torch.tensor([[0, 1, 1, 3],
                                                       [1, 0, 2, 2]]))
    loader = SubtreeLoader(data)
    assert len(loader) == loader.num_subtrees == 2
    assert loader.subtree_roots.tolist() == [4, 5]
    assert repr(loader) == ('SubtreeLoader(2 subtrees at level 1, '
                            'batch_size=1)')
    first, second = list(loader)
    assert first.n_id.tolist() == [0, 1] and second.n_id.tolist() == [2, 3]
    # Cluster 5 is gone from the first batch; the edge 1 -> 2 leaves it.
    assert first.hierarchy.parent.tolist() == [2, 2, 3, -1]
    assert first.edge_index.tolist() == [[0, 1], [1, 0]]
    assert first.e_id.tolist() == [0, 1]
    assert second.edge_index.tolist() == [[1], [0]]
    (whole, ) = SubtreeLoader(data, level=0)
    assert whole.hierarchy.parent.tolist() == h.parent.tolist()
    assert whole.edge_index.tolist() == data.edge_index.tolist()
    leaves = SubtreeLoader(data, level=2, batch_size=3)
    assert [b.n_id.tolist() for b in leaves] == [[0, 1, 2], [3]]


@pytest.mark.parametrize('f', [
    Forest([8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, -1], 8),
    Forest([3, 3, 4, 5, 5, -1], 3),  # as many clusters as leaves
])
@pytest.mark.parametrize('level,batch_size', [(1, 1), (1, 2), (2, 2)])
def test_batches_keep_the_rows_of_their_clusters(f, level, batch_size):
    data = with_cluster_rows(random_signal(f, seed=2))
    for batch in SubtreeLoader(data, level=level, batch_size=batch_size):
        check_cluster_rows(data, batch)
        ref = data.subgraph(batch.n_id)
        assert torch.equal(batch.cluster_id, ref.cluster_id)
    data.cluster_id = torch.arange(f.num_leaves + 1)
    with pytest.raises(ValueError, match="'cluster_id' has"):
        next(iter(SubtreeLoader(data)))


@fewer(2)
@given(f=forests(max_leaves=16, max_trees=3), level=st.integers(0, 3),
       batch_size=st.integers(1, 4), family=st.booleans(), seed=SEEDS)
def test_batches_are_the_induced_signals(f, level, batch_size, family, seed):
    data = random_signal(f, seed, family)
    level = min(level, data.hierarchy.depth)
    loader = SubtreeLoader(data, level=level, batch_size=batch_size)
    subtrees = list(expected_subtrees(f, level).values())
    assert loader.num_subtrees == len(subtrees)
    assert len(loader) == -(-len(subtrees) // batch_size)
    seen = []
    for i, batch in enumerate(loader):
        # Whole subtrees, in order, each leaf list increasing.
        chosen = subtrees[i * batch_size:(i + 1) * batch_size]
        n_id = [leaf for leaves in chosen for leaf in leaves]
        assert batch.n_id.tolist() == n_id
        seen += n_id
        # The batch is the signal its leaves induce.
        ref = data.subgraph(batch.n_id)
        assert batch.hierarchy.parent.tolist() == \
            induced_forest(f, n_id)[0].parent
        assert torch.equal(batch.hierarchy.parent, ref.hierarchy.parent)
        if family:
            assert _pairs(batch.hierarchy) == _pairs(ref.hierarchy)
        else:
            assert batch.hierarchy.family_edge_index is None
        assert torch.equal(batch.x, ref.x) and torch.equal(batch.y, ref.y)
        assert torch.equal(batch.edge_index, ref.edge_index)
        assert torch.equal(batch.edge_attr, ref.edge_attr)
        assert torch.equal(data.edge_index[:, batch.e_id],
                           batch.n_id[batch.edge_index])
        assert batch.tag.tolist() == [7]
    # Every node in exactly one batch.
    assert sorted(seen) == list(range(f.num_leaves))


def _pairs(hierarchy: Hierarchy) -> set:
    r"""The family graph as a set of pairs (a tree of one leaf has no
    families, so an empty graph and none are the same)."""
    edges = hierarchy.family_edge_index
    return set() if edges is None else set(map(tuple, edges.t().tolist()))


@fewer(2)
@given(f=forests(max_leaves=12, max_trees=2), batch_size=st.integers(1, 3),
       family=st.booleans(), seed=SEEDS)
def test_hsa_on_a_batch_is_hsa_on_the_induced_forest(f, batch_size, family,
                                                     seed):
    data = random_signal(f, seed, family)
    torch.manual_seed(seed)
    conv = HSAConv(4, 3, heads=2).double()
    level = min(1, data.hierarchy.depth)
    for batch in SubtreeLoader(data, level=level, batch_size=batch_size):
        out = conv(batch.x, batch.hierarchy)
        ref = data.subgraph(batch.n_id)
        torch.testing.assert_close(out, conv(ref.x, ref.hierarchy), rtol=0,
                                   atol=EXACT)
        torch.testing.assert_close(
            out, reference_conv(conv, batch.x, batch.hierarchy), rtol=0,
            atol=EXACT)


def test_edge_features_follow_the_batch():
    f = Forest([8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, -1], 8)
    data = random_signal(f, seed=3, num_edges=30)
    torch.manual_seed(0)
    conv = HSAConv(4, 3, heads=2, edge_dim=2).double()
    total = 0
    for batch in SubtreeLoader(data, batch_size=2):
        ref = data.subgraph(batch.n_id)
        assert edge_set(batch) == edge_set(ref)
        torch.testing.assert_close(
            conv(batch.x, batch.hierarchy, batch.edge_index, batch.edge_attr),
            conv(ref.x, ref.hierarchy, ref.edge_index, ref.edge_attr),
            rtol=0, atol=EXACT)
        total += batch.num_edges
    # The edges between two batches are the ones left out.
    batch_of = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    src, dst = data.edge_index
    assert total == int((batch_of[src] == batch_of[dst]).sum())


def test_a_whole_forest_batch_is_the_signal():
    f = Forest([6, 6, 7, -1, 7, 7, 8, 8, -1], 6)
    data = random_signal(f, seed=1, family=True)
    (batch, ) = SubtreeLoader(data, level=0, batch_size=3)
    # Subtrees in the order of their roots: leaf 3, then cluster 8.
    assert batch.n_id.tolist() == [3, 0, 1, 2, 4, 5]
    ref = data.subgraph(batch.n_id)
    assert torch.equal(batch.hierarchy.parent, ref.hierarchy.parent)
    assert _pairs(batch.hierarchy) == _pairs(ref.hierarchy)
    assert batch.num_edges == data.num_edges
    assert edge_set(batch) == edge_set(ref)


def test_shuffle_is_reproducible_with_a_generator():
    f = Forest([20 + i // 2 for i in range(20)] + [30] * 10 + [-1], 20)
    data = random_signal(f)

    def epochs(seed):
        loader = SubtreeLoader(data, batch_size=3, shuffle=True,
                               generator=torch.Generator().manual_seed(seed))
        return [[b.n_id.tolist() for b in loader] for _ in range(3)]

    first, again = epochs(0), epochs(0)
    assert first == again
    unshuffled = [b.n_id.tolist() for b in SubtreeLoader(data, batch_size=3)]
    assert any(epoch != unshuffled for epoch in first)
    for epoch in first:
        leaves = [leaf for n_id in epoch for leaf in n_id]
        assert sorted(leaves) == list(range(20))
        # Pairs of sibling leaves stay together.
        for n_id in epoch:
            assert all(leaf ^ 1 in n_id for leaf in n_id)


def test_signal_without_edges_or_features():
    h = Hierarchy.from_parent([3, 3, -1, 4, -1], 3)
    data = NestedSignal.from_hierarchy(h)
    batches = list(SubtreeLoader(data, level=0))
    assert [b.n_id.tolist() for b in batches] == [[2], [0, 1]]
    assert [b.num_nodes for b in batches] == [1, 2]
    assert batches[0].hierarchy.parent.tolist() == [-1]
    assert batches[0].e_id.numel() == 0


def test_int32_edges_are_read_as_ids():
    f = Forest([8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, -1], 8)
    data = random_signal(f, seed=4)
    data.edge_index = data.edge_index.int()
    for batch in SubtreeLoader(data, batch_size=2):
        ref = data.subgraph(batch.n_id)
        assert batch.edge_index.dtype == torch.long
        assert torch.equal(batch.edge_index, ref.edge_index.long())


def test_metis_tree_of_a_graph():
    pytest.importorskip('pymetis')
    from torch_geometric.utils import barabasi_albert_graph

    from hsa_geo.transforms import GraphHierarchy
    edge_index = barabasi_albert_graph(200, 3)
    data = GraphHierarchy(branching=8)(
        Data(x=torch.randn(200, 4), edge_index=edge_index))
    loader = SubtreeLoader(data, batch_size=2)
    n_id = torch.cat([batch.n_id for batch in loader])
    assert torch.equal(n_id.sort().values, torch.arange(200))
    batch = next(iter(loader))
    assert torch.equal(batch.hierarchy.parent,
                       data.subgraph(batch.n_id).hierarchy.parent)


def test_bad_data():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match='NestedSignal.from_data'):
        SubtreeLoader(Data(x=x))
    with pytest.raises(TypeError, match='NestedSignal, got list'):
        SubtreeLoader([x])
    with pytest.raises(TypeError, match='to_homogeneous'):
        SubtreeLoader(HeteroData())
    with pytest.raises(ValueError, match='stores no hierarchy'):
        SubtreeLoader(NestedSignal(x=x))
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    data = NestedSignal.from_hierarchy(h, x)
    # PyG's own subgraph drops nodes without the tree.
    with pytest.raises(ValueError, match='NestedSignal.subgraph'):
        SubtreeLoader(Data.subgraph(data, torch.tensor([0, 1])))
    data.edge_index = torch.tensor([[0], [4]])
    with pytest.raises(ValueError, match=r'edge_index\[1, 0\] = 4'):
        SubtreeLoader(data)
    data.edge_index = torch.tensor([[0.], [1.]])
    with pytest.raises(TypeError, match='integer dtype'):
        SubtreeLoader(data)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(level=-1), ValueError, "'level' must be an int in"),
    (dict(level=3), ValueError, 'has depth 2'),
    (dict(level=1.0), TypeError, "'level' must be an int"),
    (dict(batch_size=0), ValueError, "'batch_size' must be an int in"),
    (dict(batch_size=True), TypeError, "'batch_size' must be an int"),
    (dict(shuffle=1), TypeError, "'shuffle' must be True or False"),
    (dict(collate_fn=list), TypeError, 'makes its own batches'),
])
def test_bad_arguments(kwargs, error, match):
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    data = NestedSignal.from_hierarchy(h, torch.randn(4, 2))
    with pytest.raises(error, match=match):
        SubtreeLoader(data, **kwargs)


# Inputs the loader refuses #################################################


def _small_signal():
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    return NestedSignal.from_hierarchy(
        h, torch.randn(4, 8),
        edge_index=torch.tensor([[0, 1, 1, 3, 2], [1, 0, 2, 2, 3]]),
        edge_attr=torch.randn(5, 3))


@pytest.mark.parametrize('remove_edge_index', [True, False])
def test_a_sparse_adjacency_is_refused(remove_edge_index):
    """Batches take their edges from edge_index: adj_t would be copied
    whole into every batch, with none of its edges."""
    import warnings

    import torch_geometric.transforms as T
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        data = T.ToSparseTensor(remove_edge_index=remove_edge_index)(
            _small_signal())
    with pytest.raises(ValueError, match="'adj_t' is a sparse adjacency"):
        SubtreeLoader(data)
    batches = list(SubtreeLoader(_small_signal()))
    assert [b.edge_index.size(1) for b in batches] == [2, 2]


def test_a_batch_of_signals_is_refused():
    """Its per-signal attributes (ptr, y) would be copied whole into every
    mini-batch."""
    from tests.helpers.loaders import batch_of_signals
    batch = batch_of_signals(3)
    with pytest.raises(ValueError, match='got a Batch of 3 signals'):
        SubtreeLoader(batch, level=0)


def test_edge_lists_follow_their_edges():
    """On a graph with as many edges as nodes, a list of one entry per
    edge is selected with the kept edges (PyG's is_node_attr would take it
    for a node attribute: one kind per node, for edges that were cut)."""
    src = torch.arange(16)
    ring = torch.stack([src, (src + 1) % 16])
    kinds = [f'bond {i}' for i in range(16)]
    h = Hierarchy.from_parent(torch.tensor([17, 16] * 8 + [-1, -1]), 16)
    signal = NestedSignal.from_data(Data(
        x=torch.randn(16, 2), edge_index=ring, edge_kind=kinds), h)
    for batch in SubtreeLoader(signal, batch_size=1):
        assert len(batch.edge_kind) == batch.edge_index.size(1)
        assert batch.edge_kind == [kinds[i] for i in batch.e_id.tolist()]


@pytest.mark.parametrize('kwargs', [
    dict(batch_size=2, sampler=[0, 0]),
    dict(batch_sampler=[[1, 0, 1]]),
    dict(batch_size=2, sampler=torch.utils.data.WeightedRandomSampler(
        [1.0, 1.0], 2, generator=torch.Generator().manual_seed(0))),
])
def test_a_subtree_drawn_twice_into_a_batch_is_refused(kwargs):
    """Its leaves would sit twice in one tree, with every edge twice: no
    signal that leaves induce (NestedSignal.subgraph refuses them)."""
    loader = SubtreeLoader(_small_signal(), level=1, **kwargs)
    with pytest.raises(ValueError, match='subtree [01] into one batch more '
                       'than once.*without replacement'):
        next(iter(loader))
    batch_sampler = [[1, 0]]
    (batch, ) = SubtreeLoader(_small_signal(), batch_sampler=batch_sampler)
    assert batch.n_id.tolist() == [2, 3, 0, 1]
