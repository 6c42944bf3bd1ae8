r"""Smoke test of ``benchmarks/bench_document_trees.py``: on two small man
pages written here, every corpus, tokenizer and mode runs, the rows, the
table, the comparison with a 'before' run and the target have their
fields, and the JSON is written. No timing is asserted."""
import json

import pytest

from tests.helpers.benchmarks import load_benchmark

bench = load_benchmark('bench_document_trees')

PAGES = {
    'man2/alpha.2': '.TH ALPHA 2\n.SH NAME\nalpha \\- a first page\n'
                    '.SH DESCRIPTION\nThe \\fBalpha\\fR call reads. It '
                    'works, mostly!\n.PP\nA second paragraph here.\n',
    'man3/beta.3': '.TH BETA 3\n.SH NAME\nbeta \\- a library page\n'
                   '.SH DESCRIPTION\nOnly one sentence here.\n'
                   '.SH SEE ALSO\nalpha(2)\n',
}


@pytest.fixture
def pages(tmp_path):
    for name, source in PAGES.items():
        path = tmp_path / 'man' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    (tmp_path / 'man' / 'man3' / 'gamma.3').symlink_to('beta.3')
    return str(tmp_path / 'man')


def test_corpus_of_sections_and_pages(pages):
    corpus = bench.load_corpus([pages])
    assert len(corpus['long']) == 2  # the link to beta.3 is left out
    assert len(corpus['short']) == 5  # 2 + 3 sections
    assert corpus['short'][0] == 'NAME\n\nalpha - a first page'
    assert '\n\n\n'.join(corpus['short'][:2]) == corpus['long'][0]
    stats = bench.describe(corpus['short'])
    assert stats['documents'] == 5 and stats['words'] == sum(
        len(t.split()) for t in corpus['long'])


def test_main_writes_rows_table_and_target(tmp_path, pages, capsys):
    out, md = tmp_path / 'trees.json', tmp_path / 'trees.md'
    before = tmp_path / 'before.json'
    corpus = bench.load_corpus([pages])
    before.write_text(json.dumps({
        'machine': {'threads': 1},
        'config': {'corpora': {c: bench.describe(corpus[c])
                               for c in bench.CORPORA}},
        'results': [dict(corpus=c, tokenizer=t, mode='serial', status='ok',
                         us_per_word=1e6) for c in bench.CORPORA
                    for t in bench.TOKENIZERS]}))
    assert bench.main(['--quick', '--paths', pages, '--workers', '2',
                       '--before', str(before), '--label', 'smoke',
                       '--out', str(out), '--markdown', str(md)]) == 0
    payload = json.loads(out.read_text())
    assert payload['label'] == 'smoke' and payload['machine']['cores'] >= 1
    assert payload['config']['pages'] == 2
    assert payload['config']['corpora']['short']['documents'] == 5
    rows = payload['results']
    assert [(r['corpus'], r['tokenizer'], r['mode']) for r in rows] == [
        (c, t, m) for c in bench.CORPORA for t in bench.TOKENIZERS
        for m in bench.MODES]
    for row in rows:
        if row['status'] == 'skipped':  # no MiniLM tokenizer installed
            assert row['tokenizer'] == 'minilm' and row['reason']
            continue
        assert row['seconds'] > 0 and row['us_per_word'] > 0
        assert row['speedup'] == pytest.approx(1e6 / row['us_per_word'])
        if row['mode'] == 'workers':
            assert row['workers'] == 2 and row['same_as_serial'] is True
    assert payload['target']['status'] == 'PASS'  # 'before' took 1 s/word
    printed = capsys.readouterr().out
    assert 'us/word' in printed and '[PASS]' in printed
    assert md.read_text().startswith('| documents | tokenizer | mode |')


def test_target_logic():
    rows = [dict(corpus='short', tokenizer='vocab', mode='serial', workers=0,
                 speedup=3.0),
            dict(corpus='short', tokenizer='vocab', mode='workers',
                 workers=2, speedup=5.5),
            dict(corpus='short', tokenizer='minilm', mode='serial',
                 workers=0, speedup=4.0),
            dict(corpus='long', tokenizer='minilm', mode='serial', workers=0,
                 speedup=9.0)]
    target = bench.evaluate_target(rows)
    assert target['status'] == 'FAIL' and target['speedup'] == 4.0
    assert 'vocab: 5.5x (workers (2))' in target['detail']
    rows[2]['speedup'] = 6.0
    assert bench.evaluate_target(rows)['status'] == 'PASS'
    assert bench.evaluate_target(rows[3:])['status'] == 'N/A'
    # every tokenizer asked for: one without a speedup leaves it open
    vocab_only = bench.evaluate_target(rows[:2])
    assert vocab_only['status'] == 'N/A' and 'minilm' in vocab_only['detail']
    assert bench.evaluate_target(rows[:2], ['vocab'])['status'] == 'PASS'


def test_speedups_only_against_the_same_corpus_and_threads():
    stats = {'short': {'words': 100}, 'long': {'words': 100}}
    before = {'machine': {'threads': 1},
              'config': {'corpora': {'short': {'words': 100},
                                     'long': {'words': 900}}},
              'results': [dict(corpus=c, tokenizer='vocab', mode='serial',
                               status='ok', us_per_word=8.0)
                          for c in ('short', 'long')]}
    assert bench.comparable_corpora(before, stats, 1) == ['short']
    assert bench.comparable_corpora(before, stats, 2) == []
    assert bench.comparable_corpora(None, stats, 1) == []
    rows = [dict(corpus=c, tokenizer='vocab', mode='serial', status='ok',
                 us_per_word=2.0) for c in ('short', 'long')]
    bench.add_speedups(rows, before, ['short'])
    assert rows[0]['speedup'] == 4.0 and 'speedup' not in rows[1]


def test_paired_with_earlier_code(tmp_path, pages):
    out = tmp_path / 'paired.json'
    root = str(bench.ba.REPO_ROOT)  # 'before' is this checkout too
    assert bench.main(['--paths', pages, '--tokenizers', 'vocab',
                       '--corpora', 'short', '--modes', 'serial',
                       '--rounds', '2', '--before-code', root,
                       '--out', str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload['config']['before_code'] == root
    row, = payload['results']
    assert row['paired'] and len(row['before_samples_s']) == 2
    assert len(row['samples_s']) == 2 and row['in_process_s'] > 0
    assert row['speedup'] == pytest.approx(row['before_us_per_word'] /
                                           row['us_per_word'])
