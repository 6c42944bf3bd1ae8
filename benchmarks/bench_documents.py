r"""An epoch of the document classifier of
``examples/document_classification.py``: HSA along the document tree
against flat softmax attention (a padded transformer, as a transformer
library runs it) and sentence-local attention, on long and on short real
documents.

What
----
Two corpora of real documents, both read offline from the installed
Debian man pages (:class:`hsa_geo.datasets.ManPages`):

* ``man_pages`` (long): every page a document, as the example trains on
  them (its ``load_documents`` and ``light_document``), cut to its first
  ``--max-doc-tokens`` tokens (4,096 by default; ``0``: whole pages);
* ``man_sections`` (short): every section of every page a document of its
  own: the section's text (``text`` and the ``cluster_offsets`` of the
  page's ``'section'`` clusters) through
  :class:`hsa_geo.transforms.DocumentHierarchy` with the dataset's
  vocabulary, the page's label; cut to its first 512 tokens by default,
  as a transformer of that length reads it.

An epoch is forward, backward and an Adam step over every training
document (the ``train`` part of the split), in batches of 16, with the
example's model: a learned token embedding, 2 blocks of 64 channels
(2 heads by default), the mean of the tokens, a linear head, dropout 0.1.
The methods differ in the blocks and in what they attend to:

* ``hsa``: the example's ``hsa`` arm, :class:`~hsa_geo.nn.HSATransformerLayer`
  along the document tree;
* ``flat_sdpa``: :class:`torch.nn.TransformerEncoderLayer` (pre-norm, GELU,
  MLP ``2 * 64``, ``batch_first``, the same width, heads and dropout,
  no dropout on the attention weights, as the HSA block) over the tokens
  padded per batch, ``src_key_padding_mask`` marking the padding, which
  :class:`torch.nn.MultiheadAttention` passes to
  :func:`torch.nn.functional.scaled_dot_product_attention`; the mean over
  the real tokens. Batches are random, as a plain ``DataLoader`` draws
  them: every batch is padded to its longest document;
* ``flat_sdpa_bucketed``: the same, the batches formed of documents of
  similar lengths (the documents sorted by length, cut into batches of 16,
  the batches shuffled), as length-bucketing samplers do;
* ``flat_hsa``: the example's ``flat`` arm, HSA on a tree with one family
  per document, which is exact softmax over the document (no padding);
* ``local``: the example's ``local`` arm, softmax within each sentence.

How
---
One process, ``--threads`` intra-op threads (1 by default). A whole
epoch of every method takes about half an hour on one CPU thread (flat
softmax over random batches of pages most), so each method runs **part of
an epoch**: the batches of one epoch are formed (random, or buckets), and
about ``--max-docs`` documents' worth of them are timed, drawn by strata
of (longest document, tokens) so that they have the epoch's mix of short
and padded-long batches; random batches are the same for every method.
**Seconds per epoch are the timed seconds times (epoch batches / timed
batches)**; ``--max-docs 0`` runs whole epochs. The time covers the
``DataLoader`` (collating the batch), building what the method reads (the
arm's tree, or the padding) and the training step, measured with
:func:`time.perf_counter`, after a few untimed warm-up batches. With
``--epochs`` above 1 the pass is repeated, the methods interleaved (in
reverse order every other pass), and the median is reported. Peak memory:
the example's ``PeakMemory`` (the peak resident set size above the start
of the pass).

Padded softmax holds, in an unfused kernel, ``B H L^2`` scores per layer
for the backward (``L`` the longest document of a batch). Before running
``flat_sdpa`` on a corpus the script estimates that for the longest
training document, ``16 * heads * L^2 * 4 bytes * (layers + 1)``, and
skips the method, with the reason, where it exceeds ``--max-gb``. (The
fused CPU kernel of torch holds far less, see the peak memory, but takes
quadratic time all the same.)

Targets: on the short documents, an HSA epoch no slower than
the ``flat_sdpa`` epoch; on the long ones, at least 3x faster.

Usage::

    python benchmarks/bench_documents.py          # about 10 minutes
    python benchmarks/bench_documents.py --quick  # a few tiny documents
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import (Any, Callable, Dict, List, NamedTuple, Optional,
                    Sequence, Tuple)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as ba  # noqa: E402  (shared machine and JSON code)

EXAMPLES_DIR = ba.REPO_ROOT / 'examples'
CORPORA = ['man_pages', 'man_sections']
METHODS = ['hsa', 'flat_sdpa', 'flat_sdpa_bucketed', 'flat_hsa', 'local']
ARMS = {'hsa': 'hsa', 'flat_hsa': 'flat', 'local': 'local'}  # example arms
PADDED = {'flat_sdpa': 'random', 'flat_sdpa_bucketed': 'bucketed'}
LABELS = {
    'hsa': 'HSA (tree)',
    'flat_sdpa': 'flat SDPA (random batches)',
    'flat_sdpa_bucketed': 'flat SDPA (length buckets)',
    'flat_hsa': 'flat HSA (exact softmax)',
    'local': 'local (sentences)',
}
BATCH_SIZE, CHANNELS, LAYERS, HEADS, DROPOUT, LR = 16, 64, 2, 2, 0.1, 1e-3
MAX_DOC_TOKENS = {'man_pages': 4096, 'man_sections': 512}
MAX_DOCS = {'man_pages': 256, 'man_sections': 3200}
QUICK_DOC_TOKENS = {'man_pages': 256, 'man_sections': 64}
QUICK_DOCS = 16
WARMUP_BATCHES, MAX_GB = 2, 8.0
# HSA s/epoch over flat_sdpa s/epoch: at most 1 on short documents, at
# most 1/3 (3x faster) on long ones.
TARGETS = {'man_sections': 1.0, 'man_pages': 1 / 3}


def load_example() -> ModuleType:
    r"""``examples/document_classification.py`` as a module (with its
    folder on ``sys.path``, as when it runs: it imports ``training``)."""
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    ba.import_hsa_geo()
    return importlib.import_module('document_classification')


# Corpora ###################################################################

class Corpus(NamedTuple):
    lengths: List[int]  # tokens of every training document (after the cut)
    document: Callable[[int], Any]  # position -> light NestedSignal
    below: List[int]  # cluster kinds under a sentence (for 'local')
    num_tokens: int
    num_classes: int
    info: Dict[str, Any]


def _length_stats(lengths: List[int]) -> Dict[str, Any]:
    return {'documents': len(lengths), 'tokens': sum(lengths),
            'median_tokens': statistics.median(lengths) if lengths else 0,
            'max_tokens': max(lengths, default=0)}


def _cap(max_tokens: int) -> Optional[int]:
    return max_tokens or None


def _corpus_info(whole: List[int], max_tokens: int,
                 train: List[int]) -> Dict[str, Any]:
    cut = [min(n, max_tokens) if max_tokens else n for n in whole]
    return {'whole': _length_stats(whole), 'cut': _length_stats(cut),
            'train': _length_stats(train), 'max_doc_tokens': max_tokens}


def page_corpus(doc: ModuleType, args: argparse.Namespace,
                max_tokens: int) -> Corpus:
    r"""The man pages as the example loads them, the training part."""
    options = SimpleNamespace(dataset='man-pages', root=args.root,
                              paths=args.paths, max_doc_tokens=None)
    whole, split, num_tokens, num_classes, below = \
        doc.load_documents(options)
    train = [doc.light_document(whole[int(i)], _cap(max_tokens))
             for i in split['train']]
    lengths = [d.num_nodes for d in train]
    info = _corpus_info([d.num_nodes for d in whole], max_tokens, lengths)
    return Corpus(lengths, train.__getitem__, below, num_tokens,
                  num_classes, info)


def man_pages_dataset(doc: ModuleType, args: argparse.Namespace):
    r"""The :class:`ManPages` dataset with the arguments the example's
    ``load_documents`` opens it with."""
    kwargs = {} if args.paths is None else {
        'paths': args.paths, 'min_pages_per_section': 2, 'min_freq': 1}
    return doc.ManPages(os.path.join(args.root, 'ManPages'), log=False,
                        **kwargs)


def section_spans(page: Any, section_kind: int) -> List[Any]:
    r"""``(start, end, tokens)`` of every section of :obj:`page`: its
    character span in ``page.text`` and how many of the page's tokens
    start in it."""
    spans = page.cluster_offsets[page.cluster_kind == section_kind]
    starts = page.offsets[:, 0].view(1, -1)
    inside = (starts >= spans[:, :1]) & (starts < spans[:, 1:])
    return [(s, e, int(c)) for (s, e), c in
            zip(spans.tolist(), inside.sum(1))]


def section_corpus(doc: ModuleType, args: argparse.Namespace,
                   max_tokens: int) -> Corpus:
    r"""Every section of every man page a document: its text through
    :class:`~hsa_geo.transforms.DocumentHierarchy` (with the dataset's
    vocabulary), the page's label; the training pages' sections. A
    section is built when first asked for (the lengths come from the
    pages' token offsets, and every built section is checked against
    them)."""
    from torch_geometric.data import Data

    from hsa_geo.transforms import DocumentHierarchy
    dataset = man_pages_dataset(doc, args)
    train_pages = set(dataset.get_idx_split()['train'].tolist())
    section_kind = dataset.KINDS.index('section')
    spans, whole = [], []
    for i in range(len(dataset)):
        for start, end, n in section_spans(dataset[i], section_kind):
            whole.append(n)
            if i in train_pages:
                spans.append((i, start, end, n))
    build = DocumentHierarchy(vocab=dataset.vocab, store_tokens=False)
    built: Dict[int, Any] = {}

    def document(j: int) -> Any:
        if j not in built:
            i, start, end, n = spans[j]
            page = dataset[i]
            section = build(Data(text=page.text[start:end], y=page.y))
            if section.num_nodes != n:
                raise RuntimeError(
                    f'{page.page}, characters {start}:{end}: '
                    f'DocumentHierarchy gives {section.num_nodes} tokens, '
                    f'the page {n}')
            built[j] = doc.light_document(section, _cap(max_tokens))
        return built[j]

    kinds = list(DocumentHierarchy.KINDS)
    below = [kinds.index(k) for k in kinds[kinds.index('sentence') + 1:]]
    lengths = [min(n, max_tokens) if max_tokens else n
               for *_, n in spans]
    return Corpus(lengths, document, below, len(dataset.vocab),
                  dataset.num_classes,
                  _corpus_info(whole, max_tokens, lengths))


# Batches ###################################################################

def stratified_subset(keys: List[Any], count: int, seed: int) -> List[int]:
    r"""Sorted positions of :obj:`count` items (all where :obj:`count` is
    0 or at least their number): the items sorted by :obj:`keys`, cut
    into :obj:`count` strata of (nearly) equal size, one drawn at random
    from each."""
    import torch
    n = len(keys)
    if not count or count >= n:
        return list(range(n))
    order = sorted(range(n), key=lambda i: (keys[i], i))
    generator = torch.Generator().manual_seed(seed)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return sorted(order[lo + int(torch.randint(hi - lo, (1, ),
                                               generator=generator))]
                  for lo, hi in zip(bounds[:-1], bounds[1:]))


def epoch_batches(lengths: List[int], batch_size: int, seed: int,
                  bucketed: bool = False) -> List[List[int]]:
    r"""The batches of one epoch over documents of :obj:`lengths`
    (positions): random, as a shuffling ``DataLoader`` draws them, or of
    similar lengths (sorted, cut, the batches shuffled)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    n = len(lengths)
    if bucketed:
        order = sorted(range(n), key=lambda i: (lengths[i], i))
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        return [batches[int(i)]
                for i in torch.randperm(len(batches), generator=generator)]
    order = torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


