r"""``examples/ogbg_mol.py`` trains every model for one epoch on a small
``ogbg-molhiv`` written in OGB's own layout (no download), and its numbers
are the evaluator's on the predictions it saves; under ``torchrun`` two
CPU processes score every molecule once, with rank 0's model."""
import itertools
import json
import math

import pytest
import torch

from hsa_geo.transforms import MoleculeHierarchy
from tests.examples import load_example, torchrun
from tests.helpers.ogb_files import SMILES, scaffold_split, write_ogbg_mol

pytest.importorskip('ogb')
pytest.importorskip('rdkit')

from ogb.graphproppred import Evaluator  # noqa: E402

ogbg_mol = load_example('ogbg_mol')
training = load_example('training')
pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--hidden', '16', '--layers', '2', '--heads', '2',
        '--batch-size', '16', '--no-progress']


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ogb')
    write_ogbg_mol(str(root), 'ogbg-molhiv')
    return str(root)


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('the test data must load without a download')
    monkeypatch.setattr('ogb.graphproppred.dataset_pyg.download_url',
                        refuse)


def run(root, out, *argv):
    result = ogbg_mol.main(['--root', root, '--out', str(out), *TINY, *argv])
    name = f"{result['config']['dataset']}_{result['config']['split']}_" \
        f"{result['config']['model']}"
    with open(out / f'{name}.json') as f:
        assert json.load(f) == json.loads(json.dumps(result))
    return name, result


def check_predictions(out, name, result, evaluate, split_idx, labels):
    r"""The saved predictions of every split cover it exactly, each beside
    the dataset's label of its molecule (:obj:`labels`), and the metric
    recomputed from them is the one reported."""
    for run_ in result['runs']:
        saved = torch.load(out / f'{name}_seed{run_["seed"]}_predictions.pt')
        for split in ('train', 'valid', 'test'):
            assert torch.equal(saved[split]['index'], split_idx[split])
            y_true = saved[split]['y_true']
            torch.testing.assert_close(
                y_true, labels[split_idx[split]].reshape(y_true.shape).to(
                    y_true.dtype), rtol=0, atol=0, equal_nan=True)
            value = evaluate(saved[split]['y_true'], saved[split]['y_pred'])
            assert math.isfinite(value)
            assert value == pytest.approx(run_['final'][split], abs=1e-12)


def test_fake_files_are_ogbs_layout(tmp_path):
    root = str(tmp_path)
    write_ogbg_mol(root, 'ogbg-molhiv')
    from ogb.graphproppred import PygGraphPropPredDataset
    from ogb.utils import smiles2graph
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    # OGB loads its processed file with torch.load, which loads only
    # allowed classes; plain Data need these (NestedSignal allows itself).
    with torch.serialization.safe_globals(
            [DataEdgeAttr, DataTensorAttr, GlobalStorage]):
        dataset = PygGraphPropPredDataset('ogbg-molhiv', root)
    assert len(dataset) == len(SMILES)
    for i in (0, 17, len(SMILES) - 1):
        graph = smiles2graph(SMILES[i])
        assert torch.equal(dataset[i].x, torch.from_numpy(graph['node_feat']))
        assert torch.equal(dataset[i].edge_index,
                           torch.from_numpy(graph['edge_index']))
        assert torch.equal(dataset[i].edge_attr,
                           torch.from_numpy(graph['edge_feat']))
    split = dataset.get_idx_split()
    for key, index in scaffold_split(SMILES).items():
        assert split[key].tolist() == index.tolist()
    for key in ('valid', 'test'):  # both classes: ROC-AUC is defined
        assert dataset.y[split[key]].unique().tolist() == [0, 1]


