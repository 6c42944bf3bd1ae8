r"""The HSA core on wide, deep and contended shapes.

What
----
:func:`hsa_geo.functional.hierarchical_attention` on ``q, k, v`` of shape
``[N, 4, 64]`` (float32), forward (under :func:`torch.no_grad`) and
forward+backward (loss ``out.sum()``), with peak memory, on three kinds of
input that the balanced trees of ``bench_attention.py`` do not cover:

* ``--case wide``: one very wide family. A flat tree (every leaf a child of
  one root) of N = 16,384 leaves against
  :func:`torch.nn.functional.scaled_dot_product_attention` on the same
  ``q, k, v`` as ``[1, 4, N, 64]`` (targets: HSA forward+backward at most
  1.5x SDPA's time, memory at its peak at most SDPA's); the same at
  N = 65,536, where HSA has to run at all; and a *paragraph* tree: a
  document root over paragraphs of 20,000, 500, 500 and 500 words
  (leaves), against SDPA over all 21,500 leaves. Besides, documents of
  about 20,000 words in paragraphs of 31, 127 and 500 words, against SDPA
  inside each paragraph (batched
  ``[P, 4, W, 64]``: the attention within paragraphs alone, a lower bound
  with nothing above the paragraphs); reported, no target.
* ``--case deep``: 8,000 leaves as (a) a caterpillar (every internal node
  has one leaf child and one internal child, the last two leaves: 7,999
  families, depth 7,999), (b) a balanced binary tree (7,999 families of two,
  the same number of sibling pairs; the reference), (c) a random recursive
  tree (:func:`random_recursive_parent`) and (d) the average-linkage
  dendrogram of Morgan fingerprints (Tanimoto distance) of the parsable
  molecules of RDKit's ``Data/NCI/first_5K.smi`` (4,991; at most 8,000),
  compared with a balanced binary tree of as many leaves. Target:
  caterpillar forward+backward at most 10x the balanced tree's.
* ``--case contention``: the balanced branching-16 tree of
  ``bench_attention.py`` over N = 65,536 leaves; the HSA forward and the
  QKV projection ``torch.nn.Linear(256, 768)`` forward, with one thread and
  with the default thread count (the usable cores), on an idle machine and
  with one and two competing CPU-bound processes (``while True: pass``,
  started before and killed after every measurement). Targets: HSA(default
  threads) / HSA(1 thread) at most 1.5 under every load, and HSA / QKV
  projection at most 2.

How
---
The machinery of ``bench_attention.py``: one fresh subprocess per row (so
peak memory is clean), one warm-up call, then the median of repeated calls
(after a warm-up longer than ``--long-run`` seconds, one timed call); the
peak is the resident set size over the one right after the imports. One more,
untimed forward+backward counts the *live tensor peak*: the most bytes of
tensor storage it creates and holds at once, counted at every operation
(:func:`bench_attention.live_tensor_peak_mib`), which the allocator's
caching and fragmentation do not blur, but which misses what a kernel
allocates inside itself: a column beside the peak, not a target. The
wide rows with a target against SDPA also get a *call peak*, the memory
target: in one more fresh worker, whose glibc maps every block of 64 KiB
and more on its own (``MALLOC_MMAP_THRESHOLD_``, so that a freed tensor
leaves the resident set at once), one forward+backward settles caches, and
the next one's resident set peak over its resident set at its start is
what the call itself holds at its peak, kernels' internal buffers
included; unlike the peak above, neither the one-off memory of a first
call (code pages, caches) nor the blocks the allocator happens to retain
count, so it does not vary from run to run. Each
phase is reported as soon as it is measured, so a backward that fails or
runs out of time keeps its forward. A worker's address space is capped at
``--memory-cap-gib`` above its size after the imports: a shape too large
for the machine fails in its own process instead of pressing on others.
Errors, refusals (the HSA core refuses family tables that cannot fit) and
timeouts become rows with ``status`` ``'error'`` or ``'timeout'``, and the
run goes on. ``--quick`` shrinks every size and runs the rows in this
process (peaks are then not clean).

Usage::

    python benchmarks/bench_shapes.py --case all \
        --markdown benchmarks/results/bench_shapes_cpu.md
    python benchmarks/bench_shapes.py --case deep --quick
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared timing and memory code)
from bench_collate import smiles_path  # noqa: E402

CASES = ['wide', 'deep', 'contention']
# Wide shapes: (tree, leaves or paragraph sizes, target kind).
WIDE = [('flat', [16384], 'vs_sdpa'), ('flat', [65536], 'runs'),
        ('paragraph', [20000, 500, 500, 500], 'vs_sdpa'),
        ('paragraph', [500] * 40, 'per_family'),
        ('paragraph', [127] * 157, 'per_family'),
        ('paragraph', [31] * 645, 'per_family')]
QUICK_WIDE = [('flat', [256], 'vs_sdpa'), ('flat', [512], 'runs'),
              ('paragraph', [200, 20, 20, 20], 'vs_sdpa'),
              ('paragraph', [40] * 8, 'per_family')]
DEEP_TREES = ['caterpillar', 'balanced_binary', 'random_recursive',
              'dendrogram']
DEEP_LEAVES, QUICK_DEEP_LEAVES = 8000, 64
CONTENTION_N, QUICK_CONTENTION_N = 65536, 256
LOADS, QUICK_LOADS = [0, 1, 2], [0, 1]

TARGET_WIDE_TIME = 1.5  # HSA / SDPA forward+backward
TARGET_WIDE_PEAK = 1.0  # HSA / SDPA forward+backward peak
TARGET_DEEP = 10.0  # caterpillar / balanced binary, forward+backward
TARGET_THREADS = 1.5  # HSA(default threads) / HSA(1 thread), forward
TARGET_PROJECTION = 2.0  # HSA forward / QKV projection forward

MORGAN_RADIUS, MORGAN_BITS = 2, 2048


# Trees ####################################################################


def flat_parent(n: int):
    r"""``[N + 1]``: every leaf a child of the root ``N``."""
    import torch
    return torch.cat([torch.full((n, ), n), torch.tensor([-1])])


def paragraph_parent(sizes: Sequence[int]):
    r"""A document root over one family of leaves (words) per paragraph:
    leaves ``0..N-1`` paragraph by paragraph, then the paragraphs, then the
    root."""
    import torch
    n, p = sum(sizes), len(sizes)
    words = torch.repeat_interleave(torch.arange(p), torch.tensor(sizes))
    return torch.cat([n + words, torch.full((p, ), n + p),
                      torch.tensor([-1])])


def caterpillar_parent(n: int):
    r"""A chain of two-child families: internal node ``N + j`` has leaf
    ``j`` and internal node ``N + j + 1`` as children; the last one, ``2N -
    2``, has the leaves ``N - 2`` and ``N - 1``. Depth :math:`N - 1`."""
    import torch
    j = torch.arange(n - 1)
    parent = torch.empty(2 * n - 1, dtype=torch.long)
    parent[:n - 1] = n + j
    parent[n - 1] = 2 * n - 2
    parent[n + 1:] = n + j[:-1]
    parent[n] = -1
    return parent


def balanced_binary_parent(n: int):
    r"""The complete binary tree over :obj:`n` leaves in heap order (node
    ``h`` has children ``2h + 1``, ``2h + 2``): :math:`N - 1` families of
    exactly two children, depth :math:`\lceil \log_2 N \rceil`. Heap nodes
    ``0..N-2`` are the internal nodes ``N..2N-2``, heap nodes ``N-1..2N-2``
    the leaves ``0..N-1``."""
    import torch
    heap = torch.arange(1, 2 * n - 1)
    node = torch.where(heap < n - 1, heap + n, heap - (n - 1))
    parent = torch.empty(2 * n - 1, dtype=torch.long)
    parent[node] = n + (heap - 1) // 2
    parent[n] = -1
    return parent


def random_recursive_parent(n: int, seed: int = 0):
    r"""A random recursive tree of :math:`N - 1` internal nodes with
    :obj:`n` leaves hung under them: internal node ``j >= 1`` attaches to an
    internal node drawn uniformly from ``0..j-1`` (node ``0`` is the root);
    every internal node without an internal child gets one leaf (so every
    node has a child), the remaining leaves go to internal nodes drawn
    uniformly. Leaves are numbered in the order of their parents."""
    import torch
    g = torch.Generator().manual_seed(seed)
    m = n - 1
    j = torch.arange(1, m)
    up = (torch.rand(m - 1, generator=g) * j).long()  # uniform in 0..j-1
    tips = torch.ones(m, dtype=torch.bool)
    tips[up] = False
    rest = n - int(tips.sum())
    hung = torch.cat([tips.nonzero().view(-1),
                      torch.randint(m, (rest, ), generator=g)]).sort().values
    return torch.cat([n + hung, torch.tensor([-1]), n + up])


def dendrogram_parent(limit: int):
    r"""The average-linkage (UPGMA) dendrogram of the Morgan fingerprints
    (radius 2, 2,048 bits) of the first :obj:`limit` parsable molecules of
    RDKit's ``Data/NCI/first_5K.smi`` under the Tanimoto (Jaccard)
    distance: merge ``j`` of :func:`scipy.cluster.hierarchy.linkage` is
    node ``N + j``. Returns the parents and the number of molecules."""
    import numpy as np
    import torch
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform
    RDLogger.DisableLog('rdApp.*')
    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    bits = []
    with open(smiles_path()) as f:
        for line in f:
            mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() \
                else None
            if mol is not None:
                bits.append(generator.GetFingerprintAsNumPy(mol))
            if len(bits) >= limit:
                break
    x = np.stack(bits).astype(np.float32)
    # Tanimoto through one product: scipy's pdist('jaccard') on 5,000
    # fingerprints takes minutes.
    common = x @ x.T
    union = x.sum(1)[:, None] + x.sum(1)[None, :] - common
    dist = 1.0 - np.divide(common, union, out=np.ones_like(common),
                           where=union > 0)
    np.fill_diagonal(dist, 0.0)
    merges = linkage(squareform(dist.astype(np.float64), checks=False),
                     method='average')
    n = len(bits)
    children = torch.from_numpy(merges[:, :2].astype(np.int64))
    parent = torch.full((2 * n - 1, ), -1, dtype=torch.long)
    parent[children.reshape(-1)] = \
        (n + torch.arange(n - 1)).repeat_interleave(2)
    return parent, n


def build_hierarchy(spec: Dict[str, Any], device: Any):
    r"""The :class:`~hsa_geo.data.Hierarchy` that :obj:`spec` names."""
    from hsa_geo.data import Hierarchy
    tree, n = spec['tree'], spec['n']
    if tree == 'balanced16':
        return ba.balanced_hierarchy(n, device)
    if tree == 'dendrogram':
        parent, n = dendrogram_parent(n)
    elif tree == 'paragraph':
        parent = paragraph_parent(spec['sizes'])
    elif tree == 'random_recursive':
        parent = random_recursive_parent(n, spec.get('seed', 0))
    else:
        parent = {'flat': flat_parent, 'caterpillar': caterpillar_parent,
                  'balanced_binary': balanced_binary_parent}[tree](n)
    return Hierarchy.from_parent(parent, n).to(device)


# Worker ###################################################################


def build_sdpa(n: int, device: Any, grad: bool) -> ba.Case:
    r"""SDPA on the ``q, k, v`` that HSA gets from the same seed, laid out
    as ``[1, H, N, D]``."""
    import torch.nn.functional as F
    q, k, v = (x.detach().transpose(0, 1).unsqueeze(0).contiguous()
               .requires_grad_(grad) for x in ba.leaf_qkv(n, device, False))
    return ba.Case(lambda: F.scaled_dot_product_attention(q, k, v),
                   [q, k, v])


def build_sdpa_per_family(sizes: Sequence[int], device: Any,
                          grad: bool) -> ba.Case:
    r"""SDPA inside each of the equal paragraphs :obj:`sizes`, on the
    ``q, k, v`` that HSA gets, laid out as ``[P, H, W, D]``."""
    import torch.nn.functional as F
    p, w = len(sizes), sizes[0]
    q, k, v = (x.detach().view(p, w, ba.HEADS, ba.HEAD_DIM).transpose(1, 2)
               .contiguous().requires_grad_(grad)
               for x in ba.leaf_qkv(p * w, device, False))
    return ba.Case(lambda: F.scaled_dot_product_attention(q, k, v),
                   [q, k, v])


def build(spec: Dict[str, Any], device: Any) -> ba.Case:
    r"""The :class:`bench_attention.Case` of one row: ``hsa`` over the
    named tree, ``sdpa`` or ``qkv_projection`` on as many leaves (``sdpa``
    inside each paragraph for the target ``'per_family'``)."""
    grad = not spec['forward_only']
    if spec['method'] == 'sdpa' and spec.get('target') == 'per_family':
        return build_sdpa_per_family(spec['sizes'], device, grad)
    if spec['method'] == 'sdpa':
        return build_sdpa(spec['n'], device, grad)
    if spec['method'] == 'qkv_projection':
        return ba.build_qkv_projection(spec['n'], device, grad)
    functional = ba.import_hsa_geo().functional
    start = time.perf_counter()
    h = build_hierarchy(spec, device)
    setup_ms = (time.perf_counter() - start) * 1e3
    q, k, v = ba.leaf_qkv(h.num_leaves, device, grad)
    return ba.Case(
        lambda: functional.hierarchical_attention(q, k, v, h), [q, k, v], {
            'setup_ms': setup_ms, 'num_leaves': h.num_leaves,
            'depth': h.depth, 'num_families': h.num_families,
            'sibling_pairs': h.num_sibling_pairs,
            'widest_family': h.max_branching})


def preload(spec: Dict[str, Any]):
    r"""Imports what the row needs, before the memory baseline."""
    import torch  # noqa: F401
    ba.import_hsa_geo()
    if spec.get('tree') == 'dendrogram':
        import rdkit.Chem  # noqa: F401
        import scipy.cluster.hierarchy  # noqa: F401


def cap_address_space(gib: float):
    r"""Caps this process's address space at :obj:`gib` GiB above its
    current size, so that an allocation beyond it fails here (an error row)
    instead of pressing the whole machine into its out-of-memory killer."""
    if gib <= 0:
        return
    with open('/proc/self/statm') as f:
        size = int(f.read().split()[0]) * os.sysconf('SC_PAGE_SIZE')
    limit = size + int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_case(spec: Dict[str, Any], args: argparse.Namespace,
             emit: Callable[[Dict], None] = lambda row: None) -> Dict:
    r"""Measures one row in this process: the forward, then (unless
    ``forward_only``) forward+backward, each with its peak memory;
    :obj:`emit` gets the row after every phase. Errors, memory refusals
    included, end the row with ``status`` ``'error'`` and keep the phases
    measured before them."""
    import torch
    row: Dict[str, Any] = dict(spec, status='error')
    timing = dict(min_time=args.min_time, max_repeats=args.max_repeats,
                  long_run=args.long_run)
    phase = 'setup'
    try:
        preload(spec)
        torch.set_num_threads(spec['threads'])
        torch.manual_seed(args.seed)
        meter = ba.MemoryMeter(torch.device(args.device))
        case = build(spec, args.device)
        row.update(case.info, memory_method=meter.method)
        if spec.get('call_peak'):
            phase = 'fwdbwd_call'
            row['fwdbwd_call_mib'] = call_peak_mib(case)
            row['status'] = 'ok'
            return row

        def forward():
            with torch.no_grad():
                out = case.forward()
            if 'output_finite' not in row:  # checked on the warm-up call
                row['output_finite'] = bool(torch.isfinite(out).all())

        sync = ba.synchronize(args.device)
        calls = [('fwd', forward)]
        if not spec['forward_only']:
            calls.append(('fwdbwd', lambda: forward_backward(case)))
        for phase, call in calls:
            meter.start_phase()
            measured = ba.measure(call, sync, **timing)
            row.update(ba.timing_fields(phase, measured, meter.peak_mib()))
            emit(row)
        if not spec['forward_only']:  # one more call, untimed
            phase = 'fwdbwd_live'
            row['fwdbwd_live_mib'] = ba.live_tensor_peak_mib(
                lambda: forward_backward(case))
        row['status'] = 'ok'
    except Exception as e:  # out of memory and refusals included
        row['error'] = f'{phase}: {type(e).__name__}: {e}'[:2000]
    return row


def clear_grads(case: ba.Case):
    for t in case.grad_leaves:
        t.grad = None


def forward_backward(case: ba.Case):
    r"""One forward+backward of :obj:`case` (loss ``out.sum()``) on fresh
    gradients."""
    clear_grads(case)
    case.forward().sum().backward()


# glibc maps every block of this size and more on its own (and unmaps it
# when freed) in the workers that measure the call peak.
CALL_PEAK_MMAP_THRESHOLD = 64 * 1024


def call_peak_mib(case: ba.Case) -> Optional[float]:
    r"""The resident set's growth during one untimed forward+backward over
    the resident set at its start, after one call that settles caches (in
    a worker whose glibc maps every block of
    :data:`CALL_PEAK_MMAP_THRESHOLD` and more on its own, so that a freed
    tensor leaves the resident set at once): what the call itself holds at
    its peak, the buffers kernels allocate inside themselves included, and
    neither the one-off memory of the first call (code pages, caches) nor
    the allocator's retained blocks. :obj:`None` without ``clear_refs``."""
    forward_backward(case)
    clear_grads(case)  # before the start is taken: the gradients are fresh
    if not ba.reset_peak_rss():
        return None
    start = ba.current_rss_bytes()
    forward_backward(case)
    return max(0.0, ba.peak_rss_bytes() - start) / ba.MIB