class Plan(NamedTuple):
    batches: List[List[int]]  # the timed batches, in epoch order
    epoch_batches: int  # the batches of a whole epoch
    documents: int
    tokens: int


def timed_plan(lengths: List[int], max_docs: int, seed: int,
               bucketed: bool) -> Plan:
    r"""The batches of an epoch, and about :obj:`max_docs` documents' worth
    of them to time (whole batches; all for 0), drawn by strata of their
    longest document and their tokens, so that they have the epoch's mix
    of short and long (padded) batches."""
    batches = epoch_batches(lengths, BATCH_SIZE, seed, bucketed)
    keys = [(max(lengths[i] for i in b), sum(lengths[i] for i in b))
            for b in batches]
    chosen = [batches[i] for i in stratified_subset(
        keys, -(-max_docs // BATCH_SIZE), seed)]
    return Plan(chosen, len(batches), sum(len(b) for b in chosen),
                sum(lengths[i] for b in chosen for i in b))


def dense_attention_gb(max_len: int, heads: int, layers: int,
                       batch_size: int = BATCH_SIZE) -> float:
    r"""GB of the ``[B, H, L, L]`` float32 scores an unfused attention
    keeps for the backward in every layer, and one more in flight."""
    return batch_size * heads * max_len**2 * 4 * (layers + 1) / 1e9


# Methods ###################################################################

def padded_classifier(num_tokens: int, num_classes: int, channels: int,
                      layers: int, heads: int, dropout: float):
    r"""The example's model with :class:`torch.nn.TransformerEncoderLayer`
    blocks over padded batches ``[B, L]`` of token ids."""
    import torch

    class PaddedClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(num_tokens, channels)
            self.blocks = torch.nn.ModuleList()
            for _ in range(layers):
                block = torch.nn.TransformerEncoderLayer(
                    channels, heads, 2 * channels, dropout,
                    activation='gelu', batch_first=True, norm_first=True)
                # As the HSA block: no dropout on the attention weights.
                block.self_attn.dropout = 0.0
                self.blocks.append(block)
            self.head = torch.nn.Linear(channels, num_classes)

        def forward(self, tokens, mask):
            x = self.embed(tokens)
            for block in self.blocks:
                x = block(x, src_key_padding_mask=~mask)
            mask = mask.unsqueeze(-1).to(x.dtype)
            mean = (x * mask).sum(1) / mask.sum(1)
            return self.head(mean)

    return PaddedClassifier()


class Method(NamedTuple):
    model: Any
    items: List[Any]  # what the DataLoader collates, one per document
    loss: Callable[[Any], Any]  # a collated batch -> the loss


def build_method(method: str, doc: ModuleType, corpus: Corpus,
                 positions: List[int], args: argparse.Namespace) -> Method:
    r"""The model of :obj:`method`, what it reads of the documents at
    :obj:`positions` (the others are never collated) and its loss on a
    batch."""
    import torch
    import torch.nn.functional as F
    from torch_geometric.data import Data
    from torch_geometric.utils import to_dense_batch
    torch.manual_seed(args.seed)
    items: List[Any] = [None] * len(corpus.lengths)
    if method in PADDED:
        model = padded_classifier(corpus.num_tokens, corpus.num_classes,
                                  CHANNELS, LAYERS, args.heads, DROPOUT)
        for i in positions:  # a transformer reads the token ids, no tree
            d = corpus.document(i)
            items[i] = Data(x=d.x, y=d.y, num_nodes=d.num_nodes)

        def loss(data):
            tokens, mask = to_dense_batch(data.x, data.batch,
                                          batch_size=data.num_graphs)
            return F.cross_entropy(model(tokens, mask), data.y)
        return Method(model, items, loss)
    arm = ARMS[method]
    model = doc.DocumentClassifier(corpus.num_tokens, CHANNELS,
                                   corpus.num_classes, LAYERS, args.heads,
                                   DROPOUT)
    for i in positions:
        items[i] = corpus.document(i)

    def loss(data):  # as the example's train() runs a batch
        inputs = doc.ArmInput(arm, data, corpus.below, None)
        return F.cross_entropy(model(inputs), data.y)
    return Method(model, items, loss)


def run_epoch(method: Method, optimizer: Any, batches: List[List[int]],
              doc: ModuleType) -> Dict[str, Any]:
    r"""One pass over :obj:`batches`: the seconds (collate, inputs,
    forward, backward, step), per batch too, the peak memory and whether
    every loss was finite."""
    from torch_geometric.loader import DataLoader
    loader = DataLoader(method.items, batch_sampler=batches)
    method.model.train()
    memory = doc.PeakMemory()
    per_batch, finite = [], True
    start = last = time.perf_counter()
    for data in loader:
        optimizer.zero_grad()
        loss = method.loss(data)
        loss.backward()
        optimizer.step()
        finite = finite and math.isfinite(float(loss.detach()))
        now = time.perf_counter()
        per_batch.append(now - last)
        last = now
    return {'seconds': time.perf_counter() - start,
            'batch_seconds': per_batch, 'peak_mib': memory.peak_mb(),
            'finite': finite}


def skip_reason(corpus: Corpus, args: argparse.Namespace
                ) -> Tuple[float, Optional[str]]:
    r"""The dense-score estimate of padded softmax for a batch padded to
    the longest training document, and why it is refused, if it is."""
    max_len = max(corpus.lengths)
    gb = dense_attention_gb(max_len, args.heads, LAYERS)
    if gb <= args.max_gb:
        return gb, None
    return gb, (f'the longest training document has {max_len:,} tokens: '
                f'an unfused attention would keep about {gb:,.1f} GB of '
                f'scores for a batch padded to it, above --max-gb '
                f'{args.max_gb:g}; cut the documents (--max-doc-tokens) '
                f'or raise --max-gb')


def measure_corpus(name: str, corpus: Corpus, doc: ModuleType,
                   args: argparse.Namespace) -> List[Dict[str, Any]]:
    r"""One row per method: its passes over the timed batches of the
    corpus's training epoch, extrapolated to the whole epoch."""
    import torch
    plans = {kind: timed_plan(corpus.lengths, args.max_docs[name],
                              args.seed, kind == 'bucketed')
             for kind in ('random', 'bucketed')}
    rows: Dict[str, Dict[str, Any]] = {}
    state: Dict[str, Any] = {}
    for method in args.methods:
        plan = plans[PADDED.get(method, 'random')]
        row = rows[method] = {
            'corpus': name, 'method': method, 'label': LABELS[method],
            'batching': PADDED.get(method, 'random'),
            'train_documents': len(corpus.lengths),
            'epoch_batches': plan.epoch_batches,
            'timed_batches': len(plan.batches),
            'timed_documents': plan.documents, 'timed_tokens': plan.tokens}
        if method in PADDED:
            row['dense_attention_gb'], reason = skip_reason(corpus, args)
            if reason is not None:
                row.update(status='skipped', reason=reason)
                continue
        positions = sorted({i for b in plan.batches for i in b})
        built = build_method(method, doc, corpus, positions, args)
        optimizer = torch.optim.Adam(built.model.parameters(), lr=LR)
        row['parameters'] = sum(p.numel() for p in
                                built.model.parameters())
        state[method] = (built, optimizer, plan)
    for epoch in range(args.epochs):
        names = list(state) if epoch % 2 == 0 else list(state)[::-1]
        for method in names:
            built, optimizer, plan = state[method]
            if epoch == 0 and args.warmup:
                run_epoch(built, optimizer, plan.batches[:args.warmup], doc)
            result = run_epoch(built, optimizer, plan.batches, doc)
            rows[method].setdefault('passes', []).append(result)
            print(f"  {name:12s} {method:18s} pass {epoch + 1}: "
                  f"{result['seconds']:7.1f} s for "
                  f"{len(plan.batches)} of {plan.epoch_batches} batches",
                  flush=True)
    for method in state:
        finish_row(rows[method])
    ratios(list(rows.values()))
    return list(rows.values())


def finish_row(row: Dict[str, Any]):
    seconds = statistics.median(e['seconds'] for e in row['passes'])
    row.update(status='ok', timed_seconds=seconds,
               seconds_per_epoch=seconds * row['epoch_batches'] /
               row['timed_batches'],
               tokens_per_second=row['timed_tokens'] / seconds,
               peak_mib=max(e['peak_mib'] for e in row['passes']),
               finite=all(e['finite'] for e in row['passes']))


def ratios(rows: List[Dict[str, Any]]):
    r"""Every row's seconds per epoch over ``flat_sdpa``'s, where both
    ran."""
    base = {r['corpus']: r.get('seconds_per_epoch') for r in rows
            if r['method'] == 'flat_sdpa'}
    for row in rows:
        peer = base.get(row['corpus'])
        if row.get('status') == 'ok' and peer:
            row['ratio_to_flat_sdpa'] = row['seconds_per_epoch'] / peer


def evaluate_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    r"""Per corpus: ``PASS`` when HSA's epoch over ``flat_sdpa``'s is at
    most the bound, ``FAIL`` above, ``N/A`` without both rows."""
    targets = []
    for corpus, bound in TARGETS.items():
        kind = 'short' if corpus == 'man_sections' else 'long'
        desc = (f'{kind} documents ({corpus}): HSA epoch at most '
                f'{bound:.3g}x the flat_sdpa epoch'
                + (' (3x faster)' if kind == 'long' else ''))
        by = {r['method']: r for r in rows if r['corpus'] == corpus}
        hsa, flat = by.get('hsa', {}), by.get('flat_sdpa', {})
        if 'ratio_to_flat_sdpa' not in hsa:
            targets.append({'description': desc, 'corpus': corpus,
                            'status': 'N/A'})
            continue
        ratio = hsa['ratio_to_flat_sdpa']
        targets.append({
            'description': desc, 'corpus': corpus, 'bound': bound,
            'ratio': ratio, 'status': 'PASS' if ratio <= bound else 'FAIL',
            'detail': f"{hsa['seconds_per_epoch']:.1f} s / "
                      f"{flat['seconds_per_epoch']:.1f} s = {ratio:.2f}x "
                      f"(flat_sdpa / HSA = {1 / ratio:.2f}x)"})
    return targets


# Output ####################################################################

def format_table(rows: List[Dict[str, Any]], markdown: bool = False) -> str:
    head = ['corpus', 'method', 's/epoch', 'ratio to flat_sdpa',
            'tokens/s', 'peak MiB']
    body = []
    for r in rows:
        if r.get('status') != 'ok':
            body.append([r['corpus'], r['method'], 'skipped', '-', '-', '-'])
            continue
        ratio = r.get('ratio_to_flat_sdpa')
        body.append([r['corpus'], r['method'],
                     f"{r['seconds_per_epoch']:.1f}",
                     '-' if ratio is None else f'{ratio:.2f}x',
                     f"{r['tokens_per_second']:,.0f}",
                     f"{r['peak_mib']:.0f}"])
    return ba.grid(head, body, markdown, left=2)


def _per_corpus(values: Sequence[int], name: str,
                p: argparse.ArgumentParser) -> Dict[str, int]:
    if len(values) not in (1, len(CORPORA)) or min(values) < 0:
        p.error(f'{name} takes one value or one per corpus '
                f'({", ".join(CORPORA)}), each >= 0')
    return dict(zip(CORPORA, list(values) * (len(CORPORA) // len(values))))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--corpora', nargs='+', choices=CORPORA, default=CORPORA)
    p.add_argument('--methods', nargs='+', choices=METHODS, default=METHODS)
    p.add_argument('--max-docs', type=int, nargs='+', default=None,
                   help='training documents timed per corpus, one value or '
                        'one per corpus (man_pages man_sections); 0: all '
                        f'(default: {MAX_DOCS["man_pages"]} '
                        f'{MAX_DOCS["man_sections"]})')
    p.add_argument('--max-doc-tokens', type=int, nargs='+', default=None,
                   help='cut every document to its first tokens, for every '
                        'method, one value or one per corpus; 0: whole '
                        f'(default: {MAX_DOC_TOKENS["man_pages"]} '
                        f'{MAX_DOC_TOKENS["man_sections"]})')
    p.add_argument('--epochs', type=int, default=1,
                   help='timed epochs over the subset per method (median)')
    p.add_argument('--warmup', type=int, default=None,
                   help=f'untimed batches first (default: {WARMUP_BATCHES})')
    p.add_argument('--heads', type=int, default=HEADS,
                   help=f'attention heads, dividing {CHANNELS}')
    p.add_argument('--max-gb', type=float, default=MAX_GB,
                   help='skip flat_sdpa where its unfused attention scores '
                        'would exceed this (GB)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--root', default='data',
                   help='where ManPages is stored (as the example)')
    p.add_argument('--paths', nargs='+', default=None,
                   help='man page files or folders instead of the installed '
                        'pages (as the example)')
    p.add_argument('--quick', action='store_true',
                   help=f'{QUICK_DOCS} documents per corpus, cut short')
    p.add_argument('--out', type=Path, default=None)
    p.add_argument('--markdown', type=Path, default=None)
    args = p.parse_args(argv)
    if args.heads < 1 or CHANNELS % args.heads:
        p.error(f'--heads must divide {CHANNELS}')
    if args.epochs < 1:
        p.error('--epochs must be at least 1')
    docs = [QUICK_DOCS] if args.quick else list(MAX_DOCS.values())
    tokens = list((QUICK_DOC_TOKENS if args.quick
                   else MAX_DOC_TOKENS).values())
    args.max_docs = _per_corpus(args.max_docs or docs, '--max-docs', p)
    args.max_doc_tokens = _per_corpus(args.max_doc_tokens or tokens,
                                      '--max-doc-tokens', p)
    if args.warmup is None:
        args.warmup = 1 if args.quick else WARMUP_BATCHES
    if args.out is None:
        args.out = ba.default_out('bench_documents_cpu', args.quick)
    return args


def load_corpus(name: str, doc: ModuleType, args: argparse.Namespace
                ) -> Corpus:
    build = page_corpus if name == 'man_pages' else section_corpus
    return build(doc, args, args.max_doc_tokens[name])


def measure_corpora(doc: ModuleType, args: argparse.Namespace
                    ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    r"""Loads every corpus of ``--corpora``, says what it holds, and times
    every method on it: ``(rows, corpora)``, the rows of all corpora and
    what each holds (with the seconds its loading took)."""
    rows, corpora = [], {}
    for name in args.corpora:
        begin = time.perf_counter()
        corpus = load_corpus(name, doc, args)
        info = corpora[name] = {**corpus.info, 'load_seconds':
                                time.perf_counter() - begin}
        print(f"{name}: {info['whole']['documents']:,} documents "
              f"(median {info['whole']['median_tokens']:g}, max "
              f"{info['whole']['max_tokens']:,} tokens), cut to "
              f"{args.max_doc_tokens[name] or 'whole'}: "
              f"{info['cut']['tokens']:,} tokens; training part "
              f"{info['train']['documents']:,} documents, "
              f"{info['train']['tokens']:,} tokens", flush=True)
        rows += measure_corpus(name, corpus, doc, args)
    return rows, corpora


def run_config(args: argparse.Namespace,
               corpora: Dict[str, Any]) -> Dict[str, Any]:
    r"""The run's settings and what the timings and the memory measure."""
    return {
        'commit': ba.source_commit(), 'corpora': corpora,
        'methods': {m: LABELS[m] for m in args.methods},
        'model': f'embedding, {LAYERS} blocks of {CHANNELS} channels, '
                 f'{args.heads} heads, MLP {2 * CHANNELS}, dropout '
                 f'{DROPOUT}, mean of the tokens, linear head; Adam '
                 f'lr {LR}; batch size {BATCH_SIZE}',
        'threads': args.threads, 'epochs': args.epochs,
        'warmup_batches': args.warmup, 'seed': args.seed,
        'max_docs': args.max_docs, 'max_doc_tokens': args.max_doc_tokens,
        'max_gb': args.max_gb, 'quick': args.quick,
        'pages': args.paths or 'installed (manpages, manpages-dev)',
        'timing': 'the batches of one training epoch (random, or '
                  'length buckets for flat_sdpa_bucketed), of which '
                  'about max_docs documents\' worth are timed, drawn '
                  'by strata of (longest document, tokens); one pass '
                  '= DataLoader collate, inputs, forward, backward, '
                  'Adam step over them (perf_counter), after untimed '
                  'warm-up batches; seconds per epoch = pass seconds '
                  'x epoch batches / timed batches; median over '
                  'passes, methods interleaved pass by pass',
        'memory': 'peak resident set size above the start of each '
                  'epoch (the example\'s PeakMemory), max over epochs'}


def print_results(rows: List[Dict[str, Any]],
                  targets: List[Dict[str, Any]]) -> None:
    r"""The table, why a method was skipped, and the targets."""
    print()
    print(format_table(rows))
    for row in rows:
        if row.get('status') != 'ok':
            print(f"{row['corpus']} {row['method']}: skipped: "
                  f"{row['reason']}")
    for target in targets:
        print(f"[{target['status']}] {target['description']}: "
              f"{target.get('detail', '')}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch
    torch.set_num_threads(args.threads)
    machine = ba.machine_info('cpu', args.threads)
    ba.announce(f"bench_documents on cpu ({machine['cpu']}; {machine['cores']} "
                f"cores, {args.threads} thread(s)), torch {machine['torch']}, "
                f"torch_geometric {machine['torch_geometric']}", machine)
    rows, corpora = measure_corpora(load_example(), args)
    targets = evaluate_targets(rows)
    machine['load_average_end'] = [round(x, 2) for x in os.getloadavg()]
    ba.write_json(args.out, {
        'benchmark': 'bench_documents',
        'created': ba.timestamp(),
        'machine': machine, 'config': run_config(args, corpora),
        'results': rows, 'targets': targets,
        'wall_s': time.perf_counter() - start,
    })
    print_results(rows, targets)
    print(f'\nwrote {args.out}')
    ba.write_markdown(args.markdown, format_table(rows, markdown=True) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
