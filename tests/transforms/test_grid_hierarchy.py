r"""Tests of :class:`hsa_geo.transforms.grid_hierarchy.GridHierarchy`: the
quadtree over a patch grid (coverage, blocks, Z order, uniform depth), the
stored permutation and grid positions against a plain-Python recomputation,
images (a real photograph shipped with matplotlib) cut into patches and put
back together, batching with :class:`torch_geometric.loader.DataLoader`, the
fused leaf path of the dynamic program on even grids, and input
validation."""
import math
from typing import List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention
from hsa_geo.transforms.grid_hierarchy import GridHierarchy
from tests.helpers.attention import dense_output
from tests.helpers.strategies import fewer, children_of, depth_of, leaves_under

SIDES = st.integers(1, 11)
SEEDS = st.integers(0, 2**31 - 1)
EXACT = 1e-10


def grid(rows: int, cols: int, features: int = 3, **kwargs) -> Data:
    r"""A row-major patch grid whose features name their cell."""
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    x = torch.stack([r, c] + [r * cols + c] * (features - 2), 1).double()
    return Data(x=x, grid_size=(rows, cols), **kwargs)


def unpatch(x: Tensor, patch_index, rows, cols, channels, ph, pw):
    r"""The image back from the leaf features (inverse of the patching)."""
    row_major = x[patch_index.argsort()]
    return row_major.view(rows, cols, channels, ph, pw).permute(
        2, 0, 3, 1, 4).reshape(channels, rows * ph, cols * pw)


# The tree ##################################################################


def test_docstring_example():
    out = GridHierarchy(patch_size=16)(Data(image=torch.rand(3, 64, 48)))
    assert isinstance(out, NestedSignal)
    assert out.x.shape == (12, 768) and out.hierarchy.depth == 2
    # Z order of a 4 x 3 grid: the 2x2 blocks (0,0), (0,1), (1,0), (1,1).
    assert out.patch_index.tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11]
    assert out.hierarchy.parent.tolist() == [
        12, 12, 12, 12, 13, 13, 14, 14, 14, 14, 15, 15, 16, 16, 16, 16, -1
    ]
    assert out.cluster_coord.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1],
                                          [0, 0]]
    assert out.grid_size.tolist() == [[4, 3]]


def _z_key(rc: Tuple[int, int]) -> List[int]:
    r"""Sort key of Z order: the pairs of bits, highest first."""
    r, c = rc
    return [((r >> b) & 1, (c >> b) & 1) for b in range(16, -1, -1)]


@given(SIDES, SIDES)
def test_tree_against_plain_python(rows, cols):
    out = GridHierarchy()(grid(rows, cols))
    h = out.hierarchy
    n = rows * cols
    parent = h.parent.tolist()
    # The permutation: leaf i is the patch patch_index[i], in Z order.
    pidx = out.patch_index.tolist()
    assert sorted(pidx) == list(range(n))
    cells = [divmod(p, cols) for p in pidx]
    assert cells == sorted(cells, key=_z_key)
    assert out.leaf_coord.tolist() == [list(rc) for rc in cells]
    assert out.x[:, 0].tolist() == [r for r, _ in cells]
    assert out.x[:, 1].tolist() == [c for _, c in cells]
    # One tree of uniform depth covering every leaf once.
    assert h.num_trees == 1 and h.num_nodes == len(parent)
    levels = math.ceil(math.log2(max(rows, cols))) if n > 1 else 0
    assert h.depth == levels
    assert set(depth_of(parent)[:n]) == {levels}
    under = leaves_under(parent, n)
    root = parent.index(-1)
    assert under[root] == list(range(n))
    # Every cluster of level l covers exactly the patches of its cell.
    height = h.node_height.tolist()
    coord = out.cluster_coord.tolist()
    for i in range(h.num_clusters):
        node, lvl = n + i, height[n + i]
        r, c = coord[i]
        want = sorted(j for j, (pr, pc) in enumerate(cells)
                      if pr >> lvl == r and pc >> lvl == c)
        assert under[node] == want  # contiguous in Z order, too
        assert want == list(range(want[0], want[-1] + 1))
    # Branching: 1..4 children, at most 2 per axis.
    for node, kids in children_of(parent).items():
        assert 1 <= len(kids) <= 4


