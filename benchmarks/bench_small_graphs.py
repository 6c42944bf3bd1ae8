r"""HSAConv against PyG's graph transformer attentions on a batch of small
real molecules.

What
----
The first 128 parsable molecules of RDKit's ``Data/NCI/first_5K.smi`` (in
file order), featurized as OGB does (:func:`ogb.utils.smiles2graph`) and
turned into nested signals by :class:`hsa_geo.transforms.MoleculeHierarchy`
once, as a ``pre_transform`` would: per molecule a tree atoms -> ring
systems and chain fragments -> molecule. They are collated into one batch
as PyG's :class:`~torch_geometric.loader.DataLoader` does
(:meth:`~torch_geometric.data.Batch.from_data_list`): a forest of 128 trees
over all atoms. The node features are random ``[N, C]`` (what an atom
encoder would give), ``C = 64`` (4 heads x 16) and ``C = 256`` (4 x 64).
Every method runs forward+backward with the loss ``out.sum()``, ``x`` and
the parameters requiring grad:

* ``hsa_conv``: :class:`hsa_geo.nn.HSAConv` ``(C, C // 4, heads=4)`` over
  ``batch.hierarchy``: every atom attends to its whole molecule, through
  the molecule's tree;
* ``gps_dense_attention``: the global attention of
  :class:`torch_geometric.nn.GPSConv` ``(C, None, heads=4,
  attn_type='multihead')`` exactly as its ``forward`` runs it:
  :func:`~torch_geometric.utils.to_dense_batch` of ``x`` by molecule, its
  ``torch.nn.MultiheadAttention(C, 4, batch_first=True)`` (``.attn``) with
  ``key_padding_mask=~mask`` and ``need_weights=False``, then the rows of
  the atoms back (``h[mask]``). The attention alone, without the layer's
  local MPNN, residuals, norms and MLP (HSAConv has none of them either):
  every atom attends to its whole molecule, densely;
* ``transformer_conv``: :class:`torch_geometric.nn.TransformerConv`
  ``(C, C // 4, heads=4)`` over the bonds (both directions): every atom
  attends to its bonded neighbours.

HSA pays per batch what the peers do not, measured apart:

* ``collate added``: :meth:`~torch_geometric.data.Batch.from_data_list` of
  the nested signals minus the same of the plain ``Data`` of the same
  molecules;
* ``hierarchy``: the first ``batch.hierarchy`` of a fresh batch (decoded
  from the collated keys and checked);
* ``first-call extra``: HSAConv's first forward+backward on a fresh batch's
  hierarchy, which derives the layout the dynamic program reads, minus the
  steady state (``hsa_conv``); a difference of medians, so it is noisy.

And, once per dataset, the build: :class:`MoleculeHierarchy` over the 128
molecules, per batch and per molecule.

How
---
One process. For each thread count (``torch.set_num_threads``, 1 and 2 by
default) the methods run interleaved, round by round (in reverse order
every other round, so that a busy machine slows all of them alike), after
warm-up rounds; each time is the median over the rounds, measured with
:func:`time.perf_counter`. With ``--device cuda`` the layers, their input
and the hierarchy live on the GPU (one thread count: the current one) and
every timed call ends with :func:`torch.cuda.synchronize`; the collate and
``batch.hierarchy`` stay on the CPU, where a data loader runs them.

Targets, forward+backward, at both sizes and thread counts:
``hsa_conv / gps_dense_attention <= 0.5`` and
``hsa_conv / transformer_conv <= 2``.

A shared CPU (``--competing``, e.g. ``1 2``): with that many CPU-bound
processes (a busy loop each, as :func:`bench_attention.competing_processes`
starts them around every row), ``hsa_conv`` and ``transformer_conv`` at the
first size, with each thread count, interleaved as above. Reported (a
second table), no target: ``hsa_conv / transformer_conv`` and, per row,
each method's time over its own one-thread time under the same load.

Usage::

    python benchmarks/bench_small_graphs.py            # 128 molecules
    python benchmarks/bench_small_graphs.py --quick    # 8 molecules, 1 round
    python benchmarks/bench_small_graphs.py --device cuda
    python benchmarks/bench_small_graphs.py --channels 64 --competing 1 2
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared machine and JSON code)
import bench_collate as bc  # noqa: E402  (the molecules)

BATCH_SIZE = 128
HEADS = 4
CHANNELS = [64, 256]  # 4 heads x 16, 4 heads x 64
THREADS = [1, 2]
ROUNDS, WARMUP, BUILD_ROUNDS = 20, 3, 5
QUICK_BATCH = 8
METHODS = ['hsa_conv', 'gps_dense_attention', 'transformer_conv']
PEERS = METHODS[1:]
# HSAConv with the pair list on PyTorch operations instead of the fused
# kernels (where they are built): what the kernels buy, in the same rounds.
TORCH_PAIRS = 'hsa_conv_torch_pairs'
LABELS = {
    'hsa_conv': 'HSAConv',
    'gps_dense_attention': 'GPS dense attention',
    'transformer_conv': 'TransformerConv',
}
TARGETS = {'gps_dense_attention': 0.5, 'transformer_conv': 2.0}
SHARED_CPU_METHODS = ['hsa_conv', 'transformer_conv']
SHARED_CPU_LIFETIME = 600.0  # s: a busy process ends by itself after it

Call = Callable[[], Optional[float]]


def interleaved(calls: Dict[str, Call], warmup: int,
                rounds: int) -> Dict[str, List[float]]:
    r"""Seconds of every call per round, after :obj:`warmup` untimed
    rounds; the calls run in reverse order every other round. A call that
    returns a number has timed its own part, which is reported instead."""
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    names = list(calls)
    for i in range(warmup + rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            inner = calls[name]()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples[name].append(elapsed if inner is None else inner)
    return samples


def _median_fields(samples: Dict[str, List[float]]) -> Dict[str, Any]:
    row: Dict[str, Any] = {}
    for name, values in samples.items():
        row[f'{name}_ms'] = statistics.median(values) * 1e3
        row[f'{name}_samples_ms'] = [v * 1e3 for v in values]
    return row


def batch_costs(plain: List[Any], nested: List[Any], warmup: int,
                rounds: int, build_rounds: int) -> Dict[str, Any]:
    r"""Per batch: PyG's collate of the plain molecules and of the nested
    signals, the first ``batch.hierarchy`` of a fresh batch, the layout and
    pair pattern its first forward derives (part of the first-call extra),
    and :class:`MoleculeHierarchy` over all molecules (the one-off
    build)."""
    from torch_geometric.data import Batch

    from hsa_geo.functional.sparse_family_attention import pair_pattern
    from hsa_geo.transforms import MoleculeHierarchy

    def hierarchy() -> float:
        batch = Batch.from_data_list(nested)
        start = time.perf_counter()
        batch.hierarchy
        return time.perf_counter() - start

    def layout() -> float:
        tree = Batch.from_data_list(nested).hierarchy
        start = time.perf_counter()
        pair_pattern(tree.layout.sparse, HEADS)
        return time.perf_counter() - start

    def collate(items: List[Any]) -> Call:
        def call() -> None:
            Batch.from_data_list(items)
        return call

    transform = MoleculeHierarchy()

    def build() -> None:
        for data in plain:
            transform(data)

    row = _median_fields(interleaved({
        'plain_collate': collate(plain),
        'nested_collate': collate(nested),
        'hierarchy': hierarchy,
        'layout': layout,
    }, warmup, rounds))
    row.update(_median_fields(interleaved({'build': build}, min(warmup, 1),
                                          build_rounds)))
    row['collate_added_ms'] = row['nested_collate_ms'] - \
        row['plain_collate_ms']
    row['build_per_molecule_ms'] = row['build_ms'] / len(plain)
    return row


def attention_cases(batch: Any, channels: int, device: Any = 'cpu'
                    ) -> Tuple[Dict[str, ba.Case], Any]:
    r"""The three layers at :obj:`channels` on one shared input ``x``
    ``[N, channels]`` on :obj:`device`, ready for forward+backward, and the
    HSAConv."""
    import torch
    from torch_geometric.nn import GPSConv, TransformerConv
    from torch_geometric.utils import to_dense_batch

    from hsa_geo.functional.fused_pair_kernels import (fused_pairs,
                                                       fused_pairs_variant)
    from hsa_geo.nn import HSAConv
    x = torch.randn(batch.num_nodes, channels, device=device,
                    requires_grad=True)
    hierarchy = batch.hierarchy.to(device)
    edge_index, index = batch.edge_index.to(device), batch.batch.to(device)
    hsa = HSAConv(channels, channels // HEADS, heads=HEADS).to(device)
    gps = GPSConv(channels, None, heads=HEADS,
                  attn_type='multihead').to(device)
    conv = TransformerConv(channels, channels // HEADS,
                           heads=HEADS).to(device)

    def gps_attention():  # as GPSConv.forward calls its attention
        h, mask = to_dense_batch(x, index)
        h, _ = gps.attn(h, h, h, key_padding_mask=~mask, need_weights=False)
        return h[mask]

    def hsa_torch_pairs():
        with fused_pairs(False):
            return hsa(x, hierarchy)

    # The fused kernels run on CPU tensors only: elsewhere both rows would
    # time the same code.
    extra = {} if fused_pairs_variant() is None or \
        torch.device(device).type != 'cpu' else {
            TORCH_PAIRS: ba.Case(hsa_torch_pairs,
                                 [x] + list(hsa.parameters()))}
    return {
        **extra,
        'hsa_conv': ba.Case(lambda: hsa(x, hierarchy),
                            [x] + list(hsa.parameters())),
        'gps_dense_attention': ba.Case(gps_attention,
                                       [x] + list(gps.attn.parameters())),
        'transformer_conv': ba.Case(lambda: conv(x, edge_index),
                                    [x] + list(conv.parameters())),
    }, hsa


def forward_backward(case: ba.Case, device: Any = 'cpu') -> Call:
    sync = ba.synchronize(device)

    def call() -> None:
        for t in case.grad_leaves:
            t.grad = None
        case.forward().sum().backward()
        sync()
    return call


def fresh_hsa_conv(nested: List[Any], conv: Any, case: ba.Case,
                   device: Any = 'cpu') -> Call:
    r""":obj:`conv`'s first forward+backward on a freshly collated batch
    (timed alone: the collate, ``batch.hierarchy`` and the move to
    :obj:`device` are not part of it), on the input of :obj:`case`."""
    from torch_geometric.data import Batch
    x = case.grad_leaves[0]
    sync = ba.synchronize(device)

    def call() -> float:
        hierarchy = Batch.from_data_list(nested).hierarchy.to(device)
        for t in case.grad_leaves:
            t.grad = None
        sync()
        start = time.perf_counter()
        conv(x, hierarchy).sum().backward()
        sync()
        return time.perf_counter() - start
    return call


def output_checks(cases: Dict[str, ba.Case]) -> Dict[str, Any]:
    r"""Per method, whether its output is finite, and its shape (``[N,
    C]``)."""
    import torch
    checks = {}
    for name, case in cases.items():
        with torch.no_grad():
            out = case.forward()
        checks[name] = {'finite': bool(torch.isfinite(out).all()),
                        'shape': list(out.shape)}
    return checks


def attention_row(batch: Any, nested: List[Any], channels: int,
                  threads: int, warmup: int, rounds: int,
                  device: Any = 'cpu') -> Dict[str, Any]:
    r"""Median forward+backward ms of every method, interleaved."""
    cases, hsa = attention_cases(batch, channels, device)
    calls: Dict[str, Call] = {m: forward_backward(cases[m], device)
                              for m in METHODS + [TORCH_PAIRS] if m in cases}
    calls['hsa_conv_fresh'] = fresh_hsa_conv(nested, hsa, cases['hsa_conv'],
                                             device)
    row: Dict[str, Any] = {'channels': channels, 'heads': HEADS,
                           'head_dim': channels // HEADS, 'threads': threads,
                           'rounds': rounds,
                           'output': output_checks(cases)}
    row.update(_median_fields(interleaved(calls, warmup, rounds)))
    row['first_call_extra_ms'] = row['hsa_conv_fresh_ms'] - \
        row['hsa_conv_ms']
    for peer in PEERS:
        row[f'hsa_conv_over_{peer}'] = row['hsa_conv_ms'] / row[f'{peer}_ms']
    if TORCH_PAIRS in calls:
        row['torch_pairs_over_fused'] = row[f'{TORCH_PAIRS}_ms'] / \
            row['hsa_conv_ms']
    return row


def shared_cpu_rows(batch: Any, args: argparse.Namespace
                    ) -> List[Dict[str, Any]]:
    r"""Per number of competing processes and thread count, the median
    forward+backward ms of HSAConv and TransformerConv at the first size,
    interleaved, with the busy processes running."""
    import torch
    rows = []
    channels = args.channels[0]
    for load in args.competing:
        for threads in args.threads:
            torch.set_num_threads(threads)
            torch.manual_seed(args.seed)
            gc.collect()
            cases, _ = attention_cases(batch, channels, args.device)
            calls: Dict[str, Call] = {
                m: forward_backward(cases[m], args.device)
                for m in SHARED_CPU_METHODS}
            with ba.competing_processes(load, SHARED_CPU_LIFETIME):
                row = _median_fields(interleaved(calls, args.warmup,
                                                 args.rounds))
            row.update(competing=load, threads=threads, channels=channels)
            rows.append(row)
            print(f"{load} competing process(es), {threads} thread(s): " +
                  ', '.join(f"{m} {row[f'{m}_ms']:.1f} ms"
                            for m in SHARED_CPU_METHODS), flush=True)
    return add_thread_ratios(rows)


def add_thread_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""Adds HSAConv / TransformerConv and, per method, its time over its
    one-thread time under the same load."""
    one = {r['competing']: r for r in rows if r['threads'] == 1}
    for r in rows:
        r['hsa_conv_over_transformer_conv'] = \
            r['hsa_conv_ms'] / r['transformer_conv_ms']
        for m in SHARED_CPU_METHODS:
            base = one.get(r['competing'])
            r[f'{m}_over_one_thread'] = None if base is None else \
                r[f'{m}_ms'] / base[f'{m}_ms']
    return rows


