r"""Tests of :class:`hsa_geo.Hierarchy`: construction, derived data (checked
against plain-Python recomputation on random irregular forests), moving,
immutability, and every validation error with its message."""
import unittest.mock
from collections import Counter

import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention
import hsa_geo.data.hierarchy as hierarchy_module
from hsa_geo.data.hierarchy import distinct_sibling_pairs
from tests.helpers.strategies import (
    Forest, ancestors, assignment_lists, balanced_assignments, children_of,
    depth_of, forests, height_of, leaves_under, root_of)


def build(f: Forest) -> Hierarchy:
    return Hierarchy.from_parent(f.parent, f.num_leaves)


# A hand-checked example ####################################################
#
#          7           4        leaves 0..4; node 6 has a single child;
#       /  |  \                 leaf 4 is a tree on its own.
#      5   6   2
#     / \  |
#    0   1 3

EXAMPLE_PARENT = [5, 5, 7, 6, -1, 7, 7, -1]
EXAMPLE_LEAVES = 5


def test_example_derived_data():
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    assert h.parent.tolist() == EXAMPLE_PARENT
    assert h.parent.dtype == torch.long
    assert h.num_leaves == 5
    assert h.num_nodes == 8
    assert h.num_clusters == 3
    assert h.num_families == 3
    assert h.num_trees == 2
    assert h.max_branching == 3
    assert h.depth == 2
    assert h.node_depth.tolist() == [2, 2, 1, 2, 0, 1, 1, 0]
    assert h.node_height.tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    assert h.leaf_count.tolist() == [1, 1, 1, 1, 1, 2, 1, 4]
    assert [sorted(lv.tolist()) for lv in h.levels] == [
        [4, 7], [2, 5, 6], [0, 1, 3]]
    pairs = set(map(tuple, h.sibling_pairs.t().tolist()))
    fams = [[0, 1], [3], [2, 5, 6]]
    assert pairs == {(a, b) for c in fams for a in c for b in c}
    assert h.sibling_pairs.size(1) == 4 + 1 + 9
    assert h.device == torch.device('cpu')


def test_single_leaf_and_root_leaves():
    """A forest of leaves only is valid: no families, no pairs."""
    h = Hierarchy.from_parent([-1], 1)
    assert (h.num_leaves, h.num_nodes, h.num_trees) == (1, 1, 1)
    assert (h.depth, h.max_branching, h.num_families) == (0, 0, 0)
    assert h.sibling_pairs.shape == (2, 0)
    h = Hierarchy.from_parent(torch.full((4, ), -1), 4)
    assert h.num_trees == 4 and h.leaf_count.tolist() == [1, 1, 1, 1]
    assert h.family_buckets == [] or all(
        b.family.numel() == 0 for b in h.family_buckets)


@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.int16])
def test_integer_dtypes_accepted(dtype):
    h = Hierarchy.from_parent(torch.tensor(EXAMPLE_PARENT, dtype=dtype), 5)
    assert h.parent.dtype == torch.long
    assert h.parent.tolist() == EXAMPLE_PARENT


