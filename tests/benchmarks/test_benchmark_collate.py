r"""Smoke test of ``benchmarks/bench_collate.py``: on a few molecules every
method runs, the rows, the table and the target report have their fields,
and the JSON is written. No timing is asserted."""
import json

import pytest

from tests.helpers.benchmarks import load_benchmark

pytest.importorskip('rdkit')
pytest.importorskip('ogb')

bench = load_benchmark('bench_collate')


def test_molecules_are_plain_and_nested_twins():
    plain, nested, seconds = bench.load_molecules(limit=6)
    assert len(plain) == len(nested) == 6 and seconds >= 0
    for data, signal in zip(plain, nested):
        assert set(data.keys()) == {'x', 'edge_index', 'edge_attr'}
        assert signal.x is data.x and signal.num_nodes == data.num_nodes
        assert signal.hierarchy.num_leaves == data.num_nodes


def test_main_writes_rows_table_and_target(tmp_path, capsys):
    out, md = tmp_path / 'collate.json', tmp_path / 'collate.md'
    assert bench.main(['--quick', '--molecules', '8', '--batch-sizes', '4',
                       '16', '--batches', '2', '--warmup', '0', '--threads',
                       '2', '--out', str(out), '--markdown', str(md)]) == 0
    payload = json.loads(out.read_text())
    assert payload['config']['molecules'] == 8
    assert payload['config']['batch_sizes'] == [4]  # 16 > 8 molecules
    assert payload['machine']['cores'] >= 1
    rows = payload['results']
    assert [(r['batch_size'], r['threads']) for r in rows] == [(4, 1), (4, 2)]
    for row in rows:
        for method in bench.METHODS:
            assert row[f'{method}_ms'] > 0
            assert len(row[f'{method}_samples_ms']) == 2
        assert row['added_ms'] == pytest.approx(row['hierarchy_ms'] -
                                                row['plain_ms'])
    # No row at the target's batch size: the target is not measured.
    assert payload['target']['status'] == 'N/A'
    printed = capsys.readouterr().out
    assert 'PyG collate ms' in printed and '[N/A]' in printed
    assert md.read_text().startswith('| batch | threads |')


def test_target_logic():
    row = dict(batch_size=bench.TARGET_BATCH, threads=1, plain_ms=2.0,
               hierarchy_ms=3.5, added_ms=1.5, added_ratio=0.75)
    assert bench.evaluate_target([row])['status'] == 'PASS'
    slow = dict(row, threads=2, added_ms=3.0, added_ratio=1.5)
    target = bench.evaluate_target([row, slow])
    assert target['status'] == 'FAIL' and target['ratio'] == 1.5
    assert '2 thread(s)' in target['detail']