def format_shared_cpu(rows: List[Dict[str, Any]],
                      markdown: bool = False) -> str:
    r"""The table of :func:`shared_cpu_rows`."""
    head = ['competing processes', 'threads', 'HSAConv ms',
            'TransformerConv ms', 'HSAConv / TransformerConv',
            'HSAConv / its 1 thread', 'TransformerConv / its 1 thread']

    def ratio(value: Optional[float]) -> str:
        return '-' if value is None else f'{value:.2f}x'
    body = [[str(r['competing']), str(r['threads']),
             f"{r['hsa_conv_ms']:.1f}", f"{r['transformer_conv_ms']:.1f}",
             ratio(r['hsa_conv_over_transformer_conv']),
             ratio(r['hsa_conv_over_one_thread']),
             ratio(r['transformer_conv_over_one_thread'])] for r in rows]
    return ba.grid(head, body, markdown, left=0)


def add_per_batch(row: Dict[str, Any], costs: Dict[str, Any]):
    r"""What one batch costs HSA beyond the layer's steady state, and the
    ratios with it included."""
    row['per_batch_ms'] = (costs['collate_added_ms'] + costs['hierarchy_ms'] +
                           row['first_call_extra_ms'])
    total = row['hsa_conv_ms'] + row['per_batch_ms']
    for peer in PEERS:
        row[f'hsa_conv_per_batch_over_{peer}'] = total / row[f'{peer}_ms']


