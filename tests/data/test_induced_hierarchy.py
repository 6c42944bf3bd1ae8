r"""Tests of :func:`hsa_geo.data.induced_hierarchy`: the tree that a subset
of the leaves induces, checked against a plain-Python construction from the
parent list, and its answers to bad input."""
import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo.data import Hierarchy, induced_hierarchy
from tests.helpers.attention import attention, random_pairs, random_qkv
from tests.helpers.strategies import forests, induced_forest, subset_values

SEEDS = st.integers(0, 2**31 - 1)
EXACT = 1e-10


def test_example():
    #       6            keep leaves 3 and 0 (in this order): leaf 3 becomes
    #     /   \          0, leaf 0 becomes 1; clusters 4, 5, 6 become 2, 3, 4.
    #    4     5
    #   / \   / \
    #  0   1 2   3
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    out, node_map = induced_hierarchy(h, torch.tensor([3, 0]),
                                      return_node_map=True)
    assert out.parent.tolist() == [3, 2, 4, 4, -1]
    assert node_map.tolist() == [1, -1, -1, 0, 2, 3, 4]
    # A whole subtree goes: cluster 5 has no kept leaf.
    out = induced_hierarchy(h, torch.tensor([True, True, False, False]))
    assert out.parent.tolist() == [2, 2, 3, -1]


@given(forests(max_leaves=14), st.booleans(), st.data())
def test_equals_the_plain_construction(f, family, data):
    n = f.num_leaves
    g = torch.Generator().manual_seed(data.draw(SEEDS))
    edges = random_pairs(f.parent, g) if family else None
    h = Hierarchy.from_parent(f.parent, n, edges)
    keep = data.draw(st.lists(st.integers(0, n - 1), min_size=1,
                              unique=True))
    out, node_map = induced_hierarchy(h, torch.tensor(keep),
                                      return_node_map=True)
    forest, new = induced_forest(f, keep)
    assert out.num_leaves == len(keep)
    assert out.parent.tolist() == forest.parent
    assert node_map.tolist() == [new.get(i, -1) for i in range(f.num_nodes)]
    if edges is None:
        assert out.family_edge_index is None
    else:
        expected = {(new[a], new[b]) for a, b in edges.t().tolist()
                    if a in new and b in new}
        assert set(map(tuple, out.family_edge_index.t().tolist())) == \
            expected
    # HSA on the kept leaves is HSA on the tree built on them alone.
    qkv = random_qkv(n)[:, keep]
    scratch = Hierarchy.from_parent(forest.parent, len(keep),
                                    out.family_edge_index)
    torch.testing.assert_close(attention(out, qkv), attention(scratch, qkv),
                               rtol=0, atol=EXACT)
    # A mask keeps the same leaves in increasing order.
    mask = torch.zeros(n, dtype=torch.bool)
    mask[keep] = True
    by_mask = induced_hierarchy(h, mask)
    assert by_mask.parent.tolist() == induced_forest(f, sorted(keep))[
        0].parent


@given(forests(max_leaves=12))
def test_all_leaves_in_order_is_the_same_tree(f):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    out = induced_hierarchy(h, torch.arange(f.num_leaves))
    assert out.parent.tolist() == f.parent
    out = induced_hierarchy(h, torch.ones(f.num_leaves, dtype=torch.bool))
    assert out.parent.tolist() == f.parent


H = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)


@pytest.mark.parametrize('args,error,pattern', [
    ((None, torch.tensor([0])), TypeError, "'hierarchy' must be a Hierarchy"),
    ((H, [0, 1]), TypeError, "'subset' must be a tensor of leaf ids"),
    ((H, torch.tensor([0.0, 1.0])), TypeError, "'subset' must have an "
     "integer dtype"),
    ((H, torch.tensor([[0, 1]])), ValueError, r"'subset' must .*\(1, 2\)"),
    ((H, torch.tensor([0, 4])), ValueError, r'subset\[1\] = 4 is not a leaf '
     r'id \(0\.\.3\)'),
    ((H, torch.tensor([-1])), ValueError, r'subset\[0\] = -1 is not a leaf'),
    ((H, torch.tensor([2, 1, 2])), ValueError, "lists leaf 2 2 times"),
    ((H, torch.tensor([], dtype=torch.long)), ValueError, 'keeps no leaf'),
    ((H, torch.zeros(4, dtype=torch.bool)), ValueError, 'keeps no leaf'),
    ((H, torch.ones(5, dtype=torch.bool)), ValueError, r'mask of shape '
     r'\(5,\) but the hierarchy has 4 leaves'),
    ((H, torch.tensor([0]), 1), TypeError, "'return_node_map' must be True "
     "or False"),
])
def test_bad_input(args, error, pattern):
    with pytest.raises(error, match=pattern):
        induced_hierarchy(*args)


SUBSET_DTYPES = st.sampled_from([torch.long, torch.int32, torch.float32,
                                 torch.bool])


@given(forests(max_leaves=10), st.data(), SUBSET_DTYPES)
def test_any_subset_is_refused_or_induced(f, data, dtype):
    r"""Malformed subsets (out of range, repeated, empty, a mask of the
    wrong size, a float tensor) raise ValueError or TypeError; any other
    gives the plain construction."""
    n = f.num_leaves
    values = data.draw(subset_values(n), 'values')
    h = Hierarchy.from_parent(f.parent, n)
    if dtype == torch.bool:
        subset = torch.tensor([v % 2 == 0 for v in values], dtype=torch.bool)
        keep = [i for i, v in enumerate(subset.tolist()) if v]
        valid = len(values) == n and len(keep) > 0
    else:
        subset = torch.tensor(values, dtype=dtype)
        keep = values
        valid = dtype != torch.float32 and len(values) > 0 and \
            len(set(values)) == len(values) and \
            all(0 <= v < n for v in values)
    if not valid:
        with pytest.raises((ValueError, TypeError)):
            induced_hierarchy(h, subset)
        return
    out = induced_hierarchy(h, subset)
    assert out.parent.tolist() == induced_forest(f, keep)[0].parent
