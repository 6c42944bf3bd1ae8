r"""``examples/ogbn_arxiv.py`` trains every model for one epoch on a small
``ogbn-arxiv`` written in OGB's own layout (no download), ``ogbn-products``
through the subtree loader and a small generated graph; the accuracies it
reports are those of the predictions it saves, on the labels and split
that were written."""
import json
import math

import numpy as np
import pytest
import torch

from tests.examples import load_example, torchrun
from tests.helpers.ogbn_files import write_ogbn

pytest.importorskip('ogb')
pytest.importorskip('pymetis')

ogbn_arxiv = load_example('ogbn_arxiv')
pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--hidden', '16', '--layers', '2', '--heads', '2',
        '--lr', '0.05', '--no-progress', '--save-predictions']


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp('ogbn')
    return str(root), {
        name: write_ogbn(str(root), name, num_nodes=240, num_edges=1200,
                         seed=i, label_classes=3)
        for i, name in enumerate(['ogbn-arxiv', 'ogbn-products'])
    }


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the test data must load without a download')
    monkeypatch.setattr('ogb.nodeproppred.dataset_pyg.download_url', refuse)


def run(root, out, *argv):
    path = ogbn_arxiv.main(['--root', root, '--out', str(out), *TINY, *argv])
    with open(path) as f:
        result = json.load(f)
    assert path.endswith('.json')
    assert (out / path.split('/')[-1].replace('.json', '.png')).stat() \
        .st_size > 0
    return path, result


def check_epoch(result):
    assert result['metric'] == 'acc' and result['higher_is_better']
    (epoch, ) = result['runs'][0]['epochs']
    assert math.isfinite(epoch['loss']) and epoch['loss'] > 0
    for split in ('train', 'valid', 'test'):
        assert 0.0 <= epoch[split] <= 1.0
    assert epoch['seconds'] > 0 and epoch['peak_memory_mb'] > 0
    return epoch


def check_accuracy(path, epoch, y, split, distinct=False):
    r"""The reported accuracies are those of the saved predictions on the
    written labels and split (with :obj:`distinct`, a model that learned:
    the three differ, so that a mixed-up split would show)."""
    saved = torch.load(path.replace('.json', '_predictions.pt'))
    pred = saved['pred'][0].numpy()
    assert pred.shape == y.shape
    if distinct:
        assert len({epoch[key] for key in ('train', 'valid', 'test')}) == 3
        assert epoch['valid'] > 0.5  # three classes used: above chance
    for key in ('train', 'valid', 'test'):
        expected = float(np.mean(pred[split[key]] == y[split[key]]))
        assert epoch[key] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize('model', ogbn_arxiv.MODELS)
def test_arxiv_one_epoch(written, tmp_path, model):
    root, data = written
    path, result = run(root, tmp_path, '--model', model)
    assert result['config']['model'] == model
    epoch = check_epoch(result)
    check_accuracy(path, epoch, data['ogbn-arxiv']['y'], data['ogbn-arxiv'],
                   distinct=model == 'hsa')
    final = result['runs'][0]['final']
    assert final['test'] == epoch['test']
    assert result['summary']['seconds_per_epoch']['mean'] == epoch['seconds']


def test_arxiv_tree_is_cached_in_processed_file(written):
    root, data = written
    signal, split, num_classes = ogbn_arxiv.load_ogbn('ogbn-arxiv', root, 16)
    assert num_classes == 40
    assert signal.hierarchy.num_leaves == 240
    assert signal.hierarchy.family_edge_index is not None
    for key in ('train', 'valid', 'test'):
        assert split[key].tolist() == data['ogbn-arxiv'][key].tolist()
    assert signal.x.shape == (240, 128)
    np.testing.assert_allclose(signal.x.numpy(), data['ogbn-arxiv']['x'])


def test_a_tree_cached_with_another_branching_is_refused(written):
    r"""PyG only warns when the processed files were made with another
    pre_transform, then loads them: the run would record --branching 4
    over trees of branching 16."""
    root, _ = written
    ogbn_arxiv.load_ogbn('ogbn-arxiv', root, 16)
    with pytest.raises(SystemExit, match='another --branching'):
        ogbn_arxiv.load_ogbn('ogbn-arxiv', root, 4)


