r"""Tests of :class:`hsa_geo.transforms.graph_hierarchy.GraphHierarchy`: the
trees it builds on classic real graphs and on random graphs (disconnected,
isolated nodes, self-loops, one node, at most ``branching`` nodes), for
every method; determinism under the seed; the family graph against a
plain-Python lowest-common-ancestor walk; context between all leaves;
batching with :class:`torch_geometric.loader.DataLoader`; and every
validation error with its message.

Graclus needs a compiled kernel (pyg-lib or torch-cluster) that may be
missing: the tree it makes is tested with a pure-Python stand-in for
:func:`torch_geometric.nn.pool.graclus` (and with the real one where it is
installed); the error for a missing kernel is tested where it is missing.
"""
import importlib.util
import sys
from typing import List, Set, Tuple

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import pool
from torch_geometric.utils import from_networkx

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention_matrix
from hsa_geo.transforms.graph_hierarchy import (GraphHierarchy,
                                                _within_capacity)
from tests.helpers.strategies import (
    fewer, children_of, lca_children, leaves_under)

HAVE_METIS = importlib.util.find_spec('pymetis') is not None
METHODS = ('metis', 'louvain') if HAVE_METIS else ('louvain', )
needs_metis = pytest.mark.skipif(not HAVE_METIS, reason='pymetis missing')
SEEDS = st.integers(0, 2**31 - 1)


