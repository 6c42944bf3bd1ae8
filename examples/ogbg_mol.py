r"""Graph property prediction on molecules: OGB's ``ogbg-mol*`` datasets
(``ogbg-molhiv`` by default) and the real-label RDKit sets of
:mod:`hsa_geo.datasets`, with hierarchical self-attention or a baseline.

Every molecule becomes a nested signal (atoms -> ring systems and chain
groups -> molecule) with :class:`~hsa_geo.transforms.MoleculeHierarchy` as
the ``pre_transform``, so every model reads the same processed data;
``--model`` chooses:

- ``hsa``: :class:`~hsa_geo.nn.models.HSAGraphTransformer`, GPS blocks
  whose global attention is HSA over the molecule tree, beside GINE;
- ``gine``: GINE layers alone (the local part of the GPS blocks);
- ``gine-vn``: GINE with a virtual node (OGB's GIN-virtual baseline);
- ``gps``: PyG's :class:`~torch_geometric.nn.conv.GPSConv` with dense
  multi-head attention over all atoms of a molecule, beside GINE;
- ``gps-performer``: the same with Performer (linear) attention.

All have OGB's ``AtomEncoder``/``BondEncoder``, ``--hidden`` channels,
``--layers`` blocks, mean pooling and one linear head, and train with the
same optimiser, epochs, batch size, split and seeds. OGB datasets are
scored by OGB's ``Evaluator`` on OGB's scaffold split; the RDKit sets by
RMSE (and MAE) or ROC-AUC on their ``--split scaffold|random``. The final
numbers of a seed are those of its best validation epoch.

Single process, then data-parallel on two CPU processes (or GPUs)::

    python examples/ogbg_mol.py --model hsa --seeds 0 1 2 3 4
    torchrun --nproc_per_node=2 examples/ogbg_mol.py --ddp --model hsa

Outputs in ``--out``: ``<name>.json`` (configuration, machine, per-epoch
curves, final metrics per seed and their mean and standard deviation),
``<name>.png`` (the curves), ``<name>_seed<k>_predictions.pt`` (labels
and predictions of every split at the best validation epoch, to recompute
the metrics) and, with ``--save-model``, ``<name>_seed<k>_model.pt`` (the
weights of that epoch).
"""
import copy
import os
import os.path as osp
import sys
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from ogb.graphproppred import Evaluator, PygGraphPropPredDataset
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import Tensor
from torch.nn import BatchNorm1d, Embedding, Linear, ReLU, Sequential
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv, GPSConv, global_add_pool
from torch_geometric.nn import global_mean_pool

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from training import (Distributed, Results, Timer,  # noqa: E402
                      common_parser, parse_checked, positive_int,
                      probability, progress, seed_everything)

from hsa_geo.datasets import NCITPSA, ChEMBLActivity  # noqa: E402
from hsa_geo.nn.models import HSAGraphTransformer  # noqa: E402
from hsa_geo.transforms import MoleculeHierarchy  # noqa: E402

MODELS = ('hsa', 'gine', 'gine-vn', 'gps', 'gps-performer')
OGB_DATASETS = ('ogbg-molhiv', 'ogbg-molbace', 'ogbg-molbbbp',
                'ogbg-molclintox', 'ogbg-molmuv', 'ogbg-molpcba',
                'ogbg-molsider', 'ogbg-moltox21', 'ogbg-moltoxcast',
                'ogbg-molesol', 'ogbg-molfreesolv', 'ogbg-mollipo')
# The real-label sets of hsa_geo.datasets: name -> (class, arguments).
RDKIT_DATASETS = {
    'chembl-activity': (ChEMBLActivity, {'task': 'regression'}),
    'chembl-activity-class': (ChEMBLActivity, {'task': 'classification'}),
    'nci-tpsa': (NCITPSA, {}),
}


def mlp(channels: int) -> Sequential:
    r"""GIN's network: ``Linear``, ReLU, ``Linear``, all of width
    :obj:`channels`."""
    return Sequential(Linear(channels, channels), ReLU(),
                      Linear(channels, channels))