@given(SIDES, SIDES)
def test_grid_positions(rows, cols):
    out = GridHierarchy()(grid(rows, cols))
    h = out.hierarchy
    parent = h.parent.tolist()
    pos = torch.cat([out.leaf_grid_pos, out.cluster_grid_pos]).tolist()
    coord = torch.cat([out.leaf_coord, out.cluster_coord]).tolist()
    assert out.leaf_grid_pos.dtype == out.cluster_grid_pos.dtype == \
        torch.long
    assert all(p in ([0, 0], [0, 1], [1, 0], [1, 1]) for p in pos)
    assert out.leaf_grid_pos.tolist() == (out.leaf_coord % 2).tolist()
    for node, p in enumerate(parent):
        if p < 0:
            assert pos[node] == [0, 0]  # the root
            continue
        # The child's cell is the parent's cell doubled plus its position.
        assert [2 * coord[p][0] + pos[node][0],
                2 * coord[p][1] + pos[node][1]] == coord[node]
    for node, kids in children_of(parent).items():
        slots = [2 * pos[k][0] + pos[k][1] for k in kids]
        # Distinct positions, in the order of the siblings (Z order).
        assert slots == sorted(set(slots))
        assert h.sibling_rank[kids].tolist() == list(range(len(kids)))


def test_non_square_and_partial_blocks():
    out = GridHierarchy()(grid(3, 5))  # 3x5 -> 2x3 -> 1x2 -> 1x1
    h = out.hierarchy
    assert h.depth == 3 and h.num_clusters == 6 + 2 + 1
    kids = children_of(h.parent.tolist())
    counts = sorted(len(kids[15 + i]) for i in range(6))  # level 1
    assert counts == [1, 2, 2, 2, 4, 4]  # a 1x1 corner block (a chain)
    assert out.cluster_coord[:6].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1],
                                              [0, 2], [1, 2]]


def test_one_row_and_one_patch():
    out = GridHierarchy()(grid(1, 6))
    assert out.patch_index.tolist() == list(range(6))
    assert out.leaf_grid_pos[:, 0].tolist() == [0] * 6
    assert out.hierarchy.layout.leaf_blocks is not None  # 1x2 blocks, all full
    single = GridHierarchy()(grid(1, 1))
    assert single.hierarchy.num_nodes == 1
    assert single.cluster_grid_pos.shape == (0, 2)
    assert single.cluster_coord.shape == (0, 2)
    assert single.leaf_grid_pos.tolist() == [[0, 0]]


@given(SIDES, SIDES)
def test_deterministic(rows, cols):
    a = GridHierarchy()(grid(rows, cols))
    b = GridHierarchy()(grid(rows, cols))
    for key in ('x', 'patch_index', 'leaf_coord', 'leaf_grid_pos',
                'cluster_grid_pos', 'cluster_coord', 'leaf_parent_index',
                'cluster_parent_index'):
        assert torch.equal(a[key], b[key])


# Patch grids given as x ####################################################


def test_node_attributes_follow_the_permutation():
    rows, cols = 3, 4
    n = rows * cols
    data = grid(rows, cols, pos=torch.randn(n, 2),
                node_y=torch.arange(n), y=torch.tensor([7]))
    # A 4-neighbour grid graph in row-major ids.
    right = [(i, i + 1) for i in range(n) if (i + 1) % cols]
    down = [(i, i + cols) for i in range(n - cols)]
    ei = torch.tensor(right + down).t()
    data.edge_index = ei
    data.edge_attr = torch.arange(ei.size(1)).float()
    out = GridHierarchy()(data)
    p = out.patch_index
    assert torch.equal(out.pos, data.pos[p])
    assert torch.equal(out.node_y, data.node_y[p])
    assert out.y.tolist() == [7]
    assert torch.equal(out.edge_attr, data.edge_attr)  # edges keep order
    # Edges join the same patches as before, now in leaf ids.
    assert torch.equal(p[out.edge_index], ei)
    assert 'patch_index' not in data and data.x.size(0) == n  # input intact


def test_per_patch_attributes_beside_an_image_follow_too():
    # 4 x 4 patches of 2 x 2 pixels; per-patch labels in row-major order
    data = Data(image=torch.rand(3, 8, 8), num_nodes=16,
                patch_label=torch.arange(16),
                edge_index=torch.tensor([[4], [5]]))
    out = GridHierarchy(patch_size=2)(data)
    assert torch.equal(out.patch_label, out.patch_index)
    assert torch.equal(out.patch_index[out.edge_index],
                       torch.tensor([[4], [5]]))