def _graclus_available() -> bool:
    try:
        pool.graclus(torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
    except (ImportError, RuntimeError, AttributeError):
        return False
    return True


GRACLUS = _graclus_available()


def fake_graclus(edge_index, weight=None, num_nodes=None):
    r"""Greedy matching in a random node order (the global torch generator),
    as Graclus does, with non-consecutive cluster ids."""
    n = num_nodes
    nbrs: List[List[int]] = [[] for _ in range(n)]
    for u, v in edge_index.t().tolist():
        nbrs[u].append(v)
    cluster = [-1] * n
    for u in torch.randperm(n).tolist():
        if cluster[u] >= 0:
            continue
        free = [v for v in nbrs[u] if v != u and cluster[v] < 0]
        v = min(free) if free else u
        cluster[u] = cluster[v] = 3 * max(u, v) + 7
    return torch.tensor(cluster)


@pytest.fixture
def with_fake_graclus(monkeypatch):
    monkeypatch.setattr(pool, 'graclus', fake_graclus)


# Graphs #####################################################################


def real_graphs():
    return {
        'karate': nx.karate_club_graph(),
        'les_miserables': nx.les_miserables_graph(),
        'davis': nx.davis_southern_women_graph(),
        'florentine': nx.florentine_families_graph(),
    }


def to_data(g: nx.Graph) -> Data:
    r"""A networkx graph as PyG data; nodes renamed ``0..n-1``."""
    return from_networkx(nx.convert_node_labels_to_integers(g))


def disconnected_real_graph() -> Data:
    r"""Karate club and the Florentine families side by side, and three
    isolated nodes."""
    g = nx.disjoint_union(
        nx.convert_node_labels_to_integers(nx.karate_club_graph()),
        nx.convert_node_labels_to_integers(nx.florentine_families_graph()))
    g = nx.Graph(g.edges())
    g.add_nodes_from(range(g.number_of_nodes() + 3))
    return from_networkx(g)


def plain(n: int, edges) -> Data:
    edge_index = torch.tensor(edges, dtype=torch.long).view(-1, 2).t()
    return Data(edge_index=edge_index.contiguous(), num_nodes=n)


@st.composite
def graphs(draw, max_nodes: int = 40) -> Data:
    r"""Random graphs: arbitrary edge lists (self-loops, duplicates, one
    direction only), unions of connected blocks with isolated nodes, stars,
    and graphs without edges."""
    n = draw(st.integers(1, max_nodes))
    kind = draw(st.sampled_from(('random', 'blocks', 'star', 'empty')))
    node = st.integers(0, n - 1)
    if kind == 'random':
        edges = draw(st.lists(st.tuples(node, node), max_size=3 * n))
    elif kind == 'blocks':
        edges, start = [], 0
        while start < n:
            size = draw(st.integers(1, n - start))
            # A path through the block keeps it connected; some chords.
            edges += [(start + i, start + i + 1) for i in range(size - 1)]
            if size > 2:
                inner = st.integers(start, start + size - 1)
                edges += draw(st.lists(st.tuples(inner, inner), max_size=size))
            start += size
    elif kind == 'star':
        edges = [(0, i) for i in range(1, n)]
    else:
        edges = []
    if edges and draw(st.booleans()):
        edges += [(v, u) for u, v in edges]
    return plain(n, edges)


# Plain-Python checks ########################################################


def levels_needed(n: int, b: int) -> int:
    depth, capacity = 1, b
    while capacity < n:
        depth, capacity = depth + 1, capacity * b
    return depth


def check_tree(h: Hierarchy, n: int, b: int, max_width: int = None):
    r"""One tree over the ``n`` leaves, every leaf covered exactly once,
    every family 2..``max_width`` wide (a 1-node graph: a root over it)."""
    parent = h.parent.tolist()
    assert h.num_leaves == n
    assert h.num_trees == 1
    assert h.parent[:n].ge(0).all(), 'every leaf has a parent'
    kids = children_of(parent)
    assert sorted(kids) == list(range(n, h.num_nodes))
    width = max(len(c) for c in kids.values())
    assert width <= (max_width or b)
    if n > 1:
        assert min(len(c) for c in kids.values()) >= 2, 'no single child'
    # The children of every node split its leaves: each leaf once.
    under = leaves_under(parent, n)
    for node, children in kids.items():
        joined = sorted(i for c in children for i in under[c])
        assert joined == under[node]
    root = parent.index(-1, n)
    assert under[root] == list(range(n))


def slow_family_pairs(parent: List[int], edge_index) -> Set[Tuple[int, int]]:
    r"""The family graph recomputed edge by edge with the LCA walk."""
    pairs = set()
    for u, v in edge_index.t().tolist():
        if u == v:
            continue
        found = lca_children(parent, u, v)
        if found is not None:
            pairs.add((found[1], found[2]))
    return pairs


def pair_set(edge_index) -> Set[Tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def assert_same(a: NestedSignal, b: NestedSignal):
    ha, hb = a.hierarchy, b.hierarchy
    assert ha.parent.tolist() == hb.parent.tolist()
    fa, fb = ha.family_edge_index, hb.family_edge_index
    assert (fa is None) == (fb is None)
    if fa is not None:
        assert fa.tolist() == fb.tolist()


def components(n: int, edge_index) -> List[Set[int]]:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edge_index.t().tolist())
    return [set(c) for c in nx.connected_components(g)]


def check_context(signal: NestedSignal):
    r"""Every leaf receives context from every other leaf of its connected
    component through the tree. Dense families: the HSA matrix is positive
    between all leaves of the tree. Family graph: the leaves that see each
    other through a coarsened pair (i under a, j under b, (a, b) a pair at
    their LCA) connect every component."""
    h = signal.hierarchy
    n = h.num_leaves
    if h.family_edge_index is None:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(n, 2, 3, dtype=torch.float64, generator=g)
        k = torch.randn(n, 2, 3, dtype=torch.float64, generator=g)
        assert hierarchical_attention_matrix(q, k, h).gt(0).all()
        return
    parent = h.parent.tolist()
    pairs = pair_set(h.family_edge_index)
    sees = nx.Graph()
    sees.add_nodes_from(range(n))
    for i in range(n):
        for j in range(n):
            found = lca_children(parent, i, j) if i != j else None
            if found is not None and (found[1], found[2]) in pairs:
                sees.add_edge(i, j)
    for comp in components(n, signal.edge_index):
        first = next(iter(comp))
        assert comp <= nx.node_connected_component(sees, first)


# Real graphs ################################################################


@pytest.mark.parametrize('name', sorted(real_graphs()))
@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('branching', [2, 3, 4, 16])
def test_real_graphs(name, method, branching):
    data = to_data(real_graphs()[name])
    n = data.num_nodes
    out = GraphHierarchy(method, branching, family_graph=True)(data)
    assert isinstance(out, NestedSignal)
    h = out.hierarchy
    check_tree(h, n, branching)
    if method == 'metis':  # balanced parts: the fewest levels possible
        assert h.depth == levels_needed(n, branching)
    assert pair_set(h.family_edge_index) == slow_family_pairs(
        h.parent.tolist(), data.edge_index)
    # Every attribute kept, node i is leaf i.
    assert torch.equal(out.edge_index, data.edge_index)
    for key in data.keys():
        assert key in out
    assert out.num_nodes == n


@pytest.mark.parametrize('method', METHODS)
def test_real_graphs_context(method):
    for name, g in real_graphs().items():
        data = to_data(g)
        for family_graph in (False, True):
            check_context(GraphHierarchy(method, 4, family_graph)(data))


@pytest.mark.parametrize('method', METHODS)
def test_disconnected_real_graph(method):
    data = disconnected_real_graph()
    for family_graph in (False, True):
        out = GraphHierarchy(method, 4, family_graph)(data)
        check_tree(out.hierarchy, data.num_nodes, 4)
        check_context(out)


@needs_metis
def test_metis_keeps_communities_apart():
    r"""Two cliques joined by one edge: METIS puts each under its own child
    of the root."""
    g = nx.barbell_graph(8, 0)  # cliques 0..7 and 8..15, one bridge
    h = GraphHierarchy('metis', 8)(to_data(g)).hierarchy
    root_children = children_of(h.parent.tolist())[h.parent.tolist().index(-1)]
    under = leaves_under(h.parent.tolist(), 16)
    assert sorted(under[c] for c in root_children) == [
        list(range(8)), list(range(8, 16))
    ]


def test_louvain_merges_communities_into_at_most_b_groups():
    r"""Many small communities (cliques on a ring) are joined into at most
    ``branching`` children of the root, neighbours together."""
    g = nx.ring_of_cliques(12, 4)  # 48 nodes, 12 communities
    h = GraphHierarchy('louvain', 3)(to_data(g)).hierarchy
    check_tree(h, 48, 3)
    root_children = children_of(h.parent.tolist())[h.parent.tolist().index(-1)]
    assert len(root_children) == 3


def test_flat_tree_for_small_graphs():
    for method in METHODS:
        for n in (1, 2, 5, 16):
            data = plain(n, [(i, (i + 1) % n) for i in range(n)])
            h = GraphHierarchy(method, 16)(data).hierarchy
            assert h.parent.tolist() == [n] * n + [-1]


def test_one_node_graph():
    for method in METHODS:
        for family_graph in (False, True):
            data = Data(x=torch.randn(1, 3))
            out = GraphHierarchy(method, 2, family_graph)(data)
            assert out.hierarchy.parent.tolist() == [1, -1]
            if family_graph:
                assert out.hierarchy.family_edge_index.shape == (2, 0)
            assert torch.equal(out.x, data.x)


@pytest.mark.parametrize('method', METHODS)
def test_graph_without_edges(method):
    r"""No edges (or no edge_index at all): equal chunks of node ids."""
    for data in (plain(40, []), Data(num_nodes=40)):
        h = GraphHierarchy(method, 4)(data).hierarchy
        check_tree(h, 40, 4)
        assert h.depth == levels_needed(40, 4)


def test_self_loops_and_duplicates_are_ignored_by_partitioning():
    data = to_data(nx.karate_club_graph())
    n = data.num_nodes
    loops = torch.arange(n).repeat(2, 1)
    noisy = Data(edge_index=torch.cat([data.edge_index, data.edge_index,
                                       loops], dim=1), num_nodes=n)
    for method in METHODS:
        a = GraphHierarchy(method, 4)(data).hierarchy
        b = GraphHierarchy(method, 4, family_graph=True)(noisy).hierarchy
        assert a.parent.tolist() == b.parent.tolist()
        # Self-loops and duplicates leave no trace in the family graph.
        assert b.family_edge_index.size(1) == len(
            pair_set(b.family_edge_index))


@needs_metis
def test_family_graph_keeps_edge_direction():
    data = to_data(nx.karate_club_graph())
    one_way = data.edge_index[:, data.edge_index[0] < data.edge_index[1]]
    h = GraphHierarchy('metis', 4, True)(
        Data(edge_index=one_way, num_nodes=34)).hierarchy
    assert pair_set(h.family_edge_index) == slow_family_pairs(
        h.parent.tolist(), one_way)
    both = GraphHierarchy('metis', 4, True)(data).hierarchy
    assert pair_set(h.family_edge_index) < pair_set(both.family_edge_index)


@needs_metis
def test_moderate_random_graph_with_metis():
    r"""A few thousand nodes: the fewest levels, families nearly full."""
    n = 5000
    g = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, n, (2, 6 * n), generator=g)
    h = GraphHierarchy('metis', 16, family_graph=True)(
        Data(edge_index=edge_index, num_nodes=n)).hierarchy
    assert h.num_trees == 1 and h.max_branching <= 16
    assert h.depth == levels_needed(n, 16)
    width = torch.bincount(h.parent[h.parent >= 0])[n:]
    assert width.float().mean() > 12
    assert int(h.leaf_count[n]) == n and int(h.parent[n]) == -1  # the root


