r"""One forest over the positions of a padded batch of a HuggingFace
tokenizer: sequence -> paragraphs -> sentences -> words -> tokens."""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from hsa_geo._checks import check_bool
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.transforms.document_hierarchy import DocumentHierarchy

#: Where the special tokens of a sequence go (see :class:`TokenHierarchy`).
SPECIAL_TOKENS = ('root', 'own', 'global')


class TokenForest(NamedTuple):
    r"""The forest of a padded batch of :math:`B` sequences of :math:`L`
    positions, built by :class:`TokenHierarchy`.

    Attributes:
        hierarchy (Hierarchy): the forest over the :math:`B L` positions;
            leaf ``b * L + t`` is position ``t`` of sequence ``b`` (the row
            order of ``hidden_states.reshape(B * L, -1)``).
        valid (BoolTensor): ``[B, L]`` the real tokens (the tokenizer's
            ``attention_mask``); the others are padding.
        special (BoolTensor): ``[B, L]`` the real tokens that belong to no
            word of the text (``[CLS]``, ``[SEP]``, ``<s>``, ``</s>``).
        global_leaves (LongTensor): ``[G]`` the leaves (``b * L + t``)
            whose rows are dense softmax attention over their sequence
            (``special_tokens='global'``; empty otherwise).
    """
    hierarchy: Hierarchy
    valid: Tensor
    special: Tensor
    global_leaves: Tensor

    @property
    def batch_size(self) -> int:
        return self.valid.size(0)

    @property
    def seq_len(self) -> int:
        return self.valid.size(1)

    def to(self, device: Any) -> 'TokenForest':
        r"""The forest with all its tensors on :obj:`device`."""
        return TokenForest(self.hierarchy.to(device), self.valid.to(device),
                           self.special.to(device),
                           self.global_leaves.to(device))


# What TokenHierarchy.encode passes to the tokenizer itself.
_ENCODE_SETS = ('return_offsets_mapping', 'return_tensors')


