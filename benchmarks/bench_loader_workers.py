r"""What a batch of molecules costs the main process when DataLoader workers
collate it.

What
----
The molecules of ``bench_collate.py`` (RDKit's ``Data/NCI/first_5K.smi``,
featurized as OGB does), plain and as :class:`~hsa_geo.data.NestedSignal`
(:class:`hsa_geo.transforms.MoleculeHierarchy`), batched by
:class:`torch_geometric.loader.DataLoader` with one worker process. The
worker collates; the main process receives each batch through PyTorch's
shared memory (every tensor of the batch, its slice and increment tables
included, is a shared block the main process maps) and, for nested
signals, decodes ``batch.hierarchy`` and derives its ``layout`` (what
:class:`hsa_geo.nn.HSAConv` reads; neither travels with the batch, as a
pickle holds what defines a hierarchy, never derived data). Per batch, in
the main process:

* ``receive``: ``next(iterator)`` once the worker has every batch ready
  (so no waiting for the worker is timed);
* ``hierarchy + layout`` (nested only): ``batch.hierarchy.layout`` on the
  received batch;

with PyTorch's two sharing strategies, ``file_descriptor`` (Linux's
default: a descriptor passed per block) and ``file_system`` (a named
file per block; see :mod:`torch.multiprocessing`). Also the number of
tensors per batch.

How
---
For each strategy, plain and nested loaders alternate for ``--rounds``
rounds; each round starts a fresh loader with a prefetch of every batch,
takes one batch (the worker's start), waits for the rest to be ready, then
times each of the others. Reported: the medians over all timed batches,
:func:`time.perf_counter`, one thread. No target: this is where a
training step's per-batch cost goes when the collate runs in workers.

Usage::

    python benchmarks/bench_loader_workers.py
    python benchmarks/bench_loader_workers.py --quick   # 16 molecules
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared machine and JSON code)
import bench_collate as bc  # noqa: E402  (the molecules)

BATCH_SIZE, BATCHES, ROUNDS = 128, 12, 3
STRATEGIES = ['file_descriptor', 'file_system']
KINDS = ['plain', 'nested']
# Seconds to let the worker fill the prefetch queue: per batch, and fixed.
READY_PER_BATCH_S, READY_S = 0.15, 1.0


def count_tensors(batch: Any) -> int:
    r"""The tensors a batch sends to the main process: those its pickle
    holds (its stores' and its slice and increment tables'), each once."""
    import io
    import pickle

    import torch
    seen = set()

    class Counter(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, torch.Tensor):
                seen.add(id(obj))
                return len(seen)  # (stands in for the tensor)
            return None

    Counter(io.BytesIO()).dump(batch)
    return len(seen)


def one_round(items: List[Any], batch_size: int, batches: int,
              nested: bool) -> Dict[str, List[float]]:
    r"""A fresh one-worker loader over :obj:`batches` batches: the
    seconds of ``receive`` (and ``hierarchy + layout``) per timed batch."""
    from torch_geometric.loader import DataLoader
    loader = DataLoader(items[:batch_size * batches], batch_size=batch_size,
                        num_workers=1, prefetch_factor=batches)
    samples: Dict[str, List[float]] = {'receive': [], 'layout': []}
    iterator = iter(loader)
    next(iterator)  # the worker's start
    time.sleep(READY_S + READY_PER_BATCH_S * batches)
    for _ in range(batches - 1):
        start = time.perf_counter()
        batch = next(iterator)
        samples['receive'].append(time.perf_counter() - start)
        if nested:
            start = time.perf_counter()
            batch.hierarchy.layout
            samples['layout'].append(time.perf_counter() - start)
    return samples


def measure(plain: List[Any], nested: List[Any], strategy: str,
            args: argparse.Namespace) -> List[Dict[str, Any]]:
    r"""The rows of one sharing strategy: plain and nested, alternating
    round by round."""
    import torch.multiprocessing as mp
    from torch_geometric.data import Batch
    data = {'plain': plain, 'nested': nested}
    samples = {kind: {'receive': [], 'layout': []} for kind in KINDS}
    before = mp.get_sharing_strategy()
    mp.set_sharing_strategy(strategy)
    try:  # (a setting of the whole process: restored)
        for r in range(args.rounds):
            for kind in (KINDS if r % 2 == 0 else KINDS[::-1]):
                got = one_round(data[kind], args.batch_size, args.batches,
                                kind == 'nested')
                for key, values in got.items():
                    samples[kind][key].extend(values)
    finally:
        mp.set_sharing_strategy(before)
    rows = []
    for kind in KINDS:
        got = samples[kind]
        receive = statistics.median(got['receive']) * 1e3
        layout = statistics.median(got['layout']) * 1e3 \
            if got['layout'] else 0.0
        tensors = count_tensors(Batch.from_data_list(
            data[kind][:args.batch_size]))
        rows.append({'strategy': strategy, 'kind': kind,
                     'tensors': tensors, 'receive_ms': receive,
                     'layout_ms': layout, 'main_ms': receive + layout,
                     'receive_samples_ms': [v * 1e3 for v in got['receive']],
                     'layout_samples_ms': [v * 1e3 for v in got['layout']]})
    return rows


def add_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""Each row's main-process time over the plain row's, same
    strategy."""
    plain = {r['strategy']: r['main_ms'] for r in rows
             if r['kind'] == 'plain'}
    for row in rows:
        row['main_over_plain'] = row['main_ms'] / plain[row['strategy']]
    return rows