def evaluate_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""Per peer, size and thread count: ``PASS`` when HSAConv's
    forward+backward over the peer's is at most its bound, else ``FAIL``;
    ``N/A`` when no row was measured."""
    targets = []
    for peer, bound in TARGETS.items():
        desc = (f'HSAConv at most {bound:g}x {LABELS[peer]}, '
                f'forward+backward')
        if not rows:
            targets.append({'description': desc, 'peer': peer,
                            'bound': bound, 'status': 'N/A'})
        for r in rows:
            ratio = r[f'hsa_conv_over_{peer}']
            targets.append({
                'description': desc, 'peer': peer, 'bound': bound,
                'channels': r['channels'], 'threads': r['threads'],
                'ratio': ratio,
                'status': 'PASS' if ratio <= bound else 'FAIL',
                'detail': f"{r['channels']} channels, {r['threads']} "
                          f"thread(s): {r['hsa_conv_ms']:.1f} ms / "
                          f"{r[f'{peer}_ms']:.1f} ms = {ratio:.2f}x "
                          f"(needs <= {bound:g}x)"})
    return targets


def _torch_pairs_cell(row: Dict[str, Any]) -> str:
    if 'torch_pairs_over_fused' not in row:
        return '-'
    return (f"{row[f'{TORCH_PAIRS}_ms']:.1f} "
            f"({row['torch_pairs_over_fused']:.2f}x)")


def format_tables(rows: List[Dict[str, Any]], costs: List[Dict[str, Any]],
                  markdown: bool = False) -> str:
    r"""The attention table (ms and ratios per size and thread count) and
    the table of HSA's per-batch costs (per thread count)."""
    head = (['channels', 'threads'] + [f'{LABELS[m]} ms' for m in METHODS] +
            [f'HSAConv / {LABELS[p]} (<= {TARGETS[p]:g})' for p in PEERS] +
            ['HSA per-batch ms'] +
            [f'(HSAConv + per-batch) / {LABELS[p]}' for p in PEERS] +
            ['HSAConv, pairs on PyTorch ops ms (/ fused)'])
    body = [[str(r['channels']), str(r['threads'])] +
            [f"{r[f'{m}_ms']:.1f}" for m in METHODS] +
            [f"{r[f'hsa_conv_over_{p}']:.2f}x" for p in PEERS] +
            [f"{r['per_batch_ms']:.1f}"] +
            [f"{r[f'hsa_conv_per_batch_over_{p}']:.2f}x" for p in PEERS] +
            [_torch_pairs_cell(r)]
            for r in rows]
    cost_head = ['threads', 'PyG collate ms', 'collate NestedSignal ms',
                 'collate added ms', 'batch.hierarchy ms',
                 'layout + pair pattern ms',
                 'MoleculeHierarchy ms per batch', 'per molecule ms']
    cost_body = [[str(c['threads'])] + [f'{c[k]:.2f}' for k in (
        'plain_collate_ms', 'nested_collate_ms', 'collate_added_ms',
        'hierarchy_ms', 'layout_ms', 'build_ms', 'build_per_molecule_ms')]
        for c in costs]
    return (ba.grid(head, body, markdown, left=0) + '\n\n' +
            ba.grid(cost_head, cost_body, markdown, left=0))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-size', type=int, default=None,
                   help=f'molecules in the batch (default: {BATCH_SIZE})')
    p.add_argument('--channels', type=int, nargs='+', default=CHANNELS,
                   help='channels, multiples of 4 (default: 64 256)')
    p.add_argument('--device', type=ba.device_arg, default='cpu',
                   help="where the layers run: 'cpu' or a CUDA GPU "
                        "(default: cpu)")
    p.add_argument('--threads', type=int, nargs='+', default=None,
                   help='CPU thread counts to run with (default: 1 2 on '
                        'the CPU; the current count on an accelerator)')
    p.add_argument('--rounds', type=int, default=None,
                   help=f'timed rounds (default: {ROUNDS})')
    p.add_argument('--warmup', type=int, default=None,
                   help=f'untimed rounds first (default: {WARMUP})')
    p.add_argument('--build-rounds', type=int, default=None,
                   help=f'timed MoleculeHierarchy passes (default: '
                        f'{BUILD_ROUNDS})')
    p.add_argument('--competing', type=int, nargs='*', default=[],
                   help='also run HSAConv and TransformerConv at the first '
                        'size with this many busy processes (e.g. 1 2; '
                        'default: none)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true',
                   help=f'{QUICK_BATCH} molecules, one round')
    p.add_argument('--json', '--out', dest='out', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    args = p.parse_args(argv)
    if any(n < 0 for n in args.competing):
        p.error('--competing takes counts of processes, 0 or more')
    if args.competing and args.device != 'cpu':
        p.error('--competing measures a shared CPU: run it with --device cpu')
    bad = [c for c in args.channels if c < HEADS or c % HEADS]
    if bad:
        p.error(f'--channels must be positive multiples of {HEADS}, got '
                f'{bad[0]}')
    return with_defaults(args)


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    r"""Fills in the options left unset, which depend on ``--quick`` and
    ``--device``."""
    args.batch_size = args.batch_size or (QUICK_BATCH if args.quick
                                          else BATCH_SIZE)
    defaults = (1, 1, 1) if args.quick else (ROUNDS, WARMUP, BUILD_ROUNDS)
    for name, default in zip(('rounds', 'warmup', 'build_rounds'), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.threads is None:
        import torch
        args.threads = THREADS if torch.device(args.device).type == 'cpu' \
            else [torch.get_num_threads()]
    if args.out is None:
        suffix = '_quick' if args.quick else ''
        kind = args.device.split(':')[0]
        args.out = ba.RESULTS_DIR / f'bench_small_graphs_{kind}{suffix}.json'
    return args


def batch_info(plain: List[Any], batch: Any) -> Dict[str, Any]:
    sizes = [data.num_nodes for data in plain]
    hierarchy = batch.hierarchy
    return {'molecules': len(plain), 'atoms': batch.num_nodes,
            'directed_bonds': batch.edge_index.size(1),
            'atoms_per_molecule': {'min': min(sizes), 'max': max(sizes),
                                   'mean': sum(sizes) / len(sizes)},
            'dense_padded_atoms': len(sizes) * max(sizes),
            'tree_nodes': hierarchy.num_nodes, 'depth': hierarchy.depth}


def run_config(args: argparse.Namespace,
               info: Dict[str, Any]) -> Dict[str, Any]:
    r"""The run's settings and what each method and column measures."""
    from hsa_geo.functional.fused_pair_kernels import fused_pairs_variant
    return {'commit': ba.source_commit(), 'smiles': bc.smiles_path(),
            'selection': 'the first parsable SMILES, in file order',
            'batch': info, 'channels': args.channels,
            'device': args.device, 'heads': HEADS,
            'threads': args.threads,
            'rounds': args.rounds, 'warmup': args.warmup,
            'build_rounds': args.build_rounds, 'seed': args.seed,
            'competing': args.competing,
            'shared_cpu': 'with N busy-loop Python processes started '
                          'before and killed after each row: HSAConv and '
                          'TransformerConv at the first size, interleaved',
            'methods': LABELS,
            'fused_pairs_variant': fused_pairs_variant(),
            TORCH_PAIRS: 'HSAConv with the pair list on PyTorch operations '
                         '(fused_pairs(False)), interleaved with the rest; '
                         'absent where the fused kernels are not built',
            'gps_dense_attention': 'GPSConv(C, None, heads=4, '
            "attn_type='multihead').attn as GPSConv.forward calls "
            'it: to_dense_batch, MultiheadAttention with '
            'key_padding_mask=~mask, need_weights=False, h[mask]; '
            'no MPNN, residual, norms or MLP',
            'timing': 'forward+backward, loss out.sum(), x and '
                      'parameters requiring grad; methods '
                      'interleaved round by round (reversed every '
                      'other round); median over rounds after '
                      'warm-up rounds; perf_counter (after '
                      'torch.cuda.synchronize on a GPU)',
            'per_batch': 'collate added (NestedSignal collate minus '
                         'plain collate) + first batch.hierarchy + '
                         'first-call extra (first HSAConv '
                         'forward+backward on a fresh hierarchy '
                         'minus the steady state); collate and '
                         'hierarchy run on the CPU wherever the '
                         'layers run; layout: the first '
                         'hierarchy.layout and pair pattern of a '
                         'fresh batch, timed alone (part of the '
                         'first-call extra, not added again)'}


def measure_all(args: argparse.Namespace, plain: List[Any],
                nested: List[Any], batch: Any
                ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    r"""Per thread count, the per-batch costs and the attention row of
    every size: ``(rows, costs)``."""
    import torch
    rows, costs = [], []
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(args.seed)
        gc.collect()  # not inside the timed rounds
        cost = batch_costs(plain, nested, args.warmup, args.rounds,
                           args.build_rounds)
        costs.append(dict(threads=threads, **cost))
        for channels in args.channels:
            gc.collect()
            row = attention_row(batch, nested, channels, threads,
                                args.warmup, args.rounds, args.device)
            add_per_batch(row, cost)
            rows.append(row)
            print(f"{channels} channels, {threads} thread(s): " + ', '.join(
                f"{m} {row[f'{m}_ms']:.1f} ms" for m in METHODS), flush=True)
    return rows, costs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    from torch_geometric.data import Batch
    machine = ba.machine_info(args.device, max(args.threads))
    where = machine.get('gpu', args.device)
    ba.announce(f"bench_small_graphs on {where} ({machine['cpu']}; "
                f"{machine['cores']} cores), torch {machine['torch']}, "
                f"torch_geometric {machine['torch_geometric']}", machine)
    plain, nested, _ = bc.load_molecules(args.batch_size)
    batch = Batch.from_data_list(nested)
    info = batch_info(plain, batch)
    print(f"{info['molecules']} molecules, {info['atoms']:,} atoms, "
          f"{info['directed_bonds']:,} directed bonds, "
          f"{info['tree_nodes']:,} tree nodes", flush=True)
    rows, costs = measure_all(args, plain, nested, batch)
    shared = shared_cpu_rows(batch, args)
    targets = evaluate_targets(rows)
    machine['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    ba.write_json(args.out, {
        'benchmark': 'bench_small_graphs',
        'created': ba.timestamp(),
        'machine': machine, 'config': run_config(args, info),
        'results': rows, 'per_batch_costs': costs, 'targets': targets,
        'shared_cpu': shared,
        'wall_s': time.perf_counter() - start,
    })
    print()
    print(format_tables(rows, costs))
    if shared:
        print('\n' + format_shared_cpu(shared))
    for target in targets:
        print(f"[{target['status']}] {target['description']}: "
              f"{target.get('detail', '')}")
    print(f'\nwrote {args.out}')
    tables = format_tables(rows, costs, markdown=True)
    if shared:
        tables += '\n\n' + format_shared_cpu(shared, markdown=True)
    ba.write_markdown(args.markdown, tables + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
