import csv
import json
import os.path as osp
import warnings

import pytest
import torch

from hsa_geo.datasets import ChEMBLActivity
from hsa_geo.datasets.processed_meta import read_meta

RDConfig = pytest.importorskip('rdkit.RDConfig')
smiles2graph = pytest.importorskip('ogb.utils').smiles2graph

DATA = osp.join(RDConfig.RDContribDir, 'FreeWilson', 'data')


def read_rdkit_files():
    with open(osp.join(DATA, 'CHEMBL2321810.smi')) as f:
        molecules = [line.split() for line in f if line.strip()]
    with open(osp.join(DATA, 'CHEMBL2321810_act.csv'), newline='') as f:
        activity = {row['Name']: float(row['Act'])
                    for row in csv.DictReader(f)}
    return molecules, activity


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('chembl'))


@pytest.fixture(scope='module')
def regression(root):
    return ChEMBLActivity(root, log=False)


def test_graphs_and_measured_labels(regression):
    molecules, activity = read_rdkit_files()
    assert len(regression) == len(molecules) == 1017
    assert regression.skipped == [] and regression.num_skipped == 0
    assert regression.task_type == 'regression'
    assert regression.eval_metric == 'rmse' and regression.num_tasks == 1
    assert repr(regression) == "ChEMBLActivity(1017, task='regression')"
    for i in (0, 500, 1016):
        data = regression[i]
        smiles, compound_id = molecules[i]
        assert data.smiles == smiles and data.compound_id == compound_id
        graph = smiles2graph(smiles)
        assert data.x.dtype == torch.long and data.x.size(1) == 9
        assert data.edge_attr.dtype == torch.long
        assert data.edge_attr.size(1) == 3
        assert data.x.tolist() == graph['node_feat'].tolist()
        assert data.edge_index.tolist() == graph['edge_index'].tolist()
        assert data.edge_attr.tolist() == graph['edge_feat'].tolist()
        assert data.y.dtype == torch.float and data.y.shape == (1, 1)
        assert data.y.item() == pytest.approx(activity[compound_id])
    assert regression[0].compound_id == '1520012'
    assert regression[0].y.item() == pytest.approx(5.48)


def test_raw_files_are_rdkit_s(regression):
    for name in ('CHEMBL2321810.smi', 'CHEMBL2321810_act.csv'):
        with open(osp.join(regression.raw_dir, name), 'rb') as copy, \
                open(osp.join(DATA, name), 'rb') as original:
            assert copy.read() == original.read()


@pytest.mark.parametrize('threshold,actives', [(6.0, 689), (7.0, 353)])
def test_classification(root, regression, threshold, actives):
    dataset = ChEMBLActivity(root, task='classification',
                             threshold=threshold, log=False)
    assert dataset.task_type == 'binary classification'
    assert dataset.eval_metric == 'rocauc'
    assert repr(dataset) == (f"ChEMBLActivity(1017, task='classification', "
                             f"threshold={threshold!r})")
    y = torch.cat([data.y for data in dataset])
    assert y.dtype == torch.long and y.shape == (1017, 1)
    activity = torch.cat([data.y for data in regression])
    assert torch.equal(y, (activity >= threshold).long())
    assert int(y.sum()) == actives
    # The variants are files of their own under one root.
    assert osp.isfile(osp.join(dataset.processed_dir,
                               f'classification_{threshold!r}.pt'))
    assert osp.isfile(osp.join(dataset.processed_dir, 'regression.pt'))


def test_thresholds_that_print_alike_are_variants_of_their_own(root):
    molecules, activity = read_rdkit_files()
    # Act 6.0 is active at 6.0 only; '{:g}' prints both thresholds as 6.
    for threshold in (6.0, 6.0000001):
        dataset = ChEMBLActivity(root, task='classification',
                                 threshold=threshold, log=False)
        assert [data.y.item() for data in dataset] == [
            int(activity[c] >= threshold) for _, c in molecules]
        assert repr(dataset).endswith(f'threshold={threshold!r})')
        assert osp.basename(dataset.processed_paths[0]) == \
            f'classification_{threshold!r}.pt'


def fewer(data):
    return data.num_nodes < 30