def test_per_patch_lists_follow_the_permutation():
    # A list is a node attribute when it has one entry per node, as for
    # TreeOrder: it is permuted like x.
    names = [f'p{i}' for i in range(8)]
    data = grid(2, 4, name=names, tags=tuple(names[::-1]),
                pos=torch.arange(8.).view(8, 1), labels=['a', 'b'])
    out = GridHierarchy()(data)
    order = out.patch_index.tolist()
    assert order == [0, 1, 4, 5, 2, 3, 6, 7]
    assert out.pos.view(-1).tolist() == order
    assert out.name == [names[i] for i in order]
    assert list(out.tags) == [names[::-1][i] for i in order]
    assert out.labels == ['a', 'b']  # not per patch
    assert data.name == names  # the input is not changed
    # beside an image, too
    data = Data(image=torch.rand(1, 2, 4), num_nodes=8, name=names)
    assert GridHierarchy(patch_size=1)(data).name == \
        [names[i] for i in order]
    # a grid_size tuple is read, not permuted, also with two patches
    data = grid(1, 2, edge_index=torch.tensor([[0, 1], [1, 0]]))
    assert GridHierarchy()(data).grid_size.tolist() == [[1, 2]]


def test_as_many_edges_as_patches_needs_named_edge_attributes():
    src = torch.arange(16)
    ring = torch.stack([src, (src + 1) % 16])
    data = Data(image=torch.rand(1, 4, 4), num_nodes=16, edge_index=ring,
                weight=src.float())
    with pytest.raises(ValueError, match="name an edge attribute"):
        GridHierarchy(patch_size=1)(data)
    data = Data(image=torch.rand(1, 4, 4), num_nodes=16, edge_index=ring,
                kind=['single'] * 16)
    with pytest.raises(ValueError, match="name an edge attribute"):
        GridHierarchy(patch_size=1)(data)
    data = Data(image=torch.rand(1, 4, 4), num_nodes=16, edge_index=ring,
                edge_weight=src.float(),
                edge_kind=[str(i) for i in range(16)])
    out = GridHierarchy(patch_size=1)(data)
    # the edges keep their order and their attributes
    assert torch.equal(out.edge_weight, src.float())
    assert out.edge_kind == [str(i) for i in range(16)]
    assert torch.equal(out.patch_index[out.edge_index], ring)


def test_grid_size_as_argument_or_tensor():
    x = torch.randn(6, 2)
    a = GridHierarchy(grid_size=(2, 3))(Data(x=x))
    b = GridHierarchy()(Data(x=x, grid_size=torch.tensor([2, 3])))
    c = GridHierarchy(grid_size=(2, 3))(Data(x=x, grid_size=[2, 3]))
    for out in (a, b, c):
        assert out.grid_size.tolist() == [[2, 3]]
        assert torch.equal(out.x, x[out.patch_index])


# Images ####################################################################


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5),
       st.integers(1, 4), st.integers(1, 4))
