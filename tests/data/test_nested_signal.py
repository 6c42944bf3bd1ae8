r"""Tests of :class:`hsa_geo.NestedSignal`: storing a :class:`Hierarchy` as
PyG data, the cached ``.hierarchy``, batching with
:class:`torch_geometric.loader.DataLoader`, and validation of the stored
index tensors."""
import copy
import io
import pickle
from typing import Any, List, Optional, Tuple

import pytest
import torch
import torch_geometric.transforms as T
from hypothesis import given, strategies as st
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.loader.utils import filter_data
from torch_geometric.utils import subgraph as pyg_subgraph

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention
from hsa_geo.data import induced_hierarchy
from hsa_geo.transforms import GraphHierarchy, SequenceHierarchy
from tests.helpers.attention import attention, random_pairs, random_qkv
from tests.helpers.strategies import (
    children_of, fewer, Forest, forests, induced_forest, subset_values)

SEEDS = st.integers(0, 2**31 - 1)
EXACT = 1e-10


def build(f: Forest) -> Hierarchy:
    return Hierarchy.from_parent(f.parent, f.num_leaves)


def rebuilt(data: NestedSignal) -> Hierarchy:
    r"""The hierarchy decoded from the stored tensors only (no cache)."""
    fresh = NestedSignal(
        x=data.x, leaf_parent_index=data.leaf_parent_index.clone(),
        cluster_parent_index=data.cluster_parent_index.clone(),
        num_clusters=data.num_clusters)
    if data.x is None:
        fresh.num_nodes = data.num_nodes
    return fresh.hierarchy


def assert_same_hierarchy(a: Hierarchy, b: Hierarchy):
    assert a.num_leaves == b.num_leaves
    assert a.parent.tolist() == b.parent.tolist()


# A hand-checked example ####################################################
#
#          7           4        leaves 0..4, clusters 5, 6, 7 (ids 0, 1, 2);
#       /  |  \                 node 6 has a single child; leaf 4 is a tree
#      5   6   2                on its own.
#     / \  |
#    0   1 3

EXAMPLE_PARENT = [5, 5, 7, 6, -1, 7, 7, -1]
EXAMPLE_LEAVES = 5


def example(x=True, **kwargs) -> NestedSignal:
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    return NestedSignal.from_hierarchy(
        h, torch.randn(EXAMPLE_LEAVES, 3) if x else None, **kwargs)


def test_example_storage():
    data = example()
    # (leaf, cluster) for leaves with a parent; cluster c is node 5 + c.
    assert sorted(map(tuple, data.leaf_parent_index.t().tolist())) == [
        (0, 0), (1, 0), (2, 2), (3, 1)
    ]
    assert sorted(map(tuple, data.cluster_parent_index.t().tolist())) == [
        (0, 2), (1, 2)
    ]
    assert data.num_clusters == 3
    assert data.num_nodes == EXAMPLE_LEAVES
    assert data.leaf_parent_index.dtype == torch.long
    assert data.cluster_parent_index.dtype == torch.long
    assert rebuilt(data).parent.tolist() == EXAMPLE_PARENT


def test_from_hierarchy_keeps_further_attributes():
    edge_index = torch.tensor([[0, 1, 3], [1, 0, 2]])
    y = torch.tensor([1.5])
    data = example(edge_index=edge_index, y=y, name_tag=torch.ones(5, 2))
    assert torch.equal(data.edge_index, edge_index)
    assert torch.equal(data.y, y)
    assert torch.equal(data.name_tag, torch.ones(5, 2))
    assert isinstance(data, NestedSignal) and isinstance(data, Data)


def test_from_hierarchy_without_x_sets_num_nodes():
    data = example(x=False)
    assert data.x is None
    assert data.num_nodes == EXAMPLE_LEAVES
    assert rebuilt(data).parent.tolist() == EXAMPLE_PARENT


# Round trip on random forests ##############################################


@given(forests(max_leaves=16), st.booleans(), SEEDS)
def test_round_trip(f, with_x, seed):
    h = build(f)
    x = torch.randn(f.num_leaves, 2,
                    generator=torch.Generator().manual_seed(seed)) \
        if with_x else None
    data = NestedSignal.from_hierarchy(h, x)
    assert data.num_nodes == f.num_leaves
    assert data.num_clusters == h.num_clusters
    # The stored tensors alone give back the same forest ...
    assert_same_hierarchy(rebuilt(data), h)
    # ... and the signal returns it (the one it was built from, cached).
    assert_same_hierarchy(data.hierarchy, h)
    # One column per non-root node.
    n = f.num_leaves
    assert data.leaf_parent_index.size(1) == sum(p >= 0 for p in f.parent[:n])
    assert data.cluster_parent_index.size(1) == sum(p >= 0
                                                    for p in f.parent[n:])


@given(forests(max_leaves=12))
def test_round_trip_through_copies(f):
    h = build(f)
    data = NestedSignal.from_hierarchy(h, torch.randn(f.num_leaves, 2))
    for other in (copy.copy(data), copy.deepcopy(data), data.clone()):
        assert_same_hierarchy(other.hierarchy, h)


def test_one_leaf_signals():
    for parent in ([-1], [1, -1], [1, 2, -1]):  # root leaf, chains above
        h = Hierarchy.from_parent(parent, 1)
        data = NestedSignal.from_hierarchy(h, torch.randn(1, 4))
        assert data.leaf_parent_index.shape == (2, int(parent[0] >= 0))
        assert rebuilt(data).parent.tolist() == parent


def test_all_root_leaves():
    h = Hierarchy.from_parent([-1, -1, -1], 3)
    data = NestedSignal.from_hierarchy(h, torch.randn(3, 1))
    assert data.leaf_parent_index.shape == (2, 0)
    assert data.cluster_parent_index.shape == (2, 0)
    assert data.num_clusters == 0
    assert rebuilt(data).parent.tolist() == [-1, -1, -1]


# The cache #################################################################


def test_cache_returns_the_same_object():
    data = example()
    first = data.hierarchy
    assert data.hierarchy is first
    assert data.hierarchy is first
    # Also when decoded (not handed over by from_hierarchy).
    fresh = NestedSignal(x=data.x, leaf_parent_index=data.leaf_parent_index,
                         cluster_parent_index=data.cluster_parent_index,
                         num_clusters=data.num_clusters)
    h = fresh.hierarchy
    assert fresh.hierarchy is h


def test_from_hierarchy_hands_back_the_given_hierarchy():
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    assert NestedSignal.from_hierarchy(h, torch.randn(5, 2)).hierarchy is h
    assert NestedSignal.from_hierarchy(h).hierarchy is h


def test_cache_is_not_a_data_attribute():
    r"""The cached hierarchy is no attribute of the data: it is not listed,
    not batched, not moved, and a batch of signals whose hierarchy was read
    collates as usual."""
    signals = [example(), example(x=True)]
    keys = set(signals[0].keys())
    for s in signals:
        s.hierarchy
    assert set(signals[0].keys()) == keys
    assert not any('hierarch' in k for k in signals[0].keys())
    batch = Batch.from_data_list(signals)
    assert set(batch.keys()) == keys | {'batch', 'ptr'}
    assert batch.hierarchy.num_leaves == 2 * EXAMPLE_LEAVES


def test_cache_rebuilt_after_replacing_a_tensor():
    data = example()
    old = data.hierarchy
    # Leaf 3 moves from cluster 1 to cluster 0; cluster 1 keeps no child,
    # so give it leaf 2 instead of cluster 2.
    data.leaf_parent_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 0]])
    new = data.hierarchy
    assert new is not old
    assert new.parent.tolist() == [5, 5, 6, 5, -1, 7, 7, -1]


def test_cache_rebuilt_after_in_place_change():
    data = example()
    old = data.hierarchy
    # Leaf 2 moves from cluster 2 to cluster 0.
    j = data.leaf_parent_index[0].tolist().index(2)
    data.leaf_parent_index[1, j] = 0
    new = data.hierarchy
    assert new is not old
    assert new.parent.tolist() == [5, 5, 5, 6, -1, 7, 7, -1]
    # A replaced cluster index: cluster 1 becomes a root.
    old = new
    j = data.cluster_parent_index[0].tolist().index(1)
    keep = torch.arange(data.cluster_parent_index.size(1)) != j
    data.cluster_parent_index = data.cluster_parent_index[:, keep]
    assert data.hierarchy is not old
    assert data.hierarchy.parent.tolist() == [5, 5, 5, 6, -1, 7, -1, -1]
    # In place through a view of one row: the edge (cluster 0, cluster 2)
    # becomes (cluster 1, cluster 2), so cluster 0 is a root now.
    old = data.hierarchy
    row = data.cluster_parent_index[0]
    row.fill_(1)
    assert data.hierarchy is not old
    assert data.hierarchy.parent.tolist() == [5, 5, 5, 6, -1, -1, 7, -1]


