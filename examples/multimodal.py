r"""Multi-modal molecules: does attention across a molecule's atom graph,
SMILES string and depiction, through one cluster tree, predict its
measured activity better than each modality alone or than fusing them
late?

Every compound of :class:`~hsa_geo.datasets.MultiModalMolecules` is a
:class:`~hsa_geo.data.HeteroNestedSignal` with three leaf types: ``atom``
(OGB's atom features and bonds), ``smiles`` (SMILES token ids) and
``image`` (patches of a 2D depiction), each turned into a subtree by its
own builder, the subtrees joined under one root. ``--model`` chooses the
arm (``all``, the default, trains every one):

- ``atom``, ``smiles``, ``image``: one modality alone; HSA over that
  modality's subtree (the joined tree restricted to its leaves);
- ``hsa``: all modalities; the transformer blocks run one
  :class:`~hsa_geo.nn.HeteroHSAConv` over all leaves of all types, along
  the joined tree, so a SMILES token attends to atoms and patches;
- ``late_fusion``: all modalities, each through its own single-modality
  body (HSA over its own subtree), pooled; no attention across them;
- ``flat``: all modalities, as ``hsa`` but over a flat tree per compound
  (one root over all its leaves), on which HSA is softmax attention: a
  plain transformer over the leaves of all types.

Every arm has the same input encoders per leaf type (atoms: OGB's
``AtomEncoder`` and one GINE layer over the bonds with OGB's
``BondEncoder``; SMILES tokens: an embedding; patches: a linear map; both
sequences with a sinusoidal code of the leaf's position in its sample),
``--layers`` pre-norm transformer blocks of width ``--hidden`` with
per-type weights, the mean of every type's leaves per compound,
concatenated over the types, and a two-layer head. So ``hsa``, ``flat``
and ``late_fusion`` have the same parameters and differ only in which
leaves attend to which; a single modality has a third of the blocks.

All arms train with the same optimiser, epochs, batch size and seeds on the
dataset's scaffold split; the numbers of a seed are those of its best
validation epoch (RMSE for the regression task)::

    python examples/multimodal.py --seeds 0 1 2 3 4 --threads 1

Outputs in ``--out``: ``multimodal_<dataset>_<task>.json`` (configuration,
machine, and for every arm its parameters, per-epoch curves of every seed,
final metrics and their mean and standard deviation) and
``multimodal_<dataset>_<task>.png`` (training loss, validation and test
metric per epoch: the mean over seeds, the band from minimum to maximum).
"""
import math
import os.path as osp
import sys
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
from torch import Tensor
from torch.nn import (Dropout, Embedding, GELU, LayerNorm, Linear,
                      ModuleDict, ReLU, Sequential)
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv, global_mean_pool

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from ogbg_mol import Task, mlp  # noqa: E402
from training import (Distributed, Results, Timer,  # noqa: E402
                      common_parser, mean_std_cell, parse_checked,
                      positive_int, probability, progress,
                      seed_everything, write_arms)

from hsa_geo.data import (HeteroNestedSignal, Hierarchy,  # noqa: E402
                          induced_hierarchy)
from hsa_geo.datasets import MultiModalMolecules  # noqa: E402
from hsa_geo.nn import HeteroHSAConv  # noqa: E402

MODALITIES = ('atom', 'smiles', 'image')
ARMS = MODALITIES + ('hsa', 'late_fusion', 'flat')
BOND = ('atom', 'bond', 'atom')


def position_code(batch: Tensor, ptr: Tensor, channels: int) -> Tensor:
    r"""``[N, channels]`` sinusoidal code of every leaf's position among the
    leaves of its sample (``batch``, ``ptr`` of a PyG batch), as in the
    original transformer: a token's place in its SMILES, a patch's in the
    Z order of its grid (the same grid for every depiction)."""
    position = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    half = channels // 2
    frequency = torch.exp(torch.arange(half, device=batch.device)
                          * (-math.log(10000.0) / half))
    angle = position.unsqueeze(-1) * frequency
    code = torch.cat([angle.sin(), angle.cos()], dim=-1)
    return F.pad(code, (0, channels % 2))  # an odd width: one zero column


