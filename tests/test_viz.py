r"""Tests of :mod:`hsa_geo.viz`: :func:`plot_hierarchy` and
:func:`plot_attention_matrix` write non-empty PNGs with and without family
weights, with family graphs and forests; the tidy layout and the block lines
are checked on random forests; the softmax panel and the large-hierarchy
path of the matrix are checked against the math; size guards and bad input
raise clear errors."""
import importlib

import matplotlib

matplotlib.use('Agg')

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hsa_geo import (Hierarchy, hierarchical_attention,  # noqa: E402
                     hierarchical_attention_matrix)
from hsa_geo.functional import FamilyWeights  # noqa: E402
from hsa_geo.transforms.grid_hierarchy import GridHierarchy  # noqa: E402
from hsa_geo.transforms.sequence_hierarchy import \
    SequenceHierarchy  # noqa: E402
from hsa_geo.viz import plot_attention_matrix, plot_hierarchy  # noqa: E402
from strategies import children_of, forests, leaves_under  # noqa: E402

# The modules by path: ``hsa_geo.viz.plot_hierarchy`` as an attribute is the
# function of the same name.
matrix_mod = importlib.import_module('hsa_geo.viz.plot_attention_matrix')
tree_mod = importlib.import_module('hsa_geo.viz.plot_hierarchy')

PNG = b'\x89PNG\r\n\x1a\n'
EXACT = 1e-10

#          7           4        leaves 0..4, clusters 5, 6, 7; node 6 has a
#       /  |  \                 single child; leaf 4 is a tree on its own.
#      5   6   2
#     / \  |
#    0   1 3
EXAMPLE = Hierarchy.from_parent([5, 5, 7, 6, -1, 7, 7, -1], 5)


def qkv(n, heads=2, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, d, generator=g, dtype=torch.float64)
            for _ in range(3)]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1000


def sequence():
    return SequenceHierarchy([4, 2]).build(14)


# plot_hierarchy ############################################################


def test_tree_without_weights(tmp_path):
    fig = plot_hierarchy(sequence(), path=tmp_path / 'tree.png')
    assert isinstance(fig, Figure)
    assert_png(tmp_path / 'tree.png')
    assert len(fig.axes) == 1  # no colour bar without weights


def test_tree_with_weights_of_every_head(tmp_path):
    h = sequence()
    q, k, v = qkv(h.num_leaves, heads=3)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    for head in (0, 2, -1):
        fig = plot_hierarchy(h, weights, head=head,
                             path=tmp_path / f'w{head}.png')
        assert len(fig.axes) == 2  # the colour bar
        assert_png(tmp_path / f'w{head}.png')


def test_single_head_weights_and_forest(tmp_path):
    q, k, v = (t[:, 0] for t in qkv(5))
    _, weights = hierarchical_attention(q, k, v, EXAMPLE, return_weights=True)
    assert weights.weight.dim() == 1
    plot_hierarchy(EXAMPLE, weights, path=tmp_path / 'forest.png')
    assert_png(tmp_path / 'forest.png')


def test_family_graph_with_and_without_weights(tmp_path):
    # Leaf 0 -> 1 and cluster 5 <-> 6 may attend; leaf 2 sees nothing.
    h = EXAMPLE.with_family_graph(torch.tensor([[0, 5, 6], [1, 6, 5]]))
    plot_hierarchy(h, path=tmp_path / 'graph.png')
    assert_png(tmp_path / 'graph.png')
    q, k, v = qkv(5)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    plot_hierarchy(h, weights, head=1, path=tmp_path / 'graph_w.png')
    assert_png(tmp_path / 'graph_w.png')


def test_grid_tree_with_weights(tmp_path):
    from torch_geometric.data import Data
    out = GridHierarchy(patch_size=2)(Data(image=torch.rand(1, 8, 6)))
    h = out.hierarchy
    q, k, v = qkv(h.num_leaves)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    labels = {i: f'{r},{c}' for i, (r, c) in
              enumerate(out.leaf_coord.tolist())}
    plot_hierarchy(h, weights, node_labels=labels, min_weight=0.05,
                   path=tmp_path / 'grid.png')
    assert_png(tmp_path / 'grid.png')


