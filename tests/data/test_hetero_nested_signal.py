r"""HeteroNestedSignal: one hierarchy over leaves of several node types,
stored so that PyG's DataLoader batches it; checked against the dense
reference in float64 on random irregular forests."""
import pickle

import pytest
import torch
import torch_geometric.transforms as T
from hypothesis import given, strategies as st
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.data import induced_hierarchy
from hsa_geo.data.hierarchy import distinct_sibling_pairs
from hsa_geo.data.hetero_nested_signal import HeteroNestedSignal
from tests.helpers.strategies import forests

SEEDS = st.integers(0, 2**31 - 1)
TYPES = ['word', 'patch', 'atom']


def random_signal(f, seed: int, num_types: int = 2) -> HeteroNestedSignal:
    r"""The forest's leaves split into :obj:`num_types` leaf types (in
    order, some possibly empty), features of a different width per type."""
    g = torch.Generator().manual_seed(seed)
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    cuts = torch.randint(0, f.num_leaves + 1, (num_types - 1, ),
                         generator=g).sort().values.tolist()
    bounds = [0] + cuts + [f.num_leaves]
    x_dict = {TYPES[i]: torch.randn(bounds[i + 1] - bounds[i], 2 + i,
                                    generator=g, dtype=torch.float64)
              for i in range(num_types)}
    return HeteroNestedSignal.from_hierarchy(h, x_dict, y=torch.tensor([0]))


def dense(h: Hierarchy, q: torch.Tensor) -> torch.Tensor:
    return hierarchical_attention_matrix(q, q, h)[0]


@given(f=forests(max_leaves=25, root_leaves=False), seed=SEEDS,
       num_types=st.integers(1, 3))
def test_round_trip(f, seed, num_types):
    data = random_signal(f, seed, num_types)
    assert torch.equal(data.hierarchy.parent, torch.tensor(f.parent))
    assert data.leaf_types == TYPES[:num_types]
    # (widths differ by type: cat_leaves takes tensors of one width)
    x = data.cat_leaves({t: x[:, :2] for t, x in data.x_dict.items()})
    assert x.size(0) == f.num_leaves
    for t, part in data.split_leaves(x).items():
        assert torch.equal(part, data[t].x[:, :2])


@given(fs=st.lists(forests(max_leaves=12, root_leaves=False), min_size=1,
                   max_size=4), seed=SEEDS)
def test_batch_is_the_forest_of_its_signals(fs, seed):
    signals = [random_signal(f, seed + i, 3) for i, f in enumerate(fs)]
    batch = next(iter(DataLoader(signals, batch_size=len(signals))))
    q = torch.randn(batch.hierarchy.num_leaves, 1, 3, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    Q = dense(batch.hierarchy, q)
    seen = torch.zeros_like(Q, dtype=torch.bool)
    # Where every signal's leaves went: type by type, signal by signal.
    for s, rows in zip(signals, batch_rows(batch, len(signals))):
        block = Q[rows][:, rows]
        assert torch.allclose(block, dense(s.hierarchy, q[rows]),
                              atol=1e-12)
        seen[rows.unsqueeze(1), rows] = True
    assert (Q[~seen] == 0).all()  # no attention across signals


def test_a_batch_of_batches_raises():
    # PyG would collate them, with batch vectors that miss the signals
    # without leaves of a type
    batch = Batch.from_data_list([two_types(), two_types()])
    with pytest.raises(ValueError, match="a Batch of HeteroNestedSignals "
                       "cannot be batched again"):
        Batch.from_data_list([batch, batch])


def test_concat_raises():
    a, b = two_types(), two_types()
    with pytest.raises(ValueError, match="HeteroNestedSignal.concat is not "
                       "supported"):
        a.concat(b)


def test_the_core_runs_on_the_concatenated_leaves():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 4, dtype=torch.float64),
            'patch': torch.randn(2, 6, dtype=torch.float64)})
    assert data.leaf_slices == {'word': slice(0, 3), 'patch': slice(3, 5)}
    proj = {'word': torch.randn(4, 2, dtype=torch.float64),
            'patch': torch.randn(6, 2, dtype=torch.float64)}
    q = data.cat_leaves({t: data[t].x @ proj[t] for t in data.leaf_types})
    out = hierarchical_attention(q, q, q, data.hierarchy)
    expected = dense_apply(data.hierarchy, q)
    assert torch.allclose(out, expected, atol=1e-12)
    assert set(data.split_leaves(out)) == {'word', 'patch'}