class TokenHierarchy:
    r"""Builds the :class:`TokenForest` of a padded batch encoded by a
    HuggingFace fast tokenizer, for HSA inside a pretrained encoder
    (:func:`~hsa_geo.huggingface.hsa_attention`).

    Per sequence :math:`b`, the tree is the layout of its text: the
    sequence root, its paragraphs, their sentences, their words and the
    tokens of every word, as in
    :class:`~hsa_geo.transforms.DocumentHierarchy`, but over the positions
    the tokenizer produced (truncation included):

    - a *word* is a word of the tokenizer (``encoding.word_ids(b)``, its
      pre-tokenizer's split: ``"Kullback-Leibler"`` is three words for BERT);
      a word of one token gets no node of its own unless
      :obj:`keep_single_token_words` (a single-child node changes nothing
      in HSA, it only costs a node);
    - *sentences* and *paragraphs* are the spans of
      :meth:`DocumentHierarchy.split` on the text; a word belongs to the
      sentence holding its last character (whitespace between sentences
      belongs to the sentence before it);
    - *padding* positions (``attention_mask == 0``) are one-leaf trees of
      their own: they attend only to themselves and no real token sees
      them, so a padded batch gives every sequence the outputs it has
      alone;
    - *special tokens* (real positions without a word: ``[CLS]``,
      ``[SEP]``, ``<s>``, ``</s>``) go where :obj:`special_tokens` says.
      Pretrained encoders use them as attention sinks (many heads park
      most of their mass on ``[CLS]``/``[SEP]``), so the choice matters:

      * ``'root'``: children of the sequence root, next to the
        paragraphs. Every token weighs each of them as a block of one
        leaf (with its own query in query-resolved HSA, with the mean
        query of its top-level subtree in HSA), and they see the
        paragraphs as wholes.
      * ``'own'``: a one-leaf tree each: a special token attends only to
        itself and no token sees it (the sink is gone).
      * ``'global'``: placed as with ``'root'``, and in addition the row
        of every special token is exact softmax attention over all real
        tokens of its sequence (:attr:`TokenForest.global_leaves`), as in
        the pretrained model. This is exact for those rows; the other rows
        are the variant's rows of the ``'root'`` tree, which HSA never
        couples to the rows of other root children (a row under child
        :math:`a` depends on :math:`l_{a\cdot}` and the subtree of
        :math:`a` only). It costs :math:`4 L_b D` per head for each of
        them.

      Measured zero-shot on all-MiniLM-L6-v2 (16 two-paragraph documents
      of ~140 tokens; cosine of the mean-pooled sentence embedding to the
      model's, HSA in all 6 layers): ``'global'`` 0.836 (HSA) / 0.876
      (query-resolved), ``'root'`` 0.830 / 0.867, ``'own'`` 0.641 /
      0.656, at 17% / 16% / 16% of the dense attention FLOPs (HSA). The
      sink matters: ``'own'`` loses most, and ``'global'``, the default,
      is the closest for about one point of FLOPs more than ``'root'``.

    With ``levels=()`` (and ``'root'`` or ``'global'``) every real token
    is a child of its sequence root: HSA is then exactly the model's
    softmax attention.

    Args:
        tokenizer: a HuggingFace fast tokenizer (``is_fast``), the one that
            encodes the batches (used for :meth:`encode` and to split the
            texts).
        levels (tuple of str): the levels between the tokens and the
            sequence root, a top-down subsequence of ``('paragraph',
            'sentence', 'word')``. (default: all three)
        special_tokens (str): ``'root'``, ``'own'`` or ``'global'`` (see
            above). (default: ``'global'``)
        keep_single_token_words (bool): give every word a node, also words
            of one token. (default: :obj:`False`)

    Example:
        >>> builder = TokenHierarchy(tokenizer, levels=('sentence', 'word'))
        >>> inputs, forest = builder.encode(texts, truncation=True)
        >>> forest.hierarchy.num_leaves == inputs['input_ids'].numel()
        True
    """
    LEVELS = DocumentHierarchy.LEVELS

    def __init__(self, tokenizer: Any,
                 levels: Sequence[str] = DocumentHierarchy.LEVELS,
                 special_tokens: str = 'global',
                 keep_single_token_words: bool = False):
        if not getattr(tokenizer, 'is_fast', False) or not callable(
                tokenizer):
            raise TypeError(
                f"'tokenizer' must be a transformers fast tokenizer (is_fast"
                f"=True), got {type(tokenizer).__name__}; load it with "
                f"AutoTokenizer.from_pretrained(..., use_fast=True) (word ids"
                f" and character offsets need a fast tokenizer)")
        self.tokenizer = tokenizer
        # Its split() gives the paragraphs and sentences; it also checks
        # the levels.
        self._splitter = DocumentHierarchy(tokenizer=tokenizer,
                                           levels=levels)
        self.levels = self._splitter.levels
        if special_tokens not in SPECIAL_TOKENS:
            raise ValueError(
                f"'special_tokens' must be one of {SPECIAL_TOKENS} (children "
                f"of the sequence root, one-leaf trees of their own, or "
                f"exact softmax rows), got {special_tokens!r}")
        self.special_tokens = special_tokens
        self.keep_single_token_words = check_bool(
            keep_single_token_words, 'keep_single_token_words')

    def encode(self, texts: Sequence[str], **kwargs: Any
               ) -> Tuple[Dict[str, Tensor], TokenForest]:
        r"""Encodes :obj:`texts` as one padded batch (``padding=True``,
        PyTorch tensors; :obj:`kwargs` go to the tokenizer, e.g.
        ``truncation=True, max_length=256``) and returns the model inputs
        (without ``offset_mapping``, which models do not take) and the
        forest."""
        texts = _check_texts(texts)
        fixed = [key for key in _ENCODE_SETS if key in kwargs]
        if fixed:
            raise TypeError(
                f"encode sets {fixed[0]!r} itself ({_ENCODE_SETS}); leave it "
                f"out, or call the tokenizer with "
                f"return_offsets_mapping=True and pass its output to "
                f"TokenHierarchy(...)(encoding, texts)")
        kwargs.setdefault('padding', True)
        encoding = self.tokenizer(texts, return_offsets_mapping=True,
                                  return_tensors='pt', **kwargs)
        forest = self(encoding, texts)
        inputs = {k: v for k, v in encoding.items() if k != 'offset_mapping'}
        return inputs, forest

    def __call__(self, encoding: Any, texts: Sequence[str]) -> TokenForest:
        r"""The forest of :obj:`encoding`, the tokenizer's output for
        :obj:`texts` (a padded batch, with ``return_offsets_mapping=True``;
        lists or tensors)."""
        texts = _check_texts(texts)
        mask, offsets = _encoded(encoding, len(texts))
        batch, length = mask.shape
        parent: List[np.ndarray] = [np.full(batch * length, -1, np.int64)]
        next_id, global_rows = batch * length, []
        special = np.zeros_like(mask)
        for b, text in enumerate(texts):
            words = _word_ids(encoding, b, length)
            special[b] = mask[b] & (words < 0)
            if int(offsets[b, mask[b], 1].max(initial=0)) > len(text):
                raise ValueError(
                    f"the offsets of sequence {b} reach character "
                    f"{int(offsets[b, mask[b], 1].max())} but texts[{b}] has "
                    f"{len(text)}; pass the texts that were encoded, in "
                    f"the same order")
            start = b * length
            parents = self._sequence(text, words, offsets[b], mask[b],
                                     start, next_id)
            parent[0][start:start + length] = parents[:length]
            parent.append(parents[length:])
            next_id += len(parents) - length
            if self.special_tokens == 'global':
                global_rows.append(start + np.flatnonzero(special[b]))
        hierarchy = Hierarchy.from_parent(
            torch.from_numpy(np.concatenate(parent)), batch * length)
        rows = np.concatenate(global_rows) if global_rows else \
            np.zeros(0, np.int64)
        return TokenForest(hierarchy, torch.from_numpy(mask),
                           torch.from_numpy(special),
                           torch.from_numpy(rows.astype(np.int64)))

    def _sequence(self, text: str, words: np.ndarray, offsets: np.ndarray,
                  valid: np.ndarray, start: int, first_id: int
                  ) -> np.ndarray:
        r"""``[L + M]`` the parents of the :math:`L` positions of one
        sequence and of its :math:`M` clusters (numbered from
        :obj:`first_id`, bottom-up), in the batch's node ids; padding
        positions are roots."""
        length = len(words)
        token = np.flatnonzero(valid & (words >= 0))  # positions with a word
        units = self._units(text, words[token], offsets[token])
        # The node each token hangs under so far: itself; then level by
        # level the unit's node where the unit has one.
        top = start + token
        links: List[Tuple[np.ndarray, np.ndarray]] = []
        next_id = first_id
        for level in [lvl for lvl in reversed(self.LEVELS)
                      if lvl in self.levels]:
            ids, inverse, counts = np.unique(units[level],
                                             return_inverse=True,
                                             return_counts=True)
            least = 2 if level == 'word' and \
                not self.keep_single_token_words else 1
            has_node = counts >= least
            node = np.full(len(ids), -1, np.int64)
            node[has_node] = next_id + np.arange(int(has_node.sum()))
            next_id += int(has_node.sum())
            above = node[inverse]
            moved = above >= 0
            links.append((top[moved], above[moved]))
            top = np.where(moved, above, top)
        special = start + np.flatnonzero(valid & (words < 0))
        under_root = [top] if self.special_tokens == 'own' else \
            [top, special]
        under_root = np.unique(np.concatenate(under_root))
        if under_root.size:
            links.append((under_root, np.full(under_root.size, next_id)))
            next_id += 1
        parent = np.full(length + next_id - first_id, -1, np.int64)
        for child, up in links:
            # Positions are start..start+L-1, clusters first_id.. on.
            local = np.where(child >= first_id, child - first_id + length,
                             child - start)
            parent[local] = up
        return parent

    def _units(self, text: str, words: np.ndarray, offsets: np.ndarray
               ) -> Dict[str, np.ndarray]:
        r"""The word, sentence and paragraph (indices in reading order) of
        every token of a word (none without levels)."""
        if words.size == 0 or not self.levels:
            empty = np.zeros(0, np.int64)
            return {'word': empty, 'sentence': empty, 'paragraph': empty}
        units = self._splitter.split(text)
        # A word's last character decides its sentence.
        last = np.zeros(int(words.max()) + 1, np.int64)
        np.maximum.at(last, words, np.maximum(offsets[:, 1] - 1,
                                              offsets[:, 0]))
        starts = np.array([s for s, _ in units.sentences] or [0], np.int64)
        sentence = np.maximum(
            np.searchsorted(starts, last, side='right') - 1, 0)[words]
        paragraph = np.array(units.sentence_paragraph or [0],
                             np.int64)[sentence]
        return {'word': words, 'sentence': sentence, 'paragraph': paragraph}

    def __repr__(self) -> str:
        # Everything that changes the forest, the tokenizer by its tag (two
        # tokenizers of one class can split a text differently).
        return (f'{self.__class__.__name__}(tokenizer='
                f'{type(self.tokenizer).__name__}'
                f'({self._splitter.tokenizer_tag!r}), levels={self.levels}, '
                f'special_tokens={self.special_tokens!r}'
                + (', keep_single_token_words=True'
                   if self.keep_single_token_words else '') + ')')