# Random graphs ##############################################################


@given(graphs(), st.sampled_from(METHODS), st.integers(2, 6), st.booleans(),
       SEEDS)
def test_random_graphs(data, method, branching, family_graph, seed):
    n = data.num_nodes
    has_edges = bool((data.edge_index[0] != data.edge_index[1]).any())
    transform = GraphHierarchy(method, branching, family_graph, seed)
    if family_graph and n > 1 and not has_edges:
        with pytest.raises(ValueError, match='needs edges'):
            transform(data)
        return
    out = transform(data)
    h = out.hierarchy
    check_tree(h, n, branching)
    if n <= branching:
        assert h.parent.tolist() == [n] * n + [-1]
    if method == 'metis':
        assert h.depth == levels_needed(n, branching)
    if family_graph:
        assert pair_set(h.family_edge_index) == slow_family_pairs(
            h.parent.tolist(), data.edge_index)
        assert h.family_edge_index.size(1) == len(
            pair_set(h.family_edge_index))
    # The same result twice.
    assert_same(out, GraphHierarchy(method, branching, family_graph,
                                    seed)(data))


@fewer(2)
@given(graphs(max_nodes=24), st.sampled_from(METHODS), st.integers(2, 5),
       st.booleans())
def test_random_graphs_context(data, method, branching, family_graph):
    if family_graph and not bool(
            (data.edge_index[0] != data.edge_index[1]).any()):
        family_graph = False
    check_context(GraphHierarchy(method, branching, family_graph)(data))