def dense_apply(h, q):
    Q = hierarchical_attention_matrix(q.unsqueeze(1), q.unsqueeze(1), h)[0]
    return Q @ q


def test_types_without_features_and_pickling():
    h = Hierarchy.from_parent([3, 3, 4, -1, 3], 3)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'token': 2, 'patch': torch.randn(1, 5)})
    assert data['token'].num_nodes == 2
    assert torch.equal(data.hierarchy.parent, h.parent)
    again = pickle.loads(pickle.dumps(data))
    assert torch.equal(again.hierarchy.parent, h.parent)


# Bad input ##################################################################


def two_types():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    return HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 4), 'patch': torch.randn(2, 6)})


def test_counts_must_match_the_hierarchy():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    with pytest.raises(ValueError, match='holds 4 leaves'):
        HeteroNestedSignal.from_hierarchy(h, {'word': torch.randn(4, 2)})
    with pytest.raises(ValueError, match="'cluster' is the node type"):
        HeteroNestedSignal.from_hierarchy(h, {'cluster': torch.randn(5, 2)})
    with pytest.raises(TypeError, match=r"x_dict\['word'\]"):
        HeteroNestedSignal.from_hierarchy(h, {'word': 'five'})


def test_every_leaf_needs_a_cluster():
    h = Hierarchy.from_parent([3, 3, -1, -1], 3)  # leaf 2 is a root
    with pytest.raises(ValueError, match="leaf 0 of type 'patch'.*no "
                       "parent cluster"):
        HeteroNestedSignal.from_hierarchy(
            h, {'word': torch.randn(2, 2), 'patch': torch.randn(1, 2)})
    data = two_types()
    store = data['patch', 'child_of', 'cluster']
    store.edge_index = store.edge_index[:, :1]
    with pytest.raises(ValueError, match="leaf 1 of type 'patch' has no "
                       "parent cluster"):
        data.hierarchy


def test_two_parents_and_ids_out_of_range():
    data = two_types()
    store = data['word', 'child_of', 'cluster']
    store.edge_index = torch.cat([store.edge_index,
                                  torch.tensor([[0], [1]])], 1)
    with pytest.raises(ValueError, match="leaf 0 of type 'word' has 2 "
                       "parent clusters"):
        data.hierarchy
    data = two_types()
    data['word', 'child_of', 'cluster'].edge_index[1, 2] = 7
    with pytest.raises(ValueError, match=r"\[1, 2\] = 7 is not a node of "
                       r"type 'cluster'"):
        data.hierarchy
    data = two_types()
    data['word'].x = torch.randn(2, 4)  # a leaf dropped without the tree
    with pytest.raises(ValueError, match="is not a node of type 'word'"):
        data.hierarchy


def test_leaf_type_without_features():
    data = two_types()
    del data['patch'].x
    with pytest.raises(ValueError, match="leaf type 'patch' has neither"):
        data.hierarchy


def test_cat_leaves_checks_its_input():
    data = two_types()
    with pytest.raises(ValueError, match="no entry for leaf type 'patch'"):
        data.cat_leaves({'word': torch.randn(3, 2)})
    with pytest.raises(ValueError, match=r"x_dict\['patch'\] must be a "
                       r"tensor of 2 rows"):
        data.cat_leaves({'word': torch.randn(3, 2),
                         'patch': torch.randn(3, 2)})
    with pytest.raises(ValueError, match='one row per leaf'):
        data.split_leaves(torch.randn(4, 2))


