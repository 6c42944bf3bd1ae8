r"""What a cached derivation was made from, to tell when it is stale:
tensors by identity and version, other values by equality."""
from typing import Any, Tuple

from torch import Tensor


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