class LeafEncoder(torch.nn.Module):
    r"""The input embedding ``[N_t, channels]`` of the leaves of one type
    :obj:`leaf_type` of a batch: atoms by OGB's ``AtomEncoder`` and one
    residual GINE layer over the bonds (OGB's ``BondEncoder``); SMILES
    tokens by an embedding (id ``0``, padding or unknown, maps to zero),
    image patches by a linear map of the patch normalised to zero mean and
    unit variance, both plus :func:`position_code`."""
    def __init__(self, leaf_type: str, channels: int,
                 num_tokens: int = 0, patch_dim: int = 0):
        super().__init__()
        self.leaf_type = leaf_type
        self.channels = channels
        if leaf_type == 'atom':
            self.embed = AtomEncoder(channels)
            self.bond_encoder = BondEncoder(channels)
            self.conv = GINEConv(mlp(channels))
        elif leaf_type == 'smiles':
            self.embed = Embedding(num_tokens, channels, padding_idx=0)
        elif leaf_type == 'image':
            # A depiction is mostly white background: normalised, a blank
            # patch is zero and the few drawn pixels carry the signal,
            # instead of a large constant shared by every compound.
            self.embed = Sequential(
                LayerNorm(patch_dim, elementwise_affine=False),
                Linear(patch_dim, channels))
        else:
            raise ValueError(f"no encoder for leaf type '{leaf_type}'; the "
                             f"leaf types are {MODALITIES}")

    def forward(self, data: HeteroNestedSignal) -> Tensor:
        store = data[self.leaf_type]
        x = self.embed(store.x)
        if self.leaf_type == 'atom':
            bonds = data[BOND]
            edge_attr = self.bond_encoder(bonds.edge_attr)
            return x + self.conv(x, bonds.edge_index, edge_attr)
        return x + position_code(store.batch, store.ptr, self.channels)


class HeteroTransformerBlock(torch.nn.Module):
    r"""A pre-norm transformer block over the leaves of several types, as
    :class:`~hsa_geo.nn.HSATransformerLayer` with weights of its own per
    type: one :class:`~hsa_geo.nn.HeteroHSAConv` over the leaves of all
    types of :obj:`hierarchy` (per-type queries, keys and values, no skip
    weight: the residual is the skip), then per type the output map and a
    feed-forward network of width ``2 * channels``, each with a residual
    connection."""
    def __init__(self, channels: int, leaf_types: Sequence[str], heads: int,
                 dropout: float):
        super().__init__()
        self.dropout = dropout

        def per_type(make):
            return ModuleDict({t: make() for t in leaf_types})
        self.norm1 = per_type(lambda: LayerNorm(channels))
        self.attn = HeteroHSAConv(channels, channels // heads, leaf_types,
                                  heads=heads, root_weight=False)
        self.lin_out = per_type(lambda: Linear(channels, channels))
        self.norm2 = per_type(lambda: LayerNorm(channels))
        self.ffn = per_type(lambda: Sequential(
            Linear(channels, 2 * channels), GELU(), Dropout(dropout),
            Linear(2 * channels, channels)))

    def forward(self, x_dict: Dict[str, Tensor],
                hierarchy: Hierarchy) -> Dict[str, Tensor]:
        h = self.attn({t: self.norm1[t](x) for t, x in x_dict.items()},
                      hierarchy)
        x_dict = {t: x + F.dropout(self.lin_out[t](h[t]), self.dropout,
                                   self.training)
                  for t, x in x_dict.items()}
        return {t: x + F.dropout(self.ffn[t](self.norm2[t](x)),
                                 self.dropout, self.training)
                for t, x in x_dict.items()}


class Body(torch.nn.Module):
    r"""The encoders of its leaf types, :obj:`num_layers` blocks over a
    hierarchy of exactly their leaves, and the mean of every type's
    leaves per sample, concatenated: ``[B, len(leaf_types) * channels]``.
    """
    def __init__(self, leaf_types: Sequence[str], channels: int,
                 num_layers: int, heads: int, dropout: float,
                 num_tokens: int, patch_dim: int):
        super().__init__()
        self.leaf_types = list(leaf_types)
        self.encoders = ModuleDict({t: LeafEncoder(t, channels, num_tokens,
                                                   patch_dim)
                                    for t in leaf_types})
        self.blocks = torch.nn.ModuleList(
            HeteroTransformerBlock(channels, leaf_types, heads, dropout)
            for _ in range(num_layers))
        # Pre-norm blocks leave the residual stream unnormalised.
        self.norms = ModuleDict({t: LayerNorm(channels) for t in leaf_types})

    def forward(self, data: HeteroNestedSignal,
                hierarchy: Hierarchy) -> Tensor:
        x = {t: self.encoders[t](data) for t in self.leaf_types}
        for block in self.blocks:
            x = block(x, hierarchy)
        pooled = [global_mean_pool(self.norms[t](x[t]), data[t].batch,
                                   data.num_graphs)
                  for t in self.leaf_types]
        return torch.cat(pooled, dim=-1)