def worker_main(args: argparse.Namespace) -> int:
    spec = json.loads(args.spec)
    if args.device.split(':')[0] == 'cpu':  # (a GPU runtime maps far more)
        cap_address_space(args.memory_cap_gib)
    ba.send_result(run_case(spec, args, ba.send_result))
    return 0


# Orchestration ############################################################


def run_spec(spec: Dict[str, Any], args: argparse.Namespace) -> Dict:
    r"""One row, in a fresh worker process (in this one with
    ``--in-process``). A timeout keeps the phases the worker reported before
    it; a crash or kill (out of memory) becomes an ``'error'`` row."""
    start = time.perf_counter()
    if args.in_process:
        return dict(run_case(spec, args),
                    worker_wall_s=time.perf_counter() - start)
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
           '--spec', json.dumps(spec), '--memory-cap-gib',
           str(args.memory_cap_gib)] + ba.worker_arguments(args)
    env = dict(os.environ)
    if spec.get('call_peak'):
        env['MALLOC_MMAP_THRESHOLD_'] = str(CALL_PEAK_MMAP_THRESHOLD)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired as e:
        row = ba.read_result(e.stdout) or dict(spec)
        phase = 'fwdbwd' if 'fwd_ms' in row else 'fwd'
        return dict(row, status='timeout', worker_wall_s=args.timeout,
                    error=f'{phase}: no result within --timeout '
                    f'{args.timeout:g} s')
    row = ba.read_result(proc.stdout)
    if row is None or (row['status'] != 'ok' and 'error' not in row):
        why = (f'killed by signal {-proc.returncode}' if proc.returncode < 0
               else f'exit code {proc.returncode}')
        row = dict(row or spec, status='error',
                   error=f'worker {why}: {proc.stderr.strip()[-1500:]}')
    row['worker_wall_s'] = time.perf_counter() - start
    return row


