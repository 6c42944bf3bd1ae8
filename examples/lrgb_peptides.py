r"""Graph property prediction on the peptides of the Long Range Graph
Benchmark (LRGB): ``peptides-func`` (10 functions, multi-label
classification, average precision) and ``peptides-struct`` (11 structural
properties, regression, mean absolute error), where the targets depend on
atoms far apart in a chain of ~150 atoms, so global attention should
matter. HSA against GINE and GPS under the same split, budget and seeds.

Every peptide gets its tree once, as the dataset's ``pre_transform``:
``MoleculeHierarchy(features='ogb')`` (atoms -> ring systems and BRICS
chain pieces, here mostly the residues -> peptide; LRGB's atom and bond
features are OGB's, from which it rebuilds the molecule) or, with
``--hierarchy metis``, ``GraphHierarchy(method='metis')``. Models, all with
OGB's ``AtomEncoder`` / ``BondEncoder``, mean pooling and the same width
and depth:

* ``hsa``: :class:`~hsa_geo.nn.models.HSAGraphTransformer`, GINE on the
  bonds beside HSA over the tree (bond features also as its pair bias),
  then an MLP, per block;
* ``gine``: a GINE stack with residual connections;
* ``gps``: PyG's :class:`~torch_geometric.nn.conv.GPSConv` with GINE and
  dense multi-head attention over each peptide (``--attn-type performer``
  for Performer's).

Metrics as LRGB computes them: average precision per task (over the
labelled graphs, tasks with both classes), averaged over tasks; MAE over
all targets. Train metrics come from the epoch's training predictions.

Data-parallel training: ``torchrun --nproc_per_node=2
examples/lrgb_peptides.py --ddp`` (gloo on CPU, nccl on GPU; metrics from
the predictions of all ranks).

Usage::

    python examples/lrgb_peptides.py --dataset peptides-func --model hsa
    python examples/lrgb_peptides.py --dataset peptides-struct --model gps
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import Tensor
from torch.nn import Linear, ReLU, Sequential
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.datasets import LRGBDataset
from torch_geometric.loader import DataLoader
from torch_geometric.nn import BatchNorm, GINEConv, GPSConv, global_mean_pool
from training import (Distributed, Results, Timer, cached_tree_matches,
                      common_parser, parse_checked, peak_memory_mb,
                      positive_int, probability, progress, seed_everything)

from hsa_geo.nn.models import HSAGraphTransformer
from hsa_geo.transforms import GraphHierarchy, MoleculeHierarchy

DATASETS = ['peptides-func', 'peptides-struct']
MODELS = ['hsa', 'gine', 'gps']
# name -> (metric, number of targets, higher is better)
TASKS = {'peptides-func': ('ap', 10, True),
         'peptides-struct': ('mae', 11, False)}


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = common_parser(__doc__.split('\n\n')[0], DATASETS, MODELS,
                           dataset='peptides-func', model='hsa', epochs=200,
                           hidden=96, lr=1e-3, batch_size=32)
    add = parser.add_argument
    add('--layers', type=positive_int, default=4,
        help='number of blocks / layers')
    add('--heads', type=positive_int, default=4, help='attention heads')
    add('--dropout', type=probability, default=0.1)
    add('--hierarchy', default='molecule', choices=['molecule', 'metis'],
        help='the tree of every peptide (computed once; a different '
        'choice needs a fresh --root, and ends the run otherwise)')
    add('--attn-type', default='multihead',
        choices=['multihead', 'performer'], help='the attention of gps')
    return parse_checked(parser, argv)


# Data and metrics ###########################################################


def hierarchy_transform(kind: str):
    r"""The pre_transform that gives every peptide its tree."""
    if kind == 'molecule':
        return MoleculeHierarchy(features='ogb')
    return GraphHierarchy(method='metis')


def load_splits(root: str, name: str, kind: str,
                dist: Distributed) -> Dict[str, LRGBDataset]:
    r"""The train, val and test sets; rank 0 downloads and processes them
    (all three at once) before the other ranks read them."""
    with dist.main_first(), cached_tree_matches('--hierarchy'):
        return {split: LRGBDataset(root, name, split=split,
                                   pre_transform=hierarchy_transform(kind))
                for split in ('train', 'val', 'test')}


def average_precision(y_true: Tensor, y_score: Tensor) -> float:
    r"""LRGB's (and OGB's) average precision of multi-label scores
    ``[G, T]``: for every task with both classes among its labelled
    (non-NaN) graphs, :math:`\mathrm{AP} = \sum_k (R_k - R_{k-1}) P_k` over
    the score thresholds (precision :math:`P_k`, recall :math:`R_k`),
    averaged over those tasks.

    Examples:
        >>> average_precision(torch.tensor([[1.], [0.], [1.], [0.]]),
        ...                   torch.tensor([[.9], [.8], [.7], [.1]]))
        0.8333333333333333
    """
    from sklearn.metrics import average_precision_score
    y_true, y_score = y_true.double().numpy(), y_score.double().numpy()
    scores = []
    for task in range(y_true.shape[1]):
        labelled = ~np.isnan(y_true[:, task])
        column = y_true[labelled, task]
        if (column == 1).any() and (column == 0).any():
            scores.append(average_precision_score(
                column, y_score[labelled, task]))
    if not scores:
        raise RuntimeError('no task has both classes among its labelled '
                           'graphs: average precision is undefined')
    return float(sum(scores) / len(scores))


def mean_absolute_error(y_true: Tensor, y_pred: Tensor) -> float:
    r""":math:`\frac{1}{G T} \sum_{g, t} |y_{gt} - \hat y_{gt}|` over all
    graphs and targets, as LRGB reports it for peptides-struct."""
    return float((y_true.double() - y_pred.double()).abs().mean())


def metric(name: str, y_true: Tensor, y_pred: Tensor) -> float:
    if TASKS[name][0] == 'ap':
        return average_precision(y_true, y_pred)
    return mean_absolute_error(y_true, y_pred)


# Models #####################################################################


def gine_mlp(channels: int) -> Sequential:
    return Sequential(Linear(channels, channels), ReLU(),
                      Linear(channels, channels))


class GINE(torch.nn.Module):
    r"""GINE layers with batch norm, ReLU, dropout and residual
    connections, mean-pooled per graph, then a two-layer head."""
    def __init__(self, hidden: int, out_channels: int, num_layers: int,
                 dropout: float):
        super().__init__()
        self.atom_encoder = AtomEncoder(hidden)
        self.bond_encoder = BondEncoder(hidden)
        self.convs = torch.nn.ModuleList(
            [GINEConv(gine_mlp(hidden)) for _ in range(num_layers)])
        self.norms = torch.nn.ModuleList(
            [BatchNorm(hidden) for _ in range(num_layers)])
        self.head = Sequential(Linear(hidden, hidden), ReLU(),
                               Linear(hidden, out_channels))
        self.dropout = dropout

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                batch: Tensor) -> Tensor:
        x, edge_attr = self.atom_encoder(x), self.bond_encoder(edge_attr)
        for conv, norm in zip(self.convs, self.norms):
            h = norm(conv(x, edge_index, edge_attr)).relu()
            x = x + F.dropout(h, p=self.dropout, training=self.training)
        return self.head(global_mean_pool(x, batch))


class GPS(torch.nn.Module):
    r"""PyG's GPS: :class:`~torch_geometric.nn.conv.GPSConv` layers (GINE
    beside global attention over each graph, then an MLP), mean-pooled per
    graph, then a two-layer head."""
    def __init__(self, hidden: int, out_channels: int, num_layers: int,
                 heads: int, dropout: float, attn_type: str):
        super().__init__()
        self.atom_encoder = AtomEncoder(hidden)
        self.bond_encoder = BondEncoder(hidden)
        self.convs = torch.nn.ModuleList([
            GPSConv(hidden, GINEConv(gine_mlp(hidden)), heads=heads,
                    dropout=dropout, attn_type=attn_type,
                    # Performer: the same head size as the other models.
                    attn_kwargs={'head_channels': hidden // heads}
                    if attn_type == 'performer' else None)
            for _ in range(num_layers)
        ])
        self.head = Sequential(Linear(hidden, hidden), ReLU(),
                               Linear(hidden, out_channels))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                batch: Tensor) -> Tensor:
        x, edge_attr = self.atom_encoder(x), self.bond_encoder(edge_attr)
        for conv in self.convs:
            x = conv(x, edge_index, batch, edge_attr=edge_attr)
        return self.head(global_mean_pool(x, batch))

    def redraw_projections(self):
        r"""Draws new random features of every Performer attention (as
        ogbg_mol.py does once per epoch)."""
        for conv in self.convs:
            if hasattr(conv.attn, 'redraw_projection_matrix'):
                conv.attn.redraw_projection_matrix()


def build_model(args, out_channels: int) -> torch.nn.Module:
    hidden = args.hidden
    if args.model == 'hsa':
        model = HSAGraphTransformer(
            9, hidden, out_channels, num_layers=args.layers,
            heads=args.heads, dropout=args.dropout, local_conv='gine',
            edge_dim=3, task='graph', node_encoder=AtomEncoder(hidden),
            edge_encoder=BondEncoder(hidden))
        # The same two-layer head as GINE and GPS (the model's own is one
        # Linear).
        model.head = Sequential(Linear(hidden, hidden), ReLU(),
                                Linear(hidden, out_channels))
        return model
    if args.model == 'gine':
        return GINE(hidden, out_channels, args.layers, args.dropout)
    return GPS(hidden, out_channels, args.layers, args.heads, args.dropout,
               args.attn_type)


def run_model(model: torch.nn.Module, name: str, batch) -> Tensor:
    r"""``[B, T]`` the raw predictions (logits or values) of a batch."""
    if name == 'hsa':
        return model(batch.x, batch.edge_index, batch.hierarchy,
                     batch.edge_attr, batch.batch)
    return model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)


# Training ###################################################################


def loss_fn(name: str, out: Tensor, y: Tensor) -> Tensor:
    if TASKS[name][0] == 'ap':
        labelled = ~torch.isnan(y)
        return F.binary_cross_entropy_with_logits(out[labelled],
                                                  y[labelled])
    return F.l1_loss(out, y)


def train_epoch(args, model, loader, optimizer, epoch: int,
                dist: Distributed) -> Tuple[float, float]:
    r"""One epoch; returns the mean loss over all graphs of all ranks and
    the metric of the training predictions (under DDP, the
    :class:`DistributedSampler` repeats up to ``world_size - 1`` graphs to
    even out the shards, and those count twice)."""
    model.train()
    total, count, ys, preds = 0.0, 0, [], []
    for batch in progress(loader, epoch, dist, not args.no_progress):
        batch = batch.to(dist.device)
        optimizer.zero_grad()
        out = run_model(model, args.model, batch)
        loss = loss_fn(args.dataset, out, batch.y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
        ys.append(batch.y.cpu())
        preds.append(out.detach().cpu())
    total, count = dist.sum(total, count)
    y = dist.gather(torch.cat(ys))
    pred = dist.gather(torch.cat(preds))
    return total / max(count, 1), metric(args.dataset, y, pred)


@torch.no_grad()
def predict(args, model, dataset, dist: Distributed) -> Tuple[Tensor, Tensor]:
    r"""Labels and predictions ``[G, T]`` of every graph of
    :obj:`dataset`, each rank predicting its shard."""
    model.eval()
    shard = dataset[dist.shard(torch.arange(len(dataset)))]
    ys, preds = [], []
    for batch in DataLoader(shard, batch_size=args.batch_size):
        batch = batch.to(dist.device)
        ys.append(batch.y.cpu())
        preds.append(run_model(model, args.model, batch).cpu())
    return dist.gather(torch.cat(ys)), dist.gather(torch.cat(preds))


def run_seed(args, seed: int, splits: Dict[str, LRGBDataset],
             results: Results, dist: Distributed):
    r"""Trains one model from :obj:`seed` (the generators are seeded)."""
    net = build_model(args, TASKS[args.dataset][1]).to(dist.device)
    model = DistributedDataParallel(net) if dist.enabled else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sampler = dist.sampler(splits['train'], seed=seed)
    loader = DataLoader(splits['train'], batch_size=args.batch_size,
                        shuffle=sampler is None, sampler=sampler)
    for epoch in range(1, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if isinstance(net, GPS):
            net.redraw_projections()  # new Performer features per epoch
        timer = Timer()
        loss, train = train_epoch(args, model, loader, optimizer, epoch,
                                  dist)
        seconds = timer.lap()
        # Every rank evaluates rank 0's model, outside DDP's wrapper.
        dist.broadcast_buffers(net)
        scored = {key: predict(args, net, splits[key], dist)
                  for key in ('val', 'test')}
        valid = metric(args.dataset, *scored['val'])
        test = metric(args.dataset, *scored['test'])
        memory = peak_memory_mb(dist.device)
        results.add_epoch(epoch, log=False, loss=loss, train=train,
                          valid=valid, test=test, seconds=seconds,
                          peak_memory_mb=memory)
        # Graphs scored over all ranks: each one once.
        results.runs[-1]['scored'] = {k: len(y) for k, (y, _) in
                                      scored.items()}
        if dist.is_main:
            print(f'Epoch: {epoch:03d}, Loss: {loss:.4f}, Train: '
                  f'{train:.4f}, Valid: {valid:.4f}, Test: {test:.4f}, '
                  f'Time: {seconds:.2f}s, Peak memory: {memory:.0f} MiB',
                  flush=True)


def main(argv: Optional[Sequence[str]] = None) -> Optional[str]:
    args = parse_args(argv)
    dist = Distributed.from_env(args.ddp, args.device, args.threads)
    splits = load_splits(args.root, args.dataset, args.hierarchy, dist)
    if dist.is_main:
        sizes = ', '.join(f'{k} {len(v):,}' for k, v in splits.items())
        print(f'{args.dataset}: {sizes} graphs; the first: '
              f'{splits["train"][0].hierarchy}')
    name_of_metric, _, higher = TASKS[args.dataset]
    results = Results(f'lrgb_{args.dataset}_{args.model}', vars(args),
                      metric=name_of_metric, higher_is_better=higher,
                      dist=dist)
    for seed in args.seeds:
        seed_everything(seed)
        results.start_run(seed)
        run_seed(args, seed, splits, results, dist)
        results.finish_run()
    path = results.write(args.out)
    dist.close()
    return path


if __name__ == '__main__':
    start = time.perf_counter()
    main()
    print(f'Done in {time.perf_counter() - start:.1f}s')
