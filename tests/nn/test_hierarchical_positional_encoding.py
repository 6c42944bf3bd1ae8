r"""Tests of :class:`hsa_geo.nn.hierarchical_positional_encoding.
HierarchicalPositionalEncoding`: the sum over the path of every leaf checked
against a slow plain-Python construction on random forests (sequence, grid,
random-walk and Laplacian modes, both level conventions), the family-graph
features against PyG's :class:`AddLaplacianEigenvectorPE` /
:class:`AddRandomWalkPE` and networkx, random sign flips, gradients,
batching through :class:`torch_geometric.loader.DataLoader`, caching,
devices, and input validation."""
import gc
import math
import time

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import (AddLaplacianEigenvectorPE,
                                        AddRandomWalkPE)

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.nn import hierarchical_positional_encoding as hpe_module
from hsa_geo.nn.hierarchical_positional_encoding import \
    HierarchicalPositionalEncoding as HPE
from tests.helpers.strategies import (
    ancestors, balanced_assignments, children_of, depth_of, fewer, Forest,
    forests, height_of)

SEEDS = st.integers(0, 2**31 - 1)
LEVELS = st.sampled_from(['height', 'depth'])
# Devices other than the CPU, where the features are compared with the CPU's.
ACCELERATORS = ['cuda'] if torch.cuda.is_available() else []


pytestmark = pytest.mark.usefixtures('one_thread')


#          9              leaves 0..6; family 7 of leaves, family 8 of
#       /  |  \           leaves 3 and 4, family 9 mixing a leaf and two
#      7   8   6          clusters; leaf 5 is a tree of its own.
#    / | \  / \
#   0  1  2 3  4
PARENT = [7, 7, 7, 8, 8, -1, 9, 9, 9, -1]
NUM_LEAVES = 7


def example() -> Hierarchy:
    return Hierarchy.from_parent(PARENT, NUM_LEAVES)


def build(f: Forest) -> Hierarchy:
    return Hierarchy.from_parent(f.parent, f.num_leaves)


def randomise(module: HPE, seed: int) -> HPE:
    r"""Random parameters everywhere (biases included), float64."""
    module = module.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def random_family_graph(forest: Forest, seed: int) -> torch.Tensor:
    r"""A random subset of the ordered pairs of distinct siblings."""
    rng = np.random.default_rng(seed)
    pairs = []
    for kids in children_of(forest.parent).values():
        for a in kids:
            for b in kids:
                if a != b and rng.random() < 0.5:
                    pairs.append((a, b))
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2).t()


# The slow construction #####################################################


def slow_levels(forest: Forest, level: str, num_levels: int) -> list:
    parent, n = forest.parent, forest.num_leaves
    if level == 'depth':
        lvl = depth_of(parent)
    else:
        height = height_of(parent, n)
        lvl = [height[p] - 1 if p >= 0 else height[node]
               for node, p in enumerate(parent)]
    return [min(v, num_levels - 1) for v in lvl]


def slow_ranks(forest: Forest) -> list:
    rank = [0] * forest.num_nodes
    for kids in children_of(forest.parent).values():
        for r, c in enumerate(sorted(kids)):
            rank[c] = r
    return rank


def slow_family_graphs(forest: Forest, edges):
    r"""``{parent: (children, symmetric 0/1 adjacency)}``; complete graphs
    when ``edges`` is None."""
    out = {}
    pairs = set() if edges is None else {tuple(e) for e in edges.t().tolist()}
    for p, kids in children_of(forest.parent).items():
        kids = sorted(kids)
        adj = np.zeros((len(kids), len(kids)))
        for i, a in enumerate(kids):
            for j, b in enumerate(kids):
                if a != b and (edges is None or (a, b) in pairs
                               or (b, a) in pairs):
                    adj[i, j] = 1.0
        out[p] = (kids, adj)
    return out


def slow_random_walk(forest: Forest, edges, k: int) -> np.ndarray:
    feat = np.zeros((forest.num_nodes, k))
    for kids, adj in slow_family_graphs(forest, edges).values():
        walk = adj / np.maximum(adj.sum(1, keepdims=True), 1)
        power = np.eye(len(kids))
        for t in range(k):
            power = power @ walk
            feat[kids, t] = np.diag(power)
    return feat


def slow_sum(forest: Forest, term) -> torch.Tensor:
    r"""``pe(i) = sum over i and its ancestors of term(node)``."""
    return torch.stack([
        sum(term(a) for a in ancestors(forest.parent, i))
        for i in range(forest.num_leaves)
    ])


