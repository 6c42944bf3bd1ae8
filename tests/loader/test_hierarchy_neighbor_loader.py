r"""Tests of :class:`hsa_geo.loader.HierarchyNeighborLoader`: the error that
says what to install when PyG has no sampler backend, and, with a
plain-Python sampler in its place, batches that carry the hierarchy induced
on the sampled nodes (against :func:`~hsa_geo.data.induced_hierarchy`, a
plain-Python construction of the induced forest, ``NestedSignal.subgraph``
and the dense HSA matrix)."""
import pytest
import torch
import torch_geometric.typing
from hypothesis import given, strategies as st
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.data import induced_hierarchy
from hsa_geo.loader import HierarchyNeighborLoader
from hsa_geo.nn import HSAConv
from tests.helpers.layers import EXACT, SEEDS
from tests.helpers.loaders import (FirstNeighbors, check_cluster_rows,
                                   random_signal, reference_conv,
                                   with_cluster_rows)
from tests.helpers.strategies import Forest, fewer, forests, induced_forest

pytestmark = pytest.mark.usefixtures('one_thread')

NUM_NEIGHBORS = [2, 2]


def example_signal() -> NestedSignal:
    f = Forest([8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, -1], 8)
    return random_signal(f, seed=2, num_edges=20)


def loader_of(data: NestedSignal, **kwargs) -> HierarchyNeighborLoader:
    sampler = FirstNeighbors(data.edge_index, data.num_nodes, NUM_NEIGHBORS)
    return HierarchyNeighborLoader(data, NUM_NEIGHBORS,
                                   neighbor_sampler=sampler, **kwargs)


@pytest.fixture
def no_backend(monkeypatch):
    monkeypatch.setattr(torch_geometric.typing, 'WITH_PYG_LIB', False)
    monkeypatch.setattr(torch_geometric.typing, 'WITH_TORCH_SPARSE', False)


def test_without_backend_says_what_to_install(no_backend):
    with pytest.raises(ImportError) as info:
        HierarchyNeighborLoader(example_signal(), NUM_NEIGHBORS)
    message = str(info.value)
    minor = '.'.join(torch.__version__.split('+')[0].split('.')[:2])
    for part in ("'pyg-lib' or 'torch-sparse'", 'pip install pyg-lib -f',
                 'pip install torch-sparse -f',
                 f'https://data.pyg.org/whl/torch-{minor}.0+',
                 'neighbor_sampler', 'SubtreeLoader'):
        assert part in message
    if torch.version.cuda is None:
        assert f'torch-{minor}.0+cpu.html' in message


def test_induced_subgraphs_need_torch_sparse(no_backend, monkeypatch):
    monkeypatch.setattr(torch_geometric.typing, 'WITH_PYG_LIB', True)
    with pytest.raises(ImportError, match="needs 'torch-sparse' "):
        HierarchyNeighborLoader(example_signal(), NUM_NEIGHBORS,
                                subgraph_type='induced')


def test_own_sampler_needs_no_backend(no_backend):
    batch = next(iter(loader_of(example_signal(), batch_size=2)))
    assert isinstance(batch, NestedSignal)


def test_example():
    data = example_signal()
    loader = loader_of(data, batch_size=3)
    batch = next(iter(loader))
    assert batch.batch_size == 3
    assert batch.n_id[:3].tolist() == [0, 1, 2]
    assert torch.equal(batch.input_id, torch.arange(3))
    assert torch.equal(batch.x, data.x[batch.n_id])
    assert torch.equal(batch.y, data.y[batch.n_id])
    assert torch.equal(batch.hierarchy.parent,
                       induced_hierarchy(data.hierarchy, batch.n_id).parent)
    # The sampled edges, with their features.
    assert torch.equal(data.edge_index[:, batch.e_id],
                       batch.n_id[batch.edge_index])
    assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])


@pytest.mark.parametrize('f', [
    Forest([8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, -1], 8),
    Forest([3, 3, 4, 5, 5, -1], 3),  # as many clusters as leaves
])
def test_batches_keep_the_rows_of_their_clusters(f):
    data = with_cluster_rows(random_signal(f, seed=2, num_edges=2))
    for batch in loader_of(data, batch_size=2):
        check_cluster_rows(data, batch)
    data.cluster_id = torch.arange(f.num_leaves + 1)
    with pytest.raises(ValueError, match="'cluster_id' has"):
        next(iter(loader_of(data, batch_size=2)))


def test_pyg_loader_leaves_the_tree_behind():
    data = example_signal()
    sampler = FirstNeighbors(data.edge_index, data.num_nodes, NUM_NEIGHBORS)
    batch = next(iter(NeighborLoader(data, NUM_NEIGHBORS, batch_size=2,
                                     neighbor_sampler=sampler)))
    with pytest.raises(ValueError, match='NestedSignal.subgraph'):
        batch.hierarchy


