import pytest

from hsa_geo.datasets import tokenizer_tag
from hsa_geo.datasets.tokenizer_tag import plain_copy
from tests.helpers.huggingface import word_level_tokenizer as word_level


def test_the_vocabulary_makes_the_tag():
    a, b = word_level(['a', 'b'], True), word_level(['b', 'a'], True)
    assert tokenizer_tag(a) != tokenizer_tag(b)
    assert tokenizer_tag(a).startswith('tokenizer-')
    # Padding and truncation change no ids of a document.
    assert tokenizer_tag(a) == tokenizer_tag(word_level(['a', 'b']))


def test_a_transformers_tokenizer_keeps_its_tag_once_called():
    transformers = pytest.importorskip('transformers')
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level(['a', 'b'], True), pad_token='[UNK]')
    fresh = tokenizer_tag(tok)
    tok('a b')  # switches the truncation of the backend off
    assert tokenizer_tag(tok) == fresh
    tok(['a', 'a b'], padding=True, truncation=True, max_length=4)
    assert tok.backend_tokenizer.padding is not None  # left on
    assert tokenizer_tag(tok) == fresh


def test_plain_copy_leaves_the_tokenizer_as_it_was():
    tok = word_level(['a', 'b'], True)
    copy = plain_copy(tok)
    assert copy.padding is None and copy.truncation is None
    assert tok.padding is not None and tok.truncation is not None


def test_an_object_without_serialisation_is_tagged_by_repr():
    class Splitter:
        def __repr__(self):
            return 'Splitter(lower=True)'

    assert tokenizer_tag(Splitter()) == tokenizer_tag(Splitter())
