r"""Where the fused pair-list kernels stop paying: the HSA core on family
graphs of growing size, its pair list on the kernels or on PyTorch
operations.

What
----
The graphs of ``bench_family_graph.py`` (community structure, about 7.1
directed edges per node, the METIS tree of
:class:`hsa_geo.transforms.GraphHierarchy` with ``family_graph=True``) at
several sizes up to ogbn-arxiv's 169,343 nodes, and
:func:`hsa_geo.functional.hierarchical_attention` on random ``q, k, v``
``[N, 4, 64]`` over them, forward+backward, with the pair list

* ``kernels``: on the fused kernels whatever its length
  (``fused_pairs(True, max_products=...)`` lifts
  :data:`hsa_geo.functional.fused_pair_kernels.FUSED_PAIRS_LIMIT`);
* ``torch``: on PyTorch operations (``fused_pairs(False)``);

each at every thread count (both split their work among the threads).
Each row reports the list's length in products ``P' H D`` per pass, the
unit of the limit. The ratio ``kernels / torch`` per size and thread count
says where the limit belongs; the table marks the sizes the default limit
sends to the kernels.

How
---
One fresh subprocess per row, the timing and memory machinery of
``bench_attention.py`` (warm-up, then the median of several calls). A
process's time moves by tens of per cent from one process to the next on a
VM (where its fresh memory lands, what the page faults cost then), so every
row runs in :data:`ROUNDS` processes, the two modes alternating, and the
ratio is that of the medians over the rounds.

Usage::

    python benchmarks/bench_pair_kernels.py
    python benchmarks/bench_pair_kernels.py --quick   # two small sizes
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared timing and memory code)
import bench_family_graph as bf  # noqa: E402  (the graphs and trees)

SIZES = [2000, 10000, 42000, bf.NUM_NODES]
QUICK_SIZES = [2000, 5000]
ROUNDS = 3
EDGES_PER_NODE = bf.NUM_EDGES / bf.NUM_NODES
MODES = ['kernels', 'torch']
NO_LIMIT = 2**62


def build(mode: str, nodes: int, device: Any) -> ba.Case:
    r"""The HSA core on the family-graph tree of a graph of :obj:`nodes`
    nodes, its pair list on the kernels or on PyTorch operations."""
    from hsa_geo.functional.fused_pair_kernels import fused_pairs
    case = bf.build('hsa_core_family', nodes,
                    int(nodes * EDGES_PER_NODE), device, True)
    forward = case.forward
    q = case.grad_leaves[0]
    heads, channels = q.size(1), q.size(2)

    def run():
        with fused_pairs(mode == 'kernels', max_products=NO_LIMIT):
            return forward()
    case.info['pair_list_products'] = case.info['pair_list_pairs'] * \
        heads * channels
    return ba.Case(run, case.grad_leaves, case.info)


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    row: Dict[str, Any] = {'method': args.mode, 'n': args.nodes,
                           'device': args.device}
    return ba.measure_case(
        row, lambda dev: build(args.mode, args.nodes, dev), args.device,
        False, ba.import_hsa_geo, args.threads, args.min_time,
        args.max_repeats, args.long_run, args.seed)


def run_in_subprocess(mode: str, nodes: int, threads: int,
                      args: argparse.Namespace) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
           '--mode', mode, '--nodes', str(nodes), '--threads',
           str(threads)] + ba.worker_arguments(args)
    return ba.run_command(cmd, {'method': mode, 'n': nodes,
                                'device': args.device,
                                'threads': threads}, args.timeout)


def compare(rows: List[Dict[str, Any]], limit: int) -> List[Dict]:
    r"""Per size and thread count: the list's products, both times and
    ``kernels / torch``, and whether the default limit takes the
    kernels."""
    out = []
    for key in sorted({(r['n'], r['threads']) for r in rows}):
        ok = [r for r in rows
              if (r['n'], r['threads']) == key and r['status'] == 'ok']
        times = {m: [r['fwdbwd_ms'] for r in ok if r['method'] == m]
                 for m in MODES}
        if not all(times.values()):
            continue
        kernels, torch = (statistics.median(times[m]) for m in MODES)
        # Per round: the rounds where both modes ran (a failed row drops
        # its round, not the pairing of the others).
        by_round = {m: {r.get('round', 0): r['fwdbwd_ms'] for r in ok
                        if r['method'] == m} for m in MODES}
        paired = sorted(set(by_round['kernels']) & set(by_round['torch']))
        products = ok[0]['pair_list_products']
        out.append({'n': key[0], 'threads': key[1], 'products': products,
                    'kernels_ms': kernels, 'torch_ms': torch,
                    'kernels_rounds_ms': [by_round['kernels'][i]
                                          for i in paired],
                    'torch_rounds_ms': [by_round['torch'][i]
                                        for i in paired],
                    'ratio': kernels / torch,
                    'default_takes_kernels': products <= limit})
    return out


def format_table(comparison: List[Dict], markdown: bool = False) -> str:
    head = ['nodes', 'threads', "products P' H D", 'kernels fwd+bwd ms',
            'PyTorch ops fwd+bwd ms', 'kernels / PyTorch ops',
            'per round', 'default limit']

    def rounds(c: Dict) -> str:
        return ', '.join(f'{k / t:.2f}' for k, t in
                         zip(c['kernels_rounds_ms'], c['torch_rounds_ms']))
    body = [[f"{c['n']:,}", str(c['threads']), f"{c['products']:,}",
             f"{c['kernels_ms']:.0f}", f"{c['torch_ms']:.0f}",
             f"{c['ratio']:.2f}x", rounds(c),
             'kernels' if c['default_takes_kernels'] else 'PyTorch ops']
            for c in comparison]
    return ba.grid(head, body, markdown)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=None)
    p.add_argument('--threads', type=int, nargs='+', default=None)
    p.add_argument('--rounds', type=int, default=ROUNDS)
    ba.add_worker_arguments(p, max_repeats=5)
    p.add_argument('--quick', action='store_true',
                   help=f'{QUICK_SIZES} nodes, one repeat')
    p.add_argument('--mode', choices=MODES, help=argparse.SUPPRESS)
    p.add_argument('--nodes', type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.threads = args.threads[0]
        return args
    if args.quick:
        args.max_repeats, args.min_time, args.rounds = 1, 0.0, 1
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    args.threads = args.threads or sorted({1, ba.usable_cores()})
    args.out = args.out or ba.default_out(f'bench_pair_kernels_{args.device}',
                                          args.quick)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        ba.send_result(run_worker(args))
        return 0
    start = time.perf_counter()
    machine = ba.machine_info(args.device, max(args.threads))
    ba.announce(f"bench_pair_kernels on {args.device} ({machine['cpu']}; "
                f"{machine['cores']} cores), torch {machine['torch']}",
                machine)
    from hsa_geo.functional.fused_pair_kernels import (FUSED_PAIRS_LIMIT,
                                                       fused_pairs_variant)
    if fused_pairs_variant() is None:
        print('the fused kernels are not built here: nothing to compare')
        return 1
    rows = []
    for nodes in args.sizes:
        for threads in args.threads:
            for round_ in range(args.rounds):
                # Alternating which mode goes first.
                for mode in MODES[::1 if round_ % 2 == 0 else -1]:
                    rows.append(run_in_subprocess(mode, nodes, threads,
                                                  args))
                    r = rows[-1]
                    r['round'] = round_
                    print(f"{nodes:,} nodes, {threads} thread(s), {mode}: "
                          + (f"{r['fwdbwd_ms']:.0f} ms"
                             if r['status'] == 'ok' else r['status']),
                          flush=True)
    comparison = compare(rows, FUSED_PAIRS_LIMIT)
    ba.write_json(args.out, {
        'benchmark': 'bench_pair_kernels',
        'created': ba.timestamp(),
        'machine': machine,
        'config': {'commit': ba.source_commit(), 'sizes': args.sizes,
                   'threads': args.threads, 'rounds': args.rounds,
                   'edges_per_node': EDGES_PER_NODE,
                   'heads': ba.HEADS, 'head_dim': ba.HEAD_DIM,
                   'fused_pairs_variant': fused_pairs_variant(),
                   'fused_pairs_limit': FUSED_PAIRS_LIMIT,
                   'timing': ba.TIMING_NOTE, 'memory': ba.MEMORY_NOTE},
        'results': rows, 'comparison': comparison,
        'wall_s': time.perf_counter() - start,
    })
    table = format_table(comparison)
    print('\n' + table)
    if args.markdown:
        args.markdown.write_text(format_table(comparison, True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
