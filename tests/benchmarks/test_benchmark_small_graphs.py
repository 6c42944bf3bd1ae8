r"""Smoke test of ``benchmarks/bench_small_graphs.py``: on a few molecules
every method runs at every size and thread count, the rows, the per-batch
costs, the tables and the targets have their fields, and the JSON and
Markdown are written. No timing is asserted."""
import json
import math

import pytest
import torch

from tests.helpers.benchmarks import load_benchmark

pytest.importorskip('rdkit')
pytest.importorskip('ogb')

bench = load_benchmark('bench_small_graphs')


def _finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_main_measures_every_method_and_size(tmp_path, capsys):
    out, md = tmp_path / 'small.json', tmp_path / 'small.md'
    # One thread: on a busy 2-core machine two threads can take seconds
    # per call, waiting for each other.
    assert bench.main(['--quick', '--threads', '1', '--json', str(out),
                       '--markdown', str(md)]) == 0
    payload = json.loads(out.read_text())
    batch = payload['config']['batch']
    assert batch['molecules'] == bench.QUICK_BATCH
    assert batch['atoms'] > batch['molecules']
    assert batch['tree_nodes'] > batch['atoms']
    assert payload['machine']['cores'] >= 1
    assert payload['config']['device'] == 'cpu'
    commit = payload['config']['commit']
    assert commit is None or len(commit.split('+')[0]) == 40
    rows = payload['results']
    assert [(r['channels'], r['threads']) for r in rows] == [
        (64, 1), (256, 1)]
    for row in rows:
        for method in bench.METHODS + ['hsa_conv_fresh']:
            assert _finite_positive(row[f'{method}_ms'])
            assert len(row[f'{method}_samples_ms']) == 1
        for method in bench.METHODS:
            assert row['output'][method] == {
                'finite': True, 'shape': [batch['atoms'], row['channels']]}
        for peer in bench.PEERS:
            assert row[f'hsa_conv_over_{peer}'] == pytest.approx(
                row['hsa_conv_ms'] / row[f'{peer}_ms'])
            assert math.isfinite(row[f'hsa_conv_per_batch_over_{peer}'])
    costs = payload['per_batch_costs']
    assert [c['threads'] for c in costs] == [1]
    for cost in costs:
        for key in ('plain_collate', 'nested_collate', 'hierarchy', 'layout',
                    'build'):
            assert _finite_positive(cost[f'{key}_ms'])
        assert cost['build_per_molecule_ms'] == pytest.approx(
            cost['build_ms'] / bench.QUICK_BATCH)
    assert len(payload['targets']) == 2 * len(rows)
    assert {t['status'] for t in payload['targets']} <= {'PASS', 'FAIL'}
    assert payload['shared_cpu'] == []  # only with --competing
    printed = capsys.readouterr().out
    assert 'GPS dense attention ms' in printed and 'HSAConv / ' in printed
    assert md.read_text().startswith('| channels | threads |')
    assert 'competing processes' not in printed


def test_shared_cpu_rows(tmp_path, capsys):
    out, md = tmp_path / 'shared.json', tmp_path / 'shared.md'
    assert bench.main(['--quick', '--threads', '1', '--channels', '64',
                       '--competing', '0', '1', '--json', str(out),
                       '--markdown', str(md)]) == 0
    rows = json.loads(out.read_text())['shared_cpu']
    assert [(r['competing'], r['threads'], r['channels']) for r in rows] == [
        (0, 1, 64), (1, 1, 64)]
    for row in rows:
        for method in bench.SHARED_CPU_METHODS:
            assert _finite_positive(row[f'{method}_ms'])
            assert row[f'{method}_over_one_thread'] == 1.0
        assert row['hsa_conv_over_transformer_conv'] == pytest.approx(
            row['hsa_conv_ms'] / row['transformer_conv_ms'])
    assert 'competing processes' in capsys.readouterr().out
    assert '| competing processes | threads |' in md.read_text()