def test_constructor_equals_from_parent():
    a = Hierarchy(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    b = Hierarchy.from_parent(torch.tensor(EXAMPLE_PARENT), EXAMPLE_LEAVES)
    assert torch.equal(a.parent, b.parent)
    assert torch.equal(a.leaf_count, b.leaf_count)


# Derived data on random forests ############################################


@given(forests(max_leaves=30))
def test_derived_data_matches_python(f):
    """Every derived quantity equals a direct recomputation from the parent
    vector (ids are shuffled, so no order is assumed)."""
    h = build(f)
    kids = children_of(f.parent)
    depth = depth_of(f.parent)
    under = leaves_under(f.parent, f.num_leaves)

    assert h.parent.tolist() == f.parent
    assert h.num_leaves == f.num_leaves
    assert h.num_nodes == len(f.parent)
    assert h.num_clusters == len(f.parent) - f.num_leaves
    assert h.num_families == len(kids)
    assert h.num_trees == f.parent.count(-1)
    assert h.max_branching == max((len(c) for c in kids.values()), default=0)
    assert h.depth == max(depth)
    assert h.node_depth.tolist() == depth
    assert h.node_height.tolist() == height_of(f.parent, f.num_leaves)
    assert h.leaf_count.tolist() == [len(u) for u in under]

    levels = h.levels
    assert len(levels) == max(depth) + 1
    for d, lv in enumerate(levels):
        assert sorted(lv.tolist()) == [i for i, x in enumerate(depth)
                                       if x == d]


@given(forests(max_leaves=30, max_depth=8), st.booleans())
def test_derived_data_by_pointer_doubling(f, jumps):
    """Leaf counts, heights and the cluster levels of deep trees come from
    the pointer-doubling tables (forced here from depth 1 on, or never);
    entry j of the tables pairs every internal node with its 2^j-th
    ancestor, in increasing depth."""
    with unittest.mock.patch.object(hierarchy_module, 'DOUBLING_DEPTH',
                                    0 if jumps else 2**62):
        h = build(f)
        layout = h.layout
    n = f.num_leaves
    depth = depth_of(f.parent)
    assert h.node_height.tolist() == height_of(f.parent, n)
    assert h.leaf_count.tolist() == [
        len(u) for u in leaves_under(f.parent, n)]
    parent = [p - n if p >= 0 else -1 for p in f.parent[n:]]
    assert layout.cluster_parent.tolist() == parent
    assert len(layout.cluster_levels) == max(depth)
    for d, (child, par) in enumerate(layout.cluster_levels, 1):
        assert child.tolist() == [c for c in range(len(parent))
                                  if depth[n + c] == d]
        assert par.tolist() == [parent[c] for c in child.tolist()]
    # The clusters by depth, roots first, and where each level's parents
    # stand in that order.
    order = layout.cluster_order.tolist()
    assert order == sorted(range(len(parent)), key=lambda c: (depth[n + c],
                                                              c))
    assert len(layout.cluster_order_parents) == len(layout.cluster_levels)
    for at, (_, par) in zip(layout.cluster_order_parents,
                            layout.cluster_levels):
        assert [order[i] for i in at.tolist()] == par.tolist()
    if not jumps or max(depth) == 0:
        assert layout.cluster_jumps is None
        return
    paths = [ancestors(parent, c) for c in range(len(parent))]
    assert len(layout.cluster_jumps) == max(
        len(p) - 1 for p in paths).bit_length()
    for j, (node, up) in enumerate(layout.cluster_jumps):
        assert node.tolist() == sorted(
            (c for c, p in enumerate(paths) if len(p) > 2**j),
            key=lambda c: (depth[n + c], c))
        assert up.tolist() == [paths[c][2**j] for c in node.tolist()]


@given(forests(max_leaves=30))
def test_sibling_pairs_matches_python(f):
    """``sibling_pairs`` holds every ordered pair of children of a common
    parent (self pairs included) exactly once: P = sum_F |C(F)|^2."""
    h = build(f)
    pairs = h.sibling_pairs
    assert pairs.dtype == torch.long and pairs.dim() == 2
    assert pairs.size(0) == 2
    got = Counter(map(tuple, pairs.t().tolist()))
    expected = Counter((a, b) for c in children_of(f.parent).values()
                       for a in c for b in c)
    assert got == expected


@given(forests(max_leaves=30))
def test_adjacency_is_the_forest_parent_by_child(f):
    h = build(f)
    adjacency = h.adjacency
    assert adjacency.is_sparse and adjacency.is_coalesced()
    assert adjacency.shape == (f.num_nodes, f.num_nodes)
    expected = torch.zeros(f.num_nodes, f.num_nodes)
    for child, parent in enumerate(f.parent):
        if parent >= 0:
            expected[parent, child] = 1.0
    assert torch.equal(adjacency.to_dense(), expected)
    # A copy: changing it changes nothing the hierarchy holds.
    adjacency.values().fill_(2.0)
    assert torch.equal(h.adjacency.to_dense(), expected)


@given(forests(max_leaves=30))
def test_family_buckets_cover_every_family_once(f):
    """The padded family tables hold each family exactly once, with exactly
    its children in the real slots, and know whether all their parents are
    roots."""
    h = build(f)
    kids = children_of(f.parent)
    seen = {}
    for b in h.family_buckets:
        assert b.mask.shape == b.children.shape
        assert b.children.size(0) == b.family.numel()
        assert b.children.size(1) == b.width
        for row, fam in enumerate(b.family.tolist()):
            assert fam not in seen
            seen[fam] = sorted(b.children[row][b.mask[row]].tolist())
        assert b.parents_are_roots == all(
            f.parent[fam] < 0 for fam in b.family.tolist())
    assert seen == {k: sorted(v) for k, v in kids.items()}


@given(forests(max_leaves=30))
def test_bucket_ranges_are_exactly_the_consecutive_rows(f):
    """``source_range`` and ``parent_range`` (the views the dynamic program
    takes instead of gathers) are set exactly when the rows are
    consecutive, and then name them."""
    h = build(f)
    for b in h.family_buckets:
        rows = b.source_index.tolist()
        consecutive = bool(rows) and rows == list(
            range(rows[0], rows[0] + len(rows)))
        assert (b.source_range is not None) == consecutive
        if consecutive:
            assert b.source_range == (rows[0], rows[-1] + 1)
        fams = b.parent_cluster.tolist()
        assert fams == sorted(fams)
        if fams[-1] - fams[0] + 1 == len(fams):
            assert b.parent_range == (fams[0], fams[-1] + 1)
        else:
            assert b.parent_range is None


def test_balanced_tree_buckets_are_ranges():
    """Trees from assignments number each level in order: every table of
    a balanced tree is a view."""
    h = Hierarchy.from_assignments(balanced_assignments(64, 4))
    kinds = {b.kind: b for b in h.family_buckets}
    assert sorted(kinds) == ['cluster', 'leaf']
    assert kinds['leaf'].source_range == (0, 64)
    assert kinds['leaf'].parent_range == (0, 16)
    assert kinds['cluster'].source_range == (0, 20)  # all but the root
    assert kinds['cluster'].parent_range == (16, 21)


@given(st.lists(forests(max_leaves=10, max_trees=2), min_size=1, max_size=4))
def test_batch(parts):
    """Batching puts the leaves of all parts first, in order, then their
    internal nodes, and renumbers parents accordingly."""
    hs = [build(f) for f in parts]
    b = Hierarchy.batch(hs)
    n = sum(f.num_leaves for f in parts)
    leaf_off, clus_off, expected_leaf, expected_clus = 0, n, [], []
    for f in parts:
        m = f.num_leaves

        def new(p):
            if p < 0:
                return -1
            return p + leaf_off if p < m else p - m + clus_off

        expected_leaf += [new(p) for p in f.parent[:m]]
        expected_clus += [new(p) for p in f.parent[m:]]
        leaf_off += m
        clus_off += f.num_nodes - m
    assert b.num_leaves == n
    assert b.parent.tolist() == expected_leaf + expected_clus
    assert b.num_trees == sum(h.num_trees for h in hs)
    assert b.depth == max(h.depth for h in hs)
    assert b.max_branching == max(h.max_branching for h in hs)
    # Leaf counts are carried over part by part.
    assert b.leaf_count[:n].tolist() == [1] * n
    assert b.leaf_count[n:].tolist() == [
        x for h in hs for x in h.leaf_count[h.num_leaves:].tolist()]


def test_batch_of_one_is_identity():
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    assert Hierarchy.batch([h]).parent.tolist() == EXAMPLE_PARENT


def _python_parent_from_assignments(levels):
    parent, offset = [], 0
    for lvl, assign in enumerate(levels):
        nxt = offset + len(assign)
        parent += [a + nxt if a >= 0 else -1 for a in assign]
        offset = nxt
    last = levels[-1]
    num_roots = max(last) + 1 if last else 0
    return parent + [-1] * max(num_roots, 0)


def test_from_assignments_example_with_intermediate_roots():
    """-1 at any level makes a root: leaf 3 and level-1 cluster 1 are roots;
    the clusters of the last level are roots too."""
    levels = [[0, 0, 1, -1, 2], [0, -1, 0], [0]]
    h = Hierarchy.from_assignments(levels)
    # Leaves 0..4, level-1 clusters 5..7, level-2 cluster 8, level-3 cluster 9.
    assert h.parent.tolist() == [5, 5, 6, -1, 7, 8, -1, 8, 9, -1]
    assert h.num_leaves == 5
    assert h.num_trees == 3
    assert h.leaf_count.tolist() == [1, 1, 1, 1, 1, 2, 1, 1, 3, 3]


def test_from_assignments_tensors_and_pyg_style():
    """Tensors work as well as lists (as PyG pooling returns them)."""
    h = Hierarchy.from_assignments(
        [torch.tensor([1, 0, 1, 0]), torch.tensor([0, 0])])
    assert h.parent.tolist() == [5, 4, 5, 4, 6, 6, -1]


@given(assignment_lists())
def test_from_assignments_matches_python(levels):
    h = Hierarchy.from_assignments([torch.tensor(a, dtype=torch.long)
                                    for a in levels])
    assert h.parent.tolist() == _python_parent_from_assignments(levels)
    assert h.num_leaves == len(levels[0])


@given(forests(max_leaves=20))
def test_to_cpu(f):
    """``to`` returns a hierarchy with the same data on the target device."""
    h = build(f)
    for device in ('cpu', torch.device('cpu')):
        g = h.to(device)
        assert isinstance(g, Hierarchy)
        assert g.device == torch.device('cpu')
        assert g.parent.device == torch.device('cpu')
        assert g.parent.tolist() == f.parent
        assert g.num_leaves == h.num_leaves
        assert torch.equal(g.leaf_count, h.leaf_count)
        assert torch.equal(g.node_depth, h.node_depth)
        assert torch.equal(g.node_height, h.node_height)
        assert torch.equal(g.sibling_pairs, h.sibling_pairs)
        assert (g.num_trees, g.depth, g.max_branching) == (
            h.num_trees, h.depth, h.max_branching)


def test_repr():
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    r = repr(h)
    assert r.startswith('Hierarchy(')
    for part in ('num_leaves=5', 'num_nodes=8', 'num_trees=2', 'depth=2',
                 'max_branching=3'):
        assert part in r


PUBLIC_PROPERTIES = [
    'parent', 'num_leaves', 'num_nodes', 'num_clusters', 'num_families',
    'num_trees', 'max_branching', 'depth', 'node_depth', 'node_height',
    'leaf_count', 'levels', 'sibling_pairs', 'family_buckets', 'device'
]


@pytest.mark.parametrize('name', PUBLIC_PROPERTIES)
def test_properties_have_no_setters(name):
    """A hierarchy is immutable: derived data could silently go stale if a
    property could be assigned. Reading first makes cached values exist."""
    h = Hierarchy.from_parent(EXAMPLE_PARENT, EXAMPLE_LEAVES)
    getattr(h, name)
    with pytest.raises(AttributeError):
        setattr(h, name, getattr(h, name))


def test_does_not_alias_input_tensor():
    """Changing the caller's tensor afterwards must not change the
    hierarchy (its derived data would no longer match its parents)."""
    parent = torch.tensor(EXAMPLE_PARENT)
    h = Hierarchy.from_parent(parent, EXAMPLE_LEAVES)
    parent[6] = 5  # would make node 6 a child of 5
    assert h.parent.tolist() == EXAMPLE_PARENT


# Validation ################################################################


@pytest.mark.parametrize('parent,num_leaves,pattern', [
    # Self-loop: node 2 is its own parent.
    ([2, 2, 2], 2, r'cycle.*\b2 -> 2\b'),
    # 2-cycle between internal nodes 2 and 3.
    ([2, 2, 3, 2], 2, r'cycle.*(2 -> 3 -> 2|3 -> 2 -> 3)'),
    # A cycle no leaf reaches.
    ([2, 2, -1, 4, 3], 2, r'cycle'),
    # A longer cycle.
    ([2, 2, 3, 4, 2], 2, r'cycle'),
])
def test_cycles(parent, num_leaves, pattern):
    with pytest.raises(ValueError, match=pattern):
        Hierarchy.from_parent(parent, num_leaves)


@pytest.mark.parametrize('parent,pattern', [
    ([3, 3, -1], r'parent\[0\] = 3 is out of range for 3 nodes'),
    ([2, 2, 7], r'parent\[2\] = 7 is out of range'),
    ([2, -2, -1], r'parent\[1\] = -2 is out of range'),
    ([2, 2, -5], r'parent\[2\] = -5 is out of range'),
])
def test_parent_out_of_range(parent, pattern):
    with pytest.raises(ValueError, match=pattern):
        Hierarchy.from_parent(parent, 2)


def test_leaf_with_children():
    with pytest.raises(ValueError,
                       match=r'node 0 is a leaf .* parent of node 1'):
        Hierarchy.from_parent([2, 0, -1], 2)


@pytest.mark.parametrize('parent', [[2, 2, -1, -1], [2, 2, -1, 2]])
def test_internal_node_without_children(parent):
    with pytest.raises(ValueError, match=r'internal node 3 has no children'):
        Hierarchy.from_parent(parent, 2)


@pytest.mark.parametrize('value', [
    torch.tensor([2.0, 2.0, -1.0]),
    [2.0, 2.0, -1.0],
    torch.tensor([True, True, False]),
    [True, True, False],
    torch.tensor([2, 2, -1], dtype=torch.complex64),
])
def test_parent_non_integer_dtype(value):
    with pytest.raises(TypeError, match=r"'parent' must have an integer "
                       r"dtype"):
        Hierarchy.from_parent(value, 2)


def test_parent_not_1d():
    with pytest.raises(ValueError, match=r"'parent' must be 1-D"):
        Hierarchy.from_parent(torch.tensor([[2, 2, -1]]), 2)


def test_parent_not_a_sequence_of_ints():
    with pytest.raises(TypeError, match=r"'parent' must be"):
        Hierarchy.from_parent(['a', 'b'], 1)


@pytest.mark.parametrize('num_leaves', [4, 10])
def test_num_leaves_larger_than_parent(num_leaves):
    with pytest.raises(ValueError,
                       match=rf"'parent' has 3 entries but num_leaves="
                       rf"{num_leaves}"):
        Hierarchy.from_parent([2, 2, -1], num_leaves)


@pytest.mark.parametrize('num_leaves', [0, -1])
def test_num_leaves_not_positive(num_leaves):
    with pytest.raises(ValueError, match=r"'num_leaves' must be an int in "
                       r"\[1, inf\)"):
        Hierarchy.from_parent([2, 2, -1], num_leaves)


@pytest.mark.parametrize('num_leaves', [2.0, True, '2', None])
def test_num_leaves_not_an_int(num_leaves):
    with pytest.raises(TypeError, match=r"'num_leaves' must be an int"):
        Hierarchy.from_parent([2, 2, -1], num_leaves)


@pytest.mark.parametrize('num_leaves', [0, 1])
def test_empty_parent(num_leaves):
    """An empty parent vector has no leaf, whatever num_leaves says."""
    with pytest.raises(ValueError, match=r'num_leaves'):
        Hierarchy.from_parent([], num_leaves)
    with pytest.raises(ValueError, match=r'num_leaves'):
        Hierarchy.from_parent(torch.empty(0, dtype=torch.long), num_leaves)


def test_from_assignments_empty():
    with pytest.raises(ValueError, match=r"'assignments' is empty"):
        Hierarchy.from_assignments([])
    with pytest.raises(ValueError, match=r"'assignments\[0\]' is empty"):
        Hierarchy.from_assignments([[]])
    with pytest.raises(ValueError, match=r"'assignments\[0\]' is empty"):
        Hierarchy.from_assignments([torch.empty(0, dtype=torch.long)])


@pytest.mark.parametrize('levels,pattern', [
    # Level 0 uses clusters 0..1 but level 1 has 3 entries (too long).
    ([[0, 1, 1], [0, 0, 0]],
     r'assignments\[1\] has 3 entries but assignments\[0\] uses 2 clusters'),
    # Too short.
    ([[0, 1, 2], [0, 0]],
     r'assignments\[1\] has 2 entries but assignments\[0\] uses 3 clusters'),
    # Mismatch at a deeper level.
    ([[0, 0, 1], [0, 1], [0]],
     r'assignments\[2\] has 1 entries but assignments\[1\] uses 2 clusters'),
])
def test_from_assignments_length_mismatch(levels, pattern):
    with pytest.raises(ValueError, match=pattern):
        Hierarchy.from_assignments(levels)


@pytest.mark.parametrize('levels,pattern', [
    ([[0, 2, 2]], r'cluster 1 of level 1 has no members in assignments\[0\]'),
    ([[0, 0, 1], [1, 1]],
     r'cluster 0 of level 2 has no members in assignments\[1\]'),
])
def test_from_assignments_empty_cluster(levels, pattern):
    with pytest.raises(ValueError, match=pattern):
        Hierarchy.from_assignments(levels)


@pytest.mark.parametrize('levels,pattern', [
    ([[0, -2, 0]], r'assignments\[0\]\[1\] = -2 is negative'),
    ([[0, 0, 1], [0, -3]], r'assignments\[1\]\[1\] = -3 is negative'),
])
def test_from_assignments_below_minus_one(levels, pattern):
    with pytest.raises(ValueError, match=pattern):
        Hierarchy.from_assignments(levels)


@pytest.mark.parametrize('levels,name', [
    ([torch.tensor([0.0, 0.0])], r'assignments\[0\]'),
    ([[0.0, 1.0]], r'assignments\[0\]'),
    ([torch.tensor([0, 0]), torch.tensor([0.0])], r'assignments\[1\]'),
    ([torch.tensor([True, False])], r'assignments\[0\]'),
])
def test_from_assignments_non_integer_dtype(levels, name):
    with pytest.raises(TypeError, match=name + r"' must have an integer "
                       r"dtype"):
        Hierarchy.from_assignments(levels)


def test_from_assignments_not_1d():
    with pytest.raises(ValueError, match=r"'assignments\[0\]' must be 1-D"):
        Hierarchy.from_assignments([torch.zeros(2, 2, dtype=torch.long)])


def test_batch_empty():
    with pytest.raises(ValueError, match=r"'hierarchies' is empty"):
        Hierarchy.batch([])


@given(forests(max_leaves=12, max_trees=1, root_leaves=False))
def test_any_random_cycle_is_rejected(f):
    """Pointing a root at one of its own descendants always closes a
    cycle, wherever it is."""
    h = build(f)
    roots = [r for r in range(h.num_nodes) if f.parent[r] < 0]
    root = roots[0]
    # A descendant of the root that is an internal node (the root itself
    # gives a self-loop).
    internal = [x for x in range(f.num_leaves, f.num_nodes)
                if root_of(f.parent, x) == root]
    parent = list(f.parent)
    parent[root] = max(internal)
    with pytest.raises(ValueError, match=r'cycle'):
        Hierarchy.from_parent(parent, f.num_leaves)


# Immutability ##############################################################


def _attention(h, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(h.num_leaves, 2, 3, generator=g,
                           dtype=torch.float64) for _ in range(3))
    return hierarchical_attention(q, k, v, h)


@given(f=forests(max_leaves=12), data=st.data())
def test_mutating_what_a_hierarchy_hands_out_changes_nothing(f, data):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    before = _attention(h)
    parent = h.parent.clone()
    name = data.draw(st.sampled_from([
        'parent', 'leaf_count', 'node_depth', 'node_height', 'sibling_rank',
        'sibling_pairs']))
    h.__getattribute__(name).mul_(2).add_(1)
    for nodes in h.levels:
        nodes.fill_(0)
    h.family_level('height').fill_(7)
    h.family_level('depth').fill_(7)
    assert torch.equal(h.parent, parent)
    assert torch.equal(_attention(h), before)


def test_mutating_the_parent_cannot_make_a_cycle():
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    h.parent[6] = 4  # a cycle 4 -> 6 -> 4, in a copy
    signal = NestedSignal.from_hierarchy(h, torch.randn(4, 2))
    assert torch.equal(signal.hierarchy.parent, h.parent)
    assert int(h.parent[6]) == -1


def test_mutating_the_family_graph_copy_changes_nothing():
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4,
                              torch.tensor([[0, 2], [1, 3]]))
    before = _attention(h)
    h.family_edge_index.fill_(0)
    assert torch.equal(h.family_edge_index, torch.tensor([[0, 2], [1, 3]]))
    assert torch.equal(_attention(h), before)


