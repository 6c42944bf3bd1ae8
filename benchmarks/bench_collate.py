r"""What nested signals add to a DataLoader batch of molecules.

What
----
Real molecules (the parsable SMILES of RDKit's ``Data/NCI/first_5K.smi``),
featurized as OGB does (:func:`ogb.utils.smiles2graph`: ``x`` ``[N, 9]``,
``edge_index``, ``edge_attr`` ``[E, 3]``), and the same molecules after
:class:`hsa_geo.transforms.MoleculeHierarchy` (applied once, as a
``pre_transform``, before any timing). For each batch size, per batch:

* ``plain``: PyG's collate of the plain ``Data`` (what
  :class:`torch_geometric.loader.DataLoader` calls,
  :meth:`~torch_geometric.data.Batch.from_data_list`);
* ``nested``: the same collate of the :class:`~hsa_geo.data.NestedSignal`
  items (the leaf data and the stored tree);
* ``hierarchy``: ``nested``, then the first access of ``batch.hierarchy``
  (the :class:`~hsa_geo.data.Hierarchy` the layers read, checked and
  cached per batch);
* ``forward``: ``hierarchy``, then the first forward of
  :class:`hsa_geo.nn.HSAConv` ``(9, 16, heads=4)`` on ``x.float()`` under
  :func:`torch.no_grad` (it builds what the dynamic program reads);
  ``forward_again`` is a second forward on the same batch, alone.

How
---
Batches are consecutive slices of the molecules in a fixed shuffled order,
so each batch is new to the hierarchy cache. The methods are interleaved
batch by batch (a busy machine slows all of them alike), after a few warm-up
batches; the reported time is the median over ``--batches`` batches,
measured with :func:`time.perf_counter`, with one thread and with the
default number of threads.

Target: on a batch of 32 molecules, what the hierarchies add, ``added =
hierarchy - plain`` (collating their keys and building ``batch.hierarchy``),
is at most PyG's own collate of the batch (``plain``).

Usage::

    python benchmarks/bench_collate.py            # all molecules, B = 32, 128
    python benchmarks/bench_collate.py --quick    # 256 molecules, 5 batches
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared machine and JSON code)

BATCH_SIZES = [32, 128]
TARGET_BATCH = 32
TARGET_RATIO = 1.0  # added / plain at TARGET_BATCH
BATCHES, WARMUP = 200, 5
QUICK_MOLECULES, QUICK_BATCHES = 256, 5
HEADS, HEAD_DIM = 4, 16
METHODS = ['plain', 'nested', 'hierarchy', 'forward', 'forward_again']
LABELS = {
    'plain': 'PyG collate',
    'nested': 'collate NestedSignal',
    'hierarchy': '+ hierarchy',
    'forward': '+ HSAConv fwd',
    'forward_again': 'fwd again',
}


def smiles_path() -> str:
    from rdkit import RDConfig
    return RDConfig.RDDataDir + '/NCI/first_5K.smi'


def load_molecules(limit: Optional[int] = None
                   ) -> Tuple[List[Any], List[Any], float]:
    r"""The first :obj:`limit` parsable molecules of :func:`smiles_path` as
    plain ``Data`` and as :class:`~hsa_geo.data.NestedSignal` (through
    :class:`~hsa_geo.transforms.MoleculeHierarchy`), and the seconds the
    transform took."""
    import torch
    from ogb.utils import smiles2graph
    from rdkit import Chem, RDLogger
    from torch_geometric.data import Data
    ba.import_hsa_geo()
    from hsa_geo.transforms import MoleculeHierarchy
    RDLogger.DisableLog('rdApp.*')
    transform = MoleculeHierarchy()
    plain, nested, seconds = [], [], 0.0
    with open(smiles_path()) as f:
        for line in f:
            if limit is not None and len(plain) >= limit:
                break
            smiles = line.split()[0] if line.strip() else ''
            if not smiles or Chem.MolFromSmiles(smiles) is None:
                continue
            graph = smiles2graph(smiles)
            data = Data(x=torch.from_numpy(graph['node_feat']),
                        edge_index=torch.from_numpy(graph['edge_index']),
                        edge_attr=torch.from_numpy(graph['edge_feat']))
            start = time.perf_counter()
            signal = transform(data)
            seconds += time.perf_counter() - start
            plain.append(data)
            nested.append(signal)
    return plain, nested, seconds


def batch_calls(plain: List[Any], nested: List[Any]
                ) -> Dict[str, Callable[[slice], Optional[float]]]:
    r"""Per method, one call on the molecules of a slice; it returns the
    seconds to report when only part of it is timed, else :obj:`None`."""
    import torch
    from torch_geometric.data import Batch

    from hsa_geo.nn import HSAConv
    conv = HSAConv(plain[0].x.size(1), HEAD_DIM, heads=HEADS).eval()

    def forward(part: slice, again: bool = False) -> Optional[float]:
        batch = Batch.from_data_list(nested[part])
        with torch.no_grad():
            x = batch.x.float()
            conv(x, batch.hierarchy)
            if again:  # the layout is cached now: time this call alone
                start = time.perf_counter()
                conv(x, batch.hierarchy)
                return time.perf_counter() - start
        return None

    def collate(items: List[Any], hierarchy: bool = False):
        def call(part: slice):
            batch = Batch.from_data_list(items[part])
            if hierarchy:
                batch.hierarchy
        return call

    return {
        'plain': collate(plain),
        'nested': collate(nested),
        'hierarchy': collate(nested, hierarchy=True),
        'forward': forward,
        'forward_again': lambda part: forward(part, again=True),
    }


def measure(calls: Dict[str, Callable[[slice], Optional[float]]], size: int,
            num_items: int, batches: int, warmup: int,
            threads: int) -> Dict[str, Any]:
    r"""Median milliseconds per batch of every method, interleaved batch by
    batch, with :obj:`threads` threads."""
    import torch
    torch.set_num_threads(threads)
    per_epoch = num_items // size
    samples: Dict[str, List[float]] = {m: [] for m in calls}
    gc.collect()
    for i in range(warmup + batches):
        start_item = (i % per_epoch) * size
        part = slice(start_item, start_item + size)
        for method, call in calls.items():
            start = time.perf_counter()
            inner = call(part)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples[method].append(elapsed if inner is None else inner)
    row: Dict[str, Any] = {'batch_size': size, 'threads': threads,
                           'batches': batches}
    for method, values in samples.items():
        row[f'{method}_ms'] = statistics.median(values) * 1e3
        row[f'{method}_samples_ms'] = [v * 1e3 for v in values]
    row['added_ms'] = row['hierarchy_ms'] - row['plain_ms']
    row['added_ratio'] = row['added_ms'] / row['plain_ms']
    return row


def evaluate_target(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    desc = (f'at batch size {TARGET_BATCH}, collating the nested signals and '
            f'building batch.hierarchy adds at most {TARGET_RATIO:g}x PyG\'s '
            f'collate of the plain batch')
    rows = [r for r in rows if r['batch_size'] == TARGET_BATCH]
    if not rows:
        return {'description': desc, 'status': 'N/A'}
    worst = max(r['added_ratio'] for r in rows)
    detail = '; '.join(
        f"{r['threads']} thread(s): {r['added_ms']:.2f} ms added / "
        f"{r['plain_ms']:.2f} ms = {r['added_ratio']:.2f}x" for r in rows)
    return {'description': desc, 'ratio': worst,
            'status': 'PASS' if worst <= TARGET_RATIO else 'FAIL',
            'detail': f'{detail} (needs <= {TARGET_RATIO:g}x)'}


def format_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    head = ['batch', 'threads'] + [f'{LABELS[m]} ms' for m in METHODS] + [
        'added ms', 'added / PyG collate']
    body = [[str(r['batch_size']), str(r['threads'])] +
            [f"{r[f'{m}_ms']:.2f}" for m in METHODS] +
            [f"{r['added_ms']:.2f}", f"{r['added_ratio']:.2f}x"]
            for r in rows]
    return ba.grid(head, body, markdown, left=0)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--molecules', type=int, default=None,
                   help='the first parsable molecules to use (default: all)')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=BATCH_SIZES)
    p.add_argument('--batches', type=int, default=None,
                   help='timed batches per method and setting (default: '
                        f'{BATCHES})')
    p.add_argument('--warmup', type=int, default=None,
                   help=f'untimed batches first (default: {WARMUP})')
    p.add_argument('--threads', type=int, default=ba.usable_cores(),
                   help='the default number of threads (also run with 1)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true',
                   help=f'{QUICK_MOLECULES} molecules, {QUICK_BATCHES} '
                        f'batches')
    p.add_argument('--out', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.molecules = args.molecules or QUICK_MOLECULES
    args.batches = args.batches or (QUICK_BATCHES if args.quick else BATCHES)
    if args.warmup is None:
        args.warmup = 1 if args.quick else WARMUP
    if args.out is None:
        args.out = ba.default_out('bench_collate_cpu', args.quick)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    machine = ba.machine_info('cpu', args.threads)
    ba.announce(f"bench_collate on cpu ({machine['cpu']}; {machine['cores']} "
                f"cores), torch {machine['torch']}, torch_geometric "
                f"{machine['torch_geometric']}", machine)
    plain, nested, transform_s = load_molecules(args.molecules)
    order = list(range(len(plain)))
    random.Random(args.seed).shuffle(order)
    plain, nested = [plain[i] for i in order], [nested[i] for i in order]
    print(f'{len(plain)} molecules ({sum(d.num_nodes for d in plain):,} '
          f'atoms), MoleculeHierarchy in {transform_s:.1f} s', flush=True)
    calls = batch_calls(plain, nested)
    sizes = [b for b in args.batch_sizes if b <= len(plain)]
    rows = []
    for size in sizes:
        for threads in sorted({1, args.threads}):
            rows.append(measure(calls, size, len(plain), args.batches,
                                args.warmup, threads))
    target = evaluate_target(rows)
    machine['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    payload = {
        'benchmark': 'bench_collate',
        'created': ba.timestamp(),
        'machine': machine,
        'config': {'smiles': smiles_path(), 'molecules': len(plain),
                   'atoms': sum(d.num_nodes for d in plain),
                   'transform_s': transform_s, 'batch_sizes': sizes,
                   'batches': args.batches, 'warmup': args.warmup,
                   'seed': args.seed, 'conv': f'HSAConv(9, {HEAD_DIM}, '
                   f'heads={HEADS})', 'methods': LABELS,
                   'timing': 'median per batch; methods interleaved batch '
                             'by batch; perf_counter'},
        'results': rows,
        'target': target,
        'wall_s': time.perf_counter() - start,
    }
    ba.write_json(args.out, payload)
    print()
    print(format_table(rows))
    print(f"\n[{target['status']}] {target['description']}\n         "
          f"{target.get('detail', '')}")
    print(f'\nwrote {args.out}')
    ba.write_markdown(args.markdown, format_table(rows, markdown=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
