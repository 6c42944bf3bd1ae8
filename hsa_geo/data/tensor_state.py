r"""What a cached derivation was made from, to tell when it is stale:
tensors by identity and version (inference tensors, which have none, by
their values), other values by equality; and the mode
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
    the version catches in-place changes. An inference tensor has no
    version: a copy of its values stands for it (one copy and one
    comparison per read, while inference mode lasts)."""
    if isinstance(value, Tensor):
        if value.is_inference():
            return value, _Values(value)
        return value, value._version
    return None, value


class _Values:
    r"""The values of an inference tensor, copied: inside
    :func:`torch.inference_mode` it can be changed in place, and nothing
    counts the changes."""
    __slots__ = ('values', )

    def __init__(self, tensor: Tensor):
        self.values = tensor.clone()

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _Values) and \
            self.values.shape == other.values.shape and \
            torch.equal(self.values, other.values)


def same_state(a: tuple, b: tuple) -> bool:
    r"""Whether two tuples of :func:`tensor_state` describe the same
    inputs."""
    return len(a) == len(b) and all(
        ta is tb and type(va) is type(vb) and va == vb
        for (ta, va), (tb, vb) in zip(a, b))
