r"""A word vocabulary with a built-in regex tokenizer, for
:class:`~hsa_geo.transforms.document_hierarchy.DocumentHierarchy` without a
HuggingFace tokenizer."""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from hsa_geo._checks import check_bool, check_int

PathLike = Union[str, os.PathLike]


def _marks() -> str:
    r"""A regex character class of the Unicode combining marks (category
    M: vowel signs, viramas, harakat, ...), which ``\w`` does not match
    though they belong to the word before them. They all lie in the planes
    scanned (0, 1 and 14's variation selectors): a 10 ms scan, not 60."""
    codes = [c for lo, hi in ((0x300, 0x20000), (0xE0000, 0xE1000))
             for c in range(lo, hi)
             if unicodedata.category(chr(c)).startswith('M')]
    ranges = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return '[' + ''.join(re.escape(chr(a)) + '-' + re.escape(chr(b))
                         for a, b in ranges) + ']'


# A run of word characters, each followed by the marks on it; the class of
# ~300 ranges is tried only past U+02FF (no mark lies below): English text
# tokenizes 1.15x slower than with \w+ alone, not 1.7x.
_WORD = r"\w+(?:(?=[^\x00-\u02ff])" + _marks() + r"+\w*)*"
_FORMAT = 'hsa_geo.Vocabulary'
_VERSION = 1
# The entries of a saved vocabulary: their JSON type, and how to say it.
_ENTRIES = {
    'pad_token': (str, 'a str'),
    'unk_token': (str, 'a str'),
    'lowercase': (bool, 'true or false'),
    'punctuation': (bool, 'true or false'),
    'tokens': (list, 'a list of str'),
}