def test_products_trains_on_subtree_batches(written, tmp_path):
    root, data = written
    path, result = run(root, tmp_path, '--dataset', 'ogbn-products',
                       '--model', 'hsa', '--level', '1', '--batch-size', '2')
    epoch = check_epoch(result)
    check_accuracy(path, epoch, data['ogbn-products']['y'],
                   data['ogbn-products'])
    assert epoch['valid'] > 0.5  # three classes used: above chance
    signal, _, _ = ogbn_arxiv.load_ogbn('ogbn-products', root, 16)
    # Predictions came batch by batch: more than one subtree batch.
    loader, _ = ogbn_arxiv.make_batches(
        ogbn_arxiv.parse_args(['--dataset', 'ogbn-products', '--level', '1',
                               '--batch-size', '2']), signal, 0,
        ogbn_arxiv.Distributed(0, 1, 0, torch.device('cpu')))
    assert len(loader) > 1


@pytest.mark.parametrize('model', ['gcn', 'polynormer'])
def test_products_on_two_processes(written, tmp_path, model):
    r"""``torchrun --nproc_per_node=2 ogbn_arxiv.py --ddp`` on
    ogbn-products: the ranks share the subtree batches, and the predictions
    gathered from both cover every node once, so the reported accuracies
    are those of the saved predictions (Polynormer leaves parameters
    unused, which DDP must be told)."""
    root, data = written
    proc = torchrun('ogbn_arxiv', '--root', root, '--out', str(tmp_path),
                    *TINY, '--dataset', 'ogbn-products', '--model', model,
                    '--level', '1', '--batch-size', '1')
    assert proc.stdout.count('Epoch: 001') == 1  # rank 0 logs alone
    path = str(tmp_path / f'ogbn_arxiv_ogbn-products_{model}.json')
    with open(path) as f:
        result = json.load(f)
    assert result['machine']['world_size'] == 2
    signal, _, _ = ogbn_arxiv.load_ogbn('ogbn-products', root, 16)
    subtrees = ogbn_arxiv.SubtreeLoader(signal, level=1).num_subtrees
    assert subtrees > 2
    assert [r['train_batches_per_epoch'] for r in
            result['runs'][0]['ranks']] == [math.ceil(subtrees / 2)] * 2
    saved = torch.load(path.replace('.json', '_predictions.pt'))
    assert bool((saved['pred'][0] >= 0).all())  # every node predicted
    check_accuracy(path, check_epoch(result), data['ogbn-products']['y'],
                   data['ogbn-products'])


def test_synthetic_graph_is_generated_once(tmp_path):
    argv = ['--dataset', 'synthetic-arxiv', '--num-nodes', '300',
            '--num-edges', '1800', '--model', 'gcn']
    path, result = run(str(tmp_path / 'data'), tmp_path, *argv)
    epoch = check_epoch(result)
    saved = torch.load(path.replace('.json', '_predictions.pt'))
    check_accuracy(path, epoch, saved['y'].view(-1).numpy(),
                   {k: v.numpy() for k, v in saved['split'].items()})
    cached = list((tmp_path / 'data' / 'synthetic_arxiv').iterdir())
    assert len(cached) == 1

    def not_again(*args, **kwargs):
        raise AssertionError('the synthetic graph was generated again')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ogbn_arxiv, 'community_graph', not_again)
        data, split, classes = ogbn_arxiv.load_synthetic(
            str(tmp_path / 'data'), 300, 1800, 16)
    assert classes == 40 and data.x.shape == (300, 128)
    assert data.hierarchy.num_leaves == 300
    assert sum(v.numel() for v in split.values()) == 300


def test_ddp_is_refused_on_the_full_graph():
    with pytest.raises(SystemExit):
        ogbn_arxiv.parse_args(['--ddp'])
    assert ogbn_arxiv.parse_args(['--ddp', '--dataset', 'ogbn-products']).ddp


def test_one_head_is_recorded_for_sgformer_and_polynormer():
    r"""Their global attention runs one head whatever --heads says: the
    results record that one."""
    for model, heads in (('sgformer', 1), ('polynormer', 1), ('hsa', 4)):
        assert ogbn_arxiv.parse_args(['--model', model,
                                      '--heads', '4']).heads == heads
