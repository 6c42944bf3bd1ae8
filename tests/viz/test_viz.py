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
from hypothesis import given, strategies as st  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hsa_geo import (Hierarchy, hierarchical_attention,  # noqa: E402
                     hierarchical_attention_matrix)
from hsa_geo.functional import FamilyWeights  # noqa: E402
from hsa_geo.transforms.grid_hierarchy import GridHierarchy  # noqa: E402
from hsa_geo.transforms.sequence_hierarchy import \
    SequenceHierarchy  # noqa: E402
from hsa_geo.viz import plot_attention_matrix, plot_hierarchy  # noqa: E402
from tests.helpers.strategies import (  # noqa: E402
    children_of, forests, leaves_under)

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


def test_modalities_of_a_multi_modal_signal(tmp_path):
    from matplotlib.colors import to_rgba

    from hsa_geo.data import HeteroNestedSignal
    # words 0-3, patches 4-6, atoms 7-8; cluster 9 all words, 10 and 11
    # (and 13 above 11, 12 the root) mixed
    tree = Hierarchy.from_parent(
        [9, 9, 9, 10, 10, 10, 11, 11, 12, 12, 12, 13, -1, 12], 9)
    data = HeteroNestedSignal.from_hierarchy(
        tree, {'word': torch.randn(4, 2), 'patch': torch.randn(3, 2),
               'atom': torch.randn(2, 2)})
    fig = plot_hierarchy(data, path=tmp_path / 'm.png')
    ax = fig.axes[0]
    faces = ax.collections[-1].get_facecolors()
    expected = ['C0'] * 4 + ['C1'] * 3 + ['C2'] * 2 + ['C0'] + ['0.75'] * 4
    assert [tuple(f) for f in faces] == [to_rgba(c) for c in expected]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ['word', 'patch', 'atom', 'mixed']
    assert (tmp_path / 'm.png').stat().st_size > 0


def test_tree_with_weights_of_every_head(tmp_path):
    h = sequence()
    q, k, v = qkv(h.num_leaves, heads=3)
    _, weights = hierarchical_attention(q, k, v, h, return_weights=True)
    for head in (0, 2):
        fig = plot_hierarchy(h, weights, head=head,
                             path=tmp_path / f'w{head}.png')
        assert len(fig.axes) == 2  # the colour bar
        assert_png(tmp_path / f'w{head}.png')
    # Python's negative indices would show another head than asked for.
    with pytest.raises(ValueError, match=r"'head' must be an int in \[0, 2\]"):
        plot_hierarchy(h, weights, head=-1)


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
    with pytest.raises(ValueError, match=r"'head' must be an int in \[0, 1\]"):
        plot_hierarchy(h, w, head=2)
    with pytest.raises(TypeError,
                       match=r"'weights' must be the FamilyWeights"):
        plot_hierarchy(h, w.weight)
    with pytest.raises(ValueError, match=r'weights.weight must be \[P, H\]'):
        plot_hierarchy(h, FamilyWeights(w.index, w.weight[:-1]))
    with pytest.raises(TypeError,
                       match=r"'weights.index' must have an integer dtype"):
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
    with pytest.raises(TypeError, match=r"'hierarchy' must be a hsa_geo"):
        plot_hierarchy(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r'node_labels has 3 entries but the '
                       r'hierarchy has 8 nodes'):
        plot_hierarchy(EXAMPLE, node_labels=['a', 'b', 'c'])
    with pytest.raises(ValueError, match=r"'node_labels key' must be an int "
                       r"in \[0, 7\], got 8"):
        plot_hierarchy(EXAMPLE, node_labels={8: 'x'})
    with pytest.raises(TypeError, match=r"'node_labels' must be None"):
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
    p = matrix_mod._log_softmax_matrix(q, k, EXAMPLE, None).exp()
    assert torch.allclose(p.sum(-1), torch.ones(2, 5, dtype=p.dtype))
    assert (p[:, :4, 4] == 0).all() and (p[:, 4, :4] == 0).all()
    assert torch.allclose(p[:, 4, 4], torch.ones(2, dtype=p.dtype))
    # A flat tree is softmax attention: the KL in the title is 0.
    flat = Hierarchy.from_parent([6] * 6 + [-1], 6)
    q, k, _ = qkv(6, seed=1)
    qm = hierarchical_attention_matrix(q, k, flat)
    log_p = matrix_mod._log_softmax_matrix(q, k, flat, None)
    assert (qm - log_p.exp()).abs().max() < EXACT
    assert abs(matrix_mod._total_kl(qm[0], log_p[0])) < EXACT


