r"""Smoke test of ``benchmarks/bench_documents.py``: on a tiny man-pages
corpus written here, every method runs an epoch of the example's model on
both corpora (pages and their sections), and the JSON has every row with
a positive time. No timing is asserted."""
import json
import math

import pytest

from tests.helpers.benchmarks import load_benchmark
from tests.helpers.man_page_files import write_man_pages

bench = load_benchmark('bench_documents')
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def man_pages(tmp_path_factory):
    r"""24 gzipped roff pages of sections 2 and 3 (as the example's test
    writes them), and a root for the processed dataset."""
    folder = write_man_pages(tmp_path_factory.mktemp('man'), 24)
    return folder, str(tmp_path_factory.mktemp('data'))


def test_quick_run_has_every_method_and_corpus(man_pages, tmp_path, capsys):
    pages, root = man_pages
    out, md = tmp_path / 'documents.json', tmp_path / 'documents.md'
    assert bench.main(['--quick', '--paths', pages, '--root', root,
                       '--out', str(out), '--markdown', str(md)]) == 0
    payload = json.loads(out.read_text())
    assert payload['machine']['threads'] == 1
    rows = {(r['corpus'], r['method']): r for r in payload['results']}
    assert set(rows) == {(c, m) for c in bench.CORPORA
                         for m in bench.METHODS}
    for row in rows.values():
        assert row['status'] == 'ok', row.get('reason')
        assert row['finite']
        assert row['seconds_per_epoch'] > 0 and row['tokens_per_second'] > 0
        assert row['timed_batches'] <= row['epoch_batches']
        assert math.isfinite(row['peak_mib'])
    for name in bench.CORPORA:
        assert rows[(name, 'flat_sdpa')]['ratio_to_flat_sdpa'] == 1.0
        info = payload['config']['corpora'][name]
        assert info['whole']['tokens'] >= info['cut']['tokens'] >= \
            info['train']['tokens'] > 0
        assert info['cut']['max_tokens'] <= bench.QUICK_DOC_TOKENS[name]
    # Every section is a document: more of them, the same tokens.
    pages_info = payload['config']['corpora']['man_pages']['whole']
    sections = payload['config']['corpora']['man_sections']['whole']
    assert sections['documents'] > pages_info['documents']
    assert sections['tokens'] == pages_info['tokens']
    assert {t['status'] for t in payload['targets']} <= {'PASS', 'FAIL'}
    assert md.read_text().startswith('| corpus | method | s/epoch |')
    assert 'ratio to flat_sdpa' in capsys.readouterr().out


def test_flat_sdpa_is_skipped_above_the_memory_budget(man_pages, tmp_path):
    pages, root = man_pages
    out = tmp_path / 'skip.json'
    bench.main(['--quick', '--paths', pages, '--root', root, '--out',
                str(out), '--corpora', 'man_pages', '--methods', 'hsa',
                'flat_sdpa', '--max-gb', '1e-9'])
    rows = {r['method']: r for r in json.loads(out.read_text())['results']}
    assert rows['hsa']['status'] == 'ok'
    assert rows['flat_sdpa']['status'] == 'skipped'
    assert '--max-gb' in rows['flat_sdpa']['reason']
    assert 'ratio_to_flat_sdpa' not in rows['hsa']


def test_batches_and_subsets():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]
    random = bench.epoch_batches(lengths, 4, seed=0)
    bucketed = bench.epoch_batches(lengths, 4, seed=0, bucketed=True)
    for batches in (random, bucketed):
        assert sorted(i for b in batches for i in b) == list(range(10))
    assert sorted(sorted(lengths[i] for i in b) for b in bucketed) == [
        [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    # One drawn from each stratum of the sorted keys.
    chosen = bench.stratified_subset(lengths, 2, seed=0)
    assert len(chosen) == 2 and chosen == sorted(chosen)
    assert sorted(lengths[i] <= 5 for i in chosen) == [False, True]
    assert bench.stratified_subset(lengths, 0, seed=0) == list(range(10))
    plan = bench.timed_plan(lengths * 4, 16, seed=0, bucketed=False)
    assert (len(plan.batches), plan.epoch_batches) == (1, 3)
    assert bench.dense_attention_gb(1000, 2, 2) == pytest.approx(
        16 * 2 * 1000**2 * 4 * 3 / 1e9)