def test_cache_rebuilt_after_num_clusters_or_leaves_change():
    data = example()
    old = data.hierarchy
    # A new root cluster 3 (node 8 after the change) above cluster 2.
    data.cluster_parent_index = torch.tensor([[0, 1, 2], [2, 2, 3]])
    data.num_clusters = 4
    data.sparse_family = torch.zeros(4, dtype=torch.bool)
    h = data.hierarchy
    assert h is not old
    assert h.parent.tolist() == [5, 5, 7, 6, -1, 7, 7, 8, -1]
    # One more leaf, a root of its own: same index tensors, one more row and
    # the leaf count and ids that say so.
    data.x = torch.randn(6, 3)
    data.num_leaves = 6
    data.leaf_index = torch.arange(6)
    h2 = data.hierarchy
    assert h2 is not h
    assert h2.num_leaves == 6
    assert h2.parent.tolist() == [6, 6, 8, 7, -1, -1, 8, 8, 9, -1]


def test_cache_never_stale_over_reassignments():
    r"""Tensors are replaced, deleted and freed repeatedly (so that memory and
    object ids are recycled); the hierarchy always matches the tensors."""
    data = example()
    variants = [
        torch.tensor([[0, 1, 2, 3], [0, 0, 2, 1]]),  # the original
        torch.tensor([[0, 1, 2, 3], [0, 1, 2, 1]]),
        torch.tensor([[0, 1, 2, 3], [0, 1, 1, 0]]),
    ]
    expect = [[5, 5, 7, 6, -1, 7, 7, -1], [5, 6, 7, 6, -1, 7, 7, -1],
              [5, 6, 6, 5, -1, 7, 7, -1]]
    for step in range(60):
        i = step % 3
        if step % 2:
            del data.leaf_parent_index
        data.leaf_parent_index = variants[i].clone()
        assert data.hierarchy.parent.tolist() == expect[i], step
        if step % 5 == 0:
            data.leaf_parent_index.copy_(variants[(i + 1) % 3])
            assert data.hierarchy.parent.tolist() == expect[(i + 1) % 3]


# Batching ##################################################################


def _signal(f: Forest, g: torch.Generator, idx: int) -> NestedSignal:
    n = f.num_leaves
    num_edges = int(torch.randint(0, 2 * n + 1, (1, ), generator=g))
    edge_index = torch.randint(0, n, (2, num_edges), generator=g)
    return NestedSignal.from_hierarchy(
        build(f),
        torch.randn(n, 3, dtype=torch.float64, generator=g),
        edge_index=edge_index,
        y=torch.randn(1, generator=g),
        idx=idx,
    )


ONE_NODE = Forest([-1], 1)


@st.composite
def signal_lists(draw, max_signals=5):
    fs = draw(st.lists(forests(max_leaves=10), min_size=1,
                       max_size=max_signals))
    if draw(st.booleans()):
        fs.insert(draw(st.integers(0, len(fs))), ONE_NODE)
    seed = draw(SEEDS)
    g = torch.Generator().manual_seed(seed)
    return [_signal(f, g, i) for i, f in enumerate(fs)]


def _check_batch(batch, parts):
    r"""``batch`` is the collation of ``parts`` (in that order)."""
    assert type(batch).__name__ == 'NestedSignalBatch'
    assert isinstance(batch, NestedSignal)
    assert batch.num_graphs == len(parts)
    assert batch.idx.tolist() == [p.idx for p in parts]
    # Leaves of all parts first, in order.
    assert torch.equal(batch.x, torch.cat([p.x for p in parts]))
    assert batch.num_nodes == sum(p.num_nodes for p in parts)
    # The batched hierarchy is the forest of the parts.
    expected = Hierarchy.batch([p.hierarchy for p in parts])
    assert_same_hierarchy(batch.hierarchy, expected)
    # Leaf edges shifted by the leaves before each part.
    offsets = torch.tensor([0] + [p.num_nodes for p in parts]).cumsum(0)
    assert torch.equal(
        batch.edge_index,
        torch.cat([p.edge_index + o for p, o in zip(parts, offsets)], dim=1))
    assert torch.equal(batch.y, torch.cat([p.y for p in parts]))
    assert batch.batch.tolist() == [
        i for i, p in enumerate(parts) for _ in range(p.num_nodes)
    ]


@fewer(2)
@given(signal_lists())
def test_batch_hierarchy_is_forest_of_parts(signals):
    batch = Batch.from_data_list(signals)
    _check_batch(batch, signals)


@fewer(2)
@given(signal_lists(), SEEDS)
def test_batched_attention_equals_per_signal(signals, seed):
    g = torch.Generator().manual_seed(seed)
    heads, d = 2, 3
    qkv = [
        torch.randn(3, s.num_nodes, heads, d, dtype=torch.float64,
                    generator=g) for s in signals
    ]
    batch = next(iter(DataLoader(signals, batch_size=len(signals))))
    q, k, v = (torch.cat([t[i] for t in qkv]) for i in range(3))
    out = hierarchical_attention(q, k, v, batch.hierarchy)
    expected = torch.cat([
        hierarchical_attention(t[0], t[1], t[2], s.hierarchy)
        for t, s in zip(qkv, signals)
    ])
    torch.testing.assert_close(out, expected, rtol=0, atol=EXACT)


@fewer(4)
@given(signal_lists(max_signals=6), st.data())
def test_loader_all_batch_sizes_and_shuffle(signals, data):
    for batch_size in range(1, len(signals) + 1):
        shuffle = data.draw(st.booleans())
        torch.manual_seed(data.draw(SEEDS))
        loader = DataLoader(signals, batch_size=batch_size, shuffle=shuffle)
        seen = []
        for batch in loader:
            parts = [signals[i] for i in batch.idx.tolist()]
            _check_batch(batch, parts)
            seen += batch.idx.tolist()
        assert sorted(seen) == list(range(len(signals)))


def test_loader_shuffle_really_reorders():
    g = torch.Generator().manual_seed(0)
    fs = [Forest([2, 2, -1], 2), ONE_NODE, Forest([3, 3, 3, -1], 3),
          Forest([-1, 2, -1], 2), Forest([2, 3, 3, -1], 2)]
    signals = [_signal(f, g, i) for i, f in enumerate(fs)]
    torch.manual_seed(1)
    orders = set()
    for _ in range(10):
        order = []
        for batch in DataLoader(signals, batch_size=2, shuffle=True):
            _check_batch(batch, [signals[i] for i in batch.idx.tolist()])
            order += batch.idx.tolist()
        orders.add(tuple(order))
    assert len(orders) > 1


def test_batch_example():
    a = example(edge_index=torch.tensor([[0, 3], [1, 2]]), y=torch.ones(1))
    b = NestedSignal.from_hierarchy(Hierarchy.from_parent([-1], 1),
                                    torch.randn(1, 3),
                                    edge_index=torch.empty(2, 0).long(),
                                    y=torch.zeros(1))
    c = NestedSignal.from_hierarchy(Hierarchy.from_parent([2, 2, -1], 2),
                                    torch.randn(2, 3),
                                    edge_index=torch.tensor([[1], [0]]),
                                    y=torch.zeros(1))
    batch = Batch.from_data_list([a, b, c])
    # Leaves 0..4 (a), 5 (b), 6, 7 (c); clusters 8, 9, 10 (a), 11 (c).
    assert batch.hierarchy.parent.tolist() == [
        8, 8, 10, 9, -1, -1, 11, 11, 10, 10, -1, -1
    ]
    assert batch.edge_index.tolist() == [[0, 3, 7], [1, 2, 6]]
    assert batch.hierarchy.num_trees == 4


@given(signal_lists())
def test_unbatching_gives_back_each_signal(signals):
    batch = Batch.from_data_list(signals)
    for part, original in zip(batch.to_data_list(), signals):
        assert_same_hierarchy(part.hierarchy, original.hierarchy)
        assert torch.equal(part.edge_index, original.edge_index)
    for i in range(len(signals)):
        assert_same_hierarchy(batch.get_example(i).hierarchy,
                              signals[i].hierarchy)


def test_batch_of_batches_raises():
    batch = Batch.from_data_list([example(), example()])
    with pytest.raises(ValueError, match=r"NestedSignals cannot be batched "
                       r"again.*to_data_list\(\)"):
        Batch.from_data_list([batch, batch])
    # what the message proposes
    again = Batch.from_data_list(batch.to_data_list() + batch.to_data_list())
    assert_same_hierarchy(again.hierarchy, Hierarchy.batch(
        [example().hierarchy] * 4))