def test_draws_into_given_axes_and_labels(tmp_path):
    fig = Figure()
    ax = fig.add_subplot()
    h = EXAMPLE
    names = [f'n{i}' for i in range(h.num_nodes)]
    assert plot_hierarchy(h, ax=ax, node_labels=names) is fig
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    ax2 = Figure().add_subplot()
    plot_hierarchy(h, ax=ax2, node_labels=False, title='')
    assert len(ax2.texts) == 0 and ax2.get_title() == ''
    ax3 = Figure().add_subplot()
    plot_hierarchy(h, ax=ax3, node_labels={4: 'alone'})
    assert [t.get_text() for t in ax3.texts] == ['alone']


@given(forests(max_leaves=25))
def test_tidy_layout(f):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    x, y, order = tree_mod._tidy_layout(h)
    n = h.num_leaves
    assert sorted(order) == list(range(n))
    assert [x[i] for i in order] == list(range(n))  # leaves left to right
    assert {y[i] for i in range(n)} == {-float(h.depth)}  # on the bottom
    depth = h.node_depth.tolist()
    under = leaves_under(f.parent, n)
    for node, kids in children_of(f.parent).items():
        assert y[node] == -depth[node] > max(y[c] for c in kids)
        assert min(x[c] for c in kids) <= x[node] <= max(x[c] for c in kids)
        # A subtree's leaves are consecutive in the drawing: no crossings.
        pos = sorted(x[i] for i in under[node])
        assert pos == [pos[0] + j for j in range(len(pos))]


def test_contiguous_trees_keep_leaf_order():
    _, _, order = tree_mod._tidy_layout(SequenceHierarchy([3, 2]).build(20))
    assert order == list(range(20))


def test_hierarchy_guards():
    big = SequenceHierarchy([2]).build(1500)  # 1500 + 750 + 1 nodes
    with pytest.raises(ValueError, match=r'2251 nodes, more than max_nodes'):
        plot_hierarchy(big)
    with pytest.raises(ValueError, match=r'more than max_nodes=10'):
        plot_hierarchy(sequence(), max_nodes=10)
    h = sequence()
    q, k, v = qkv(h.num_leaves)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    with pytest.raises(ValueError, match=r'weight arrows to draw, more than '
                       r'max_arrows=5; raise min_weight'):
        plot_hierarchy(h, weights, max_arrows=5)
    graph = EXAMPLE.with_family_graph(torch.tensor([[0, 5], [1, 6]]))
    with pytest.raises(ValueError, match=r'2 family-graph arcs'):
        plot_hierarchy(graph, max_arrows=1)


def test_bad_weights():
    h = sequence()
    q, k, v = qkv(h.num_leaves)
    _, w = hierarchical_attention(q, k, v, h, return_weights=True)
    with pytest.raises(ValueError, match=r'head=2 is out of range for 2'):
        plot_hierarchy(h, w, head=2)
    with pytest.raises(ValueError,
                       match=r"'weights' must be the FamilyWeights"):
        plot_hierarchy(h, w.weight)
    with pytest.raises(ValueError, match=r'weights.weight must be \[P, H\]'):
        plot_hierarchy(h, FamilyWeights(w.index, w.weight[:-1]))
    with pytest.raises(ValueError, match=r'weights.index must be an integer'):
        plot_hierarchy(h, FamilyWeights(w.index.double(), w.weight))
    q5, k5, v5 = qkv(5)
    _, w5 = hierarchical_attention(q5, k5, v5, EXAMPLE, return_weights=True)
    with pytest.raises(ValueError, match=r'is not a pair of siblings'):
        plot_hierarchy(SequenceHierarchy([4]).build(6), w5)  # another tree
    _, w_other = hierarchical_attention(*qkv(40), SequenceHierarchy(
        [8]).build(40), return_weights=True)
    with pytest.raises(ValueError, match=r'node ids outside 0..20'):
        plot_hierarchy(h, w_other)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'hierarchy' must be a hsa_geo"):
        plot_hierarchy(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r'node_labels has 3 entries but the '
                       r'hierarchy has 8 nodes'):
        plot_hierarchy(EXAMPLE, node_labels=['a', 'b', 'c'])
    with pytest.raises(ValueError, match=r'node_labels has key 8'):
        plot_hierarchy(EXAMPLE, node_labels={8: 'x'})
    with pytest.raises(ValueError, match=r"'node_labels' must be None"):
        plot_hierarchy(EXAMPLE, node_labels='abc')


