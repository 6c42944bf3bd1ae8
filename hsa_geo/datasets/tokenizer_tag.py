r"""A short name for a tokenizer in the processed file names of datasets."""
import hashlib
from typing import Any


def tokenizer_tag(tokenizer: Any) -> str:
    r"""``'tokenizer-<hash>'``: the first 12 hex digits of the SHA-1 of the
    serialised HuggingFace tokenizer (``backend_tokenizer.to_str()``, or
    ``to_str()`` of a :mod:`tokenizers` tokenizer; ``repr`` otherwise), so
    that datasets processed with different tokenizers keep apart.

    Examples:
        >>> from tokenizers import Tokenizer, models
        >>> tokenizer_tag(Tokenizer(models.WordLevel({'a': 0}, 'a')))[:10]
        'tokenizer-'
    """
    backend = getattr(tokenizer, 'backend_tokenizer', tokenizer)
    # The whole serialised tokenizer, not its name: two tokenizers of one
    # name but different vocabularies must not share files.
    text = backend.to_str() if hasattr(backend, 'to_str') else \
        repr(tokenizer)
    return 'tokenizer-' + hashlib.sha1(text.encode()).hexdigest()[:12]