# Cases ####################################################################


def spec_of(case: str, method: str, tree: Optional[str], n: int,
            threads: int, forward_only: bool = False, **extra) -> Dict:
    return dict(case=case, method=method, tree=tree, n=n, threads=threads,
                forward_only=forward_only, **extra)


def run_wide(args: argparse.Namespace, on_row: Callable) -> None:
    for tree, sizes, target in (QUICK_WIDE if args.quick else WIDE):
        extra = {'sizes': sizes} if tree == 'paragraph' else {}
        for method in ('hsa', 'sdpa'):
            spec = spec_of('wide', method, tree, sum(sizes), args.threads,
                           target=target, **extra)
            row = run_spec(spec, args)
            if target == 'vs_sdpa' and row['status'] == 'ok':
                peak = run_spec(dict(spec, call_peak=True), args)
                row['fwdbwd_call_mib'] = peak.get('fwdbwd_call_mib')
                row['call_peak_status'] = peak['status']
                if peak['status'] != 'ok':
                    row['call_peak_error'] = failure(peak)
            on_row(row)


def run_deep(args: argparse.Namespace, on_row: Callable) -> None:
    n = QUICK_DEEP_LEAVES if args.quick else DEEP_LEAVES
    for tree in DEEP_TREES:
        row = run_spec(spec_of('deep', 'hsa', tree, n, args.threads), args)
        on_row(row)
        leaves = row.get('num_leaves', n)
        if tree == 'dendrogram' and leaves != n:  # its own reference
            on_row(run_spec(spec_of('deep', 'hsa', 'balanced_binary',
                                    leaves, args.threads), args))