class GINE(torch.nn.Module):
    r"""GINE layers (`"Strategies for Pre-training Graph Neural Networks"
    <https://arxiv.org/abs/1905.12265>`_) with residual connections, batch
    norm and mean pooling; with :obj:`virtual_node`, a virtual node joined
    to every atom of its molecule, as in OGB's GIN-virtual baseline:

    .. math::
        \mathbf{x}_i &\leftarrow \mathbf{x}_i + \mathbf{v}_{g(i)}, \qquad
        \mathbf{x}_i \leftarrow \mathbf{x}_i + \mathrm{Dropout}(\mathrm{ReLU}
            (\mathrm{BN}(\mathrm{GINE}(\mathbf{x}, \mathbf{e})_i))), \\
        \mathbf{v}_g &\leftarrow \mathbf{v}_g + \mathrm{Dropout}(
            \mathrm{MLP}(\mathbf{v}_g + \textstyle\sum_{i \in g}
            \mathbf{x}_i))

    (the virtual node updates between layers, from the atoms before the
    layer). Input: OGB atom features ``[N, 9]``, bond features ``[E, 3]``;
    output ``[B, out_channels]``.
    """
    def __init__(self, hidden: int, out_channels: int, num_layers: int,
                 dropout: float, virtual_node: bool = False):
        super().__init__()
        self.dropout = dropout
        self.atom_encoder = AtomEncoder(hidden)
        self.bond_encoder = BondEncoder(hidden)
        self.convs = torch.nn.ModuleList(
            GINEConv(mlp(hidden)) for _ in range(num_layers))
        self.norms = torch.nn.ModuleList(
            BatchNorm1d(hidden) for _ in range(num_layers))
        self.virtual_node = None
        if virtual_node:
            self.virtual_node = Embedding(1, hidden)
            torch.nn.init.zeros_(self.virtual_node.weight)
            self.vn_mlps = torch.nn.ModuleList(
                Sequential(mlp(hidden), BatchNorm1d(hidden), ReLU())
                for _ in range(num_layers - 1))
        self.head = Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                batch: Tensor) -> Tensor:
        x, edge_attr = self.atom_encoder(x), self.bond_encoder(edge_attr)
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        vn = None
        if self.virtual_node is not None:
            vn = self.virtual_node(batch.new_zeros(num_graphs))
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if vn is not None:
                x = x + vn[batch]
                if i < len(self.convs) - 1:
                    pooled = global_add_pool(x, batch, num_graphs) + vn
                    vn = vn + F.dropout(self.vn_mlps[i](pooled),
                                        self.dropout, self.training)
            h = norm(conv(x, edge_index, edge_attr)).relu()
            x = x + F.dropout(h, self.dropout, self.training)
        return self.head(global_mean_pool(x, batch, num_graphs))


class GPS(torch.nn.Module):
    r"""PyG's :class:`~torch_geometric.nn.conv.GPSConv` blocks (GINE beside
    global attention over the atoms of each molecule, ``'multihead'``:
    dense softmax attention, ``'performer'``: linear-cost Performer
    attention) between OGB's encoders and a mean-pooled linear head, as in
    PyG's ``examples/graph_gps.py``. Input and output as :class:`GINE`.
    """
    def __init__(self, hidden: int, out_channels: int, num_layers: int,
                 heads: int, dropout: float, attn_dropout: float,
                 attn_type: str = 'multihead'):
        super().__init__()
        self.atom_encoder = AtomEncoder(hidden)
        self.bond_encoder = BondEncoder(hidden)
        attn_kwargs = {'dropout': attn_dropout}
        if attn_type == 'performer':  # the same head size as the others
            attn_kwargs['head_channels'] = hidden // heads
        self.convs = torch.nn.ModuleList(
            GPSConv(hidden, GINEConv(mlp(hidden)), heads=heads,
                    dropout=dropout, attn_type=attn_type,
                    attn_kwargs=attn_kwargs) for _ in range(num_layers))
        self.head = Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                batch: Tensor) -> Tensor:
        x, edge_attr = self.atom_encoder(x), self.bond_encoder(edge_attr)
        for conv in self.convs:
            x = conv(x, edge_index, batch, edge_attr=edge_attr)
        return self.head(global_mean_pool(x, batch))

    def redraw_projections(self):
        r"""Draws new random features of every Performer attention."""
        for conv in self.convs:
            if hasattr(conv.attn, 'redraw_projection_matrix'):
                conv.attn.redraw_projection_matrix()