def modality_tree(data: HeteroNestedSignal, leaf_type: str) -> Hierarchy:
    r"""The joined tree restricted to the leaves of one type: per sample,
    that modality's own subtree (under the root, now a single-child node,
    which HSA treats as transparent)."""
    rows = data.leaf_slices[leaf_type]
    leaves = torch.arange(rows.start, rows.stop,
                          device=data.hierarchy.parent.device)
    return induced_hierarchy(data.hierarchy, leaves)


def flat_tree(data: HeteroNestedSignal) -> Hierarchy:
    r"""One root over all leaves of every sample, leaves in the joined
    tree's order: HSA on it is softmax attention within each sample."""
    sample = torch.cat([data[t].batch for t in data.leaf_types])
    return Hierarchy.from_assignments([sample])


class MultiModalModel(torch.nn.Module):
    r"""The model of one arm of :data:`ARMS` (see the module docstring):
    one :class:`Body` per group of leaf types that attend to each other,
    the tree they attend along, and a two-layer head on their pooled
    outputs."""
    def __init__(self, arm: str, leaf_types: Sequence[str], channels: int,
                 out_channels: int, num_layers: int, heads: int,
                 dropout: float, num_tokens: int, patch_dim: int):
        super().__init__()
        self.arm = arm
        if arm in MODALITIES:
            groups = [[arm]]
        elif arm == 'late_fusion':
            groups = [[t] for t in leaf_types]
        else:  # 'hsa' and 'flat': in the joined tree's leaf order
            groups = [list(leaf_types)]
        self.bodies = torch.nn.ModuleList(
            Body(g, channels, num_layers, heads, dropout, num_tokens,
                 patch_dim) for g in groups)
        width = channels * sum(len(g) for g in groups)
        self.head = Sequential(Linear(width, channels), ReLU(),
                               Dropout(dropout),
                               Linear(channels, out_channels))

    def tree(self, data: HeteroNestedSignal, body: Body) -> Hierarchy:
        r"""The hierarchy :obj:`body` attends along."""
        if self.arm == 'hsa':
            return data.hierarchy
        if self.arm == 'flat':
            return flat_tree(data)
        return modality_tree(data, body.leaf_types[0])

    def forward(self, data: HeteroNestedSignal) -> Tensor:
        pooled = [body(data, self.tree(data, body)) for body in self.bodies]
        return self.head(torch.cat(pooled, dim=-1))


def build_model(arm: str, dataset, args) -> MultiModalModel:
    r"""The model of :obj:`arm` with the shared budget of :obj:`args`,
    its input sizes read from :obj:`dataset`."""
    sample = dataset[0]
    unknown = [t for t in sample.leaf_types if t not in MODALITIES]
    if unknown:
        raise ValueError(f"leaf type '{unknown[0]}' has no encoder here; "
                         f"the compounds must have {MODALITIES}")
    return MultiModalModel(
        arm, sample.leaf_types, args.hidden, dataset.num_tasks, args.layers,
        args.heads, args.dropout, dataset.num_smiles_tokens,
        sample['image'].x.size(-1))


def train(model, loader, optimizer, task: Task, dist: Distributed,
          epoch: int, show: bool) -> float:
    r"""One epoch; the mean loss per compound."""
    model.train()
    total = count = 0.0
    for data in progress(loader, epoch, dist, show):
        data = data.to(dist.device)
        optimizer.zero_grad()
        loss = task.loss(model(data), data.y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * data.num_graphs
        count += data.num_graphs
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, task: Task, device) -> Dict[str, float]:
    r"""The metrics of the compounds of :obj:`loader` (e.g. RMSE and MAE
    in the label's units)."""
    model.eval()
    y_true, y_pred = [], []
    for data in loader:
        data = data.to(device)
        out = model(data)
        y_pred.append(task.prediction(out).float().cpu())
        y_true.append(data.y.view(out.shape).float().cpu())
    return task.evaluate(torch.cat(y_true), torch.cat(y_pred))


