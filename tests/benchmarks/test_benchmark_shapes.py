r"""Smoke test of ``benchmarks/bench_shapes.py``: the trees have the shapes
they promise, the competing processes always end, a worker past its
timeout becomes a row, and the ``--quick`` run writes every row of every
case, measured and finite or with the reason it is not. No timing is
asserted."""
import json
import math

import pytest
import torch

from hsa_geo import Hierarchy
from tests.helpers.benchmarks import load_benchmark

bench = load_benchmark('bench_shapes')


def hierarchy(parent, n):
    return Hierarchy.from_parent(parent, n)


def test_wide_and_deep_trees():
    flat = hierarchy(bench.flat_parent(100), 100)
    assert (flat.depth, flat.num_families, flat.max_branching) == (1, 1, 100)
    para = hierarchy(bench.paragraph_parent([50, 5, 5]), 60)
    assert (para.depth, para.num_families, para.max_branching) == (2, 4, 50)

    n = 100
    cat = hierarchy(bench.caterpillar_parent(n), n)
    binary = hierarchy(bench.balanced_binary_parent(n), n)
    assert (cat.depth, binary.depth) == (n - 1, math.ceil(math.log2(n)))
    assert cat.num_families == binary.num_families == n - 1
    assert cat.max_branching == binary.max_branching == 2
    assert cat.num_sibling_pairs == binary.num_sibling_pairs == 4 * (n - 1)

    parent = bench.random_recursive_parent(n, seed=1)
    rec = hierarchy(parent, n)
    assert rec.num_families == n - 1 and rec.num_trees == 1
    assert torch.equal(parent, bench.random_recursive_parent(n, seed=1))
    assert not torch.equal(parent, bench.random_recursive_parent(n, 2))


def test_dendrogram_of_molecules():
    pytest.importorskip('rdkit')
    pytest.importorskip('scipy')
    parent, n = bench.dendrogram_parent(32)
    h = hierarchy(parent, n)
    assert n == 32 and h.num_families == 31 and h.max_branching == 2
    assert h.num_trees == 1


def test_worker_timeout_becomes_a_row():
    args = bench.parse_args(['--timeout', '0.5'])
    spec = bench.spec_of('deep', 'hsa', 'caterpillar', 64, 1)
    row = bench.run_spec(spec, args)
    assert row['status'] == 'timeout' and row['tree'] == 'caterpillar'
    assert 'timeout' in row['error']


def test_call_peak_counts_what_the_call_holds():
    # In a fresh worker: one forward+backward holds at least the gradients
    # of q, k and v (fresh blocks, each mapped on its own).
    args = bench.parse_args([])
    n = 2048
    spec = bench.spec_of('wide', 'hsa', 'flat', n, 1, target='vs_sdpa',
                         call_peak=True)
    row = bench.run_spec(spec, args)
    assert row['status'] == 'ok', row.get('error')
    assert row['fwdbwd_call_mib'] >= 3 * n * 4 * 64 * 4 / 2**20


def test_quick_run(tmp_path):
    out, md = tmp_path / 'shapes.json', tmp_path / 'shapes.md'
    # One thread: on a busy 2-core machine two-thread rows can take seconds.
    assert bench.main(['--quick', '--threads', '1', '--json', str(out),
                       '--markdown', str(md)]) == 0
    payload = json.loads(out.read_text())
    assert payload['complete'] and payload['machine']['cores'] >= 1
    assert 'commit' in payload['config']  # None outside a git checkout
    rows = payload['results']
    threads = sorted({1, payload['config']['threads']})
    expected = ([('wide', m, t) for t, _, _ in bench.QUICK_WIDE
                 for m in ('hsa', 'sdpa')] +
                [('deep', 'hsa', t) for t in bench.DEEP_TREES] +
                [('contention', m, 'balanced16') for _ in bench.QUICK_LOADS
                 for m in ('hsa', 'qkv_projection') for _ in threads])
    assert [(r['case'], r['method'], r['tree']) for r in rows] == expected
    for row in rows:
        if row['status'] != 'ok':  # a failure names its reason
            assert row['error']
            continue
        phases = ['fwd'] if row['forward_only'] else ['fwd', 'fwdbwd']
        for phase in phases:
            assert math.isfinite(row[f'{phase}_ms'])
            assert math.isfinite(row[f'{phase}_peak_mib'])
        if not row['forward_only']:  # the gradients of q, k, v at least
            grads = 3 * row['n'] * 4 * 64 * 4 / 2**20
            assert row['fwdbwd_live_mib'] >= grads
        assert row['output_finite']
        if row['case'] == 'wide' and row['target'] == 'vs_sdpa':
            assert row['fwdbwd_call_mib'] >= 0
    assert {t['status'] for t in payload['targets']} <= {
        'met', 'not met', 'n/a'}
    assert {t['case'] for t in payload['targets']} == set(bench.CASES)
    text = md.read_text()
    for heading in ('### wide', '### deep', '### contention', '### targets'):
        assert heading in text


def test_a_target_hsa_could_not_run_is_not_met():
    """HSA failing (or its call-peak worker) is 'not met'; only a peer's
    failure leaves a target unmeasured ('n/a')."""
    def wide(method, **extra):
        return dict(dict(case='wide', method=method, tree='flat', n=8,
                         target='vs_sdpa', status='ok', fwdbwd_ms=10.0,
                         fwdbwd_call_mib=5.0), **extra)

    def verdicts(rows):
        return {t['name']: t['status']
                for t in bench.evaluate_targets(rows, 2)}

    ok = verdicts([wide('hsa'), wide('sdpa')])
    assert set(ok.values()) == {'met'}
    peak = 'flat N=8 peak memory'
    for hsa in (wide('hsa', fwdbwd_call_mib=None, call_peak_status='error',
                     call_peak_error='error: killed'),
                wide('hsa', fwdbwd_call_mib=0.0)):
        assert verdicts([hsa, wide('sdpa')])[peak] == 'not met'
    assert verdicts([wide('hsa'), wide('sdpa', fwdbwd_call_mib=None)])[
        peak] == 'n/a'

    def contention(method, threads, status='ok'):
        return dict(case='contention', method=method, load=1,
                    threads=threads, status=status, fwd_ms=1.0)
    rows = [contention('hsa', 1), contention('hsa', 2, 'timeout'),
            contention('qkv_projection', 1), contention('qkv_projection', 2)]
    got = verdicts(rows)
    assert got['load 1: threads'] == 'not met'
    assert got['load 1: HSA/QKV 2t'] == 'not met'
    assert got['load 1: HSA/QKV 1t'] == 'met'
    rows[1]['status'], rows[3]['status'] = 'ok', 'error'
    assert verdicts(rows)['load 1: HSA/QKV 2t'] == 'n/a'


@pytest.mark.parametrize('device,capped', [
    ('cpu', True), ('cpu:0', True), ('cuda', False), ('cuda:1', False)])
def test_workers_cap_the_address_space_on_the_cpu_only(
        monkeypatch, device, capped):
    caps = []
    monkeypatch.setattr(bench, 'cap_address_space', caps.append)
    monkeypatch.setattr(bench, 'run_case', lambda spec, args, send: spec)
    monkeypatch.setattr(bench.ba, 'send_result', lambda row: None)
    args = type('Args', (), {'spec': '{}', 'device': device,
                             'memory_cap_gib': 3.0})()
    assert bench.worker_main(args) == 0
    assert caps == ([3.0] if capped else [])
