r"""How HSA's forward+backward time grows from 65,536 to 1,048,576 leaves,
as the median of several back-to-back runs, beside the machine's own floor.

What
----
Each run is :mod:`bench_attention` with ``--methods hsa fresh_memory
--sizes 65536 1048576``: the HSA core on the balanced branching-16 tree and
``q * k + v`` on the same ``[N, 4, 64]`` inputs (the fresh memory that any
attention's forward+backward writes: an output and three input gradients),
each (method, N) in a fresh process. Per run it reports the growth
``time(1,048,576) / time(65,536)`` of both, HSA's peak memory at 1,048,576
leaves and, per call, the user and system CPU time and minor page faults.
The target (``bench_attention``'s): the median HSA growth over the runs
``<= 20`` with the peak ``<= 8 GB`` in every run. The floor's growth shows
what the machine alone adds: with 4 KiB pages a virtual machine can make
first touches of fresh memory dearer per page at the larger size.

Before the runs, a probe in a fresh process measures what the machine
charges for fresh memory (:func:`page_reuse_costs`): the system CPU time
per page fault of filling 2 GiB of new tensors, first, then again right
after freeing them and after pauses of 1, 3 and 10 s. A virtual machine
that hands freed memory back to its host (free page reporting) charges
much more after a pause: memory freed seconds ago costs the host's work
again, so a call that lasts seconds pays more per page than a short one.

Usage::

    python benchmarks/bench_growth.py                  # 5 runs
    python benchmarks/bench_growth.py --thp            # huge pages
    python benchmarks/bench_growth.py --runs 1 --quick # smoke test
    python benchmarks/bench_growth.py --runs 0         # the probe only
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402

METHODS = ['hsa', 'fresh_memory']


# The probe of fresh memory: GiB filled, and the pauses (s) between freeing
# them and filling them again.
REUSE_GIB = 2.0
REUSE_PAUSES = (0.0, 1.0, 3.0, 10.0)
_BLOCK = 2**26  # float32 elements per tensor: 256 MiB


def _fill_cost(gib: float) -> float:
    r"""Fills :obj:`gib` GiB of new float32 tensors, frees them and returns
    the system CPU time per minor page fault (microseconds)."""
    import torch
    before = resource.getrusage(resource.RUSAGE_SELF)
    blocks = [torch.ones(_BLOCK) for _ in range(max(1, round(gib * 4)))]
    after = resource.getrusage(resource.RUSAGE_SELF)
    del blocks
    faults = max(1, after.ru_minflt - before.ru_minflt)
    return (after.ru_stime - before.ru_stime) * 1e6 / faults


def page_reuse_costs(gib: float = REUSE_GIB,
                     pauses: Sequence[float] = REUSE_PAUSES
                     ) -> Dict[str, Any]:
    r"""Microseconds of system time per page fault of filling :obj:`gib`
    GiB of new tensors: the first time in this process, then again after
    each pause (seconds) since the previous fill was freed."""
    costs = {'first': _fill_cost(gib)}
    for pause in pauses:
        time.sleep(pause)
        costs[f'after_{pause:g}s'] = _fill_cost(gib)
    return {'gib': gib, 'us_per_fault': costs}


def measure_page_reuse(args: argparse.Namespace) -> Dict[str, Any]:
    r""":func:`page_reuse_costs` in a fresh process at the runs' thread
    count (a failure becomes a row with ``status`` ``'error'``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()),
           '--page-reuse-worker']
    if args.threads is not None:
        cmd += ['--threads', str(args.threads)]
    return ba.run_command(cmd, {'probe': 'page_reuse'}, args.timeout)


def format_page_reuse(probe: Dict[str, Any]) -> str:
    costs = probe.get('us_per_fault')
    if not costs:
        return f"fresh memory probe: {probe.get('error', 'no result')}"
    text = ', '.join(f"{k.replace('_', ' ')} {ba.format_number(v)}"
                     for k, v in costs.items())
    return (f"fresh memory (us of system time per 4 KiB page fault, "
            f"{probe['gib']:g} GiB filled): {text}")


def attention_args(args: argparse.Namespace) -> argparse.Namespace:
    r""":mod:`bench_attention`'s arguments for one run."""
    argv = ['--methods', *METHODS, '--sizes', str(args.small),
            str(args.large), '--timeout', str(args.timeout), '--malloc',
            args.malloc, '--no-progress', '--device', 'cpu']
    if args.threads is not None:
        argv += ['--threads', str(args.threads)]
    if args.thp:
        argv.append('--thp')
    if args.quick:
        argv += ['--max-repeats', '1', '--min-time', '0']
    return ba.parse_args(argv)


def run_summary(rows: List[Dict], small: int, large: int) -> Dict[str, Any]:
    r"""One run's growth of HSA and of the floor, HSA's peak at
    :obj:`large` and the CPU time and page faults per call."""
    def value(method: str, n: int, key: str) -> Optional[float]:
        return ba.lookup(rows, method, n, key)

    summary: Dict[str, Any] = {
        'hsa_growth': ba.ratio(value('hsa', large, 'fwdbwd_ms'),
                               value('hsa', small, 'fwdbwd_ms')),
        'hsa_user_growth': ba.ratio(value('hsa', large, 'fwdbwd_user_ms'),
                                    value('hsa', small, 'fwdbwd_user_ms')),
        'floor_growth': ba.ratio(value('fresh_memory', large, 'fwdbwd_ms'),
                                 value('fresh_memory', small, 'fwdbwd_ms')),
        'hsa_peak_mib_large': value('hsa', large, 'fwdbwd_peak_mib'),
        'hsa_failure': ba.hsa_failure(rows, small, large),
    }
    for method in METHODS:
        for n in (small, large):
            for key in ('ms', 'user_ms', 'sys_ms', 'minor_faults'):
                summary[f'{method}_{n}_fwdbwd_{key}'] = value(
                    method, n, f'fwdbwd_{key}')
    return summary