@pytest.mark.parametrize('first_batched', [False, True])
def test_concat_raises(first_batched):
    a = Batch.from_data_list([example()]) if first_batched else example()
    with pytest.raises(ValueError, match=r"NestedSignal.concat is not "
                       r"supported.*Batch.from_data_list\(\[a, b\]\)"):
        a.concat(example())


def test_batch_without_x():
    hs = [Hierarchy.from_parent(p, n) for p, n in (
        ([2, 2, -1], 2), ([-1], 1), ([3, 3, 4, 4, -1], 3))]
    batch = Batch.from_data_list([NestedSignal.from_hierarchy(h) for h in hs])
    assert batch.num_nodes == 6
    assert_same_hierarchy(batch.hierarchy, Hierarchy.batch(hs))


def test_inference_mode():
    r"""Signals built and batched under :func:`torch.inference_mode` (as in
    an evaluation loop) hold inference tensors, which track no version."""
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    plain = example()
    with torch.inference_mode():
        data = NestedSignal.from_hierarchy(h, torch.randn(5, 2))
        assert data.hierarchy.parent.tolist() == EXAMPLE_PARENT
        batch = next(iter(DataLoader([plain, plain], batch_size=2)))
        expected = Hierarchy.batch([h, h])
        assert_same_hierarchy(batch.hierarchy, expected)
        assert_same_hierarchy(batch.hierarchy, expected)  # cached or not


def test_in_place_change_under_inference_mode_is_seen():
    r"""Inference tensors track no version: the cached hierarchy is
    checked against their values, so a change made in place inside
    :func:`torch.inference_mode` rebuilds it."""
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    with torch.inference_mode():
        data = NestedSignal.from_hierarchy(h, torch.randn(4, 8))
        cached = data.hierarchy
        assert data.hierarchy is cached
        data.leaf_parent_index[1, 0] = 1  # leaf 0 moves to cluster 1
        assert data.hierarchy.parent.tolist() == [5, 4, 5, 5, 6, 6, -1]
        assert data.hierarchy is data.hierarchy
    # Read outside inference mode too.
    assert data.hierarchy.parent.tolist() == [5, 4, 5, 5, 6, 6, -1]


def test_to_cpu_keeps_working():
    data = example()
    moved = data.to('cpu')
    assert_same_hierarchy(moved.hierarchy, data.hierarchy)
    batch = Batch.from_data_list([example(), example(x=True)]).to('cpu')
    assert batch.hierarchy.num_leaves == 2 * EXAMPLE_LEAVES
    assert batch.hierarchy.device == torch.device('cpu')
    # After .to() the hierarchy still fits hierarchical_attention.
    q = torch.randn(batch.num_nodes, 2, dtype=torch.float64)
    out = hierarchical_attention(q, q, q, batch.hierarchy)
    assert out.shape == q.shape


# Validation ################################################################


def test_from_hierarchy_wrong_row_count():
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    for rows in (EXAMPLE_LEAVES - 1, EXAMPLE_LEAVES + 1, 0):
        with pytest.raises(ValueError, match='rows but the hierarchy has 5'):
            NestedSignal.from_hierarchy(h, torch.randn(rows, 2))


def test_from_hierarchy_not_a_hierarchy():
    with pytest.raises(TypeError, match="'hierarchy' must be a Hierarchy"):
        NestedSignal.from_hierarchy(torch.tensor(EXAMPLE_PARENT),
                                    torch.randn(5, 2))


def test_no_hierarchy_stored():
    data = NestedSignal(x=torch.randn(3, 2))
    with pytest.raises(ValueError, match='stores no hierarchy'):
        data.hierarchy
    data = NestedSignal(x=torch.randn(3, 2),
                        leaf_parent_index=torch.tensor([[0], [0]]),
                        num_clusters=1)  # no cluster_parent_index
    with pytest.raises(ValueError, match='stores no hierarchy'):
        data.hierarchy


@pytest.mark.filterwarnings('ignore:Unable to accurately infer')
def test_no_leaves():
    with pytest.raises(ValueError, match='needs leaves'):
        NestedSignal().hierarchy


def _corrupt(**changes) -> NestedSignal:
    data = example()
    for key, value in changes.items():
        setattr(data, key, value)
    return data


