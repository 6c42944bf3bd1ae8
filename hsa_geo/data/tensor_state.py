r"""What a cached derivation was made from, to tell when it is stale:
tensors by identity and version, other values by equality; and the mode
in which tensors that outlive the call are made."""
import contextlib
from typing import Any, Iterator, Tuple

import torch
from torch import Tensor


@contextlib.contextmanager
def cache_mode() -> Iterator[None]:
    r"""Makes tensors that outlive the call (caches, derived index data) as
    normal tensors without autograd history, even inside
    :func:`torch.inference_mode`: an inference tensor can never be saved for
    a backward, so a cache filled during an evaluation would break the
    training after it."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def tensor_state(value: Any) -> Tuple[Any, Any]:
    r"""``(tensor, version)`` for a tensor, ``(None, value)`` otherwise. A
    cache that keeps the state keeps the tensor, so its id is not reused;
    the version catches in-place changes."""
    if isinstance(value, Tensor):
        # Inference tensors have no version counter: they cannot be
        # changed in place outside inference mode anyway.
        return value, None if value.is_inference() else value._version
    return None, value


def same_state(a: tuple, b: tuple) -> bool:
    r"""Whether two tuples of :func:`tensor_state` describe the same
    inputs."""
    return len(a) == len(b) and all(
        ta is tb and type(va) is type(vb) and va == vb
        for (ta, va), (tb, vb) in zip(a, b))