@pytest.mark.parametrize('field', ['mask', 'children', 'source_index',
                                   'leaf_node'])
def test_changing_the_layout_in_place_is_refused(field):
    """The layout is the hierarchy's own tensors (copying them for every
    attention call would cost memory at large N); an in-place change is
    caught before the next use instead of silently changing the output."""
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    bucket = h.family_buckets[-1]
    getattr(bucket, field).copy_(getattr(bucket, field))  # bumps _version
    with pytest.raises(ValueError, match='modified in place'):
        _attention(h)
    h2 = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    h2.layout.leaf_count.mul_(2)
    with pytest.raises(ValueError, match='modified in place'):
        _attention(h2)


@pytest.mark.parametrize('copy_of', ['copy', 'deepcopy', 'pickle', 'to'])
def test_copies_check_their_own_tensors(copy_of):
    """A copy (with its layout derived before) is not mistaken for a
    modified hierarchy, and an in-place change of the copy is caught.
    Copies keep the derived data; a pickle derives it again."""
    import copy
    import pickle
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    before = _attention(h)  # derives the layout, written in place
    c = {'copy': copy.copy, 'deepcopy': copy.deepcopy,
         'to': lambda x: x.to('cpu'),
         'pickle': lambda x: pickle.loads(pickle.dumps(x))}[copy_of](h)
    assert (c.__dict__['_families'] is None) == (copy_of == 'pickle')
    assert torch.equal(_attention(c), before)
    c.family_buckets[-1].mask.copy_(c.family_buckets[-1].mask)
    with pytest.raises(ValueError, match='modified in place'):
        _attention(c)
    if copy_of in ('deepcopy', 'pickle'):  # (the others share tensors)
        assert torch.equal(_attention(h), before)