def test_image_patches_put_back_together(channels, rows, cols, ph, pw):
    image = torch.randn(channels, rows * ph, cols * pw)
    out = GridHierarchy(patch_size=(ph, pw))(Data(image=image, num_nodes=1))
    assert out.num_nodes == rows * cols
    assert 'image' not in out
    assert out.x.shape == (rows * cols, channels * ph * pw)
    assert out.grid_size.tolist() == [[rows, cols]]
    assert torch.equal(
        unpatch(out.x, out.patch_index, rows, cols, channels, ph, pw), image)
    # The patch of a leaf is the image window at its coordinates.
    r, c = out.leaf_coord[0].tolist()
    window = image[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
    assert torch.equal(out.x[0], window.reshape(-1))


def _photo() -> Tensor:
    pytest.importorskip('PIL')  # matplotlib reads JPEG through Pillow
    from matplotlib import cbook, image
    with cbook.get_sample_data('grace_hopper.jpg') as f:
        photo = image.imread(f, format='jpg')  # [600, 512, 3] uint8
    return torch.from_numpy(photo.copy()).permute(2, 0, 1)


def test_real_photograph():
    photo = _photo()
    assert photo.shape == (3, 600, 512) and photo.dtype == torch.uint8
    with pytest.raises(ValueError, match=r'does not divide the image size'):
        GridHierarchy(patch_size=64)(Data(image=photo))
    # Cropped to 512 x 512: an 8 x 8 grid, a perfect quadtree.
    crop = photo[:, :512]
    out = GridHierarchy(patch_size=64)(Data(image=crop))
    h = out.hierarchy
    assert out.x.dtype == torch.uint8 and out.x.shape == (64, 3 * 64 * 64)
    assert h.depth == 3 and h.max_branching == 4 and h.num_clusters == 21
    assert torch.equal(unpatch(out.x, out.patch_index, 8, 8, 3, 64, 64),
                       crop)
    assert h.layout.leaf_blocks is not None
    # HSA over the patches (mean colours as queries and keys) is exact.
    mean = out.x.view(64, 3, -1).double().mean(-1) / 255
    q = torch.cat([mean, mean.flip(1)], 1).view(64, 2, 3)
    y = hierarchical_attention(q, q, q, h)
    dense = dense_output(q, q, q, h)
    assert (y - dense).abs().max() < EXACT


def test_real_photograph_padded():
    photo = _photo()
    out = GridHierarchy(patch_size=64, pad=True)(Data(image=photo))
    assert out.grid_size.tolist() == [[10, 8]]  # 600 -> 640 rows
    back = unpatch(out.x, out.patch_index, 10, 8, 3, 64, 64)
    assert torch.equal(back[:, :600], photo)
    assert int(back[:, 600:].abs().sum()) == 0  # zeros below the photo
    assert out.hierarchy.depth == 4  # max(10, 8) -> 4 levels


# Batching ##################################################################


@fewer(2)
@given(st.lists(st.tuples(SIDES, SIDES), min_size=1, max_size=4),
       st.integers(1, 4))
def test_loader_batches_into_the_forest_of_parts(shapes, batch_size):
    t = GridHierarchy()
    signals = [t(grid(r, c)) for r, c in shapes]
    for start, batch in zip(
            range(0, len(signals), batch_size),
            DataLoader(signals, batch_size=batch_size, shuffle=False)):
        parts = signals[start:start + batch_size]
        h = batch.hierarchy
        joined = Hierarchy.batch([s.hierarchy for s in parts])
        assert h.parent.tolist() == joined.parent.tolist()
        for key in ('x', 'leaf_coord', 'leaf_grid_pos', 'cluster_coord',
                    'cluster_grid_pos'):
            assert torch.equal(batch[key], torch.cat([s[key] for s in parts]))
        assert batch.grid_size.tolist() == [list(s) for s in shapes[
            start:start + batch_size]]
        # patch_index is offset by the leaves of the earlier graphs.
        offsets = torch.tensor([0] + [s.num_nodes for s in parts]).cumsum(0)
        assert torch.equal(batch.patch_index, torch.cat(
            [s.patch_index + o for s, o in zip(parts, offsets)]))
        # Per-node attributes line up with the batched tree: a child's cell
        # is its parent's cell doubled plus its position.
        n = h.num_leaves
        coord = torch.cat([batch.leaf_coord, batch.cluster_coord])
        pos = torch.cat([batch.leaf_grid_pos, batch.cluster_grid_pos])
        child = (h.parent >= 0).nonzero().view(-1)
        par = h.parent[child]
        assert torch.equal(2 * coord[par] + pos[child], coord[child])
        assert torch.equal(h.node_height[n:], torch.cat(
            [s.hierarchy.node_height[s.num_nodes:] for s in parts]))


# The fused path ############################################################


@fewer(2)
@given(st.integers(1, 5), st.integers(1, 5), SEEDS)
def test_even_grids_take_the_fused_path(half_rows, half_cols, seed):
    rows, cols = 2 * half_rows, 2 * half_cols
    out = GridHierarchy()(grid(rows, cols))
    h = out.hierarchy
    assert h.layout.leaf_blocks is not None and h.layout.leaf_blocks.width == 4
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(h.num_leaves, 2, 3, generator=g,
                           dtype=torch.float64) for _ in range(3))
    y = hierarchical_attention(q, k, v, h)
    dense = dense_output(q, k, v, h)
    assert (y - dense).abs().max() < EXACT