# plot_attention_matrix #####################################################


def test_matrix_with_softmax(tmp_path):
    h = sequence()
    q, k, _ = qkv(h.num_leaves)
    fig = plot_attention_matrix(q, k, h, head=1, softmax=True,
                                path=tmp_path / 'm.png')
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # + colour bar
    assert 'KL' in fig.axes[1].get_title()
    assert_png(tmp_path / 'm.png')


def test_matrix_given_directly(tmp_path):
    h = sequence()
    q, k, _ = qkv(h.num_leaves)
    mats = hierarchical_attention_matrix(q, k, h)
    plot_attention_matrix(mats, head=1, path=tmp_path / 'a.png')
    assert_png(tmp_path / 'a.png')
    plot_attention_matrix(mats[0], hierarchy=h, log=True,
                          path=tmp_path / 'b.png')
    assert_png(tmp_path / 'b.png')


def test_matrix_forest_family_graph_2d_inputs(tmp_path):
    h = EXAMPLE.with_family_graph(torch.tensor([[0, 5], [1, 6]]))
    q, k, _ = (t[:, 0] for t in qkv(5))
    fig = Figure()
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    assert plot_attention_matrix(q, k, h, softmax=True, log=True,
                                 ax=axes) is fig
    fig.savefig(tmp_path / 'c.png')
    assert_png(tmp_path / 'c.png')


def test_softmax_panel_is_softmax_within_trees():
    q, k, _ = qkv(5)
    p = matrix_mod._softmax_matrix(q, k, EXAMPLE, None)
    assert torch.allclose(p.sum(-1), torch.ones(2, 5, dtype=p.dtype))
    assert (p[:, :4, 4] == 0).all() and (p[:, 4, :4] == 0).all()
    assert torch.allclose(p[:, 4, 4], torch.ones(2, dtype=p.dtype))
    # A flat tree is softmax attention: the KL in the title is 0.
    flat = Hierarchy.from_parent([6] * 6 + [-1], 6)
    q, k, _ = qkv(6, seed=1)
    qm = hierarchical_attention_matrix(q, k, flat)
    pm = matrix_mod._softmax_matrix(q, k, flat, None)
    assert (qm - pm).abs().max() < EXACT
    assert abs(matrix_mod._total_kl(qm[0], pm[0])) < EXACT


def test_large_hierarchies_use_the_dynamic_program(monkeypatch):
    h = SequenceHierarchy([3, 2]).build(11)
    q, k, _ = qkv(11, heads=3)
    reference = matrix_mod._hsa_matrix(q, k, h, 0.7)
    monkeypatch.setattr(matrix_mod, '_MAX_REFERENCE_PAIRS', 0)
    from_dp = matrix_mod._hsa_matrix(q, k, h, 0.7)
    assert from_dp.shape == (3, 11, 11)
    assert (from_dp - reference).abs().max() < EXACT