def test_pickle_holds_the_defining_tensors_only():
    """A pickle carries no derived data (it would not load in a version
    whose layout differs) and loads with the same tree and family
    graph."""
    import pickle
    edges = torch.tensor([[0, 2], [1, 3]])
    with torch.inference_mode():
        h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5, edges)
    h.layout
    blob = pickle.dumps(h)
    assert b'_NodeData' not in blob and b'FamilyBucket' not in blob
    loaded = pickle.loads(blob)
    assert torch.equal(loaded.parent, h.parent)
    assert loaded.num_leaves == h.num_leaves
    assert torch.equal(loaded.family_edge_index, edges)
    assert loaded.__dict__['_nodes'] is None  # derived again on use
    assert not loaded.parent.is_inference()
    assert torch.equal(_attention(loaded), _attention(h))


def _pickled_state(h: Hierarchy, **changes) -> Hierarchy:
    state = h.__getstate__()
    state.update(changes)
    out = Hierarchy.__new__(Hierarchy)
    out.__setstate__(state)
    return out


def test_pickle_of_a_later_format_is_refused():
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    later = hierarchy_module.PICKLE_FORMAT + 1
    with pytest.raises(ValueError, match=f'later hsa_geo \\(format {later}'):
        _pickled_state(h, format=later)