@pytest.mark.parametrize('changes,pattern', [
    (dict(leaf_parent_index=torch.tensor([[0, 1, 2, 5], [0, 0, 2, 1]])),
     r'leaf_parent_index\[0, 3\] = 5 is not a valid child id \(0\.\.4\)'),
    (dict(leaf_parent_index=torch.tensor([[0, 1, 2, -1], [0, 0, 2, 1]])),
     r'leaf_parent_index\[0, 3\] = -1 is not a valid child id'),
    (dict(leaf_parent_index=torch.tensor([[0, 1, 2, 3], [0, 0, 3, 1]])),
     r'leaf_parent_index\[1, 2\] = 3 is not a valid parent id \(0\.\.2\)'),
    (dict(cluster_parent_index=torch.tensor([[0, 3], [2, 2]])),
     r'cluster_parent_index\[0, 1\] = 3 is not a valid child id'),
    (dict(cluster_parent_index=torch.tensor([[0, 1], [2, -2]])),
     r'cluster_parent_index\[1, 1\] = -2 is not a valid parent id'),
    (dict(num_clusters=2),  # cluster 2 no longer exists
     r'is not a valid parent id \(0\.\.1\)'),
    # Leaves 3 and 4 no longer exist.
    (dict(num_leaves=3, leaf_index=torch.arange(3), x=torch.randn(3, 3)),
     r'leaf_parent_index\[0, \d\] = 3 is not a valid child id \(0\.\.2\)'),
])
def test_out_of_range_ids(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        _corrupt(**changes).hierarchy


def test_leaf_with_two_parents():
    data = _corrupt(
        leaf_parent_index=torch.tensor([[0, 1, 2, 3, 1], [0, 0, 2, 1, 2]]))
    with pytest.raises(ValueError,
                       match='leaf_parent_index gives node 1 more than one '
                       'parent'):
        data.hierarchy


def test_cluster_with_two_parents():
    data = _corrupt(cluster_parent_index=torch.tensor([[0, 1, 0], [2, 2, 1]]))
    with pytest.raises(ValueError, match='cluster_parent_index gives node 0 '
                       'more than one parent'):
        data.hierarchy


def test_cluster_cycle():
    data = _corrupt(cluster_parent_index=torch.tensor([[0, 1, 2], [2, 2, 1]]))
    with pytest.raises(ValueError, match='cycle'):
        data.hierarchy


def test_cluster_without_children():
    # Cluster 3 is nobody's parent.
    data = _corrupt(num_clusters=4,
                    sparse_family=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match='internal node 8 has no children'):
        data.hierarchy


@pytest.mark.parametrize('key', ['leaf_parent_index', 'cluster_parent_index'])
@pytest.mark.parametrize('value', [
    torch.tensor([0, 1, 2]),
    torch.zeros(3, 2, dtype=torch.long),
    torch.zeros(2, 1, 1, dtype=torch.long),
    torch.zeros(1, 2, dtype=torch.long),
])
def test_wrong_shapes(key, value):
    with pytest.raises(ValueError,
                       match=rf"'{key}' must have shape \[2, E\], got"):
        _corrupt(**{key: value}).hierarchy


@pytest.mark.parametrize('key', ['leaf_parent_index', 'cluster_parent_index'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bool])
def test_wrong_dtypes(key, dtype):
    data = example()
    setattr(data, key, getattr(data, key).to(dtype))
    with pytest.raises(TypeError,
                       match=rf"'{key}' must have an integer dtype"):
        data.hierarchy


@pytest.mark.parametrize('dtype', [torch.int32, torch.int16])
def test_narrow_integer_dtypes_accepted(dtype):
    r"""The message says 'an integer tensor', and :class:`Hierarchy` accepts
    every integer dtype: so do the stored indices."""
    data = example()
    data.leaf_parent_index = data.leaf_parent_index.to(dtype)
    data.cluster_parent_index = data.cluster_parent_index.to(dtype)
    assert data.hierarchy.parent.tolist() == EXAMPLE_PARENT


# Plain-Python references ###################################################


def assert_batch_attends_as_parts(batch: NestedSignal, parts, seed=0):
    r"""HSA on the batch's forest equals HSA on every part alone."""
    qkv = random_qkv(batch.num_nodes, seed)
    expected, start = [], 0
    for part in parts:
        stop = start + part.num_nodes
        expected.append(attention(part.hierarchy, qkv[:, start:stop]))
        start = stop
    torch.testing.assert_close(attention(batch.hierarchy, qkv),
                               torch.cat(expected), rtol=0, atol=EXACT)


def small_graph(num_nodes: int = 10) -> Data:
    r"""Two paths (0..5 and 6..9) with a chord, float64 features."""
    edges = [(i, i + 1) for i in range(5)]
    edges += [(i, i + 1) for i in range(6, num_nodes - 1)]
    edges += [(0, 3)]
    edge_index = torch.tensor(edges).t()
    edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    g = torch.Generator().manual_seed(3)
    return Data(x=torch.randn(num_nodes, 4, dtype=torch.float64,
                              generator=g), edge_index=edge_index)


# Family graphs in batches ###################################################


@pytest.mark.parametrize('sparse_first', [False, True])
def test_loader_mixes_signals_with_and_without_family_graph(sparse_first):
    dense = GraphHierarchy(branching=3)(small_graph())
    sparse = GraphHierarchy(branching=3, family_graph=True)(small_graph())
    # The family graph matters here: dropping it changes the output.
    qkv = random_qkv(10)
    assert not torch.allclose(
        attention(sparse.hierarchy, qkv),
        attention(sparse.hierarchy.with_family_graph(None), qkv))
    signals = [sparse, dense] if sparse_first else [dense, sparse]
    batch = next(iter(DataLoader(signals, batch_size=2)))
    assert_batch_attends_as_parts(batch, signals)
    assert batch.sparse_family.tolist() == [
        f for s in signals for f in s.sparse_family.tolist()]
    # A batch of dense signals only keeps the dense path.
    batch = Batch.from_data_list([dense, dense])
    assert batch.hierarchy.family_edge_index is None


def test_signal_without_family_keys_collates_with_others():
    r"""A signal made by the constructor from the parent indices alone gets
    the family keys by default (no family graph)."""
    sparse = GraphHierarchy(branching=3, family_graph=True)(small_graph())
    h = GraphHierarchy(branching=3)(small_graph()).hierarchy
    stored = NestedSignal.from_hierarchy(h)
    plain = NestedSignal(x=torch.randn(10, 4, dtype=torch.float64),
                         edge_index=small_graph().edge_index,
                         leaf_parent_index=stored.leaf_parent_index,
                         cluster_parent_index=stored.cluster_parent_index,
                         num_clusters=stored.num_clusters)
    assert plain.family_ll_index.shape == (2, 0)
    assert not bool(plain.sparse_family.any())
    assert plain.num_leaves == 10
    for signals in ([plain, sparse], [sparse, plain]):
        batch = Batch.from_data_list(signals)
        assert_batch_attends_as_parts(batch, signals)


def _hand_built(x_later: bool = False, **kwargs) -> NestedSignal:
    r"""The example built by calling :class:`NestedSignal` with the parent
    indices, and ``x`` at construction or afterwards."""
    stored = example()
    x = torch.randn(EXAMPLE_LEAVES, 4, dtype=torch.float64)
    kwargs.setdefault('num_clusters', stored.num_clusters)
    out = NestedSignal(x=None if x_later else x,
                       leaf_parent_index=stored.leaf_parent_index,
                       cluster_parent_index=stored.cluster_parent_index,
                       **kwargs)
    if x_later:
        out.x = x
    return out


@pytest.mark.parametrize('num_clusters,error,pattern', [
    (3.0, TypeError, r"'num_clusters' must be an int, got 3\.0"),
    (True, TypeError, r"'num_clusters' must be an int, got True"),
    ('3', TypeError, r"'num_clusters' must be an int, got '3'"),
    (-1, ValueError, r"'num_clusters' must be an int in"),
    (torch.tensor([3]), TypeError, r"'num_clusters' must be an int or a 0-d "
     r"integer tensor .*shape \(1,\)"),
    (torch.tensor(3.0), TypeError, r"'num_clusters' must be an int or a 0-d "
     r"integer tensor"),
])
def test_hand_built_signal_refuses_a_bad_num_clusters(num_clusters, error,
                                                      pattern):
    r"""Named at construction: a float or a string was read later as a
    signal without defaults (a misleading missing key), and a [1] tensor
    as a dataset's collated store, which then did not batch."""
    with pytest.raises(error, match=pattern):
        _hand_built(num_clusters=num_clusters)


def test_hand_built_signal_stores_a_numpy_count_as_an_int():
    import numpy as np
    signal = _hand_built(num_clusters=np.int64(3))
    assert type(signal.num_clusters) is int
    assert_same_hierarchy(signal.hierarchy, example().hierarchy)


def test_a_saved_dataset_of_signals_loads_its_counts():
    r"""InMemoryDataset.load builds its collated store with the [B] counts
    as num_clusters: still a valid argument there."""
    from torch_geometric.data import InMemoryDataset
    signals = [example(), example()]
    collated, _ = InMemoryDataset.collate(signals)
    loaded = NestedSignal.from_dict(collated.to_dict())
    assert loaded.num_clusters.tolist() == [s.num_clusters for s in signals]


@pytest.mark.parametrize('build', [
    lambda: _hand_built(x_later=True),
    lambda: _hand_built(num_clusters=torch.tensor(3)),
    lambda: _hand_built(num_clusters=torch.tensor(3, dtype=torch.int32)),
], ids=['x_later', 'tensor_num_clusters', 'int32_num_clusters'])
def test_hand_built_signal_batches_with_any_other(build):
    graph = graph_signal(family=True)
    signal = build()
    other = NestedSignal.from_hierarchy(graph.hierarchy, graph.x)
    assert signal.num_clusters == 3 and type(signal.num_clusters) is int
    assert signal.num_leaves == EXAMPLE_LEAVES
    assert signal.leaf_index.tolist() == list(range(EXAMPLE_LEAVES))
    for signals in ([signal, other], [other, signal], [signal, signal]):
        batch = Batch.from_data_list(signals)
        assert_batch_attends_as_parts(batch, signals)
        for part, back in zip(signals, batch.to_data_list()):
            assert_same_hierarchy(back.hierarchy, part.hierarchy)


def test_num_nodes_set_later_gives_the_leaves():
    stored = example(x=False)
    signal = NestedSignal(leaf_parent_index=stored.leaf_parent_index,
                          cluster_parent_index=stored.cluster_parent_index,
                          num_clusters=3)
    assert 'num_leaves' not in signal  # no leaves yet
    signal.num_nodes = EXAMPLE_LEAVES
    assert signal.num_leaves == EXAMPLE_LEAVES
    batch = Batch.from_data_list([stored, signal])
    assert_same_hierarchy(batch.to_data_list()[1].hierarchy,
                          stored.hierarchy)


def test_unbatched_signals_batch_with_fresh_ones():
    r"""Separating a batch gives counts as ints, as a fresh signal has."""
    fresh = example()
    back = Batch.from_data_list([fresh, fresh]).to_data_list()[0]
    assert type(back.num_clusters) is int and type(back.num_leaves) is int
    for signals in ([back, fresh], [fresh, back]):
        assert_batch_attends_as_parts(Batch.from_data_list(signals),
                                      signals)


def test_empty_family_graph_is_not_dense():
    r"""An empty family graph (only self pairs) differs from none; the flag
    keeps them apart in a batch."""
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    lonely = NestedSignal.from_hierarchy(
        h.with_family_graph(torch.empty(2, 0, dtype=torch.long)))
    dense = NestedSignal.from_hierarchy(h)
    assert lonely.sparse_family.tolist() == [True] * 3
    for signals in ([lonely, dense], [dense, lonely]):
        assert_batch_attends_as_parts(Batch.from_data_list(signals), signals)


# Subgraphs ##################################################################


def family_signal(f: Forest, family: bool, seed: int) -> NestedSignal:
    r"""A signal on ``f`` with random leaf edges, edge features and (if
    ``family``) a random family graph."""
    g = torch.Generator().manual_seed(seed)
    n = f.num_leaves
    h = Hierarchy.from_parent(f.parent, n, random_pairs(f.parent, g)
                              if family else None)
    edge_index = torch.randint(0, n, (2, 2 * n), generator=g)
    return NestedSignal.from_hierarchy(
        h, torch.randn(n, 3, dtype=torch.float64, generator=g),
        edge_index=edge_index, edge_attr=torch.randn(2 * n, 2, generator=g),
        y=torch.ones(1))


def expected_induced(data: NestedSignal, f: Forest,
                     keep: List[int]) -> Hierarchy:
    r"""The induced tree built from scratch from the parent list."""
    forest, new = induced_forest(f, keep)
    edges = data.hierarchy.family_edge_index
    if edges is not None:
        edges = torch.tensor([(new[a], new[b]) for a, b in edges.t().tolist()
                              if a in new and b in new],
                             dtype=torch.long).view(-1, 2).t()
    return Hierarchy.from_parent(forest.parent, forest.num_leaves, edges)


def check_subgraph(data: NestedSignal, f: Forest, keep: List[int], subset):
    sub = data.subgraph(subset)
    expected = expected_induced(data, f, keep)
    assert isinstance(sub, NestedSignal)
    assert sub.hierarchy.parent.tolist() == expected.parent.tolist()
    assert torch.equal(sub.x, data.x[keep])
    edge_index, edge_attr = pyg_subgraph(subset, data.edge_index,
                                         data.get('edge_attr'),
                                         relabel_nodes=True,
                                         num_nodes=data.num_nodes)
    assert torch.equal(sub.edge_index, edge_index)
    if edge_attr is not None:
        assert torch.equal(sub.edge_attr, edge_attr)
    assert sub.num_leaves == len(keep)
    assert sub.leaf_index.tolist() == list(range(len(keep)))
    qkv = random_qkv(data.num_nodes)[:, keep]
    torch.testing.assert_close(attention(sub.hierarchy, qkv),
                               attention(expected, qkv), rtol=0, atol=EXACT)
    # It goes on being a signal: it batches with the original.
    Batch.from_data_list([sub, data]).hierarchy


@fewer(2)
@given(forests(max_leaves=12), st.booleans(), st.booleans(), st.data())
def test_subgraph_is_the_induced_signal(f, family, as_mask, data):
    n = f.num_leaves
    signal = family_signal(f, family, data.draw(SEEDS))
    keep = data.draw(st.lists(st.integers(0, n - 1), min_size=1,
                              unique=True))
    if as_mask:
        keep = sorted(keep)
        subset = torch.zeros(n, dtype=torch.bool)
        subset[keep] = True
    else:
        subset = torch.tensor(keep)
    check_subgraph(signal, f, keep, subset)


def test_subgraph_example_does_not_rewire():
    r"""Leaves 1 and 2 of the example: before, the index tensors were
    selected as node attributes (5 columns = 5 nodes) and gave a different
    tree."""
    data = example(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]))
    data.leaf_parent_index = torch.cat(
        [data.leaf_parent_index, torch.tensor([[4], [2]])], dim=1)
    data.num_clusters = data.num_clusters  # leaf 4 is now under cluster 2
    f = Forest([5, 5, 7, 6, 7, 7, 7, -1], 5)
    assert data.hierarchy.parent.tolist() == f.parent
    check_subgraph(data, f, [1, 2], torch.tensor([1, 2]))
    check_subgraph(data, f, [4, 0, 3], torch.tensor([4, 0, 3]))


