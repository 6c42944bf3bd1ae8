r"""HSAConv on a graph's cluster tree: nodes in the graph's order against
nodes in tree order (:class:`hsa_geo.transforms.TreeOrder`).

What
----
A generated graph with community structure (``community_graph`` of
``bench_family_graph.py``; 65,536 nodes by default, so that METIS with
branching 16 fills every family: 16 x 16 x 16 x 16) and 128 input channels;
:class:`hsa_geo.nn.HSAConv` (4 heads x 64) over the tree of
:class:`hsa_geo.transforms.GraphHierarchy` (``method='metis'``; a balanced
tree with shuffled leaves, via :meth:`hsa_geo.Hierarchy.from_parent`, when
pymetis is missing or with ``--tree synthetic``). Forward and
forward+backward time and peak memory, four variants:

* ``original`` / ``tree_order``: dense families, the nodes in the graph's
  order (the families of the leaves are gathered from scattered rows) or
  permuted by :class:`~hsa_geo.transforms.TreeOrder` (every family a block
  of consecutive rows: the fused leaf path);
* ``family_original`` / ``family_tree_order``: the same with the family
  graph (``family_graph=True``).

``fused`` says whether the layout has
:attr:`~hsa_geo.data.hierarchy.HierarchyLayout.leaf_blocks`; ``order_ms``
is what :class:`~hsa_geo.transforms.TreeOrder` costs, once per graph.

How
---
The machinery of ``bench_attention.py``: one fresh subprocess per variant
and round (one thread by default), warm-up then the median of several
calls, peak RSS over the baseline after imports; the loss is
``out.sum()``. The variants run back to back in every round (in reverse
order every other round); the table shows the median over the rounds and
the median of the per-round ratios tree order / original.

Usage::

    python benchmarks/bench_tree_order.py            # 65,536 nodes
    python benchmarks/bench_tree_order.py --quick    # 4,096 nodes
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared timing and memory code)
from bench_family_graph import community_graph  # noqa: E402

NUM_NODES = 65536  # 16**4: METIS fills every family of 16
EDGES_PER_NODE = 7  # about ogbn-arxiv's density
QUICK_NODES = 4096
IN_CHANNELS = 128
METHODS = ['original', 'tree_order', 'family_original', 'family_tree_order']
PAIRS = [('original', 'tree_order'), ('family_original', 'family_tree_order')]
TREES = ['metis', 'synthetic']


def synthetic_parent(n: int, seed: int = 0):
    r"""The balanced tree of branching :data:`ba.BRANCHING` over :obj:`n`
    leaves with randomly shuffled leaf ids: the graph's order knows nothing
    of the tree."""
    import torch
    parent = ba.balanced_hierarchy(n).parent
    g = torch.Generator().manual_seed(seed)
    parent[:n] = parent[:n][torch.randperm(n, generator=g)]
    return parent


def build(method: str, tree: str, n: int, device: Any) -> ba.Case:
    import torch
    ba.import_hsa_geo()
    from torch_geometric.data import Data

    from hsa_geo import Hierarchy, NestedSignal
    from hsa_geo.nn import HSAConv
    from hsa_geo.transforms import GraphHierarchy, TreeOrder
    family = method.startswith('family')
    edge_index = community_graph(n, n * EDGES_PER_NODE)
    data = Data(x=torch.randn(n, IN_CHANNELS), edge_index=edge_index)
    start = time.perf_counter()
    if tree == 'metis':
        signal = GraphHierarchy('metis', ba.BRANCHING, family)(data)
    else:
        h = Hierarchy.from_parent(synthetic_parent(n), n)
        if family:  # every sibling pair of the tree, self-pairs aside
            pairs = h.sibling_pairs
            h = Hierarchy.from_parent(h.parent, n,
                                      pairs[:, pairs[0] != pairs[1]])
        signal = NestedSignal.from_data(data, h)
    info: Dict[str, Any] = {'setup_ms': (time.perf_counter() - start) * 1e3,
                            'num_edges': edge_index.size(1)}
    if method.endswith('tree_order'):
        start = time.perf_counter()
        signal = TreeOrder()(signal)
        info['order_ms'] = (time.perf_counter() - start) * 1e3
    hierarchy = signal.hierarchy.to(device)
    info['layout_ms'] = ba.layout_ms(hierarchy)
    info['fused'] = hierarchy.layout.leaf_blocks is not None
    info['depth'] = hierarchy.depth
    x = signal.x.to(device).requires_grad_()
    conv = HSAConv(IN_CHANNELS, ba.HEAD_DIM, heads=ba.HEADS).to(device)
    return ba.Case(lambda: conv(x, hierarchy), [x] + list(conv.parameters()),
                   info)


def _preload():
    import torch_geometric.nn  # noqa: F401  (before the memory baseline)
    ba.import_hsa_geo()


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    row: Dict[str, Any] = {'method': args.method, 'n': args.nodes,
                           'tree': args.tree, 'device': args.device}
    return ba.measure_case(
        row, lambda dev: build(args.method, args.tree, args.nodes, dev),
        args.device, False, _preload, args.threads, args.min_time,
        args.max_repeats, args.long_run, args.seed)


def run_in_subprocess(method: str, args: argparse.Namespace) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
           '--method', method, '--tree', args.tree, '--nodes',
           str(args.nodes), '--threads', str(args.threads)] + \
        ba.worker_arguments(args)
    return ba.run_command(cmd, {'method': method, 'n': args.nodes,
                                'tree': args.tree, 'device': args.device},
                          args.timeout)


def summarize(rows: List[Dict]) -> List[Dict[str, Any]]:
    r"""Per variant: the median over the rounds; for a tree-order variant
    also the median of its per-round ratios to the original order."""
    by_method: Dict[str, List[Dict]] = {}
    for r in rows:
        if r['status'] == 'ok':
            by_method.setdefault(r['method'], []).append(r)
    baseline = {t: b for b, t in PAIRS}
    out = []
    for method in METHODS:
        ok = by_method.get(method)
        if not ok:
            continue
        s: Dict[str, Any] = {'method': method, 'rounds': len(ok),
                             'fused': ok[0]['fused']}
        for key in ('fwd_ms', 'fwdbwd_ms', 'fwdbwd_peak_mib', 'setup_ms'):
            s[key] = statistics.median(r[key] for r in ok)
        if 'order_ms' in ok[0]:
            s['order_ms'] = statistics.median(r['order_ms'] for r in ok)
        base = {b['round']: b
                for b in by_method.get(baseline.get(method), [])}
        for key in ('fwd_ms', 'fwdbwd_ms'):  # rounds where both ran
            ratios = [r[key] / base[r['round']][key] for r in ok
                      if r['round'] in base]
            s[key.replace('_ms', '_ratio')] = \
                statistics.median(ratios) if ratios else None
        out.append(s)
    return out


def format_table(summary: List[Dict], markdown: bool = False) -> str:
    head = ['variant', 'fused leaf path', 'fwd ms', 'fwd+bwd ms',
            'fwd ratio', 'fwd+bwd ratio', 'peak MiB', 'TreeOrder ms']

    def ratio(v):
        return '-' if v is None else f'{v:.2f}x'

    body = [[s['method'], 'yes' if s['fused'] else 'no', f"{s['fwd_ms']:.0f}",
             f"{s['fwdbwd_ms']:.0f}", ratio(s['fwd_ratio']),
             ratio(s['fwdbwd_ratio']), f"{s['fwdbwd_peak_mib']:.0f}",
             f"{s['order_ms']:.0f}" if 'order_ms' in s else '-']
            for s in summary]
    return ba.grid(head, body, markdown)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    have_metis = importlib.util.find_spec('pymetis') is not None
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nodes', type=int, default=None)
    p.add_argument('--tree', choices=TREES,
                   default='metis' if have_metis else 'synthetic')
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    ba.add_worker_arguments(p, max_repeats=7)
    p.add_argument('--quick', action='store_true',
                   help=f'{QUICK_NODES:,} nodes, one round, one repeat')
    p.add_argument('--method', choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.max_repeats, args.min_time, args.rounds = 1, 0.0, 1
    args.nodes = args.nodes or (QUICK_NODES if args.quick else NUM_NODES)
    args.out = args.out or ba.default_out(f'bench_tree_order_{args.device}',
                                          args.quick)
    return args


def measure_all(args: argparse.Namespace) -> List[Dict[str, Any]]:
    r"""Every variant in every round, each in a fresh subprocess, back to
    back (in reverse order every other round): one row per run."""
    rows = []
    for i in range(args.rounds):
        methods = args.methods if i % 2 == 0 else args.methods[::-1]
        for method in methods:
            row = run_in_subprocess(method, args)
            row['round'] = i
            rows.append(row)
            print(f"round {i}: {method}: {row['status']} "
                  f"{row.get('fwdbwd_ms', float('nan')):.0f} ms fwd+bwd",
                  file=sys.stderr, flush=True)
    return rows


def run_config(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The run's settings and what the timings and the memory measure."""
    return {'nodes': args.nodes, 'tree': args.tree,
            'edges_per_node': EDGES_PER_NODE,
            'in_channels': IN_CHANNELS, 'heads': ba.HEADS,
            'head_dim': ba.HEAD_DIM, 'branching': ba.BRANCHING,
            'threads': args.threads, 'rounds': args.rounds,
            'timing': ba.TIMING_NOTE, 'memory': ba.MEMORY_NOTE}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        ba.send_result(run_worker(args))
        return 0
    start = time.perf_counter()
    machine = ba.machine_info(args.device, args.threads)
    ba.announce(f"bench_tree_order on {args.device} ({machine['cpu']}; "
                f"{machine['cores']} cores, {args.threads} thread(s)), torch "
                f"{machine['torch']}: {args.nodes:,} nodes, {args.tree} tree, "
                f'{IN_CHANNELS} -> {ba.HEADS} heads x {ba.HEAD_DIM}', machine)
    rows = measure_all(args)
    summary = summarize(rows)
    ba.write_json(args.out, {
        'benchmark': 'bench_tree_order',
        'created': ba.timestamp(),
        'machine': machine,
        'config': run_config(args),
        'results': rows,
        'summary': summary,
        'wall_s': time.perf_counter() - start,
    })
    print()
    print(format_table(summary))
    for r in rows:
        if r['status'] != 'ok':
            print(f"{r['method']} (round {r['round']}): {r['status']}: "
                  f"{r.get('error', '')[:200]}")
    print(f'\nwrote {args.out}')
    ba.write_markdown(args.markdown,
                      format_table(summary, markdown=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