def run_contention(args: argparse.Namespace, on_row: Callable) -> None:
    n = QUICK_CONTENTION_N if args.quick else CONTENTION_N
    loads = QUICK_LOADS if args.quick else LOADS
    for load in loads:
        for method in ('hsa', 'qkv_projection'):
            for threads in sorted({1, args.threads}):
                spec = spec_of('contention', method, 'balanced16', n,
                               threads, forward_only=True, load=load)
                with ba.competing_processes(load, args.timeout + 60):
                    row = run_spec(spec, args)
                    row['load_average'] = [round(x, 2)
                                           for x in os.getloadavg()]
                on_row(row)


RUNNERS = {'wide': run_wide, 'deep': run_deep,
           'contention': run_contention}


# Summaries and targets ####################################################


def find(rows: List[Dict], **keys) -> Optional[Dict]:
    r"""The first row with these values."""
    return next((r for r in rows
                 if all(r.get(k) == v for k, v in keys.items())), None)


def value(row: Optional[Dict], key: str) -> Optional[float]:
    return None if row is None else row.get(key)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def target(case: str, name: str, description: str, measured: Optional[float],
           limit: Optional[float], missing: str = 'n/a',
           why: str = '') -> Dict:
    r"""``met`` / ``not met`` for ``measured <= limit`` (``met`` for any
    measurement without a limit); :obj:`missing`
    (``'n/a'`` or ``'not met'``) with :obj:`why` when it was not measured."""
    if measured is None:
        status = missing
    else:
        status = 'met' if limit is None or measured <= limit else 'not met'
    return {'case': case, 'name': name, 'description': description,
            'status': status, 'measured': measured, 'limit': limit,
            'shown': times(measured), 'why': why if measured is None else ''}