def with_family_graph(signal: HeteroNestedSignal, seed: int,
                      keep: float = 0.5) -> HeteroNestedSignal:
    r"""The signal with a random family graph (about :obj:`keep` of the
    sibling pairs) on random families; the others stay dense."""
    h = signal.hierarchy
    g = torch.Generator().manual_seed(seed)
    pairs = distinct_sibling_pairs(h.parent, h.num_leaves)
    pairs = pairs[:, torch.rand(pairs.size(1), generator=g) < keep]
    sparse = torch.rand(h.num_clusters, generator=g) < 0.7
    out = HeteroNestedSignal.from_hierarchy(
        h.with_family_graph(pairs), {t: signal[t].x
                                     for t in signal.leaf_types},
        sparse_family=sparse)
    return out, pairs, sparse


def expected_tree(h: Hierarchy, pairs, sparse) -> Hierarchy:
    r"""The family graph as its flags mean it: the pairs of the sparse
    families, every pair of the dense ones."""
    n = h.num_leaves
    pairs = pairs[:, sparse[h.parent[pairs[0]] - n]]
    dense_pairs = distinct_sibling_pairs(h.parent, n, ~sparse)
    return h.with_family_graph(torch.cat([pairs, dense_pairs], dim=1))


@given(f=forests(max_leaves=20, root_leaves=False), seed=SEEDS,
       num_types=st.integers(1, 3))
def test_family_graphs_round_trip(f, seed, num_types):
    signal, pairs, sparse = with_family_graph(
        random_signal(f, seed, num_types), seed)
    h = signal.hierarchy
    q = torch.randn(h.num_leaves, 1, 2, dtype=torch.float64)
    expected = expected_tree(Hierarchy.from_parent(f.parent, f.num_leaves),
                             pairs, sparse)
    assert torch.allclose(dense(h, q), dense(expected, q), atol=1e-12)
    assert signal.leaf_metadata()[1] == []  # the pairs are not leaf edges


@given(fs=st.lists(forests(max_leaves=12, root_leaves=False), min_size=2,
                   max_size=3), seed=SEEDS)
def test_family_graphs_batch_and_mix_with_dense_signals(fs, seed):
    signals = [random_signal(f, seed + i, 2) for i, f in enumerate(fs)]
    signals[0] = with_family_graph(signals[0], seed)[0]
    batch = next(iter(DataLoader(signals, batch_size=len(signals))))
    h = batch.hierarchy
    q = torch.randn(h.num_leaves, 1, 2, dtype=torch.float64)
    rows = batch_rows(batch, len(signals))
    for i, signal in enumerate(signals):
        got = dense(h, q)[rows[i]][:, rows[i]]
        assert torch.allclose(got, dense(signal.hierarchy, q[rows[i]]),
                              atol=1e-12)


def batch_rows(batch, num_signals: int):
    r"""The rows of every signal in a batch's global leaf order."""
    where, start = [[] for _ in range(num_signals)], 0
    for t in batch.leaf_types:
        ptr = batch[t].ptr.tolist()
        for i in range(num_signals):
            where[i].append(torch.arange(start + ptr[i], start + ptr[i + 1]))
        start += ptr[-1]
    return [torch.cat(w) for w in where]


def two_signals():
    r"""The same tree with and without a family graph."""
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5,
                              torch.tensor([[0, 3], [1, 4]]))
    x_dict = {'word': torch.randn(3, 2, dtype=torch.float64),
              'patch': torch.randn(2, 2, dtype=torch.float64)}
    return (HeteroNestedSignal.from_hierarchy(h, x_dict),
            HeteroNestedSignal.from_hierarchy(h.with_family_graph(None),
                                              x_dict))


@pytest.mark.parametrize('order', ['SD', 'DS', 'SDS', 'DSD', 'DDS'])
def test_signals_with_and_without_family_graphs_batch_in_any_order(order):
    sparse, plain = two_signals()
    signals = [sparse if c == 'S' else plain for c in order]
    batch = next(iter(DataLoader(signals, batch_size=len(signals))))
    h = batch.hierarchy
    q = torch.randn(h.num_leaves, 1, 2, dtype=torch.float64)
    for signal, rows in zip(signals, batch_rows(batch, len(signals))):
        assert torch.allclose(dense(h, q)[rows][:, rows],
                              dense(signal.hierarchy, q[rows]), atol=1e-12)


