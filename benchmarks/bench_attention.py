r"""Benchmark of hierarchical self-attention (HSA) against dense attention.

What is measured
----------------
For every number of leaves ``N`` (default 1,024 ... 1,048,576) and every
method below, with ``H = 4`` heads of ``D = 64`` channels in float32:

* ``hsa``: the HSA core, :func:`hsa_geo.functional.hierarchical_attention`
  on ``q, k, v`` of shape ``[N, 4, 64]``, over a balanced tree of branching
  16 built with :meth:`hsa_geo.data.Hierarchy.from_assignments` (the top
  family may have fewer children).
* ``sdpa``: dense softmax attention,
  :func:`torch.nn.functional.scaled_dot_product_attention` on
  ``[1, 4, N, 64]``. Its cost is quadratic in ``N``, so it only runs up to
  ``--sdpa-max-n``; larger sizes are recorded as skipped.
* ``transformer_conv``: :class:`torch_geometric.nn.TransformerConv`
  ``(256, 64, heads=4)`` on ``x`` of shape ``[N, 256]`` over a ring graph of
  the same leaves, each leaf receiving messages from its 8 nearest ring
  neighbours (4 on each side). Skipped where the estimated message memory
  ``E * H * D * 4 bytes * 6`` exceeds ``--conv-max-gb``.
* ``qkv_projection``: the fused QKV projection ``torch.nn.Linear(256, 768)``
  on ``x`` of shape ``[N, 256]``, forward only: the reference cost every
  attention layer pays anyway.
* ``hsa_conv``: :class:`hsa_geo.nn.HSAConv` ``(256, 64, heads=4)`` on the
  same tree, if it can be imported (skipped otherwise).
* ``fresh_memory``: ``q * k + v`` on the ``[N, 4, 64]`` inputs, the floor of
  fresh memory: its forward+backward writes an output and the three input
  gradients, what the forward+backward of any attention on these inputs
  writes at least, and next to nothing else. Its growth from one ``N`` to
  the next is what the machine's memory alone costs (page faults of fresh
  mappings, most of all in virtual machines).

For each it records the forward time (under :func:`torch.no_grad`), the
forward+backward time (forward, then ``out.sum().backward()``, with the
inputs and parameters requiring grad) and the peak memory
of each phase, and per timed call the process's user and system CPU time
and minor page faults (:func:`resource.getrusage`, all threads). The
hierarchy or graph is built once, before timing; its build time is recorded
as ``setup_ms`` but is not part of the timings.

How
---
Every (method, N) runs in a fresh subprocess (this script in its hidden
``--worker`` mode), so peak memory is clean and a failure (out of memory,
error, timeout) is recorded instead of ending the run.

* Timing: one warm-up call, then the median of repeated calls timed with
  :func:`time.perf_counter` (with :func:`torch.cuda.synchronize` on GPU).
  Calls repeat until ``--min-time`` seconds are spent (at least
  :data:`MIN_SAMPLES`, at most ``--max-repeats``); a warm-up call longer
  than ``--long-run``
  seconds is the only sample (one-time costs are negligible next to it).
* Peak memory on CUDA: :func:`torch.cuda.max_memory_allocated` after
  :func:`torch.cuda.reset_peak_memory_stats`, minus the memory allocated
  before the inputs were created.
* Peak memory on CPU: the process's peak resident set size (``VmHWM`` in
  ``/proc/self/status``, which is ``getrusage(RUSAGE_SELF).ru_maxrss``;
  it is reset through ``/proc/self/clear_refs`` before each phase where
  Linux allows it) minus the resident set size measured right after the
  imports, before the inputs were created.
* Both include the inputs, the hierarchy or graph, the parameters, the
  outputs, the gradients, the tensors autograd saves and the temporaries
  (on CPU also the allocator's cached and fragmented memory).
* ``torch.set_num_threads`` is set to the number of usable cores (or
  ``--threads``).

It prints a table, evaluates the performance targets (see
:data:`TARGET_N`, :func:`evaluate_targets`) and writes everything as JSON
(``--out``) and, optionally, the table as Markdown (``--markdown``).

Usage::

    python benchmarks/bench_attention.py                     # full run
    python benchmarks/bench_attention.py --quick             # smoke test
    python benchmarks/bench_attention.py --sizes 1024 4096 16384
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / 'results'

DEFAULT_SIZES = [1024, 4096, 16384, 65536, 262144, 1048576]
QUICK_SIZES = [1024, 4096]
METHODS = ['hsa', 'sdpa', 'transformer_conv', 'qkv_projection', 'hsa_conv',
           'fresh_memory']
FORWARD_ONLY = {'qkv_projection'}
LABELS = {
    'hsa': 'HSA',
    'sdpa': 'SDPA',
    'transformer_conv': 'TransformerConv',
    'qkv_projection': 'QKV proj.',
    'hsa_conv': 'HSAConv',
    'fresh_memory': 'q*k+v floor',
}

HEADS = 4
HEAD_DIM = 64
CHANNELS = HEADS * HEAD_DIM  # 256
BRANCHING = 16
RING_NEIGHBOURS = 8  # 4 on each side
CONV_MEMORY_FACTOR = 6  # ~ tensors of size E * H * D TransformerConv keeps

TARGET_N = 65536
LARGE_N = 1048576
TARGET_SPEEDUP = 30.0  # SDPA / HSA, forward+backward, at TARGET_N
TARGET_GROWTH = 20.0  # HSA time(LARGE_N) / time(TARGET_N), fwd+bwd
TARGET_PEAK_BYTES = 8e9  # HSA fwd+bwd peak at LARGE_N (8 GB)
TARGET_PROJ_RATIO = 2.0  # HSA forward / QKV projection forward

# ``--malloc retain``: glibc keeps freed memory in the process (no block is
# handed back to the kernel) instead of unmapping every block above 32 MiB.
# Each fresh mapping is page-faulted in on first touch, which in virtual
# machines costs more than the arithmetic of an elementwise pass over it.
MALLOC_RETAIN_ENV = {
    'MALLOC_MMAP_THRESHOLD_': str(2**32),
    'MALLOC_TRIM_THRESHOLD_': str(2**36),
    'MALLOC_TOP_PAD_': str(2**30),
}

# ``--thp``: PyTorch aligns CPU tensors of 2 MiB and more to 2 MiB and asks
# the kernel for transparent huge pages there (``madvise``), one page fault
# per 2 MiB instead of per 4 KiB; read once, at the first allocation.
THP_ENV = {'THP_MEM_ALLOC_ENABLE': '1'}

# Timed calls per phase at least (unless --max-repeats is lower): a single
# call of a few seconds varies by 20% on a shared 2-core machine.
MIN_SAMPLES = 3

RESULT_MARKER = 'BENCH_RESULT_JSON '
MIB = 2.0**20

MEMORY_NOTE = (
    'peak = increase of peak memory over the memory in use right after the '
    'imports; it includes the inputs, the hierarchy or graph, parameters, '
    'outputs, gradients, tensors saved for backward and temporaries (on CPU '
    'the resident set size, so also allocator caching and fragmentation)')
TIMING_NOTE = (
    'one warm-up call, then the median of at least 3 calls (or of the '
    'warm-up alone when it exceeds --long-run; perf_counter, '
    'CUDA synchronised); forward under torch.no_grad(), forward+backward = '
    'forward then out.sum().backward(); the hierarchy or '
    'graph is built before timing')


def import_hsa_geo():
    r"""Imports :mod:`hsa_geo`, from the repository root if it is not
    installed."""
    try:
        import hsa_geo
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        import hsa_geo
    return hsa_geo


# Inputs ####################################################################


def balanced_assignments(n: int, branching: int = BRANCHING,
                         device: Any = 'cpu') -> List[Any]:
    r"""Per-level cluster assignments of a balanced tree over ``n`` leaves:
    consecutive groups of ``branching`` nodes, level by level, up to a single
    root (whose family may have fewer children)."""
    import torch
    assignments, size = [], n
    while size > 1:
        assignments.append(torch.arange(size, device=device) // branching)
        size = math.ceil(size / branching)
    if not assignments:  # one leaf: a root cluster above it
        assignments.append(torch.zeros(1, dtype=torch.long, device=device))
    return assignments


def balanced_hierarchy(n: int, device: Any = 'cpu'):
    r"""The balanced branching-16 :class:`~hsa_geo.data.Hierarchy`."""
    hsa_geo = import_hsa_geo()
    return hsa_geo.data.Hierarchy.from_assignments(
        balanced_assignments(n, BRANCHING, device))


def ring_edge_index(n: int, neighbours: int = RING_NEIGHBOURS,
                    device: Any = 'cpu'):
    r"""``[2, n * neighbours]`` edges ``j -> i`` from the ``neighbours``
    nearest ring neighbours ``j`` of every leaf ``i`` (half on each side)."""
    import torch
    half = neighbours // 2
    offsets = [o for o in range(-half, half + 1) if o != 0]
    dst = torch.arange(n, device=device).repeat(len(offsets))
    shift = torch.tensor(offsets, device=device).repeat_interleave(n)
    src = (dst + shift) % n
    return torch.stack([src, dst])


def conv_message_bytes(n: int) -> float:
    r"""Estimated memory of TransformerConv's per-edge tensors:
    ``E * H * D * 4 bytes * 6``."""
    return (n * RING_NEIGHBOURS * HEADS * HEAD_DIM * 4 *
            CONV_MEMORY_FACTOR)


# Methods ###################################################################


@dataclass
class Case:
    r"""One method on one size, ready to time.

    Attributes:
        forward: computes the output from the prepared inputs.
        grad_leaves: tensors whose ``.grad`` is cleared before each
            forward+backward call (inputs and parameters).
        info: facts about the inputs, recorded in the results.
    """
    forward: Callable[[], Any]
    grad_leaves: List[Any]
    info: Dict[str, Any] = field(default_factory=dict)


def _randn(*shape: int, device: Any, grad: bool):
    import torch
    return torch.randn(*shape, device=device, requires_grad=grad)


def leaf_qkv(n: int, device: Any, grad: bool) -> List[Any]:
    r"""``q, k, v``: ``[N, H, D]`` standard normal, drawn in this order."""
    return [_randn(n, HEADS, HEAD_DIM, device=device, grad=grad)
            for _ in range(3)]


def sibling_pairs(hierarchy) -> int:
    r""":math:`P = \sum_F |C(F)|^2`, the family pairs HSA scores."""
    import torch
    parent = hierarchy.parent
    return int(torch.bincount(parent[parent >= 0]).pow(2).sum())


def build_hsa(n: int, device: Any, grad: bool) -> Case:
    functional = import_hsa_geo().functional
    start = time.perf_counter()
    hierarchy = balanced_hierarchy(n, device)
    setup = time.perf_counter() - start
    q, k, v = leaf_qkv(n, device, grad)
    return Case(
        lambda: functional.hierarchical_attention(q, k, v, hierarchy),
        [q, k, v], {
            'setup_ms': setup * 1e3,
            'num_nodes': hierarchy.num_nodes,
            'depth': hierarchy.depth,
            'sibling_pairs': sibling_pairs(hierarchy),
        })


def build_sdpa(n: int, device: Any, grad: bool) -> Case:
    import torch.nn.functional as F
    q, k, v = (_randn(1, HEADS, n, HEAD_DIM, device=device, grad=grad)
               for _ in range(3))
    return Case(lambda: F.scaled_dot_product_attention(q, k, v), [q, k, v])


def build_transformer_conv(n: int, device: Any, grad: bool) -> Case:
    from torch_geometric.nn import TransformerConv
    start = time.perf_counter()
    edge_index = ring_edge_index(n, RING_NEIGHBOURS, device)
    setup = time.perf_counter() - start
    conv = TransformerConv(CHANNELS, HEAD_DIM, heads=HEADS).to(device)
    x = _randn(n, CHANNELS, device=device, grad=grad)
    return Case(lambda: conv(x, edge_index), [x] + list(conv.parameters()), {
        'setup_ms': setup * 1e3,
        'num_edges': edge_index.size(1),
    })


def build_qkv_projection(n: int, device: Any, grad: bool) -> Case:
    import torch
    proj = torch.nn.Linear(CHANNELS, 3 * CHANNELS).to(device)
    x = _randn(n, CHANNELS, device=device, grad=grad)
    return Case(lambda: proj(x), [x] + list(proj.parameters()))


def build_fresh_memory(n: int, device: Any, grad: bool) -> Case:
    q, k, v = leaf_qkv(n, device, grad)
    return Case(lambda: q * k + v, [q, k, v])


def _hsa_conv_class():
    import_hsa_geo()
    from hsa_geo.nn import HSAConv
    return HSAConv


def build_hsa_conv(n: int, device: Any, grad: bool) -> Case:
    start = time.perf_counter()
    hierarchy = balanced_hierarchy(n, device)
    setup = time.perf_counter() - start
    conv = _hsa_conv_class()(CHANNELS, HEAD_DIM, heads=HEADS).to(device)
    x = _randn(n, CHANNELS, device=device, grad=grad)
    params = inspect.signature(conv.forward).parameters
    kwargs: Dict[str, Any] = {}
    if 'hierarchy' in params:
        kwargs['hierarchy'] = hierarchy
    edge = params.get('edge_index')
    if edge is not None and edge.default is inspect.Parameter.empty:
        kwargs['edge_index'] = ring_edge_index(n, RING_NEIGHBOURS, device)
    if not kwargs:  # unknown signature: (x, hierarchy) positionally
        return Case(lambda: conv(x, hierarchy), [x] + list(conv.parameters()),
                    {'setup_ms': setup * 1e3})
    return Case(lambda: conv(x, **kwargs), [x] + list(conv.parameters()),
                {'setup_ms': setup * 1e3})


BUILDERS: Dict[str, Callable[[int, Any, bool], Case]] = {
    'hsa': build_hsa,
    'sdpa': build_sdpa,
    'transformer_conv': build_transformer_conv,
    'qkv_projection': build_qkv_projection,
    'hsa_conv': build_hsa_conv,
    'fresh_memory': build_fresh_memory,
}


def preload(method: str):
    r"""Imports what :obj:`method` needs, so that the memory baseline is
    taken after all imports."""
    import torch  # noqa: F401
    if method in ('hsa', 'hsa_conv'):
        import_hsa_geo()
    if method == 'hsa_conv':
        _hsa_conv_class()
    if method == 'transformer_conv':
        import torch_geometric.nn  # noqa: F401


# Memory ####################################################################


def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            match = re.search(rf'^{key}:\s+(\d+)\s+kB', f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def current_rss_bytes() -> float:
    r"""Resident set size of this process now."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return float(psutil.Process().memory_info().rss)
    except ImportError:
        return peak_rss_bytes()


