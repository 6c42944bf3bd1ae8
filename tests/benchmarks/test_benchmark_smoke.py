r"""Smoke test of ``benchmarks/bench_attention.py``: every method runs at
N = 1,024 in this process and returns sane fields; the table and the target
report render. No timing is asserted."""
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / 'benchmarks' / \
    'bench_attention.py'
N = 1024


def _load_bench():
    spec = importlib.util.spec_from_file_location('bench_attention', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _hsa_conv_available() -> bool:
    try:
        bench._hsa_conv_class()
    except Exception:
        return False
    return True


def _run(method):
    return bench.run_worker(method, N, 'cpu', threads=None, min_time=0.0,
                            max_repeats=1)


def _check_phase(row, prefix):
    assert math.isfinite(row[f'{prefix}_ms']) and row[f'{prefix}_ms'] > 0
    assert len(row[f'{prefix}_samples_ms']) == 1
    assert math.isfinite(row[f'{prefix}_peak_mib'])
    assert row[f'{prefix}_peak_mib'] >= 0
    for key in ('user_ms', 'sys_ms', 'minor_faults'):
        assert row[f'{prefix}_{key}'] >= 0


@pytest.mark.parametrize('method', bench.METHODS)
def test_worker_returns_sane_row(method):
    if method == 'hsa_conv' and not _hsa_conv_available():
        pytest.skip('hsa_geo.nn.HSAConv is not importable')
    row = _run(method)
    assert row['status'] == 'ok', row.get('error')
    assert (row['method'], row['n'], row['device']) == (method, N, 'cpu')
    assert row['output_finite'] is True
    assert row['output_shape'][-1] in (bench.HEAD_DIM, bench.CHANNELS,
                                       3 * bench.CHANNELS)
    _check_phase(row, 'fwd')
    if method in bench.FORWARD_ONLY:
        assert 'fwdbwd_ms' not in row
    else:
        _check_phase(row, 'fwdbwd')
    if method == 'hsa':
        assert row['num_nodes'] > N and row['sibling_pairs'] > 0
    if method == 'transformer_conv':
        assert row['num_edges'] == bench.RING_NEIGHBOURS * N


def test_usage_per_call_counts_what_the_calls_did():
    import torch
    before = bench._usage()
    for _ in range(2):  # 64 MiB of fresh pages, written
        torch.ones(2**24).sum()
    usage = bench.usage_per_call(before, 2)
    assert usage['user_ms'] + usage['sys_ms'] > 0
    assert usage['minor_faults'] >= 0


def test_fresh_memory_writes_an_output_and_three_gradients():
    import torch
    case = bench.build_fresh_memory(8, 'cpu', True)
    out = case.forward()
    assert out.shape == (8, bench.HEADS, bench.HEAD_DIM)
    out.sum().backward()
    q, k, v = case.grad_leaves
    assert torch.equal(q.grad, k.detach()) and torch.equal(k.grad, q.detach())
    assert torch.equal(v.grad, torch.ones_like(v))


def test_thp_option_sets_the_workers_environment():
    args = bench.parse_args(['--thp', '--quick'])
    assert bench.worker_env(args)['THP_MEM_ALLOC_ENABLE'] == '1'
    assert bench.config_of(args)['thp_env'] == bench.THP_ENV
    plain = bench.parse_args(['--quick'])
    assert bench.config_of(plain)['thp_env'] == {}
    assert bench.thp_kernel_mode() in (None, 'always', 'madvise', 'never')


def test_worker_records_errors():
    row = bench.run_worker('hsa', 0, 'cpu', min_time=0.0, max_repeats=1)
    assert row['status'] == 'error' and row['error']


@pytest.mark.parametrize('warmup,max_repeats,min_time,expected', [
    (0.0, 10, 0.0, 3),  # at least MIN_SAMPLES calls
    (0.0, 1, 0.0, 1),  # unless --max-repeats is lower
    (0.0, 10, 5.5, 6),  # until --min-time seconds are spent
    (30.0, 10, 0.0, 1),  # after a long warm-up, one timed call
])
def test_measure_sample_counts(monkeypatch, warmup, max_repeats, min_time,
                               expected):
    """Counts timed calls on a fake clock: each call takes 1 s after a
    warm-up of ``warmup`` s."""
    durations = iter([warmup] + [1.0] * 20)
    now = [0.0]

    def call():
        now[0] += next(durations)

    monkeypatch.setattr(bench.time, 'perf_counter', lambda: now[0])
    timing = bench.measure(call, lambda: None, min_time, max_repeats, 20.0)
    assert timing.samples_s == [1.0] * expected  # never the warm-up
    assert timing.warmup_s == warmup
    assert bench.MIN_SAMPLES == 3


def test_inputs():
    h = bench.balanced_hierarchy(N)
    assert h.num_leaves == N and h.max_branching == bench.BRANCHING
    assert h.num_trees == 1
    edge_index = bench.ring_edge_index(16)
    assert edge_index.shape == (2, 16 * bench.RING_NEIGHBOURS)
    gap = (edge_index[0] - edge_index[1]) % 16
    assert set(gap.tolist()) == {1, 2, 3, 4, 12, 13, 14, 15}


def _fake_row(method, n, fwd, fwdbwd=None, peak=100.0):
    row = {'method': method, 'n': n, 'device': 'cpu', 'status': 'ok',
           'fwd_ms': fwd, 'fwd_peak_mib': peak}
    if fwdbwd is not None:
        row.update(fwdbwd_ms=fwdbwd, fwdbwd_peak_mib=peak)
    return row


def test_report_renders():
    small, large = bench.TARGET_N, bench.LARGE_N
    rows = [
        _fake_row('hsa', small, 10.0, 20.0),
        _fake_row('sdpa', small, 500.0, 1000.0),
        _fake_row('qkv_projection', small, 4.0),
        _fake_row('hsa', large, 150.0, 500.0, peak=9000.0),
        {'method': 'sdpa', 'n': large, 'device': 'cpu', 'status': 'skipped',
         'reason': 'quadratic'},
    ]
    methods = ['hsa', 'sdpa', 'qkv_projection']
    text = bench.format_table(rows, [small, large], methods)
    assert '65,536' in text and 'skipped (quadratic)' in text
    assert '50.0x' in text  # SDPA / HSA forward+backward
    markdown = bench.format_table(rows, [small, large], methods,
                                  markdown=True)
    assert markdown.startswith('| N |')
    speedup, linear, projection = bench.evaluate_targets(rows)
    assert speedup['status'] == 'PASS'  # 50x >= 30x
    assert linear['status'] == 'FAIL'  # growth 25 > 20, 9000 MiB > 8 GB
    assert projection['status'] == 'FAIL'  # 2.5x > 2x
    assert linear['measured']['growth'] == 25.0
    assert linear['measured']['fresh_memory_growth'] is None
    floor = [_fake_row('fresh_memory', small, 1.0, 2.0),
             _fake_row('fresh_memory', large, 10.0, 36.0)]
    linear = bench.target_linear(rows + floor)
    assert linear['measured']['fresh_memory_growth'] == 18.0
    assert 'floor of fresh memory grew 18.0' in linear['detail']
    assert 'Targets' in bench.format_targets([speedup, linear, projection])
    assert [t['status'] for t in bench.evaluate_targets([])] == ['N/A'] * 3
    # HSA asked for but without a result: failed, not unmeasured
    killed = {'method': 'hsa', 'n': large, 'device': 'cpu',
              'status': 'error', 'error': 'killed by signal 9'}
    linear = bench.target_linear(rows[:3] + [killed])
    assert linear['status'] == 'FAIL' and 'signal 9' in linear['detail']
    skipped = dict(killed, status='skipped', reason='failed at smaller N')
    assert bench.target_linear(rows[:3] + [skipped])['status'] == 'FAIL'
    timeout = dict(killed, n=small, status='timeout')
    assert [t['status'] for t in bench.evaluate_targets(
        [timeout] + rows[1:3])] == ['FAIL'] * 3


def test_live_tensor_peak_counts_what_the_call_holds_at_once():
    import torch
    bench = _load_bench()

    def buffers():  # two 4 MiB buffers alive at most
        a = torch.empty(2**20)
        b = torch.empty(2**20)
        del a
        c = torch.empty(2**20)
        return b.view(-1), c

    assert bench.live_tensor_peak_mib(buffers) == 8.0
    x = torch.randn(2**20, requires_grad=True)

    def backward():
        y = x * 2
        y.exp().sum().backward()

    # y, the gradient of y and x.grad (the saved exp is freed with its
    # backward, before x.grad is made; x is not counted) and the 4-byte
    # gradient of the sum
    assert abs(bench.live_tensor_peak_mib(backward) - 12.0) < 1e-3


def test_source_commit_without_git(monkeypatch):
    # A copy of the working tree without a repository (another machine):
    # the commit comes from HSA_GEO_COMMIT, or is unknown.
    def no_git(*args, **kwargs):
        raise OSError('no git')
    monkeypatch.setattr(bench.subprocess, 'run', no_git)
    monkeypatch.delenv('HSA_GEO_COMMIT', raising=False)
    assert bench.source_commit() is None
    monkeypatch.setenv('HSA_GEO_COMMIT', 'abc123')
    assert bench.source_commit() == 'abc123'


def test_source_commit_named_wins_over_git(monkeypatch):
    # A copied tree may carry git metadata of another commit than its own.
    monkeypatch.setenv('HSA_GEO_COMMIT', 'abc123')
    assert bench.source_commit() == 'abc123'
    monkeypatch.delenv('HSA_GEO_COMMIT')
    assert len(bench.source_commit().split('+')[0]) == 40


def test_competing_processes_end_even_on_error():
    with pytest.raises(RuntimeError):
        with bench.competing_processes(1, 60) as procs:
            assert procs[0].poll() is None
            raise RuntimeError('measurement failed')
    assert procs[0].poll() is not None


def test_source_commit_ignores_results(tmp_path, monkeypatch):
    # A run writes its results into benchmarks/results: that is no change
    # to the code it timed; any other tracked file is.
    def git(*args):
        subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t',
                        *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / 'benchmarks' / 'results').mkdir(parents=True)
    (tmp_path / 'benchmarks' / 'results' / 'a.json').write_text('{}')
    (tmp_path / 'code.py').write_text('x = 1\n')
    git('init', '-q')
    git('add', '.')
    git('commit', '-q', '-m', 'start')
    monkeypatch.setattr(bench, 'REPO_ROOT', tmp_path)
    head = bench.source_commit()
    assert head is not None and '+' not in head
    (tmp_path / 'benchmarks' / 'results' / 'a.json').write_text('{"t": 1}')
    assert bench.source_commit() == head
    (tmp_path / 'code.py').write_text('x = 2\n')
    assert bench.source_commit() == head + '+changes'


def test_devices_the_benchmarks_can_time():
    import argparse
    bench = _load_bench()
    assert bench.device_arg('cpu') == 'cpu'
    assert bench.device_arg('cuda:1') == 'cuda:1'
    for name in ('xpu', 'mps', 'gpu0'):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.device_arg(name)
