r"""Tests of :class:`hsa_geo.transforms.sequence_hierarchy.SequenceHierarchy`:
the chunking tree against a plain-Python construction, its invariants
(coverage, order, branching, depth), batching with
:class:`torch_geometric.loader.DataLoader`, the fused leaf path of the dynamic
program with full power-of-two chunks (checked against the dense reference),
and input validation."""
import codecs
import this  # the Zen of Python: a real text shipped with every Python
from typing import List

import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention
from hsa_geo.transforms.sequence_hierarchy import SequenceHierarchy
from tests.helpers.attention import dense_output, seeded_qkv
from tests.helpers.strategies import (
    fewer, children_of, depth_of, leaves_under, root_of)

SEEDS = st.integers(0, 2**31 - 1)
CHUNKS = st.lists(st.integers(2, 7), min_size=1, max_size=4)
EXACT = 1e-10


def expected_parent(n: int, sizes: List[int]) -> List[int]:
    r"""The documented construction, written out node by node."""
    parent = [-1] * n
    level = list(range(n))
    for c in sizes:
        if len(level) == 1:
            break
        first = len(parent)
        count = -(-len(level) // c)
        for j, node in enumerate(level):
            parent[node] = first + j // c
        parent.extend([-1] * count)
        level = list(range(first, first + count))
    if len(level) > 1:
        root = len(parent)
        for node in level:
            parent[node] = root
        parent.append(-1)
    return parent


# The tree ##################################################################


def test_docstring_example():
    out = SequenceHierarchy([4, 2])(Data(x=torch.randn(10, 8)))
    assert isinstance(out, NestedSignal)
    assert out.hierarchy.parent.tolist() == [
        10, 10, 10, 10, 11, 11, 11, 11, 12, 12, 13, 13, 14, 15, 15, -1
    ]


@given(st.integers(1, 200), CHUNKS)
def test_matches_plain_construction(n, sizes):
    h = SequenceHierarchy(sizes).build(n)
    assert h.parent.tolist() == expected_parent(n, sizes)


@given(st.integers(1, 120), CHUNKS)
def test_invariants(n, sizes):
    h = SequenceHierarchy(sizes).build(n)
    parent = h.parent.tolist()
    # One tree; every leaf covered exactly once (by the root, and at every
    # level by exactly one cluster: families partition their level).
    assert h.num_trees == 1
    root = parent.index(-1)
    assert int(h.leaf_count[root]) == n
    under = leaves_under(parent, n)
    for level in h.levels:
        covered = sorted(i for node in level.tolist() for i in under[node])
        assert covered == list(range(n))
    # Families are contiguous runs of leaves and of node ids.
    for node, kids in children_of(parent).items():
        leaves = under[node]
        assert leaves == list(range(leaves[0], leaves[-1] + 1))
        assert kids == list(range(kids[0], kids[-1] + 1))
    # Uniform depth; a cluster of level l has height l and at most c_l
    # children, all chunks but the last of a level full.
    depths = depth_of(parent)
    assert len({depths[i] for i in range(n)}) == 1
    height = h.node_height.tolist()
    kids = children_of(parent)
    for lvl in range(1, h.depth + 1):
        clusters = [c for c in range(n, len(parent)) if height[c] == lvl]
        counts = [len(kids[c]) for c in clusters]
        if lvl <= len(sizes):
            cap = sizes[lvl - 1]
            assert max(counts) <= cap
            assert all(cnt == cap for cnt in counts[:-1])
        else:  # the final root over what was left
            assert clusters == [root]
    # Leaves in order: the position of leaf i in its chunk is i % c_0.
    if n > 1:
        assert h.sibling_rank[:n].tolist() == [i % sizes[0] for i in range(n)]
    # No chain above the root.
    assert h.depth == 0 or len(kids[root]) >= 2


def test_stops_once_a_single_node_is_left():
    h = SequenceHierarchy([4, 4, 4]).build(3)
    assert h.parent.tolist() == [3, 3, 3, -1]


def test_final_root_over_what_is_left():
    h = SequenceHierarchy([2]).build(7)  # 4 chunks, then a root
    assert h.depth == 2 and h.num_trees == 1
    assert h.parent[7:].tolist() == [11, 11, 11, 11, -1]


def test_short_last_chunk_is_a_single_child():
    h = SequenceHierarchy([2, 2]).build(5)
    # Leaf 4 and then cluster 7 are alone in their chunks; a root joins
    # the two clusters left after the last chunk size.
    assert h.parent.tolist() == [5, 5, 6, 6, 7, 8, 8, 9, 10, 10, -1]
    assert h.node_depth[:5].tolist() == [3] * 5


def test_single_leaf():
    out = SequenceHierarchy([4])(Data(x=torch.randn(1, 3)))
    h = out.hierarchy
    assert h.num_nodes == 1 and h.num_clusters == 0
    assert out.num_clusters == 0
    y = hierarchical_attention(*seeded_qkv(1, 2, 4, 0), h)
    assert torch.allclose(y, seeded_qkv(1, 2, 4, 0)[2])


@given(st.integers(1, 60), CHUNKS)
def test_deterministic(n, sizes):
    t = SequenceHierarchy(sizes)
    a, b = t.build(n), SequenceHierarchy(list(sizes)).build(n)
    assert a.parent.tolist() == b.parent.tolist() == t.build(n).parent.tolist()


def test_single_int_means_one_level():
    assert SequenceHierarchy(4).chunk_sizes == [4]
    assert (SequenceHierarchy(4).build(9).parent.tolist() ==
            SequenceHierarchy([4]).build(9).parent.tolist())


# The data ##################################################################


def test_keeps_attributes_and_leaves_input_alone():
    x = torch.randn(9, 3)
    ei = torch.tensor([[0, 1, 8], [1, 2, 7]])
    data = Data(x=x, edge_index=ei, y=torch.tensor([1]), mask=torch.ones(9))
    out = SequenceHierarchy([3])(data)
    assert out.x is x and out.edge_index is ei  # nothing is moved
    assert out.y.tolist() == [1] and out.mask.shape == (9, )
    assert out.num_nodes == 9 and out.num_clusters == 4
    assert 'leaf_parent_index' not in data  # a shallow copy was changed
    assert out.hierarchy.parent.tolist() == expected_parent(9, [3])


def test_without_x_uses_num_nodes():
    data = Data(num_nodes=6)
    out = SequenceHierarchy([2, 3])(data)
    assert out.x is None and out.num_nodes == 6
    assert out.hierarchy.parent.tolist() == expected_parent(6, [2, 3])


def test_replaces_a_stored_hierarchy():
    first = SequenceHierarchy([2])(Data(x=torch.randn(8, 2)))
    second = SequenceHierarchy([4])(first)
    assert second.hierarchy.parent.tolist() == expected_parent(8, [4])
    assert second.num_clusters == 3


def test_repr():
    assert repr(SequenceHierarchy([4, 2])) == \
        'SequenceHierarchy(chunk_sizes=[4, 2])'


@fewer(2)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), CHUNKS,
       st.integers(1, 4))