# The formula against the slow construction ##################################


@given(forests(max_leaves=16), LEVELS, st.integers(1, 5), st.integers(0, 3),
       SEEDS)
def test_sequence_matches_slow_construction(f, level, num_levels, extra,
                                            seed):
    h = build(f)
    branching = max(1, max(map(len, children_of(f.parent).values()),
                           default=1)) + extra
    module = randomise(HPE(3, 'sequence', num_levels=num_levels,
                           max_branching=branching, level=level), seed)
    lvl, rank = slow_levels(f, level, num_levels), slow_ranks(f)
    expected = slow_sum(f, lambda n: module.emb[lvl[n], rank[n]])
    torch.testing.assert_close(module.encode(h), expected, rtol=0,
                               atol=1e-12)
    assert module.node_levels(h).tolist() == lvl
    assert module.positional_features(h).tolist() == rank
    x = torch.randn(f.num_leaves, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x, h), x + expected, rtol=0,
                               atol=1e-12)


@given(forests(max_leaves=16), LEVELS, st.integers(1, 5),
       st.integers(1, 6), SEEDS)
def test_sinusoidal_sequence_matches_slow_construction(f, level, num_levels,
                                                       channels, seed):
    h = build(f)
    module = randomise(HPE(channels, 'sequence', num_levels=num_levels,
                           level=level), seed)
    lvl, rank = slow_levels(f, level, num_levels), slow_ranks(f)

    def term(n):
        code = torch.tensor([
            math.sin(rank[n] / 10000 ** (j / channels)) if j % 2 == 0 else
            math.cos(rank[n] / 10000 ** ((j - 1) / channels))
            for j in range(channels)], dtype=torch.float64)
        return code @ module.weight[lvl[n]] + module.bias[lvl[n]]

    torch.testing.assert_close(module.encode(h), slow_sum(f, term), rtol=0,
                               atol=1e-12)
    assert module.positional_features(h).tolist() == rank


def test_sinusoidal_sequence_takes_families_of_any_width():
    # a document-like tree: one sentence of 5,000 words beside one of 3
    h = Hierarchy.from_parent([5003] * 5000 + [5004] * 3 + [5005] * 2 + [-1],
                              5003)
    module = HPE(8, 'sequence')
    pe = module.encode(h)
    assert pe.shape == (5003, 8)
    # every word of the long sentence gets its own code
    assert torch.unique(pe[:5000], dim=0).size(0) == 5000
    pe.sum().backward()
    assert module.weight.grad.abs().sum() > 0
    assert 'max_branching=None' in repr(module)


@given(forests(max_leaves=16), LEVELS, st.integers(1, 4), SEEDS)
def test_grid_matches_slow_construction(f, level, num_levels, seed):
    h = build(f)
    g = torch.Generator().manual_seed(seed)
    grid_pos = torch.stack([
        torch.randint(0, 2, (f.num_nodes, ), generator=g),
        torch.randint(0, 3, (f.num_nodes, ), generator=g)
    ], dim=1)
    module = randomise(HPE(4, 'grid', num_levels=num_levels,
                           grid_size=(2, 3), level=level), seed)
    lvl = slow_levels(f, level, num_levels)
    rows, cols = grid_pos.tolist(), grid_pos.tolist()
    expected = slow_sum(
        f, lambda n: module.row_emb[lvl[n], rows[n][0]] + module.col_emb[
            lvl[n], cols[n][1]])
    torch.testing.assert_close(module.encode(h, grid_pos), expected, rtol=0,
                               atol=1e-12)
    assert torch.equal(module.positional_features(h, grid_pos), grid_pos)


@fewer(2)
@given(forests(max_leaves=16, max_branching=6), LEVELS, st.integers(1, 5),
       st.booleans(), SEEDS)
def test_random_walk_matches_slow_construction(f, level, k, sparse, seed):
    edges = random_family_graph(f, seed) if sparse else None
    h = Hierarchy.from_parent(f.parent, f.num_leaves, edges)
    module = randomise(HPE(3, 'random_walk', num_levels=3, k=k, level=level),
                       seed)
    feat = torch.from_numpy(slow_random_walk(f, edges, k))
    torch.testing.assert_close(module.positional_features(h), feat, rtol=0,
                               atol=1e-12)
    lvl = slow_levels(f, level, 3)
    expected = slow_sum(
        f, lambda n: feat[n] @ module.weight[lvl[n]] + module.bias[lvl[n]])
    torch.testing.assert_close(module.encode(h), expected, rtol=0,
                               atol=1e-12)


