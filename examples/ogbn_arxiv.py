r"""Node property prediction on ``ogbn-arxiv`` with hierarchical
self-attention over a METIS cluster tree, against GCN, SGFormer,
Polynormer and a TransformerConv stack under the same split, budget and
seeds.

The graph gets its tree once, as the dataset's ``pre_transform``:
``GraphHierarchy(method='metis', family_graph=True)`` over the undirected
graph (families of at most ``--branching`` clusters, attention flowing
along the leaf edges and the coarsened edges between clusters). ``--model
hsa`` is :class:`~hsa_geo.nn.models.HSAGraphTransformer`: per block a GCN
layer on the edges beside HSA over the tree, then an MLP.

* ``ogbn-arxiv`` (169,343 papers, 40 subject areas, OGB's time split)
  trains on the full graph, one step per epoch.
* ``ogbn-products`` (2.4 M products, 47 categories) trains on mini-batches
  of whole subtrees of its tree (:class:`~hsa_geo.loader.SubtreeLoader`,
  Cluster-GCN style, ``--batch-size`` subtrees at depth ``--level`` per
  batch; it needs no sampler backend), and predicts batch by batch. With
  ``--ddp`` under ``torchrun`` the ranks share the subtrees of every
  epoch (a ``DistributedSampler``, gradients averaged by
  ``DistributedDataParallel``) and of the predictions (gathered on every
  rank before OGB's ``Evaluator``).
* ``synthetic-arxiv`` is a generated graph of ogbn-arxiv's size (169,343
  nodes, 1,177,266 directed edges with community structure, 128
  features, 40 classes that the features predict) for measuring time per
  epoch and peak memory where OGB cannot be downloaded; its accuracy means
  nothing. ``--num-nodes`` / ``--num-edges`` shrink it.

Every epoch logs the loss, OGB's accuracy (``Evaluator``) on the three
splits, the seconds of the training step(s) and the peak memory (CUDA
allocator peak on a GPU, peak resident set of the process on the CPU). The
results JSON and the curves PNG go to ``--out``. ``--save-predictions``
also writes the predictions of every seed's best validation epoch.

Usage::

    python examples/ogbn_arxiv.py --model hsa --epochs 500
    python examples/ogbn_arxiv.py --model sgformer --epochs 500
    python examples/ogbn_arxiv.py --dataset ogbn-products --model hsa \
        --batch-size 16
    torchrun --nproc_per_node=2 examples/ogbn_arxiv.py --ddp \
        --dataset ogbn-products --model hsa
    python examples/ogbn_arxiv.py --dataset synthetic-arxiv --model gcn \
        --epochs 2
"""
from __future__ import annotations

import importlib.util
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch_geometric.transforms as T
from ogb.nodeproppred import Evaluator, PygNodePropPredDataset
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage
from torch_geometric.nn import BatchNorm, GCNConv, TransformerConv
from torch_geometric.nn.models import Polynormer, SGFormer
from training import (Distributed, Results, Timer, cached_tree_matches,
                      common_parser, parse_checked, peak_memory_mb,
                      positive_int, probability, progress,
                      reset_peak_memory, seed_everything)

from hsa_geo.data import NestedSignal
from hsa_geo.loader import SubtreeLoader
from hsa_geo.nn.models import HSAGraphTransformer
from hsa_geo.transforms import GraphHierarchy

DATASETS = ['ogbn-arxiv', 'ogbn-products', 'synthetic-arxiv']
MODELS = ['hsa', 'gcn', 'sgformer', 'polynormer', 'transformer']
# num_edges as bench_family_graph.py draws them: 1,177,266 directed edges
# remain after duplicates are removed (ogbn-arxiv has 1,166,243).
SYNTHETIC = dict(num_nodes=169343, num_edges=1200000, features=128,
                 classes=40)