def test_thread_ratios_are_per_load():
    rows = [dict(competing=c, threads=t, hsa_conv_ms=h, transformer_conv_ms=1.0)
            for c, t, h in ((0, 1, 2.0), (0, 2, 3.0), (1, 1, 4.0),
                            (1, 2, 10.0))]
    rows = bench.add_thread_ratios(rows)
    assert [r['hsa_conv_over_one_thread'] for r in rows] == [
        1.0, 1.5, 1.0, 2.5]
    # Without a one-thread row under that load: no ratio.
    lone = bench.add_thread_ratios([dict(
        competing=2, threads=2, hsa_conv_ms=1.0, transformer_conv_ms=1.0)])
    assert lone[0]['hsa_conv_over_one_thread'] is None
    assert '| 2 | 2 |' in bench.format_shared_cpu(lone, markdown=True)


def test_arguments():
    args = bench.parse_args(['--json', 'a.json'])
    assert args.threads == [1, 2] and args.channels == [64, 256]
    assert (args.batch_size, args.rounds) == (bench.BATCH_SIZE, bench.ROUNDS)
    quick = bench.parse_args(['--quick', '--threads', '2'])
    assert (quick.batch_size, quick.rounds, quick.threads) == (
        bench.QUICK_BATCH, 1, [2])
    assert quick.out.name == 'bench_small_graphs_cpu_quick.json'
    # On an accelerator: one row per size at the current thread count.
    gpu = bench.parse_args(['--device', 'cuda'])
    assert gpu.threads == [torch.get_num_threads()]
    assert gpu.out.name == 'bench_small_graphs_cuda.json'
    with pytest.raises(SystemExit):
        bench.parse_args(['--channels', '66'])
    assert args.competing == []
    with pytest.raises(SystemExit):
        bench.parse_args(['--competing', '-1'])
    with pytest.raises(SystemExit):
        bench.parse_args(['--competing', '1', '--device', 'cuda'])


def test_target_logic():
    row = dict(channels=64, threads=1, hsa_conv_ms=4.0,
               gps_dense_attention_ms=10.0, transformer_conv_ms=1.0,
               hsa_conv_over_gps_dense_attention=0.4,
               hsa_conv_over_transformer_conv=4.0)
    targets = bench.evaluate_targets([row])
    status = {t['peer']: t['status'] for t in targets}
    assert status == {'gps_dense_attention': 'PASS',
                      'transformer_conv': 'FAIL'}
    assert '4.0 ms / 1.0 ms = 4.00x' in targets[1]['detail']
    assert {t['status'] for t in bench.evaluate_targets([])} == {'N/A'}


def test_per_batch_cost_adds_collate_hierarchy_and_first_call():
    row = dict(hsa_conv_ms=10.0, first_call_extra_ms=1.0,
               gps_dense_attention_ms=20.0, transformer_conv_ms=5.0)
    bench.add_per_batch(row, dict(collate_added_ms=3.0, hierarchy_ms=1.0))
    assert row['per_batch_ms'] == pytest.approx(5.0)
    assert row['hsa_conv_per_batch_over_gps_dense_attention'] == \
        pytest.approx(0.75)
    assert row['hsa_conv_per_batch_over_transformer_conv'] == \
        pytest.approx(3.0)


def test_timed_calls_wait_for_the_accelerator(monkeypatch):
    # A GPU call returns before its kernels finish: every timed call ends
    # with a synchronisation of the device it runs on (none on the CPU).
    waited = []
    monkeypatch.setattr(torch.cuda, 'synchronize', waited.append)
    x = torch.ones(3, requires_grad=True)
    case = bench.ba.Case(lambda: x * 2, [x])
    bench.forward_backward(case, 'cpu')()
    assert waited == [] and x.grad.tolist() == [2.0, 2.0, 2.0]
    bench.forward_backward(case, 'cuda:0')()
    assert waited == [torch.device('cuda:0')]