@fewer(2)
@given(forests(max_leaves=16, max_branching=6), st.integers(1, 5), SEEDS)
def test_laplacian_features_are_eigenvectors(f, k, seed):
    r"""Column ``c`` of a family's features is a unit eigenvector of its
    normalised Laplacian for the ``(c+1)``-th smallest eigenvalue (zero
    beyond the family size), the columns are orthonormal, and the first
    clearly non-zero entry is positive: exact even for repeated
    eigenvalues."""
    edges = random_family_graph(f, seed)
    h = Hierarchy.from_parent(f.parent, f.num_leaves, edges)
    module = randomise(HPE(3, 'laplacian', num_levels=2, k=k), seed).eval()
    feat = module.positional_features(h).numpy()
    seen = np.zeros(f.num_nodes, dtype=bool)
    for kids, adj in slow_family_graphs(f, edges).values():
        seen[kids] = True
        deg = adj.sum(1)
        dis = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0)
        lap = np.eye(len(kids)) - dis[:, None] * adj * dis[None, :]
        vals = np.linalg.eigvalsh(lap)
        vecs = feat[kids]
        for c in range(k):
            v = vecs[:, c]
            if c + 1 >= len(kids):
                assert np.all(v == 0)
                continue
            np.testing.assert_allclose(lap @ v, vals[c + 1] * v, atol=1e-9)
            assert abs(np.linalg.norm(v) - 1) < 1e-9
            assert v[np.abs(v) > 1e-6][0] > 0
        m = min(k, len(kids) - 1)
        np.testing.assert_allclose(vecs[:, :m].T @ vecs[:, :m], np.eye(m),
                                   atol=1e-9)
    assert np.all(feat[~seen] == 0)  # roots
    lvl = slow_levels(f, 'height', 2)
    feat = torch.from_numpy(feat)
    expected = slow_sum(
        f, lambda n: feat[n] @ module.weight[lvl[n]] + module.bias[lvl[n]])
    torch.testing.assert_close(module.encode(h), expected, rtol=0,
                               atol=1e-12)


def test_example_levels():
    h = example()
    assert HPE(2, max_branching=3).node_levels(h).tolist() == \
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    assert HPE(2, max_branching=3, level='depth').node_levels(h).tolist() == \
        [2, 2, 2, 2, 2, 0, 1, 1, 1, 0]
    assert HPE(2, max_branching=3, num_levels=2).node_levels(h).tolist() == \
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_balanced_sequence_gives_every_leaf_its_own_code():
    h = Hierarchy.from_assignments(balanced_assignments(16, 2))
    module = HPE(8, 'sequence', max_branching=2)
    pe = module.encode(h)
    assert pe.shape == (16, 8)
    assert torch.unique(pe, dim=0).size(0) == 16
    # Leaves 2i and 2i+1 differ only in their own rank.
    torch.testing.assert_close(pe[1] - pe[0],
                               module.emb[0, 1] - module.emb[0, 0])


def grid_example():
    r"""A 4x4 image as a quadtree: leaves in row-major order, four 2x2
    blocks, one root; each node's cell in its parent's block."""
    r, c = torch.arange(16) // 4, torch.arange(16) % 4
    block = (r // 2) * 2 + c // 2
    h = Hierarchy.from_assignments([block, torch.zeros(4, dtype=torch.long)])
    leaf_pos = torch.stack([r % 2, c % 2], dim=1)
    cluster_pos = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [0, 0]])
    return h, leaf_pos, cluster_pos


def test_grid_quadtree_from_nested_signal():
    h, leaf_pos, cluster_pos = grid_example()
    module = HPE(8, 'grid')
    data = NestedSignal.from_hierarchy(h, torch.randn(16, 8),
                                       leaf_grid_pos=leaf_pos,
                                       cluster_grid_pos=cluster_pos)
    pe = module.encode(data)
    torch.testing.assert_close(
        pe, module.encode(h, torch.cat([leaf_pos, cluster_pos])))
    assert torch.unique(pe, dim=0).size(0) == 16
    torch.testing.assert_close(module(data.x, data), data.x + pe)
    # Leaves (0, 0) and (0, 1) of one block differ by one column step.
    torch.testing.assert_close(pe[1] - pe[0],
                               module.col_emb[0, 1] - module.col_emb[0, 0])