def test_loader_batches_into_the_forest_of_parts(lengths, sizes, batch_size):
    t = SequenceHierarchy(sizes)
    signals = []
    for i, n in enumerate(lengths):
        s = t(Data(x=torch.full((n, 1), float(i)), y=torch.tensor([i])))
        # A per-cluster attribute, to check that it lines up after batching.
        s.cluster_height = s.hierarchy.node_height[n:].clone()
        signals.append(s)
    for start, batch in zip(
            range(0, len(signals), batch_size),
            DataLoader(signals, batch_size=batch_size, shuffle=False)):
        parts = signals[start:start + batch_size]
        joined = Hierarchy.batch([s.hierarchy for s in parts])
        h = batch.hierarchy
        assert h.parent.tolist() == joined.parent.tolist()
        assert torch.equal(batch.x, torch.cat([s.x for s in parts]))
        n = h.num_leaves
        assert torch.equal(batch.cluster_height, h.node_height[n:])
        # The leaves of every graph form one tree of the batch, in order.
        parent = h.parent.tolist()
        roots = [root_of(parent, i) for i in range(n)]
        offsets = [0]
        for s in parts:
            offsets.append(offsets[-1] + s.num_nodes)
        for lo, hi in zip(offsets[:-1], offsets[1:]):
            assert set(roots[lo:hi]) == {roots[lo]}
        assert len(set(roots)) == len(parts)


# The fused path ############################################################