def test_odd_grid_agrees_with_the_dense_reference():
    h = GridHierarchy()(grid(5, 3)).hierarchy
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(15, 2, 3, generator=g, dtype=torch.float64)
               for _ in range(3))
    y = hierarchical_attention(q, k, v, h)
    dense = dense_output(q, k, v, h)
    assert (y - dense).abs().max() < EXACT


# Validation ################################################################


def test_repr():
    assert repr(GridHierarchy(patch_size=(8, 4), grid_size=3)) == \
        'GridHierarchy(patch_size=(8, 4), grid_size=(3, 3), pad=False)'


@pytest.mark.parametrize('kwargs, error, pattern', [
    (dict(patch_size=0), ValueError,
     r"'patch_size' must be an int in \[1, inf\), got 0"),
    (dict(patch_size=(4, -1)), ValueError,
     r"'patch_size\[1\]' must be an int in \[1, inf\), got -1"),
    (dict(patch_size=(4, 4, 4)), ValueError,
     r"'patch_size' must be an int or a pair"),
    (dict(patch_size='16'), TypeError, r"'patch_size' must be an int"),
    (dict(patch_size=2.0), TypeError, r"'patch_size' must be an int"),
    (dict(patch_size=True), TypeError, r"'patch_size' must be an int"),
    (dict(patch_size=(2, 2.5)), TypeError,
     r"'patch_size\[1\]' must be an int, got 2.5"),
    (dict(grid_size=(0, 3)), ValueError,
     r"'grid_size\[0\]' must be an int in \[1, inf\)"),
    (dict(pad=1), TypeError, r"'pad' must be True or False"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        GridHierarchy(**kwargs)


@pytest.mark.parametrize('data, kwargs, pattern', [
    (Data(image=torch.rand(3, 8, 8), x=torch.rand(4, 2)), {},
     r"both 'image' and 'x'"),
    (Data(y=torch.tensor([1])), {}, r"neither 'image'"),
    (Data(image=torch.rand(8, 8)), {}, r'must be \[C, H, W\].*image\[None\]'),
    (Data(image=torch.rand(8, 8, 3, 1)), {}, r'must be \[C, H, W\]'),
    (Data(image=torch.rand(3, 0, 8)), {}, r'is empty'),
    (Data(image=torch.rand(0, 8, 8)), {}, r'is empty'),
    (Data(image=torch.rand(3, 10, 8)), dict(patch_size=4),
     r'patch_size=\(4, 4\) does not divide the image size \(H, W\)=\(10, 8\)'
     r'.*\(12, 8\).*pad=True'),
    (Data(x=torch.rand(5, 2)), {}, r'needs the grid shape'),
    (Data(x=torch.rand(5, 2), grid_size=(2, 3)), {},
     r'x has shape \(5, 2\) but grid_size=\(2, 3\) needs 6 rows'),
    (Data(x=torch.rand(6, 2), grid_size=(2, 3)), dict(grid_size=(3, 2)),
     r'differs from the grid_size'),
    (Data(x=torch.rand(6, 2), grid_size=torch.tensor([[2, 3], [3, 2]])), {},
     r'data.grid_size must hold 2 ints'),
    (Data(x=torch.rand(0, 2), grid_size=(0, 3)), {},
     r"'data.grid_size\[0\]' must be an int in \[1, inf\)"),
])
def test_bad_inputs(data, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GridHierarchy(**kwargs)(data)


def test_not_a_data():
    with pytest.raises(TypeError, match='expects a torch_geometric Data'):
        GridHierarchy()(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match='data.image must be a tensor'):
        GridHierarchy()(Data(image=[[1.0]]))
    with pytest.raises(TypeError, match='data.x must be a tensor'):
        GridHierarchy(grid_size=1)(Data(x=[[1.0]]))


def test_a_batch_is_refused():
    batch = Batch.from_data_list([Data(x=torch.rand(4, 2)),
                                  Data(x=torch.rand(4, 2))])
    with pytest.raises(ValueError, match='got a Batch of 2 graphs'):
        GridHierarchy(grid_size=2)(batch)


def test_the_input_is_not_changed():
    data = Data(image=torch.rand(3, 8, 8))
    GridHierarchy(patch_size=4)(data)
    assert 'image' in data and data.x is None


def test_a_signal_of_another_tree_gets_the_grids_cluster_rows():
    from hsa_geo.transforms import SequenceHierarchy
    x = torch.randn(16, 3)
    seq = SequenceHierarchy([2])(Data(x=x, grid_size=(4, 4)))
    seq.cluster_old = torch.zeros(seq.hierarchy.num_clusters)
    out = GridHierarchy()(seq)
    plain = GridHierarchy()(Data(x=x, grid_size=(4, 4)))
    assert 'cluster_old' not in out  # the rows of the replaced tree
    for key in ('cluster_coord', 'cluster_grid_pos'):
        assert torch.equal(out[key], plain[key])
    assert out.hierarchy.parent.tolist() == plain.hierarchy.parent.tolist()


@pytest.mark.parametrize('data', [
    Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4)),
    Data(image=torch.rand(3, 16, 16)),
])
def test_its_own_output_is_refused(data):
    t = GridHierarchy(patch_size=4)
    once = t(data)
    with pytest.raises(ValueError, match="output of GridHierarchy: its rows "
                       "are in Z order"):
        t(once)
    # the way back that the message gives
    back = Data(x=once.x[once.patch_index.argsort()], grid_size=(4, 4))
    assert torch.equal(t(back).x, once.x)


def test_a_sparse_adjacency_is_refused():
    import torch_geometric.transforms as T
    d = T.ToSparseTensor()(Data(x=torch.randn(16, 2), grid_size=(4, 4),
                                edge_index=torch.tensor([[2], [8]])))
    with pytest.raises(ValueError, match="'adj_t', a sparse adjacency"):
        GridHierarchy()(d)


def test_other_lists_of_node_ids_follow_the_patches():
    """Like edge_index, face and [k, *] *_index hold patch ids: the
    patches' Z order relabels them."""
    g = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, 16, (2, 10), generator=g)
    face = torch.randint(0, 16, (3, 5), generator=g)
    label_index = torch.randint(0, 16, (2, 7), generator=g)
    data = Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4),
                edge_index=edge_index, face=face,
                edge_label_index=label_index)
    out = GridHierarchy()(data)
    old = out.x.view(-1).long()  # the row-major id of every new patch
    assert torch.equal(old[out.edge_index], edge_index)
    assert torch.equal(old[out.face], face)
    assert torch.equal(old[out.edge_label_index], label_index)