def test_kl_title_of_float32_inputs_is_that_of_float64():
    r"""Scores 240 apart: a softmax weight of float32 underflows to zero,
    which made the KL in the title infinite; q and k of different float
    dtypes are taken too."""
    h = Hierarchy.from_parent([3, 4, 4, -1, 3], 3)  # leaf 0 | (1, 2)
    q = torch.tensor([[1.], [0.], [0.]])
    k = torch.tensor([[0.], [1.], [-1.]])
    titles = [plot_attention_matrix(a, b, h, softmax=True, scale=120.0)
              .axes[1].get_title() for a, b in
              ((q.double(), k.double()), (q, k), (q, k.double()))]
    assert 'inf' not in titles[0] and titles[0] == titles[1] == titles[2]


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
    with pytest.raises(ValueError, match=r"'head' must be an int in \[0, 1\]"):
        plot_attention_matrix(q, k, h, head=2)
    with pytest.raises(ValueError, match=r'q and k must have one shape'):
        plot_attention_matrix(q, k[:, :1], h)
    with pytest.raises(ValueError, match=r"'ax' must be 2 axes"):
        plot_attention_matrix(q, k, h, softmax=True,
                              ax=Figure().add_subplot())
    with pytest.raises(TypeError, match=r"'q' must be a floating point"):
        plot_attention_matrix([[1.0]])
    with pytest.raises(TypeError, match=r"'hierarchy' must be a hsa_geo"):
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


# Bad arguments of both pictures #############################################

# Any small value of any plain kind: what a caller might pass by mistake.
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.just([2]), st.just((3.0, -1.0)), st.just(torch.tensor(2)))


def family_weights(h, heads=2):
    q, k, v = qkv(h.num_leaves, heads=heads)
    return hierarchical_attention(q, k, v, h, return_weights=True)[1]


@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(head=-1), ValueError, r"'head' must be an int in \[0, 1\]"),
    (dict(head=True), TypeError, r"'head' must be an int"),
    (dict(head=1.0), TypeError, r"'head' must be an int"),
    (dict(softmax=1), TypeError, r"'softmax' must be True or False"),
    (dict(log='yes'), TypeError, r"'log' must be True or False"),
    (dict(boundaries=None), TypeError, r"'boundaries' must be True or"),
    (dict(scale=0.0), ValueError, r"'scale' must be a finite number"),
    (dict(scale=float('nan')), ValueError, r"'scale' must be a finite"),
    (dict(scale='1'), TypeError, r"'scale' must be a real number"),
    (dict(path=3), TypeError, r"'path' must be a str or os.PathLike"),
    (dict(path=''), ValueError, r"'path' is empty"),
    (dict(path='/no/such/folder/m.png'), ValueError, r"the folder of 'path'"),
    (dict(figsize=(3.0, 0.0)), ValueError, r"'figsize\[1\]' must be a finite"),
    (dict(figsize=(3.0, 2.0, 1.0)), ValueError, r"'figsize' must be a pair"),
    (dict(figsize=5.0), TypeError, r"'figsize' must be a pair"),
    (dict(dpi=0), ValueError, r"'dpi' must be an int in"),
    (dict(dpi=72.5), TypeError, r"'dpi' must be an int"),
    (dict(max_leaves=0), ValueError, r"'max_leaves' must be an int in"),
    (dict(cmap='no_such_map'), ValueError, r"'cmap'='no_such_map' is not"),
    (dict(cmap=3), TypeError, r"'cmap' must be the name of a colour map"),
    (dict(title=3), TypeError, r"'title' must be a str or None"),
    (dict(ax='axes'), TypeError, r"'ax' must be matplotlib Axes"),
    (dict(k=torch.rand(14, 2, 4).long()), TypeError,
     r"'k' must be a floating point tensor"),
    (dict(k=[0.0]), TypeError, r"'k' must be a floating point tensor"),
])
def test_matrix_rejects_bad_arguments(kwargs, error, pattern):
    h = sequence()
    q, k, _ = qkv(h.num_leaves)
    args = dict(q=q, k=k, hierarchy=h)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        plot_attention_matrix(**args)


