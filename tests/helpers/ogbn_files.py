r"""Small ``ogbn-arxiv`` and ``ogbn-products`` datasets written in OGB's own
on-disk layout, as :class:`ogb.nodeproppred.PygNodePropPredDataset` finds
them after its download step (``ogb`` 1.3.6)::

    <root>/ogbn_arxiv/
        RELEASE_v1.txt                     (the version marker)
        raw/edge.csv.gz                    (E rows "source,target")
        raw/node-feat.csv.gz               (N rows of 128 floats)
        raw/node-label.csv.gz              (N rows, the class)
        raw/node_year.csv.gz               (N rows; arxiv only)
        raw/num-node-list.csv.gz           ("N")
        raw/num-edge-list.csv.gz           ("E")
        split/time/{train,valid,test}.csv.gz  (one node id per row)

``ogbn-products`` lives in ``ogbn_products/`` with 100 features, 47 classes,
no ``node_year``, random directed pairs (OGB adds the inverse edges) and
the split in ``split/sales_ranking/``. Nothing is downloaded: the folder
exists with its release marker, so OGB goes straight to processing.
"""
from __future__ import annotations

import gzip
import os
import os.path as osp
from typing import Dict, Optional

import numpy as np

# name -> (folder, features, classes, split folder, has node_year)
LAYOUTS = {
    'ogbn-arxiv': ('ogbn_arxiv', 128, 40, 'time', True),
    'ogbn-products': ('ogbn_products', 100, 47, 'sales_ranking', False),
}


def _write_rows(path: str, rows: np.ndarray, fmt: str):
    os.makedirs(osp.dirname(path), exist_ok=True)
    rows = rows.reshape(rows.shape[0], -1)
    with gzip.open(path, 'wt') as f:
        for row in rows:
            f.write(','.join(fmt % v for v in row) + '\n')


def write_ogbn(root: str, name: str = 'ogbn-arxiv', num_nodes: int = 300,
               num_edges: int = 1500, seed: int = 0,
               label_classes: Optional[int] = None) -> Dict[str, np.ndarray]:
    r"""Writes a random graph of :obj:`num_nodes` nodes and
    :obj:`num_edges` edges (no self loops) as the OGB dataset :obj:`name`
    under :obj:`root`, with labels that the features predict in part (drawn
    from the first :obj:`label_classes` classes, default all, so that a
    model can learn them in one epoch), and returns what it wrote: ``x``
    ``[N, F]`` (float32, as OGB reads it back), ``y`` ``[N]``,
    ``edge_index`` ``[2, E]`` and the split ``train`` / ``valid`` /
    ``test`` (54/18/28 of a permutation, ogbn-arxiv's proportions)."""
    folder, num_features, num_classes, split, has_year = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, label_classes or num_classes, num_nodes)
    centers = rng.normal(size=(num_classes, num_features))
    x = np.round(rng.normal(size=(num_nodes, num_features)) + centers[y], 4)
    x = x.astype(np.float32)
    src = rng.integers(0, num_nodes, num_edges)
    dst = (src + rng.integers(1, num_nodes, num_edges)) % num_nodes
    edge_index = np.stack([src, dst])

    base = osp.join(root, folder)
    raw = osp.join(base, 'raw')
    _write_rows(osp.join(raw, 'edge.csv.gz'), edge_index.T, '%d')
    _write_rows(osp.join(raw, 'node-feat.csv.gz'), x, '%.4f')
    _write_rows(osp.join(raw, 'node-label.csv.gz'), y, '%d')
    if has_year:
        _write_rows(osp.join(raw, 'node_year.csv.gz'),
                    rng.integers(1971, 2021, num_nodes), '%d')
    _write_rows(osp.join(raw, 'num-node-list.csv.gz'),
                np.array([num_nodes]), '%d')
    _write_rows(osp.join(raw, 'num-edge-list.csv.gz'),
                np.array([num_edges]), '%d')

    perm = rng.permutation(num_nodes)
    cut1, cut2 = int(0.54 * num_nodes), int(0.72 * num_nodes)
    parts = {'train': np.sort(perm[:cut1]), 'valid': np.sort(perm[cut1:cut2]),
             'test': np.sort(perm[cut2:])}
    for key, index in parts.items():
        _write_rows(osp.join(base, 'split', split, f'{key}.csv.gz'), index,
                    '%d')
    with open(osp.join(base, 'RELEASE_v1.txt'), 'w') as f:
        f.write(f'{name} version 1 (small test copy)\n')
    return {'x': x, 'y': y, 'edge_index': edge_index, **parts}
