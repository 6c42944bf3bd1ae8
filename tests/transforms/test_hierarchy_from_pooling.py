r"""Tests of :func:`hsa_geo.transforms.hierarchy_from_pooling`: cluster
vectors with non-consecutive ids and dense assignment matrices, chained;
the numbering matches the pooled graphs of PyG's poolings; empty clusters
are dropped; checked against a plain-Python recomputation on random chains;
and every validation error with its message."""
from typing import Dict, List

import networkx as nx
import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Data
from torch_geometric.nn import dense_diff_pool, dense_mincut_pool, max_pool
from torch_geometric.utils import from_networkx, to_dense_adj

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.transforms.hierarchy_from_pooling import hierarchy_from_pooling
from tests.helpers.strategies import ancestors, children_of, leaves_under


def karate() -> Data:
    data = from_networkx(nx.karate_club_graph())
    return Data(x=torch.randn(34, 3, generator=torch.Generator().manual_seed(
        0)), edge_index=data.edge_index)


def leaf_sets(h: Hierarchy) -> Dict[int, List[int]]:
    under = leaves_under(h.parent.tolist(), h.num_leaves)
    return {node: under[node] for node in range(h.num_leaves, h.num_nodes)}


# Hand-checked examples ######################################################


def test_cluster_vectors_with_gaps():
    #  ids 5, 9, 2 -> clusters 1, 2, 0 (increasing id); leaf 5 is a root.
    h = hierarchy_from_pooling([torch.tensor([5, 5, 9, 2, 9, -1]),
                                torch.tensor([0, 0, 3])])
    # Leaves 0..5; level-1 clusters 6 (id 2), 7 (id 5), 8 (id 9); level-2
    # clusters 9 (id 0: from 2 and 5) and 10 (id 3: from 9).
    assert h.parent.tolist() == [7, 7, 8, 6, 8, -1, 9, 9, 10, -1, -1]


def test_assignment_matrix_and_empty_clusters():
    # Column 1 is chosen by nobody: it goes, and so does its next-level
    # entry (which points to a cluster nobody else uses).
    s = torch.tensor([[0.1, 0.0, 0.9], [0.2, 0.1, 0.7], [0.8, 0.1, 0.1]])
    h = hierarchy_from_pooling([s, torch.tensor([3, 5, 3])])
    # Leaves 0..2, level-1 clusters 3 (column 0) and 4 (column 2), one
    # level-2 cluster 5 (id 3).
    assert h.parent.tolist() == [4, 4, 3, 5, 5, -1]


def test_cluster_then_matrix_then_single_root():
    h = hierarchy_from_pooling([
        torch.tensor([5, 5, 9, 2, 9, -1]),
        torch.tensor([[0., 1, 0], [1, 0, 0], [0, 0, 1]]),
        torch.zeros(3, dtype=torch.long),
    ], num_nodes=6)
    assert h.parent.tolist() == [7, 7, 8, 6, 8, -1, 10, 9, 11, 12, 12, 12, -1]
    assert h.num_trees == 2  # the root leaf 5 and the tree


def test_argmax_ties_take_the_first_column():
    h = hierarchy_from_pooling([torch.tensor([[1., 1.], [0., 1.]])])
    assert h.parent.tolist() == [2, 3, -1, -1]


def test_consecutive_levels_equal_from_assignments():
    levels = [torch.tensor([0, 1, 1, 2, 0, -1]), torch.tensor([1, 0, 0]),
              torch.tensor([0, 0])]
    expected = Hierarchy.from_assignments(levels)
    assert hierarchy_from_pooling(levels).parent.tolist() == \
        expected.parent.tolist()


def test_plain_lists_are_accepted():
    h = hierarchy_from_pooling([[4, 4, 8], [[0.2, 0.8], [0.6, 0.4]]])
    assert h.parent.tolist() == [3, 3, 4, 6, 5, -1, -1]


def test_all_roots_then_empty_level():
    h = hierarchy_from_pooling([torch.tensor([-1, -1]),
                                torch.empty(0, dtype=torch.long)])
    assert h.parent.tolist() == [-1, -1]


def test_family_graph_is_passed_on():
    h = hierarchy_from_pooling([torch.tensor([7, 7, 3])],
                               family_edge_index=torch.tensor([[0], [1]]))
    assert h.family_edge_index.tolist() == [[0], [1]]


# The numbering of PyG's pooled graphs ######################################