def failure(row: Optional[Dict]) -> str:
    if row is None:
        return 'not run'
    return f"{row['status']}: {row.get('error', '')}"[:300]


def wide_targets(rows: List[Dict]) -> List[Dict]:
    out = []
    for hsa in (r for r in rows if r['case'] == 'wide'
                and r['method'] == 'hsa'):
        name = f"{hsa['tree']} N={hsa['n']}"
        if hsa['target'] == 'per_family':
            continue  # reported in the table, no target
        if hsa['target'] == 'runs':
            ms = value(hsa, 'fwdbwd_ms') if hsa['status'] == 'ok' else None
            t = target('wide', f'{name} runs', f'{name}: HSA forward'
                       f'+backward runs', ms, None, 'not met',
                       failure(hsa))
            out.append(dict(t, shown=f'{num(ms)} ms'))
            continue
        sdpa = find(rows, case='wide', method='sdpa', tree=hsa['tree'],
                    n=hsa['n'])
        for key, limit, what in (('fwdbwd_ms', TARGET_WIDE_TIME, 'time'),
                                 ('fwdbwd_call_mib', TARGET_WIDE_PEAK,
                                  'peak memory')):
            # (a call peak of zero: nothing above the baseline's resolution)
            measured = ratio(value(hsa, key) or None, value(sdpa, key))
            missing, why = _why_unmeasured(hsa, sdpa, key)
            out.append(target('wide', f'{name} {what}', f'{name}: HSA '
                              f'forward+backward {what} <= {limit:g}x '
                              f'SDPA', measured, limit, missing, why))
    return out


def _why_unmeasured(hsa: Dict, sdpa: Optional[Dict], key: str
                    ) -> Tuple[str, str]:
    r"""The verdict and reason of a wide family's target on :obj:`key`
    without a ratio: ``not met`` where HSA (or its call-peak worker)
    failed or measured nothing, ``n/a`` where SDPA did."""
    if hsa['status'] != 'ok':
        return 'not met', f'HSA {failure(hsa)}'
    if key == 'fwdbwd_call_mib' and not hsa.get(key):
        return 'not met', 'HSA call peak: ' + hsa.get(
            'call_peak_error', 'not measured or zero')
    if sdpa is None or sdpa['status'] != 'ok':
        return 'n/a', f'SDPA {failure(sdpa)}'
    return 'n/a', 'SDPA call peak: ' + sdpa.get('call_peak_error',
                                                'not measured or zero')