def _check_texts(texts: Any) -> List[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"'texts' must be a list of str (one per sequence of"
                        f" the batch), got {type(texts).__name__}; wrap a "
                        f"single text as [text]")
    if len(texts) == 0:
        raise ValueError("'texts' is empty; pass a list of at least one "
                         "text (one per sequence of the batch)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got "
                            f"{type(text).__name__}")
    return list(texts)


def _encoded(encoding: Any, num_texts: int) -> Tuple[np.ndarray,
                                                     np.ndarray]:
    r"""``(valid [B, L] bool, offsets [B, L, 2])`` of a padded batch."""
    if not hasattr(encoding, 'word_ids') or not hasattr(encoding, 'keys'):
        raise TypeError(
            f"'encoding' must be the BatchEncoding a transformers fast "
            f"tokenizer returns for a list of texts, got "
            f"{type(encoding).__name__}")
    for key in ('attention_mask', 'offset_mapping'):
        if key not in encoding:
            raise ValueError(
                f"the encoding has no {key!r}; encode with tokenizer(texts, "
                f"padding=True, return_offsets_mapping=True) (or use "
                f"TokenHierarchy.encode)")
    fix = "encode a list of texts with padding=True"
    try:
        mask = torch.as_tensor(encoding['attention_mask'])
        offsets = torch.as_tensor(encoding['offset_mapping'])
    except ValueError as e:  # ragged lists
        raise ValueError(f"the encoding must be a padded batch ({e}); "
                         f"{fix}") from e
    if mask.dim() != 2 or tuple(offsets.shape) != tuple(mask.shape) + (2, ):
        raise ValueError(
            f"the encoding must be a padded batch: attention_mask [B, L] and "
            f"offset_mapping [B, L, 2], got {tuple(mask.shape)} and "
            f"{tuple(offsets.shape)}; {fix}")
    if mask.size(0) != num_texts:
        raise ValueError(
            f"the encoding has {mask.size(0)} sequences but {num_texts} texts"
            f" were given; pass the texts that were encoded (overflowing "
            f"windows, return_overflowing_tokens=True, are not supported)")
    return mask.numpy().astype(bool), offsets.numpy().astype(np.int64)


def _word_ids(encoding: Any, b: int, length: int) -> np.ndarray:
    r"""``[L]`` the word of every position of sequence :obj:`b` (``-1``
    for special tokens and padding)."""
    try:
        words = encoding.word_ids(b)
        sequences = encoding.sequence_ids(b)
    except ValueError as e:  # a BatchEncoding of a slow tokenizer
        raise TypeError(
            f"the encoding has no word ids ({e}); encode with a fast "
            f"tokenizer") from e
    if any(s is not None and s > 0 for s in sequences):
        raise ValueError(
            f"sequence {b} of the encoding holds a pair of texts; the forest "
            f"covers single texts, encode each text on its own")
    out = np.array([-1 if w is None else w for w in words], np.int64)
    if out.size != length:
        raise ValueError(f"sequence {b} has {out.size} word ids for {length} "
                         f"positions; the encoding is inconsistent")
    return out