def test_a_variant_made_with_another_pre_filter_is_refused(tmp_path):
    root = str(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ChEMBLActivity(root, log=False)
        few = ChEMBLActivity(root, task='classification', pre_filter=fewer,
                             log=False)
        assert len(ChEMBLActivity(root, log=False)) == 1017
    # PyG's one record per folder is that of the variant processed last.
    assert not [w for w in caught if 'pre_filter' in str(w.message)]
    with pytest.raises(ValueError, match=(
            r"'regression\.pt' .* made with pre_filter=None, but "
            r"pre_filter=<function fewer> was given.*force_reload=True")):
        ChEMBLActivity(root, pre_filter=fewer, log=False)
    again = ChEMBLActivity(root, pre_filter=fewer, force_reload=True,
                           log=False)
    assert len(again) == len(few) < 1017
    assert max(data.num_nodes for data in again) < 30
    assert len(ChEMBLActivity(root, pre_filter=fewer, log=False)) == len(few)


def test_files_of_an_earlier_version_are_processed_again(tmp_path):
    root = str(tmp_path)
    path = ChEMBLActivity(root, pre_filter=fewer, log=False).processed_paths[1]
    # The side file without the pre-processing it was made with.
    meta = read_meta(path)
    meta.pop('pre_transform', None), meta.pop('pre_filter', None)
    with open(path, 'w') as f:
        json.dump(meta, f)
    assert len(ChEMBLActivity(root, log=False)) == 1017
    assert read_meta(path)['pre_filter'] == 'None'


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="'task' must be one of"):
        ChEMBLActivity(root, task='ranking')
    with pytest.raises(TypeError, match="'threshold'"):
        ChEMBLActivity(root, task='classification', threshold='6')


def test_compound_without_activity(tmp_path):
    molecules, activity = read_rdkit_files()
    raw = tmp_path / 'chembl2321810' / 'raw'
    raw.mkdir(parents=True)
    (raw / 'CHEMBL2321810.smi').write_text(
        ''.join(f'{s} {c}\n' for s, c in molecules[:5]) + 'CCO 42\n')
    (raw / 'CHEMBL2321810_act.csv').write_text(
        'Name,Act\n' + ''.join(f'{c},{activity[c]}\n'
                               for _, c in molecules[:5]))
    with pytest.raises(ValueError, match='Compound 42 .* has no activity'):
        ChEMBLActivity(str(tmp_path), log=False)


def _write_raw(root, smi, act):
    import os
    raw = os.path.join(root, 'chembl2321810', 'raw')
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, 'CHEMBL2321810.smi'), 'w') as f:
        f.write(smi)
    with open(os.path.join(raw, 'CHEMBL2321810_act.csv'), 'w') as f:
        f.write(act)


@pytest.mark.parametrize('act, match', [
    ('Name,Act\n1,7.5\n2,nan\n', r"Line 3 .*compound '2' has the activity "
                                 r"'nan', which is not a finite number"),
    ('Name,Act\n1,7.5\n2,\n', r"compound '2' has the activity ''"),
    ('Name,Act\n1,7.5\n2,5.0\n2,8.0\n', r"Line 4 .*compound '2' has a "
                                        r"second activity"),
])
def test_activities_that_are_no_label_are_refused(tmp_path, act, match):
    _write_raw(str(tmp_path), 'CCO 1\nc1ccccc1O 2\n', act)
    with pytest.raises(ValueError, match=match):
        ChEMBLActivity(str(tmp_path), task='classification', log=False)


def test_a_byte_order_mark_and_a_line_without_identifier(tmp_path):
    _write_raw(str(tmp_path), 'CCO 1\nCCN 2\n', '\ufeffName,Act\n1,7.5\n2,5\n')
    dataset = ChEMBLActivity(str(tmp_path), log=False)
    assert dataset.y.view(-1).tolist() == [7.5, 5.0]
    _write_raw(str(tmp_path / 'b'), 'CCO 1\nCCN\n', 'Name,Act\n1,7.5\n')
    with pytest.raises(ValueError, match=r"Line 2 of .* is 'CCN'"):
        ChEMBLActivity(str(tmp_path / 'b'), log=False)
