r"""Smoke test of ``benchmarks/bench_family_graph.py``: the generated graph
is what it says, the context count equals the support of the dense HSA
matrix, every method runs on a small graph, and a run records its commit. No
timing is asserted."""
import json
import math

import pytest
import torch

from hsa_geo import hierarchical_attention_matrix
from tests.helpers.benchmarks import load_benchmark

pytest.importorskip('pymetis')

bench = load_benchmark('bench_family_graph')


def test_community_graph():
    e = bench.community_graph(2000, 14000, seed=3)
    assert e.size(0) == 2 and 0.9 * 14000 <= e.size(1) <= 1.1 * 14000
    assert (e[0] != e[1]).all()
    pairs = set(map(tuple, e.t().tolist()))
    assert len(pairs) == e.size(1)  # no duplicates
    assert all((b, a) in pairs for a, b in pairs)  # undirected
    assert torch.equal(e, bench.community_graph(2000, 14000, seed=3))


@pytest.mark.parametrize('family_graph', [False, True])
def test_context_size_is_the_support_of_q(family_graph):
    from torch_geometric.data import Data

    from hsa_geo.transforms import GraphHierarchy
    e = bench.community_graph(150, 500, seed=1)
    h = GraphHierarchy(branching=4, family_graph=family_graph)(
        Data(edge_index=e, num_nodes=150)).hierarchy
    q = torch.randn(150, 1, 2, dtype=torch.float64)
    Q = hierarchical_attention_matrix(q, q, h)[0]
    assert torch.equal(bench.context_size(h).long(), (Q > 0).sum(-1))


@pytest.mark.parametrize('method', bench.METHODS)
def test_worker_runs(method):
    args = bench.parse_args(['--worker', '--method', method, '--nodes', '300',
                             '--edges', '2000', '--min-time', '0',
                             '--max-repeats', '1', '--threads', '1'])
    row = bench.run_worker(args)
    assert row['status'] == 'ok', row.get('error')
    # SGFormerAttention averages its heads; the HSA core keeps them apart.
    shape = {'sgformer_attention': [300, 64],
             'hsa_core_family': [300, 4, 64],
             'hsa_core_dense': [300, 4, 64]}.get(method, [300, 256])
    assert row['output_finite'] and row['output_shape'] == shape
    assert math.isfinite(row['fwdbwd_ms']) and row['fwdbwd_ms'] > 0
    assert 1 <= row['context']['min'] <= row['context']['max'] <= 300
    if method in bench.GLOBAL_PEERS:
        assert row['context']['min'] == 300
    if method.startswith('hsa'):  # the first call's derivations, untimed
        assert row['layout_ms'] > 0 and row['setup_ms'] > 0
    if method.endswith('_family'):
        assert row['family_edges'] > 0
        assert row['scored_pairs'] <= 2 * row['family_edges']
    targets = bench.evaluate_target([row])
    scored = 'PASS' if method == 'hsa_core_family' else 'N/A'
    assert [t['status'] for t in targets] == ['N/A', scored, 'N/A', 'N/A']
    assert bench.format_table([row], markdown=True).count('\n') == 2


def test_evaluate_target():
    def row(method, ms):
        return {'method': method, 'n': 10, 'status': 'ok', 'fwdbwd_ms': ms}

    rows = [row('hsa_conv_family', 3.0), row('transformer_conv', 4.0),
            row('hsa_core_dense', 1.0), row('hsa_core_family', 3.0),
            row('sgformer_attention', 2.0)]
    rows[3].update(scored_pairs=300, family_edges=100)
    targets = bench.evaluate_target(rows)
    assert [t['status'] for t in targets] == ['FAIL', 'FAIL', 'PASS', 'FAIL']
    assert [t['ratio'] for t in targets] == [0.75, 3.0, 0.5, 1.5]
    rows[0]['fwdbwd_ms'], rows[3]['scored_pairs'] = 2.0, 150
    assert [t['status'] for t in bench.evaluate_target(rows)][:2] == \
        ['PASS', 'PASS']


def test_scored_pairs_counts_pair_lists_and_tables():
    from hsa_geo import Hierarchy
    h = Hierarchy.from_parent([6, 6, 6, 7, 7, 8, 8, 8, -1], 6)
    # three families of 3, 2 and 3 children: 6 + 2 + 6 ordered pairs
    assert bench.scored_pairs(h) == 14
    h = h.with_family_graph(torch.tensor([[0, 3], [1, 4]]))
    assert bench.scored_pairs(h) == 2


def test_main_writes_the_run(tmp_path):
    out = tmp_path / 'run.json'
    bench.main(['--nodes', '300', '--edges', '2000', '--methods',
                'hsa_core_family', '--min-time', '0', '--max-repeats', '1',
                '--threads', '1', '--out', str(out)])
    payload = json.loads(out.read_text())
    assert 'commit' in payload['config']  # None outside a git checkout
    assert [row['method'] for row in payload['results']] == \
        ['hsa_core_family']