def test_subgraph_of_a_mixed_batch_keeps_each_family():
    dense = GraphHierarchy(branching=3)(small_graph())
    sparse = GraphHierarchy(branching=3, family_graph=True)(small_graph())
    batch = Batch.from_data_list([dense, sparse])
    keep = [0, 1, 2, 4, 7, 8, 10, 11, 12, 15, 19]
    f = Forest(batch.hierarchy.parent.tolist(), 20)
    sub = batch.subgraph(torch.tensor(keep))
    expected = expected_induced(batch, f, keep)
    qkv = random_qkv(20)[:, keep]
    torch.testing.assert_close(attention(sub.hierarchy, qkv),
                               attention(expected, qkv), rtol=0, atol=EXACT)
    # Dense families stay flagged dense, with no pairs stored for them.
    m = sub.hierarchy.num_clusters
    assert sub.sparse_family.shape == (m, ) and bool(sub.sparse_family.any())
    assert not bool(sub.sparse_family.all())


def _signals_with_clusters() -> List[NestedSignal]:
    r"""Signals with per-cluster attributes: rows numbered as the
    clusters, and a list."""
    out = []
    for i, n in enumerate([6, 8, 7]):
        data = GraphHierarchy(branching=2, family_graph=i == 1)(
            small_graph(n))
        m = data.num_clusters
        data.cluster_id = torch.arange(100 * i, 100 * i + m)
        data.cluster_pos = torch.arange(2 * m).view(m, 2) + 100 * i
        out.append(data)
    return out


def _check_batch_subgraph(batch, signals, parts):
    r"""``batch.subgraph`` is the batch of each signal's subgraph."""
    subset = torch.cat([part + int(batch.ptr[i])
                        for i, part in enumerate(parts)])
    for chosen in (subset, _mask(subset, batch.num_nodes)):
        if chosen.dtype == torch.bool and not bool(
                (subset.diff() > 0).all()):
            continue  # a mask keeps the leaves in increasing order
        sub = batch.subgraph(chosen)
        expected = [s.subgraph(p) for s, p in zip(signals, parts)]
        assert isinstance(sub, Batch) and sub.num_graphs == len(signals)
        assert sub.ptr.tolist() == [0] + torch.tensor(
            [p.numel() for p in parts]).cumsum(0).tolist()
        assert_batch_attends_as_parts(sub, expected)
        assert torch.equal(sub.x, batch.x[subset])
        for back, exp in zip(sub.to_data_list(), expected):
            assert_same_hierarchy(back.hierarchy, exp.hierarchy)
            for key in ('x', 'edge_index', 'cluster_id',
                        'cluster_pos', 'sparse_family'):
                assert torch.equal(back[key], exp[key]), key