BENCHMARKS = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'benchmarks')


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = common_parser(__doc__.split('\n\n')[0], DATASETS, MODELS,
                           dataset='ogbn-arxiv', model='hsa', epochs=500,
                           hidden=128, lr=0.005, batch_size=16)
    add = parser.add_argument
    add('--layers', type=positive_int, default=3,
        help='number of blocks / layers')
    add('--heads', type=positive_int, default=4,
        help='attention heads (sgformer and polynormer: always 1, recorded '
        'as such in the results: PyG 2.8.1\'s Polynormer fails with more)')
    add('--dropout', type=probability, default=0.5)
    add('--branching', type=int, default=16,
        help='largest family of the METIS tree (the tree is cached in the '
        'processed files: a new value needs a fresh --root, and ends the '
        'run otherwise)')
    add('--level', type=int, default=3,
        help='ogbn-products: depth of the subtrees of a mini-batch (its '
        'tree has depth 6; level 3 gives subtrees of at most 16^3 nodes)')
    add('--local-epochs', type=int, default=0,
        help='Polynormer: epochs with local attention only before its '
        'global attention is switched on')
    add('--num-nodes', type=positive_int, default=SYNTHETIC['num_nodes'],
        help='synthetic-arxiv: nodes')
    add('--num-edges', type=int, default=SYNTHETIC['num_edges'],
        help='synthetic-arxiv: directed edges drawn (duplicates and self '
        'loops are then removed)')
    add('--save-predictions', action='store_true',
        help='write <out>/<name>_predictions.pt (best epoch of each seed)')
    args = parse_checked(parser, argv)
    if args.model in ('sgformer', 'polynormer'):
        # One head of the full width (so recorded): PyG 2.8.1's Polynormer
        # sizes its global attention for one head (it fails with heads > 1).
        args.heads = 1
    if args.ddp and args.dataset != 'ogbn-products':
        parser.error('--ddp splits the subtree mini-batches of '
                     'ogbn-products among the ranks; the full-graph '
                     'datasets train in one process')
    return args


# Data #######################################################################


def hierarchy_transform(branching: int) -> T.Compose:
    r"""The pre_transform: the undirected graph and its METIS tree with the
    family graph of its edges."""
    return T.Compose([
        T.ToUndirected(),
        GraphHierarchy(method='metis', branching=branching,
                       family_graph=True),
    ])


def load_ogbn(name: str, root: str,
              branching: int) -> Tuple[NestedSignal, Dict[str, Tensor], int]:
    r"""``ogbn-arxiv`` or ``ogbn-products`` with its tree (computed once,
    into the processed file), OGB's split and the number of classes."""
    # ogb 1.3.6 reads its processed file with torch.load's default, which
    # from torch 2.6 on only unpickles allow-listed classes.
    with torch.serialization.safe_globals(
            [DataEdgeAttr, DataTensorAttr, GlobalStorage]), \
            cached_tree_matches('--branching'):
        dataset = PygNodePropPredDataset(
            name, root, pre_transform=hierarchy_transform(branching))
    return dataset[0], dataset.get_idx_split(), dataset.num_classes


