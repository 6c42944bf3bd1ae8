r"""``examples/multimodal.py`` trains every arm for one epoch on 64 of the
1,017 compounds of :class:`~hsa_geo.datasets.MultiModalMolecules` (atoms
with bonds, SMILES tokens, depiction patches, one joined tree), and writes
one JSON with every arm and finite metrics, and the curves."""
import functools
import os
import json
import math

import pytest
import torch

from tests.examples import load_example

pytest.importorskip('ogb')
pytest.importorskip('rdkit')

from torch_geometric.loader import DataLoader  # noqa: E402

from hsa_geo.datasets import MultiModalMolecules  # noqa: E402

multimodal = load_example('multimodal')
pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--hidden', '16', '--layers', '1', '--heads', '2',
        '--batch-size', '16', '--no-progress']


def every_16th(molecule) -> bool:
    r"""Keeps 64 of the compounds (by identifier, so the same ones every
    time): the depictions of a subset process quickly."""
    return int(molecule.compound_id) % 16 == 0


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    r"""The dataset class as the example calls it, on the subset."""
    root = str(tmp_path_factory.mktemp('data'))
    return root, functools.partial(MultiModalMolecules,
                                   pre_filter=every_16th, log=False)


def test_one_epoch_of_every_arm(small, tmp_path, monkeypatch):
    root, dataset_class = small
    monkeypatch.setattr(multimodal, 'MultiModalMolecules', dataset_class)
    result = multimodal.main(['--root', root, '--out', str(tmp_path), *TINY])
    name = 'multimodal_chembl_regression'
    with open(tmp_path / f'{name}.json') as f:
        assert json.load(f) == json.loads(json.dumps(result))
    assert (tmp_path / f'{name}.png').stat().st_size > 1000
    assert result['metric'] == 'rmse' and not result['higher_is_better']
    assert list(result['arms']) == list(multimodal.ARMS)
    params = {}
    for arm, res in result['arms'].items():
        (run, ) = res['runs']
        (epoch, ) = run['epochs']
        assert math.isfinite(epoch['loss']) and epoch['loss'] > 0
        for split in ('valid', 'test'):
            assert math.isfinite(run['final'][split])
            assert 0 < run['final'][f'{split}_mae'] <= run['final'][split]
            assert res['summary'][split]['count'] == 1
        assert run['seconds_per_epoch'] > 0
        params[arm] = run['final']['num_parameters']
    # The fusions differ only in which leaves attend to which.
    assert params['hsa'] == params['flat'] == params['late_fusion']
    modalities = ('atom', 'smiles', 'image')
    assert params['late_fusion'] > max(params[t] for t in modalities)


def test_trees_of_the_arms(small):
    r"""A modality alone attends along its own subtree, one per compound;
    ``flat`` along one root per compound, where HSA is softmax
    attention."""
    root, dataset_class = small
    dataset = dataset_class(os.path.join(root, 'multimodal'))
    data = next(iter(DataLoader(dataset[:3], batch_size=3)))
    flat = multimodal.flat_tree(data)
    n = data.hierarchy.num_leaves
    sample = torch.cat([data[t].batch for t in data.leaf_types])
    assert flat.num_leaves == n and flat.num_clusters == 3
    assert flat.parent[:n].tolist() == (sample + n).tolist()
    for t, rows in data.leaf_slices.items():
        tree = multimodal.modality_tree(data, t)
        assert tree.num_leaves == rows.stop - rows.start
        root = tree.parent.clone()  # the root above every node
        root[root < 0] = torch.nonzero(root < 0).view(-1)
        for _ in range(tree.num_nodes):
            root = root[root]
        assert torch.equal(root[:tree.num_leaves].unique(
            return_inverse=True)[1], data[t].batch)


def test_a_root_shared_with_ogbg_mol(small, tmp_path, monkeypatch):
    r"""ogbg_mol.py keeps the ChEMBL compounds under --root with molecule
    trees as pre_transform; this example's source, without them, must not
    meet those files."""
    from hsa_geo.datasets import ChEMBLActivity
    from hsa_geo.transforms import MoleculeHierarchy
    root = str(tmp_path / 'data')
    ChEMBLActivity(root, pre_transform=MoleculeHierarchy(features='ogb'),
                   pre_filter=every_16th, log=False)
    monkeypatch.setattr(multimodal, 'MultiModalMolecules', small[1])
    result = multimodal.main(['--root', root, '--out', str(tmp_path),
                              *TINY, '--model', 'smiles'])
    assert set(result['arms']) == {'smiles'}
