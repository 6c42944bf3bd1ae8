r"""A tiny ``ogbg-mol*`` dataset in OGB's own on-disk layout.

:class:`ogb.graphproppred.PygGraphPropPredDataset` downloads a zip and
unpacks it to ``<root>/<name with '-' as '_'>/``; when that folder already
holds the release marker and the raw files, it processes them without a
download. :func:`write_ogbg_mol` writes that folder as the zip holds it:

.. code-block:: text

    <root>/ogbg_molhiv/
        RELEASE_v1.txt                  version marker (else OGB asks to
                                        update, on stdin)
        raw/edge.csv.gz                 one row 'i,j' per bond (OGB adds
                                        the inverse edges)
        raw/edge-feat.csv.gz            3 bond features per bond
        raw/node-feat.csv.gz            9 atom features per atom
        raw/num-node-list.csv.gz        atoms per molecule
        raw/num-edge-list.csv.gz        bonds per molecule
        raw/graph-label.csv.gz          one column per task ('' is NaN)
        mapping/mol.csv.gz              labels, smiles, mol_id
        mapping/README.md
        split/scaffold/{train,valid,test}.csv.gz   molecule indices

Molecules are real (:data:`SMILES`, marketed drugs and small building
blocks) featurized with :func:`ogb.utils.smiles2graph`, as OGB made its
files; the split is a Bemis-Murcko scaffold split (largest scaffold groups
to train, 80/10/10), as OGB's is. The labels are computed properties
(RDKit's Crippen logP, TPSA, ...), so that a model can learn them:
regression tasks hold the property itself, classification tasks whether
it lies above the median of the molecule's split, so that every split has
both classes (OGB's ROC-AUC needs both).
"""
import gzip
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

# Real molecules: marketed drugs and common small molecules.
SMILES = [
    'CC(=O)Oc1ccccc1C(=O)O', 'CC(C)Cc1ccc(cc1)C(C)C(=O)O',
    'CN1C=NC2=C1C(=O)N(C(=O)N2C)C', 'CC(=O)Nc1ccc(O)cc1',
    'OC(=O)c1ccccc1O', 'c1ccc2ccccc2c1', 'c1ccc(cc1)-c1ccccc1',
    'CCN(CC)CC', 'CCO', 'CC(=O)O', 'c1ccncc1', 'C1CCCCC1',
    'O=C(O)CCC(=O)O', 'NC(=O)c1cccnc1', 'Cc1ccccc1', 'Clc1ccccc1',
    'COc1ccc2[nH]cc(CCN(C)C)c2c1', 'CN1CCC[C@H]1c1cccnc1',
    'CC(C)NCC(O)c1ccc(O)c(O)c1', 'NCCc1ccc(O)c(O)c1',
    'CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O',
    'OC(=O)CC(O)(CC(=O)O)C(=O)O', 'CN(C)C(=N)NC(=N)N',
    'Fc1ccc(cc1)C(=O)CCCN1CCC(O)(CC1)c1ccc(Cl)cc1',
    'CC(C)(C)NCC(O)c1ccc(O)c(CO)c1', 'OC1=CC=CC=C1',
    'CN1CCN(CC1)C(=O)c1ccccc1', 'O=C1NC(=O)c2ccccc12',
    'CC(=O)NC1=CC=C(C=C1)S(=O)(=O)N', 'Nc1ccc(cc1)S(=O)(=O)Nc1ccccn1',
    'C1=CC=C2C(=C1)C=CC=N2', 'COC(=O)c1ccccc1O',
    'CCCCCCCC(=O)O', 'O=C(c1ccccc1)c1ccccc1', 'c1ccc2c(c1)oc1ccccc12',
    'CC1=C(C(=O)C=CC1=O)C', 'OCC(O)CO', 'C1COCCN1', 'CS(=O)C',
    'N#Cc1ccccc1', 'O=[N+]([O-])c1ccccc1', 'CC(C)C[C@H](N)C(=O)O',
    'C[C@@H](C(=O)O)c1ccc2cc(OC)ccc2c1', 'O=C(O)c1ccc(cc1)N',
    'CCOC(=O)C1=C(C)NC(C)=C(C1c1cccc(c1)[N+]([O-])=O)C(=O)OC',
    'Clc1ccc(cc1)C(c1ccccc1)N1CCNCC1', 'C1CC1N', 'CC#N',
]


def _properties(smiles: str) -> List[float]:
    from rdkit import Chem
    from rdkit.Chem import Crippen, Descriptors, rdMolDescriptors
    mol = Chem.MolFromSmiles(smiles)
    return [Crippen.MolLogP(mol), rdMolDescriptors.CalcTPSA(mol),
            Descriptors.MolWt(mol) / 100.0,
            float(rdMolDescriptors.CalcNumRings(mol))]


