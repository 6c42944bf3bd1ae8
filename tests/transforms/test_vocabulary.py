r"""Tests of :class:`hsa_geo.transforms.vocabulary.Vocabulary`: the built-in
regex tokenizer, building from texts (frequency order, ``min_freq``,
``max_size``), lookup, JSON save / load, and every error message."""
import json
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, strategies as st

from hsa_geo.transforms.vocabulary import Vocabulary

TEXT = (Path(__file__).resolve().parents[2] / 'datasets' /
        'hsa_intro.txt').read_text(encoding='utf-8')


def test_tokenizer_rule():
    vocab = Vocabulary([])
    text = "Kullback-Leibler's naïve (3.5) don\u2019t_x, it's!"
    assert vocab.tokenize(text) == [
        ('kullback', 0, 8), ('-', 8, 9), ("leibler's", 9, 18),
        ('naïve', 19, 24), ('(', 25, 26), ('3', 26, 27), ('.', 27, 28),
        ('5', 28, 29), (')', 29, 30), ('don\u2019t_x', 31, 38), (',', 38, 39),
        ("it's", 40, 44), ('!', 44, 45)
    ]
    cased = Vocabulary([], lowercase=False, punctuation=False)
    assert [t for t, _, _ in cased.tokenize(text)] == [
        'Kullback', "Leibler's", 'naïve', '3', '5', 'don\u2019t_x', "it's"
    ]
    assert vocab.tokenize('') == [] and vocab.tokenize(' \n') == []


@given(st.text(max_size=80))
@example('\uf9e9')  # a compatibility ideograph: NFC is another character
def test_tokens_cover_the_text(text):
    r"""Every non-space character of the NFC text is in exactly one token;
    tokens are that text at their offsets (lowercased), in order."""
    found = Vocabulary([]).tokenize(text)
    text = unicodedata.normalize('NFC', text)  # what offsets index
    assert all(t == text[s:e].lower() for t, s, e in found)
    ends = [0] + [e for _, _, e in found]
    for (_, s, _), prev_end in zip(found, ends):
        assert s >= prev_end and not text[prev_end:s].strip()
    assert not text[ends[-1]:].strip()


def test_build_order_and_ids():
    texts = ['b a. c b', 'a b!']
    vocab = Vocabulary.build(texts)
    # Counts: b 3, a 2, then 1 each in lexicographic order.
    assert vocab.tokens == ['[PAD]', '[UNK]', 'b', 'a', '!', '.', 'c']
    assert vocab.pad_id == 0 and vocab.unk_id == 1
    assert vocab['b'] == 2 and vocab['zebra'] == vocab.unk_id
    assert vocab.lookup(3) == 'a' and len(vocab) == 7
    assert 'c' in vocab and 'zebra' not in vocab
    assert vocab.get_vocab() == {t: i for i, t in enumerate(vocab.tokens)}
    assert vocab.encode('A zebra, c').tolist() == [3, 1, 1, 6]
    assert vocab.encode('A zebra, c').dtype == torch.long
    # The order of the texts does not matter.
    assert Vocabulary.build(texts[::-1]) == vocab
    assert Vocabulary.build(texts, min_freq=2).tokens == [
        '[PAD]', '[UNK]', 'b', 'a'
    ]
    assert Vocabulary.build(texts, max_size=1).tokens == [
        '[PAD]', '[UNK]', 'b'
    ]
    assert Vocabulary.build(texts, max_size=0).tokens == ['[PAD]', '[UNK]']
    custom = Vocabulary.build(texts, pad_token='<pad>', unk_token='<unk>',
                              punctuation=False)
    assert custom.tokens == ['<pad>', '<unk>', 'b', 'a', 'c']
    assert custom.encode('b!').tolist() == [2]


def test_build_on_real_text():
    vocab = Vocabulary.build([TEXT], min_freq=2)
    words = re.findall(r"\w+(?:'\w+)*|[^\w\s]", TEXT.lower())
    counts = {w: words.count(w) for w in set(words)}
    assert set(vocab.tokens[2:]) == {w for w, c in counts.items() if c >= 2}
    freq = [counts[t] for t in vocab.tokens[2:]]
    assert freq == sorted(freq, reverse=True)
    assert vocab.tokens[2] == 'the'