def community_graph(num_nodes: int, num_edges: int, seed: int) -> Tensor:
    r"""The generated graph of ``benchmarks/bench_family_graph.py``
    (communities of 64 nodes, 80% of the edges inside them), so that the
    timings here and there are on the same kind of graph."""
    path = osp.join(BENCHMARKS, 'bench_family_graph.py')
    sys.path.insert(0, BENCHMARKS)  # it imports its neighbours
    spec = importlib.util.spec_from_file_location('bench_family_graph', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.community_graph(num_nodes, num_edges, seed=seed)


def load_synthetic(root: str, num_nodes: int, num_edges: int, branching: int,
                   seed: int = 0) -> Tuple[NestedSignal, Dict[str, Tensor],
                                           int]:
    r"""The ogbn-arxiv-sized generated graph with its tree, saved under
    :obj:`root` after the first call. Labels are uniform over 40 classes
    and the features are a class centre plus noise; the split is a random
    54 / 18 / 28 %, ogbn-arxiv's proportions."""
    path = osp.join(root, 'synthetic_arxiv',
                    f'n{num_nodes}_e{num_edges}_b{branching}_s{seed}.pt')
    if osp.exists(path):
        saved = torch.load(path)
        return saved['data'], saved['split'], SYNTHETIC['classes']
    g = torch.Generator().manual_seed(seed)
    classes, features = SYNTHETIC['classes'], SYNTHETIC['features']
    y = torch.randint(classes, (num_nodes, 1), generator=g)
    centers = torch.randn(classes, features, generator=g)
    x = torch.randn(num_nodes, features, generator=g) + centers[y[:, 0]]
    edge_index = community_graph(num_nodes, num_edges, seed)
    data = hierarchy_transform(branching)(
        Data(x=x, edge_index=edge_index, y=y, num_nodes=num_nodes))
    perm = torch.randperm(num_nodes, generator=g)
    cut1, cut2 = int(0.54 * num_nodes), int(0.72 * num_nodes)
    split = {'train': perm[:cut1].sort()[0],
             'valid': perm[cut1:cut2].sort()[0],
             'test': perm[cut2:].sort()[0]}
    os.makedirs(osp.dirname(path), exist_ok=True)
    torch.save({'data': data, 'split': split}, path)
    return data, split, classes


# Models #####################################################################


class GCN(torch.nn.Module):
    r"""The GCN of OGB's ogbn-arxiv example: ``num_layers`` GCN layers,
    batch norm, ReLU and dropout between them."""
    def __init__(self, in_channels: int, hidden_channels: int,
                 out_channels: int, num_layers: int, dropout: float):
        super().__init__()
        sizes = [in_channels] + [hidden_channels] * (num_layers - 1)
        self.convs = torch.nn.ModuleList(
            [GCNConv(a, hidden_channels) for a in sizes])
        self.convs[-1] = GCNConv(sizes[-1], out_channels)
        self.norms = torch.nn.ModuleList(
            [BatchNorm(hidden_channels) for _ in range(num_layers - 1)])
        self.dropout = dropout

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for conv, norm in zip(self.convs[:-1], self.norms):
            x = norm(conv(x, edge_index)).relu()
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.convs[-1](x, edge_index)


class GraphTransformer(torch.nn.Module):
    r"""A stack of :class:`~torch_geometric.nn.conv.TransformerConv`
    layers (attention over each node's in-neighbours, gated skip) with an
    input projection, batch norm, ReLU and dropout."""
    def __init__(self, in_channels: int, hidden_channels: int,
                 out_channels: int, num_layers: int, heads: int,
                 dropout: float):
        super().__init__()
        self.lin_in = torch.nn.Linear(in_channels, hidden_channels)
        self.convs = torch.nn.ModuleList([
            TransformerConv(hidden_channels, hidden_channels // heads,
                            heads=heads, beta=True)
            for _ in range(num_layers)
        ])
        self.norms = torch.nn.ModuleList(
            [BatchNorm(hidden_channels) for _ in range(num_layers)])
        self.lin_out = torch.nn.Linear(hidden_channels, out_channels)
        self.dropout = dropout

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = self.lin_in(x)
        for conv, norm in zip(self.convs, self.norms):
            x = norm(conv(x, edge_index)).relu()
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.lin_out(x)


def build_model(args, in_channels: int,
                num_classes: int) -> torch.nn.Module:
    r"""The model of ``--model``, with the same width, depth and dropout
    for all."""
    hidden, layers, heads = args.hidden, args.layers, args.heads
    if args.model == 'hsa':
        return HSAGraphTransformer(
            in_channels, hidden, num_classes, num_layers=layers, heads=heads,
            dropout=args.dropout, local_conv='gcn', task='node')
    if args.model == 'gcn':
        return GCN(in_channels, hidden, num_classes, layers, args.dropout)
    if args.model == 'sgformer':
        return SGFormer(in_channels, hidden, num_classes, trans_num_layers=1,
                        trans_num_heads=heads, trans_dropout=args.dropout,
                        gnn_num_layers=layers, gnn_dropout=args.dropout)
    if args.model == 'polynormer':  # (one head: see parse_args)
        return Polynormer(in_channels, hidden, num_classes,
                          local_layers=layers, global_layers=2, heads=heads,
                          dropout=args.dropout)
    return GraphTransformer(in_channels, hidden, num_classes, layers, heads,
                            args.dropout)


def run_model(model: torch.nn.Module, name: str,
              batch: NestedSignal) -> Tensor:
    r"""``[N, C]`` class scores (or log-probabilities: SGFormer and
    Polynormer end in ``log_softmax``, which cross-entropy leaves
    unchanged) of the nodes of :obj:`batch`."""
    if name == 'hsa':
        return model(batch.x, batch.edge_index, batch)
    if name in ('sgformer', 'polynormer'):
        # One graph: their global attention runs over all nodes.
        one_graph = batch.x.new_zeros(batch.num_nodes, dtype=torch.long)
        return model(batch.x, batch.edge_index, one_graph)
    return model(batch.x, batch.edge_index)


# Training ###################################################################


def train_epoch(model: torch.nn.Module, name: str, batches,
                optimizer: torch.optim.Optimizer,
                dist: Distributed) -> float:
    r"""One epoch over :obj:`batches` (the full graph, or the subtree
    batches); the loss is the mean over the training nodes seen (by all
    ranks)."""
    device = dist.device
    model.train()
    total, count = 0.0, 0
    for batch in batches:
        batch = batch.to(device)
        mask = batch.train_mask
        if not bool(mask.any()) and not dist.enabled:
            continue
        optimizer.zero_grad()
        out = run_model(model, name, batch)[mask]
        # A batch without training nodes still takes its step under DDP
        # (a zero loss), so that every rank makes the same all-reduces.
        loss = F.cross_entropy(out, batch.y[mask].view(-1)) if len(out) \
            else out.sum() * 0.0
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * int(mask.sum())
        count += int(mask.sum())
    total, count = dist.sum(total, count)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: torch.nn.Module, name: str, batches, num_nodes: int,
            dist: Distributed) -> Tensor:
    r"""``[N]`` the predicted class of every node, batch by batch
    (``batch.n_id`` says which nodes a batch holds), gathered from all
    ranks."""
    model.eval()
    ids, preds = [], []
    for batch in batches:
        batch = batch.to(dist.device)
        ids.append(batch.n_id.cpu())
        preds.append(run_model(model, name, batch).argmax(dim=-1).cpu())
    pred = torch.full((num_nodes, ), -1, dtype=torch.long)
    pred[dist.gather(torch.cat(ids))] = dist.gather(torch.cat(preds))
    return pred