def deep_reference(rows: List[Dict], row: Dict) -> Optional[Dict]:
    r"""The balanced binary tree with as many leaves as :obj:`row`."""
    return next((r for r in rows if r['case'] == 'deep'
                 and r['tree'] == 'balanced_binary' and r['status'] == 'ok'
                 and r.get('num_leaves') == row.get('num_leaves', row['n'])),
                None)


def deep_targets(rows: List[Dict]) -> List[Dict]:
    row = find(rows, case='deep', tree='caterpillar')
    if row is None:
        return []
    ref = deep_reference(rows, row)
    why = failure(row) if row['status'] != 'ok' else \
        f'balanced binary: {failure(ref)}'
    return [target('deep', 'caterpillar', f"caterpillar of {row['n']:,} "
                   f'leaves: forward+backward <= {TARGET_DEEP:g}x the '
                   f'balanced binary tree', ratio(value(row, 'fwdbwd_ms'),
                                                  value(ref, 'fwdbwd_ms')),
                   TARGET_DEEP, 'not met' if row['status'] != 'ok'
                   else 'n/a', why)]


def contention_cells(rows: List[Dict], load: int, threads: int) -> Dict:
    r"""The four forward times under one load and the three ratios."""
    def fwd(method: str, t: int) -> Optional[float]:
        return value(find(rows, case='contention', method=method, load=load,
                          threads=t, status='ok'), 'fwd_ms')
    out = {'hsa_1': fwd('hsa', 1), 'hsa_default': fwd('hsa', threads),
           'qkv_1': fwd('qkv_projection', 1),
           'qkv_default': fwd('qkv_projection', threads)}
    out['threads_ratio'] = ratio(out['hsa_default'], out['hsa_1'])
    out['projection_ratio_1'] = ratio(out['hsa_1'], out['qkv_1'])
    out['projection_ratio_default'] = ratio(out['hsa_default'],
                                            out['qkv_default'])
    return out


def contention_loads(rows: List[Dict]) -> List[int]:
    return sorted({r['load'] for r in rows if r['case'] == 'contention'})


def _contention_missing(rows: List[Dict], load: int,
                        hsa_threads: Sequence[int]) -> Tuple[str, str]:
    r"""``not met`` where an HSA row of a ratio failed or is missing (HSA
    could not run), else ``n/a`` (a projection's row failed)."""
    for t in hsa_threads:
        row = find(rows, case='contention', method='hsa', load=load,
                   threads=t)
        if row is None or row['status'] != 'ok':
            return 'not met', f'HSA with {t} thread(s): {failure(row)}'
    return 'n/a', 'a QKV projection row failed'


def contention_targets(rows: List[Dict], threads: int) -> List[Dict]:
    out = []
    for load in contention_loads(rows):
        c = contention_cells(rows, load, threads)
        who = f'{load} competing process(es)'
        out.append(target('contention', f'load {load}: threads',
                          f'{who}: HSA forward with {threads} threads <= '
                          f'{TARGET_THREADS:g}x with 1 thread',
                          c['threads_ratio'], TARGET_THREADS,
                          *_contention_missing(rows, load, (1, threads))))
        for t in sorted({1, threads}):
            key = 'projection_ratio_1' if t == 1 else \
                'projection_ratio_default'
            out.append(target('contention', f'load {load}: HSA/QKV {t}t',
                              f'{who}, {t} thread(s): '
                              f'HSA forward <= {TARGET_PROJECTION:g}x the '
                              f'QKV projection', c[key], TARGET_PROJECTION,
                              *_contention_missing(rows, load, (t, ))))
    return out


def evaluate_targets(rows: List[Dict], threads: int) -> List[Dict]:
    return (wide_targets(rows) + deep_targets(rows) +
            contention_targets(rows, threads))


# Tables ###################################################################


def num(x: Optional[float]) -> str:
    if x is None:
        return '-'
    return f'{x:.0f}' if x >= 100 else f'{x:.1f}' if x >= 10 else f'{x:.2f}'


def times(x: Optional[float]) -> str:
    return '-' if x is None else f'{x:.2f}x'


def cell(row: Optional[Dict], key: str) -> str:
    r"""A measured value, or why it is missing."""
    if row is None:
        return '-'
    if row.get(key) is not None:
        return num(row[key])
    return row['status'] if row['status'] != 'ok' else '-'


def marks(targets: List[Dict], prefix: str) -> str:
    r"""The status of every target whose name starts with :obj:`prefix`,
    after the rest of its name."""
    found = [f"{t['name'][len(prefix):]} {t['status']}".strip()
             for t in targets if t['name'].startswith(prefix)]
    return ', '.join(found) or '-'