def test_save_load(tmp_path):
    vocab = Vocabulary.build([TEXT, 'naïve “quotes”'], lowercase=False,
                             pad_token='<p>')
    path = tmp_path / 'vocab.json'
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.tokens == vocab.tokens
    assert loaded.lowercase is False and loaded.pad_token == '<p>'
    content = json.loads(path.read_text(encoding='utf-8'))
    assert content['format'] == 'hsa_geo.Vocabulary'
    assert content['tokens'] == vocab.tokens[2:]
    assert Vocabulary.load(str(path)) == vocab


def test_load_errors(tmp_path):
    path = tmp_path / 'v.json'
    path.write_text('{not json')
    with pytest.raises(ValueError, match='is not JSON'):
        Vocabulary.load(path)
    path.write_text('{"tokens": ["a"]}')
    with pytest.raises(ValueError, match=r"is not a saved Vocabulary \(no "
                       r"'format'"):
        Vocabulary.load(path)
    path.write_text('{"format": "hsa_geo.Vocabulary", "version": 9}')
    with pytest.raises(ValueError, match="has Vocabulary format version "
                       "\\('version'\\) 9; "
                       'this hsa_geo reads version 1'):
        Vocabulary.load(path)
    path.write_text('{"format": "hsa_geo.Vocabulary", "version": 1, '
                    '"tokens": []}')
    with pytest.raises(ValueError, match=r"lacks the entries \['pad_token', "
                       r"'unk_token', 'lowercase', 'punctuation'\]"):
        Vocabulary.load(path)
    path.write_text(json.dumps({
        'format': 'hsa_geo.Vocabulary', 'version': 1, 'pad_token': '[PAD]',
        'unk_token': '[UNK]', 'lowercase': True, 'punctuation': True,
        'tokens': ['a', 'b', 'a']}))
    with pytest.raises(ValueError, match=str(path) + r".*tokens\[2\] = 'a' "
                       r"repeats tokens\[0\]"):
        Vocabulary.load(path)


def test_errors():
    with pytest.raises(ValueError, match=r"tokens\[1\] = '\[UNK\]' repeats "
                       r"a special token"):
        Vocabulary(['a', '[UNK]'])
    with pytest.raises(ValueError, match=r"tokens\[0\] = '' is empty"):
        Vocabulary([''])
    with pytest.raises(TypeError, match=r"tokens\[0\] = 3 is a int, not a "
                       r"str"):
        Vocabulary([3])
    with pytest.raises(TypeError, match="'tokens' must be a list of str, "
                       "got str"):
        Vocabulary('abc')
    with pytest.raises(ValueError, match="'pad_token' and 'unk_token' are "
                       "both '<x>'"):
        Vocabulary([], pad_token='<x>', unk_token='<x>')
    with pytest.raises(ValueError, match="'unk_token' must be a non-empty "
                       "str"):
        Vocabulary([], unk_token='')
    with pytest.raises(TypeError, match="'unk_token' must be a non-empty "
                       "str, got None"):
        Vocabulary([], unk_token=None)
    for key in ('lowercase', 'punctuation'):
        with pytest.raises(TypeError, match=f"'{key}' must be True or "
                           f"False, got 'no'"):
            Vocabulary([], **{key: 'no'})
    with pytest.raises(TypeError, match="'texts' is a single string"):
        Vocabulary.build('a text')
    with pytest.raises(TypeError, match=r'texts\[1\] is a int, not a str'):
        Vocabulary.build(['a', 3])
    with pytest.raises(ValueError, match=r"'min_freq' must be an int in "
                       r"\[1, inf\), got 0"):
        Vocabulary.build(['a'], min_freq=0)
    for bad in (1.5, True, '2'):
        with pytest.raises(TypeError, match="'min_freq' must be an int"):
            Vocabulary.build(['a'], min_freq=bad)
    with pytest.raises(ValueError, match=r"'max_size' must be an int in "
                       r"\[0, inf\), got -1"):
        Vocabulary.build(['a'], max_size=-1)
    with pytest.raises(TypeError, match="'max_size' must be an int, got 2.5"):
        Vocabulary.build(['a'], max_size=2.5)
    vocab = Vocabulary(['a'])
    with pytest.raises(ValueError, match=r"'index' must be an int in "
                       r"\[0, 2\], got 3"):
        vocab.lookup(3)
    with pytest.raises(TypeError, match="'index' must be an int"):
        vocab.lookup(1.0)
    with pytest.raises(TypeError, match="'text' must be a str, got bytes"):
        vocab.tokenize(b'a')