def accuracies(evaluator: Evaluator, y: Tensor, pred: Tensor,
               split: Dict[str, Tensor]) -> Dict[str, float]:
    r"""OGB's accuracy of :obj:`pred` on the train, valid and test nodes."""
    return {
        key: evaluator.eval({
            'y_true': y[split[part]].view(-1, 1),
            'y_pred': pred[split[part]].view(-1, 1),
        })['acc']
        for key, part in (('train', 'train'), ('valid', 'valid'),
                          ('test', 'test'))
    }


def make_batches(args, data: NestedSignal, seed: int, dist: Distributed):
    r"""The training and the inference batches: the full graph, or
    shuffled / ordered subtree batches for ``ogbn-products``. Under
    ``--ddp`` each rank trains on its shard of the subtrees of every epoch
    (a :class:`DistributedSampler`: the same shuffle on all ranks, then
    every ``world_size``-th subtree) and predicts every ``world_size``-th
    subtree."""
    if args.dataset != 'ogbn-products':
        return [data], [data]
    infer = SubtreeLoader(data, level=args.level, batch_size=args.batch_size)
    subtrees = range(infer.num_subtrees)
    sampler = dist.sampler(subtrees, shuffle=True, seed=seed)
    if sampler is None:
        generator = torch.Generator().manual_seed(seed)
        train = SubtreeLoader(data, level=args.level,
                              batch_size=args.batch_size, shuffle=True,
                              generator=generator)
        return train, infer
    train = SubtreeLoader(data, level=args.level, batch_size=args.batch_size,
                          sampler=sampler)
    infer = SubtreeLoader(data, level=args.level, batch_size=args.batch_size,
                          sampler=dist.shard(torch.tensor(subtrees)).tolist())
    return train, infer