def _mask(ids: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[ids] = True
    return mask


def test_subgraph_of_a_batch_subgraphs_each_signal():
    signals = _signals_with_clusters()
    batch = Batch.from_data_list(signals)
    _check_batch_subgraph(batch, signals, [
        torch.tensor([1, 2, 4]), torch.tensor([6, 0, 3]),
        torch.tensor([2])])
    _check_batch_subgraph(batch, signals, [
        torch.arange(6), torch.tensor([0, 1, 5]), torch.tensor([0, 3])])


def test_subgraph_of_a_batch_follows_the_batch_keys():
    signals = _signals_with_clusters()
    batch = Batch.from_data_list(signals, follow_batch=['cluster_id'])
    sub = batch.subgraph(torch.tensor([0, 1, 7, 8, 15, 17]))
    assert sub.cluster_id_batch.tolist() == [
        i for i, d in enumerate(sub.to_data_list())
        for _ in range(d.num_clusters)]
    batch.extra = torch.ones(3)
    with pytest.raises(ValueError, match="'extra' was set on this batch "
                       "after batching"):
        batch.subgraph(torch.tensor([0, 1, 7, 8, 15, 17]))


def test_follow_batch_keys_are_not_per_cluster_attributes():
    r"""follow_batch adds 'cluster_id_batch' (a row per cluster) and
    'cluster_id_ptr' (one per signal, plus one): they describe the batch,
    not the clusters, and the tree is read past them."""
    signals = _signals_with_clusters()
    loader = DataLoader(signals, batch_size=3, follow_batch=['cluster_id'])
    batch = next(iter(loader))
    assert 'cluster_id_ptr' in batch.keys()
    expected = Hierarchy.batch([s.hierarchy for s in signals])
    assert_same_hierarchy(batch.hierarchy, expected)
    # A key of that name set on a signal is its own: checked.
    data = signals[0].clone()
    data.cluster_id_ptr = torch.zeros(data.num_clusters + 1)
    with pytest.raises(ValueError, match="'cluster_id_ptr' has"):
        data.hierarchy


@pytest.mark.parametrize('subset,pattern', [
    (torch.tensor([7, 0, 15]), r"subset\[1\] = 0 is a node of signal 0 of "
     r"this batch, after one of signal 1"),
    (torch.tensor([0, 1, 15]), "keeps no leaf of signal 1 of this batch"),
    (torch.tensor([True] * 6 + [False] * 15),
     "keeps no leaf of signal 1 of this batch"),
])
def test_subgraph_of_a_batch_bad_subsets(subset, pattern):
    batch = Batch.from_data_list(_signals_with_clusters())
    with pytest.raises(ValueError, match=pattern):
        batch.subgraph(subset)


def test_a_list_of_cluster_rows_in_a_batch_is_refused():
    r"""PyG batches a list as the list of the signals' lists: with one
    cluster per signal it even has a row per cluster of the batch, each
    the wrong one. The signals keep their lists."""
    h = Hierarchy.from_parent([2, 2, -1], 2)
    signals = [NestedSignal.from_hierarchy(h, torch.randn(2, 3),
                                           cluster_names=[name])
               for name in ('a', 'b')]
    batch = Batch.from_data_list(signals)
    assert batch.cluster_names == [['a'], ['b']]
    with pytest.raises(ValueError, match="'cluster_names' is a list, which "
                       "PyG batches as the list of the signals' lists.*as "
                       r"a tensor \[2, \*\]"):
        batch.hierarchy
    assert [d.cluster_names for d in batch.to_data_list()] == [['a'], ['b']]
    assert signals[0].subgraph(torch.tensor([1])).cluster_names == ['a']


def test_subgraph_selects_per_cluster_rows():
    r"""Rows of ``cluster_*`` keys follow the kept clusters, both when
    there are fewer clusters than leaves and when there are as many (PyG's
    size rule took them for node attributes)."""
    data = GraphHierarchy(branching=2)(small_graph())
    n, m = data.num_nodes, data.num_clusters
    assert m < n
    data.cluster_id = torch.arange(m)
    data.cluster_names = [f'c{c}' for c in range(m)]
    assert not data.is_node_attr('cluster_id')
    assert not data.is_edge_attr('cluster_id')
    for keep in (torch.tensor([0, 1]), torch.tensor([9, 0, 7])):
        sub = data.subgraph(keep)
        _, node_map = induced_hierarchy(data.hierarchy, keep,
                                        return_node_map=True)
        kept = (node_map[n:] >= 0).nonzero().view(-1)
        assert sub.cluster_id.tolist() == kept.tolist()
        assert sub.cluster_names == [f'c{c}' for c in kept.tolist()]
        assert sub.cluster_id.numel() == sub.hierarchy.num_clusters
    # As many clusters as leaves; the component {0, 1} keeps clusters 0
    # (their parent) and 2 (the root).
    f = Forest([3, 3, 4, 5, 5, -1], 3)
    data = NestedSignal.from_hierarchy(
        build(f), torch.randn(3, 2), edge_index=torch.tensor([[0, 1],
                                                              [1, 0]]),
        cluster_id=torch.arange(3))
    sub = T.LargestConnectedComponents()(data)
    assert sub.cluster_id.tolist() == [0, 2]


@pytest.mark.parametrize('value,error,pattern', [
    (torch.arange(4), ValueError, "'cluster_id' has 4 rows but the "
     "hierarchy has 3 clusters"),
    (torch.tensor(1), TypeError, "'cluster_id' is a 0-d tensor"),
    ('a', TypeError, "'cluster_id' is a str"),
])
def test_subgraph_bad_per_cluster_rows(value, error, pattern):
    with pytest.raises(error, match=pattern):
        example(cluster_id=value)
    data = example()
    data.cluster_id = value  # set after the signal was built
    with pytest.raises(error, match=pattern):
        data.subgraph(torch.tensor([0, 1]))


def test_edge_subgraph_keeps_the_hierarchy():
    # 4 leaf edges, as many as leaf_parent_index has columns: before, the
    # index tensors were selected as edge attributes.
    data = example(edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]]),
                   edge_attr=torch.randn(4, 2))
    sub = data.edge_subgraph(torch.tensor([1, 3]))
    assert sub.hierarchy.parent.tolist() == EXAMPLE_PARENT
    assert sub.edge_index.tolist() == [[1, 3], [2, 0]]
    assert torch.equal(sub.edge_attr, data.edge_attr[[1, 3]])


# PyG operations on the nodes ################################################


def graph_signal(family: bool = False) -> NestedSignal:
    return GraphHierarchy(branching=3, family_graph=family)(small_graph())


@pytest.mark.parametrize('family', [False, True])
@pytest.mark.parametrize('nodes', [[2, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7, 8],
                                   list(range(10))[::-1], [3]])
def test_node_filtering_raises(family, nodes):
    r"""NeighborLoader's filtering (a subset, or all nodes reordered)."""
    data = graph_signal(family)
    data.hierarchy
    empty = torch.empty(0, dtype=torch.long)
    out = filter_data(data, torch.tensor(nodes), empty, empty, empty)
    with pytest.raises(ValueError, match='changed the nodes without the '
                       'tree; use NestedSignal.subgraph'):
        out.hierarchy
    # The tree itself went through unchanged.
    for key in ('leaf_parent_index', 'cluster_parent_index',
                'family_ll_index', 'sparse_family'):
        assert torch.equal(out[key], data[key])


def test_remove_isolated_nodes_raises():
    data = graph_signal()
    data.edge_index = data.edge_index[:, 2:]  # node 0 loses its edges
    data.edge_index = data.edge_index[:, data.edge_index.min(0).values > 0]
    out = T.RemoveIsolatedNodes()(copy.copy(data))
    assert out.num_nodes < 10
    with pytest.raises(ValueError, match='but its hierarchy has 10 leaves: '
                       'a PyG operation'):
        out.hierarchy


@pytest.mark.parametrize('with_num_nodes', [False, True])
def test_virtual_node_raises(with_num_nodes):
    data = graph_signal(family=True)
    if not with_num_nodes:
        del data.num_nodes
    out = T.VirtualNode()(copy.copy(data))
    with pytest.raises(ValueError, match='has 11 nodes .* but its hierarchy '
                       'has 10 leaves'):
        out.hierarchy


@pytest.mark.parametrize('family', [False, True])
def test_largest_connected_components_induces_the_tree(family):
    data = graph_signal(family)
    out = T.LargestConnectedComponents()(data)
    keep = list(range(6))  # the larger path
    assert out.num_nodes == 6
    f = Forest(data.hierarchy.parent.tolist(), 10)
    expected = expected_induced(data, f, keep)
    assert out.hierarchy.parent.tolist() == expected.parent.tolist()
    qkv = random_qkv(10)[:, keep]
    torch.testing.assert_close(attention(out.hierarchy, qkv),
                               attention(expected, qkv), rtol=0, atol=EXACT)


# Rows of x ##################################################################


@pytest.mark.parametrize('rows', [4, 6, 10])
@pytest.mark.parametrize('num_nodes_stored', [False, True])
def test_x_rows_must_match_the_leaves(rows, num_nodes_stored):
    data = example()
    if num_nodes_stored:
        data.num_nodes = EXAMPLE_LEAVES
    data.hierarchy
    data.x = torch.randn(rows, 3)
    with pytest.raises(ValueError, match='hierarchy has 5 leaves'):
        data.hierarchy


def test_x_rows_checked_in_a_batch():
    r"""One signal a row too many, the next a row too few: the batch has
    the right total, but its rows no longer line up with the leaves."""
    a, b = example(), example()
    a.x = torch.randn(6, 3)
    b.x = torch.randn(4, 3)
    batch = Batch.from_data_list([a, b])
    assert batch.num_nodes == 2 * EXAMPLE_LEAVES
    with pytest.raises(ValueError, match='leaf_index'):
        batch.hierarchy


# Saving and loading #########################################################


def built_signals() -> List[NestedSignal]:
    g = torch.Generator().manual_seed(5)
    seq = SequenceHierarchy([2, 2])(
        Data(x=torch.randn(7, 4, dtype=torch.float64, generator=g),
             edge_index=torch.tensor([[0, 6], [6, 0]])))
    return [seq, graph_signal(), graph_signal(family=True)]


def assert_same_signal(a: NestedSignal, b: NestedSignal):
    assert sorted(a.keys()) == sorted(b.keys())
    ha, hb = a.hierarchy, b.hierarchy
    assert ha.parent.tolist() == hb.parent.tolist()
    assert (ha.family_edge_index is None) == (hb.family_edge_index is None)
    if ha.family_edge_index is not None:
        assert torch.equal(ha.family_edge_index, hb.family_edge_index)
    qkv = random_qkv(a.num_nodes)
    torch.testing.assert_close(attention(ha, qkv), attention(hb, qkv),
                               rtol=0, atol=0)


def test_save_and_load_with_weights_only(tmp_path):
    for i, data in enumerate(built_signals()):
        data.hierarchy  # cached: it must not be saved
        data.subgraph(torch.arange(3))  # so is PyG's cache of node keys
        path = tmp_path / f'{i}.pt'
        torch.save(data, path)
        loaded = torch.load(path, weights_only=True)
        assert type(loaded) is NestedSignal
        assert_same_signal(loaded, data)