def build_model(name: str, out_channels: int, args) -> torch.nn.Module:
    r"""The model :obj:`name` (one of :data:`MODELS`) with the shared
    budget of :obj:`args`: hidden size, layers, heads, dropouts."""
    hidden, layers = args.hidden, args.layers
    if name == 'hsa':
        return HSAGraphTransformer(
            9, hidden, out_channels, num_layers=layers, heads=args.heads,
            dropout=args.dropout, attn_dropout=args.attn_dropout,
            local_conv='gine', edge_dim=3, task='graph', pool='mean',
            node_encoder=AtomEncoder(hidden),
            edge_encoder=BondEncoder(hidden))
    if name in ('gine', 'gine-vn'):
        return GINE(hidden, out_channels, layers, args.dropout,
                    virtual_node=name == 'gine-vn')
    attn_type = 'performer' if name == 'gps-performer' else 'multihead'
    return GPS(hidden, out_channels, layers, args.heads, args.dropout,
               args.attn_dropout, attn_type)


def forward(model: torch.nn.Module, data, hierarchical: bool) -> Tensor:
    r"""Predictions ``[B, tasks]`` for the mini-batch :obj:`data`; the HSA
    model also reads the molecule trees (``data.hierarchy``)."""
    if hierarchical:
        return model(data.x, data.edge_index, data.hierarchy,
                     data.edge_attr, data.batch)
    return model(data.x, data.edge_index, data.edge_attr, data.batch)


class Task:
    r"""What a dataset asks for and how it is scored: binary
    classification (logits, binary cross-entropy, ROC-AUC or AP) or
    regression (targets standardised with the training set's mean and
    standard deviation for the loss, RMSE and MAE in the label's units).
    Missing labels (NaN, as in OGB's multi-task sets) are left out of the
    loss and the metrics. OGB datasets are scored by OGB's ``Evaluator``.
    """
    def __init__(self, task_type: str, num_tasks: int, metric: str,
                 ogb_name: str = None):
        self.regression = task_type == 'regression'
        self.num_tasks = num_tasks
        self.metric = metric
        self.higher_is_better = metric in ('rocauc', 'ap', 'acc')
        self.evaluator = Evaluator(ogb_name) if ogb_name else None
        self.mean, self.std = 0.0, 1.0

    def fit(self, y: Tensor):
        r"""Takes the label scale from the training labels ``[n, T]``."""
        if self.regression:
            y = y[~torch.isnan(y)]
            self.mean, self.std = float(y.mean()), float(y.std()) or 1.0

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        y = y.view(out.shape).to(out.dtype)
        labeled = ~torch.isnan(y)
        if not labeled.any():  # keeps DDP's gradient exchange in step
            return out.sum() * 0.0
        if self.regression:
            return F.mse_loss(out[labeled], (y[labeled] - self.mean)
                              / self.std)
        return F.binary_cross_entropy_with_logits(out[labeled], y[labeled])

    def prediction(self, out: Tensor) -> Tensor:
        r"""Model outputs in the label's units (logits stay logits)."""
        return out * self.std + self.mean if self.regression else out

    def evaluate(self, y_true: Tensor, y_pred: Tensor) -> Dict[str, float]:
        r"""The metric (and MAE for regression) of predictions ``[n, T]``
        against labels ``[n, T]``."""
        if self.evaluator is not None:
            scores = self.evaluator.eval({'y_true': y_true, 'y_pred': y_pred})
            return {self.metric: float(scores[self.metric])}
        labeled = ~torch.isnan(y_true)
        if self.regression:
            error = (y_pred - y_true)[labeled].double()
            return {'rmse': float(error.pow(2).mean().sqrt()),
                    'mae': float(error.abs().mean())}
        from sklearn.metrics import roc_auc_score
        scores = [roc_auc_score(y_true[labeled[:, t], t],
                                y_pred[labeled[:, t], t])
                  for t in range(y_true.size(1))
                  if y_true[labeled[:, t], t].unique().numel() == 2]
        if not scores:  # a NaN would stop the choice of the best epoch
            raise ValueError(
                'ROC-AUC needs a task with both classes among the labelled '
                'molecules of the split; none has: use a larger split or '
                "'--split random'")
        return {'rocauc': sum(scores) / len(scores)}


