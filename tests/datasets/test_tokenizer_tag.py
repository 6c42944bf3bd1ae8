import pytest

from hsa_geo.datasets import tokenizer_tag
from hsa_geo.datasets.tokenizer_tag import plain_copy


def _word_level(words, padded: bool = True):
    r"""A word-level ``tokenizers.Tokenizer`` with padding and truncation
    switched on, as many ``tokenizer.json`` files ship."""
    tokenizers = pytest.importorskip('tokenizers')
    from tokenizers import models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(['[PAD]'] + list(words))}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token='[PAD]'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if padded:
        tok.enable_padding(length=16)
        tok.enable_truncation(16)
    return tok


def test_the_vocabulary_makes_the_tag():
    assert tokenizer_tag(_word_level(['a', 'b'])) != \
        tokenizer_tag(_word_level(['b', 'a']))
    assert tokenizer_tag(_word_level(['a', 'b'])).startswith('tokenizer-')
    # Padding and truncation change no ids of a document.
    assert tokenizer_tag(_word_level(['a', 'b'])) == \
        tokenizer_tag(_word_level(['a', 'b'], padded=False))


def test_a_transformers_tokenizer_keeps_its_tag_once_called():
    transformers = pytest.importorskip('transformers')
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_word_level(['a', 'b']), pad_token='[PAD]')
    fresh = tokenizer_tag(tok)
    tok('a b')  # switches the truncation of the backend off
    assert tokenizer_tag(tok) == fresh
    tok(['a', 'a b'], padding=True, truncation=True, max_length=4)
    assert tok.backend_tokenizer.padding is not None  # left on
    assert tokenizer_tag(tok) == fresh


def test_plain_copy_leaves_the_tokenizer_as_it_was():
    tok = _word_level(['a', 'b'])
    copy = plain_copy(tok)
    assert copy.padding is None and copy.truncation is None
    assert tok.padding is not None and tok.truncation is not None


def test_an_object_without_serialisation_is_tagged_by_repr():
    class Splitter:
        def __repr__(self):
            return 'Splitter(lower=True)'

    assert tokenizer_tag(Splitter()) == tokenizer_tag(Splitter())