@fewer(2)
@given(st.sampled_from([2, 4, 8]), st.integers(1, 12),
       st.lists(st.integers(2, 5), max_size=2), SEEDS)
def test_full_power_of_two_chunks_take_the_fused_path(c0, chunks, upper,
                                                      seed):
    n = c0 * chunks
    h = SequenceHierarchy([c0] + upper).build(n)
    assert h.layout.leaf_blocks is not None
    q, k, v = seeded_qkv(n, 2, 4, seed)
    y = hierarchical_attention(q, k, v, h)
    assert (y - dense_output(q, k, v, h)).abs().max() < EXACT


def test_fused_path_survives_batching():
    t = SequenceHierarchy([4, 3])
    signals = [t(Data(x=torch.randn(n, 2))) for n in (8, 12, 4)]
    batch = next(iter(DataLoader(signals, batch_size=3)))
    h = batch.hierarchy
    assert h.layout.leaf_blocks is not None
    q, k, v = seeded_qkv(h.num_leaves, 2, 4, 3)
    y = hierarchical_attention(q, k, v, h)
    assert (y - dense_output(q, k, v, h)).abs().max() < EXACT


def test_partial_chunks_agree_with_the_dense_reference():
    h = SequenceHierarchy([3, 2]).build(17)
    q, k, v = seeded_qkv(17, 2, 4, 5)
    y = hierarchical_attention(q, k, v, h)
    assert (y - dense_output(q, k, v, h)).abs().max() < EXACT


def test_real_text():
    # The first 320 bytes of the Zen of Python as a sequence: 4-byte chunks
    # -> 16 -> 64 -> the text.
    text = codecs.decode(this.s, 'rot13').encode()[:320]
    n = len(text)
    ids = torch.tensor(list(text[:n]))
    out = SequenceHierarchy([4, 4, 4])(Data(x=ids, num_nodes=n))
    h = out.hierarchy
    assert out.x is ids and h.num_leaves == n
    assert n > 4**3 and h.depth == 4  # three chunk levels and a root
    assert h.layout.leaf_blocks is not None
    emb = torch.nn.Embedding(256, 8).double()
    with torch.no_grad():
        x = emb(ids).view(n, 2, 4)
        y = hierarchical_attention(x, x, x, h)
        assert (y - dense_output(x, x, x, h)).abs().max() < EXACT


# Validation ################################################################


@pytest.mark.parametrize('sizes, error, pattern', [
    ([], ValueError, r"'chunk_sizes' is empty"),
    ([4, 1], ValueError, r'chunk_sizes\[1\] = 1 is below 2'),
    ([0], ValueError, r'chunk_sizes\[0\] = 0 is below 2'),
    (1, ValueError, r'chunk_sizes = 1 is below 2'),
    ([4, 2.0], TypeError, r"'chunk_sizes\[1\]' must be an int, got 2.0"),
    ([True], TypeError, r"'chunk_sizes\[0\]' must be an int, got True"),
    (['4'], TypeError, r"'chunk_sizes\[0\]' must be an int, got '4'"),
    ('44', TypeError, r"'chunk_sizes' must be an int or a list of ints"),
    (None, TypeError, r"'chunk_sizes' must be an int or a list of ints"),
    (4.0, TypeError, r"'chunk_sizes' must be an int or a list of ints"),
    (2.5, TypeError, r"'chunk_sizes' must be an int or a list of ints"),
])
def test_bad_chunk_sizes(sizes, error, pattern):
    with pytest.raises(error, match=pattern):
        SequenceHierarchy(sizes)


@pytest.mark.filterwarnings('ignore:Unable to accurately infer')
@pytest.mark.parametrize('data', [
    Data(x=torch.empty(0, 3)),
    Data(num_nodes=0),
    Data(),
])
def test_empty_sequence(data):
    with pytest.raises(ValueError, match='a graph without nodes'):
        SequenceHierarchy([2])(data)


def test_not_a_data():
    with pytest.raises(TypeError, match='expects a torch_geometric Data'):
        SequenceHierarchy([2])(torch.randn(4, 2))


@pytest.mark.parametrize('n, error', [(0, ValueError), (-1, ValueError),
                                      (2.5, TypeError), (True, TypeError)])
def test_build_bad_num_leaves(n, error):
    with pytest.raises(error, match="'num_leaves' must be an int"):
        SequenceHierarchy([2]).build(n)