def test_lost_family_pairs_and_flags_raise():
    sparse, _ = two_signals()
    sparse['word', 'sibling_of', 'word'].edge_index = torch.empty(
        2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match='cluster 0 has 0 stored sibling'):
        sparse.hierarchy
    sparse, plain = two_signals()
    del plain['cluster'].sparse_family
    # as the first of a batch, it would drop the others' family graphs
    batch = next(iter(DataLoader([plain, sparse], batch_size=2)))
    with pytest.raises(ValueError, match='every signal of a batch needs'):
        batch.hierarchy
    h = Hierarchy.from_parent([3, 3, 3, -1], 3)
    with pytest.raises(ValueError, match='no family graph'):
        HeteroNestedSignal.from_hierarchy(
            h, {'word': torch.randn(3, 2)},
            sparse_family=torch.tensor([True]))


def test_a_batch_of_signals_with_different_leaf_types_raises():
    def signal(types):
        n = sum(types.values())
        h = Hierarchy.from_parent([n] * n + [-1], n)
        return HeteroNestedSignal.from_hierarchy(
            h, {t: torch.randn(c, 3) for t, c in types.items()})

    both = {'word': 2, 'patch': 2}
    for missing in ({'patch': 2}, {'word': 0, 'patch': 2}):
        signals = [signal(both), signal(missing), signal(both)]
        batch = next(iter(DataLoader(signals, batch_size=3)))
        if 'word' in missing:  # every type, 0 rows: fine
            assert batch.hierarchy.num_trees == 3
        else:
            with pytest.raises(ValueError, match='signal 1 of this batch'):
                batch.hierarchy
    # As many types under other names: 'image' would be dropped, and the
    # second signal's tree would lose its leaves.
    for second in ({'word': 2, 'image': 2}, {'image': 2, 'word': 2}):
        batch = next(iter(DataLoader([signal(both), signal(second)],
                                     batch_size=2)))
        with pytest.raises(ValueError, match="leaf type '.*' has the "
                           "leaves of 1 of the 2 signals"):
            batch.hierarchy


def test_a_signal_that_lost_a_leaf_type_says_so():
    r"""A single signal is told what happened to it, not to a batch."""
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 2), 'patch': torch.randn(2, 2)})
    out = data.edge_type_subgraph([('word', 'child_of', 'cluster'),
                                   ('cluster', 'child_of', 'cluster')])
    with pytest.raises(ValueError, match=r"this signal was built with 2 "
                       r"leaf types but has 1 \(\['word'\]\)"):
        out.hierarchy


def test_a_signal_that_lost_the_clusters_parents_says_so():
    r"""Without ('cluster', 'child_of', 'cluster') every cluster would be a
    root: the tree split in silence. A forest of one level stores the edge
    type empty, and batches with it."""
    h = Hierarchy.from_parent([3, 3, 4, 4, -1], 3)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(2, 4), 'patch': torch.randn(1, 6)})
    data['word', 'next', 'word'].edge_index = torch.tensor([[0], [1]])
    assert data.hierarchy.num_trees == 1
    kept = [e for e in data.edge_types
            if e != ('cluster', 'child_of', 'cluster')]
    dropped = data.clone()
    del dropped['cluster', 'child_of', 'cluster']
    for out in (data.edge_type_subgraph(kept), dropped):
        with pytest.raises(ValueError, match=r"lacks the edge type "
                           r"\('cluster', 'child_of', 'cluster'\).*an "
                           r"operation removed it"):
            out.hierarchy
    flat = HeteroNestedSignal.from_hierarchy(
        Hierarchy.from_parent([2, 3, -1, -1], 2),
        {'word': torch.randn(1, 4), 'patch': torch.randn(1, 6)})
    assert flat['cluster', 'child_of', 'cluster'].edge_index.shape == (2, 0)
    batch = Batch.from_data_list([flat, flat])
    assert batch.hierarchy.parent.tolist() == [4, 6, 5, 7, -1, -1, -1, -1]