class Vocabulary:
    r"""A mapping between tokens and integer ids, with the tokenizer that
    produced the tokens: a regular expression that splits text into words
    and punctuation marks.

    **Tokenizer.** A token is a match of :attr:`WORD_PATTERN`: either a run
    of word characters (Unicode letters, digits and ``_``, each with the
    combining marks on it: ``'नमस्ते'`` is one word) that may contain
    inner apostrophes (``don't``, ``Kullback``), or a single character that
    is neither a word character nor whitespace (``,``, ``-``, ``"``). So
    ``"Kullback-Leibler's"`` is ``Kullback``, ``-``, ``Leibler's``. With
    :obj:`lowercase` the tokens are lowercased (the offsets still point into
    the unlowercased text); with ``punctuation=False`` the single-character
    tokens are skipped.

    **Unicode.** Texts and tokens are brought to Unicode normal form NFC
    (:func:`unicodedata.normalize`) first, so that the same text gives the
    same tokens however it is encoded: ``'naïve'`` typed as ``'i'`` plus a
    combining diaeresis (NFD, as some editors and file systems write it) is
    the token ``'naïve'``, not ``'nai'``, ``'̈'``, ``'ve'``. NFC, not NFKC:
    NFC only merges encodings of the same characters, while NFKC also folds
    *compatibility* characters (``'ﬁ'`` to ``'fi'``, ``'²'`` to ``'2'``,
    ``'½'`` to ``'1⁄2'``, full-width letters), which changes what a text
    says; normalise the texts yourself before :meth:`build` and
    :meth:`encode` if you want that (NFKC text is also NFC). Offsets index
    the normalised text, which is the text itself when it is NFC already
    (the usual case).

    **Ids.** ``0`` is :obj:`pad_token`, ``1`` is :obj:`unk_token`, then the
    regular tokens in the order given. Looking up a token that is not in the
    vocabulary gives :attr:`unk_id`.

    Build one from texts with :meth:`build` (tokens that occur at least
    :obj:`min_freq` times, the most frequent first), store it with
    :meth:`save` and read it back with :meth:`load` (JSON).

    Args:
        tokens (list of str): the regular tokens, in id order (their ids
            start at 2). No duplicates, none equal to a special token.
        pad_token (str): the token of id 0 (padding; never produced by the
            tokenizer). (default: ``'[PAD]'``)
        unk_token (str): the token of id 1, for tokens outside the
            vocabulary. (default: ``'[UNK]'``)
        lowercase (bool): lowercase the tokens. (default: :obj:`True`)
        punctuation (bool): keep punctuation marks as tokens.
            (default: :obj:`True`)

    Example:
        >>> vocab = Vocabulary.build(['A cat. A dog!'], min_freq=1)
        >>> vocab.tokens
        ['[PAD]', '[UNK]', 'a', '!', '.', 'cat', 'dog']
        >>> vocab.encode('a cow').tolist()
        [2, 1]
    """
    #: One token: a word (inner apostrophes allowed) or one other
    #: non-space character. Also the word rule of DocumentHierarchy.
    WORD_PATTERN = re.compile(_WORD + r"(?:['\u2019]" + _WORD +
                              r")*|[^\w\s]")

    def __init__(self, tokens: Sequence[str], pad_token: str = '[PAD]',
                 unk_token: str = '[UNK]', lowercase: bool = True,
                 punctuation: bool = True):
        for name, value in (('pad_token', pad_token),
                            ('unk_token', unk_token)):
            if not isinstance(value, str) or not value:
                error = ValueError if isinstance(value, str) else TypeError
                raise error(f"'{name}' must be a non-empty str, got "
                            f"{value!r}")
        pad_token, unk_token = _nfc(pad_token), _nfc(unk_token)
        if pad_token == unk_token:
            raise ValueError(f"'pad_token' and 'unk_token' are both "
                             f"{pad_token!r}; they need different ids, so "
                             f"give them different strings")
        if isinstance(tokens, (str, bytes)) or not isinstance(
                tokens, Sequence):
            raise TypeError(f"'tokens' must be a list of str, got "
                            f"{type(tokens).__name__}")
        itos = [pad_token, unk_token]
        stoi = {pad_token: 0, unk_token: 1}
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"tokens[{i}] = {token!r} is a "
                                f"{type(token).__name__}, not a str")
            if not token:
                raise ValueError(f"tokens[{i}] = '' is empty; every token "
                                 f"needs at least one character")
            token = _nfc(token)
            if token in stoi:
                what = 'a special token' if stoi[token] < 2 else \
                    f'tokens[{stoi[token] - 2}]'
                raise ValueError(f"tokens[{i}] = {token!r} repeats {what}; "
                                 f"every token needs exactly one id")
            stoi[token] = len(itos)
            itos.append(token)
        self._itos = itos
        self._stoi = stoi
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.lowercase = check_bool(lowercase, 'lowercase')
        self.punctuation = check_bool(punctuation, 'punctuation')

    # Construction ##########################################################

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1,
              max_size: Optional[int] = None, **kwargs) -> 'Vocabulary':
        r"""Counts the tokens of :obj:`texts` and keeps those that occur at
        least :obj:`min_freq` times, the most frequent first (ties in
        lexicographic order, so the result does not depend on the order of
        the texts).

        Args:
            texts (iterable of str): the corpus.
            min_freq (int): the fewest occurrences a token needs.
                (default: :obj:`1`)
            max_size (int, optional): keep at most this many regular tokens
                (the special ones not counted).
            **kwargs: :obj:`pad_token`, :obj:`unk_token`, :obj:`lowercase`,
                :obj:`punctuation` (see :class:`Vocabulary`).
        """
        min_freq = check_int(min_freq, 'min_freq')
        if max_size is not None:
            max_size = check_int(max_size, 'max_size', low=0)
        if isinstance(texts, (str, bytes)):
            raise TypeError("'texts' is a single string; pass a list of "
                            "texts, e.g. [text]")
        # An empty vocabulary tokenizes just as the final one does.
        tokenizer = cls([], **kwargs)
        specials = {tokenizer.pad_token, tokenizer.unk_token}
        counts: Counter = Counter()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, "
                                f"not a str")
            counts.update(t for t, _, _ in tokenizer.tokenize(text))
        kept = sorted(((t, c) for t, c in counts.items()
                       if c >= min_freq and t not in specials),
                      key=lambda tc: (-tc[1], tc[0]))
        if max_size is not None:
            kept = kept[:max_size]
        return cls([t for t, _ in kept], **kwargs)

    def save(self, path: PathLike):
        r"""Writes the vocabulary to :obj:`path` as JSON (UTF-8)."""
        content = {
            'format': _FORMAT,
            'version': _VERSION,
            'pad_token': self.pad_token,
            'unk_token': self.unk_token,
            'lowercase': self.lowercase,
            'punctuation': self.punctuation,
            'tokens': self._itos[2:],
        }
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(content, f, ensure_ascii=False, indent=0)
            f.write('\n')

    @classmethod
    def load(cls, path: PathLike) -> 'Vocabulary':
        r"""Reads a vocabulary written by :meth:`save`."""
        with open(path, encoding='utf-8') as f:
            try:
                content = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path} is not JSON ({e}); write vocabularies with "
                    f"Vocabulary.save") from None
        if not isinstance(content, dict) or content.get(
                'format') != _FORMAT:
            raise ValueError(f"{path} is not a saved Vocabulary (no "
                             f"'format': '{_FORMAT}' entry); write it with "
                             f"Vocabulary.save")
        version = content.get('version')
        if isinstance(version, bool) or version != _VERSION:
            raise ValueError(f"{path} has Vocabulary format version "
                             f"('version') {version!r}; this hsa_geo "
                             f"reads version {_VERSION}")
        missing = [k for k in _ENTRIES if k not in content]
        if missing:
            raise ValueError(f"{path} lacks the entries {missing}; write it "
                             f"with Vocabulary.save")
        for key, (kind, what) in _ENTRIES.items():
            value = content[key]
            if isinstance(value, bool) != (kind is bool) or not isinstance(
                    value, kind):
                raise ValueError(
                    f"{path}: the entry {key!r} must be {what}, got "
                    f"{value!r}; fix the file or write it with "
                    f"Vocabulary.save")
        try:
            return cls(content['tokens'], pad_token=content['pad_token'],
                       unk_token=content['unk_token'],
                       lowercase=content['lowercase'],
                       punctuation=content['punctuation'])
        except (TypeError, ValueError) as e:  # what is wrong, and where
            raise ValueError(f"{path}: {e}; fix the file or write it with "
                             f"Vocabulary.save") from None

    # Tokenizing ############################################################

    def tokenize(self, text: str) -> List[Tuple[str, int, int]]:
        r"""The tokens of :obj:`text` as ``(token, start, end)``: ``token``
        is ``nfc[start:end]`` (lowercased with :obj:`lowercase`), where
        ``nfc = unicodedata.normalize('NFC', text)`` (see *Unicode* above;
        ``nfc == text`` for most texts)."""
        if not isinstance(text, str):
            raise TypeError(f"'text' must be a str, got "
                            f"{type(text).__name__}")
        matches = self.WORD_PATTERN.finditer(_nfc(text))
        if not self.punctuation:
            # Words start with a word character; the rest are single marks.
            matches = (m for m in matches if _is_word_char(m.group()[0]))
        if self.lowercase:
            return [(m.group().lower(), m.start(), m.end()) for m in matches]
        return [(m.group(), m.start(), m.end()) for m in matches]

    def encode(self, text: str) -> Tensor:
        r"""The ids of the tokens of :obj:`text`: a ``LongTensor [n]``."""
        return torch.tensor([self[t] for t, _, _ in self.tokenize(text)],
                            dtype=torch.long)

    # Lookup ################################################################

    def __getitem__(self, token: str) -> int:
        r"""The id of :obj:`token` (:attr:`unk_id` if it is unknown), in any
        Unicode normal form."""
        found = self._stoi.get(token)
        if found is None and isinstance(token, str):
            found = self._stoi.get(_nfc(token))
        return 1 if found is None else found

    def ids(self, tokens: Sequence[str]) -> List[int]:
        r"""The id of every token of :obj:`tokens`, as
        :meth:`__getitem__` gives it (in one call, for speed)."""
        get = self._stoi.get
        return [self[t] if (found := get(t)) is None else found
                for t in tokens]

    def __contains__(self, token: object) -> bool:
        return token in self._stoi or (isinstance(token, str) and _nfc(
            token) in self._stoi)

    def __len__(self) -> int:
        return len(self._itos)

    def lookup(self, index: int) -> str:
        r"""The token of id :obj:`index`."""
        return self._itos[check_int(index, 'index', low=0,
                                    high=len(self) - 1)]

    @property
    def tokens(self) -> List[str]:
        r"""All tokens in id order, the special ones first."""
        return list(self._itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def get_vocab(self) -> Dict[str, int]:
        r"""A copy of the token-to-id mapping."""
        return dict(self._stoi)

    @property
    def digest(self) -> str:
        r"""A short name of the tokens: the first 12 hex digits of the
        SHA-1 of :attr:`tokens` (in id order, as JSON). Vocabularies of
        other tokens or another token order have other digests, in every
        process (it is in the :func:`repr`, which datasets compare to find
        files processed with another vocabulary)."""
        text = json.dumps(self._itos, ensure_ascii=False)
        return hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return (self._itos, self.lowercase, self.punctuation) == (
            other._itos, other.lowercase, other.punctuation)

    __hash__ = None  # compared by content, like a list

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(size={len(self)}, '
                f'digest={self.digest!r}, lowercase={self.lowercase}, '
                f'punctuation={self.punctuation})')


_WORD_CHAR = re.compile(r'\w')


def _is_word_char(char: str) -> bool:
    return _WORD_CHAR.match(char) is not None


def _nfc(text: str) -> str:
    # The check is much cheaper than normalising, and most text is NFC.
    if unicodedata.is_normalized('NFC', text):
        return text
    return unicodedata.normalize('NFC', text)