def test_save_and_load_a_batch():
    signals = built_signals()
    batch = Batch.from_data_list(signals)
    batch.hierarchy
    # PyG batches do not load with weights_only=True (a PyG limit), but the
    # cached hierarchy is not pickled either way.
    blob = pickle.dumps(batch)
    assert b'hsa_geo.data.hierarchy' not in blob
    buffer = io.BytesIO()
    torch.save(batch, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert_same_signal(loaded, batch)
    for part, original in zip(loaded.to_data_list(), signals):
        assert_same_signal(part, original)


def test_copies_keep_working():
    for data in built_signals():
        data.hierarchy
        for other in (copy.copy(data), copy.deepcopy(data), data.clone()):
            assert_same_signal(other, data)


# Bad input ##################################################################

H5 = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)


@pytest.mark.parametrize('call,error,pattern', [
    (lambda: NestedSignal.from_hierarchy(H5, [1, 2, 3, 4, 5]), TypeError,
     "'x' must be a tensor with one row per leaf"),
    (lambda: NestedSignal.from_hierarchy(H5, torch.tensor(1.0)), ValueError,
     'x has no rows but the hierarchy has 5 leaves'),
    (lambda: NestedSignal.from_hierarchy(EXAMPLE_PARENT), TypeError,
     "'hierarchy' must be a Hierarchy, got list"),
    (lambda: NestedSignal.from_hierarchy(
        H5, leaf_parent_index=torch.zeros(2, 0, dtype=torch.long)),
     ValueError, "'leaf_parent_index' is derived from the hierarchy"),
    (lambda: NestedSignal.from_hierarchy(H5, num_nodes=3), ValueError,
     'num_nodes=3 but the hierarchy has 5 leaves'),
    (lambda: NestedSignal.from_data({'x': torch.randn(5, 2)}, H5),
     TypeError, "'data' must be a torch_geometric Data, got dict"),
    (lambda: NestedSignal.from_data(Data(x=torch.randn(5, 2)), 'tree'),
     TypeError, "'hierarchy' must be a Hierarchy, got str"),
    (lambda: NestedSignal.from_data(Data(x=torch.randn(4, 2)), H5),
     ValueError, 'data has 4 nodes but the hierarchy has 5 leaves'),
    (lambda: example().subgraph([0, 1]), TypeError,
     "'subset' must be a tensor"),
    (lambda: example().subgraph(torch.tensor([0.0, 1.0])), TypeError,
     "'subset' must have an integer dtype"),
    (lambda: example().subgraph(torch.tensor([1, 1])), ValueError,
     'lists leaf 1 2 times'),
    (lambda: example().subgraph(torch.tensor([5])), ValueError,
     r'subset\[0\] = 5 is not a leaf id \(0\.\.4\)'),
    (lambda: example().subgraph(torch.zeros(0, dtype=torch.long)),
     ValueError, 'keeps no leaf'),
])
def test_entry_points_refuse_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize('changes,error,pattern', [
    (dict(num_clusters=2.5), TypeError, "'num_clusters' must be an int"),
    (dict(num_clusters=-1), ValueError, "'num_clusters' must be an int in"),
    (dict(num_clusters=torch.tensor([1.5])), TypeError,
     "'num_clusters' must be an int"),
    (dict(num_leaves='5'), TypeError, "'num_leaves' must be an int"),
    (dict(num_nodes=6), ValueError, r'has 6 nodes \(num_nodes\) but its '
     r'hierarchy has 5 leaves'),
    (dict(sparse_family=torch.zeros(3, dtype=torch.long)), TypeError,
     "'sparse_family' must be a bool tensor"),
    (dict(sparse_family=torch.zeros(2, dtype=torch.bool)), ValueError,
     r"'sparse_family' must have shape \[3\]"),
    (dict(leaf_index=torch.arange(5.0)), TypeError,
     "'leaf_index' must have an integer dtype"),
    (dict(leaf_index=torch.tensor([0, 1, 2, 4, 3])), ValueError,
     r'leaf_index\[3\] is 4, not 3: the nodes were dropped, added or '
     r'reordered'),
    (dict(family_ll_index=torch.zeros(2, 1, dtype=torch.bool)), TypeError,
     "'family_ll_index' must have an integer dtype"),
    (dict(family_cc_index=torch.zeros(3, 1, dtype=torch.long)), ValueError,
     r"'family_cc_index' must have shape \[2, E\]"),
    (dict(sparse_family=torch.ones(3, dtype=torch.bool),
          family_ll_index=torch.tensor([[0], [7]])), ValueError,
     r'family_ll_index\[1, 0\] = 7 is not a valid leaf id \(0\.\.4\)'),
    (dict(family_lc_index=torch.tensor([[2], [1]])), ValueError,
     r"family_lc_index\[:, 0\] is a pair in the family of cluster 2, which "
     r"'sparse_family' marks dense"),
    (dict(sparse_family=torch.ones(3, dtype=torch.bool),
          family_ll_index=torch.tensor([[0], [2]])), ValueError,
     'is not a pair of siblings'),
])
def test_malformed_stored_keys(changes, error, pattern):
    with pytest.raises(error, match=pattern):
        _corrupt(**changes).hierarchy


# Property suite: a clear error or the right answer ##########################

MODES = st.sampled_from(['dense', 'sparse', 'empty', 'constructor',
                         'legacy'])


def mode_signal(f: Forest, mode: str, g: torch.Generator) -> NestedSignal:
    r"""A signal on ``f`` made in one of the ways a user may make one."""
    n = f.num_leaves
    x = torch.randn(n, 3, dtype=torch.float64, generator=g)
    edges = {'sparse': random_pairs(f.parent, g),
             'empty': torch.empty(2, 0, dtype=torch.long)}.get(mode)
    h = Hierarchy.from_parent(f.parent, n, edges)
    if mode in ('dense', 'sparse', 'empty'):
        return NestedSignal.from_hierarchy(h, x)
    keys = {k: v for k, v in NestedSignal.from_hierarchy(
        h.with_family_graph(random_pairs(f.parent, g))).to_dict().items()
        if k in ('leaf_parent_index', 'cluster_parent_index',
                 'num_clusters') or (mode == 'legacy' and 'family' in k and
                                     k != 'sparse_family')}
    # 'legacy': the family keys without flags, as earlier versions stored
    # them (every family sparse).
    return NestedSignal(x=x, **keys)


@fewer(2)
@given(st.lists(st.tuples(forests(max_leaves=8), MODES), min_size=1,
                max_size=5), st.integers(1, 5), SEEDS)