# Against PyG and networkx ####################################################

# A family of 6 leaves (padded to 8) with an asymmetric graph (distinct
# eigenvalues), a family of 3 leaves (smaller than k + 1), both under a root.
FAMILY = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (1, 4), (0, 2)]


def spectral_example():
    parent = [9] * 6 + [10] * 3 + [11, 11, -1]
    edges = FAMILY + [(6, 7), (7, 8), (9, 10)]
    edge_index = torch.tensor(edges).t()
    return Hierarchy.from_parent(parent, 9, edge_index), edge_index


def test_laplacian_equals_pyg_and_networkx_up_to_sign():
    h, _ = spectral_example()
    k = 4
    feat = HPE(2, 'laplacian', k=k).positional_features(h).double()
    family = torch.tensor(FAMILY).t()
    family = torch.cat([family, family.flip(0)], dim=1)
    data = AddLaplacianEigenvectorPE(k, attr_name='pe', is_undirected=True)(
        Data(edge_index=family, num_nodes=6))
    graph = nx.Graph(FAMILY)
    lap = nx.normalized_laplacian_matrix(graph, nodelist=range(6)).toarray()
    vals, vecs = np.linalg.eigh(lap)
    assert np.min(np.diff(vals)) > 1e-3  # distinct: unique up to sign
    for c in range(k):
        ours = feat[:6, c]
        for ref in (data.pe[:, c].double(), torch.from_numpy(vecs[:, c + 1])):
            sign = torch.sign(ours @ ref)
            torch.testing.assert_close(ours, sign * ref, rtol=0, atol=1e-6)
    # The path 6 - 7 - 8: two non-trivial eigenvectors, then zeros.
    small = AddLaplacianEigenvectorPE(2, attr_name='pe', is_undirected=True)(
        Data(edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]),
             num_nodes=3)).pe.double()
    torch.testing.assert_close(feat[6:9, :2].abs(), small.abs(), rtol=0,
                               atol=1e-6)
    assert torch.all(feat[6:9, 2:] == 0)
    assert torch.all(feat[11] == 0)  # the root


def test_random_walk_equals_pyg():
    h, _ = spectral_example()
    k = 5
    feat = HPE(2, 'random_walk', k=k).positional_features(h).double()
    for nodes, pairs in ((range(6), FAMILY), (range(6, 9), [(0, 1), (1, 2)]),
                         (range(9, 11), [(0, 1)])):
        ei = torch.tensor(pairs).t()
        ei = torch.cat([ei, ei.flip(0)], dim=1)
        ref = AddRandomWalkPE(k, attr_name='pe')(
            Data(edge_index=ei, num_nodes=len(nodes))).pe.double()
        torch.testing.assert_close(feat[list(nodes)], ref, rtol=0, atol=1e-6)


