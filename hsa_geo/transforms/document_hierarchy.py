r"""A document tree over raw text: document -> paragraphs -> sentences ->
words -> (subword) tokens."""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, \
    Tuple, Union

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from hsa_geo._checks import check_bool, check_int
from hsa_geo.data.nested_signal import SIGNAL_KEYS, NestedSignal
from hsa_geo.datasets.tokenizer_tag import plain_copy, tokenizer_tag
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


class _Layout(NamedTuple):
    # _Units with the words as arrays: spans [W, 2] and sentences [W].
    paragraphs: List[Span]
    sentences: List[Span]
    sentence_paragraph: np.ndarray
    words: np.ndarray
    word_sentence: np.ndarray


class EmptyTextError(ValueError):
    r"""The :class:`ValueError` of :class:`DocumentHierarchy` for a text in
    which the tokenizer finds no token (zero-width spaces, say, which
    :meth:`str.strip` keeps): datasets skip such documents as empty."""


class _Tokens(NamedTuple):
    # Per token: id, string (None when not stored), span, special or not.
    ids: np.ndarray
    tokens: Optional[List[str]]
    offsets: np.ndarray
    special: np.ndarray


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

    **Building many trees.** Every text is independent: build the trees
    once, when a dataset is processed (the text datasets of
    :mod:`hsa_geo.datasets` do, in worker processes with ``num_workers``;
    see :func:`~hsa_geo.datasets.parallel_map`), or pass the transform as
    the ``transform`` of a dataset of raw texts and let the workers of a
    :class:`~torch_geometric.loader.DataLoader` (``num_workers``) call it.
    The :func:`repr` names all that decides the output, the vocabulary by
    its size and :attr:`Vocabulary.digest` and the tokenizer by its
    :func:`~hsa_geo.datasets.tokenizer_tag` (with padding and truncation
    off), so that a dataset notices when its ``pre_transform`` changed.

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
        # The vocabulary's tokens are then the words: one regex pass.
        self._tokens_are_words = vocab is not None and vocab.punctuation \
            and vocab.WORD_PATTERN is self.WORD_PATTERN

    # Transform #############################################################

    def forward(self, data: Union[Data, str]) -> NestedSignal:
        if isinstance(data, str):
            attrs, text = {}, _normalized(data)
        else:
            check_data(data, 'DocumentHierarchy', "a torch_geometric Data "
                       "with a 'text' attribute, or a str")
            text = self._text(data)
            # The input's attributes, a tree it stores and ours replaced.
            attrs = {k: v for k, v in data.to_dict().items()
                     if k not in _REPLACED}
        toks = self._encode(text)
        layout = self._layout(
            text, toks.offsets if self._tokens_are_words else None)
        leaves = self._select(toks, text)
        word = self._assign_words(toks, leaves, layout)
        parent, kind, spans = self._tree(word, layout)

        n = len(leaves)
        attrs['text'] = text  # the NFC text that the offsets index
        attrs['offsets'] = _long(toks.offsets[leaves])
        if self.store_tokens:
            attrs['tokens'] = [toks.tokens[i] for i in leaves.tolist()]
        attrs['cluster_kind'] = _long(kind)
        attrs['cluster_offsets'] = _long(spans)
        attrs['num_nodes'] = n
        # The stored tree only (see NestedSignal): its Hierarchy is checked
        # and cached on first use, which a batch or a dataset never makes
        # of a single signal.
        m = len(parent) - n
        return NestedSignal(
            x=_long(toks.ids[leaves]),
            leaf_parent_index=_long(np.stack([np.arange(n), parent[:n] - n])),
            cluster_parent_index=_long(
                np.stack([np.arange(m - 1), parent[n:-1] - n])),
            num_clusters=m, **attrs)

    def split(self, text: str) -> _Units:
        r"""The paragraphs, sentences and words of :obj:`text` as character
        spans in reading order, with the paragraph of every sentence and the
        sentence of every word (a named tuple ``(paragraphs, sentences,
        sentence_paragraph, words, word_sentence)``)."""
        layout = self._layout(text)
        return _Units(layout.paragraphs, layout.sentences,
                      layout.sentence_paragraph.tolist(),
                      list(map(tuple, layout.words.tolist())),
                      layout.word_sentence.tolist())

    # Steps #################################################################

    def _layout(self, text: str, words: Optional[np.ndarray] = None
                ) -> _Layout:
        r"""The units of :meth:`split`, words as arrays (their spans
        :obj:`words` if known)."""
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

        # Sentences cover every non-space character and a word holds none:
        # the words of the sentences are those of the whole text, each in
        # the last sentence that starts at or before it.
        if words is None:
            words = _spans(self.WORD_PATTERN.finditer(text))
        word_sentence = np.searchsorted(
            np.array([s for s, _ in sentences], dtype=np.int64),
            words[:, 0], side='right') - 1
        return _Layout(paragraphs, sentences,
                       np.array(sentence_paragraph, dtype=np.int64), words,
                       word_sentence)

    @staticmethod
    def _text(data: Data) -> str:
        r"""``data.text`` in NFC, checked."""
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
        text = _normalized(text)  # an empty text is refused first
        for key in ('x', 'edge_index', 'edge_attr'):
            if key in data and data[key] is not None:
                raise ValueError(
                    f"data already has '{key}'; DocumentHierarchy makes new "
                    f"leaves (x = token ids), so it takes text only: delete "
                    f"data.{key} first (or store it under another name)")
        return text

    def _encode(self, text: str) -> _Tokens:
        if self.vocab is not None:
            found = self.vocab.tokenize(text)
            tokens, starts, ends = zip(*found) if found else ((), (), ())
            return _Tokens(np.array(self.vocab.ids(tokens), dtype=np.int64),
                           tokens,
                           np.array((starts, ends), dtype=np.int64).T,
                           np.zeros(len(tokens), dtype=bool))
        add_special = self.special_tokens == 'root'
        if self._kind == 'tokenizers':
            enc = self._backend.encode(text, add_special_tokens=add_special)
            return _Tokens(
                np.array(enc.ids, dtype=np.int64),
                enc.tokens if self.store_tokens else None,
                np.array(enc.offsets, dtype=np.int64).reshape(-1, 2),
                np.array(enc.special_tokens_mask, dtype=bool))
        enc = self._backend(text, add_special_tokens=add_special,
                            return_offsets_mapping=True,
                            return_special_tokens_mask=True,
                            truncation=False, padding=False, verbose=False)
        ids = list(enc['input_ids'])
        tokens = self._backend.convert_ids_to_tokens(ids) \
            if self.store_tokens else None
        return _Tokens(np.array(ids, dtype=np.int64), tokens,
                       np.array(enc['offset_mapping'],
                                dtype=np.int64).reshape(-1, 2),
                       np.array(enc['special_tokens_mask'], dtype=bool))

    def _select(self, toks: _Tokens, text: str) -> np.ndarray:
        r"""The positions of the tokens that become leaves, in order."""
        # Special tokens that cover no text hang under the root (or go).
        special = toks.special & (toks.offsets[:, 0] == toks.offsets[:, 1])
        content = np.flatnonzero(~special)
        if content.size == 0:
            raise EmptyTextError(
                f"data.text yields no tokens ({_preview(text)}): the "
                f"tokenizer {self._describe_tokenizer()} finds nothing to "
                f"encode in it; filter out such texts before the transform")
        if self.special_tokens != 'root':
            special[:] = False
        num_special = int(special.sum())
        total = content.size + num_special
        if self.max_tokens is not None and total > self.max_tokens:
            if not self.truncate:
                raise ValueError(
                    f"data.text gives {total} tokens, more than max_tokens="
                    f"{self.max_tokens} ({_preview(text)}); pass "
                    f"truncate=True to keep the first {self.max_tokens}, or "
                    f"raise max_tokens")
            budget = self.max_tokens - num_special
            if budget < 1:
                raise ValueError(
                    f"max_tokens={self.max_tokens} leaves no room for text: "
                    f"the tokenizer adds {num_special} special tokens; "
                    f"raise max_tokens or pass special_tokens='drop'")
            content = content[:budget]
        keep = special
        keep[content] = True
        return np.flatnonzero(keep)

    def _assign_words(self, toks: _Tokens, leaves: np.ndarray,
                      layout: _Layout) -> np.ndarray:
        r"""The word of every leaf (``-1`` for special tokens)."""
        if self._tokens_are_words:
            return leaves
        start, end = toks.offsets[leaves].T
        word_start, word_end = layout.words.T
        word = np.searchsorted(word_start, start, side='right') - 1
        # Starts on whitespace: the next word, or the last one.
        outside = (word < 0) | (start >= word_end[word])
        word[outside] = np.minimum(word[outside] + 1, len(word_start) - 1)
        word[toks.special[leaves] & (start == end)] = -1
        return word

    def _tree(self, word: np.ndarray, layout: _Layout
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Parent vector, cluster kinds and cluster spans."""
        n = len(word)
        leaf = np.flatnonzero(word >= 0)  # not a special token
        # The unit of every such leaf on each level, and the units' spans.
        unit = {'word': word[leaf]}
        unit['sentence'] = layout.word_sentence[unit['word']]
        unit['paragraph'] = layout.sentence_paragraph[unit['sentence']]
        bottom_up = [lvl for lvl in reversed(self.LEVELS)
                     if lvl in self.levels]
        # Cluster ids: level by level, each in reading order, the units with
        # enough tokens (a word of one token gets no node).
        node, kinds, counts, spans, next_id = {}, [], [], [], n
        for level in bottom_up:
            units = layout.words if level == 'word' else np.array(
                getattr(layout, level + 's'), dtype=np.int64)
            least = 2 if level == 'word' and \
                not self.keep_single_token_words else 1
            has_node = np.bincount(unit[level], minlength=len(units)) >= least
            ids = np.cumsum(has_node)
            node[level] = np.where(has_node, ids + (next_id - 1), -1)
            kinds.append(self.KINDS.index(level))
            counts.append(int(ids[-1]))
            spans.append(units[has_node])
            next_id += counts[-1]
        spans.append(np.array([[layout.paragraphs[0][0],
                                layout.paragraphs[-1][1]]], dtype=np.int64))

        # Every node's parent is the lowest node above it, else the root
        # (last); of the units with a leaf, only words may have no node.
        parent = np.full(next_id + 1, next_id, dtype=np.int64)
        parent[-1] = -1
        child = leaf
        for level in bottom_up:
            above = node[level][unit[level]]
            has_node = above >= 0
            parent[child[has_node]] = above[has_node]
            child = np.where(has_node, above, child)
        kind = np.repeat(np.array(kinds + [0], dtype=np.int64), counts + [1])
        return parent, kind, np.concatenate(spans)

    def _describe_tokenizer(self) -> str:
        if self.vocab is not None:
            return repr(self.vocab)
        return type(self.tokenizer).__name__

    @property
    def tokenizer_tag(self) -> Optional[str]:
        r"""The :func:`~hsa_geo.datasets.tokenizer_tag` of the tokenizer as
        it encodes (without padding and truncation); :obj:`None` with a
        vocabulary."""
        if self.tokenizer is None:
            return None
        return tokenizer_tag(self.tokenizer)

    def __repr__(self) -> str:
        # Everything that changes the output: datasets compare the repr of
        # their pre_transform to tell whether their files are stale.
        args = [f'vocab={self.vocab!r}' if self.vocab is not None else
                f'tokenizer={type(self.tokenizer).__name__}'
                f'({self.tokenizer_tag!r})',
                f'levels={self.levels}']
        if self.vocab is None:
            args.append(f'special_tokens={self.special_tokens!r}')
        if self.max_tokens is not None:
            args.append(f'max_tokens={self.max_tokens}')
            args.append(f'truncate={self.truncate}')
        if self.keep_single_token_words:
            args.append('keep_single_token_words=True')
        if not self.store_tokens:
            args.append('store_tokens=False')
        return f'{self.__class__.__name__}({", ".join(args)})'


_NON_SPACE = re.compile(r'\S')
# Input attributes that the output does not take over.
_REPLACED = frozenset(('num_nodes', 'offsets', 'tokens', 'cluster_kind',
                       'cluster_offsets') + SIGNAL_KEYS)


def _normalized(text: str) -> str:
    r"""The text in NFC, refused when empty."""
    if not text.strip():
        raise ValueError(
            f"data.text is empty{' (only whitespace)' if text else ''}; "
            f"DocumentHierarchy needs at least one token of text (filter "
            f"out empty documents before the transform)")
    # Composed characters: NFD accents would split words (see Unicode).
    return unicodedata.normalize('NFC', text)


def _spans(matches: Iterator[re.Match]) -> np.ndarray:
    r"""The ``[k, 2]`` spans of regex matches."""
    flat = [i for m in matches for i in m.span()]
    return np.array(flat, dtype=np.int64).reshape(-1, 2)


def _long(values: np.ndarray) -> torch.Tensor:
    # A copy that owns its memory (from_numpy's tensor cannot be resized).
    return torch.from_numpy(values).clone()


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
        return 'tokenizers', plain_copy(tokenizer)
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
