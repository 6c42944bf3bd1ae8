r"""torch.compile of models with hierarchical self-attention against eager.

What
----
Batches of 128 real molecules (the parsable SMILES of RDKit's
``Data/NCI/first_5K.smi``; :class:`hsa_geo.transforms.MoleculeHierarchy`
applied once, as a ``pre_transform``, before any worker starts), every batch
different molecules, so every batch is a new hierarchy with a new number of
atoms. Two models, at 64 and 256 channels, 4 heads, one prediction per atom,
loss ``out.sum()``:

* ``hsa_conv``: an atom encoder, then :obj:`--layers` pre-norm residual
  blocks ``x + relu(HSAConv(LayerNorm(x)))`` (each a module, called in a
  loop), then a linear head;
* ``graph_transformer``: :class:`hsa_geo.nn.models.HSAGraphTransformer` of
  :obj:`--layers` blocks (GINE as the local layer, bond features in the
  attention as well).

Per model, channels and thread count, with the default (``inductor``)
backend:

* ``first_call_s``: the first forward+backward of the compiled model, which
  compiles it (cold: every worker gets an empty inductor cache);
  ``second_call_s``: the second batch, whose new sizes make Dynamo compile
  once more with dynamic sizes;
* the graphs compiled after every batch (cumulative), hence the batches
  that compiled anything and the graphs compiled after the first batch;
* steady state: the median forward+backward time per batch, eager and
  compiled, over :obj:`--batches` batches after :obj:`--warmup` batches.

How
---
One fresh process per (model, channels, threads), as in
``bench_attention.py``. The eager model and the compiled copy share their
initial weights and run on the same batch, alternately first, so a busy
machine slows both alike; the hierarchy of a batch is built (and its layout
derived) before timing. The attention part of :class:`~hsa_geo.nn.HSAConv`
is a compile boundary (:func:`torch.compiler.disable`) and runs eagerly in
both; what is compiled is the code around it. A graph break inside a loop
makes Dynamo run that loop's frame eagerly, so in both models the loop over
the layers (with the encoders and the head) runs eagerly and each block is
compiled on its own, around its attention.

Usage::

    python benchmarks/bench_compile.py --markdown \
        benchmarks/results/bench_compile_cpu.md
    python benchmarks/bench_compile.py --quick    # small, a few batches
    python benchmarks/bench_compile.py --quick --backend aot_eager
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared machine and JSON code)

MODELS = ['hsa_conv', 'graph_transformer']
LABELS = {'hsa_conv': 'HSAConv stack',
          'graph_transformer': 'HSAGraphTransformer'}
CHANNELS = [64, 256]
HEADS = 4
LAYERS = 2
BATCH_SIZE = 128
BATCHES, WARMUP = 20, 3
QUICK = dict(batch_size=16, batches=2, warmup=2, channels=[16],
             models=['hsa_conv'], threads=[1])
ATOM_FEATURES, BOND_FEATURES = 9, 3  # OGB's featurization


def smiles_path() -> str:
    from rdkit import RDConfig
    return os.path.join(RDConfig.RDDataDir, 'NCI', 'first_5K.smi')


def load_molecules(count: int) -> List[Any]:
    r"""The first :obj:`count` parsable molecules of :func:`smiles_path` as
    :class:`~hsa_geo.data.NestedSignal` (OGB features)."""
    from rdkit import Chem, rdBase
    ba.import_hsa_geo()
    from hsa_geo.transforms import MoleculeHierarchy
    transform = MoleculeHierarchy()
    data = []
    with open(smiles_path()) as f, rdBase.BlockLogs():
        for line in f:
            smiles = line.split()[0] if line.strip() else ''
            if smiles and Chem.MolFromSmiles(smiles) is not None:
                data.append(transform(smiles))
            if len(data) == count:
                break
    if len(data) < count:
        raise ValueError(f'{smiles_path()} has only {len(data)} parsable '
                         f'molecules, {count} are needed; ask for fewer '
                         f'--batches or a smaller --batch-size')
    return data


def build_model(name: str, channels: int, layers: int) -> Any:
    r"""The model :obj:`name`, called as ``model(x, edge_index, edge_attr,
    hierarchy)`` with integer OGB features."""
    import torch
    ba.import_hsa_geo()
    from hsa_geo.nn import HSAConv
    from hsa_geo.nn.models import HSAGraphTransformer

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(channels)
            self.conv = HSAConv(channels, channels // HEADS, heads=HEADS)

        def forward(self, x, hierarchy):
            return x + self.conv(self.norm(x), hierarchy).relu()

    class HSAConvStack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(ATOM_FEATURES, channels)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
            self.head = torch.nn.Linear(channels, 1)

        def forward(self, x, edge_index, edge_attr, hierarchy):
            x = self.encoder(x.float())
            for block in self.blocks:
                x = block(x, hierarchy)
            return self.head(x)

    class GraphTransformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = HSAGraphTransformer(
                ATOM_FEATURES, channels, 1, num_layers=layers, heads=HEADS,
                local_conv='gine', edge_dim=BOND_FEATURES)

        def forward(self, x, edge_index, edge_attr, hierarchy):
            return self.model(x.float(), edge_index, hierarchy,
                              edge_attr.float())

    return {'hsa_conv': HSAConvStack,
            'graph_transformer': GraphTransformer}[name]()


def _step(model, batch) -> Tuple[float, Any]:
    r"""One forward+backward: the seconds and the output."""
    start = time.perf_counter()
    out = model(batch.x, batch.edge_index, batch.edge_attr, batch.hierarchy)
    out.sum().backward()
    return time.perf_counter() - start, out.detach()


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return int(counters['stats']['unique_graphs'])


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    r"""Measures one (model, channels, threads) configuration."""
    import copy

    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters
    from torch_geometric.loader import DataLoader

    from hsa_geo.functional.sparse_family_attention import pair_pattern
    row: Dict[str, Any] = {'model': args.model, 'channels': args.channel,
                           'layers': args.layers, 'threads': args.thread,
                           'backend': args.backend, 'dynamic': args.dynamic}
    torch.set_num_threads(args.thread)
    torch._dynamo.reset()
    counters.clear()
    data = torch.load(args.data, weights_only=False)
    batches = list(DataLoader(data, batch_size=args.batch_size))
    torch.manual_seed(args.seed)
    eager = build_model(args.model, args.channel, args.layers)
    compiled = torch.compile(copy.deepcopy(eager), backend=args.backend,
                             dynamic=True if args.dynamic else None)
    seconds = {eager: [], compiled: []}
    graphs, atoms, diffs = [], [], []
    for i, batch in enumerate(batches):
        # Built before timing, shared by both: the layout and the pair
        # list's pattern.
        pair_pattern(batch.hierarchy.layout.sparse, HEADS)
        atoms.append(batch.num_nodes)
        out = {}
        for model in ((eager, compiled) if i % 2 else (compiled, eager)):
            time_s, out[model] = _step(model, batch)
            seconds[model].append(time_s)
            model.zero_grad(set_to_none=True)
        graphs.append(_graphs())
        diffs.append(float((out[compiled] - out[eager]).abs().max()))
    eager_s, compiled_s = seconds[eager], seconds[compiled]
    steady = slice(args.warmup, None)
    compiling = [i for i in range(len(graphs))
                 if graphs[i] > (graphs[i - 1] if i else 0)]
    row.update(
        status='ok', batch_size=args.batch_size, num_batches=len(batches),
        atoms_min=min(atoms), atoms_max=max(atoms),
        first_call_s=compiled_s[0], second_call_s=compiled_s[1],
        graphs=graphs, compiling_batches=compiling,
        graphs_after_first_batch=graphs[-1] - graphs[0],
        graph_breaks=sum(counters['graph_break'].values()),
        max_abs_diff=max(diffs),
        eager_ms=statistics.median(eager_s[steady]) * 1e3,
        compiled_ms=statistics.median(compiled_s[steady]) * 1e3,
        eager_samples_ms=[s * 1e3 for s in eager_s],
        compiled_samples_ms=[s * 1e3 for s in compiled_s])
    row['speedup'] = row['eager_ms'] / row['compiled_ms']
    return row


def run_in_subprocess(model: str, channels: int, threads: int,
                      args: argparse.Namespace) -> Dict[str, Any]:
    r"""Runs :func:`run_worker` in a fresh process with an empty inductor
    cache, so the first call compiles from scratch."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
           '--data', str(args.data), '--model', model, '--channel',
           str(channels), '--thread', str(threads), '--layers',
           str(args.layers), '--batch-size', str(args.batch_size),
           '--warmup', str(args.warmup), '--backend', args.backend,
           '--seed', str(args.seed)] + (['--dynamic'] if args.dynamic else [])
    base = {'model': model, 'channels': channels, 'threads': threads,
            'layers': args.layers, 'backend': args.backend}
    with tempfile.TemporaryDirectory(prefix='inductor_') as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        return ba.run_command(cmd, base, args.timeout, env)