def test_matches_max_pool_numbering():
    r"""Cluster ``j`` of a level is node ``j`` of the graph that
    :func:`max_pool` makes: its features are the max over the leaves under
    hierarchy node ``N + j``."""
    data = karate()
    g = torch.Generator().manual_seed(1)
    cluster = torch.randint(0, 60, (34, ), generator=g) * 3 + 11  # gaps
    pooled = max_pool(cluster, data.clone())
    s = torch.randn(pooled.num_nodes, 4, generator=g)
    h = hierarchy_from_pooling([cluster, s, torch.zeros(4,
                                                        dtype=torch.long)],
                               num_nodes=34)
    under = leaf_sets(h)
    n = 34
    for j in range(pooled.num_nodes):
        assert torch.equal(pooled.x[j], data.x[under[n + j]].max(dim=0).values)
    # Level 2: the pooled nodes by the argmax of their row of s.
    first = n + pooled.num_nodes
    by_column: Dict[int, List[int]] = {}
    for j, c in enumerate(s.argmax(dim=1).tolist()):
        by_column.setdefault(c, []).extend(under[n + j])
    expected = [sorted(by_column[c]) for c in sorted(by_column)]
    got = [under[first + i] for i in range(len(by_column))]
    assert got == expected
    assert h.num_trees == 1 and under[h.num_nodes - 1] == list(range(n))


@pytest.mark.parametrize('pooling', [dense_diff_pool, dense_mincut_pool])
def test_dense_pooling_chain(pooling):
    r"""Two levels of DiffPool / MinCutPool on karate club, then a root."""
    data = karate()
    g = torch.Generator().manual_seed(2)
    x, adj = data.x.unsqueeze(0), to_dense_adj(data.edge_index)
    levels = []
    for clusters in (8, 3):
        s = torch.randn(1, x.size(1), clusters, generator=g)
        levels.append(s[0])
        x, adj = pooling(x, adj, s)[:2]
    levels.append(torch.zeros(3, dtype=torch.long))
    h = hierarchy_from_pooling(levels, num_nodes=34)
    assert h.num_trees == 1 and h.num_leaves == 34
    kids = children_of(h.parent.tolist())
    assert all(len(c) >= 1 for c in kids.values())
    # Leaf i sits in the cluster its row chooses, numbered in column order.
    col = levels[0].argmax(dim=1)
    used = torch.unique(col)
    assert torch.equal(h.parent[:34] - 34, torch.searchsorted(used, col))
    signal = NestedSignal.from_data(data, h)
    assert signal.hierarchy.parent.tolist() == h.parent.tolist()


# Random chains against a plain-Python recomputation ########################


@st.composite
def chains(draw):
    r"""A random chain of levels: cluster vectors with gaps and -1, or
    assignment matrices (some columns unused)."""
    n = draw(st.integers(1, 12))
    levels, size = [], n
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            ids = draw(st.lists(st.integers(-1, 6), min_size=size,
                                max_size=size))
            levels.append(torch.tensor(  # gaps between ids, -1 kept
                [4 * i + 3 if i >= 0 else -1 for i in ids], dtype=torch.long))
            size = len({i for i in ids if i >= 0})
        else:
            c = draw(st.integers(1, 5))
            cols = draw(st.lists(st.integers(0, c - 1), min_size=size,
                                 max_size=size))
            s = torch.rand(size, c, generator=torch.Generator().manual_seed(
                draw(st.integers(0, 1000)))) * 0.5
            if size:
                s[torch.arange(size), torch.tensor(cols,
                                                   dtype=torch.long)] = 1.0
            levels.append(s)
            size = c
    return n, levels


def raw_clusters(level) -> List[int]:
    r"""The cluster of every row, in 0..c-1 (-1: root), plain Python."""
    if level.dim() == 2:
        rows = level.tolist()
        return [max(range(len(r)), key=lambda j: (r[j], -j)) for r in rows]
    ids = level.tolist()
    order = sorted({i for i in ids if i >= 0})
    return [order.index(i) if i >= 0 else -1 for i in ids]


@given(chains())
def test_random_chains(chain):
    n, levels = chain
    h = hierarchy_from_pooling(levels, num_nodes=n)
    assert h.num_leaves == n
    parent = h.parent.tolist()
    # Every leaf's path of raw clusters, level by level.
    paths: List[List[int]] = []
    for leaf in range(n):
        path, row = [], leaf
        for level in levels:
            row = raw_clusters(level)[row]
            if row < 0:
                break
            path.append(row)
        paths.append(path)
    offset = n
    for lvl in range(len(levels)):
        # The clusters of this level that some leaf reaches, in raw order,
        # are the next block of node ids.
        reached = sorted({p[lvl] for p in paths if len(p) > lvl})
        for leaf, path in enumerate(paths):
            anc = ancestors(parent, leaf)
            assert len(anc) == len(path) + 1
            if len(path) > lvl:
                assert anc[lvl + 1] == offset + reached.index(path[lvl])
        offset += len(reached)
    assert h.num_nodes == offset


# Validation #################################################################