def test_pickle_is_checked_on_loading():
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    with pytest.raises(ValueError, match='cycle'):
        _pickled_state(h, parent=torch.tensor([5, 5, 6, 6, 6, 6, 5]))


def test_pickle_without_a_format_loads_its_tree():
    """A state pickled whole (before formats) gives its defining tensors
    and rebuilds the rest."""
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    before = _attention(h)
    state = {key: value for key, value in h.__dict__.items()
             if key not in ('_watched', '_stamp')}
    state['_inference'] = True  # (stored by those versions)
    old = Hierarchy.__new__(Hierarchy)
    old.__setstate__(state)
    assert old.__dict__['_nodes'] is None
    assert torch.equal(_attention(old), before)
    # Older still: no family graph and no inference mode stored.
    for key in ('_family_edges', '_inference'):
        state.pop(key)
    older = Hierarchy.__new__(Hierarchy)
    older.__setstate__(state)
    assert older.family_edge_index is None
    assert torch.equal(_attention(older), before)


def _trains(h: Hierarchy) -> bool:
    q, k, v = (torch.randn(h.num_leaves, 2, 3, requires_grad=True)
               for _ in range(3))
    hierarchical_attention(q, k, v, h, pair_bias=torch.zeros(
        h.num_sibling_pairs, 2, requires_grad=True)).sum().backward()
    return all(t.grad is not None for t in (q, k, v))