def test_random_walk_on_dense_families_is_the_complete_graph():
    h = example()
    feat = HPE(2, 'random_walk', k=3).positional_features(h).double()
    complete = torch.tensor([[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]])
    ref = AddRandomWalkPE(3, attr_name='pe')(
        Data(edge_index=complete, num_nodes=3)).pe.double()
    for fam in ([0, 1, 2], [6, 7, 8]):
        torch.testing.assert_close(feat[fam], ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(feat[3], torch.tensor([0., 1., 0.],
                                                     dtype=torch.float64))


def test_directed_family_graph_is_symmetrised():
    h, edges = spectral_example()
    both = h.with_family_graph(torch.cat([edges, edges.flip(0)], dim=1))
    for mode in ('laplacian', 'random_walk'):
        module = HPE(2, mode, k=3)
        torch.testing.assert_close(module.positional_features(h),
                                   module.positional_features(both))


# Sign flips, determinism, shapes ############################################


def test_laplacian_sign_flips_in_training():
    h, _ = spectral_example()
    k = 3
    module = HPE(k, 'laplacian', num_levels=1, k=k)
    with torch.no_grad():
        module.weight.copy_(torch.eye(k))
    raw = module.positional_features(h)
    # Eval: deterministic, no flip.
    module.eval()
    torch.testing.assert_close(module.node_encoding(h), raw)
    module.train()
    torch.manual_seed(0)
    signs = set()
    for _ in range(8):
        out = module.node_encoding(h).detach()
        torch.testing.assert_close(out.abs(), raw.abs())
        for fam in (list(range(6)), [6, 7, 8], [9, 10]):
            nz = raw[fam].abs() > 1e-6
            ratio = torch.where(nz, out[fam] / raw[fam].where(nz, 1), 0)
            for c in range(k):
                col = ratio[nz[:, c], c]
                if col.numel():
                    assert torch.all(col == col[0])  # one sign per column
                    signs.add(float(col[0]))
    assert signs == {-1.0, 1.0}


@pytest.mark.parametrize('mode', ['sequence', 'grid', 'laplacian',
                                  'random_walk'])
def test_shapes_and_determinism(mode):
    h, _ = spectral_example()
    grid = torch.randint(0, 2, (h.num_nodes, 2)) if mode == 'grid' else None
    torch.manual_seed(1)
    a = HPE(5, mode, max_branching=6, k=3).eval()
    torch.manual_seed(1)
    b = HPE(5, mode, max_branching=6, k=3).eval()
    x = torch.randn(9, 5)
    out = a(x, h, grid)
    assert out.shape == (9, 5)
    assert a.encode(h, grid).shape == (9, 5)
    assert a.node_encoding(h, grid).shape == (12, 5)
    torch.testing.assert_close(out, a(x, h, grid), rtol=0, atol=0)
    torch.testing.assert_close(out, b(x, h, grid), rtol=0, atol=0)
    a.reset_parameters()
    assert not torch.allclose(a(x, h, grid), out)
    expected = {'sequence': (12, ), 'grid': (12, 2)}.get(mode, (12, 3))
    assert a.positional_features(h, grid).shape == expected
    assert repr(a).startswith(f"HierarchicalPositionalEncoding(5, "
                              f"mode='{mode}'")


def test_repr():
    assert repr(HPE(16, max_branching=8)) == (
        "HierarchicalPositionalEncoding(16, mode='sequence', num_levels=4, "
        "max_branching=8, level='height')")
    assert repr(HPE(4, 'random_walk', k=6, level='depth')) == (
        "HierarchicalPositionalEncoding(4, mode='random_walk', num_levels=4, "
        "k=6, level='depth')")


def test_x_must_have_the_dtype_of_the_encoding():
    # As every layer: no silent cast of x or of the encoding.
    h = example()
    module = HPE(3, max_branching=3)
    with pytest.raises(TypeError, match="'x' has dtype torch.float64 but "
                       "the encoding's parameters torch.float32"):
        module(torch.zeros(7, 3, dtype=torch.float64), h)
    out = module.double()(torch.zeros(7, 3, dtype=torch.float64), h)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, module.encode(h))
    # Autocast casts itself: half features take a float32 encoding.
    module.float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = module(torch.zeros(7, 3, dtype=torch.bfloat16), h)
    assert out.dtype == torch.bfloat16


# Gradients ###################################################################


def test_sequence_gradient_counts_leaves_under_each_entry():
    r"""``d sum(pe) / d E_l(r)`` is the number of leaves under the nodes that
    use the entry ``(l, r)``."""
    h = example()
    module = HPE(3, max_branching=4)
    x = torch.randn(7, 3, requires_grad=True)
    module(x, h).sum().backward()
    assert torch.equal(x.grad, torch.ones(7, 3))
    expected = torch.zeros(4, 4)
    lvl, rank = module.node_levels(h), h.sibling_rank
    expected.index_put_((lvl, rank), h.leaf_count.float(), accumulate=True)
    torch.testing.assert_close(module.emb.grad,
                               expected.unsqueeze(-1).expand(-1, -1, 3))


@pytest.mark.parametrize('mode', ['grid', 'laplacian', 'random_walk'])
def test_gradients_reach_parameters(mode):
    h, _ = spectral_example()
    grid = torch.randint(0, 2, (h.num_nodes, 2)) if mode == 'grid' else None
    module = randomise(HPE(3, mode, num_levels=2, k=3), 0)
    module.eval()  # no random flips: gradcheck needs a fixed function
    names = [n for n, _ in module.named_parameters()]
    params = list(module.parameters())
    x = torch.zeros(9, 3, dtype=torch.float64)

    def fn(*ps):
        return torch.func.functional_call(module, dict(zip(names, ps)),
                                          (x, h, grid))

    inputs = tuple(p.detach().clone().requires_grad_() for p in params)
    assert torch.autograd.gradcheck(fn, inputs)
    module(torch.zeros(9, 3, dtype=torch.float64), h, grid).pow(2).sum() \
        .backward()
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0


