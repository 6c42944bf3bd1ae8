r"""Smoke test of ``benchmarks/bench_growth.py``: a run's summary, the
target over several runs, the table and the JSON, on made-up rows (the real
workers are ``bench_attention``'s, tested there). No timing is asserted."""
import json

from tests.helpers.benchmarks import load_benchmark

bench = load_benchmark('bench_growth')
ba = bench.ba
SMALL, LARGE = ba.TARGET_N, ba.LARGE_N


def _row(method, n, ms, peak=100.0):
    return {'method': method, 'n': n, 'device': 'cpu', 'status': 'ok',
            'fwd_ms': ms / 3, 'fwdbwd_ms': ms, 'fwdbwd_peak_mib': peak,
            'fwdbwd_user_ms': ms / 2, 'fwdbwd_sys_ms': ms / 4,
            'fwdbwd_minor_faults': 10.0 * n}


def _rows(hsa_large, floor_large=40.0, peak=7000.0):
    return [_row('hsa', SMALL, 100.0), _row('fresh_memory', SMALL, 2.0),
            _row('hsa', LARGE, hsa_large, peak),
            _row('fresh_memory', LARGE, floor_large)]


def test_summary_of_one_run():
    run = bench.run_summary(_rows(1500.0), SMALL, LARGE)
    assert run['hsa_growth'] == 15.0 and run['floor_growth'] == 20.0
    assert run['hsa_user_growth'] == 15.0
    assert run['hsa_peak_mib_large'] == 7000.0
    assert run[f'hsa_{LARGE}_fwdbwd_sys_ms'] == 375.0
    assert run[f'fresh_memory_{SMALL}_fwdbwd_minor_faults'] == 10.0 * SMALL


def test_target_is_the_median_growth_and_every_peak():
    runs = [bench.run_summary(_rows(ms), SMALL, LARGE)
            for ms in (1500.0, 2500.0, 1900.0)]
    target = bench.evaluate(runs)
    assert target['median_hsa_growth'] == 19.0
    assert target['median_hsa_user_growth'] == 19.0
    assert target['median_floor_growth'] == 20.0
    assert target['status'] == 'PASS'
    runs.append(bench.run_summary(_rows(1000.0, peak=9000.0), SMALL, LARGE))
    assert bench.evaluate(runs)['status'] == 'FAIL'  # one peak above 8 GB
    slow = [bench.run_summary(_rows(ms), SMALL, LARGE)
            for ms in (2100.0, 2500.0)]
    assert bench.evaluate(slow)['status'] == 'FAIL'
    missing = [bench.run_summary(_rows(1500.0)[:2], SMALL, LARGE)]
    assert bench.evaluate(missing)['status'] == 'N/A'
    killed = _rows(1500.0)[:2] + [{'method': 'hsa', 'n': LARGE,
                                   'status': 'error', 'error': 'signal 9'}]
    target = bench.evaluate([bench.run_summary(killed, SMALL, LARGE)])
    assert target['status'] == 'FAIL' and 'signal 9' in \
        target['hsa_failures'][0]


def test_main_writes_the_runs(tmp_path, monkeypatch, capsys):
    calls = []

    def run_all(args, on_row):
        calls.append(args)
        return _rows(1500.0 + 100 * len(calls))

    monkeypatch.setattr(ba, 'run_all', run_all)
    probe = {'gib': 2.0, 'us_per_fault': {'first': 20.0, 'after_0s': 1.5}}
    monkeypatch.setattr(bench, 'measure_page_reuse', lambda args: probe)
    out = tmp_path / 'growth.json'
    markdown = tmp_path / 'growth.md'
    assert bench.main(['--runs', '2', '--thp', '--out', str(out),
                       '--markdown', str(markdown)]) == 0
    assert len(calls) == 2
    assert calls[0].thp and calls[0].methods == bench.METHODS
    assert sorted(calls[0].sizes) == [SMALL, LARGE]
    payload = json.loads(out.read_text())
    assert [r['hsa_growth'] for r in payload['runs']] == [16.0, 17.0]
    assert payload['target']['median_hsa_growth'] == 16.5
    assert payload['config']['thp_env'] == ba.THP_ENV
    assert len(payload['rows']) == 2
    text = capsys.readouterr().out
    assert '[PASS] median HSA growth over 2 run(s) 16.5' in text
    assert markdown.read_text().startswith('| run |')
    assert payload['page_reuse'] == probe
    assert 'first 20.0, after 0s 1.50' in markdown.read_text()


def test_page_reuse_probe_fills_fresh_memory_after_each_pause():
    costs = bench.page_reuse_costs(0.25, (0.0, 0.01))
    assert costs['gib'] == 0.25
    assert list(costs['us_per_fault']) == ['first', 'after_0s',
                                           'after_0.01s']
    assert all(v >= 0 for v in costs['us_per_fault'].values())


def test_failed_probe_is_reported_not_raised():
    text = bench.format_page_reuse({'probe': 'page_reuse', 'status': 'error',
                                    'error': 'worker exited with code 1'})
    assert text == 'fresh memory probe: worker exited with code 1'
