r"""Smoke test of ``benchmarks/bench_loader_workers.py``: on a few molecules
both loaders run with a worker under both sharing strategies, the rows, the
table and the JSON have their fields, and the process's sharing strategy
is left as it was. No timing is asserted."""
import json

import pytest
import torch.multiprocessing as mp

from tests.helpers.benchmarks import load_benchmark

pytest.importorskip('rdkit')
pytest.importorskip('ogb')

bench = load_benchmark('bench_loader_workers')


def test_main_writes_rows_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, 'READY_S', 0.2)
    out, md = tmp_path / 'workers.json', tmp_path / 'workers.md'
    before = mp.get_sharing_strategy()
    assert bench.main(['--quick', '--batches', '3', '--out', str(out),
                       '--markdown', str(md)]) == 0
    assert mp.get_sharing_strategy() == before
    payload = json.loads(out.read_text())
    assert payload['config']['batch_size'] == 4
    rows = payload['results']
    assert [(r['strategy'], r['kind']) for r in rows] == [
        (s, k) for s in bench.STRATEGIES for k in bench.KINDS]
    for row in rows:
        assert len(row['receive_samples_ms']) == 2  # the first not timed
        assert row['main_ms'] == pytest.approx(row['receive_ms'] +
                                               row['layout_ms'])
        nested = row['kind'] == 'nested'
        assert len(row['layout_samples_ms']) == (2 if nested else 0)
        plain = next(r for r in rows if r['kind'] == 'plain'
                     and r['strategy'] == row['strategy'])
        assert row['main_over_plain'] == pytest.approx(row['main_ms'] /
                                                       plain['main_ms'])
    plain, nested = rows[0], rows[1]
    assert nested['tensors'] > plain['tensors'] > 0  # the tree's keys
    printed = capsys.readouterr().out
    assert 'receive ms' in printed and 'file_system' in printed
    assert md.read_text().startswith('| sharing strategy | batch |')


def test_at_least_two_batches():
    with pytest.raises(SystemExit):
        bench.parse_args(['--batches', '1'])