def _median(runs: List[Dict], key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def evaluate(runs: List[Dict]) -> Dict[str, Any]:
    r"""The target on the median growth and every run's peak."""
    growth = _median(runs, 'hsa_growth')
    peaks = [r['hsa_peak_mib_large'] for r in runs]
    known = [p for p in peaks if p is not None]
    limit = ba.TARGET_PEAK_BYTES / ba.MIB
    failures = [r['hsa_failure'] for r in runs if r.get('hsa_failure')]
    if failures:  # HSA could not run: failed, not unmeasured
        status = 'FAIL'
    elif growth is None or len(known) < len(peaks):
        status = 'N/A'
    else:
        status = 'PASS' if growth <= ba.TARGET_GROWTH and \
            max(known) <= limit else 'FAIL'
    return {'status': status, 'median_hsa_growth': growth,
            'median_floor_growth': _median(runs, 'floor_growth'),
            'median_hsa_user_growth': _median(runs, 'hsa_user_growth'),
            'max_peak_mib': max(known, default=None),
            'peak_limit_mib': limit, 'growth_limit': ba.TARGET_GROWTH,
            'hsa_failures': failures}


def format_runs(runs: List[Dict], small: int, large: int,
                markdown: bool = False) -> str:
    header = ['run', f'HSA {small:,} ms', f'HSA {large:,} ms', 'HSA growth',
              'HSA user CPU growth', f'HSA sys ms at {large:,}',
              f'HSA faults at {large:,}', 'floor growth',
              f'HSA peak MiB at {large:,}']
    keys = [f'hsa_{small}_fwdbwd_ms', f'hsa_{large}_fwdbwd_ms', 'hsa_growth',
            'hsa_user_growth', f'hsa_{large}_fwdbwd_sys_ms',
            f'hsa_{large}_fwdbwd_minor_faults', 'floor_growth',
            'hsa_peak_mib_large']
    body = [[str(i + 1)] + [ba.format_number(r[k]) for k in keys]
            for i, r in enumerate(runs)]
    return ba.grid(header, body, markdown)


def format_target(target: Dict[str, Any], runs: int) -> str:
    return (f"[{target['status']}] median HSA growth over {runs} run(s) "
            f"{ba.format_number(target['median_hsa_growth'])} (needs <= "
            f"{target['growth_limit']:g}), peak at most "
            f"{ba.format_number(target['max_peak_mib'])} MiB (needs <= "
            f"{target['peak_limit_mib']:.0f}); medians: HSA's user CPU "
            f"time grew {ba.format_number(target['median_hsa_user_growth'])}"
            f", the q*k+v floor's time "
            f"{ba.format_number(target['median_floor_growth'])}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Median growth of HSA forward+backward time from 65,536 '
        'to 1,048,576 leaves over back-to-back runs, with the floor.')
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--thp', action='store_true',
                        help="as bench_attention's --thp")
    parser.add_argument('--malloc', choices=['default', 'retain'],
                        default='default')
    parser.add_argument('--timeout', type=float, default=900.0)
    parser.add_argument('--quick', action='store_true',
                        help='N = 1,024 and 16,384, one call each')
    parser.add_argument('--out', type=Path, default=None)
    parser.add_argument('--markdown', type=Path, default=None)
    parser.add_argument('--page-reuse-worker', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.small, args.large = ((1024, 16384) if args.quick else
                              (ba.TARGET_N, ba.LARGE_N))
    if args.out is None:
        args.out = ba.default_out(
            'bench_growth_cpu' + ('_thp' if args.thp else ''), args.quick)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.page_reuse_worker:
        if args.threads is not None:
            import torch
            torch.set_num_threads(args.threads)
        ba.send_result(page_reuse_costs())
        return 0
    run_args = attention_args(args)
    start = time.perf_counter()
    machine = ba.machine_info(run_args.device, run_args.threads)
    ba.announce(ba.format_header(machine, args.malloc, args.thp), machine)
    payload: Dict[str, Any] = {
        'benchmark': 'bench_growth',
        'created': ba.timestamp(),
        'commit': ba.source_commit(), 'machine': machine,
        'config': ba.config_of(run_args), 'runs': [], 'rows': [],
        'page_reuse': measure_page_reuse(args),
    }
    print(format_page_reuse(payload['page_reuse']), flush=True)
    for i in range(args.runs):
        rows = ba.run_all(run_args, lambda rows: None)
        summary = run_summary(rows, args.small, args.large)
        payload['runs'].append(summary)
        payload['rows'].append(rows)
        print(f"run {i + 1}: HSA growth "
              f"{ba.format_number(summary['hsa_growth'])}, floor growth "
              f"{ba.format_number(summary['floor_growth'])}", flush=True)
    machine['load_average_end'] = ba.load_average()
    payload['target'] = evaluate(payload['runs'])
    payload['wall_s'] = time.perf_counter() - start
    ba.write_json(args.out, payload)
    print()
    print(format_runs(payload['runs'], args.small, args.large))
    print()
    print(format_target(payload['target'], args.runs))
    print(format_page_reuse(payload['page_reuse']))
    print(f'\nwrote {args.out} ({payload["wall_s"]:.0f} s)')
    ba.write_markdown(args.markdown, format_runs(
        payload['runs'], args.small, args.large, markdown=True) + '\n\n' +
        format_target(payload['target'], args.runs) + '\n\n' +
        format_page_reuse(payload['page_reuse']) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
