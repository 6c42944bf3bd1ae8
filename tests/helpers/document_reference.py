r"""An oracle for :class:`hsa_geo.transforms.DocumentHierarchy`: its tree
computed the plain way, token by token with Python lists and dicts (as the
transform did before it was vectorised), sharing no code with it: the units
by regex per paragraph and sentence, the tokens from the tokenizer itself,
the word of a token by bisection, the clusters by counting."""
import re
import unicodedata
from bisect import bisect_right
from collections import Counter
from typing import Dict, List, Tuple

from hsa_geo.transforms import DocumentHierarchy

PARAGRAPH_BREAK = re.compile(r'\n\s*\n')
SENTENCE_END = re.compile(r'[.!?]+["\'\u201d\u2019)\]]*(?=\s)')
# A word character: \w, or any combining mark (category M) after one.
_MARKS = ''.join(re.escape(chr(c)) for c in range(0x110000)
                 if unicodedata.category(chr(c)).startswith('M'))
_CHAR = rf'(?:\w|[{_MARKS}])'
WORD = re.compile(rf"\w{_CHAR}*(?:['\u2019]\w{_CHAR}*)*|[^\w\s]")
LEVELS = ('paragraph', 'sentence', 'word')
KINDS = ('document', 'paragraph', 'sentence', 'word')


def units(text: str) -> Dict[str, list]:
    r"""Paragraph, sentence and word spans, with the parent unit of every
    sentence and word."""
    paragraphs, pos = [], 0
    for piece in [m for m in PARAGRAPH_BREAK.finditer(text)] + [None]:
        end = len(text) if piece is None else piece.start()
        chunk = text[pos:end]
        start = pos + len(chunk) - len(chunk.lstrip())
        stop = end - (len(chunk) - len(chunk.rstrip()))
        if start < stop:
            paragraphs.append((start, stop))
        pos = end if piece is None else piece.end()
    sentences, sentence_paragraph = [], []
    for p, (start, end) in enumerate(paragraphs):
        for m in SENTENCE_END.finditer(text, start, end):
            rest = text[m.end():end]
            following = rest.lstrip()
            if not following or following[0].islower():
                continue
            sentences.append((start, m.end()))
            sentence_paragraph.append(p)
            start = end - len(following)
        sentences.append((start, end))
        sentence_paragraph.append(p)
    words, word_sentence = [], []
    for s, (start, end) in enumerate(sentences):
        for m in WORD.finditer(text, start, end):
            words.append(m.span())
            word_sentence.append(s)
    return dict(paragraph=paragraphs, sentence=sentences,
                sentence_paragraph=sentence_paragraph, word=words,
                word_sentence=word_sentence)


def tokens(transform: DocumentHierarchy, text: str
           ) -> List[Tuple[int, str, Tuple[int, int], bool]]:
    r"""``(id, token, span, special)`` of every token of the tokenizer."""
    if transform.vocab is not None:
        return [(transform.vocab[t], t, (s, e), False)
                for t, s, e in transform.vocab.tokenize(text)]
    tok = type(transform.tokenizer).from_str(transform.tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    enc = tok.encode(text, add_special_tokens=transform.special_tokens ==
                     'root')
    return [(i, t, tuple(o), bool(m)) for i, t, o, m in zip(
        enc.ids, enc.tokens, enc.offsets, enc.special_tokens_mask)]


def leaves(transform: DocumentHierarchy, found: list) -> List[int]:
    r"""The tokens that become leaves (``max_tokens`` with truncation)."""
    special, content = [], []
    for i, (_, _, (start, end), is_special) in enumerate(found):
        if is_special and start == end:
            if transform.special_tokens == 'root':
                special.append(i)
        else:
            content.append(i)
    if transform.max_tokens is not None:
        content = content[:transform.max_tokens - len(special)]
    return sorted(special + content)


def reference_tree(transform: DocumentHierarchy, text: str) -> dict:
    r"""What :obj:`transform` makes of :obj:`text`, as lists: ``x``,
    ``offsets``, ``tokens``, ``parent``, ``cluster_kind`` and
    ``cluster_offsets``."""
    text = unicodedata.normalize('NFC', text)
    u, found = units(text), tokens(transform, text)
    kept = leaves(transform, found)
    starts = [s for s, _ in u['word']]
    word = []
    for i in kept:
        _, _, (start, end), special = found[i]
        w = bisect_right(starts, start) - 1
        if w < 0 or start >= u['word'][w][1]:
            w = min(w + 1, len(starts) - 1)
        word.append(-1 if special and start == end else w)

    def unit_of(level: str, w: int) -> int:
        if level == 'word':
            return w
        s = u['word_sentence'][w]
        return s if level == 'sentence' else u['sentence_paragraph'][s]

    n, node, kind, spans = len(kept), {}, [], []
    for level in [lvl for lvl in reversed(LEVELS) if lvl in
                  transform.levels]:
        counts = Counter(unit_of(level, w) for w in word if w >= 0)
        least = 2 if level == 'word' and \
            not transform.keep_single_token_words else 1
        node[level] = {}
        for unit in sorted(counts):
            if counts[unit] >= least:
                node[level][unit] = n + len(kind)
                kind.append(KINDS.index(level))
                spans.append(list(u[level][unit]))
    root = n + len(kind)
    kind.append(0)
    spans.append([u['paragraph'][0][0], u['paragraph'][-1][1]])
    parent = [root] * (root + 1)
    parent[root] = -1
    for i, w in enumerate(word):
        chain = [i] + ([] if w < 0 else [
            nodes[unit_of(level, w)] for level, nodes in node.items()
            if unit_of(level, w) in nodes])
        for child, up in zip(chain, chain[1:]):
            parent[child] = up
    return dict(x=[found[i][0] for i in kept],
                offsets=[list(found[i][2]) for i in kept],
                tokens=[found[i][1] for i in kept], parent=parent,
                cluster_kind=kind, cluster_offsets=spans)