def wide_table(rows: List[Dict], targets: List[Dict],
               markdown: bool) -> str:
    head = ['shape', 'N', 'widest family', 'HSA fwd ms', 'HSA fwd+bwd ms',
            'HSA call MiB', 'HSA peak MiB', 'HSA live MiB', 'SDPA fwd ms',
            'SDPA fwd+bwd ms', 'SDPA call MiB', 'SDPA peak MiB',
            'SDPA live MiB', 'time HSA/SDPA', 'call HSA/SDPA',
            'peak HSA/SDPA', 'live HSA/SDPA', 'targets']
    body = []
    for hsa in (r for r in rows if r['case'] == 'wide'
                and r['method'] == 'hsa'):
        sdpa = find(rows, case='wide', method='sdpa', tree=hsa['tree'],
                    n=hsa['n'])
        shape = wide_shape(hsa)
        body.append([
            shape, f"{hsa['n']:,}", str(max(hsa.get('sizes', [hsa['n']]))),
            *(cell(row, key) for row in (hsa, sdpa) for key in (
                'fwd_ms', 'fwdbwd_ms', 'fwdbwd_call_mib', 'fwdbwd_peak_mib',
                'fwdbwd_live_mib')),
            *(times(ratio(value(hsa, key), value(sdpa, key))) for key in
              ('fwdbwd_ms', 'fwdbwd_call_mib', 'fwdbwd_peak_mib',
               'fwdbwd_live_mib')),
            marks(targets, f"{hsa['tree']} N={hsa['n']} ")])
    return ba.grid(head, body, markdown)


def wide_shape(row: Dict) -> str:
    sizes = row.get('sizes')
    if sizes is None:
        return row['tree']
    if row['target'] == 'per_family':
        return f"{len(sizes)} paragraphs of {sizes[0]} (SDPA per paragraph)"
    return f"{row['tree']} {'+'.join(map(str, sizes))}"


def deep_table(rows: List[Dict], targets: List[Dict],
               markdown: bool) -> str:
    head = ['tree', 'leaves', 'families', 'depth', 'sibling pairs',
            'fwd ms', 'fwd+bwd ms', 'peak MiB', 'fwd / balanced',
            'fwd+bwd / balanced', 'target']
    body = []
    for row in (r for r in rows if r['case'] == 'deep'):
        ref = deep_reference(rows, row)
        body.append([
            row['tree'], f"{row.get('num_leaves', row['n']):,}",
            f"{row.get('num_families', '-')}", f"{row.get('depth', '-')}",
            f"{row.get('sibling_pairs', '-')}", cell(row, 'fwd_ms'),
            cell(row, 'fwdbwd_ms'), cell(row, 'fwdbwd_peak_mib'),
            times(ratio(value(row, 'fwd_ms'), value(ref, 'fwd_ms'))),
            times(ratio(value(row, 'fwdbwd_ms'), value(ref, 'fwdbwd_ms'))),
            marks(targets, row['tree']) if row['tree'] == 'caterpillar'
            else ''])
    return ba.grid(head, body, markdown)


def contention_table(rows: List[Dict], targets: List[Dict], threads: int,
                     markdown: bool) -> str:
    head = ['competing processes', 'HSA 1 thread ms',
            f'HSA {threads} threads ms', 'QKV 1 thread ms',
            f'QKV {threads} threads ms', f'HSA {threads}t / 1t',
            'HSA/QKV 1t', f'HSA/QKV {threads}t', 'targets']
    body = []
    for load in contention_loads(rows):
        c = contention_cells(rows, load, threads)
        body.append([str(load)] + [num(c[k]) for k in (
            'hsa_1', 'hsa_default', 'qkv_1', 'qkv_default')] + [
                times(c[k]) for k in ('threads_ratio', 'projection_ratio_1',
                                      'projection_ratio_default')] +
            [marks(targets, f'load {load}: ')])
    return ba.grid(head, body, markdown)


def failures(rows: List[Dict], case: str) -> List[str]:
    return [f"{r['method']} {r['tree']} N={r['n']:,}"
            f"{' load ' + str(r['load']) if 'load' in r else ''}"
            f"{' threads ' + str(r['threads'])}: {failure(r)}"
            for r in rows if r['case'] == case and r['status'] != 'ok']


def machine_line(machine: Dict[str, Any]) -> str:
    return (f"{machine['device']}: {machine['cpu']}, {machine['cores']} "
            f"cores, default {machine['threads']} threads, "
            f"{machine['memory_gib']} GiB; torch {machine['torch']}; load "
            f"average {machine['load_average_start']} at the start, "
            f"{machine.get('load_average_end', '-')} at the end")


def report(rows: List[Dict], targets: List[Dict], machine: Dict[str, Any],
           markdown: bool = False) -> str:
    r"""The machine, every case's table with its failed rows, then the
    targets."""
    threads = machine['threads']
    tables = {'wide': lambda: wide_table(rows, targets, markdown),
              'deep': lambda: deep_table(rows, targets, markdown),
              'contention': lambda: contention_table(rows, targets, threads,
                                                     markdown)}
    bullet = '- ' if markdown else '  '
    parts = [machine_line(machine), '']
    for case in CASES:
        if not any(r['case'] == case for r in rows):
            continue
        parts.append(f'{"### " if markdown else ""}{case}\n')
        parts.append(tables[case]())
        notes = failures(rows, case)
        if notes:
            parts += [''] + [bullet + note for note in notes]
        parts.append('')
    parts.append(f'{"### " if markdown else ""}targets\n')
    parts += [f"{bullet}[{t['status']}] {t['description']}: {t['shown']}"
              f"{' (' + t['why'] + ')' if t['why'] else ''}"
              for t in targets]
    return '\n'.join(parts) + '\n'


