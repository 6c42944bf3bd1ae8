import os.path as osp
import sys
from collections import defaultdict

import pytest
import torch
from torch_geometric.loader import DataLoader

from hsa_geo.data import Hierarchy
from hsa_geo.datasets import ChEMBLActivity, RDKitMoleculeDataset
from hsa_geo.datasets.scaffold_split import murcko_scaffolds
from hsa_geo.nn import HSAConv
from hsa_geo.transforms import MoleculeHierarchy

RDConfig = pytest.importorskip('rdkit.RDConfig')

DATA = osp.join(RDConfig.RDContribDir, 'FreeWilson', 'data')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return ChEMBLActivity(str(tmp_path_factory.mktemp('chembl')), log=False)


def every_tenth(data):
    return int(data.compound_id) % 10 == 0


def test_pre_filter_and_molecule_hierarchy_in_a_data_loader(tmp_path):
    transform = MoleculeHierarchy(features='ogb')
    dataset = ChEMBLActivity(str(tmp_path), pre_filter=every_tenth,
                             pre_transform=transform, log=False)
    with open(osp.join(DATA, 'CHEMBL2321810.smi')) as f:
        kept = [line.split()[1] for line in f if line.strip()
                and int(line.split()[1]) % 10 == 0]
    assert 50 < len(dataset) == len(kept) < 200
    assert [data.compound_id for data in dataset] == kept
    # The stored trees are those the transform makes on the fly.
    plain = ChEMBLActivity(str(tmp_path / 'plain'), pre_filter=every_tenth,
                           log=False)
    for i in (0, len(dataset) - 1):
        expected = transform(plain[i]).hierarchy.parent
        assert torch.equal(dataset[i].hierarchy.parent, expected)

    batch = next(iter(DataLoader(dataset, batch_size=8, shuffle=False)))
    hierarchy = batch.hierarchy
    assert hierarchy.num_trees == batch.num_graphs == 8
    assert hierarchy.num_leaves == batch.num_nodes
    assert torch.equal(hierarchy.parent, Hierarchy.batch(
        [dataset[i].hierarchy for i in range(8)]).parent)
    assert batch.y.shape == (8, 1) and batch.x.shape == (batch.num_nodes, 9)
    out = HSAConv(9, 8, heads=2)(batch.x.float(), hierarchy)
    assert out.shape == (batch.num_nodes, 2 * 8) and out.isfinite().all()


def test_loaded_back_without_processing(dataset, monkeypatch):
    def fail(self):
        raise AssertionError('processed again')

    monkeypatch.setattr(ChEMBLActivity, 'process', fail)
    again = ChEMBLActivity(dataset.root, log=False)
    assert len(again) == len(dataset)
    for i in (0, 700):
        for key in ('x', 'edge_index', 'edge_attr', 'y'):
            assert torch.equal(again[i][key], dataset[i][key])
        assert again[i].smiles == dataset[i].smiles


def test_files_of_another_format_are_refused(dataset, tmp_path):
    """Processed files of an earlier format raise, with the fix; processing
    again (force_reload=True) replaces them."""
    import shutil
    root = tmp_path / 'copy'
    shutil.copytree(dataset.root, root)
    processed = ChEMBLActivity(str(root), log=False).processed_paths
    (root / processed[1]).write_text('[]')  # as before processed formats
    with pytest.raises(ValueError, match='force_reload=True'):
        ChEMBLActivity(str(root), log=False)
    again = ChEMBLActivity(str(root), force_reload=True, log=False)
    assert len(again) == len(dataset)
    assert len(ChEMBLActivity(str(root), log=False)) == len(dataset)


