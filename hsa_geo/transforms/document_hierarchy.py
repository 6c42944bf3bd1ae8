r"""A document tree over raw text: document -> paragraphs -> sentences ->
words -> (subword) tokens."""
from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections import Counter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, \
    Union

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from hsa_geo._checks import check_bool, check_int
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.nested_signal import NestedSignal
from hsa_geo.transforms._inputs import check_data
from hsa_geo.transforms.vocabulary import Vocabulary

Span = Tuple[int, int]


class _Units(NamedTuple):
    # Character spans in reading order, and the unit one level up.
    paragraphs: List[Span]
    sentences: List[Span]
    sentence_paragraph: List[int]
    words: List[Span]
    word_sentence: List[int]


class _Tokens(NamedTuple):
    ids: List[int]
    tokens: List[str]
    offsets: List[Span]
    special: List[bool]


class DocumentHierarchy(BaseTransform):
    r"""Turns raw text into a nested signal whose leaves are its tokens and
    whose tree is the layout of the text: one document root, its
    paragraphs, their sentences, their words, and the (subword) tokens of
    every word.

    **Input.** A :class:`~torch_geometric.data.Data` with a ``text``
    attribute (a :obj:`str`), or a :obj:`str` itself. Other attributes
    (``y``, ids, ...) are kept; ``x``, ``edge_index`` and ``edge_attr`` must
    not be there (the leaves are new nodes).

    **Unicode.** The text is brought to Unicode normal form NFC first
    (:func:`unicodedata.normalize`, as :class:`Vocabulary` does; see there
    why NFC and not NFKC), and everything below works on the normalised
    text: units, tokens (also those of a HuggingFace tokenizer), offsets,
    and the ``text`` of the output. So a text and its decomposed (NFD)
    form give the same ids and the same tree, and ``offsets`` always index
    ``out.text``, which differs from the input only where that was not NFC
    (then lengths may differ: ``'e'`` plus a combining accent is one
    character ``'é'``).

    **Units.** Found with regular expressions on the text, independently of
    the tokenizer:

    - *paragraphs* are separated by blank lines (:attr:`PARAGRAPH_BREAK`:
      a line break, optional whitespace, another line break) and trimmed of
      surrounding whitespace;
    - *sentences*: inside a paragraph, a sentence ends after a run of
      ``.``, ``!`` or ``?`` (with any closing quotes or brackets right after
      it, :attr:`SENTENCE_END`) that is followed by whitespace and then by a
      character that is **not** a lowercase letter; the end of a paragraph
      ends its last sentence. So ``"e.g. this"`` stays one sentence, while
      ``"Dr. Smith"`` is split: abbreviations are not recognised, and a
      single line break does not end a sentence;
    - *words*: the matches of :attr:`WORD_PATTERN` (the same rule as the
      built-in tokenizer of :class:`Vocabulary`): a run of word characters
      (Unicode letters, digits, ``_``) with optional inner apostrophes
      (``don't``), or a single punctuation mark. ``"Kullback-Leibler"`` is
      three words.

    **Tokens (the leaves).** One of two tokenizers:

    - ``vocab=`` a :class:`Vocabulary`: its regex tokenizer, one token per
      word (punctuation marks included unless the vocabulary drops them);
      ``x`` holds the vocabulary ids (unknown tokens get
      :attr:`Vocabulary.unk_id`);
    - ``tokenizer=`` a HuggingFace *fast* tokenizer: a
      :class:`tokenizers.Tokenizer` or a :mod:`transformers` tokenizer with
      ``is_fast``; ``x`` holds its ids, exactly ``tokenizer(text)
      ['input_ids']`` (:mod:`transformers`) or ``tokenizer.encode(text)
      .ids`` (:mod:`tokenizers`) with ``special_tokens='root'`` and without
      :obj:`max_tokens` truncation. The tokenizer's own padding and
      truncation are switched off (for a :class:`tokenizers.Tokenizer`, on a
      private copy: the tokenizer passed in is not changed): padding would
      add leaves, truncation would drop text silently; use
      :obj:`max_tokens`. A token belongs to the word that contains its
      first character (its start offset); a token that starts on
      whitespace, as SentencePiece's ``'▁'`` or a byte-level ``'Ġ'`` or
      line-break token, belongs to the next word (the last word at the end
      of the text). *Special tokens* (those the tokenizer marks as special
      and that cover no text, e.g. ``[CLS]``, ``[SEP]``, ``<s>``) are
      children of the document root with ``special_tokens='root'`` (the
      default: they see the paragraphs as wholes, as a summary token
      should) and are left out with ``special_tokens='drop'`` (encoded with
      ``add_special_tokens=False``).

    **Tree.** Leaves ``0..N-1`` are the tokens in reading order (the order
    of the tokenizer, so a leading ``[CLS]`` is leaf 0 and a trailing
    ``[SEP]`` leaf ``N-1``): the tokens of every word, sentence and
    paragraph are a contiguous run of leaves. Above them, the levels named
    in :obj:`levels` (any of ``'paragraph'``, ``'sentence'``, ``'word'``,
    top-down), then the document root: a single tree. Dropping a level
    attaches its children to the next level up (``levels=('sentence',)``
    gives tokens -> sentences -> document; paragraph breaks still end
    sentences). Units without tokens (e.g. characters that the tokenizer
    drops) get no node. A word of a single token gets no node of its own
    unless :obj:`keep_single_token_words` (the token is then a child of the
    sentence directly): a single-child node is transparent to HSA, so this
    only saves nodes, and with a :class:`Vocabulary` (one token per word)
    the word level disappears. Paragraphs of one sentence and sentences of
    one word keep their node. Families are what the text gives: a sentence
    has as many children as words, a paragraph as many as sentences.

    Clusters are numbered bottom-up, each level in reading order: the word
    nodes, then the sentences, the paragraphs and, last, the root.

    **Output.** :class:`~hsa_geo.data.NestedSignal` with the attributes of
    the input and, for :math:`N` leaves and :math:`M` clusters:

    - ``x`` ``LongTensor [N]``: the token ids;
    - ``offsets`` ``LongTensor [N, 2]``: the character span ``(start,
      end)`` of every token in ``text`` (special tokens: as the tokenizer
      gives them, usually ``(0, 0)``);
    - ``tokens`` (list of :obj:`str`, with :obj:`store_tokens`): the token
      strings (lowercased by a lowercasing vocabulary; the tokenizer's own
      strings, e.g. ``'##ing'``, otherwise);
    - ``cluster_kind`` ``LongTensor [M]``: the kind of every cluster as an
      index into :attr:`KINDS` (``0`` document, ``1`` paragraph, ``2``
      sentence, ``3`` word);
    - ``cluster_offsets`` ``LongTensor [M, 2]``: the character span of the
      unit of every cluster (the root: the whole text without surrounding
      whitespace);
    - ``text``: the text in NFC (also for a :obj:`str` input).

    Rows of the per-cluster attributes follow the cluster ids (node
    ``N + i`` is row ``i``); offsets are not shifted in a
    :class:`~torch_geometric.loader.DataLoader` batch (use ``batch.batch``
    to find the text of a leaf).

    Args:
        tokenizer (optional): a HuggingFace fast tokenizer (see above).
        vocab (Vocabulary, optional): the built-in tokenizer and its ids.
            Exactly one of :obj:`tokenizer` and :obj:`vocab` is needed.
        levels (tuple of str): the levels between the tokens and the root,
            a top-down subsequence of ``('paragraph', 'sentence',
            'word')``; ``()`` puts all tokens under the root.
            (default: all three)
        special_tokens (str): ``'root'`` or ``'drop'`` (see above).
            (default: ``'root'``)
        max_tokens (int, optional): the most leaves a text may give
            (special tokens included). A longer text raises a
            :class:`ValueError` unless :obj:`truncate`.
        truncate (bool): with :obj:`max_tokens`, keep the special tokens
            and the first tokens of the text instead of raising; the units
            that lose all their tokens lose their nodes.
            (default: :obj:`False`)
        keep_single_token_words (bool): give every word a node, also words
            of one token (every token of the text then has the same
            depth).
            (default: :obj:`False`)
        store_tokens (bool): keep the token strings in ``tokens``.
            (default: :obj:`True`)

    Example:
        >>> vocab = Vocabulary.build(['A cat sat. It slept.\n\nThe end.'])
        >>> data = DocumentHierarchy(vocab=vocab)('A cat sat. It slept.')
        >>> data.tokens
        ['a', 'cat', 'sat', '.', 'it', 'slept', '.']
        >>> data.hierarchy.parent.tolist()  # 2 sentences, 1 paragraph, root
        [7, 7, 7, 7, 8, 8, 8, 9, 9, 10, -1]
    """
    #: The optional levels, top-down.
    LEVELS = ('paragraph', 'sentence', 'word')
    #: Cluster kinds, as stored in ``cluster_kind``.
    KINDS = ('document', 'paragraph', 'sentence', 'word')
    #: Separates paragraphs: a blank line.
    PARAGRAPH_BREAK = re.compile(r'\n\s*\n')
    #: A candidate sentence end (it ends a sentence when whitespace and a
    #: character other than a lowercase letter follow).
    SENTENCE_END = re.compile(r'[.!?]+["\'\u201d\u2019)\]]*(?=\s)')
    #: A word.
    WORD_PATTERN = Vocabulary.WORD_PATTERN

    def __init__(self, tokenizer: Any = None,
                 vocab: Optional[Vocabulary] = None,
                 levels: Sequence[str] = LEVELS,
                 special_tokens: str = 'root',
                 max_tokens: Optional[int] = None, truncate: bool = False,
                 keep_single_token_words: bool = False,
                 store_tokens: bool = True):
        if tokenizer is not None and vocab is not None:
            raise ValueError(
                "pass either 'tokenizer' (a HuggingFace fast tokenizer) or "
                "'vocab' (a Vocabulary for the built-in regex tokenizer), "
                "not both")
        if tokenizer is None and vocab is None:
            raise ValueError(
                "DocumentHierarchy needs a tokenizer for the token ids: pass "
                "vocab=Vocabulary.build(texts) for the built-in regex "
                "tokenizer, or tokenizer=<a HuggingFace fast tokenizer>")
        if vocab is not None and not isinstance(vocab, Vocabulary):
            raise TypeError(
                f"'vocab' must be a hsa_geo Vocabulary, got "
                f"{type(vocab).__name__}; a HuggingFace tokenizer goes into "
                f"'tokenizer'")
        self.tokenizer = tokenizer
        self.vocab = vocab
        self._kind, self._backend = (None, None) if tokenizer is None else \
            _wrap_tokenizer(tokenizer)
        self.levels = _check_levels(levels, self.LEVELS)
        if not isinstance(special_tokens, str):
            raise TypeError(f"'special_tokens' must be a str, 'root' or "
                            f"'drop', got {type(special_tokens).__name__}")
        if special_tokens not in ('root', 'drop'):
            raise ValueError(f"'special_tokens' must be 'root' (children of "
                             f"the document root) or 'drop', got "
                             f"{special_tokens!r}")
        self.special_tokens = special_tokens
        if max_tokens is not None:
            max_tokens = check_int(max_tokens, 'max_tokens')
        if check_bool(truncate, 'truncate') and max_tokens is None:
            raise ValueError("truncate=True needs 'max_tokens', the number "
                             "of leaves to keep")
        self.max_tokens = max_tokens
        self.truncate = truncate
        self.keep_single_token_words = check_bool(
            keep_single_token_words, 'keep_single_token_words')
        self.store_tokens = check_bool(store_tokens, 'store_tokens')

    # Transform #############################################################

    def forward(self, data: Union[Data, str]) -> NestedSignal:
        if isinstance(data, str):
            data = Data(text=data)
        check_data(data, 'DocumentHierarchy', "a torch_geometric Data with "
                   "a 'text' attribute, or a str")
        text = self._text(data)
        units = self.split(text)
        toks = self._encode(text)
        leaves = self._select(toks, text)
        word = self._assign_words(toks, leaves, units)
        parent, kind, spans = self._tree(leaves, word, units)

        n = len(leaves)
        hierarchy = Hierarchy.from_parent(torch.tensor(parent), n)
        attrs = {
            k: v
            for k, v in data.to_dict().items()
            if k not in ('num_nodes', 'offsets', 'tokens', 'cluster_kind',
                         'cluster_offsets')
        }
        out = Data(**attrs)
        out.text = text  # the NFC text that the offsets index
        out.x = torch.tensor([toks.ids[i] for i in leaves], dtype=torch.long)
        out.offsets = torch.tensor([toks.offsets[i] for i in leaves],
                                   dtype=torch.long).view(n, 2)
        if self.store_tokens:
            out.tokens = [toks.tokens[i] for i in leaves]
        out.cluster_kind = torch.tensor(kind, dtype=torch.long)
        out.cluster_offsets = torch.tensor(spans, dtype=torch.long).view(
            -1, 2)
        out.num_nodes = n
        return NestedSignal.from_data(out, hierarchy)

    def split(self, text: str) -> _Units:
        r"""The paragraphs, sentences and words of :obj:`text` as character
        spans in reading order, with the paragraph of every sentence and the
        sentence of every word (a named tuple ``(paragraphs, sentences,
        sentence_paragraph, words, word_sentence)``)."""
        paragraphs, pos = [], 0
        for m in self.PARAGRAPH_BREAK.finditer(text):
            _add_trimmed(paragraphs, text, pos, m.start())
            pos = m.end()
        _add_trimmed(paragraphs, text, pos, len(text))

        sentences, sentence_paragraph = [], []
        for p, (start, end) in enumerate(paragraphs):
            for m in self.SENTENCE_END.finditer(text, start, end):
                nxt = _NON_SPACE.search(text, m.end(), end)
                # Not a sentence end before a lowercase letter ("e.g. this").
                if nxt is None or nxt.group().islower():
                    continue
                sentences.append((start, m.end()))
                sentence_paragraph.append(p)
                start = nxt.start()
            sentences.append((start, end))
            sentence_paragraph.append(p)

        words, word_sentence = [], []
        for s, (start, end) in enumerate(sentences):
            for m in self.WORD_PATTERN.finditer(text, start, end):
                words.append(m.span())
                word_sentence.append(s)
        return _Units(paragraphs, sentences, sentence_paragraph, words,
                      word_sentence)

    # Steps #################################################################

    @staticmethod
    def _text(data: Data) -> str:
        if 'text' not in data:
            raise ValueError(
                "data has no 'text' attribute; DocumentHierarchy reads the "
                "raw text from data.text (a str), e.g. Data(text='...')")
        text = data['text']
        if not isinstance(text, str):
            raise TypeError(
                f"data.text must be a str, got {type(text).__name__}; a "
                f"batch of texts cannot be transformed, apply "
                f"DocumentHierarchy to one text at a time")
        if not text.strip():
            raise ValueError(
                f"data.text is empty{' (only whitespace)' if text else ''}; "
                f"DocumentHierarchy needs at least one token of text (filter "
                f"out empty documents before the transform)")
        for key in ('x', 'edge_index', 'edge_attr'):
            if key in data and data[key] is not None:
                raise ValueError(
                    f"data already has '{key}'; DocumentHierarchy makes new "
                    f"leaves (x = token ids), so it takes text only: delete "
                    f"data.{key} first (or store it under another name)")
        # Composed characters: NFD accents would split words (see Unicode).
        return unicodedata.normalize('NFC', text)

    def _encode(self, text: str) -> _Tokens:
        if self.vocab is not None:
            found = self.vocab.tokenize(text)
            return _Tokens([self.vocab[t] for t, _, _ in found],
                           [t for t, _, _ in found],
                           [(s, e) for _, s, e in found],
                           [False] * len(found))
        add_special = self.special_tokens == 'root'
        if self._kind == 'tokenizers':
            enc = self._backend.encode(text, add_special_tokens=add_special)
            return _Tokens(list(enc.ids), list(enc.tokens),
                           [tuple(o) for o in enc.offsets],
                           [bool(m) for m in enc.special_tokens_mask])
        enc = self._backend(text, add_special_tokens=add_special,
                            return_offsets_mapping=True,
                            return_special_tokens_mask=True,
                            truncation=False, padding=False, verbose=False)
        ids = list(enc['input_ids'])
        return _Tokens(ids, list(self._backend.convert_ids_to_tokens(ids)),
                       [tuple(o) for o in enc['offset_mapping']],
                       [bool(m) for m in enc['special_tokens_mask']])

    def _select(self, toks: _Tokens, text: str) -> List[int]:
        r"""The positions of the tokens that become leaves, in order."""
        specials, content = set(), []
        for i, (start, end) in enumerate(toks.offsets):
            if toks.special[i] and start == end:
                if self.special_tokens == 'root':
                    specials.add(i)
            else:
                content.append(i)
        if not content:
            raise ValueError(
                f"data.text yields no tokens ({_preview(text)}): the "
                f"tokenizer {self._describe_tokenizer()} finds nothing to "
                f"encode in it; filter out such texts before the transform")
        total = len(content) + len(specials)
        if self.max_tokens is not None and total > self.max_tokens:
            if not self.truncate:
                raise ValueError(
                    f"data.text gives {total} tokens, more than max_tokens="
                    f"{self.max_tokens} ({_preview(text)}); pass "
                    f"truncate=True to keep the first {self.max_tokens}, or "
                    f"raise max_tokens")
            budget = self.max_tokens - len(specials)
            if budget < 1:
                raise ValueError(
                    f"max_tokens={self.max_tokens} leaves no room for text: "
                    f"the tokenizer adds {len(specials)} special tokens; "
                    f"raise max_tokens or pass special_tokens='drop'")
            content = content[:budget]
        return sorted(specials.union(content))

    def _assign_words(self, toks: _Tokens, leaves: List[int],
                      units: _Units) -> List[int]:
        r"""The word of every leaf (``-1`` for special tokens)."""
        starts = [s for s, _ in units.words]
        out = []
        for i in leaves:
            start, end = toks.offsets[i]
            if toks.special[i] and start == end:
                out.append(-1)
                continue
            w = bisect_right(starts, start) - 1
            if w < 0 or start >= units.words[w][1]:
                # Starts on whitespace: the next word, or the last one.
                w = min(w + 1, len(starts) - 1)
            out.append(w)
        return out

    def _tree(self, leaves: List[int], word: List[int], units: _Units
              ) -> Tuple[List[int], List[int], List[Span]]:
        r"""Parent vector, cluster kinds and cluster spans."""
        n = len(leaves)

        def unit_of(level: str, w: int) -> int:
            if level == 'word':
                return w
            s = units.word_sentence[w]
            return s if level == 'sentence' else units.sentence_paragraph[s]

        bottom_up = [lvl for lvl in reversed(self.LEVELS)
                     if lvl in self.levels]
        span_of = {'word': units.words, 'sentence': units.sentences,
                   'paragraph': units.paragraphs}
        node: Dict[str, Dict[int, int]] = {}
        kind, spans, next_id = [], [], n
        for level in bottom_up:
            counts = Counter(unit_of(level, w) for w in word if w >= 0)
            least = 2 if level == 'word' and \
                not self.keep_single_token_words else 1
            node[level] = {}
            for u in sorted(counts):
                if counts[u] >= least:
                    node[level][u] = next_id
                    next_id += 1
                    kind.append(self.KINDS.index(level))
                    spans.append(span_of[level][u])
        root = next_id
        kind.append(0)
        spans.append((units.paragraphs[0][0], units.paragraphs[-1][1]))

        parent = [root] * (root + 1)
        parent[root] = -1
        for i, w in enumerate(word):
            if w < 0:
                continue  # a special token: child of the root
            # The nodes above leaf i, bottom-up: each is the parent of the
            # one before (writing a cluster's parent once per leaf is cheap).
            chain = [i] + [
                node[level][unit_of(level, w)] for level in bottom_up
                if unit_of(level, w) in node[level]
            ]
            for child, up in zip(chain, chain[1:]):
                parent[child] = up
        return parent, kind, spans

    def _describe_tokenizer(self) -> str:
        if self.vocab is not None:
            return repr(self.vocab)
        return type(self.tokenizer).__name__

    def __repr__(self) -> str:
        args = [f'vocab={self.vocab!r}' if self.vocab is not None else
                f'tokenizer={type(self.tokenizer).__name__}',
                f'levels={self.levels}']
        if self.vocab is None:
            args.append(f'special_tokens={self.special_tokens!r}')
        if self.max_tokens is not None:
            args.append(f'max_tokens={self.max_tokens}')
            args.append(f'truncate={self.truncate}')
        if self.keep_single_token_words:
            args.append('keep_single_token_words=True')
        return f'{self.__class__.__name__}({", ".join(args)})'