@fewer(2)
@given(f=forests(max_leaves=12, max_trees=2), batch_size=st.integers(2, 5),
       family=st.booleans(), seed=SEEDS)
def test_batches_carry_the_induced_hierarchy(f, batch_size, family, seed):
    data = random_signal(f, seed, family)
    torch.manual_seed(seed)
    conv = HSAConv(4, 3, heads=2).double()
    seeds = []
    for batch in loader_of(data, batch_size=batch_size):
        n_id = batch.n_id
        seeds += n_id[:batch.batch_size].tolist()
        assert batch.hierarchy.parent.tolist() == \
            induced_forest(f, n_id.tolist())[0].parent
        ref = data.subgraph(n_id)
        assert torch.equal(batch.hierarchy.parent, ref.hierarchy.parent)
        assert torch.equal(batch.x, ref.x)
        assert torch.equal(data.edge_index[:, batch.e_id],
                           n_id[batch.edge_index])
        out = conv(batch.x, batch.hierarchy)
        torch.testing.assert_close(out, conv(ref.x, ref.hierarchy), rtol=0,
                                   atol=EXACT)
        torch.testing.assert_close(
            out, reference_conv(conv, batch.x, batch.hierarchy), rtol=0,
            atol=EXACT)
    assert seeds == list(range(f.num_leaves))


def test_transform_sees_the_induced_hierarchy():
    seen = []

    def transform(batch):
        seen.append(batch.hierarchy.num_leaves)
        batch.leaves = batch.hierarchy.num_leaves
        return batch

    loader = loader_of(example_signal(), batch_size=4, transform=transform)
    batches = list(loader)
    assert seen == [b.num_nodes for b in batches]
    assert [b.leaves for b in batches] == seen


def test_bad_arguments():
    data = example_signal()
    with pytest.raises(ValueError, match='disjoint=False'):
        loader_of(data, disjoint=True)
    with pytest.raises(TypeError, match="'disjoint' must be True or False"):
        loader_of(data, disjoint=1)
    with pytest.raises(TypeError, match="'transform' must be callable"):
        loader_of(data, transform='x')
    with pytest.raises(ValueError, match='NestedSignal.from_data'):
        HierarchyNeighborLoader(Data(x=data.x, edge_index=data.edge_index),
                                NUM_NEIGHBORS)
    with pytest.raises(ValueError, match='stores no hierarchy'):
        HierarchyNeighborLoader(NestedSignal(x=data.x), NUM_NEIGHBORS)
    h = Hierarchy.from_parent([2, 2, -1], 2)
    with pytest.raises(TypeError, match='NestedSignal, got Hierarchy'):
        HierarchyNeighborLoader(h, NUM_NEIGHBORS)


# input_nodes and other inputs ###########################################


def _loader(input_nodes):
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    data = NestedSignal.from_hierarchy(h, torch.randn(4, 2),
                                       edge_index=edge_index)
    return HierarchyNeighborLoader(
        data, [1], input_nodes=input_nodes, batch_size=4,
        neighbor_sampler=FirstNeighbors(edge_index, 4, [1]))


@pytest.mark.parametrize('mask_rows', [3, 6])
def test_a_mask_of_another_length_is_refused(mask_rows):
    """PyG reads any bool tensor as the ids of its True entries: a short
    mask gave other seeds."""
    with pytest.raises(ValueError, match=r"'input_nodes' is a mask of shape"):
        _loader(torch.ones(mask_rows, dtype=torch.bool))


@pytest.mark.parametrize('ids', [[4], [-1], [0, 7]])
def test_seed_ids_out_of_range_are_refused(ids):
    with pytest.raises(ValueError, match='is not a node id'):
        _loader(torch.tensor(ids))
    with pytest.raises(TypeError, match="'input_nodes' must have an integer"):
        _loader(torch.tensor([1.0]))


def test_masks_and_ids_of_seeds_load():
    mask = torch.tensor([False, True, False, True])
    assert [b.n_id[:b.batch_size].tolist() for b in _loader(mask)] == \
        [[1, 3]]
    ids = torch.tensor([3, 1], dtype=torch.int32)
    assert [b.n_id[:b.batch_size].tolist() for b in _loader(ids)] == \
        [[3, 1]]


def test_a_batch_of_signals_is_refused():
    from tests.helpers.loaders import batch_of_signals
    batch = batch_of_signals(3)
    with pytest.raises(ValueError, match='got a Batch of 3 signals'):
        HierarchyNeighborLoader(batch, [1], neighbor_sampler=object())