def test_unparsable_molecules_are_skipped_and_counted(tmp_path):
    with open(osp.join(DATA, 'CHEMBL2321810.smi')) as f:
        lines = [line for line in f if line.strip()][:20]
    with open(osp.join(DATA, 'CHEMBL2321810_act.csv')) as f:
        acts = f.readlines()[:21]
    raw = tmp_path / 'chembl2321810' / 'raw'
    raw.mkdir(parents=True)
    # A pentavalent carbon and an unclosed ring among real compounds.
    (raw / 'CHEMBL2321810.smi').write_text(
        ''.join(lines[:10]) + 'C(C)(C)(C)(C)C 1\n' + ''.join(lines[10:])
        + 'c1ccccc 2\n')
    (raw / 'CHEMBL2321810_act.csv').write_text(
        ''.join(acts) + '1,7.0\n2,5.0\n')
    with pytest.warns(UserWarning, match=r"cannot parse 2 of the 22 "
                      r"SMILES of 'CHEMBL2321810.smi'; skipped compounds "
                      r"\['1', '2'\]"):
        dataset = ChEMBLActivity(str(tmp_path), log=False)
    assert len(dataset) == 20 and dataset.num_skipped == 2
    assert dataset.skipped == [('1', 'C(C)(C)(C)(C)C'), ('2', 'c1ccccc')]
    assert dataset[10].compound_id == lines[10].split()[1]
    assert ChEMBLActivity(str(tmp_path), log=False).skipped == \
        dataset.skipped


def test_missing_rdkit_files(tmp_path, monkeypatch):
    empty = tmp_path / 'rdkit'
    empty.mkdir()
    monkeypatch.setattr(RDConfig, 'RDContribDir', str(empty))
    with pytest.raises(FileNotFoundError, match=r"lacks .*CHEMBL2321810.smi"
                       r".*'pip install rdkit'"):
        ChEMBLActivity(str(tmp_path / 'data'), log=False)


def test_rdkit_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'rdkit', None)
    with pytest.raises(ImportError, match="ChEMBLActivity reads its raw "
                       "files from RDKit.*'pip install rdkit'"):
        ChEMBLActivity(str(tmp_path), log=False)


def test_pre_filter_that_keeps_nothing(tmp_path):
    with pytest.raises(ValueError, match="kept none of the 1017"):
        ChEMBLActivity(str(tmp_path), pre_filter=lambda data: False,
                       log=False)


def test_scaffold_split(dataset):
    split = dataset.get_idx_split()
    assert split.keys() == {'train', 'valid', 'test'}
    assert [len(index) for index in split.values()] == [813, 102, 102]
    everything = torch.cat(list(split.values()))
    assert sorted(everything.tolist()) == list(range(len(dataset)))
    scaffolds = murcko_scaffolds([data.smiles for data in dataset])
    parts_of = defaultdict(set)
    for part, index in split.items():
        assert index.dtype == torch.long
        for i in index.tolist():
            parts_of[scaffolds[i]].add(part)
    assert all(len(parts) == 1 for parts in parts_of.values())
    again = dataset.get_idx_split('scaffold', seed=5)
    assert all(torch.equal(split[p], again[p]) for p in split)


def test_random_split(dataset):
    split = dataset.get_idx_split('random', seed=1)
    everything = torch.cat(list(split.values()))
    assert sorted(everything.tolist()) == list(range(len(dataset)))
    assert [len(index) for index in split.values()] == [813, 102, 102]
    again = dataset.get_idx_split('random', seed=1)
    assert all(torch.equal(split[p], again[p]) for p in split)
    other = dataset.get_idx_split('random', seed=2)
    assert not torch.equal(split['test'], other['test'])
    with pytest.raises(ValueError, match="'scaffold' or 'random'"):
        dataset.get_idx_split('stratified')


def test_split_of_a_subset(dataset):
    subset = dataset[100:200]
    assert subset.smiles == [dataset[i].smiles for i in range(100, 200)]
    split = subset.get_idx_split()
    assert sorted(torch.cat(list(split.values())).tolist()) == \
        list(range(100))


def test_the_base_reads_nothing_itself(tmp_path):
    class Empty(RDKitMoleculeDataset):
        name = 'empty'

    with pytest.raises(NotImplementedError):
        Empty(str(tmp_path), log=False)