def load_dataset(args) -> Tuple[torch.utils.data.Dataset, Task]:
    r"""The dataset, processed once with :class:`MoleculeHierarchy` as its
    ``pre_transform`` (every model reads the same graphs), and its task."""
    pre_transform = MoleculeHierarchy(features='ogb')
    if args.dataset in RDKIT_DATASETS:
        cls, kwargs = RDKIT_DATASETS[args.dataset]
        dataset = cls(args.root, pre_transform=pre_transform, **kwargs)
        task = Task(dataset.task_type, dataset.num_tasks,
                    dataset.eval_metric)
    else:
        dataset = PygGraphPropPredDataset(args.dataset, args.root,
                                          pre_transform=pre_transform)
        task = Task(dataset.task_type, dataset.num_tasks,
                    dataset.eval_metric, ogb_name=args.dataset)
    if args.model != 'hsa':
        # The baselines do not read the trees: batching them would add
        # time to their epochs that they do not need.
        dataset.transform = plain_graph
    return dataset, task


def plain_graph(data) -> Data:
    r"""The molecular graph of a nested signal, without its tree."""
    return Data(x=data.x, edge_index=data.edge_index,
                edge_attr=data.edge_attr, y=data.y)


def split_indices(dataset, args, seed: int) -> Dict[str, Tensor]:
    r"""OGB's own split (scaffold) for OGB datasets; ``--split`` (drawn
    with :obj:`seed` where random) for the RDKit sets."""
    if args.dataset in RDKIT_DATASETS:
        return dataset.get_idx_split(split=args.split, seed=seed)
    return dataset.get_idx_split()


