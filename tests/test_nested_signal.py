r"""Tests of :class:`hsa_geo.NestedSignal`: storing a :class:`Hierarchy` as
PyG data, the cached ``.hierarchy``, batching with
:class:`torch_geometric.loader.DataLoader`, and validation of the stored
index tensors."""
import copy

import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention
from strategies import fewer, Forest, forests

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
    h = data.hierarchy
    assert h is not old
    assert h.parent.tolist() == [5, 5, 7, 6, -1, 7, 7, 8, -1]
    # One more leaf, a root of its own: same index tensors, more rows.
    data.x = torch.randn(6, 3)
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
    with pytest.raises(ValueError, match='must be a Hierarchy'):
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
    (dict(x=torch.randn(3, 3)),  # leaves 3 and 4 no longer exist
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
    data = _corrupt(num_clusters=4)  # cluster 3 is nobody's parent
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
    with pytest.raises(ValueError, match=rf"'{key}' must be an integer tensor "
                       r'of shape \[2, \*\]'):
        _corrupt(**{key: value}).hierarchy


@pytest.mark.parametrize('key', ['leaf_parent_index', 'cluster_parent_index'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bool])
def test_wrong_dtypes(key, dtype):
    data = example()
    setattr(data, key, getattr(data, key).to(dtype))
    with pytest.raises(ValueError,
                       match=rf"'{key}' must be an integer tensor"):
        data.hierarchy


@pytest.mark.parametrize('dtype', [torch.int32, torch.int16])
def test_narrow_integer_dtypes_accepted(dtype):
    r"""The message says 'an integer tensor', and :class:`Hierarchy` accepts
    every integer dtype: so do the stored indices."""
    data = example()
    data.leaf_parent_index = data.leaf_parent_index.to(dtype)
    data.cluster_parent_index = data.cluster_parent_index.to(dtype)
    assert data.hierarchy.parent.tolist() == EXAMPLE_PARENT