@fewer(2)
@given(st.lists(graphs(max_nodes=20), min_size=1, max_size=5),
       st.sampled_from(METHODS), st.integers(2, 5), st.booleans(),
       st.integers(1, 5))
def test_loader_batches_the_hierarchies(datas, method, branching,
                                        family_graph, batch_size):
    if family_graph:  # graphs without edges cannot have a family graph
        datas = [d for d in datas if d.num_nodes == 1 or bool(
            (d.edge_index[0] != d.edge_index[1]).any())] or [plain(1, [])]
    transform = GraphHierarchy(method, branching, family_graph)
    signals = []
    for i, d in enumerate(datas):
        d.x = torch.randn(d.num_nodes, 2)
        d.idx = i
        signals.append(transform(d))
    for batch in DataLoader(signals, batch_size=batch_size):
        parts = [signals[i] for i in batch.idx.tolist()]
        expected = Hierarchy.batch([p.hierarchy for p in parts])
        got = batch.hierarchy
        assert got.parent.tolist() == expected.parent.tolist()
        assert got.num_leaves == expected.num_leaves
        if family_graph:
            assert pair_set(got.family_edge_index) == pair_set(
                expected.family_edge_index)
        else:
            assert got.family_edge_index is None
        assert torch.equal(batch.x, torch.cat([p.x for p in parts]))


def test_deterministic_under_seed_and_rng_untouched():
    data = to_data(nx.les_miserables_graph())
    for method in METHODS:
        state = torch.get_rng_state()
        a = GraphHierarchy(method, 4, True, seed=3)(data)
        b = GraphHierarchy(method, 4, True, seed=3)(data)
        assert_same(a, b)
        assert torch.equal(torch.get_rng_state(), state)


# METIS: parts within capacity ###############################################


def test_within_capacity_moves_the_least_connected_nodes():
    # Part 0 has 4 nodes (capacity 3); node 3 has no edge inside part 0.
    part = np.array([0, 0, 0, 0, 1, 2])
    xadj = np.array([0, 2, 4, 6, 7, 8, 8])
    adjncy = np.array([1, 2, 0, 2, 0, 1, 4, 3])
    out = _within_capacity(part, 3, 3, xadj, adjncy)
    assert out.tolist() == [0, 0, 0, 1, 1, 2]
    same = _within_capacity(np.array([0, 1, 1]), 2, 2, xadj[:4] * 0,
                            adjncy[:0])
    assert same.tolist() == [0, 1, 1]