@given(forests(max_leaves=15))
def test_blocks_follow_the_tree(f):
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    order, segs, trees = matrix_mod._blocks(h)
    _, _, layout_order = tree_mod._tidy_layout(h)
    assert order == layout_order
    n = h.num_leaves
    kids = children_of(f.parent)
    # One vertical and one horizontal line per child boundary.
    assert len(segs) == 2 * sum(len(c) - 1 for c in kids.values())
    assert sum(hi - lo for lo, hi in trees) == n
    # In tree order Q is constant on every block a x b (a != b).
    q, k, _ = qkv(n)
    perm = torch.tensor(order)
    qm = hierarchical_attention_matrix(q, k, h)[:, perm][:, :, perm]
    rank = {leaf: i for i, leaf in enumerate(order)}
    under = leaves_under(f.parent, n)
    for node, children in kids.items():
        for a in children:
            for b in children:
                if a != b:
                    rows = [rank[i] for i in under[a]]
                    cols = [rank[j] for j in under[b]]
                    block = qm[:, rows][:, :, cols]
                    assert (block - block[:, :1, :1]).abs().max() < EXACT


def test_contiguous_block_lines():
    order, segs, trees = matrix_mod._blocks(SequenceHierarchy([2]).build(4))
    assert order == [0, 1, 2, 3] and trees == [(0, 4)]
    assert sorted(segs) == sorted([
        ((0.5, -0.5), (0.5, 1.5)), ((-0.5, 0.5), (1.5, 0.5)),
        ((2.5, 1.5), (2.5, 3.5)), ((1.5, 2.5), (3.5, 2.5)),
        ((1.5, -0.5), (1.5, 3.5)), ((-0.5, 1.5), (3.5, 1.5)),
    ])


def test_matrix_guards_and_bad_input():
    h = sequence()
    q, k, _ = qkv(h.num_leaves)
    with pytest.raises(ValueError, match=r'softmax=True needs queries and'):
        plot_attention_matrix(torch.rand(4, 4), softmax=True)
    with pytest.raises(ValueError, match=r'needs the hierarchy'):
        plot_attention_matrix(q, k)
    with pytest.raises(ValueError, match=r'must be \[N, N\] or \[H, N, N\]'):
        plot_attention_matrix(torch.rand(4, 5))
    with pytest.raises(ValueError, match=r'2001 leaves is more than '
                       r'max_leaves=2000'):
        plot_attention_matrix(torch.zeros(1).expand(2001, 2001))
    with pytest.raises(ValueError, match=r'more than max_leaves=10'):
        plot_attention_matrix(q, k, h, max_leaves=10)
    with pytest.raises(ValueError, match=r'cover 5 leaves but the hierarchy '
                       r'has 14'):
        plot_attention_matrix(torch.rand(5, 5), hierarchy=h)
    with pytest.raises(ValueError, match=r'head=2 is out of range for 2'):
        plot_attention_matrix(q, k, h, head=2)
    with pytest.raises(ValueError, match=r'q and k must be floating point'):
        plot_attention_matrix(q, k[:, :1], h)
    with pytest.raises(ValueError, match=r"'ax' must be 2 axes"):
        plot_attention_matrix(q, k, h, softmax=True,
                              ax=Figure().add_subplot())
    with pytest.raises(ValueError, match=r"'q' must be a tensor"):
        plot_attention_matrix([[1.0]])
    with pytest.raises(ValueError, match=r"'hierarchy' must be a hsa_geo"):
        plot_attention_matrix(torch.rand(2, 2), hierarchy=[1, -1])


def test_degenerate_pictures(tmp_path):
    # One leaf (no families, Q = [[1]]), all roots, an all-zero matrix.
    one = Hierarchy.from_parent([-1], 1)
    q, k, v = qkv(1)
    _, weights = hierarchical_attention(q, k, v, one, return_weights=True)
    plot_hierarchy(one, weights, path=tmp_path / 'one.png')
    plot_attention_matrix(q, k, one, softmax=True, log=True,
                          path=tmp_path / 'one_m.png')
    plot_hierarchy(Hierarchy.from_parent([-1, -1, -1], 3),
                   path=tmp_path / 'roots.png')
    plot_attention_matrix(torch.zeros(3, 3), log=True,
                          path=tmp_path / 'zeros.png')
    for name in ('one', 'one_m', 'roots', 'zeros'):
        assert_png(tmp_path / f'{name}.png')