def test_matrix_rejects_non_finite_values():
    m = torch.rand(3, 3)
    m[1, 2] = float('nan')
    with pytest.raises(ValueError, match=r'holds NaN or inf'):
        plot_attention_matrix(m)


def test_matrix_rejects_negative_entries():
    """Scores instead of weights would draw a misleading picture."""
    m = torch.rand(3, 3)
    m[0, 1] = -0.5
    with pytest.raises(ValueError, match=r'negative entries \(-0\.5\); '
                       r'attention weights are >= 0'):
        plot_attention_matrix(m)


def test_path_suffix_is_checked_before_drawing(tmp_path):
    """A format matplotlib cannot write is refused before anything is
    drawn (and a path without suffix, a PNG at that path, is fine)."""
    for plot, arg in ((plot_hierarchy, EXAMPLE),
                      (plot_attention_matrix, torch.rand(3, 3))):
        with pytest.raises(ValueError, match=r"ends in '\.foo', a format "
                           r"matplotlib does not write"):
            plot(arg, path=str(tmp_path / 'x.foo'))
        assert not (tmp_path / 'x.foo').exists()
    plot_attention_matrix(torch.rand(3, 3), path=str(tmp_path / 'plain'))
    assert (tmp_path / 'plain').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(head=-1), ValueError, r"'head' must be an int in \[0, 1\]"),
    (dict(head=-1, weights=None), ValueError, r"'head' must be an int in"),
    (dict(head=True), TypeError, r"'head' must be an int"),
    (dict(node_labels={True: 'x'}), TypeError, r"'node_labels key' must be"),
    (dict(node_labels={-1: 'x'}), ValueError, r"'node_labels key' must be"),
    (dict(node_labels=3), TypeError, r"'node_labels' must be None"),
    (dict(min_weight=1.5), ValueError, r"'min_weight' must be a finite"),
    (dict(min_weight=float('nan')), ValueError, r"'min_weight' must be a"),
    (dict(min_weight='0'), TypeError, r"'min_weight' must be a real number"),
    (dict(path=b'x.png'), TypeError, r"'path' must be a str or os.PathLike"),
    (dict(figsize=[float('inf'), 2.0]), ValueError, r"'figsize\[0\]' must"),
    (dict(dpi=True), TypeError, r"'dpi' must be an int"),
    (dict(max_nodes=0), ValueError, r"'max_nodes' must be an int in"),
    (dict(max_arrows=-1), ValueError, r"'max_arrows' must be an int in"),
    (dict(max_arrows=1.0), TypeError, r"'max_arrows' must be an int"),
    (dict(cmap='no_such_map'), ValueError, r"'cmap'='no_such_map' is not"),
    (dict(title=['t']), TypeError, r"'title' must be a str or None"),
    (dict(ax=[Figure().add_subplot()]), TypeError, r"'ax' must be one"),
    (dict(weights=(torch.zeros(2, 3, dtype=torch.long),)), ValueError,
     r"'weights' must be the FamilyWeights"),
])
def test_hierarchy_rejects_bad_arguments(kwargs, error, pattern):
    h = sequence()
    args = dict(hierarchy=h, weights=family_weights(h))
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        plot_hierarchy(**args)


def test_hierarchy_rejects_weights_that_are_not_probabilities():
    h = sequence()
    w = family_weights(h)
    with pytest.raises(ValueError, match=r'weights.weight must hold'):
        plot_hierarchy(h, FamilyWeights(w.index, w.weight * 3 - 1))
    with pytest.raises(ValueError, match=r'weights.weight must hold'):
        plot_hierarchy(h, FamilyWeights(w.index, w.weight * float('nan')))
    with pytest.raises(TypeError, match=r"'weights.weight' must be a float"):
        plot_hierarchy(h, FamilyWeights(w.index, w.weight.long()))