def run(arm: str, seed: int, dataset, split_idx: Dict[str, Tensor],
        task: Task, args, dist: Distributed, results: Results):
    r"""Trains the model of :obj:`arm` from :obj:`seed`; records its curves
    and its best validation epoch in :obj:`results`."""
    seed_everything(seed)
    model = build_model(arm, dataset, args).to(dist.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_loader = DataLoader(dataset[split_idx['train']],
                              batch_size=args.batch_size, shuffle=True)
    eval_loaders = {split: DataLoader(dataset[split_idx[split]],
                                      batch_size=args.batch_size)
                    for split in ('valid', 'test')}
    print(f'{arm}, seed {seed}:', flush=True)
    results.start_run(seed)
    for epoch in range(1, args.epochs + 1):
        timer = Timer()
        loss = train(model, train_loader, optimizer, task, dist, epoch,
                     not args.no_progress)
        seconds = timer.lap()
        values = {}
        for split, loader in eval_loaders.items():
            scores = evaluate(model, loader, task, dist.device)
            values[split] = scores[task.metric]
            values.update({f'{split}_{k}': v for k, v in scores.items()
                           if k != task.metric})
        results.add_epoch(epoch, loss=loss, **values, seconds=seconds,
                          eval_seconds=timer.lap())
    results.finish_run(
        num_parameters=sum(p.numel() for p in model.parameters()))


def summary_table(arms: Dict[str, Results]) -> str:
    r"""A Markdown table: per arm the parameters, the validation and test
    metric (mean ± standard deviation over seeds) and seconds per
    training epoch."""
    metric = next(iter(arms.values())).metric
    rows = [f'| arm | params | valid {metric} | test {metric} | s/epoch |',
            '| --- | ---: | ---: | ---: | ---: |']
    for arm, results in arms.items():
        s = results.summary()

        def cell(key: str, digits: int = 3) -> str:
            return mean_std_cell(s, key, digits)
        rows.append(f'| {arm} | {s["num_parameters"]["mean"]:,.0f} | '
                    f'{cell("valid")} | {cell("test")} | '
                    f'{cell("seconds_per_epoch", 2)} |')
    return '\n'.join(rows)


def main(argv: List[str] = None) -> Dict:
    r"""Parses :obj:`argv` (default: the command line), trains every arm
    once per seed, writes the results and returns them as a :obj:`dict`.
    """
    parser = common_parser(
        'Multi-modal molecules: each modality alone, all with HSA, late '
        'fusion, and flat softmax attention over all leaves.',
        datasets=('chembl', ), models=ARMS + ('all', ), dataset='chembl',
        model='all', epochs=10, hidden=32)
    parser.add_argument('--task', default='regression',
                        choices=['regression', 'classification'])
    parser.add_argument('--layers', type=positive_int, default=2)
    parser.add_argument('--heads', type=positive_int, default=2)
    parser.add_argument('--dropout', type=probability, default=0.1)
    args = parse_checked(parser, argv)
    if args.ddp:
        parser.error('this example trains in one process; drop --ddp')
    dist = Distributed.from_env(False, args.device, args.threads)

    # A folder of its own: ogbg_mol.py keeps the same ChEMBL compounds under
    # --root with molecule trees, which this dataset's source has not.
    dataset = MultiModalMolecules(osp.join(args.root, 'multimodal'),
                                  name=args.dataset, task=args.task)
    split_idx = dataset.get_idx_split('scaffold')
    task = Task(dataset.task_type, dataset.num_tasks, dataset.eval_metric)
    task.fit(torch.cat([dataset[int(i)].y for i in split_idx['train']]))
    name = f'multimodal_{args.dataset}_{args.task}'
    print(f'{name}: {len(dataset)} compounds, leaf types '
          f'{dataset[0].leaf_types}, {task.metric}, on {dist.device}',
          flush=True)

    arms = {}
    for arm in ARMS if args.model == 'all' else (args.model, ):
        arms[arm] = Results(f'{name}_{arm}', vars(args), task.metric,
                            task.higher_is_better, dist)
        for seed in args.seeds:
            run(arm, seed, dataset, split_idx, task, args, dist, arms[arm])
    result = write_arms(arms, name, args, dist.device)
    print(summary_table(arms))
    return result


if __name__ == '__main__':
    main()