def test_within_capacity_fills_empty_parts():
    part = np.zeros(7, dtype=np.int64)
    xadj = np.zeros(8, dtype=np.int64)
    out = _within_capacity(part, 3, 3, xadj, np.zeros(0, dtype=np.int64))
    assert np.bincount(out).tolist() == [3, 3, 1]


# Graclus ####################################################################


@pytest.mark.parametrize('name', sorted(real_graphs()))
@pytest.mark.parametrize('branching', [2, 3, 4, 16])
def test_graclus_real_graphs(with_fake_graclus, name, branching):
    data = to_data(real_graphs()[name])
    n = data.num_nodes
    out = GraphHierarchy('graclus', branching, family_graph=True)(data)
    h = out.hierarchy
    check_tree(h, n, branching)
    assert pair_set(h.family_edge_index) == slow_family_pairs(
        h.parent.tolist(), data.edge_index)
    check_context(out)
    assert_same(out, GraphHierarchy('graclus', branching, True)(data))


@given(graphs(), st.integers(2, 9), st.booleans(), SEEDS)
def test_graclus_random_graphs(data, branching, family_graph, seed):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pool, 'graclus', fake_graclus)
        n = data.num_nodes
        if family_graph and n > 1 and not bool(
                (data.edge_index[0] != data.edge_index[1]).any()):
            family_graph = False
        transform = GraphHierarchy('graclus', branching, family_graph, seed)
        state = torch.get_rng_state()
        out = transform(data)
        assert torch.equal(torch.get_rng_state(), state)
        h = out.hierarchy
        check_tree(h, n, branching)
        if family_graph:
            assert pair_set(h.family_edge_index) == slow_family_pairs(
                h.parent.tolist(), data.edge_index)
        assert_same(out, transform(data))


def test_graclus_star_and_isolated_nodes(with_fake_graclus):
    r"""A star matches one leaf per round and isolated nodes none: the
    unmatched are grouped by b, so the tree stays shallow."""
    star = plain(200, [(0, i) for i in range(1, 200)])
    for data in (star, plain(200, [])):
        h = GraphHierarchy('graclus', 4)(data).hierarchy
        check_tree(h, 200, 4)
        assert h.depth <= levels_needed(200, 4) + 2


@pytest.mark.skipif(not GRACLUS, reason='no graclus kernel installed')
def test_real_graclus():
    data = to_data(nx.les_miserables_graph())
    out = GraphHierarchy('graclus', 4, family_graph=True)(data)
    check_tree(out.hierarchy, data.num_nodes, 4)
    assert_same(out, GraphHierarchy('graclus', 4, True)(data))


@pytest.mark.skipif(GRACLUS, reason='a graclus kernel is installed')
def test_graclus_missing_kernel():
    with pytest.raises(ImportError, match="pip install pyg-lib.*"
                       "pip install torch-cluster.*method='metis'"):
        GraphHierarchy('graclus')


def test_graclus_missing_kernel_simulated(monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError('`graclus` requires `torch-cluster`.')

    monkeypatch.setattr(pool, 'graclus', missing)
    with pytest.raises(ImportError, match=r"needs the kernel of torch_geo"
                       r"metric.nn.pool.graclus, which is missing \(`graclus`"
                       r" requires `torch-cluster`.\): 'pip install pyg-lib'"):
        GraphHierarchy('graclus', 4)


# Optional packages ##########################################################


def test_pymetis_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pymetis', None)
    with pytest.raises(ImportError, match="needs pymetis: 'pip install "
                       "pymetis', or choose method='louvain'"):
        GraphHierarchy('metis')


def test_networkx_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'networkx', None)
    with pytest.raises(ImportError, match="needs networkx >= 2.8"):
        GraphHierarchy('louvain')


# Repr and validation ########################################################


def test_repr():
    assert repr(GraphHierarchy()) == (
        "GraphHierarchy(method='metis', branching=16, family_graph=False, "
        "seed=0)")
    assert repr(GraphHierarchy('louvain', 4, True, 7)) == (
        "GraphHierarchy(method='louvain', branching=4, family_graph=True, "
        "seed=7)")


