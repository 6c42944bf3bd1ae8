r"""HSAConv with family graphs against TransformerConv and PyG's linear
global attentions on the same graph.

What
----
A graph of the size of ogbn-arxiv (169,343 nodes, about 1.2 million directed
edges; generated, with community structure, because nothing may be
downloaded here) and 128 input channels. Eight methods, forward and
forward+backward time and peak memory:

* ``hsa_conv_family``: :class:`hsa_geo.nn.HSAConv` (128 -> 4 heads x 64)
  over the METIS tree of :class:`hsa_geo.transforms.GraphHierarchy`
  (branching 16) with ``family_graph=True``: inside each family, attention
  flows only along the leaf edges (bottom families) or the coarsened edges
  (above);
* ``hsa_conv_dense``: the same tree with dense families;
* ``transformer_conv``: :class:`torch_geometric.nn.TransformerConv` (128 ->
  4 heads x 64) on the graph's edges;
* ``hsa_core_family`` and ``hsa_core_dense``: the HSA core alone,
  :func:`hsa_geo.functional.hierarchical_attention` on random ``q, k, v``
  ``[N, 4, 64]`` over the same two trees (no projections);
* ``sgformer_attention``:
  :class:`torch_geometric.nn.attention.SGFormerAttention` ``(128, heads=4,
  head_channels=64)``, the global attention of SGFormer: projections
  ``128 -> 4 x 64``, :math:`\tilde q, \tilde k` normalised to unit length,
  and weights :math:`\propto 1 + \tilde q_i^\top \tilde k_j` computed
  as :math:`(N v_i + \tilde q_i^\top \sum_j \tilde k_j v_j^\top) /
  (N + \tilde q_i^\top \sum_j \tilde k_j)`, the heads averaged (output
  ``[N, 64]``);
* ``polynormer_attention``:
  :class:`torch_geometric.nn.attention.PolynormerAttention` ``(128, heads=4,
  head_channels=64)``, the global attention of Polynormer: weights
  :math:`\propto \sigma(k_i)^\top \sigma(k_j)` (queries shared with the
  keys), then a layer norm, a gate :math:`W_h x + \beta` and an output
  layer ``256 -> 256`` with ReLU;
* ``gps_performer``: :class:`torch_geometric.nn.GPSConv` ``(256, None,
  heads=4, attn_type='performer')``, its global part alone (no local
  MPNN): Performer attention (``4 x 64`` heads, 266 random orthogonal ReLU
  features per head, :math:`D^{-1} \phi(Q) (\phi(K)^\top V)`) with its
  output projection, residual and batch norm, then the MLP ``256 -> 512 ->
  256``, residual and batch norm. GPSConv keeps its width, so its input is
  ``[N, 256]``.

The three PyG peers are linear attentions: every node attends to every
node (the context is the whole graph) with kernel weights, which
approximate no softmax exactly, in time :math:`O(N H D^2)`. HSA computes
exactly the hierarchical softmax of :math:`q, k, v` (docs/math.md): the
attention matrix closest in KL divergence to softmax attention among those
constant on the tree's blocks, restricted to the family graph's pairs if
one is given.

The tree is built once per worker, before timing (``setup_ms``), and so
is what the first call derives from it and caches, the layout and the
pattern of its pair list (``layout_ms``). Besides
time, each row reports how much of the graph each node receives context
from: the number of leaves ``j`` with ``Q[i, j] > 0``, computed exactly from
the tree and the family graph for HSA (for TransformerConv it is the
in-degree plus one, for the linear attentions all ``N`` nodes).

How
---
The timing and memory machinery of ``bench_attention.py`` (one fresh
subprocess per method, warm-up then median, peak RSS over the baseline after
imports); the loss is ``out.sum()`` for every method.

Targets, forward+backward: HSAConv with family graphs costs at most 0.5x
TransformerConv; the HSA core (either tree) costs at most SGFormer's
attention (whose time includes its three projections). And with the family
graph, the pairs the dynamic program scores (pair lists plus padded
tables) are at most twice the allowed pairs.

Usage::

    python benchmarks/bench_family_graph.py            # 169,343 nodes
    python benchmarks/bench_family_graph.py --quick    # 10,000 nodes
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared timing and memory code)

NUM_NODES = 169343  # ogbn-arxiv
NUM_EDGES = 1200000  # about ogbn-arxiv's 1,166,243 directed edges
QUICK_NODES, QUICK_EDGES = 10000, 70000
IN_CHANNELS = 128
COMMUNITY = 64  # nodes per planted community
P_IN = 0.8  # share of edges inside a community
GLOBAL_PEERS = ['sgformer_attention', 'polynormer_attention', 'gps_performer']
METHODS = ['hsa_conv_family', 'hsa_conv_dense', 'transformer_conv',
           'hsa_core_family', 'hsa_core_dense'] + GLOBAL_PEERS
LABELS = {
    'hsa_conv_family': 'HSAConv, family graph',
    'hsa_conv_dense': 'HSAConv, dense families',
    'transformer_conv': 'TransformerConv',
    'hsa_core_family': 'HSA core, family graph',
    'hsa_core_dense': 'HSA core, dense families',
    'sgformer_attention': 'SGFormerAttention',
    'polynormer_attention': 'PolynormerAttention',
    'gps_performer': 'GPSConv (performer, no MPNN)',
}
TARGET_RATIO = 0.5  # HSAConv (family graph) / TransformerConv, fwd+bwd
SCORED_RATIO = 2.0  # scored / allowed sibling pairs with the family graph
PEER_RATIO = 1.0  # HSA core / SGFormerAttention, fwd+bwd


def community_graph(num_nodes: int, num_edges: int, seed: int = 0):
    r"""An undirected graph (both directions stored, no self loops or
    duplicates) of about :obj:`num_edges` directed edges: nodes in shuffled
    communities of :data:`COMMUNITY`; a share :data:`P_IN` of the edges
    joins two nodes of one community, the rest two random nodes."""
    import torch
    from torch_geometric.utils import coalesce, remove_self_loops
    g = torch.Generator().manual_seed(seed)
    # Oversample a little: duplicates and self loops are removed.
    m = int(num_edges / 2 * 1.03)
    perm = torch.randperm(num_nodes, generator=g)  # community order
    pos = torch.empty_like(perm)
    pos[perm] = torch.arange(num_nodes)
    src = torch.randint(num_nodes, (m, ), generator=g)
    block = pos[src] // COMMUNITY * COMMUNITY
    size = (num_nodes - block).clamp(max=COMMUNITY)
    inside = perm[block + (torch.rand(m, generator=g) * size).long()]
    anywhere = torch.randint(num_nodes, (m, ), generator=g)
    dst = torch.where(torch.rand(m, generator=g) < P_IN, inside, anywhere)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    edge_index, _ = remove_self_loops(edge_index)
    return coalesce(edge_index, num_nodes=num_nodes)


def context_size(hierarchy) -> Any:
    r"""``[N]`` the number of leaves ``j`` with ``Q[i, j] > 0`` for every
    leaf ``i`` (itself included): a child ``a`` receives from every leaf
    under each sibling the family graph links it to, and every leaf from
    the siblings its ancestors reach."""
    import torch
    size = hierarchy.leaf_count.double()
    parent = hierarchy.parent
    reach = torch.zeros(hierarchy.num_nodes, dtype=torch.float64)
    edges = hierarchy.family_edge_index
    if edges is None:  # dense families: every sibling
        fam_size = torch.zeros_like(reach).index_add_(
            0, parent.clamp(min=0), size * (parent >= 0))
        reach = torch.where(parent >= 0, fam_size[parent.clamp(min=0)] - size,
                            reach)
    else:
        reach.index_add_(0, edges[0], size[edges[1]])
    total = reach.clone()  # summed from the root down
    for nodes in hierarchy.levels[1:]:
        total[nodes] += total[parent[nodes]]
    return total[:hierarchy.num_leaves] + 1


def scored_pairs(hierarchy) -> int:
    r"""The off-diagonal pairs the dynamic program scores: those of the
    pair list, and every entry of the padded tables."""
    layout = hierarchy.layout
    return layout.sparse.num_pairs + sum(
        b.num_families * b.width**2 for b in layout.buckets
        if b.width > 1 and not b.sparse)


def _stats(values) -> Dict[str, float]:
    values = values.double()
    return {'min': float(values.min()), 'mean': float(values.mean()),
            'max': float(values.max())}


def _tree(edge_index, num_nodes: int, family_graph: bool, device: Any,
          info: Dict[str, Any]):
    r"""The METIS tree of the graph on :obj:`device`; its build time and
    shape go to :obj:`info`."""
    ba.import_hsa_geo()
    from torch_geometric.data import Data

    from hsa_geo.transforms.graph_hierarchy import GraphHierarchy
    start = time.perf_counter()
    transform = GraphHierarchy(method='metis', branching=ba.BRANCHING,
                               family_graph=family_graph)
    signal = transform(Data(edge_index=edge_index.cpu(),
                            num_nodes=num_nodes))
    hierarchy = signal.hierarchy.to(device)
    info['setup_ms'] = (time.perf_counter() - start) * 1e3
    info['layout_ms'] = ba.layout_ms(hierarchy)
    info['num_tree_nodes'] = hierarchy.num_nodes
    info['depth'] = hierarchy.depth
    info['sibling_pairs'] = hierarchy.sibling_pairs.size(1)
    info['scored_pairs'] = scored_pairs(hierarchy)
    info['pair_list_pairs'] = hierarchy.layout.sparse.num_pairs
    if hierarchy.family_edge_index is not None:
        info['family_edges'] = hierarchy.family_edge_index.size(1)
    info['context'] = _stats(context_size(hierarchy.to('cpu')))
    return hierarchy


def _global_peer(method: str, num_nodes: int, device: Any,
                 grad: bool) -> ba.Case:
    r"""A linear global attention of PyG: every node attends to all nodes
    through a kernel feature map, so the context is the whole graph."""
    import torch
    from torch_geometric.nn import GPSConv
    from torch_geometric.nn.attention import (
        PolynormerAttention,
        SGFormerAttention,
    )
    channels = ba.CHANNELS if method == 'gps_performer' else IN_CHANNELS
    x = torch.randn(num_nodes, channels, device=device, requires_grad=grad)
    if method == 'gps_performer':  # global part only: no local MPNN
        module = GPSConv(ba.CHANNELS, None, heads=ba.HEADS,
                         attn_type='performer').to(device)
        forward = lambda: module(x, None)  # noqa: E731
    else:
        cls = (SGFormerAttention
               if method == 'sgformer_attention' else PolynormerAttention)
        module = cls(IN_CHANNELS, ba.HEADS, ba.HEAD_DIM).to(device)
        forward = lambda: module(x.unsqueeze(0))[0]  # noqa: E731
    info = {'context': _stats(torch.full((1, ), float(num_nodes)))}
    return ba.Case(forward, [x] + list(module.parameters()), info)


def build(method: str, num_nodes: int, num_edges: int, device: Any,
          grad: bool) -> ba.Case:
    import torch
    edge_index = community_graph(num_nodes, num_edges).to(device)
    info: Dict[str, Any] = {'num_edges': edge_index.size(1)}
    if method in GLOBAL_PEERS:
        case = _global_peer(method, num_nodes, device, grad)
        case.info.update(info)
        return case
    if method == 'transformer_conv':
        from torch_geometric.nn import TransformerConv
        x = torch.randn(num_nodes, IN_CHANNELS, device=device,
                        requires_grad=grad)
        conv = TransformerConv(IN_CHANNELS, ba.HEAD_DIM,
                               heads=ba.HEADS).to(device)
        deg = torch.bincount(edge_index[1], minlength=num_nodes) + 1
        info['context'] = _stats(deg)
        return ba.Case(lambda: conv(x, edge_index),
                       [x] + list(conv.parameters()), info)
    hierarchy = _tree(edge_index, num_nodes, method.endswith('_family'),
                      device, info)
    if method.startswith('hsa_core'):
        from hsa_geo.functional import hierarchical_attention
        q, k, v = (torch.randn(num_nodes, ba.HEADS, ba.HEAD_DIM,
                               device=device, requires_grad=grad)
                   for _ in range(3))
        return ba.Case(lambda: hierarchical_attention(q, k, v, hierarchy),
                       [q, k, v], info)
    from hsa_geo.nn import HSAConv
    x = torch.randn(num_nodes, IN_CHANNELS, device=device, requires_grad=grad)
    conv = HSAConv(IN_CHANNELS, ba.HEAD_DIM, heads=ba.HEADS).to(device)
    return ba.Case(lambda: conv(x, hierarchy), [x] + list(conv.parameters()),
                   info)


def _preload():
    import torch_geometric.nn  # noqa: F401  (before the memory baseline)
    ba.import_hsa_geo()


def run_worker(args: argparse.Namespace) -> Dict[str, Any]:
    row: Dict[str, Any] = {'method': args.method, 'n': args.nodes,
                           'device': args.device}
    return ba.measure_case(
        row, lambda dev: build(args.method, args.nodes, args.edges, dev,
                               True), args.device, False, _preload,
        args.threads, args.min_time, args.max_repeats, args.long_run,
        args.seed)


def run_in_subprocess(method: str, args: argparse.Namespace) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
           '--method', method, '--nodes', str(args.nodes), '--edges',
           str(args.edges), '--threads', str(args.threads)] + \
        ba.worker_arguments(args)
    return ba.run_command(cmd, {'method': method, 'n': args.nodes,
                                'device': args.device}, args.timeout)


def _target(rows: List[Dict], method: str, peer: str, bound: float,
            desc: str) -> Dict[str, Any]:
    n = rows[0]['n'] if rows else None
    a = ba.lookup(rows, method, n, 'fwdbwd_ms')
    b = ba.lookup(rows, peer, n, 'fwdbwd_ms')
    ratio = ba.ratio(a, b)
    if ratio is None:
        return {'description': desc, 'status': 'N/A', 'ratio': None}
    return {'description': desc, 'ratio': ratio,
            'status': 'PASS' if ratio <= bound else 'FAIL',
            'detail': f'{a:.0f} ms / {b:.0f} ms = {ratio:.2f}x '
                      f'(needs <= {bound:g}x)'}


def _scored_target(rows: List[Dict]) -> Dict[str, Any]:
    desc = (f'with the family graph, scored pairs at most {SCORED_RATIO:g}x '
            f'the allowed pairs')
    row = next((r for r in rows if r['method'] == 'hsa_core_family'
                and r['status'] == 'ok'), None)
    if row is None or 'family_edges' not in row:
        return {'description': desc, 'status': 'N/A', 'ratio': None}
    ratio = row['scored_pairs'] / max(row['family_edges'], 1)
    return {'description': desc, 'ratio': ratio,
            'status': 'PASS' if ratio <= SCORED_RATIO else 'FAIL',
            'detail': f"{row['scored_pairs']:,} / {row['family_edges']:,} = "
                      f'{ratio:.2f}x (needs <= {SCORED_RATIO:g}x)'}


def evaluate_target(rows: List[Dict]) -> List[Dict[str, Any]]:
    r"""The targets, each ``PASS``, ``FAIL`` or ``N/A`` (a method
    missing or failed), with the ratio of forward+backward times, and of
    scored to allowed pairs."""
    return [
        _target(rows, 'hsa_conv_family', 'transformer_conv', TARGET_RATIO,
                f'HSAConv with family graphs at most {TARGET_RATIO:g}x '
                f'TransformerConv on the same edges, forward+backward'),
        _scored_target(rows),
    ] + [
        _target(rows, method, 'sgformer_attention', PEER_RATIO,
                f'HSA core ({tree}) at most {PEER_RATIO:g}x SGFormer\'s '
                f'attention, forward+backward')
        for method, tree in [('hsa_core_dense', 'dense families'),
                             ('hsa_core_family', 'family graph')]
    ]


def format_table(rows: List[Dict], markdown: bool = False) -> str:
    head = ['method', 'fwd ms', 'fwd+bwd ms', 'peak MiB',
            'context per node (min / mean / max leaves)', 'tree setup s',
            'fwd+bwd / TransformerConv', 'fwd+bwd / SGFormer']
    n = rows[0]['n'] if rows else None
    peers = [ba.lookup(rows, m, n, 'fwdbwd_ms')
             for m in ['transformer_conv', 'sgformer_attention']]
    body = []
    for r in rows:
        if r['status'] != 'ok':
            body.append([LABELS.get(r['method'], r['method']), r['status'],
                         '', '', r.get('error', '')[:60], '', '', ''])
            continue
        c = r['context']
        setup = r.get('setup_ms')
        ratios = [ba.ratio(r['fwdbwd_ms'], p) for p in peers]
        body.append([LABELS[r['method']], f"{r['fwd_ms']:.0f}",
                     f"{r['fwdbwd_ms']:.0f}", f"{r['fwdbwd_peak_mib']:.0f}",
                     f"{c['min']:,.0f} / {c['mean']:,.0f} / {c['max']:,.0f}",
                     '-' if setup is None else f'{setup / 1e3:.1f}'] +
                    ['-' if x is None else f'{x:.2f}x' for x in ratios])
    return ba.grid(head, body, markdown)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nodes', type=int, default=None)
    p.add_argument('--edges', type=int, default=None)
    p.add_argument('--methods', nargs='+', default=METHODS, choices=METHODS)
    p.add_argument('--threads', type=int, default=ba.usable_cores())
    ba.add_worker_arguments(p, max_repeats=5)
    p.add_argument('--quick', action='store_true',
                   help=f'{QUICK_NODES:,} nodes, one repeat')
    p.add_argument('--method', choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.max_repeats, args.min_time = 1, 0.0
    args.nodes = args.nodes or (QUICK_NODES if args.quick else NUM_NODES)
    args.edges = args.edges or (QUICK_EDGES if args.quick else NUM_EDGES)
    args.out = args.out or ba.default_out(f'bench_family_graph_{args.device}',
                                          args.quick)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        ba.send_result(run_worker(args))
        return 0
    start = time.perf_counter()
    machine = ba.machine_info(args.device, args.threads)
    ba.announce(f"bench_family_graph on {args.device} ({machine['cpu']}; "
                f"{machine['cores']} cores), torch {machine['torch']}: "
                f"{args.nodes:,} nodes, ~{args.edges:,} edges, "
                f'{IN_CHANNELS} -> {ba.HEADS} heads x {ba.HEAD_DIM}', machine)
    rows = []
    try:
        from tqdm import tqdm
        methods = tqdm(args.methods, desc='bench_family_graph',
                       file=sys.stderr)
    except ImportError:
        methods = args.methods
    for method in methods:
        rows.append(run_in_subprocess(method, args))
    targets = evaluate_target(rows)
    payload = {
        'benchmark': 'bench_family_graph',
        'created': ba.timestamp(),
        'machine': machine,
        'config': {'commit': ba.source_commit(), 'nodes': args.nodes,
                   'edges': args.edges, 'in_channels': IN_CHANNELS,
                   'heads': ba.HEADS, 'head_dim': ba.HEAD_DIM,
                   'branching': ba.BRANCHING,
                   'community': COMMUNITY, 'p_in': P_IN,
                   'timing': ba.TIMING_NOTE, 'memory': ba.MEMORY_NOTE},
        'results': rows,
        'targets': targets,
        'wall_s': time.perf_counter() - start,
    }
    ba.write_json(args.out, payload)
    print()
    print(format_table(rows))
    for target in targets:
        print(f"\n[{target['status']}] {target['description']}\n         "
              f"{target.get('detail', '')}")
    print(f'\nwrote {args.out}')
    ba.write_markdown(args.markdown, format_table(rows, markdown=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
