r"""``examples/lrgb_peptides.py`` trains every model for one epoch on small
``peptides-func`` and ``peptides-struct`` sets written as PyG's
``LRGBDataset`` finds them after its download (real peptides, random
labels); its average precision is LRGB's on hand-made cases, and under
``torchrun`` two CPU processes score every peptide of the valid and test
sets once between them."""
import json
import math
import os

import pytest
import torch

from tests.examples import load_example, torchrun
from tests.helpers.lrgb_files import write_peptides

pytest.importorskip('ogb')
pytest.importorskip('rdkit')
pytest.importorskip('sklearn')

lrgb = load_example('lrgb_peptides')
pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--hidden', '16', '--layers', '2', '--heads', '2',
        '--batch-size', '4', '--no-progress']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('lrgb')
    for name in lrgb.DATASETS:
        write_peptides(str(root), name)
    return str(root)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the test data must load without a download')
    monkeypatch.setattr('torch_geometric.datasets.lrgb.download_url', refuse)


@pytest.mark.parametrize('dataset', lrgb.DATASETS)
@pytest.mark.parametrize('model', lrgb.MODELS)
def test_one_epoch(root, tmp_path, dataset, model):
    path = lrgb.main(['--root', root, '--out', str(tmp_path), *TINY,
                      '--dataset', dataset, '--model', model])
    with open(path) as f:
        result = json.load(f)
    assert os.path.getsize(path.replace('.json', '.png')) > 0
    (epoch, ) = result['runs'][0]['epochs']
    assert math.isfinite(epoch['loss']) and epoch['seconds'] > 0
    if dataset == 'peptides-func':
        assert result['metric'] == 'ap' and result['higher_is_better']
        assert all(0 < epoch[k] <= 1 for k in ('train', 'valid', 'test'))
    else:
        assert result['metric'] == 'mae' and not result['higher_is_better']
        assert all(0 < epoch[k] < 100 for k in ('train', 'valid', 'test'))
        # The training loss is the MAE of the training predictions.
        assert epoch['loss'] == pytest.approx(epoch['train'], rel=1e-5)
    assert result['runs'][0]['final']['test'] == epoch['test']


def test_splits_hold_what_was_written(root):
    written = write_peptides(root + '_again', 'peptides-func')
    splits = lrgb.load_splits(root + '_again', 'peptides-func', 'molecule',
                              lrgb.Distributed.from_env(False, 'cpu'))
    for split, graphs in written.items():
        assert len(splits[split]) == len(graphs)
        data = splits[split][0]
        x, edge_attr, edge_index, y = graphs[0]
        assert torch.equal(data.x, x) and torch.equal(data.y, y)
        assert torch.equal(data.edge_attr, edge_attr)
        assert data.hierarchy.num_leaves == x.size(0)
        assert data.hierarchy.num_trees == 1


def test_a_tree_cached_with_another_hierarchy_is_refused(root):
    dist = lrgb.Distributed.from_env(False, 'cpu')
    lrgb.load_splits(root, 'peptides-func', 'molecule', dist)
    with pytest.raises(SystemExit, match='another --hierarchy'):
        lrgb.load_splits(root, 'peptides-func', 'metis', dist)


def test_average_precision_by_hand():
    # Task 0: ranked 1, 0, 1, 0 -> precisions 1 and 2/3 at the positives.
    # Task 1: one NaN label dropped; ranked 0, 1, 1 -> (1/2 + 2/3) / 2.
    # Task 2: only positives: skipped, as LRGB and OGB do.
    y = torch.tensor([[1., 0., 1.], [0., float('nan'), 1.],
                      [1., 1., 1.], [0., 1., 1.]])
    score = torch.tensor([[.9, .8, .1], [.8, .9, .2],
                          [.7, .5, .3], [.1, .4, .4]])
    expected = ((1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    assert lrgb.average_precision(y, score) == pytest.approx(expected,
                                                             abs=1e-12)
    with pytest.raises(RuntimeError, match='both classes'):
        lrgb.average_precision(torch.ones(3, 2), torch.rand(3, 2))


def test_mean_absolute_error_by_hand():
    y = torch.tensor([[1., 2.], [3., 4.]], dtype=torch.float64)
    pred = torch.tensor([[1.5, 2.], [2., 8.]], dtype=torch.float64)
    assert lrgb.mean_absolute_error(y, pred) == pytest.approx(5.5 / 4)


def test_ddp_two_cpu_processes(root, tmp_path):
    torchrun('lrgb_peptides', '--root', root, '--out', str(tmp_path),
             *TINY, '--model', 'gine')
    with open(tmp_path / 'lrgb_peptides-func_gine.json') as f:
        result = json.load(f)
    assert result['machine']['world_size'] == 2
    (epoch, ) = result['runs'][0]['epochs']
    assert all(0 < epoch[k] <= 1 for k in ('train', 'valid', 'test'))
    sizes = {k: len(v) for k, v in
             lrgb.load_splits(root, 'peptides-func', 'molecule',
                              lrgb.Distributed(0, 1, 0, 'cpu')).items()}
    assert result['runs'][0]['scored'] == {'val': sizes['val'],
                                           'test': sizes['test']}


def test_every_model_gets_the_same_head():
    """HSA's own head is one Linear; the baselines' two layers: the
    comparison gives HSA theirs."""
    heads = []
    for model in ('hsa', 'gine', 'gps'):
        args = lrgb.parse_args(['--model', model])
        head = lrgb.build_model(args, 10).head
        heads.append([type(m).__name__ for m in head.modules()][1:])
    assert heads[0] == heads[1] == heads[2] == ['Linear', 'ReLU', 'Linear']