@pytest.mark.parametrize('kwargs, error, pattern', [
    (dict(method='spectral'), ValueError, "unknown method 'spectral'; choose "
     "one of 'metis', 'louvain', 'graclus'"),
    (dict(method=None), TypeError, "'method' must be a str"),
    (dict(branching=1), ValueError,
     r"'branching' must be an int in \[2, inf\), got 1"),
    (dict(branching=True), TypeError, "'branching' must be an int, got True"),
    (dict(branching=4.0), TypeError, "'branching' must be an int, got 4.0"),
    (dict(branching=2.5), TypeError, "'branching' must be an int, got 2.5"),
    (dict(family_graph=1), TypeError,
     "'family_graph' must be True or False, got 1"),
    (dict(seed=-1), ValueError,
     r"'seed' must be an int in \[0, 2147483647\], got -1"),
    (dict(seed=2**31), ValueError, r"'seed' must be an int in \[0, "),
    (dict(seed=None), TypeError, "'seed' must be an int"),
])
def test_constructor_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        GraphHierarchy(**kwargs)


@pytest.mark.parametrize('data, pattern', [
    (Data(num_nodes=0), r"GraphHierarchy got a graph without nodes "
     r"\(num_nodes=0\); the leaves are the rows of 'x' \(or 'num_nodes'\)"),
    (Data(), r"a graph without nodes \(num_nodes=None\)"),
    (Data(x=torch.zeros(0, 3)), r"a graph without nodes \(num_nodes=0\)"),
    (Data(edge_index=torch.zeros(3, 2, dtype=torch.long), num_nodes=4),
     r"'edge_index' must have shape \[2, E\], got \(3, 2\)"),
    (Data(edge_index=torch.zeros(2, dtype=torch.long), num_nodes=4),
     r"'edge_index' must have shape \[2, E\], got \(2,\)"),
    (Data(edge_index=torch.tensor([[0, 1], [1, 4]]), num_nodes=4),
     r"edge_index\[1, 1\] = 4 is not a node id of this graph of 4 nodes "
     r"\(0..3\); fix the edges or set 'num_nodes'"),
    (Data(edge_index=torch.tensor([[0, -1], [1, 0]]), num_nodes=4),
     r"edge_index\[0, 1\] = -1 is not a node id"),
    (Batch.from_data_list([plain(3, [(0, 1)]), plain(3, [(1, 2)])]),
     r"GraphHierarchy got a Batch of 2 graphs; it builds the tree of one "
     r"graph"),
])
@pytest.mark.filterwarnings('ignore:Unable to accurately infer')
def test_data_errors(data, pattern):
    with pytest.raises(ValueError, match=pattern):
        GraphHierarchy('louvain', 2)(data)


def test_type_errors():
    with pytest.raises(TypeError, match="GraphHierarchy expects a "
                       "torch_geometric Data, got Tensor"):
        GraphHierarchy()(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="'edge_index' must have an integer "
                       "dtype, got torch.float32"):
        GraphHierarchy('louvain', 2)(Data(edge_index=torch.zeros(2, 3),
                                          num_nodes=4))
    with pytest.raises(TypeError, match="'edge_index' must be an integer "
                       "tensor, got list"):
        GraphHierarchy('louvain', 2)(Data(edge_index=[[0], [1]],
                                          num_nodes=4))


@pytest.mark.parametrize('method', METHODS)
def test_family_graph_needs_edges(method):
    for data in (plain(5, []), Data(num_nodes=5),
                 plain(5, [(0, 0), (3, 3)])):
        with pytest.raises(ValueError, match=(
                r"family_graph=True needs edges, but this graph of 5 nodes "
                r"has none \(besides self-loops\): its family graph would be "
                r"empty and no node would see another; use "
                r"family_graph=False")):
            GraphHierarchy(method, 2, family_graph=True)(data)


def _sparse_graph(n=12):
    import torch_geometric.transforms as T
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    return T.ToSparseTensor()(Data(x=torch.randn(n, 2), edge_index=ei))


def test_a_sparse_adjacency_is_refused():
    """The builder reads edge_index only: adj_t would be ignored."""
    with pytest.raises(ValueError, match="'adj_t', a sparse adjacency.*"
                       "T.ToSparseTensor after GraphHierarchy"):
        GraphHierarchy(branching=3)(_sparse_graph())


def test_sparse_node_features_follow_the_nodes():
    n = 12
    d = Data(x=torch.arange(n).float().view(-1, 1),
             edge_index=torch.randint(0, n, (2, 30),
                                      generator=torch.Generator()
                                      .manual_seed(0)),
             xs=torch.eye(n).to_sparse())
    out = GraphHierarchy(branching=3, tree_order=True)(d)
    assert torch.equal(out.xs.to_dense(), torch.eye(n)[out.n_id])
