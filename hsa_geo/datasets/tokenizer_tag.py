r"""A short name for a tokenizer in the processed file names of datasets."""
import hashlib
from typing import Any


def tokenizer_tag(tokenizer: Any) -> str:
    r"""``'tokenizer-<hash>'``: the first 12 hex digits of the SHA-1 of the
    serialised HuggingFace tokenizer as it encodes, without its padding and
    truncation settings (``backend_tokenizer.to_str()``, or ``to_str()`` of a
    :mod:`tokenizers` tokenizer, of :func:`plain_copy`; ``repr``
    otherwise), so that datasets processed with different tokenizers keep
    apart and one tokenizer keeps its tag however it has been called.

    Examples:
        >>> from tokenizers import Tokenizer, models
        >>> tokenizer_tag(Tokenizer(models.WordLevel({'a': 0}, 'a')))[:10]
        'tokenizer-'
    """
    backend = getattr(tokenizer, 'backend_tokenizer', tokenizer)
    # The whole serialised tokenizer, not its name: two tokenizers of one
    # name but different vocabularies must not share files.
    if not hasattr(backend, 'to_str'):
        return _tag(repr(tokenizer))
    if hasattr(type(backend), 'from_str'):
        # transformers switches the truncation off on the first call and a
        # padded call leaves padding on: neither may change the tag.
        backend = plain_copy(backend)
    return _tag(backend.to_str())


def plain_copy(tokenizer: Any) -> Any:
    r"""A copy of a :class:`tokenizers.Tokenizer` without padding and
    truncation (the caller's tokenizer is left as it is)."""
    copy = type(tokenizer).from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def _tag(text: str) -> str:
    return 'tokenizer-' + hashlib.sha1(text.encode()).hexdigest()[:12]
