r"""Small ``peptides-func`` and ``peptides-struct`` datasets written as
:class:`torch_geometric.datasets.LRGBDataset` (PyG 2.8.1) finds them after
its download step::

    <root>/peptides-func/raw/{train,val,test}.pt

each a ``torch.save``-d list of tuples ``(x, edge_attr, edge_index, y)``:
``x`` ``[N, 9]`` and ``edge_attr`` ``[E, 3]`` OGB atom and bond features
(``ogb.utils.smiles2graph``, int64), ``edge_index`` ``[2, E]``, and ``y``
``[1, 10]`` binary labels (func) or ``[1, 11]`` real targets (struct). The
molecules are real peptides (random sequences of amino acids); the labels
are random, except that every task has both classes in every split, so
that its average precision is defined.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Dict, List, Optional

import numpy as np
import torch

# One residue each, written so that they chain: N-terminus first, the
# carbonyl carbon last (the next residue's nitrogen bonds to it).
RESIDUES = {
    'G': 'NCC(=O)',
    'A': 'N[C@@H](C)C(=O)',
    'S': 'N[C@@H](CO)C(=O)',
    'V': 'N[C@@H](C(C)C)C(=O)',
    'K': 'N[C@@H](CCCCN)C(=O)',
    'F': 'N[C@@H](Cc1ccccc1)C(=O)',
    'W': 'N[C@@H](Cc1c[nH]c2ccccc12)C(=O)',
    'P': 'N1CCC[C@H]1C(=O)',
    'C': 'N[C@@H](CS)C(=O)',
    'E': 'N[C@@H](CCC(=O)O)C(=O)',
}
NUM_TASKS = {'peptides-func': 10, 'peptides-struct': 11}


def peptide_smiles(sequence: str) -> str:
    r"""The SMILES of the linear peptide :obj:`sequence` (one letter per
    residue, N- to C-terminus), with a free acid at the end."""
    return ''.join(RESIDUES[r] for r in sequence) + 'O'


def write_peptides(root: str, name: str = 'peptides-func',
                   sizes: Optional[Dict[str, int]] = None,
                   seed: int = 0) -> Dict[str, List[tuple]]:
    r"""Writes the splits of :obj:`name` under :obj:`root` (``sizes``:
    graphs per split, default 12 / 6 / 6) and returns them, split name to
    the list of tuples written."""
    from ogb.utils import smiles2graph
    sizes = sizes or {'train': 12, 'val': 6, 'test': 6}
    tasks = NUM_TASKS[name]
    rng = np.random.default_rng(seed)
    raw = osp.join(root, name, 'raw')
    os.makedirs(raw, exist_ok=True)
    written = {}
    for split, count in sizes.items():
        graphs = []
        if name == 'peptides-func':
            labels = rng.integers(0, 2, (count, tasks))
            labels[0], labels[1] = 1, 0  # both classes in every task
        else:
            labels = rng.normal(size=(count, tasks))
        for i in range(count):
            length = int(rng.integers(2, 7))
            sequence = ''.join(rng.choice(list(RESIDUES), length))
            graph = smiles2graph(peptide_smiles(sequence))
            graphs.append((
                torch.from_numpy(graph['node_feat']).long(),
                torch.from_numpy(graph['edge_feat']).long(),
                torch.from_numpy(graph['edge_index']).long(),
                torch.tensor(labels[i:i + 1], dtype=torch.float),
            ))
        torch.save(graphs, osp.join(raw, f'{split}.pt'))
        written[split] = graphs
    return written