def test_numpy_node_attributes_follow_the_patches():
    data = Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4),
                label=np.arange(16), meta=np.arange(3))
    out = GridHierarchy()(data)
    assert out.label.tolist() == out.x.view(-1).long().tolist()
    assert np.array_equal(out.meta, data.meta)  # not per patch: kept
    data = Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4),
                query_index=np.array([2, 5]))
    with pytest.raises(ValueError, match="'query_index' is a numpy array "
                       "named as a list of node ids.*torch.from_numpy"):
        GridHierarchy()(data)


def test_an_id_that_is_no_patch_is_refused():
    data = Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4),
                query_index=torch.tensor([3, -1]))
    with pytest.raises(ValueError, match=r"query_index\[1\] = -1 is not a "
                       r"node id \(0..15\): GridHierarchy relabels"):
        GridHierarchy()(data)


def test_every_key_pyg_offsets_by_the_nodes_follows_the_patches():
    """As PyG offsets them in a batch: 1-D lists and keys with 'index'
    anywhere in the name hold patch ids; other keys with 'index' are
    node attributes like any other."""
    lists = dict(query_index=torch.tensor([2, 5]),
                 edge_index_neg=torch.tensor([[1, 3], [12, 6]]))
    data = Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4),
                index_weight=torch.arange(16.), **lists)
    out = GridHierarchy()(data)
    old = out.x.view(-1).long()  # the row-major id of every new patch
    for key, value in lists.items():
        assert torch.equal(old[out[key]], value), key
    assert torch.equal(out.index_weight, out.x.view(-1))
    data = Data(x=torch.arange(16.).view(-1, 1), grid_size=(4, 4),
                nbr_index=torch.arange(16))
    with pytest.raises(ValueError, match="'nbr_index' holds node ids .* one "
                       "entry per node \\(16\\)"):
        GridHierarchy()(data)
