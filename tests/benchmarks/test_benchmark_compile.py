r"""Smoke test of ``benchmarks/bench_compile.py``: a worker in this process
with a cheap backend (``eager``: Dynamo traces, nothing is code-generated)
returns sane fields, and the quick mode runs end to end and writes its JSON
and Markdown. No timing is asserted."""
import json
import math

import pytest
import torch

from tests.helpers.benchmarks import load_benchmark

pytest.importorskip('rdkit')

bench = load_benchmark('bench_compile')


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def check_row(row, batches):
    assert row['status'] == 'ok', row.get('error')
    assert row['num_batches'] == batches
    assert len(row['graphs']) == len(row['compiled_samples_ms']) == batches
    assert row['graphs'] == sorted(row['graphs']) and row['graphs'][0] > 0
    assert row['compiling_batches'][0] == 0
    assert row['graph_breaks'] > 0  # at least one per attention
    assert row['max_abs_diff'] < 1e-4
    for key in ('first_call_s', 'second_call_s', 'eager_ms', 'compiled_ms',
                'speedup'):
        assert math.isfinite(row[key]) and row[key] > 0, key


@pytest.mark.parametrize('model', bench.MODELS)
def test_worker_in_process(model, tmp_path, fresh_dynamo):
    data = tmp_path / 'molecules.pt'
    torch.save(bench.load_molecules(6), data)
    args = bench.parse_args([
        '--worker', '--data', str(data), '--model', model, '--channel', '8',
        '--thread', '1', '--batch-size', '2', '--warmup', '2',
        '--backend', 'eager'])
    threads = torch.get_num_threads()
    try:
        row = bench.run_worker(args)
    finally:
        torch.set_num_threads(threads)
    check_row(row, batches=3)
    assert (row['model'], row['channels'], row['threads']) == (model, 8, 1)
    table = bench.format_table([row], markdown=True)
    assert table.count('\n') == 2 and bench.LABELS[model] in table


def test_quick_mode_end_to_end(tmp_path):
    out, markdown = tmp_path / 'quick.json', tmp_path / 'quick.md'
    assert bench.main(['--quick', '--backend', 'eager', '--batches', '1',
                       '--out', str(out), '--markdown', str(markdown)]) == 0
    payload = json.loads(out.read_text())
    assert payload['benchmark'] == 'bench_compile'
    assert payload['config']['backend'] == 'eager'
    assert payload['machine']['cores'] >= 1
    (row, ) = payload['results']
    check_row(row, batches=3)
    assert markdown.read_text().startswith('| model |')


def test_bad_warmup():
    with pytest.raises(SystemExit):
        bench.parse_args(['--warmup', '1'])