def test_subgraph_keeps_each_family_sparse_or_dense():
    signal, pairs, sparse = with_family_graph(signal_with_ids(), 3, 0.6)
    original = expected_tree(signal.hierarchy, pairs, sparse)
    keep = torch.tensor([3, 1, 0])
    out = signal.subgraph({'word': keep})
    # the words kept, then both patches (leaves 4 and 5)
    expected = induced_hierarchy(original, torch.tensor([3, 1, 0, 4, 5]))
    q = torch.randn(out.hierarchy.num_leaves, 1, 2, dtype=torch.float64)
    assert torch.allclose(dense(out.hierarchy, q), dense(expected, q),
                          atol=1e-12)


def test_subgraph_refuses_cluster_attributes_on_the_global_store():
    r"""A per-cluster attribute on the global store would keep the old
    clusters' rows after a subgraph: it raises; in data['cluster'] it
    follows the kept clusters."""
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    signal = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 2), 'patch': torch.randn(2, 3)})
    signal['cluster'].kind = torch.tensor([7, 8])
    # Dropping both patches drops cluster 1 (their parent, node 6).
    out = signal.subgraph({'patch': torch.tensor([], dtype=torch.long)})
    assert out['cluster'].kind.tolist() == [7]
    signal.cluster_kind = torch.tensor([7, 8])
    for operation in (lambda s: s.subgraph({'word': torch.tensor([0])}),
                      lambda s: s.node_type_subgraph(['word', 'cluster'])):
        with pytest.raises(ValueError, match=r"data.cluster_kind is on the "
                           r"global store.*data\['cluster'\].kind"):
            operation(signal)
    batch = next(iter(DataLoader([signal, signal], batch_size=2)))
    with pytest.raises(ValueError, match='data.cluster_kind'):
        batch.subgraph({'word': torch.tensor([0, 3])})


def _batch_of_three():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5,
                              torch.tensor([[0, 3], [1, 4]]))
    signals = []
    for i, (words, patches) in enumerate([(3, 2), (2, 3), (4, 1)]):
        x_dict = {'word': torch.randn(words, 2, dtype=torch.float64),
                  'patch': torch.randn(patches, 3, dtype=torch.float64)}
        parent = [5] * words + [6] * patches + [-1, 5]
        tree = Hierarchy.from_parent(parent, 5)
        signal = HeteroNestedSignal.from_hierarchy(
            h if i == 0 else tree, x_dict, y=torch.tensor([i]))
        signal['cluster'].name = torch.tensor([10 * i, 10 * i + 1])
        signals.append(signal)
    return signals, next(iter(DataLoader(signals, batch_size=3)))


def test_subgraph_of_a_batch_subgraphs_each_signal():
    signals, batch = _batch_of_three()
    # words: 0-2 | 3-4 | 5-8; patches: 0-1 | 2-4 | 5
    for subset, parts in [
            ({'word': torch.tensor([1, 2, 4, 8])},
             [{'word': torch.tensor([1, 2])}, {'word': torch.tensor([1])},
              {'word': torch.tensor([3])}]),
            ({'word': torch.tensor([0, 5, 6]), 'patch': torch.tensor(
                [True, False, False, False, True, True])},
             [{'word': torch.tensor([0]), 'patch': torch.tensor([0])},
              {'word': torch.zeros(0, dtype=torch.long),
               'patch': torch.tensor([2])},
              {'word': torch.tensor([0, 1]), 'patch': torch.tensor([0])}])]:
        sub = batch.subgraph(subset)
        expected = [s.subgraph(p) for s, p in zip(signals, parts)]
        assert sub.num_graphs == 3
        rows = batch_rows(sub, 3)
        h = sub.hierarchy
        q = torch.randn(h.num_leaves, 1, 2, dtype=torch.float64)
        for exp, back, r in zip(expected, sub.to_data_list(), rows):
            assert torch.allclose(dense(h, q)[r][:, r],
                                  dense(exp.hierarchy, q[r]), atol=1e-12)
            assert torch.equal(back.hierarchy.parent, exp.hierarchy.parent)
            for t in ('word', 'patch'):
                assert torch.equal(back[t].x, exp[t].x)
            assert torch.equal(back['cluster'].name, exp['cluster'].name)
            assert torch.equal(back.y, exp.y)