# Unicode ##################################################################

NAIVE_NFC = 'na\u00efve caf\u00e9 \u00c5ngstr\u00f6m'
NAIVE_NFD = unicodedata.normalize('NFD', NAIVE_NFC)


def test_decomposed_text_tokenizes_as_composed_text():
    assert NAIVE_NFD != NAIVE_NFC
    vocab = Vocabulary.build([NAIVE_NFC])
    ids = vocab.encode(NAIVE_NFD)
    assert ids.tolist() == vocab.encode(NAIVE_NFC).tolist()
    assert sorted(ids.tolist()) == [2, 3, 4]  # no [UNK]
    assert vocab.tokenize(NAIVE_NFD) == vocab.tokenize(NAIVE_NFC)
    # Built from either form, the vocabulary is the same.
    assert Vocabulary.build([NAIVE_NFD]) == vocab
    # Tokens given decomposed are stored composed, and looked up in either.
    nfd = Vocabulary(NAIVE_NFD.split())
    assert nfd.tokens[2:] == NAIVE_NFC.split()
    assert nfd[NAIVE_NFD.split()[0]] == nfd[NAIVE_NFC.split()[0]] == 2


def test_tokens_equal_after_normalisation_are_duplicates():
    with pytest.raises(ValueError, match=r"tokens\[1\] = .* repeats "
                       r"tokens\[0\]"):
        Vocabulary(['caf\u00e9', 'cafe\u0301'])


def test_offsets_index_the_normalised_text():
    vocab = Vocabulary.build([NAIVE_NFC])
    nfc = unicodedata.normalize('NFC', NAIVE_NFD)
    for token, start, end in vocab.tokenize(NAIVE_NFD):
        assert nfc[start:end].lower() == token


# The file format ##########################################################


def _write(path, **changes):
    content = {'format': 'hsa_geo.Vocabulary', 'version': 1,
               'pad_token': '[PAD]', 'unk_token': '[UNK]',
               'lowercase': True, 'punctuation': True, 'tokens': ['a']}
    content.update(changes)
    path.write_text(json.dumps(content))


@pytest.mark.parametrize('key, value', [
    ('lowercase', 'no'), ('lowercase', 0), ('lowercase', None),
    ('punctuation', 'yes'), ('punctuation', 1),
    ('pad_token', 0), ('unk_token', ['x']), ('pad_token', ''),
    ('tokens', 'abc'), ('tokens', {'a': 2}), ('tokens', [1]),
    ('tokens', ['']), ('version', True),
])
def test_load_checks_every_entry(tmp_path, key, value):
    path = tmp_path / 'v.json'
    _write(path, **{key: value})
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" +
                       re.escape(repr(key) if key != 'tokens' or isinstance(
                           value, (str, dict)) else 'tokens[0]')):
        Vocabulary.load(path)


def test_load_round_trip_of_the_flags(tmp_path):
    path = tmp_path / 'v.json'
    _write(path, lowercase=False, punctuation=False)
    vocab = Vocabulary.load(path)
    assert vocab.lowercase is False and vocab.punctuation is False


# Property tests ###########################################################

# Letters, combining marks, odd whitespace and punctuation.
ODD_TEXT = st.lists(st.sampled_from(
    list('aAeI\u0131\u0130\u00df') + [
        '\u0301', '\u0308', '\u0327', '\u200b', '\u00a0', '\u2028',
        '\u3000', '\t', '\r\n', ' ', '\n\n', "'", '\u2019', '.', '!',
        '\ufb01', '\uff21', '\U0001f600', '\ud800']),
    max_size=30).map(''.join)


@given(ODD_TEXT, st.booleans(), st.booleans())
def test_odd_text_gives_valid_tokens(text, lowercase, punctuation):
    vocab = Vocabulary.build([text, 'a'], lowercase=lowercase,
                             punctuation=punctuation)
    nfc = unicodedata.normalize('NFC', text)
    found = vocab.tokenize(text)
    for token, start, end in found:
        assert 0 <= start < end <= len(nfc)
        piece = nfc[start:end]
        assert token == (piece.lower() if lowercase else piece)
    ids = vocab.encode(unicodedata.normalize('NFD', text))
    assert ids.tolist() == [vocab[t] for t, _, _ in found]
    assert (ids != vocab.unk_id).all()