def test_colormap_objects_are_accepted():
    from matplotlib import colormaps
    h = sequence()
    plot_hierarchy(h, family_weights(h), cmap=colormaps['magma'])
    q, k, _ = qkv(h.num_leaves)
    plot_attention_matrix(q, k, h, cmap=colormaps['magma'])


MATRIX_ARGS = dict(head=0, softmax=False, scale=None, ax=None, path=None,
                   log=False, boundaries=True, cmap='viridis', title=None,
                   figsize=None, dpi=100, max_leaves=2000)


@given(st.sampled_from(sorted(MATRIX_ARGS)), ANYTHING)
def test_matrix_arguments_property(name, value):
    if name == 'path' and isinstance(value, str):
        value = None  # random names would write files into the checkout
    q, k, _ = qkv(5)
    try:
        fig = plot_attention_matrix(q, k, EXAMPLE,
                                    **dict(MATRIX_ARGS, **{name: value}))
    except (TypeError, ValueError):
        return
    assert isinstance(fig, Figure)


# Inputs that draw: queries and keys [5, (H,) D] over EXAMPLE's 5 leaves,
# or a matrix [N, N] / [H, N, N] with or without the tree.
VALID_SHAPES = [([5, 3], True, True), ([5, 2, 3], True, True),
                ([5, 5], False, False), ([2, 5, 5], False, False),
                ([5, 5], False, True), ([2, 5, 5], False, True)]


@given(st.one_of(
    st.tuples(st.sampled_from(VALID_SHAPES), st.just(torch.float64)),
    st.tuples(st.tuples(st.lists(st.integers(0, 6), max_size=4),
                        st.booleans(), st.booleans()),
              st.sampled_from([torch.float64, torch.int64]))))
def test_matrix_shapes_property(case):
    """Any shape and dtype: a clear error, and a figure for every valid
    input."""
    (shape, with_k, with_hierarchy), dtype = case
    q = torch.rand(shape, dtype=torch.float64).to(dtype)
    k = q.clone() if with_k else None
    valid = ((shape, with_k, with_hierarchy) in VALID_SHAPES and
             dtype == torch.float64)
    try:
        fig = plot_attention_matrix(
            q, k, EXAMPLE if with_hierarchy else None)
    except (TypeError, ValueError):
        assert not valid
        return
    assert isinstance(fig, Figure)


HIERARCHY_ARGS = dict(head=0, ax=None, path=None, node_labels=None,
                      min_weight=0.0, cmap='viridis', title=None,
                      figsize=None, dpi=100, max_nodes=2000, max_arrows=20000)


@given(st.sampled_from(sorted(HIERARCHY_ARGS) + ['weights', 'hierarchy']),
       ANYTHING)
def test_hierarchy_arguments_property(name, value):
    if name == 'path' and isinstance(value, str):
        value = None  # random names would write files into the checkout
    args = dict(HIERARCHY_ARGS, hierarchy=EXAMPLE,
                weights=family_weights(EXAMPLE))
    args[name] = value
    try:
        fig = plot_hierarchy(**args)
    except (TypeError, ValueError):
        return
    assert isinstance(fig, Figure)


@pytest.mark.parametrize('plot,arg', [(plot_hierarchy, EXAMPLE),
                                      (plot_attention_matrix, None)])
@pytest.mark.parametrize('rc_format', ['png', 'svg'])
def test_a_path_without_suffix_is_a_png_at_that_path(tmp_path, plot, arg,
                                                     rc_format):
    """matplotlib alone would write path.<savefig.format>."""
    import matplotlib
    arg = torch.rand(4, 4) if arg is None else arg
    with matplotlib.rc_context({'savefig.format': rc_format}):
        plot(arg, path=tmp_path / 'picture')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['picture']
    assert (tmp_path / 'picture').read_bytes()[:4] == b'\x89PNG'
    plot(arg, path=tmp_path / 'picture.v2.SVG')
    assert b'<svg' in (tmp_path / 'picture.v2.SVG').read_bytes()[:400]
