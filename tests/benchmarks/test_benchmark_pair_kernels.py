r"""Smoke test of ``benchmarks/bench_pair_kernels.py``: both modes run the
HSA core on a small family graph with the same output, record the pair
list's length, and the comparison takes the medians over rounds. No
timing is asserted."""
import json
import math

import pytest

from hsa_geo.functional.fused_pair_kernels import fused_pairs_variant
from tests.helpers.benchmarks import load_benchmark

pytest.importorskip('pymetis')

bench = load_benchmark('bench_pair_kernels')


@pytest.mark.parametrize('mode', bench.MODES)
def test_worker_runs(mode):
    args = bench.parse_args(['--worker', '--mode', mode, '--nodes', '300',
                             '--min-time', '0', '--max-repeats', '1',
                             '--threads', '1'])
    row = bench.run_worker(args)
    assert row['status'] == 'ok', row.get('error')
    assert row['output_finite'] and row['output_shape'] == [300, 4, 64]
    assert math.isfinite(row['fwdbwd_ms']) and row['fwdbwd_ms'] > 0
    assert row['pair_list_pairs'] > 0
    assert row['pair_list_products'] == row['pair_list_pairs'] * 4 * 64


@pytest.mark.parametrize('mode', bench.MODES)
def test_the_modes_take_the_paths_they_name(mode, monkeypatch):
    import hsa_geo.functional.dynamic_program as dp
    from hsa_geo.functional.fused_pair_kernels import fused_pairs
    if mode == 'kernels' and fused_pairs_variant() is None:
        pytest.skip('the fused kernels are not built here')
    calls = []
    real = dp.fused_scores_lse
    monkeypatch.setattr(dp, 'fused_scores_lse',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    case = bench.build(mode, 300, 'cpu')
    # A limit of 0 around the call: the kernels mode lifts it.
    with fused_pairs(True, max_products=0):
        case.forward()
    assert calls == ([1] if mode == 'kernels' else [])


def test_compare_takes_the_medians_over_rounds():
    def row(mode, ms, round_=0, n=10, threads=1):
        return {'method': mode, 'n': n, 'threads': threads, 'status': 'ok',
                'fwdbwd_ms': ms, 'pair_list_products': 1000 * n,
                'round': round_}

    rows = [row('kernels', 1.0), row('torch', 2.0), row('kernels', 3.0, 1),
            row('torch', 2.0, 1), row('kernels', 2.0, 2),
            row('torch', 8.0, 2), row('kernels', 5.0, n=20),
            row('torch', 4.0, n=20),
            dict(row('torch', 1.0, n=30), status='error'),
            row('kernels', 1.0, n=30)]
    out = bench.compare(rows, limit=15000)
    assert [(c['n'], c['kernels_ms'], c['torch_ms']) for c in out] == \
        [(10, 2.0, 2.0), (20, 5.0, 4.0)]
    assert [c['ratio'] for c in out] == [1.0, 1.25]
    assert [c['default_takes_kernels'] for c in out] == [True, False]
    table = bench.format_table(out, markdown=True)
    assert table.count('\n') == 3 and '0.50, 1.50, 0.25' in table
    # A failed row drops its round only: the others stay paired.
    rows[1]['status'] = 'error'
    assert '| 1.50, 0.25 |' in bench.format_table(
        bench.compare(rows, limit=15000), markdown=True)


@pytest.mark.skipif(fused_pairs_variant() is None,
                    reason='the fused kernels are not built here')
def test_main_writes_the_run(tmp_path):
    out = tmp_path / 'run.json'
    assert bench.main(['--sizes', '300', '--threads', '1', '--rounds', '1',
                       '--min-time', '0', '--max-repeats', '1', '--out',
                       str(out)]) == 0
    payload = json.loads(out.read_text())
    assert 'commit' in payload['config']
    assert [r['method'] for r in payload['results']] == bench.MODES
    assert len(payload['comparison']) == 1
