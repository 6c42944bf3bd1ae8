r"""Smoke test of ``benchmarks/bench_tree_order.py``: the synthetic tree
shuffles the leaves of a balanced tree, every variant runs on a small graph
(tree order takes the fused leaf path, the graph's order does not), and the
summary pairs the rounds. No timing is asserted."""
import importlib.util
import math

import pytest
import torch

from hsa_geo import Hierarchy
from tests.helpers.benchmarks import load_benchmark

HAVE_METIS = importlib.util.find_spec('pymetis') is not None
TREES = ['metis', 'synthetic'] if HAVE_METIS else ['synthetic']


bench = load_benchmark('bench_tree_order')


def test_synthetic_parent():
    parent = bench.synthetic_parent(256)
    h = Hierarchy.from_parent(parent, 256)
    assert h.depth == 2 and h.max_branching == 16
    assert torch.bincount(parent[:256]).max() == 16
    assert not torch.equal(parent[:256], parent[:256].sort().values)
    assert h.layout.leaf_blocks is None


@pytest.mark.parametrize('tree', TREES)
def test_workers_and_summary(tree):
    rows = []
    for method in bench.METHODS:
        args = bench.parse_args(['--worker', '--method', method, '--tree',
                                 tree, '--nodes', '256', '--min-time', '0',
                                 '--max-repeats', '1'])
        row = bench.run_worker(args)
        assert row['status'] == 'ok', row.get('error')
        assert row['output_finite'] and row['output_shape'] == [256, 256]
        assert math.isfinite(row['fwdbwd_ms']) and row['fwdbwd_ms'] > 0
        # A METIS family graph keeps under half of the sibling pairs: its
        # families run on the pair list, which no order fuses.
        assert row['fused'] == (method == 'tree_order' or (
            method == 'family_tree_order' and tree != 'metis'))
        assert ('order_ms' in row) == method.endswith('tree_order')
        row['round'] = 0
        rows.append(row)
    summary = bench.summarize(rows)
    assert [s['method'] for s in summary] == bench.METHODS
    assert summary[0]['fwdbwd_ratio'] is None
    assert summary[1]['fwdbwd_ratio'] > 0
    assert bench.format_table(summary, markdown=True).count('\n') == 5


def test_ratios_pair_rows_of_the_same_round():
    """A round where the original order failed drops that round's ratio
    only (rows were paired by position: every later pair was off)."""
    def row(method, round_, ms, status='ok'):
        return dict(method=method, round=round_, status=status, fused=False,
                    fwd_ms=ms, fwdbwd_ms=2 * ms, fwdbwd_peak_mib=1.0,
                    setup_ms=1.0)
    rows = [row('original', 0, 1.0, 'error'), row('tree_order', 0, 9.0),
            row('original', 1, 4.0), row('tree_order', 1, 2.0),
            row('original', 2, 8.0), row('tree_order', 2, 2.0)]
    summary = {s['method']: s for s in bench.summarize(rows)}
    assert summary['tree_order']['fwd_ratio'] == (0.5 + 0.25) / 2