def test_hierarchy_built_in_inference_mode_trains():
    """A hierarchy made during an evaluation (a dataset's preprocessing,
    a cached signal's first read) holds normal tensors: the attention's
    backward can save them."""
    parent = torch.tensor([5, 5, 6, 6, 6, -1, 5])
    with torch.inference_mode():
        h = Hierarchy.from_parent(parent, 5)
        assert _attention(h).isfinite().all()
        moved = h.to('cpu')
    assert not h.parent.is_inference()
    assert _trains(h) and _trains(moved)


def test_deep_copy_in_inference_mode_checks_its_tensors():
    """A deep copy made during an evaluation holds normal tensors, whose
    versions count the changes made in place (an inference tensor's would
    not, inside inference mode)."""
    import copy
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    before = _attention(h)
    with torch.inference_mode():
        c = copy.deepcopy(h)
        assert not any(t.is_inference() for t in c._tensors())
        assert torch.equal(_attention(c), before)
        c.family_buckets[-1].mask.copy_(c.family_buckets[-1].mask)
        with pytest.raises(ValueError, match='modified in place'):
            _attention(c)
    assert _trains(copy.deepcopy(h))


@pytest.mark.parametrize('first_use', ['layout', 'sibling_pairs',
                                       'bucket_pairs', 'adjacency'])