_NON_SPACE = re.compile(r'\S')


def _add_trimmed(spans: List[Span], text: str, start: int, end: int):
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    trail = len(piece) - len(piece.rstrip())
    if start + lead < end - trail:
        spans.append((start + lead, end - trail))


def _preview(text: str, size: int = 40) -> str:
    if len(text) <= size:
        return f'the text is {text!r}'
    return f'the text starts {text[:size]!r}'


def _check_levels(levels, allowed: Tuple[str, ...]) -> Tuple[str, ...]:
    if isinstance(levels, str) or not isinstance(levels, Sequence):
        raise TypeError(f"'levels' must be a tuple of level names, e.g. "
                        f"('sentence',) or {allowed}, got {levels!r}")
    for i, level in enumerate(levels):
        if level not in allowed:
            raise ValueError(f"levels[{i}] = {level!r} is not a level; use "
                             f"names from {allowed}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"'levels' = {tuple(levels)} repeats a level; "
                         f"name every level once")
    order = [allowed.index(level) for level in levels]
    if order != sorted(order):
        raise ValueError(
            f"'levels' = {tuple(levels)} is not top-down; list them as in "
            f"{tuple(l for l in allowed if l in levels)}")
    return tuple(levels)


def _wrap_tokenizer(tokenizer: Any) -> Tuple[str, Any]:
    r"""``('tokenizers', private copy without padding and truncation)`` or
    ``('transformers', tokenizer)``."""
    module = type(tokenizer).__module__.split('.')[0]
    if module == 'tokenizers' and hasattr(tokenizer, 'to_str'):
        # A copy: switching off padding/truncation must not change the
        # caller's tokenizer (tokenizer.json files often enable both).
        copy = type(tokenizer).from_str(tokenizer.to_str())
        copy.no_padding()
        copy.no_truncation()
        return 'tokenizers', copy
    if hasattr(tokenizer, 'is_fast') and callable(tokenizer):
        if not tokenizer.is_fast:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} is a slow (Python) "
                f"tokenizer, which gives no character offsets; load a fast "
                f"one, e.g. AutoTokenizer.from_pretrained(..., "
                f"use_fast=True)")
        return 'transformers', tokenizer
    raise TypeError(
        f"'tokenizer' must be a tokenizers.Tokenizer or a transformers fast "
        f"tokenizer (PreTrainedTokenizerFast), got "
        f"{type(tokenizer).__module__}.{type(tokenizer).__name__}; for the "
        f"built-in regex tokenizer pass vocab=Vocabulary.build(texts)")