@pytest.mark.parametrize('levels, kwargs, pattern', [
    ([], {}, "'levels' is empty; pass at least the pooling of the leaves"),
    ([torch.tensor([0, 0, 1])], dict(num_nodes=4),
     r"levels\[0\] has 3 entries \(rows\) but num_nodes=4; level 0 needs one "
     r"entry per leaf"),
    ([torch.tensor([0, 5, 5]), torch.tensor([0, 0, 0])], {},
     r"levels\[1\] has 3 entries \(rows\) but levels\[0\] has 2 clusters; "
     r"level 1 needs one entry per cluster of level 0"),
    ([torch.ones(3, 4), torch.tensor([0, 0])], {},
     r"levels\[1\] has 2 entries \(rows\) but levels\[0\] has 4 clusters"),
    ([torch.tensor([0, 0]), torch.ones(2, 2)], {},
     r"levels\[1\] has 2 entries \(rows\) but levels\[0\] has 1 clusters"),
    ([torch.empty(0, dtype=torch.long)], {},
     r"levels\[0\] has no entries; a hierarchy needs at least one leaf"),
    ([torch.empty(0, 3)], {}, r"levels\[0\] has no entries"),
    ([torch.tensor([0])], dict(num_nodes=0),
     r"'num_nodes' must be an int in \[1, inf\), got 0"),
    ([torch.tensor([0, 0])], dict(family_edge_index=torch.tensor([0, 1])),
     r"'family_edge_index' must have shape \[2, E\], got \(2,\)"),
    ([torch.ones(1, 3, 2)], {},
     r"levels\[0\] has shape \(1, 3, 2\): a batched assignment \[B, n, c\] "
     r"is not accepted; build one hierarchy per graph from S\[b\]\[mask\[b\]"
     r"\] and join them with Hierarchy.batch"),
    ([torch.tensor(3)], {}, r"levels\[0\] must be a cluster vector \[n\] or "
     r"an assignment matrix \[n, c\], got shape \(\)"),
    ([torch.tensor([0, -2, 1])], {},
     r"levels\[0\]\[1\] = -2 is negative; use -1 for a node without parent "
     r"\(a root\) and cluster ids >= 0"),
    ([torch.tensor([[0.0, float('nan')]])], {},
     r"levels\[0\]\[0, 1\] = nan is not finite; the argmax of a row needs "
     r"finite scores"),
    ([torch.ones(3, 0)], {}, r"levels\[0\] has shape \(3, 0\): no clusters "
     r"to assign the 3 rows to; it needs c >= 1 columns"),
    ([torch.tensor([0, 0])], dict(family_edge_index=torch.tensor([[0], [2]])),
     r"family_edge_index\[:, 0\] = \(0, 2\) is not a pair of siblings"),
])
def test_errors(levels, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        hierarchy_from_pooling(levels, **kwargs)


@pytest.mark.parametrize('levels, kwargs, pattern', [
    (torch.tensor([0, 0]), {}, r"'levels' must be a list of cluster vectors "
     r"or assignment matrices, got Tensor; wrap a single level in a list"),
    ([torch.tensor([0])], dict(num_nodes=True),
     "'num_nodes' must be an int, got True"),
    ([torch.tensor([0, 0])], dict(num_nodes=2.5),
     "'num_nodes' must be an int, got 2.5"),
    ([torch.tensor([0, 0])], dict(num_nodes=2.0),
     "'num_nodes' must be an int, got 2.0"),
    ([torch.tensor([0.0, 1.0])], {},
     r"levels\[0\] is a 1-D floating tensor; a cluster vector must be "
     r"integer \(convert with '.long\(\)'\), and an assignment matrix must "
     r"be 2-D \[n, c\]"),
    ([[0, 2.5]], {}, r"levels\[0\] is a 1-D floating tensor"),
    ([torch.tensor([[0, 1], [1, 0]])], {},
     r"levels\[0\] is a 2-D integer tensor of shape \(2, 2\); an assignment "
     r"matrix must be floating \[n, c\] and a cluster vector 1-D \[n\]"),
    ([torch.tensor([True, False])], {}, r"levels\[0\] has dtype torch.bool; "
     r"pass an integer cluster vector \[n\] or a floating assignment matrix"),
    ([['a', 'b']], {}, r"levels\[0\] must be a tensor \(a cluster vector or "
     r"an assignment matrix\)"),
    ([None], {}, r"levels\[0\] must be a tensor"),
    ([torch.tensor([0, 0])],
     dict(family_edge_index=torch.tensor([[0.0], [1.0]])),
     r"'family_edge_index' must have an integer dtype"),
])
def test_type_errors(levels, kwargs, pattern):
    with pytest.raises(TypeError, match=pattern):
        hierarchy_from_pooling(levels, **kwargs)