def test_derived_data_first_used_in_inference_mode_trains(first_use):
    """What a hierarchy derives and keeps is made outside inference mode,
    whatever the mode of its first use."""
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5)
    with torch.inference_mode():
        getattr(h, first_use)
    derived = [b.children for b in h.family_buckets] + \
        [h.sibling_pairs, h.adjacency] + list(h.bucket_pairs[0])
    assert not any(t.is_inference() for t in derived)
    assert _trains(h)


# Wrong types ###############################################################


def test_from_assignments_given_a_tensor_instead_of_a_list():
    with pytest.raises(TypeError, match=r"list of 1-D index tensors.*"
                       r"\[assignment\]"):
        Hierarchy.from_assignments(torch.tensor([0, 0, 1]))


@pytest.mark.parametrize('bad', [[1], [None], 'ab', 3])
def test_batch_of_non_hierarchies(bad):
    with pytest.raises(TypeError, match='hierarch'):
        Hierarchy.batch(bad)


@pytest.mark.parametrize('edges', [
    torch.tensor([[True], [False]]),
    torch.tensor([[0.0], [1.0]]),
    [[0], [1]],
])
def test_family_index_of_the_wrong_type(edges):
    with pytest.raises(TypeError, match='family_edge_index'):
        Hierarchy.from_parent([2, 2, -1], 2, edges)


# Sizes #####################################################################


@given(f=forests(max_leaves=20))
def test_num_sibling_pairs_counts_without_building(f):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    assert h.num_sibling_pairs == h.sibling_pairs.size(1)
    node, width = h.widest_family
    assert width == h.max_branching
    if width:
        assert int((h.parent == node).sum()) == width


@pytest.mark.parametrize('children,width', [
    (2, 2), (3, 4), (64, 64), (65, 72), (100, 104), (1000, 1024),
    (1024, 1024), (1025, 1025), (2049, 2049), (50000, 50000)])
def test_wide_families_are_padded_by_at_most_an_eighth(children, width):
    h = Hierarchy.from_parent([children] * children + [-1], children)
    assert [b.width for b in h.family_buckets] == [width]
    if children > 64:
        assert (width / children)**2 <= 1.27
    if children > 1024:  # not padded at all
        assert h.family_buckets[0].kind == 'leaf'