def test_mixed_batches_equal_each_signal_alone(items, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    signals = [mode_signal(f, mode, g) for f, mode in items]
    for i, s in enumerate(signals):
        s.idx = i
    for batch in DataLoader(signals, batch_size=batch_size):
        parts = [signals[i] for i in batch.idx.tolist()]
        assert_batch_attends_as_parts(batch, parts, seed)


@given(forests(max_leaves=10), st.booleans(), st.data(),
       st.sampled_from([torch.long, torch.int32, torch.float32, torch.bool]),
       SEEDS)
def test_subgraph_any_subset(f, family, draw, dtype, seed):
    r"""Subsets of any kind (permutations, repeats, out of range, empty,
    full, masks of any size, float): a clear error or the induced
    signal."""
    n = f.num_leaves
    values = draw.draw(subset_values(n), 'values')
    data = family_signal(f, family, seed)
    if dtype == torch.bool:
        subset = torch.tensor([v % 2 == 0 for v in values], dtype=torch.bool)
        keep = subset.nonzero().view(-1).tolist()
        valid = len(values) == n and len(keep) > 0
    else:
        subset, keep = torch.tensor(values, dtype=dtype), values
        valid = dtype != torch.float32 and len(values) > 0 and \
            len(set(values)) == len(values) and \
            all(0 <= v < n for v in values)
    if not valid:
        with pytest.raises((ValueError, TypeError)):
            data.subgraph(subset)
        return
    check_subgraph(data, f, keep, subset)


def plain_decode(data: NestedSignal) -> Optional[Tuple[List[int], Any]]:
    r"""The parent list and family pairs (a set; :obj:`None`: dense) that
    the stored keys describe, decoded in plain Python; :obj:`None` if they
    describe no valid tree over the nodes."""
    s = data.to_dict()
    n, m = s['num_leaves'], s['num_clusters']
    rows = s['x'].size(0) if 'x' in s else s['num_nodes']
    keys = ('leaf_parent_index', 'cluster_parent_index', 'leaf_index',
            *FAMILY)
    if rows != n or m < 0 or any(s[k].dtype in (torch.bool, torch.float32)
                                 for k in keys):
        return None
    if s['leaf_index'].tolist() != list(range(n)):
        return None
    parent = [-1] * (n + m)
    for key, size, offset in (('leaf_parent_index', n, 0),
                              ('cluster_parent_index', m, n)):
        for child, par in s[key].t().tolist():
            if not (0 <= child < size and 0 <= par < m) or \
                    parent[child + offset] != -1:
                return None
            parent[child + offset] = par + n
    if set(range(n, n + m)) - set(parent):
        return None  # a cluster without children
    for node in range(n + m):
        if len(ancestors_or_cycle(parent, node)) == 0:
            return None
    flags = s['sparse_family']
    if flags.dtype != torch.bool or flags.shape != (m, ):
        return None
    flags, pairs = flags.tolist(), set()
    for key, (ca, cb) in FAMILY.items():
        for a, b in s[key].t().tolist():
            if not (0 <= a < (m if ca else n) and 0 <= b < (m if cb else n)):
                return None
            a, b = a + (n if ca else 0), b + (n if cb else 0)
            if parent[a] < 0 or parent[a] != parent[b] or a == b or \
                    not flags[parent[a] - n]:
                return None
            pairs.add((a, b))
    if not any(flags):
        return parent, None
    for c, kids in children_of(parent).items():
        if not flags[c - n]:
            pairs |= {(a, b) for a in kids for b in kids if a != b}
    return parent, pairs


FAMILY = {'family_ll_index': (False, False), 'family_lc_index': (False, True),
          'family_cl_index': (True, False), 'family_cc_index': (True, True)}


def ancestors_or_cycle(parent: List[int], node: int) -> List[int]:
    r"""``node`` and its ancestors; empty if the path runs into a cycle."""
    path, seen = [node], {node}
    while parent[path[-1]] >= 0:
        path.append(parent[path[-1]])
        if path[-1] in seen:
            return []
        seen.add(path[-1])
    return path


MUTABLE = ('leaf_parent_index', 'cluster_parent_index', 'leaf_index',
           'sparse_family', *FAMILY)


@st.composite
def mutations(draw, data: NestedSignal):
    r"""One change to a signal whose hierarchy was read: a value set in
    place, a key replaced with another dtype, a count or ``x`` changed."""
    kind = draw(st.sampled_from(['in_place', 'in_place', 'in_place',
                                 'dtype', 'count', 'x']))
    if kind == 'count':
        key = draw(st.sampled_from(['num_clusters', 'num_leaves']))
        return key, data[key] + draw(st.sampled_from([-1, 1]))
    if kind == 'x':
        rows = data.num_nodes + draw(st.sampled_from([-1, 1]))
        return 'x', torch.randn(max(rows, 0), 3, dtype=torch.float64)
    keys = [k for k in MUTABLE if data[k].numel() > 0]
    key = draw(st.sampled_from(keys))
    value = data[key]
    if kind == 'dtype':
        dtype = draw(st.sampled_from([torch.int32, torch.float32,
                                      torch.bool]))
        return key, value.to(dtype)
    pos = draw(st.integers(0, value.numel() - 1))
    if value.dtype == torch.bool:
        new = not bool(value.view(-1)[pos])
    else:
        new = draw(st.integers(-2, data.num_nodes + data.num_clusters + 1))
    return key, (pos, new)


@given(forests(max_leaves=8), MODES, SEEDS, st.data())
def test_mutation_after_caching_is_never_silent(f, mode, seed, draws):
    r"""After any change to the stored keys, ``.hierarchy`` is the tree the
    keys now describe (decoded in plain Python), or a clear error: never
    the cached tree of before."""
    data = mode_signal(f, mode, torch.Generator().manual_seed(seed))
    data.hierarchy
    key, change = draws.draw(mutations(data))
    if isinstance(change, tuple):  # in place: the same tensor object
        data[key].view(-1)[change[0]] = change[1]
    else:
        data[key] = change
    expected = plain_decode(data)
    if expected is None:
        with pytest.raises((ValueError, TypeError)):
            data.hierarchy
        return
    parent, pairs = expected
    h = data.hierarchy
    assert h.parent.tolist() == parent
    if pairs is None:
        assert h.family_edge_index is None
    else:
        assert set(map(tuple, h.family_edge_index.t().tolist())) == pairs


def family_example() -> NestedSignal:
    r"""The example tree with a family graph (one pair in each family)."""
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES,
                              torch.tensor([[0, 2], [1, 6]]))
    return NestedSignal.from_hierarchy(h, torch.randn(EXAMPLE_LEAVES, 3))


@pytest.mark.parametrize('make', [example, family_example])
@pytest.mark.parametrize('key, match', [
    ('sparse_family', "no 'sparse_family'"),
    ('family_ll_index', 'lacks family_ll_index'),
    ('family_cc_index', 'lacks family_cc_index'),
    ('num_clusters', "no 'num_clusters'"),
])
def test_dropped_tree_key_raises(make, key, match):
    r"""A key of the tree dropped by the loader (or deleted) raises instead
    of decoding another attention: without 'sparse_family' every family
    would read as sparse with no pairs, without one family key its pairs
    would be lost."""
    signals = [make(), make()]
    loader = DataLoader(signals, batch_size=2, exclude_keys=[key])
    with pytest.raises(ValueError, match=match):
        next(iter(loader)).hierarchy
    data = make()
    del data[key]
    with pytest.raises(ValueError, match=match):
        data.hierarchy


def test_legacy_family_keys_mean_every_family_sparse():
    r"""Family keys given without 'sparse_family' (as earlier versions
    stored them) still mean every family sparse: the signal gets its flags
    when built, so the decoding never needs to guess."""
    keys = {k: v for k, v in family_example().to_dict().items()
            if k in ('leaf_parent_index', 'cluster_parent_index') or
            (k.startswith('family_') and k != 'sparse_family')}
    data = NestedSignal(x=torch.randn(EXAMPLE_LEAVES, 3),
                        num_clusters=torch.tensor(3), **keys)
    assert data.sparse_family.tolist() == [True] * 3
    assert data.hierarchy.family_edge_index.size(1) == \
        family_example().hierarchy.family_edge_index.size(1)


def test_cluster_attrs_need_a_row_per_cluster():
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    with pytest.raises(ValueError, match="'cluster_kind' has 2 rows but "
                       "the hierarchy has 3 clusters"):
        NestedSignal.from_hierarchy(h, cluster_kind=torch.arange(2))
    data = example(cluster_kind=torch.arange(3))
    data.cluster_kind = torch.arange(4)
    batch = Batch.from_data_list([data, example(cluster_kind=torch.arange(3))])
    with pytest.raises(ValueError, match="'cluster_kind' has 7 rows"):
        batch.hierarchy


def test_from_data_drops_the_replaced_trees_cluster_attrs():
    r"""A new tree over the same nodes does not inherit the per-cluster rows
    of the old one (same count or not); those of data without a tree are
    the new tree's."""
    old = example(cluster_pos=torch.arange(6).view(3, 2))
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, 7, 7, -1], EXAMPLE_LEAVES)
    new = NestedSignal.from_data(old, h)
    assert 'cluster_pos' not in new and torch.equal(new.x, old.x)
    plain = Data(x=old.x, cluster_pos=torch.zeros(3, 2))
    assert torch.equal(NestedSignal.from_data(plain, h).cluster_pos,
                       torch.zeros(3, 2))
    with pytest.raises(ValueError, match="'cluster_pos' has 2 rows"):
        NestedSignal.from_data(Data(x=old.x, cluster_pos=torch.zeros(2, 2)),
                               h)
    # Rows already made for the new tree (as a loader selects them) stay.
    kept = NestedSignal.from_data(old, h, cluster_attrs_of_new_tree=True)
    assert torch.equal(kept.cluster_pos, old.cluster_pos)
    with pytest.raises(TypeError, match="'cluster_attrs_of_new_tree'"):
        NestedSignal.from_data(old, h, cluster_attrs_of_new_tree=1)


def test_subgraph_keeps_edge_lists_with_their_edges():
    """With as many edges as nodes, PyG's Data.subgraph takes a list of one
    entry per edge for a node attribute (it goes by the length alone) and
    selects it by the kept nodes; a signal selects it by the kept edges."""
    src = torch.arange(16)
    ring = torch.stack([src, (src + 1) % 16])
    kinds = [f'bond {i}' for i in range(16)]
    data = Data(x=torch.randn(16, 2), edge_index=ring, edge_kind=kinds,
                edge_weight=src.float())
    h = Hierarchy.from_parent(torch.tensor([17, 16] * 8 + [-1, -1]), 16)
    signal = NestedSignal.from_data(data, h)
    sub = signal.subgraph(torch.arange(8))
    assert sub.edge_index.size(1) == 7  # the ring's edges among nodes 0-7
    assert sub.edge_kind == kinds[:7] and signal.edge_kind == kinds
    assert torch.equal(sub.edge_weight, src[:7].float())
    assert sub.x.size(0) == 8