def scaffold_split(smiles: Sequence[str]) -> Dict[str, np.ndarray]:
    r"""The split OGB's molecule datasets were made with (Bemis-Murcko
    scaffold sets, largest first, 80/10/10), as
    :func:`hsa_geo.datasets.scaffold_split` computes it."""
    from hsa_geo.datasets import scaffold_split as split
    return {key: index.numpy() for key, index in split(smiles).items()}


def _labels(smiles: Sequence[str], split: Dict[str, np.ndarray],
            num_tasks: int, classification: bool) -> np.ndarray:
    props = np.array([_properties(s) for s in smiles])
    labels = np.stack([props[:, t % props.shape[1]]
                       for t in range(num_tasks)], axis=1)
    if classification:
        for index in split.values():
            part = labels[index]
            labels[index] = (part > np.median(part, axis=0)).astype(float)
    if num_tasks > 1:  # multi-task OGB sets miss some labels (NaN)
        labels[np.arange(len(smiles)) % 7 == 3, 1:] = np.nan
    return labels


def _write_csv(path: str, rows, header: Optional[List[str]] = None):
    frame = pd.DataFrame(rows)
    if header is not None:
        frame.columns = header
    with gzip.open(path, 'wt') as f:
        frame.to_csv(f, index=False, header=header is not None)


def write_ogbg_mol(root: str, name: str = 'ogbg-molhiv',
                   smiles: Optional[Sequence[str]] = None) -> str:
    r"""Writes the dataset :obj:`name` (any ``ogbg-mol*`` of OGB's
    ``master.csv``) from :obj:`smiles` (default :data:`SMILES`) under
    :obj:`root` in OGB's layout, and returns its folder. Then
    ``PygGraphPropPredDataset(name, root)`` loads it without a download.
    """
    from ogb.utils import smiles2graph
    master = pd.read_csv(osp.join(osp.dirname(__import__(
        'ogb.graphproppred', fromlist=['x']).__file__), 'master.csv'),
        index_col=0, keep_default_na=False)
    meta = master[name]
    smiles = list(SMILES if smiles is None else smiles)
    folder = osp.join(root, '_'.join(name.split('-')))
    for sub in ('raw', 'mapping', osp.join('split', meta['split'])):
        os.makedirs(osp.join(folder, sub), exist_ok=True)
    with open(osp.join(folder, f'RELEASE_v{meta["version"]}.txt'), 'w') as f:
        f.write(f'# Release note for {name}\n\n### v{meta["version"]}: '
                f'initial release\n')

    graphs = [smiles2graph(s) for s in smiles]
    # smiles2graph lists every bond twice, (i, j) then (j, i); OGB's raw
    # files hold each bond once and add_inverse_edge restores the pairs.
    raw = osp.join(folder, 'raw')
    _write_csv(osp.join(raw, 'edge.csv.gz'),
               np.concatenate([g['edge_index'][:, ::2].T for g in graphs]))
    _write_csv(osp.join(raw, 'edge-feat.csv.gz'),
               np.concatenate([g['edge_feat'][::2] for g in graphs]))
    _write_csv(osp.join(raw, 'node-feat.csv.gz'),
               np.concatenate([g['node_feat'] for g in graphs]))
    _write_csv(osp.join(raw, 'num-node-list.csv.gz'),
               [g['num_nodes'] for g in graphs])
    _write_csv(osp.join(raw, 'num-edge-list.csv.gz'),
               [g['edge_index'].shape[1] // 2 for g in graphs])

    split = scaffold_split(smiles)
    labels = _labels(smiles, split, int(meta['num tasks']),
                     'classification' in meta['task type'])
    if not np.isnan(labels).any() and 'classification' in meta['task type']:
        labels = labels.astype(np.int64)  # as OGB writes them
    _write_csv(osp.join(raw, 'graph-label.csv.gz'), labels)
    tasks = ['HIV_active'] if name == 'ogbg-molhiv' else \
        [f'task_{t}' for t in range(labels.shape[1])]
    mapping = pd.DataFrame(labels, columns=tasks)
    mapping['smiles'] = smiles
    mapping['mol_id'] = [f'mol_{i}' for i in range(len(smiles))]
    _write_csv(osp.join(folder, 'mapping', 'mol.csv.gz'), mapping,
               header=list(mapping.columns))
    with open(osp.join(folder, 'mapping', 'README.md'), 'w') as f:
        f.write('mol.csv.gz: the labels and SMILES of molecule i on row i\n')
    for key, index in split.items():
        _write_csv(osp.join(folder, 'split', meta['split'], f'{key}.csv.gz'),
                   index)
    return folder