@given(f=forests(max_leaves=20), data=st.data())
def test_distinct_sibling_pairs_are_the_off_diagonal_sibling_pairs(f, data):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    pairs = h.sibling_pairs
    off = set(zip(*pairs[:, pairs[0] != pairs[1]].tolist()))
    assert set(zip(*distinct_sibling_pairs(h.parent, h.num_leaves)
                   .tolist())) == off
    families = torch.tensor(data.draw(st.lists(
        st.booleans(), min_size=h.num_clusters, max_size=h.num_clusters)),
        dtype=torch.bool)
    chosen = distinct_sibling_pairs(h.parent, h.num_leaves, families)
    assert set(zip(*chosen.tolist())) == {
        (a, b) for a, b in off if families[f.parent[a] - f.num_leaves]}


def test_dense_pairs_that_cannot_fit_are_refused(monkeypatch):
    r"""Beside a sparse family, every pair of a dense family is listed
    (about 80 bytes per child and sibling): one too wide for the memory is
    refused before the pairs are allocated, naming it."""
    import hsa_geo._memory as memory
    w = 2000  # 4,000,000 children and siblings: about 320 MB
    wide = Hierarchy.from_parent([w] * w + [-1], w)
    small = Hierarchy.from_parent([2, 2, -1], 2, torch.tensor([[0], [1]]))
    monkeypatch.setattr(memory, 'available_memory', lambda device: 200e6)
    match = (r'listing every sibling pair of the dense families would need '
             r'.* the widest of them \(node 2000\) has 2000 children.*give '
             r'that family a family graph')
    with pytest.raises(ValueError, match=match):
        Hierarchy.batch([small, wide])
    with pytest.raises(ValueError, match=match):
        distinct_sibling_pairs(wide.parent, w)
    # Families left out cost nothing.
    assert distinct_sibling_pairs(
        wide.parent, w, torch.tensor([False])).shape == (2, 0)
    narrow = Hierarchy.from_parent([50] * 50 + [-1], 50)
    batch = Hierarchy.batch([small, narrow])
    assert batch.family_edge_index.size(1) == 1 + 50 * 49


def test_cached_pair_lists_changed_in_place_raise():
    """bucket_pairs hands out the hierarchy's own tensors: a change made
    to one in place is caught, as for every other tensor of it."""
    parent = [16 + i // 4 for i in range(16)] + [20] * 4 + [-1]
    h = Hierarchy.from_parent(parent, 16)
    q = torch.randn(16, 2, 4, dtype=torch.float64)
    bias = torch.randn(h.num_sibling_pairs, 2, dtype=torch.float64)
    hierarchical_attention(q, q, q, h, pair_bias=bias)
    family, a, b = h.bucket_pairs[0]
    b.copy_(b.flip(0))
    with pytest.raises(ValueError, match="modified in place"):
        hierarchical_attention(q, q, q, h, pair_bias=bias)


_DUP_PARENT = [5, 5, 6, 6, 7, 7, 7, -1]  # leaf 4, clusters 5 and 6 under 7
_DUP_PAIRS = torch.tensor([[0, 1, 2, 3, 5, 6, 4],
                           [1, 0, 3, 2, 6, 5, 5]])


def test_a_family_pair_listed_twice_is_kept_once():
    """A family graph is a set: query-resolved attention read a repeated
    pair twice (hierarchical_attention did not)."""
    from hsa_geo.functional import (query_resolved_attention,
                                    query_resolved_attention_matrix)
    dup = torch.cat([_DUP_PAIRS, _DUP_PAIRS[:, [6, 0, 6]]], dim=1)
    h = Hierarchy.from_parent(_DUP_PARENT, 5, dup)
    assert torch.equal(h.family_edge_index, _DUP_PAIRS)  # first places
    assert 'family_edges=7' in repr(h)
    once = Hierarchy.from_parent(_DUP_PARENT, 5, _DUP_PAIRS)
    q, k, v = torch.randn(3, 5, 2, 4, dtype=torch.float64).unbind(0)
    out = query_resolved_attention(q, k, v, h)
    ref = torch.einsum('hij,jhd->ihd',
                       query_resolved_attention_matrix(q, k, h), v)
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(out, query_resolved_attention(q, k, v, once),
                          atol=1e-12)
    again = Hierarchy.from_parent(_DUP_PARENT, 5).with_family_graph(
        torch.cat([_DUP_PAIRS, _DUP_PAIRS], dim=1))
    assert torch.equal(again.family_edge_index, _DUP_PAIRS)
    assert Hierarchy.batch([again, again]).family_edge_index.size(1) == 14


def test_batch_of_hierarchies_on_two_devices_raises():
    h = Hierarchy.from_parent([2, 2, -1], 2)
    with pytest.raises(ValueError, match=r"hierarchies\[1\] is on meta but "
                       r"hierarchies\[0\] on cpu"):
        Hierarchy.batch([h, h.to('meta')])
