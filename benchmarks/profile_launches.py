r"""Where the HSA core's time goes on an accelerator: kernels launched,
device busy time and host synchronisations per call.

On a GPU the attention on balanced trees takes about the same few
milliseconds from 1,024 to 65,536 leaves (``bench_attention.py``): each call
launches a few hundred kernels, so the host's work (operator dispatch and
kernel launches), not the device, sets the pace until the tree is large.
This script shows it per call, with :mod:`torch.profiler`, for the core
:func:`hsa_geo.functional.hierarchical_attention` on ``[N, 4, 64]`` float32
inputs over the balanced trees of branching 16 of ``bench_attention.py``:

* wall time per call, timed as ``bench_attention.py`` times its rows
  (:func:`bench_attention.measure`: one warm-up, then the median of
  synchronised calls), forward under :func:`torch.no_grad`, and
  forward+backward (``out.sum().backward()``) at one size;
* in one profiled call: kernel launches (``cudaLaunchKernel`` and its
  variants), the device's busy time (the sum of the kernels' own times,
  the profiler table's "Self CUDA time total") and the host-device copies
  and synchronisations (each ``cudaStreamSynchronize`` stalls the host
  until the queue drains; of the ``cudaDeviceSynchronize`` calls, one is
  this script's own, after the call);
* the profiler's table of operators by their own host time.

Usage::

    python benchmarks/profile_launches.py                     # cuda
    python benchmarks/profile_launches.py --device cpu --sizes 1024 4096 \
        --backward-at 4096                                    # try it

The output is text (``--out``). ``benchmarks/results/profile_launches_cuda
.txt`` is the H200's, from a first version of this script: its wall times
are means of 10 calls after 3 warm-ups with one synchronisation at the end,
and its "GPU busy" also summed the operators' self device times, each
kernel twice (the "Self CUDA time total" under each table is the device
time).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402

LAUNCHES = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel',
            'cuLaunchKernelEx')


def report(name: str, fn: Callable[[], None], sync: Callable[[], None],
           activities: List[ProfilerActivity]) -> str:
    r"""One paragraph of :obj:`fn`'s costs: wall time per call, launches,
    device time, copies and synchronisations, the operator table."""
    # Timed as bench_attention times its rows, so the two agree.
    ms = ba.measure(fn, sync, min_time=2.0, max_repeats=10,
                    long_run=20.0).median_s * 1e3
    with profile(activities=activities) as prof:
        fn()
        sync()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    syncs = {e.key: e.count for e in events
             if 'ynchronize' in e.key or 'Memcpy' in e.key}
    # The kernels' own entries (an operator's self device time counts its
    # kernels a second time): the table's 'Self CUDA time total'.
    busy = sum(e.self_device_time_total for e in events
               if e.device_type != DeviceType.CPU
               and not e.is_user_annotation) / 1e3
    return (f'## {name}: {ms:.2f} ms/call wall, kernels launched '
            f'{launches}, GPU busy {busy:.2f} ms, syncs/copies {syncs}\n'
            + events.table(sort_by='self_cpu_time_total', row_limit=18,
                           max_name_column_width=45))


def profile_size(n: int, device: torch.device, backward: bool,
                 activities: List[ProfilerActivity]) -> List[str]:
    from hsa_geo import hierarchical_attention
    sync = ba.synchronize(device)
    tree = ba.balanced_hierarchy(n).to(device)
    q, k, v = (torch.randn(n, ba.HEADS, ba.HEAD_DIM, device=device)
               for _ in range(3))
    grads = [x.clone().requires_grad_() for x in (q, k, v)]

    def forward():
        with torch.no_grad():
            hierarchical_attention(q, k, v, tree)

    def forward_backward():
        hierarchical_attention(*grads, tree).sum().backward()

    out = [report(f'forward N={n}', forward, sync, activities)]
    if backward:
        out.append(report(f'fwd+bwd N={n}', forward_backward, sync,
                          activities))
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', type=ba.device_arg, default='cuda')
    p.add_argument('--sizes', type=int, nargs='+',
                   default=[1024, 65536, 1048576])
    p.add_argument('--backward-at', type=int, default=65536,
                   help='the size whose forward+backward is profiled too')
    p.add_argument('--out', type=Path, default=None)
    args = p.parse_args(argv)
    if args.backward_at not in args.sizes:
        p.error(f'--backward-at {args.backward_at} is none of --sizes '
                f'{args.sizes}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    text = []
    for n in args.sizes:
        text += profile_size(n, device, n == args.backward_at, activities)
    text = '\n'.join(text) + '\n'
    print(text, end='')
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