@pytest.mark.parametrize('model', ogbg_mol.MODELS)
def test_one_epoch_of_every_model(root, tmp_path, model):
    name, result = run(root, tmp_path, '--model', model)
    assert result['metric'] == 'rocauc' and result['higher_is_better']
    (epoch, ), final = result['runs'][0]['epochs'], result['runs'][0]['final']
    assert math.isfinite(epoch['loss']) and epoch['loss'] > 0
    for split in ('train', 'valid', 'test'):
        assert 0.0 <= epoch[split] <= 1.0 and final[split] == epoch[split]
    assert final['num_parameters'] > 0
    assert result['runs'][0]['seconds_per_epoch'] > 0
    assert result['runs'][0]['peak_memory_mb'] > 0
    assert (tmp_path / f'{name}.png').stat().st_size > 1000

    evaluator = Evaluator('ogbg-molhiv')
    dataset = ogbg_mol.PygGraphPropPredDataset('ogbg-molhiv', root)
    check_predictions(tmp_path, name, result, lambda y, p: evaluator.eval(
        {'y_true': y, 'y_pred': p})['rocauc'], dataset.get_idx_split(),
        dataset.y)


def test_seeds_aggregate(root, tmp_path):
    _, result = run(root, tmp_path, '--model', 'gine', '--seeds', '0', '1',
                    '--epochs', '2')
    assert [r['seed'] for r in result['runs']] == [0, 1]
    assert all(len(r['epochs']) == 2 for r in result['runs'])
    tests = [r['final']['test'] for r in result['runs']]
    summary = result['summary']['test']
    assert summary['count'] == 2
    assert summary['mean'] == pytest.approx(sum(tests) / 2)
    assert summary['std'] == pytest.approx(abs(tests[0] - tests[1])
                                           / math.sqrt(2))
    losses = [[e['loss'] for e in r['epochs']] for r in result['runs']]
    assert losses[0] != losses[1]  # the seeds differ


def test_regression_with_missing_labels(tmp_path):
    r"""A regression set (RMSE, lower is better), and a multi-task set with
    missing labels (NaN) left out of the loss and the metric."""
    root = str(tmp_path / 'data')
    for name in ('ogbg-molesol', 'ogbg-moltox21'):
        write_ogbg_mol(root, name)
        stem, result = run(root, tmp_path, '--dataset', name, '--model',
                           'gine')
        evaluator = Evaluator(name)
        metric = evaluator.eval_metric
        assert result['metric'] == metric
        assert result['higher_is_better'] == (metric != 'rmse')
        dataset = ogbg_mol.PygGraphPropPredDataset(name, root)
        check_predictions(tmp_path, stem, result, lambda y, p: evaluator.eval(
            {'y_true': y, 'y_pred': p})[metric], dataset.get_idx_split(),
            dataset.y)


def test_ogb_sets_have_only_their_split(root, tmp_path):
    with pytest.raises(SystemExit):
        ogbg_mol.main(['--root', root, '--out', str(tmp_path), '--split',
                       'random', *TINY])


def test_rdkit_chembl_set(tmp_path, monkeypatch):
    r"""ChEMBL activities as a regression (RMSE and MAE), on 41 of the
    1,017 compounds to stay fast."""
    cls, kwargs = ogbg_mol.RDKIT_DATASETS['chembl-activity']
    counter = itertools.count()
    kwargs = {**kwargs, 'pre_filter': lambda data: next(counter) % 25 == 0}
    monkeypatch.setitem(ogbg_mol.RDKIT_DATASETS, 'chembl-activity',
                        (cls, kwargs))

    root = str(tmp_path / 'data')
    stem, result = run(root, tmp_path, '--dataset', 'chembl-activity',
                       '--split', 'random', '--model', 'hsa')
    assert result['metric'] == 'rmse' and not result['higher_is_better']
    final = result['runs'][0]['final']
    assert 0 < final['test_mae'] <= final['test']  # MAE <= RMSE

    def rmse(y, p):
        return float((p - y).double().pow(2).mean().sqrt())
    # (as the example made it: another pre-processing would be refused)
    dataset = cls(root, pre_transform=MoleculeHierarchy(features='ogb'),
                  **kwargs)
    assert len(dataset) == 41
    check_predictions(tmp_path, stem, result, rmse,
                      dataset.get_idx_split('random', seed=0), dataset.y)