def peak_rss_bytes() -> float:
    r"""Peak resident set size of this process (``VmHWM``, equal to
    ``getrusage(RUSAGE_SELF).ru_maxrss``)."""
    hwm = _proc_status_kib('VmHWM')
    if hwm is not None:
        return hwm * 1024.0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(maxrss if sys.platform == 'darwin' else maxrss * 1024)


def reset_peak_rss() -> bool:
    r"""Resets the peak resident set size to the current one (Linux
    ``clear_refs``); returns whether it worked."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


class MemoryMeter:
    r"""Peak memory of a phase, relative to a baseline taken before the
    inputs exist."""
    def __init__(self, device: Any):
        import torch
        self.cuda = torch.device(device).type == 'cuda'
        self.device = device
        if self.cuda:
            torch.cuda.synchronize(device)
            self.baseline = float(torch.cuda.memory_allocated(device))
        else:
            self.baseline = current_rss_bytes()
        self.resettable = self.cuda
        self.start_phase()

    @property
    def method(self) -> str:
        if self.cuda:
            return 'torch.cuda.max_memory_allocated - allocated before inputs'
        if self.resettable:
            return ('peak RSS (VmHWM = ru_maxrss, reset per phase via '
                    '/proc/self/clear_refs) - RSS before inputs')
        return ('peak RSS (ru_maxrss, not resettable: fwd+bwd peak covers '
                'both phases) - RSS before inputs')

    def start_phase(self):
        import torch
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.resettable = reset_peak_rss()

    def peak_mib(self) -> float:
        import torch
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = float(torch.cuda.max_memory_allocated(self.device))
        else:
            peak = peak_rss_bytes()
        return max(0.0, peak - self.baseline) / MIB


def live_tensor_peak_mib(call: Callable[[], Any]) -> float:
    r"""The largest total size of the tensor storages that :obj:`call`
    creates and holds at once (its gradients included; inputs and anything
    made before excluded), counted at every operation it dispatches,
    forward and backward. Unlike a resident-set peak it does not depend on
    the allocator's caching and fragmentation; but it sees only the outputs
    of dispatched operations, not the buffers a kernel allocates and frees
    inside itself (SDPA's CPU backward makes a dense copy of its output
    gradient that way). Runs :obj:`call` once under a dispatch mode
    (slower: never inside a timed call). While a dispatch mode is active,
    autograd sums the gradients that meet at one tensor out of place
    instead of in place, so a method whose inputs get several gradients
    may count up to one tensor more than it holds; PyTorch's profiler
    (``profile_memory=True``) counts without that effect."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    live: Dict[int, int] = {}  # storage address -> bytes
    total, peak = [0], [0]

    def release(address: int):
        total[0] -= live.pop(address, 0)

    def storages(values: Any) -> List[Any]:
        return [t.untyped_storage() for t in tree_flatten(values)[0]
                if isinstance(t, torch.Tensor) and t.layout == torch.strided]

    class Tracker(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # An output sharing an argument's storage is a view, not new.
            seen = {s.data_ptr() for s in storages((args, kwargs))}
            for storage in storages(out):
                address = storage.data_ptr()
                if address in live or address in seen or \
                        storage.nbytes() == 0:
                    continue
                live[address] = storage.nbytes()
                total[0] += storage.nbytes()
                peak[0] = max(peak[0], total[0])
                weakref.finalize(storage, release, address)
            return out

    with Tracker():
        call()
    return peak[0] / MIB


# Timing ####################################################################


@dataclass
class Timing:
    median_s: float
    samples_s: List[float]
    warmup_s: float
    # per timed call: user and system CPU ms, minor page faults
    usage: Dict[str, float] = field(default_factory=dict)


def _usage() -> List[float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return [r.ru_utime, r.ru_stime, float(r.ru_minflt)]


def usage_per_call(before: List[float], calls: int) -> Dict[str, float]:
    r"""The process's user and system CPU time (ms, all threads) and minor
    page faults per call since :obj:`before` (a :func:`_usage`)."""
    user, system, faults = (b - a for a, b in zip(before, _usage()))
    calls = max(1, calls)
    return {'user_ms': user * 1e3 / calls, 'sys_ms': system * 1e3 / calls,
            'minor_faults': faults / calls}


def measure(call: Callable[[], None], sync: Callable[[], None],
            min_time: float, max_repeats: int, long_run: float) -> Timing:
    r"""One warm-up call, then calls until :obj:`min_time` seconds are spent
    (at least :data:`MIN_SAMPLES`, at most :obj:`max_repeats`); the median.
    After a warm-up longer than :obj:`long_run` seconds, one timed call is
    the only sample (the warm-up's one-time costs can be a large share
    even of a long call: a first call of 10.4 s against 6.3 s after)."""
    def timed() -> float:
        sync()
        start = time.perf_counter()
        call()
        sync()
        return time.perf_counter() - start

    before = _usage()
    warmup = timed()
    before = _usage()
    samples: List[float] = []
    repeats = 1 if warmup >= long_run else max(1, max_repeats)
    while len(samples) < repeats and (
            len(samples) < MIN_SAMPLES or sum(samples) < min_time):
        samples.append(timed())
    return Timing(statistics.median(samples), samples, warmup,
                  usage_per_call(before, len(samples)))


# Worker ####################################################################


def timing_fields(prefix: str, timing: Timing, peak_mib: float) -> Dict:
    r"""A phase's row fields (``fwd``, ``fwdbwd``, ...): median, samples
    and warm-up in ms, peak MiB, and per call the CPU time and faults."""
    return {
        f'{prefix}_ms': timing.median_s * 1e3,
        f'{prefix}_samples_ms': [t * 1e3 for t in timing.samples_s],
        f'{prefix}_warmup_ms': timing.warmup_s * 1e3,
        f'{prefix}_peak_mib': peak_mib,
        **{f'{prefix}_{key}': value for key, value in timing.usage.items()},
    }


def _run_phases(case: Case, meter: MemoryMeter, sync: Callable[[], None],
                forward_only: bool, timing: Dict[str, Any]) -> Dict:
    import torch
    result: Dict[str, Any] = {}

    def forward():
        out = case.forward()
        if not result:  # the warm-up call checks the output
            result['output_finite'] = bool(torch.isfinite(out).all())
            result['output_shape'] = list(out.shape)

    with torch.no_grad():
        fwd = measure(forward, sync, **timing)
    result.update(timing_fields('fwd', fwd, meter.peak_mib()))
    if forward_only:
        return result

    meter.start_phase()

    def forward_backward():
        for t in case.grad_leaves:
            t.grad = None
        # The loss is the sum of the outputs, the same for every method.
        case.forward().sum().backward()

    fwdbwd = measure(forward_backward, sync, **timing)
    result.update(timing_fields('fwdbwd', fwdbwd, meter.peak_mib()))
    return result


def run_worker(method: str, n: int, device: str = 'cpu',
               threads: Optional[int] = None, min_time: float = 2.0,
               max_repeats: int = 10, long_run: float = 20.0,
               seed: int = 0) -> Dict[str, Any]:
    r"""Measures one method at one size in this process and returns its
    row: times in ms, peak memory in MiB, ``status`` ``'ok'`` or
    ``'error'`` (with ``error``). Run it in a fresh process for clean peak
    memory (:func:`run_in_subprocess`)."""
    row: Dict[str, Any] = {'method': method, 'n': n, 'device': device}
    forward_only = method in FORWARD_ONLY
    return measure_case(
        row, lambda dev: BUILDERS[method](n, dev, not forward_only),
        device, forward_only, lambda: preload(method), threads, min_time,
        max_repeats, long_run, seed)


def synchronize(device: Any) -> Callable[[], None]:
    r"""What makes a timing on :obj:`device` include its queued kernels
    (nothing on the CPU)."""
    import torch
    device = torch.device(device)
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_case(row: Dict[str, Any], build: Callable[[Any], Case],
                 device: str, forward_only: bool, preload_fn: Callable,
                 threads: Optional[int], min_time: float, max_repeats: int,
                 long_run: float, seed: int) -> Dict[str, Any]:
    r"""Fills :obj:`row` with the timings and peak memory of the
    :class:`Case` that :obj:`build` makes on the device, after
    :obj:`preload_fn` has imported what it needs (so the memory baseline
    excludes the imports); errors, out of memory included, become
    ``status`` ``'error'``."""
    try:
        preload_fn()
        import torch
        if threads is not None:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        dev = torch.device(device)
        sync = synchronize(dev)
        meter = MemoryMeter(dev)
        case = build(dev)
        meter.start_phase()  # (the build's temporaries are no peak)
        timing = dict(min_time=min_time, max_repeats=max_repeats,
                      long_run=long_run)
        row.update(_run_phases(case, meter, sync, forward_only, timing))
        row.update(case.info)
        row['memory_method'] = meter.method
        row['threads'] = torch.get_num_threads()
        row['status'] = 'ok'
    except Exception as e:  # out of memory included: record, do not crash
        row['status'] = 'error'
        row['error'] = f'{type(e).__name__}: {e}'[:2000]
    return row


def worker_main(args: argparse.Namespace) -> int:
    row = run_worker(args.method, args.n, args.device, args.threads,
                     args.min_time, args.max_repeats, args.long_run,
                     args.seed)
    send_result(row)
    return 0


# Orchestration #############################################################


def worker_command(method: str, n: int, args: argparse.Namespace) -> List:
    return [
        sys.executable,
        str(Path(__file__).resolve()), '--worker', '--method', method, '--n',
        str(n), '--device', args.device, '--threads',
        str(args.threads), '--min-time',
        str(args.min_time), '--max-repeats',
        str(args.max_repeats), '--long-run',
        str(args.long_run), '--seed',
        str(args.seed)
    ]


def worker_env(args: argparse.Namespace) -> Dict[str, str]:
    env = dict(os.environ)
    if args.malloc == 'retain':
        env.update(MALLOC_RETAIN_ENV)
    if args.thp:
        env.update(THP_ENV)
    return env


def _tail(text: str, limit: int = 1500) -> str:
    text = (text or '').strip()
    return text[-limit:]


def run_in_subprocess(method: str, n: int,
                      args: argparse.Namespace) -> Dict[str, Any]:
    r"""Runs :func:`run_worker` in a fresh process and returns its row;
    timeouts, crashes and kills (e.g. by the out-of-memory killer) become
    rows with ``status`` ``'timeout'`` or ``'error'``."""
    return run_command(worker_command(method, n, args),
                       {'method': method, 'n': n, 'device': args.device},
                       args.timeout, worker_env(args))


def run_command(cmd: List[str], base: Dict[str, Any], timeout: float,
                env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    r"""Runs a worker command line and returns the row it prints after
    :data:`RESULT_MARKER`; a timeout, crash or kill becomes :obj:`base` with
    ``status`` ``'timeout'`` or ``'error'``."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return dict(base, status='timeout',
                    error=f'no result within --timeout {timeout:g} s')
    wall = time.perf_counter() - start
    row = read_result(proc.stdout)
    if row is not None:
        row['worker_wall_s'] = wall
        return row
    if proc.returncode < 0:
        oom = ' (likely out of memory)' if proc.returncode == -9 else ''
        error = f'worker killed by signal {-proc.returncode}{oom}'
    else:
        error = f'worker exited with code {proc.returncode}'
    return dict(base, status='error', worker_wall_s=wall,
                error=f'{error}: {_tail(proc.stderr)}')


def skip_reason(method: str, n: int, args: argparse.Namespace,
                failed: Dict[str, int]) -> Optional[str]:
    r"""Why (method, n) is not run, or :obj:`None`."""
    if method in failed:
        return f'failed at smaller N = {failed[method]}'
    if method == 'sdpa' and n > args.sdpa_max_n:
        return (f'quadratic cost: N > --sdpa-max-n {args.sdpa_max_n}')
    if method == 'transformer_conv':
        est = conv_message_bytes(n)
        if est > args.conv_max_gb * 1e9:
            return (f'estimated message memory E*H*D*4 B*{CONV_MEMORY_FACTOR}'
                    f' = {est / 1e9:.1f} GB > --conv-max-gb '
                    f'{args.conv_max_gb:g}')
    if method == 'hsa_conv':
        try:
            _hsa_conv_class()
        except Exception as e:
            return f'hsa_geo.nn.HSAConv not importable ({type(e).__name__})'
    return None


def _progress(items: List, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm
            return tqdm(items, desc='bench_attention', unit='run',
                        file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass
    return None


def _summary(row: Dict[str, Any]) -> str:
    if row['status'] != 'ok':
        return (f"{row['method']} N={row['n']}: {row['status']}: "
                f"{row.get('reason') or row.get('error', '')}"[:300])
    fb = row.get('fwdbwd_ms')
    return (f"{row['method']} N={row['n']}: fwd {row['fwd_ms']:.1f} ms"
            f"{'' if fb is None else f', fwd+bwd {fb:.1f} ms'}, peak "
            f"{row.get('fwdbwd_peak_mib', row['fwd_peak_mib']):.0f} MiB")


def run_all(args: argparse.Namespace,
            on_row: Callable[[List[Dict]], None]) -> List[Dict[str, Any]]:
    r"""Runs every (method, N), smallest N first; a method that fails at
    some N is skipped at larger ones."""
    configs = [(m, n) for n in sorted(args.sizes) for m in args.methods]
    bar = _progress(configs, not args.no_progress)
    rows: List[Dict[str, Any]] = []
    failed: Dict[str, int] = {}
    for method, n in configs:
        if bar is not None:
            bar.set_postfix_str(f'{method} N={n}')
        reason = skip_reason(method, n, args, failed)
        if reason is not None:
            row = {'method': method, 'n': n, 'device': args.device,
                   'status': 'skipped', 'reason': reason}
        else:
            row = run_in_subprocess(method, n, args)
            if row['status'] != 'ok':
                failed.setdefault(method, n)
        rows.append(row)
        on_row(rows)
        if bar is not None:
            bar.update(1)
            bar.write(_summary(row), file=sys.stderr)
    if bar is not None:
        bar.close()
    return rows


def layout_ms(hierarchy: Any) -> float:
    r"""Milliseconds to derive what the attention derives on its first
    call on :obj:`hierarchy`: its layout and the pattern of its pair list
    (both cached on the tree, so no timed call pays them)."""
    from hsa_geo.functional.sparse_family_attention import pair_pattern
    start = time.perf_counter()
    pair_pattern(hierarchy.layout.sparse, HEADS)
    return (time.perf_counter() - start) * 1e3


def device_arg(text: str) -> str:
    r"""An ``argparse`` type: a device whose queued kernels and peak memory
    the benchmarks can wait for and measure, the CPU or a CUDA GPU (on
    another accelerator a timer would stop before its kernels end)."""
    import torch
    try:
        kind = torch.device(text).type
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if kind not in ('cpu', 'cuda'):
        raise argparse.ArgumentTypeError(
            f"{text!r}: the benchmarks synchronise and measure peak memory "
            f"on 'cpu' and 'cuda' devices only")
    return text


def add_worker_arguments(parser: argparse.ArgumentParser,
                         max_repeats: int) -> None:
    r"""The options of a benchmark that runs its rows in worker
    subprocesses with :func:`measure_case`: the device, the timing
    (``--min-time``, ``--max-repeats``, ``--long-run``), a worker's
    ``--timeout``, ``--seed``, the outputs (``--out``, ``--markdown``) and
    the hidden ``--worker`` flag."""
    parser.add_argument('--device', type=device_arg, default='cpu')
    parser.add_argument('--min-time', type=float, default=2.0)
    parser.add_argument('--max-repeats', type=int, default=max_repeats)
    parser.add_argument('--long-run', type=float, default=20.0)
    parser.add_argument('--timeout', type=float, default=1800.0)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, default=None)
    parser.add_argument('--markdown', type=Path, default=None)
    parser.add_argument('--worker', action='store_true',
                        help=argparse.SUPPRESS)


def worker_arguments(args: argparse.Namespace) -> List[str]:
    r"""The options of :func:`add_worker_arguments` that a worker
    subprocess takes, as its command line: the device, the timing and the
    seed of :obj:`args`."""
    return ['--device', str(args.device), '--min-time', str(args.min_time),
            '--max-repeats', str(args.max_repeats), '--long-run',
            str(args.long_run), '--seed', str(args.seed)]


# Machine information #######################################################


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_commit() -> Optional[str]:
    r"""The commit named by the environment variable ``HSA_GEO_COMMIT``
    where it is set (a copy of the working tree on another machine, whose
    git metadata, if any, need not be the tree's); else the checkout's
    commit, with ``+changes`` when tracked files differ from it (the timings
    are of the code as it was), files under ``benchmarks/results`` not
    counting, since a run writes its own results there; else (no git
    repository) :obj:`None`."""
    if os.environ.get('HSA_GEO_COMMIT'):
        return os.environ['HSA_GEO_COMMIT']
    try:
        def git(*args: str) -> str:
            return subprocess.run(['git', *args], cwd=REPO_ROOT,
                                  capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        changed = git('status', '--porcelain', '--untracked-files=no',
                      '--', '.', ':(exclude)benchmarks/results')
        return git('rev-parse', 'HEAD') + ('+changes' if changed else '')
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str, threads: int) -> Dict[str, Any]:
    import torch
    info: Dict[str, Any] = {
        'device': device,
        'cpu': cpu_model(),
        'cores': usable_cores(),
        'threads': threads,
        'memory_gib': _proc_meminfo_gib(),
        'load_average_start': load_average(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
    }
    try:
        import torch_geometric
        info['torch_geometric'] = torch_geometric.__version__
    except ImportError:
        info['torch_geometric'] = None
    info['hsa_geo'] = getattr(import_hsa_geo(), '__version__', None)
    if torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
        info['cuda'] = torch.version.cuda
    return info


def load_average() -> Optional[List[float]]:
    r"""1, 5 and 15 minute load averages (other work on the machine skews
    timings, CPU ones most)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_warning(machine: Dict[str, Any]) -> Optional[str]:
    r"""A warning when the machine was busy as the run started."""
    load = machine.get('load_average_start')
    if machine['device'] != 'cpu' or not load or load[0] < 0.5:
        return None
    return (f'warning: load average {load[0]:.2f} at the start: other '
            f'processes share the CPU and skew the timings (HSA, made of '
            f'many small parallel kernels, most)')


def send_result(row: Dict[str, Any]) -> None:
    r"""Writes a worker's result for :func:`run_in_subprocess` to read:
    one line, :data:`RESULT_MARKER` and the row as JSON."""
    sys.stdout.write(RESULT_MARKER + json.dumps(row) + '\n')
    sys.stdout.flush()


@contextlib.contextmanager
def competing_processes(count: int, lifetime: float) -> Iterator[List]:
    r"""Starts :obj:`count` CPU-bound Python processes (a busy loop) and
    kills them on exit, errors included; each also ends by itself after
    :obj:`lifetime` seconds, should this process die first."""
    code = f'import time\nend = time.time() + {lifetime}\n' \
        'while time.time() < end:\n    pass\n'
    procs: List[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, '-c', code]))
        time.sleep(0.2 if count else 0.0)  # let them reach the loop
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def read_result(stdout: Any) -> Optional[Dict[str, Any]]:
    r"""The last result line a worker wrote with :func:`send_result` in its
    output (text or bytes), or :obj:`None`."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors='replace')
    lines = [line for line in (stdout or '').splitlines()
             if line.startswith(RESULT_MARKER)]
    return json.loads(lines[-1][len(RESULT_MARKER):]) if lines else None


def timestamp() -> str:
    r"""Now, in the local time zone, to the second: a run's ``created``."""
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def announce(header: str, machine: Dict[str, Any]) -> None:
    r"""Prints a run's first line, then :func:`load_warning`'s warning if
    the machine was busy as the run started."""
    print(header, flush=True)
    warning = load_warning(machine)
    if warning:
        print(warning, flush=True)


def thp_kernel_mode() -> Optional[str]:
    r"""The kernel's transparent huge page mode (``always``, ``madvise``
    or ``never``; :obj:`None` off Linux): ``--thp`` needs one of the first
    two."""
    try:
        text = Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text()
    except OSError:
        return None
    match = re.search(r'\[(\w+)\]', text)
    return match.group(1) if match else None


def _proc_meminfo_gib() -> Optional[float]:
    try:
        with open('/proc/meminfo') as f:
            kib = int(re.search(r'MemTotal:\s+(\d+)', f.read()).group(1))
        return round(kib / 2**20, 1)
    except (OSError, AttributeError):
        return None


# Report ####################################################################


def lookup(rows: Iterable[Dict], method: str, n: int,
           key: str) -> Optional[float]:
    for row in rows:
        if row['method'] == method and row['n'] == n \
                and row['status'] == 'ok':
            return row.get(key)
    return None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def format_number(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return '-'
    if value >= 100:
        return f'{value:.0f}'
    if value >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def grid(head: List[str], body: List[List[str]], markdown: bool, *,
         left: int = 1, rule: bool = False) -> str:
    r"""A table of text cells: Markdown, or plain text in padded columns.
    The first :obj:`left` columns are left-aligned, the others
    right-aligned (in Markdown through its alignment row); :obj:`rule`
    draws a line of dashes under the plain text header."""
    if markdown:
        align = ['---' if i < left else '---:' for i in range(len(head))]
        lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(align) + '|']
        return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ['  '.join(x.ljust(w) if i < left else x.rjust(w)
                       for i, (x, w) in enumerate(zip(r, widths)))
             for r in [head] + body]
    if rule:
        lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def _cell(rows: List[Dict], method: str, n: int) -> str:
    row = next((r for r in rows if r['method'] == method and r['n'] == n),
               None)
    if row is None:
        return ''
    if row['status'] != 'ok':
        return row['status']
    peak = row.get('fwdbwd_peak_mib', row.get('fwd_peak_mib'))
    return (f"{format_number(row.get('fwd_ms'))} / "
            f"{format_number(row.get('fwdbwd_ms'))} / {format_number(peak)}")


def table_rows(rows: List[Dict], sizes: Sequence[int],
               methods: Sequence[str]) -> List[List[str]]:
    header = ['N'] + [LABELS.get(m, m) for m in methods] + [
        'SDPA/HSA fwd+bwd', 'HSA/QKV fwd'
    ]
    out = [header]
    for n in sorted(sizes):
        speedup = ratio(lookup(rows, 'sdpa', n, 'fwdbwd_ms'),
                        lookup(rows, 'hsa', n, 'fwdbwd_ms'))
        proj = ratio(lookup(rows, 'hsa', n, 'fwd_ms'),
                     lookup(rows, 'qkv_projection', n, 'fwd_ms'))
        out.append([f'{n:,}'] + [_cell(rows, m, n) for m in methods] + [
            '-' if speedup is None else f'{speedup:.1f}x',
            '-' if proj is None else f'{proj:.2f}x'
        ])
    return out


def _notes(rows: List[Dict]) -> List[str]:
    notes = []
    for row in rows:
        if row['status'] != 'ok':
            why = row.get('reason') or row.get('error', '')
            notes.append(f"{LABELS.get(row['method'], row['method'])} "
                         f"N={row['n']:,}: {row['status']} ({why})")
    return notes


CELL_LEGEND = ('cells: forward ms / forward+backward ms / peak MiB '
               '(forward+backward peak; forward peak for forward-only '
               'methods); median times')


def format_table(rows: List[Dict], sizes: Sequence[int],
                 methods: Sequence[str], markdown: bool = False) -> str:
    r"""The result table, plain text (with a rule under the header) or
    Markdown, all columns right-aligned, then the cell legend and notes on
    skipped and failed entries."""
    head, *body = table_rows(rows, sizes, methods)
    notes = _notes(rows)
    table = grid(head, body, markdown, left=0, rule=True)
    if markdown:
        lines = [table, '', f'_{CELL_LEGEND}_']
        lines += [''] + [f'- {note}' for note in notes] if notes else []
        return '\n'.join(lines)
    return '\n'.join([table, '', CELL_LEGEND] +
                     [f'  {note}' for note in notes])


def _target(name: str, description: str, status: str, measured: Dict,
            detail: str) -> Dict[str, Any]:
    return {'name': name, 'description': description, 'status': status,
            'measured': measured, 'detail': detail}


def _missing(*values: Optional[float]) -> bool:
    return any(v is None for v in values)


def hsa_failure(rows: Iterable[Dict], *sizes: int) -> Optional[str]:
    r"""Why HSA has no result at one of :obj:`sizes` in this run although
    it was asked for (an error, a timeout, or skipped after failing at a
    smaller N), or :obj:`None`: such a target is failed, not
    unmeasured."""
    for row in rows:
        if row['method'] == 'hsa' and row['n'] in sizes and \
                row['status'] != 'ok':
            why = row.get('reason') or row.get('error') or row['status']
            return f"HSA at N = {row['n']:,}: {row['status']} ({why})"
    return None


def _unmeasured(rows: List[Dict], name: str, desc: str, measured: Dict,
                needs: str, *sizes: int) -> Dict[str, Any]:
    r"""The verdict of a target without its numbers: ``FAIL`` where HSA
    failed at one of :obj:`sizes` (:func:`hsa_failure`), else ``N/A``."""
    failure = hsa_failure(rows, *sizes)
    if failure is not None:
        return _target(name, desc, 'FAIL', measured, failure)
    return _target(name, desc, 'N/A', measured, needs)


def target_speedup(rows: List[Dict]) -> Dict[str, Any]:
    sdpa = lookup(rows, 'sdpa', TARGET_N, 'fwdbwd_ms')
    hsa = lookup(rows, 'hsa', TARGET_N, 'fwdbwd_ms')
    speedup = ratio(sdpa, hsa)
    desc = (f'N = {TARGET_N:,}: HSA forward+backward at least '
            f'{TARGET_SPEEDUP:g}x faster than SDPA forward+backward')
    measured = {'sdpa_fwdbwd_ms': sdpa, 'hsa_fwdbwd_ms': hsa,
                'speedup': speedup,
                'fwd_speedup': ratio(lookup(rows, 'sdpa', TARGET_N, 'fwd_ms'),
                                     lookup(rows, 'hsa', TARGET_N, 'fwd_ms'))}
    if _missing(sdpa, hsa):
        return _unmeasured(rows, 'speedup_vs_sdpa', desc, measured,
                           f'needs hsa and sdpa at N = {TARGET_N:,}',
                           TARGET_N)
    detail = (f'SDPA {sdpa:.1f} ms / HSA {hsa:.1f} ms = {speedup:.1f}x '
              f'(needs >= {TARGET_SPEEDUP:g}x); forward: '
              f"{format_number(measured['fwd_speedup'])}x")
    return _target('speedup_vs_sdpa', desc,
                   'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL', measured,
                   detail)


def target_linear(rows: List[Dict]) -> Dict[str, Any]:
    small = lookup(rows, 'hsa', TARGET_N, 'fwdbwd_ms')
    large = lookup(rows, 'hsa', LARGE_N, 'fwdbwd_ms')
    peak = lookup(rows, 'hsa', LARGE_N, 'fwdbwd_peak_mib')
    fwd_growth = ratio(lookup(rows, 'hsa', LARGE_N, 'fwd_ms'),
                       lookup(rows, 'hsa', TARGET_N, 'fwd_ms'))
    growth = ratio(large, small)
    floor = ratio(lookup(rows, 'fresh_memory', LARGE_N, 'fwdbwd_ms'),
                  lookup(rows, 'fresh_memory', TARGET_N, 'fwdbwd_ms'))
    limit_mib = TARGET_PEAK_BYTES / MIB
    desc = (f'linear growth: HSA forward+backward time(N = {LARGE_N:,}) / '
            f'time(N = {TARGET_N:,}) <= {TARGET_GROWTH:g} (N grows '
            f'{LARGE_N // TARGET_N}x), with peak memory <= '
            f'{TARGET_PEAK_BYTES / 1e9:g} GB at N = {LARGE_N:,}')
    measured = {'hsa_fwdbwd_ms_small': small, 'hsa_fwdbwd_ms_large': large,
                'growth': growth, 'fwd_growth': fwd_growth,
                'hsa_fwdbwd_peak_mib_large': peak,
                'peak_limit_mib': limit_mib, 'fresh_memory_growth': floor,
                'hsa_fwdbwd_sys_ms_large': lookup(rows, 'hsa', LARGE_N,
                                                  'fwdbwd_sys_ms')}
    if _missing(small, large, peak):
        return _unmeasured(rows, 'linear_growth', desc, measured,
                           f'needs hsa at N = {TARGET_N:,} and N = '
                           f'{LARGE_N:,}', TARGET_N, LARGE_N)
    ok = growth <= TARGET_GROWTH and peak <= limit_mib
    detail = (f'fwd+bwd {large:.0f} ms / {small:.1f} ms = {growth:.1f} '
              f'(needs <= {TARGET_GROWTH:g}); forward: '
              f'{format_number(fwd_growth)}; '
              f'peak {peak:.0f} MiB (needs <= {limit_mib:.0f} MiB)')
    if floor is not None:
        detail += f'; the q*k+v floor of fresh memory grew {floor:.1f}'
    return _target('linear_growth', desc, 'PASS' if ok else 'FAIL', measured,
                   detail)


def target_projection(rows: List[Dict]) -> Dict[str, Any]:
    hsa = lookup(rows, 'hsa', TARGET_N, 'fwd_ms')
    proj = lookup(rows, 'qkv_projection', TARGET_N, 'fwd_ms')
    proj_ratio = ratio(hsa, proj)
    desc = (f'N = {TARGET_N:,}: HSA core forward at most '
            f'{TARGET_PROJ_RATIO:g}x the time of the fused QKV projection')
    measured = {'hsa_fwd_ms': hsa, 'qkv_projection_fwd_ms': proj,
                'ratio': proj_ratio}
    if _missing(hsa, proj):
        return _unmeasured(rows, 'forward_vs_projection', desc, measured,
                           f'needs hsa and qkv_projection at N = '
                           f'{TARGET_N:,}', TARGET_N)
    detail = (f'HSA {hsa:.1f} ms / QKV {proj:.1f} ms = {proj_ratio:.2f}x '
              f'(needs <= {TARGET_PROJ_RATIO:g}x)')
    return _target('forward_vs_projection', desc,
                   'PASS' if proj_ratio <= TARGET_PROJ_RATIO else 'FAIL',
                   measured, detail)


def evaluate_targets(rows: List[Dict]) -> List[Dict[str, Any]]:
    r"""The three performance targets, each ``PASS``, ``FAIL`` or ``N/A``
    (not measured in this run) with the numbers behind it."""
    return [target_speedup(rows), target_linear(rows),
            target_projection(rows)]


def format_targets(targets: List[Dict]) -> str:
    lines = ['Targets']
    for t in targets:
        lines.append(f"  [{t['status']}] {t['description']}")
        lines.append(f"         {t['detail']}")
    return '\n'.join(lines)


def format_header(machine: Dict[str, Any], malloc: str = 'default',
                  thp: bool = False) -> str:
    hw = machine.get('gpu') or machine['cpu']
    return (f"bench_attention on {machine['device']} ({hw}; "
            f"{machine['cores']} cores, {machine['threads']} threads), "
            f"torch {machine['torch']}, torch_geometric "
            f"{machine['torch_geometric']}, hsa_geo {machine['hsa_geo']}\n"
            f'H = {HEADS} heads x D = {HEAD_DIM}, float32, balanced tree of '
            f'branching {BRANCHING}; ring graph with {RING_NEIGHBOURS} '
            f'neighbours for TransformerConv; malloc: {malloc}; '
            f"huge pages: {'THP_MEM_ALLOC_ENABLE=1' if thp else 'default'}")


def write_json(path: Path, payload: Dict[str, Any]):
    r"""Writes atomically (a ``.tmp`` file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(payload, indent=2) + '\n')
    os.replace(tmp, path)


def default_out(stem: str, quick: bool) -> Path:
    r"""A script's results file when ``--out`` is not given:
    ``results/<stem>.json``, or ``<stem>_quick.json`` for a quick run."""
    return RESULTS_DIR / f"{stem}{'_quick' if quick else ''}.json"


def publish(out: Path, payload: Dict[str, Any],
            table: Callable[[bool], str], markdown: Optional[Path]):
    r"""The end of a run: writes :obj:`payload` to :obj:`out`, prints the
    table (``table(markdown=False)``) and where the JSON went, and writes
    the table as Markdown to :obj:`markdown` if given."""
    write_json(out, payload)
    print()
    print(table(False))
    print(f'\nwrote {out}')
    write_markdown(markdown, table(True) + '\n')


def write_markdown(path: Optional[Path], text: str):
    r"""Writes :obj:`text` to :obj:`path` (the ``--markdown`` file of a
    benchmark) and says so; nothing when :obj:`path` is :obj:`None`."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f'wrote {path}')


def config_of(args: argparse.Namespace) -> Dict[str, Any]:
    return {
        'commit': source_commit(),
        'sizes': sorted(args.sizes),
        'methods': args.methods,
        'heads': HEADS,
        'head_dim': HEAD_DIM,
        'channels': CHANNELS,
        'branching': BRANCHING,
        'ring_neighbours': RING_NEIGHBOURS,
        'dtype': 'float32',
        'sdpa_max_n': args.sdpa_max_n,
        'conv_max_gb': args.conv_max_gb,
        'min_time_s': args.min_time,
        'max_repeats': args.max_repeats,
        'long_run_s': args.long_run,
        'timeout_s': args.timeout,
        'seed': args.seed,
        'malloc': args.malloc,
        'malloc_env': MALLOC_RETAIN_ENV if args.malloc == 'retain' else {},
        'thp_env': THP_ENV if args.thp else {},
        'thp_kernel_mode': thp_kernel_mode(),
        'timing': TIMING_NOTE,
        'memory': MEMORY_NOTE,
    }


# Command line ##############################################################


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='HSA vs dense SDPA vs TransformerConv: forward and '
        'forward+backward time and peak memory.')
    parser.add_argument('--sizes', type=int, nargs='+', default=None,
                        help=f'numbers of leaves (default {DEFAULT_SIZES})')
    parser.add_argument('--methods', nargs='+', default=METHODS,
                        choices=METHODS)
    parser.add_argument('--device', type=device_arg, default=None,
                        help='cuda if available, else cpu')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: usable cores)')
    parser.add_argument('--sdpa-max-n', type=int, default=65536)
    parser.add_argument('--conv-max-gb', type=float, default=12.0,
                        help='skip TransformerConv above this estimated '
                        'message memory (GB)')
    parser.add_argument('--min-time', type=float, default=2.0,
                        help='seconds of timed calls per phase')
    parser.add_argument('--max-repeats', type=int, default=10)
    parser.add_argument('--long-run', type=float, default=20.0,
                        help='a warm-up longer than this (s) is the only '
                        'sample')
    parser.add_argument('--timeout', type=float, default=900.0,
                        help='seconds per (method, N) worker')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--malloc', choices=['default', 'retain'],
                        default='default',
                        help="'retain': the workers run with glibc tunables "
                        'that keep freed memory in the process (the same '
                        'for every method; see MALLOC_RETAIN_ENV)')
    parser.add_argument('--thp', action='store_true',
                        help='the workers run with THP_MEM_ALLOC_ENABLE=1: '
                        'PyTorch backs CPU tensors of 2 MiB and more with '
                        'transparent huge pages (the same for every method)')
    parser.add_argument('--quick', action='store_true',
                        help=f'smoke test: N in {QUICK_SIZES}, one repeat')
    parser.add_argument('--out', type=Path, default=None,
                        help='JSON output (default benchmarks/results/'
                        'bench_attention_<device>.json, with --quick '
                        'bench_attention_<device>_quick.json)')
    parser.add_argument('--markdown', type=Path, default=None,
                        help='also write the table as Markdown here')
    parser.add_argument('--no-progress', action='store_true')
    # Hidden worker mode: one (method, N) in this process, JSON on stdout.
    parser.add_argument('--worker', action='store_true',
                        help=argparse.SUPPRESS)
    parser.add_argument('--method', choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument('--n', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return _resolve(parser, args)


def _resolve(parser: argparse.ArgumentParser,
             args: argparse.Namespace) -> argparse.Namespace:
    import torch
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if torch.device(args.device).type == 'cuda' \
            and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available')
    if args.threads is None:
        args.threads = usable_cores()
    if args.quick:
        args.sizes = args.sizes or QUICK_SIZES
        args.max_repeats, args.min_time = 1, 0.0
    args.sizes = args.sizes or DEFAULT_SIZES
    if args.worker and (args.method is None or args.n is None):
        parser.error('--worker needs --method and --n')
    if args.out is None:
        device = torch.device(args.device).type
        suffix = '_quick' if args.quick else ''
        args.out = RESULTS_DIR / f'bench_attention_{device}{suffix}.json'
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    start = time.perf_counter()
    machine = machine_info(args.device, args.threads)
    payload: Dict[str, Any] = {
        'benchmark': 'bench_attention',
        'created': timestamp(),
        'machine': machine,
        'config': config_of(args),
        'complete': False,
    }

    def save(rows: List[Dict]):
        payload.update(results=rows, targets=evaluate_targets(rows),
                       wall_s=time.perf_counter() - start)
        write_json(args.out, payload)

    announce(format_header(machine, args.malloc, args.thp), machine)
    rows = run_all(args, save)
    payload['complete'] = True
    machine['load_average_end'] = load_average()
    save(rows)
    print()
    print(format_table(rows, args.sizes, args.methods))
    print()
    print(format_targets(payload['targets']))
    print(f"\nwrote {args.out} ({payload['wall_s']:.0f} s)")
    write_markdown(args.markdown, format_table(
        rows, args.sizes, args.methods, markdown=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