def format_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    head = ['sharing strategy', 'batch', 'tensors', 'receive ms',
            'hierarchy + layout ms', 'main process ms', '/ plain']
    body = [[r['strategy'], r['kind'], str(r['tensors']),
             f"{r['receive_ms']:.2f}", f"{r['layout_ms']:.2f}",
             f"{r['main_ms']:.2f}", f"{r['main_over_plain']:.2f}x"]
            for r in rows]
    return ba.grid(head, body, markdown, left=2)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-size', type=int, default=None,
                   help=f'molecules per batch (default: {BATCH_SIZE})')
    p.add_argument('--batches', type=int, default=None,
                   help=f'batches per loader, the first not timed '
                        f'(default: {BATCHES})')
    p.add_argument('--rounds', type=int, default=None,
                   help=f'rounds of both loaders (default: {ROUNDS})')
    p.add_argument('--strategies', nargs='+', default=STRATEGIES,
                   choices=STRATEGIES)
    p.add_argument('--quick', action='store_true',
                   help='16 molecules, batches of 4, one round')
    p.add_argument('--out', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    args = p.parse_args(argv)
    defaults = (4, 4, 1) if args.quick else (BATCH_SIZE, BATCHES, ROUNDS)
    for name, value in zip(('batch_size', 'batches', 'rounds'), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batches < 2:
        p.error('--batches must be at least 2 (the first is not timed)')
    if args.out is None:
        args.out = ba.default_out('bench_loader_workers_cpu', args.quick)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch
    torch.set_num_threads(1)
    machine = ba.machine_info('cpu', 1)
    ba.announce(f"bench_loader_workers on cpu ({machine['cpu']}; "
                f"{machine['cores']} cores), torch {machine['torch']}, "
                f"torch_geometric {machine['torch_geometric']}", machine)
    plain, nested, _ = bc.load_molecules(args.batch_size * args.batches)
    if len(plain) < args.batch_size * args.batches:
        raise SystemExit(f'only {len(plain)} molecules: fewer batches')
    rows = add_ratios([row for strategy in args.strategies
                       for row in measure(plain, nested, strategy, args)])
    ba.publish(args.out, {
        'benchmark': 'bench_loader_workers', 'created': ba.timestamp(),
        'machine': machine,
        'config': {'smiles': bc.smiles_path(), 'batch_size': args.batch_size,
                   'batches': args.batches, 'rounds': args.rounds,
                   'strategies': args.strategies, 'workers': 1,
                   'timing': 'main process, one thread: next(iterator) once '
                             'the worker has every batch ready, then '
                             'batch.hierarchy.layout; medians over the '
                             'timed batches of all rounds; perf_counter'},
        'results': rows, 'wall_s': time.perf_counter() - start},
        lambda md: format_table(rows, md), args.markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