# Batching ####################################################################


@st.composite
def signal_lists(draw, sparse: bool):
    fs = draw(st.lists(forests(max_leaves=8, max_trees=2, max_branching=4),
                       min_size=1, max_size=4))
    seed = draw(SEEDS)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, f in enumerate(fs):
        edges = random_family_graph(f, seed + i) if sparse else None
        h = Hierarchy.from_parent(f.parent, f.num_leaves, edges)
        out.append(NestedSignal.from_hierarchy(
            h, torch.randn(f.num_leaves, 4, generator=g),
            leaf_grid_pos=torch.randint(0, 2, (f.num_leaves, 2), generator=g),
            cluster_grid_pos=torch.randint(0, 2, (h.num_clusters, 2),
                                           generator=g)))
    return out


@fewer(2)
@pytest.mark.parametrize('mode', ['sequence', 'grid'])
@given(signals=signal_lists(sparse=False), level=LEVELS)
def test_batch_equals_singles(mode, signals, level):
    module = HPE(4, mode, max_branching=8, level=level)
    batch = next(iter(DataLoader(signals, batch_size=len(signals))))
    expected = torch.cat([module(s.x, s) for s in signals])
    torch.testing.assert_close(module(batch.x, batch), expected, rtol=0,
                               atol=1e-6)


@fewer(2)
@pytest.mark.parametrize('mode', ['laplacian', 'random_walk'])
@given(signals=signal_lists(sparse=True), level=LEVELS)
def test_batch_equals_singles_family_graphs(mode, signals, level):
    module = HPE(4, mode, k=3, level=level).eval()
    batch = next(iter(DataLoader(signals, batch_size=len(signals))))
    # Raw features: the leaves of all signals, then their clusters.
    feats = [module.positional_features(s) for s in signals]
    leaves = torch.cat([f[:s.num_nodes] for f, s in zip(feats, signals)])
    clusters = torch.cat([f[s.num_nodes:] for f, s in zip(feats, signals)])
    torch.testing.assert_close(module.positional_features(batch),
                               torch.cat([leaves, clusters]), rtol=0,
                               atol=1e-6)
    out = module(batch.x, batch)
    torch.testing.assert_close(
        out, torch.cat([module(s.x, s) for s in signals]), rtol=0, atol=1e-5)


# Caching, inference mode, devices ###########################################


def test_features_cached_per_hierarchy_and_released():
    h, _ = spectral_example()
    module = HPE(2, 'random_walk', k=3)
    first = module.positional_features(h)
    cached = hpe_module._FEATURE_CACHE[h][('random_walk', 3)]
    first.fill_(7.0)  # a copy: the cache is untouched
    torch.testing.assert_close(module.positional_features(h),
                               cached.float())
    module.encode(h)
    assert hpe_module._FEATURE_CACHE[h][('random_walk', 3)] is cached
    size = len(hpe_module._FEATURE_CACHE)
    del h, first
    gc.collect()
    assert len(hpe_module._FEATURE_CACHE) == size - 1


def test_features_from_inference_mode_used_in_training():
    h, _ = spectral_example()
    module = HPE(2, 'laplacian', k=3)
    with torch.inference_mode():
        module.encode(h)
    module(torch.zeros(9, 2), h).sum().backward()
    assert module.weight.grad is not None


@pytest.mark.skipif(not ACCELERATORS, reason='no accelerator')
@pytest.mark.parametrize('device', ACCELERATORS or ['none'])
@pytest.mark.parametrize('mode', ['sequence', 'grid', 'laplacian',
                                  'random_walk'])
def test_device(device, mode):
    h, _ = spectral_example()
    grid = torch.randint(0, 2, (h.num_nodes, 2)) if mode == 'grid' else None
    module = HPE(4, mode, max_branching=6, k=3).eval()
    x = torch.randn(9, 4)
    expected = module(x, h, grid)
    module = module.to(device)
    hd = h.to(device)
    out = module(x.to(device), hd, None if grid is None else grid.to(device))
    assert out.device.type == device
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='move one of them'):
        module(x.to(device), h, grid)


# Validation ##################################################################