# Command line #############################################################


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--case', choices=CASES + ['all'], default='all')
    p.add_argument('--quick', action='store_true',
                   help='small sizes, one repeat, rows in this process')
    p.add_argument('--device', type=ba.device_arg, default='cpu')
    p.add_argument('--threads', type=int, default=None,
                   help='the default thread count (default: usable cores)')
    p.add_argument('--min-time', type=float, default=2.0)
    p.add_argument('--max-repeats', type=int, default=7)
    p.add_argument('--long-run', type=float, default=20.0)
    p.add_argument('--timeout', type=float, default=600.0,
                   help='seconds per row')
    p.add_argument('--memory-cap-gib', type=float, default=14.0,
                   help='address space a worker may add after its imports '
                   '(0: no cap)')
    p.add_argument('--in-process', action='store_true',
                   help='run the rows in this process (peaks not clean)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', '--out', dest='json', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--spec', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = args.threads or ba.usable_cores()
    if args.quick:
        # The warm-up call is the only sample.
        args.min_time, args.long_run, args.in_process = 0.0, 0.0, True
    if args.json is None:
        suffix = '_quick' if args.quick else ''
        args.json = ba.RESULTS_DIR / f'bench_shapes_{args.device}' \
            f'{suffix}.json'
    return args


def config_of(args: argparse.Namespace) -> Dict[str, Any]:
    return {
        'cases': CASES if args.case == 'all' else [args.case],
        'quick': args.quick, 'heads': ba.HEADS, 'head_dim': ba.HEAD_DIM,
        'dtype': 'float32', 'wide': QUICK_WIDE if args.quick else WIDE,
        'deep_leaves': QUICK_DEEP_LEAVES if args.quick else DEEP_LEAVES,
        'dendrogram': f'average linkage, Tanimoto distance of Morgan '
        f'fingerprints (radius {MORGAN_RADIUS}, {MORGAN_BITS} bits) of '
        f'RDKit Data/NCI/first_5K.smi',
        'contention_n': QUICK_CONTENTION_N if args.quick else CONTENTION_N,
        'loads': QUICK_LOADS if args.quick else LOADS,
        'threads': args.threads, 'min_time_s': args.min_time,
        'max_repeats': args.max_repeats, 'long_run_s': args.long_run,
        'timeout_s': args.timeout, 'memory_cap_gib': args.memory_cap_gib,
        'in_process': args.in_process, 'seed': args.seed,
        'commit': ba.source_commit(),
        'timing': ba.TIMING_NOTE, 'memory': ba.MEMORY_NOTE,
        'live_memory': 'fwdbwd_live_mib: the most bytes of tensor storage '
                       'that one untimed forward+backward creates and holds '
                       'at once (its gradients included, inputs excluded), '
                       'counted at every dispatched operation',
        'call_memory': 'fwdbwd_call_mib (the peak memory target): in a '
                       'fresh worker with MALLOC_MMAP_THRESHOLD_='
                       f'{CALL_PEAK_MMAP_THRESHOLD}, after one settling '
                       'call, the resident set peak of one '
                       'forward+backward over the resident set at its '
                       'start',
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    start = time.perf_counter()
    machine = ba.machine_info(args.device, args.threads)
    ba.announce(f"bench_shapes on {args.device} ({machine['cpu']}; "
                f"{machine['cores']} cores, default {args.threads} threads), "
                f"torch {machine['torch']}, load average "
                f"{machine['load_average_start']}", machine)
    rows: List[Dict] = []
    payload = {'benchmark': 'bench_shapes', 'created': ba.timestamp(),
               'machine': machine,
               'config': config_of(args), 'complete': False}

    def on_row(row: Dict):
        rows.append(row)
        print(f"{row['case']} {row['method']} {row['tree']} N={row['n']:,}"
              f" threads={row['threads']}: {row['status']} fwd "
              f"{num(row.get('fwd_ms'))} ms, fwd+bwd "
              f"{num(row.get('fwdbwd_ms'))} ms", file=sys.stderr, flush=True)
        payload.update(results=rows, wall_s=time.perf_counter() - start)
        ba.write_json(args.json, payload)

    for case in config_of(args)['cases']:
        RUNNERS[case](args, on_row)
    targets = evaluate_targets(rows, args.threads)
    machine['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    payload.update(results=rows, targets=targets, complete=True,
                   wall_s=time.perf_counter() - start)
    ba.write_json(args.json, payload)
    print('\n' + report(rows, targets, machine))
    print(f"wrote {args.json} ({payload['wall_s']:.0f} s)")
    ba.write_markdown(args.markdown, report(rows, targets, machine, True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