def format_table(rows: List[Dict], markdown: bool = False) -> str:
    head = ['model', 'channels', 'threads', 'first call s', 'second call s',
            'eager ms', 'compiled ms', 'eager / compiled',
            'graphs (1st batch / all)', 'batches that compiled']
    body = []
    for r in rows:
        name = [LABELS.get(r['model'], r['model']), str(r['channels']),
                str(r['threads'])]
        if r['status'] != 'ok':
            body.append(name + [r['status'], r.get('error', '')[:60]] +
                        [''] * 5)
            continue
        body.append(name + [
            f"{r['first_call_s']:.1f}", f"{r['second_call_s']:.1f}",
            f"{r['eager_ms']:.1f}", f"{r['compiled_ms']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['graphs'][0]} / {r['graphs'][-1]}",
            ', '.join(str(i + 1) for i in r['compiling_batches'])])
    return ba.grid(head, body, markdown)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=None, choices=MODELS)
    p.add_argument('--channels', nargs='+', type=int, default=None)
    p.add_argument('--layers', type=int, default=LAYERS)
    p.add_argument('--threads', nargs='+', type=int, default=None,
                   help='thread counts (0: all usable cores); default 1 '
                   'and all')
    p.add_argument('--batch-size', type=int, default=None)
    p.add_argument('--batches', type=int, default=None,
                   help=f'timed batches after the warm-up ({BATCHES})')
    p.add_argument('--warmup', type=int, default=None,
                   help=f'batches not timed at the start ({WARMUP})')
    p.add_argument('--backend', default='inductor',
                   help='torch.compile backend (default: inductor)')
    p.add_argument('--dynamic', action='store_true',
                   help='torch.compile(dynamic=True)')
    p.add_argument('--timeout', type=float, default=1800.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true',
                   help='batches of 16 molecules, 16 channels, one thread, '
                   '4 batches')
    p.add_argument('--out', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--data', type=Path, help=argparse.SUPPRESS)
    p.add_argument('--model', choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument('--channel', type=int, help=argparse.SUPPRESS)
    p.add_argument('--thread', type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup is not None and args.warmup < 2:
        p.error('--warmup must be at least 2: the first two batches '
                'compile')
    preset = QUICK if args.quick else dict(
        batch_size=BATCH_SIZE, batches=BATCHES, warmup=WARMUP,
        channels=CHANNELS, models=MODELS, threads=[1, 0])
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.threads = [t or ba.usable_cores() for t in args.threads]
    args.threads = sorted(set(args.threads), key=args.threads.index)
    if args.out is None:
        args.out = ba.default_out('bench_compile_cpu', args.quick)
    return args


def run_all(args: argparse.Namespace) -> List[Dict[str, Any]]:
    r"""Transforms the molecules once, then one worker per configuration."""
    import torch
    start = time.perf_counter()
    count = args.batch_size * (args.warmup + args.batches)
    data = load_molecules(count)
    print(f'{count} molecules through MoleculeHierarchy in '
          f'{time.perf_counter() - start:.1f} s', flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix='bench_compile_') as tmp:
        args.data = Path(tmp) / 'molecules.pt'
        torch.save(data, args.data)
        for model in args.models:
            for channels in args.channels:
                for threads in args.threads:
                    row = run_in_subprocess(model, channels, threads, args)
                    rows.append(row)
                    print(format_table([row]).splitlines()[-1], flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        ba.send_result(run_worker(args))
        return 0
    start = time.perf_counter()
    machine = ba.machine_info('cpu', ba.usable_cores())
    ba.announce(f"bench_compile on cpu ({machine['cpu']}; {machine['cores']} "
                f"cores), torch {machine['torch']}: batches of "
                f'{args.batch_size} molecules, {args.layers} layers, {HEADS} '
                f'heads, backend {args.backend}', machine)
    rows = run_all(args)
    machine['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    payload = {
        'benchmark': 'bench_compile',
        'created': ba.timestamp(),
        'machine': machine,
        'config': {'models': args.models, 'channels': args.channels,
                   'layers': args.layers, 'heads': HEADS,
                   'threads': args.threads, 'batch_size': args.batch_size,
                   'warmup': args.warmup, 'batches': args.batches,
                   'backend': args.backend, 'dynamic': args.dynamic,
                   'molecules': 'RDKit Data/NCI/first_5K.smi, in file '
                   'order, MoleculeHierarchy (OGB features)',
                   'timing': 'forward+backward (loss out.sum()) per batch, '
                   'perf_counter; eager and compiled alternate on each '
                   'batch; median over the batches after the warm-up; '
                   'first call = compile, cold inductor cache'},
        'results': rows,
        'wall_s': time.perf_counter() - start,
    }
    ba.publish(args.out, payload, lambda md: format_table(rows, md),
               args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
