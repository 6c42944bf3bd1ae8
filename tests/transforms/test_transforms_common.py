r"""What every builder in :mod:`hsa_geo.transforms` promises: it returns a
:class:`~hsa_geo.data.NestedSignal` whose hierarchy covers its nodes, it
composes with ``T.Compose``, it works as a dataset ``pre_transform`` (saved
and loaded back), and it is deterministic."""
import copy

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import KarateClub

from hsa_geo import NestedSignal
from hsa_geo.transforms import (DocumentHierarchy, GraphHierarchy,
                                GridHierarchy, MoleculeHierarchy,
                                SequenceHierarchy, Vocabulary)
from tests.helpers.pre_transform_dataset import PreTransformDataset

TEXT = ('Nested signals are trees. Their leaves carry vectors!\n\n'
        'A second paragraph has two sentences. This is the second one.')


def _graph():
    pytest.importorskip('pymetis')
    return (GraphHierarchy(method='metis', branching=4, family_graph=True),
            KarateClub()[0])


def _sequence():
    return SequenceHierarchy([4, 4]), Data(x=torch.randn(37, 8))


def _grid():
    return GridHierarchy(patch_size=4), Data(image=torch.randn(3, 16, 20))


def _document():
    return DocumentHierarchy(vocab=Vocabulary.build([TEXT])), Data(text=TEXT)


def _molecule():
    pytest.importorskip('rdkit')
    from ogb.utils import smiles2graph
    g = smiles2graph('CC(=O)Oc1ccccc1C(=O)O')  # aspirin
    return MoleculeHierarchy(), Data(
        x=torch.from_numpy(g['node_feat']),
        edge_index=torch.from_numpy(g['edge_index']),
        edge_attr=torch.from_numpy(g['edge_feat']),
        smiles='CC(=O)Oc1ccccc1C(=O)O')


BUILDERS = {'graph': _graph, 'sequence': _sequence, 'grid': _grid,
            'document': _document, 'molecule': _molecule}


class Mark(T.BaseTransform):
    def forward(self, data):
        data.marked = torch.tensor([1])
        return data


def _same(a: NestedSignal, b: NestedSignal):
    ha, hb = a.hierarchy, b.hierarchy
    assert torch.equal(ha.parent, hb.parent)
    ea, eb = ha.family_edge_index, hb.family_edge_index
    assert (ea is None) == (eb is None)
    if ea is not None:
        assert torch.equal(ea, eb)
    assert torch.equal(a.x, b.x)


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_builder_contract(name, tmp_path):
    transform, data = BUILDERS[name]()
    out = transform(copy.copy(data))
    assert isinstance(out, NestedSignal)
    h = out.hierarchy
    assert h.num_leaves == out.num_nodes == out.x.size(0)
    # Every leaf is under exactly one root; every cluster has children.
    assert (h.leaf_count[h.parent < 0].sum() == h.num_leaves)
    # Deterministic.
    _same(out, transform(copy.copy(data)))
    # Composes with PyG transforms.
    composed = T.Compose([transform, Mark()])(copy.copy(data))
    assert isinstance(composed, NestedSignal) and composed.marked.item() == 1
    _same(composed, out)
    # As a pre_transform, saved and loaded back.
    dataset = PreTransformDataset(str(tmp_path), lambda: [data, data],
                                  transform)
    assert len(dataset) == 2
    for stored in dataset:
        assert isinstance(stored, NestedSignal)
        _same(stored, out)


@pytest.mark.parametrize('name', sorted(BUILDERS))
@pytest.mark.parametrize('bad', [None, 3, torch.zeros(2, 2), [Data()]])
def test_builders_answer_a_wrong_type_with_type_error(name, bad):
    transform, _ = BUILDERS[name]()
    with pytest.raises(TypeError, match='expects'):
        transform(bad)


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_builders_refuse_a_batch(name):
    transform, data = BUILDERS[name]()
    batch = Batch.from_data_list([copy.copy(data), copy.copy(data)])
    with pytest.raises(ValueError, match='Batch of 2 graphs'):
        transform(batch)