def test_constructor_errors():
    with pytest.raises(ValueError, match="unknown mode 'spiral'"):
        HPE(4, 'spiral')
    with pytest.raises(TypeError, match="'mode' must be a str"):
        HPE(4, None)
    with pytest.raises(ValueError, match="unknown level"):
        HPE(4, max_branching=2, level='breadth')
    with pytest.raises(TypeError, match="'level' must be a str"):
        HPE(4, max_branching=2, level=0)
    with pytest.raises(ValueError, match=r"'channels' must be an int in "
                       r"\[1, inf\), got 0"):
        HPE(0, max_branching=2)
    with pytest.raises(ValueError, match="'num_levels' must be an int in"):
        HPE(4, max_branching=2, num_levels=0)
    with pytest.raises(ValueError, match="'k' must be an int in"):
        HPE(4, 'laplacian', k=0)
    for name, kwargs in (('channels', dict(channels=2.5)),
                         ('channels', dict(channels=True)),
                         ('max_branching', dict(max_branching=2.0)),
                         ('num_levels', dict(num_levels='4')),
                         ('k', dict(mode='random_walk', k=True)),
                         (r'grid_size\[1\]',
                          dict(mode='grid', grid_size=(2, 2.5)))):
        kwargs = {'channels': 4, 'max_branching': 2, **kwargs}
        with pytest.raises(TypeError, match=f"'{name}' must be an int"):
            HPE(**kwargs)
    with pytest.raises(ValueError, match="'grid_size"):
        HPE(4, 'grid', grid_size=(2, 0))


def test_rank_beyond_max_branching():
    with pytest.raises(ValueError, match=r'max_branching >= 3'):
        HPE(4, max_branching=2).encode(example())


def test_grid_errors():
    h = example()
    module = HPE(4, 'grid')
    with pytest.raises(ValueError, match="needs the cell of every node"):
        module.encode(h)
    with pytest.raises(ValueError, match="needs the cell of every node"):
        module.encode(NestedSignal.from_hierarchy(h, torch.zeros(7, 4)))
    with pytest.raises(ValueError, match=r'shape \[10, 2\]'):
        module.encode(h, torch.zeros(7, 2, dtype=torch.long))
    with pytest.raises(TypeError, match='integer tensor'):
        module.encode(h, torch.zeros(10, 2))
    bad = torch.zeros(10, 2, dtype=torch.long)
    bad[4, 1] = 2
    with pytest.raises(ValueError, match=r'grid_pos\[4, 1\] = 2'):
        module.encode(h, bad)
    data = NestedSignal.from_hierarchy(
        h, torch.zeros(7, 4), leaf_grid_pos=torch.zeros(7, 2,
                                                        dtype=torch.long))
    data.cluster_grid_pos = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'cluster_grid_pos' must have "
                       r"shape \[3, 2\]"):
        module.encode(data)


def test_other_errors():
    h = example()
    module = HPE(4, max_branching=3)
    with pytest.raises(ValueError, match=r"'x' must be a \[N, C\] = \[7, 4\]"):
        module(torch.zeros(6, 4), h)
    with pytest.raises(ValueError, match=r"'x' must be"):
        module(torch.zeros(7, 5), h)
    with pytest.raises(ValueError, match="only used with mode='grid'"):
        module(torch.zeros(7, 4), h, torch.zeros(10, 2, dtype=torch.long))
    with pytest.raises(TypeError, match='must be a Hierarchy or a '
                       'NestedSignal'):
        module.encode([7, 7, -1])
    with pytest.raises(TypeError, match='must be a Hierarchy or a '
                       'NestedSignal, got Data'):
        module.encode(Data(hierarchy=None, x=torch.zeros(7, 4)))
    with pytest.raises(TypeError, match="'x' must be a floating point "
                       "tensor, got dtype torch.int64"):
        module(torch.zeros(7, 4, dtype=torch.long), h)
    with pytest.raises(TypeError, match="'x' must be a floating point "
                       "tensor, got list"):
        module([[0.0] * 4] * 7, h)
    with pytest.raises(ValueError, match="needs a family graph"):
        HPE(4, 'laplacian').encode(h)


def test_laplacian_without_any_family_of_two_needs_no_family_graph():
    r"""A forest of root leaves and single-child chains has no sibling to
    encode: zeros, with or without a family graph (a batch of such signals
    keeps no family graph, since it has no family to keep it for)."""
    module = HPE(4, 'laplacian')
    no_pairs = torch.empty(2, 0, dtype=torch.long)
    for h in (Hierarchy.from_parent([-1], 1),
              Hierarchy.from_parent([2, -1, 3, -1], 2)):
        for hh in (h, h.with_family_graph(no_pairs)):
            assert torch.equal(module.encode(hh),
                               torch.zeros(h.num_leaves, 4))


