import os.path as osp
from collections import defaultdict

import pytest
import torch

from hsa_geo.datasets import scaffold_split
from hsa_geo.datasets.scaffold_split import murcko_scaffolds

RDConfig = pytest.importorskip('rdkit.RDConfig')


@pytest.fixture(scope='module')
def chembl_smiles():
    path = osp.join(RDConfig.RDContribDir, 'FreeWilson', 'data',
                    'CHEMBL2321810.smi')
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def test_small_example():
    smiles = ['c1ccccc1O', 'c1ccccc1N', 'C1CCCCC1O', 'CCO']
    assert murcko_scaffolds(smiles) == ['c1ccccc1', 'c1ccccc1', 'C1CCCCC1',
                                        '']
    split = scaffold_split(smiles, fractions=(0.5, 0.25, 0.25))
    assert {k: v.tolist() for k, v in split.items()} == {
        'train': [0, 1], 'valid': [3], 'test': [2]}


def test_no_scaffold_in_two_parts_on_a_real_series(chembl_smiles):
    split = scaffold_split(chembl_smiles)
    n = len(chembl_smiles)
    everything = torch.cat(list(split.values()))
    assert sorted(everything.tolist()) == list(range(n))
    scaffolds = murcko_scaffolds(chembl_smiles)
    parts_of = defaultdict(set)
    for part, index in split.items():
        assert torch.equal(index, index.sort().values)
        for i in index.tolist():
            parts_of[scaffolds[i]].add(part)
    assert all(len(parts) == 1 for parts in parts_of.values())
    # The greedy rule: training and validation never overflow their
    # cut-offs, and the most common scaffold is trained on.
    assert len(split['train']) <= int(0.8 * n)
    assert len(split['train']) + len(split['valid']) <= int(0.9 * n)
    largest = max(set(scaffolds), key=scaffolds.count)
    assert parts_of[largest] == {'train'}
    # Deterministic, and not a random split.
    again = scaffold_split(list(chembl_smiles))
    assert all(torch.equal(split[p], again[p]) for p in split)
    assert [len(index) for index in split.values()] == [813, 102, 102]


def test_greedy_assignment_by_size():
    # Scaffold sets of sizes 5 (benzene), 3 (pyridine), 1, 1 (cyclohexane,
    # acyclic): 80% of 10 is 8, so benzene and pyridine train.
    smiles = ['c1ccccc1' + s for s in ('O', 'N', 'C', 'Cl', 'F')] + \
        ['c1ccncc1' + s for s in ('O', 'N', 'C')] + ['C1CCCCC1', 'CCCC']
    split = scaffold_split(smiles)
    assert split['train'].tolist() == list(range(8))
    assert split['valid'].tolist() == [9]  # ties: the later set first
    assert split['test'].tolist() == [8]


def test_chirality_separates_scaffolds():
    # cis- and trans-decalin: one scaffold without stereochemistry, two with.
    smiles = ['C1CC[C@H]2CCCC[C@@H]2C1', 'C1CC[C@H]2CCCC[C@H]2C1']
    with_chirality = murcko_scaffolds(smiles, include_chirality=True)
    without = murcko_scaffolds(smiles, include_chirality=False)
    assert without[0] == without[1]
    assert with_chirality[0] != with_chirality[1]
    split = scaffold_split(smiles, fractions=(0.5, 0.5, 0.0))
    assert len(split['train']) == len(split['valid']) == 1
    split = scaffold_split(smiles, fractions=(0.5, 0.5, 0.0),
                           include_chirality=False)
    # One set of two does not fit the training part's one place.
    assert split['train'].tolist() == [] and split['valid'].tolist() == [0, 1]


def test_bad_input():
    with pytest.raises(ValueError, match="SMILES 1 .*'C1CC'"):
        scaffold_split(['CCO', 'C1CC'])
    with pytest.raises(ValueError, match='sum to 1'):
        scaffold_split(['CCO'], fractions=(0.9, 0.2, 0.0))


def test_ties_of_sets_larger_than_one_go_by_their_first_molecule():
    """Hu et al. sort the scaffold sets by (size, first index), largest
    first: of benzene {0, 3} and cyclohexane {1, 2}, cyclohexane trains."""
    smiles = ['c1ccccc1O', 'C1CCCCC1O', 'C1CCCCC1N', 'c1ccccc1N']
    split = scaffold_split(smiles, fractions=(0.5, 0.25, 0.25))
    assert split['train'].tolist() == [1, 2]
    assert split['test'].tolist() == [0, 3]