def test_task_metrics_of_the_rdkit_sets():
    r"""The scores of sets without an OGB evaluator: RMSE and MAE, and
    ROC-AUC averaged over the tasks with both classes, labels that are
    NaN left out."""
    pytest.importorskip('sklearn')
    from sklearn.metrics import roc_auc_score
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    p = y + 0.3 * torch.randn(30, 2, generator=gen, dtype=torch.float64)
    y[3, 1] = float('nan')
    scores = ogbg_mol.Task('regression', 2, 'rmse').evaluate(y, p)
    error = torch.cat([p[:, 0] - y[:, 0], (p[:, 1] - y[:, 1])[
        torch.arange(30) != 3]])
    assert scores['rmse'] == pytest.approx(error.pow(2).mean().sqrt())
    assert scores['mae'] == pytest.approx(error.abs().mean())

    labels = (y > 0).double()
    labels[3, 1] = float('nan')
    task = ogbg_mol.Task('binary classification', 2, 'rocauc')
    keep = torch.arange(30) != 3
    expected = (roc_auc_score(labels[:, 0], p[:, 0])
                + roc_auc_score(labels[keep, 1], p[keep, 1])) / 2
    assert task.evaluate(labels, p)['rocauc'] == pytest.approx(expected)
    one_class = labels.clone()
    one_class[:, 1] = 1.0  # a task with one class is left out, as OGB does
    assert task.evaluate(one_class, p)['rocauc'] == pytest.approx(
        roc_auc_score(labels[:, 0], p[:, 0]))
    one_class[:, 0] = 0.0  # no task left: an error, not a NaN
    with pytest.raises(ValueError, match='both classes'):
        task.evaluate(one_class, p)


def test_ddp_two_cpu_processes(root, tmp_path):
    r"""``torchrun --nproc_per_node=2 ogbg_mol.py --ddp``: both ranks
    train on half of the training set each, and the reported metrics are
    those of rank 0's saved model on every molecule, in one process."""
    out = tmp_path / 'ddp'
    proc = torchrun('ogbg_mol', '--root', root, '--out', str(out),
                    '--model', 'hsa', '--save-model', *TINY)
    name = 'ogbg-molhiv_scaffold_hsa'
    with open(out / f'{name}.json') as f:
        result = json.load(f)
    assert result['machine']['world_size'] == 2
    run_ = result['runs'][0]
    dataset = ogbg_mol.PygGraphPropPredDataset('ogbg-molhiv', root)
    split_idx = dataset.get_idx_split()
    ranks = run_['ranks']
    assert [r['rank'] for r in ranks] == [0, 1]
    n_train = len(split_idx['train'])
    assert [r['train_molecules_per_epoch'] for r in ranks] == \
        [math.ceil(n_train / 2)] * 2
    assert proc.stdout.count('Epoch: 001') == 1  # rank 0 logs alone

    # Rank 0's model, evaluated in this one process, gives the gathered
    # predictions and the reported metric.
    args = ogbg_mol.common_parser('', [], [], '', '').parse_args([])
    args.__dict__.update(result['config'])
    args.ddp = False
    model = ogbg_mol.build_model('hsa', 1, args)
    model.load_state_dict(torch.load(out / f'{name}_seed0_model.pt'))
    task = ogbg_mol.Task('binary classification', 1, 'rocauc',
                         'ogbg-molhiv')
    single = training.Distributed(0, 1, 0, torch.device('cpu'))
    scores = ogbg_mol.evaluate(model, dataset, split_idx, task, args, single)
    saved = torch.load(out / f'{name}_seed0_predictions.pt')
    for split in ('train', 'valid', 'test'):
        mine = scores[split]['predictions']
        assert torch.equal(saved[split]['index'], split_idx[split])
        assert torch.equal(saved[split]['y_true'], mine['y_true'])
        assert torch.allclose(saved[split]['y_pred'], mine['y_pred'],
                              atol=1e-5)
        assert scores[split]['scores']['rocauc'] == pytest.approx(
            run_['final'][split], abs=1e-6)


def test_virtual_node_needs_two_graphs_a_batch(capsys):
    with pytest.raises(SystemExit):
        ogbg_mol.main(['--model', 'gine-vn', '--batch-size', '1'])
    assert '--batch-size must be at least 2' in capsys.readouterr().err