def test_node_type_subgraph_of_a_batch_works_signal_by_signal():
    signals, batch = _batch_of_three()
    out = batch.node_type_subgraph(['patch', 'cluster'])
    expected = [s.node_type_subgraph(['patch', 'cluster']) for s in signals]
    assert out.leaf_types == ['patch']
    for back, exp in zip(out.to_data_list(), expected):
        assert torch.equal(back.hierarchy.parent, exp.hierarchy.parent)
        assert torch.equal(back['patch'].x, exp['patch'].x)
        assert torch.equal(back['cluster'].name, exp['cluster'].name)


@pytest.mark.parametrize('subset,pattern', [
    ({'word': torch.tensor([3, 0])}, r"subset_dict\['word'\]\[1\] = 0 is a "
     r"node of signal 0 of this batch, after one of signal 1"),
    ({'word': torch.tensor([0, 5]), 'patch': torch.tensor([0, 5])},
     "subset_dict keeps no leaf of signal 1 of this batch"),
])
def test_subgraph_of_a_batch_bad_subsets(subset, pattern):
    _, batch = _batch_of_three()
    with pytest.raises(ValueError, match=pattern):
        batch.subgraph(subset)


def test_leaf_metadata_leaves_the_tree_out():
    data = two_types()
    data['word', 'next', 'word'].edge_index = torch.tensor([[0], [1]])
    data['patch', 'shows', 'word'].edge_index = torch.tensor([[0], [2]])
    types, edges = data.leaf_metadata()
    assert types == ['word', 'patch']
    assert edges == [('word', 'next', 'word'), ('patch', 'shows', 'word')]
    assert ('word', 'child_of', 'cluster') in data.edge_types


def test_in_place_change_under_inference_mode_is_seen():
    r"""As a NestedSignal's: inference tensors track no version, so the
    cached tree is checked against their values."""
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    with torch.inference_mode():
        data = HeteroNestedSignal.from_hierarchy(
            h, {'a': torch.randn(2, 3), 'b': torch.randn(2, 5)})
        cached = data.hierarchy
        assert data.hierarchy is cached
        data['a', 'child_of', 'cluster'].edge_index[1, 0] = 1
        assert data.hierarchy.parent.tolist() == [5, 4, 5, 5, 6, 6, -1]


def test_node_modality():
    data = two_types()  # words 0-2 -> 5; patches 3, 4 -> 6 -> 5
    assert data.node_modality().tolist() == [0, 0, 0, 1, 1, 2, 1]


def test_hierarchy_is_cached_until_the_tree_changes():
    data = two_types()
    h = data.hierarchy
    assert data.hierarchy is h
    store = data['patch', 'child_of', 'cluster']
    store.edge_index = store.edge_index.clone()  # a new tensor: rebuilt
    assert data.hierarchy is not h
    assert torch.equal(data.hierarchy.parent, h.parent)
    data['word', 'child_of', 'cluster'].edge_index[1, 2] = 7  # in place
    with pytest.raises(ValueError, match="is not a node of type 'cluster'"):
        data.hierarchy
    data = two_types()
    data.hierarchy
    data['word'].x = torch.randn(2, 4)  # a leaf dropped after the first use
    with pytest.raises(ValueError, match="is not a node of type 'word'"):
        data.hierarchy
    data = two_types()
    data.hierarchy  # cached, but not pickled
    assert '_hierarchy_cache' in data.__dict__
    assert '_hierarchy_cache' not in pickle.loads(pickle.dumps(data)).__dict__


def signal_with_ids(seed: int = 0, family: bool = False
                    ) -> HeteroNestedSignal:
    r"""Two leaf types, a leaf edge type, a per-cluster attribute, and
    ``uid``: the global id of every leaf, which moves with its node; with
    :obj:`family`, a family graph on the two word families (pairs 0 -> 1,
    3 -> 2, and 7 -> 8 between clusters), the others dense."""
    h = Hierarchy.from_parent([6, 6, 7, 7, 8, 8, 9, 9, 9, -1], 6)
    sparse = None
    if family:
        h = h.with_family_graph(torch.tensor([[0, 3, 7], [1, 2, 8]]))
        sparse = torch.tensor([True, True, False, True])
    g = torch.Generator().manual_seed(seed)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(4, 3, generator=g, dtype=torch.float64),
            'patch': torch.randn(2, 5, generator=g, dtype=torch.float64)},
        sparse_family=sparse)
    data['word'].uid = torch.arange(4)
    data['patch'].uid = torch.arange(4, 6)
    data['cluster'].uid = torch.arange(6, 10)
    data['word', 'next', 'word'].edge_index = torch.tensor([[0, 1, 2],
                                                            [1, 2, 3]])
    return data