def run_seed(args, seed: int, data: NestedSignal,
             split: Dict[str, Tensor], num_classes: int, results: Results,
             dist: Distributed, evaluator: Evaluator) -> Optional[Tensor]:
    r"""Trains one model from :obj:`seed` (the generators are seeded);
    returns the predictions of its best validation epoch."""
    device = dist.device
    net = build_model(args, data.num_features, num_classes).to(device)
    model = net
    if dist.enabled:
        ids = [device] if device.type == 'cuda' else None
        # Polynormer leaves its local or its global head unused.
        model = DistributedDataParallel(
            net, device_ids=ids,
            find_unused_parameters=args.model == 'polynormer')
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if args.dataset != 'ogbn-products':
        data = data.to(device)  # the full graph stays on the device
    train_batches, infer_batches = make_batches(args, data, seed, dist)
    sampler = getattr(train_batches, 'sampler', None)
    best, best_pred = -1.0, None
    for epoch in range(1, args.epochs + 1):
        if args.model == 'polynormer' and epoch > args.local_epochs:
            # PyG's Polynormer has no public switch; its example sets this.
            net._global = True
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)  # a new shuffle, the same on all ranks
        reset_peak_memory(device)
        timer = Timer()
        loss = train_epoch(model, args.model, progress(
            train_batches, epoch, dist, not args.no_progress), optimizer,
                           dist)
        seconds = timer.lap()
        dist.broadcast_buffers(net)  # all ranks predict with rank 0's model
        pred = predict(net, args.model, infer_batches, data.num_nodes, dist)
        acc = accuracies(evaluator, data.y.cpu(), pred, split)
        memory = peak_memory_mb(device)
        results.add_epoch(epoch, log=False, loss=loss, **acc,
                          seconds=seconds, eval_seconds=timer.lap(),
                          peak_memory_mb=memory)
        if dist.is_main:
            print(f'Epoch: {epoch:03d}, Loss: {loss:.4f}, '
                  f'Train: {acc["train"]:.4f}, Valid: {acc["valid"]:.4f}, '
                  f'Test: {acc["test"]:.4f}, Time: {seconds:.2f}s, '
                  f'Peak memory: {memory:.0f} MiB', flush=True)
        if acc['valid'] > best:
            best, best_pred = acc['valid'], pred
    results.runs[-1]['ranks'] = dist.gather_objects(
        {'rank': dist.rank, 'train_batches_per_epoch': len(train_batches)})
    return best_pred


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    dist = Distributed.from_env(args.ddp, args.device, args.threads)
    with dist.main_first():  # rank 0 processes the dataset, once
        if args.dataset == 'synthetic-arxiv':
            data, split, num_classes = load_synthetic(
                args.root, args.num_nodes, args.num_edges, args.branching)
            metric_of = 'ogbn-arxiv'  # accuracy, as for ogbn-arxiv
        else:
            data, split, num_classes = load_ogbn(args.dataset, args.root,
                                                 args.branching)
            metric_of = args.dataset
    data.train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    data.train_mask[split['train']] = True
    data.n_id = torch.arange(data.num_nodes)
    if dist.is_main:
        print(f'{args.dataset}: {data.num_nodes:,} nodes, '
              f'{data.num_edges:,} edges, {data.hierarchy}, '
              f'{dist.world_size} process(es)')

    evaluator = Evaluator(metric_of)
    name = f'ogbn_arxiv_{args.dataset}_{args.model}'
    results = Results(name, vars(args), metric='acc', higher_is_better=True,
                      dist=dist)
    results.extra['memory_before_training_mb'] = peak_memory_mb(dist.device)
    predictions: List[Tensor] = []
    for seed in args.seeds:
        seed_everything(seed)
        results.start_run(seed)
        predictions.append(run_seed(args, seed, data, split, num_classes,
                                    results, dist, evaluator))
        results.finish_run()
    path = results.write(args.out)
    if args.save_predictions and dist.is_main:
        torch.save({'seeds': list(args.seeds), 'pred': predictions,
                    'split': split, 'y': data.y.cpu()},
                   osp.join(args.out, f'{name}_predictions.pt'))
    dist.close()
    return path


if __name__ == '__main__':
    start = time.perf_counter()
    main()
    print(f'Done in {time.perf_counter() - start:.1f}s')