# Wide families ###############################################################


def wide_family(n: int, extra: int = 0, seed: int = 0) -> Hierarchy:
    r"""One family of :obj:`n` leaves under a root, its family graph a path
    plus :obj:`extra` random chords (generically distinct eigenvalues)."""
    src = torch.arange(n - 1)
    pairs = [torch.stack([src, src + 1])]
    if extra:
        g = torch.Generator().manual_seed(seed)
        pairs.append(torch.randint(0, n, (2, extra), generator=g))
    return Hierarchy.from_parent([n] * n + [-1], n, torch.cat(pairs, 1))


@pytest.mark.parametrize('mode', ['laplacian', 'random_walk'])
def test_wide_family_is_not_cubic(mode):
    r"""A family of 2,049 children (padded width 4,096) took 21 s
    (Laplacian) and 16 s (random walk) with dense batched algebra."""
    h = wide_family(2049)
    start = time.perf_counter()
    feat = HPE(4, mode, k=4).positional_features(h)
    assert time.perf_counter() - start < 5.0
    assert feat.shape == (2050, 4) and torch.isfinite(feat).all()
    if mode == 'random_walk':  # a path: p_1 = 0, p_2 = 1/2 inside
        assert feat[1000, 0] == 0 and abs(float(feat[1000, 1]) - 0.5) < 1e-12


@pytest.mark.parametrize('mode', ['laplacian', 'random_walk'])
@pytest.mark.parametrize('extra', [0, 40])
def test_sparse_route_equals_dense_route(monkeypatch, mode, extra):
    dense = HPE(4, mode, k=5).positional_features(wide_family(300, extra))
    monkeypatch.setattr(hpe_module, '_DENSE_WIDTH', 8)
    sparse = HPE(4, mode, k=5).positional_features(wide_family(300, extra))
    assert (sparse - dense).abs().max() < 1e-6


def test_complete_families_in_closed_form():
    h = Hierarchy.from_parent([5, 5, 6, 6, 6, 7, 7, -1], 5)
    feat = HPE(4, 'random_walk', k=6).positional_features(h).double()
    for bucket in h.family_buckets:
        adj = hpe_module._family_adjacency(bucket)
        want = hpe_module._random_walk_features(adj, 6)[bucket.mask]
        got = feat[bucket.children[bucket.mask]]
        assert (got - want).abs().max() < 1e-7  # float32 features
    # 20,000 children: instant.
    wide = Hierarchy.from_parent([20000] * 20000 + [-1], 20000)
    start = time.perf_counter()
    feat = HPE(4, 'random_walk', k=3).positional_features(wide).double()
    assert time.perf_counter() - start < 2.0
    m = 20000
    assert abs(float(feat[0, 1]) - 1 / (m - 1)) < 1e-9  # float32


@given(st.one_of(st.integers(-2, 3), st.floats(allow_nan=True),
                 st.booleans(), st.text(max_size=2), st.none()),
       st.sampled_from(['channels', 'num_levels', 'k', 'max_branching',
                        'grid_size']),
       st.sampled_from(['sequence', 'grid', 'laplacian', 'random_walk']))
def test_sizes_give_a_module_or_a_clear_error(value, name, mode):
    kwargs = {'channels': 4, 'mode': mode, 'max_branching': 3, name: value}
    try:
        module = HPE(**kwargs)
    except (TypeError, ValueError) as e:
        assert name in str(e)
    else:
        assert module.channels >= 1


@pytest.mark.parametrize('mode', ['sequence', 'grid', 'laplacian',
                                  'random_walk'])
@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(k=-5), ValueError, "'k' must be an int in"),
    (dict(k=2.5), TypeError, "'k' must be an int"),
    (dict(max_branching=-5), ValueError, "'max_branching' must be an int in"),
    (dict(max_branching='8'), TypeError, "'max_branching' must be an int"),
    (dict(grid_size='abc'), TypeError, r"'grid_size\[0\]' must be an int"),
    (dict(grid_size=(2, 0)), ValueError, r"'grid_size\[1\]' must be an int"),
    (dict(grid_size=(2, 2, 2)), ValueError, "'grid_size' must be a positive"),
])
def test_arguments_are_checked_in_every_mode(mode, kwargs, error, pattern):
    r"""Every argument is checked, also where the mode does not use it, so
    that a typo is not ignored."""
    with pytest.raises(error, match=pattern):
        HPE(4, mode, **kwargs)