PYG_OPERATIONS = {
    'subgraph': lambda d: d.subgraph({'word': torch.tensor([3, 0])}),
    'subgraph_mask': lambda d: d.subgraph(
        {'patch': torch.tensor([False, True])}),
    'permute': lambda d: d.subgraph({'word': torch.tensor([2, 3, 1, 0])}),
    'node_type_subgraph': lambda d: d.node_type_subgraph(['patch',
                                                          'cluster']),
    'to_undirected': T.ToUndirected(),
    'add_self_loops': T.AddSelfLoops(),
    'remove_isolated': T.RemoveIsolatedNodes(),
    'to_sparse_tensor': T.ToSparseTensor(),
    'pad': T.Pad(8),
    'random_node_split': T.RandomNodeSplit(),
    'normalize_features': T.NormalizeFeatures(),
    'remove_duplicated_edges': T.RemoveDuplicatedEdges(),
    'rename': lambda d: d.rename('word', 'token'),
    'edge_type_subgraph': lambda d: d.edge_type_subgraph(
        [('word', 'next', 'word')]),
}


# Those that can keep a valid tree do; the others must raise.
KEEP_THE_TREE = {'subgraph', 'subgraph_mask', 'permute', 'node_type_subgraph',
                 'remove_isolated', 'random_node_split', 'normalize_features',
                 'remove_duplicated_edges', 'rename'}


@pytest.mark.parametrize('family', [False, True])
@pytest.mark.parametrize('name', sorted(PYG_OPERATIONS))
def test_pyg_operations_keep_the_tree_or_raise(name, family):
    r"""After any PyG operation the signal's tree is the one its surviving
    leaves induce in the original tree (checked by the dense attention
    matrix over the leaves' original ids), or reading it raises a
    ValueError; it is never silently rewired."""
    data = signal_with_ids(family=family)
    original = data.hierarchy
    try:
        out = PYG_OPERATIONS[name](data)
        h = out.hierarchy
    except ValueError as error:
        assert name not in KEEP_THE_TREE, error
        assert 'cluster' in str(error) or 'tree' in str(error)
        return
    assert name in KEEP_THE_TREE
    uid = torch.cat([out[t].uid for t in out.leaf_types])
    expected = induced_hierarchy(original, uid)
    q = torch.randn(h.num_leaves, 1, 2, dtype=torch.float64)
    assert torch.allclose(hierarchical_attention_matrix(q, q, h),
                          hierarchical_attention_matrix(q, q, expected))
    # per-cluster attributes follow their clusters
    _, node_map = induced_hierarchy(original, uid, return_node_map=True)
    kept = (node_map[original.num_leaves:] >= 0).nonzero().view(-1) + 6
    assert torch.equal(out['cluster'].uid, kept)


def test_subgraph_checks_its_selection():
    data = signal_with_ids()
    with pytest.raises(ValueError, match="select leaves only"):
        data.subgraph({'cluster': torch.tensor([0])})
    with pytest.raises(ValueError, match="not a leaf type"):
        data.subgraph({'audio': torch.tensor([0])})
    with pytest.raises(ValueError, match=r"subset_dict\['word'\]\[1\] = 7"):
        data.subgraph({'word': torch.tensor([0, 7])})
    with pytest.raises(ValueError, match="twice"):
        data.subgraph({'word': torch.tensor([1, 1])})
    with pytest.raises(ValueError, match=r"needs shape \[4\]"):
        data.subgraph({'word': torch.tensor([True, False])})
    with pytest.raises(ValueError, match="keeps no leaf"):
        data.node_type_subgraph(['cluster'])