def train(model, loader, optimizer, task: Task, args, dist: Distributed,
          epoch: int) -> float:
    r"""One epoch over this rank's shard; the mean loss over all ranks'
    molecules."""
    model.train()
    total = count = 0.0
    for data in progress(loader, epoch, dist, not args.no_progress):
        data = data.to(dist.device)
        optimizer.zero_grad()
        loss = task.loss(forward(model, data, args.model == 'hsa'), data.y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * data.num_graphs
        count += data.num_graphs
    total, count = dist.sum(total, count)
    return total / max(count, 1)


@torch.no_grad()
def predict(model, dataset, index: Tensor, task: Task, args,
            dist: Distributed) -> Dict[str, Tensor]:
    r"""Predictions for the molecules :obj:`index`: each rank predicts
    every ``world_size``-th one and all ranks get them all back, in
    increasing order of the molecule's index (``'index'`` says which), so
    that the metric reads every molecule once."""
    model.eval()
    shard = dist.shard(index)
    loader = DataLoader(dataset[shard], batch_size=args.batch_size)
    y_true = [torch.empty(0, task.num_tasks)]
    y_pred = [torch.empty(0, task.num_tasks)]
    for data in loader:
        data = data.to(dist.device)
        out = forward(model, data, args.model == 'hsa')
        y_pred.append(task.prediction(out).float().cpu())
        y_true.append(data.y.view(out.shape).float().cpu())
    index = dist.gather(shard)
    order = index.argsort()
    return {'index': index[order],
            'y_true': dist.gather(torch.cat(y_true))[order],
            'y_pred': dist.gather(torch.cat(y_pred))[order]}


def evaluate(model, dataset, split_idx: Dict[str, Tensor], task: Task,
             args, dist: Distributed) -> Dict[str, Dict]:
    r"""Predictions and scores of every split, ``{split: {'predictions':
    ..., 'scores': {metric: value}}}``."""
    out = {}
    for split in ('train', 'valid', 'test'):
        pred = predict(model, dataset, split_idx[split], task, args, dist)
        out[split] = {'predictions': pred,
                      'scores': task.evaluate(pred['y_true'],
                                              pred['y_pred'])}
    return out


def run(seed: int, dataset, task: Task, args, dist: Distributed,
        results: Results):
    r"""Trains one model from :obj:`seed`; records its curves in
    :obj:`results` and saves the predictions of its best validation
    epoch."""
    seed_everything(seed)
    split_idx = split_indices(dataset, args, seed)
    task.fit(dataset.y[split_idx['train']])
    model = build_model(args.model, task.num_tasks, args).to(dist.device)
    net = model  # the module itself: evaluation is per rank, no DDP sync
    if dist.enabled:
        ids = [dist.device] if dist.device.type == 'cuda' else None
        model = DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_set = dataset[split_idx['train']]
    sampler = dist.sampler(train_set, shuffle=True, seed=seed)
    # The virtual node's batch norm runs over the molecules of a batch:
    # a last batch of one molecule would fail in training mode. Drop the
    # last batch only then, so that every model sees the same molecules
    # per epoch (dropping it always cost gine-vn up to batch_size - 1).
    shard = len(sampler) if sampler is not None else len(train_set)
    loader = DataLoader(train_set, batch_size=args.batch_size,
                        shuffle=sampler is None, sampler=sampler,
                        drop_last=args.model == 'gine-vn'
                        and shard % args.batch_size == 1)

    results.start_run(seed)
    best = None
    for epoch in range(1, args.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)  # a new shuffle, the same on all ranks
        if isinstance(net, GPS):
            net.redraw_projections()  # new Performer features per epoch
        timer = Timer()
        loss = train(model, loader, optimizer, task, args, dist, epoch)
        seconds = timer.lap()
        dist.broadcast_buffers(net)  # all ranks evaluate rank 0's model
        scores = evaluate(net, dataset, split_idx, task, args, dist)
        values = {split: s['scores'][task.metric]
                  for split, s in scores.items()}
        for split, s in scores.items():  # further metrics, e.g. valid_mae
            values.update({f'{split}_{k}': v for k, v in s['scores'].items()
                           if k != task.metric})
        results.add_epoch(epoch, loss=loss, **values, seconds=seconds,
                          eval_seconds=timer.lap())
        if best is None or _better(values['valid'], best['valid']['scores']
                                   [task.metric], task.higher_is_better):
            best, state = scores, copy.deepcopy(net.state_dict())
    num_parameters = sum(p.numel() for p in net.parameters())
    results.finish_run(num_parameters=num_parameters)
    results.runs[-1]['ranks'] = dist.gather_objects(
        {'rank': dist.rank, 'train_molecules_per_epoch':
         len(sampler) if sampler is not None else len(train_set)})
    if dist.is_main and best is not None:
        stem = osp.join(args.out, f'{results.name}_seed{seed}')
        torch.save({split: {'scores': s['scores'], **s['predictions']}
                    for split, s in best.items()}, f'{stem}_predictions.pt')
        if args.save_model:
            torch.save(state, f'{stem}_model.pt')


def _better(value: float, best: float, higher_is_better: bool) -> bool:
    return value > best if higher_is_better else value < best


def main(argv=None) -> Dict:
    r"""Parses :obj:`argv` (default: the command line), trains one model
    per seed and writes the results; returns them as a :obj:`dict` (on
    rank 0; other ranks get an empty one)."""
    parser = common_parser('Graph property prediction on ogbg-mol* and the '
                           'RDKit sets of hsa_geo.datasets, with HSA or a '
                           'baseline.',
                           OGB_DATASETS + tuple(RDKIT_DATASETS), MODELS,
                           dataset='ogbg-molhiv', model='hsa', epochs=50)
    parser.add_argument('--layers', type=positive_int, default=4)
    parser.add_argument('--heads', type=positive_int, default=4)
    parser.add_argument('--dropout', type=probability, default=0.1)
    parser.add_argument('--attn-dropout', type=float, default=0.1)
    parser.add_argument('--split', default='scaffold',
                        choices=['scaffold', 'random'],
                        help='split of the RDKit sets (OGB: scaffold)')
    parser.add_argument('--save-model', action='store_true',
                        help='save the weights of the best epoch')
    args = parse_checked(parser, argv)
    if args.dataset not in RDKIT_DATASETS and args.split != 'scaffold':
        parser.error(f'{args.dataset} has OGB\'s scaffold split only')
    if args.model == 'gine-vn' and args.batch_size == 1:
        parser.error('gine-vn normalises its virtual nodes over the graphs '
                     'of a batch (batch norm): --batch-size must be at '
                     'least 2')

    dist = Distributed.from_env(args.ddp, args.device, args.threads)
    with dist.main_first():  # rank 0 processes the dataset, once
        dataset, task = load_dataset(args)
    name = f'{args.dataset}_{args.split}_{args.model}'
    results = Results(name, vars(args), task.metric, task.higher_is_better,
                      dist)
    if dist.is_main:
        print(f'{name}: {len(dataset)} molecules, {task.num_tasks} task(s), '
              f'{task.metric}, {dist.world_size} process(es) on '
              f'{dist.device}', flush=True)
        os.makedirs(args.out, exist_ok=True)
    for seed in args.seeds:
        run(seed, dataset, task, args, dist, results)
    results.write(args.out)
    dist.close()
    return results.as_dict() if dist.is_main else {}


if __name__ == '__main__':
    main()