@given(st.one_of(st.integers(0, 3), st.integers(-3, 3),
                 st.floats(allow_nan=True), st.booleans(),
                 st.text(max_size=2), st.none()),
       st.one_of(st.none(), st.integers(0, 3), st.integers(-3, 3),
                 st.floats(), st.booleans()))
def test_build_sizes_are_checked(min_freq, max_size):
    """A clear error, or the tokens seen at least min_freq times, the
    most frequent first, at most max_size of them (beside the two
    special tokens)."""
    try:
        vocab = Vocabulary.build(['a b b'], min_freq=min_freq,
                                 max_size=max_size)
    except (TypeError, ValueError) as e:
        assert 'min_freq' in str(e) or 'max_size' in str(e)
    else:
        kept = [t for t, count in (('b', 2), ('a', 1)) if count >= min_freq]
        kept = kept[:max_size] if max_size is not None else kept
        assert len(vocab) == 2 + len(kept)
        assert [t in vocab for t in 'ab'] == [t in kept for t in 'ab']


def test_repr_and_equality():
    vocab = Vocabulary(['a', 'b'], punctuation=False)
    assert repr(vocab) == ("Vocabulary(size=4, digest='f73133b8dde5', "
                           "lowercase=True, punctuation=False)")
    assert vocab == Vocabulary(['a', 'b'], punctuation=False)
    assert vocab != Vocabulary(['a', 'b'])
    assert vocab != Vocabulary(['b', 'a'], punctuation=False)
    with pytest.raises(TypeError):
        hash(vocab)


def test_repr_names_the_tokens():
    r"""Vocabularies of one size but other tokens give other ids, so their
    reprs differ (a dataset compares the repr of its pre_transform to find
    stale files); the digest is that of the tokens, the same in every
    process."""
    vocab = Vocabulary(['a', 'b'])
    assert repr(vocab) == ("Vocabulary(size=4, digest='f73133b8dde5', "
                           "lowercase=True, punctuation=True)")
    assert vocab.digest == 'f73133b8dde5'
    assert repr(Vocabulary(['b', 'a'])) == (
        "Vocabulary(size=4, digest='d22bde917383', lowercase=True, "
        "punctuation=True)")
    assert repr(Vocabulary(['a', 'b'], unk_token='<unk>')) != repr(vocab)
    assert repr(Vocabulary(['a', 'c'])) != repr(vocab)
    assert repr(Vocabulary.build(['b a'])) == repr(vocab)  # same content


def test_ids_of_many_tokens_as_one_by_one():
    vocab = Vocabulary.build(['the caf\u00e9 is open'])
    tokens = ['the', 'cafe\u0301', 'caf\u00e9', 'closed', '[PAD]', 'open']
    assert vocab.ids(tokens) == [vocab[t] for t in tokens]
    assert vocab.ids(tokens)[1] == vocab['caf\u00e9']  # NFD finds it too
    assert vocab.ids(['closed']) == [vocab.unk_id]
    assert vocab.ids(()) == []


@pytest.mark.parametrize('text, words', [
    ('नमस्ते दुनिया', ['नमस्ते', 'दुनिया']),
    ('สวัสดีครับ', ['สวัสดีครับ']),
    ('مَرْحَبًا', ['مَرْحَبًا']),
    ('q\u0303uick, don\u2019t', ['q\u0303uick', ',', 'don\u2019t']),
])
@pytest.mark.parametrize('punctuation', [True, False])
def test_combining_marks_stay_in_their_word(text, words, punctuation):
    """\\w does not match vowel signs, viramas or harakat: they split
    words (or were dropped without punctuation) before."""
    from hsa_geo.transforms import DocumentHierarchy
    vocab = Vocabulary([], lowercase=False, punctuation=punctuation)
    expected = [w for w in words if punctuation or w != ',']
    assert [t for t, _, _ in vocab.tokenize(text)] == expected
    units = DocumentHierarchy(vocab=vocab).split(text)
    assert len(units.words) == len(words)
