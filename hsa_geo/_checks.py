r"""Argument checks shared by the whole package: one rule per kind of
argument, and one style of message (what is wrong, where, how to fix it).

A value of the wrong type raises :class:`TypeError`; a value of the right
type that is out of range raises :class:`ValueError`. Integers are
:class:`numbers.Integral` (Python and NumPy ints) but never :class:`bool`;
real numbers are :class:`numbers.Real` (not :class:`bool`) and never
:class:`~torch.Tensor`.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import is_sparse


def is_int(value: Any, low: int = 1) -> bool:
    r"""Whether :obj:`value` is an integer (not a ``bool``) of at least
    :obj:`low`."""
    return isinstance(value, numbers.Integral) and \
        not isinstance(value, bool) and value >= low


def check_int(value: Any, name: str, low: Optional[int] = 1,
              high: Optional[int] = None) -> int:
    r"""Returns :obj:`value` as an ``int`` after checking that it is an
    integer (:class:`TypeError` otherwise: ``True``, ``2.5`` and ``'3'`` are
    not) in ``[low, high]`` (:class:`ValueError` otherwise; :obj:`None`:
    unbounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"'{name}' must be an int, got {value!r} "
                        f"({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None
                                             and value > high):
        raise ValueError(f"'{name}' must be an int in {_interval(low, high)},"
                         f" got {value}")
    return value


def check_width(value: Any, name: str) -> int:
    r"""Returns :obj:`value`, a number of input features, after checking that
    it is a positive integer or ``-1`` (inferred from the first input, as
    PyG's lazy layers do)."""
    value = check_int(value, name, low=None)
    if value != -1 and value < 1:
        raise ValueError(f"'{name}' must be a positive int, or -1 to infer "
                         f"it from the first input, got {value}")
    return value


def check_num_workers(value: Any) -> int:
    r"""Returns :obj:`value` after checking that it is a number of worker
    processes: an integer of at least ``0`` (``0``: no workers, the work is
    done in this process)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"'num_workers' must be an int (0 to work in this "
                        f"process, or a number of worker processes), got "
                        f"{value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(
            f"'num_workers' must be 0 (work in this process) or a number of "
            f"worker processes, e.g. 2 or os.cpu_count(); got {value}")
    return int(value)


def check_float(value: Any, name: str, low: Optional[float] = None,
                high: Optional[float] = None, low_open: bool = False,
                high_open: bool = False) -> float:
    r"""Returns :obj:`value` as a finite ``float`` after checking that it is
    a real number (:class:`TypeError` otherwise, tensors and strings
    included) in the interval from :obj:`low` to :obj:`high`, each end open
    or closed (:class:`ValueError` otherwise, NaN and infinities
    included)."""
    if isinstance(value, (bool, Tensor)) or not isinstance(
            value, numbers.Real):
        raise TypeError(f"'{name}' must be a real number (a Python float), "
                        f"got {value!r} ({type(value).__name__})")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        # An unbounded end is open: infinities are refused.
        lo = '(' if low_open or low is None else '['
        hi = ')' if high_open or high is None else ']'
        span = f"{lo}{'-inf' if low is None else low}, " \
            f"{'inf' if high is None else high}{hi}"
        raise ValueError(f"'{name}' must be a finite number in {span}, got "
                         f"{value}")
    return value


def check_bool(value: Any, name: str) -> bool:
    r"""Returns :obj:`value` after checking that it is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"'{name}' must be True or False, got {value!r} "
                        f"({type(value).__name__})")
    return value


def check_flags(**flags: Any) -> None:
    r"""Checks that every keyword argument is a ``bool``, in the order
    given, so that the first wrong flag of a signature is the one named."""
    for name, value in flags.items():
        check_bool(value, name)


def check_index(value: Any, name: str, rows: Optional[int] = 2) -> Tensor:
    r"""Returns :obj:`value` as a ``long`` tensor after checking that it is
    an integer tensor (:class:`TypeError` otherwise; ``bool`` is not an
    integer index) of shape ``[rows, E]`` (``[E]`` for ``rows=None``;
    :class:`ValueError` otherwise)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be an integer tensor, got "
                        f"{type(value).__name__}")
    if value.layout != torch.strided:  # (its dtype is not the point)
        hint = ("; for an adjacency, pass its [2, E] edge list "
                "(torch_geometric.utils.to_edge_index), in the order of the "
                "edge features" if 'edge_index' in name else "")
        raise TypeError(f"'{name}' must be a dense integer tensor, got a "
                        f"sparse one ({value.layout}){hint}")
    if value.dtype == torch.bool or value.is_floating_point() or \
            value.is_complex():
        raise TypeError(
            f"'{name}' must have an integer dtype, got {value.dtype}; "
            f"convert it with '.long()' (after checking it holds whole "
            f"numbers)")
    if rows is None and value.dim() != 1:
        raise ValueError(f"'{name}' must be 1-D, got shape "
                         f"{tuple(value.shape)}")
    if rows is not None and (value.dim() != 2 or value.size(0) != rows):
        raise ValueError(f"'{name}' must have shape [{rows}, E], got "
                         f"{tuple(value.shape)}")
    return value.long()


def first_out_of_range(index: Tensor, bounds: Sequence[int]
                       ) -> Optional[Tuple[int, int]]:
    r"""``(row, column)`` of the first entry of ``index`` ``[R, E]`` outside
    ``0..bounds[row]-1``, or :obj:`None` if all are in range."""
    for row, size in enumerate(bounds):
        bad = (index[row] < 0) | (index[row] >= size)
        if bool(bad.any()):
            return row, int(bad.nonzero()[0])
    return None


def check_floating(value: Any, name: str) -> Tensor:
    r"""Checks that :obj:`value` is a dense floating point tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"'{name}' must be a floating point tensor, got "
                        f"{type(value).__name__}")
    if value.layout != torch.strided:  # (they fail deep inside otherwise)
        raise TypeError(f"'{name}' must be a dense floating point tensor, "
                        f"got a sparse one ({value.layout}); convert it "
                        f"with '.to_dense()'")
    if not value.is_floating_point():
        raise TypeError(f"'{name}' must be a floating point tensor, got "
                        f"dtype {value.dtype}; convert it with '.float()'")
    return value


def check_device(value: Tensor, name: str, device: torch.device,
                 other: str):
    r"""Checks that the tensor :obj:`value` lives on :obj:`device`, the
    device of :obj:`other`."""
    if value.device != device:
        raise ValueError(f"'{name}' is on {value.device} but {other} is on "
                         f"{device}; move it with '.to({str(device)!r})'")


def _interval(low: Optional[int], high: Optional[int]) -> str:
    if high is None:
        return f'[{low}, inf)' if low is not None else '(-inf, inf)'
    return f"[{'-inf' if low is None else low}, {high}]"


def check_heads(channels: Any, heads: Any) -> Tuple[int, int]:
    r"""``(channels, heads)`` as positive ints, ``heads`` dividing
    ``channels`` (each head gets ``channels // heads`` of them)."""
    channels = check_int(channels, 'channels')
    heads = check_int(heads, 'heads')
    if channels % heads != 0:
        raise ValueError(f"'heads' ({heads}) must divide 'channels' "
                         f"({channels}): each head gets channels // "
                         f"heads of them")
    return channels, heads


def check_dtype(value: Tensor, name: str, weight: Tensor, owner: str):
    r"""Checks that the tensor :obj:`value` has the dtype of :obj:`weight`,
    the weights of :obj:`owner`, unless autocast is on (its matrix products
    cast their inputs themselves)."""
    if value.dtype != weight.dtype and \
            not torch.is_autocast_enabled(value.device.type):
        raise TypeError(f"'{name}' has dtype {value.dtype} but {owner} "
                        f"{weight.dtype}; convert one with "
                        f"'.to({weight.dtype})' or '.to({value.dtype})'")


def check_features(value: Tensor, name: str, weight: Tensor, width: str,
                   row: str = 'leaf', rows: str = 'N'):
    r"""Checks that the 2-D tensor :obj:`value` ``[rows, F]`` fits the
    projection whose weight is :obj:`weight` ``[*, F]``: at least one
    feature per :obj:`row`, ``F`` features (the layer's argument
    :obj:`width`), its dtype and its device. A lazy weight
    (:class:`~torch.nn.parameter.UninitializedParameter`) takes any width
    and dtype."""
    if value.size(1) == 0:
        raise ValueError(f"'{name}' has 0 features per {row}; give each "
                         f"{row} at least one")
    lazy = isinstance(weight, torch.nn.parameter.UninitializedParameter)
    if not lazy and value.size(1) != weight.size(1):
        raise ValueError(f"'{name}' has {value.size(1)} features but the "
                         f"layer takes {weight.size(1)} ({width}); give "
                         f"{name} the shape [{rows}, {weight.size(1)}]")
    if not lazy:
        check_dtype(value, name, weight, "the layer's weights")
    check_device(value, name, weight.device, 'the layer')


def check_pair_bias(bias: Tensor, hierarchy: Any,
                    heads: torch.Size) -> Tensor:
    r"""Checks a pair bias for :obj:`hierarchy` (a
    :class:`~hsa_geo.data.Hierarchy`) and :obj:`heads` (the shape between
    the rows and the channels of ``q``: ``()`` or ``(H, )``) and returns it
    as ``[P, prod(heads)]``: :class:`TypeError` unless floating point,
    :class:`ValueError` unless ``[P, *heads]`` on the hierarchy's device
    with no NaN or ``+inf``."""
    num_pairs = hierarchy.num_sibling_pairs
    shape = (num_pairs, ) + tuple(heads)
    check_floating(bias, 'pair_bias')
    if tuple(bias.shape) != shape:
        raise ValueError(
            f"'pair_bias' must have shape {shape}: one row per sibling pair "
            f"of the hierarchy (hierarchy.sibling_pairs, P = {num_pairs})"
            f"{' and one column per head' if heads else ''}; got "
            f"{tuple(bias.shape)}")
    check_device(bias, 'pair_bias', hierarchy.device, 'the hierarchy')
    bad = torch.isnan(bias) | torch.isposinf(bias)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"'pair_bias' row {row} holds NaN or +inf; a bias must be finite "
            f"or -inf (-inf forbids the pair, like a missing family-graph "
            f"edge)")
    return bias.reshape(num_pairs, math.prod(heads))


def sparse_adjacency_key(data: Any) -> Optional[str]:
    r"""The key under which :obj:`data` (a PyG ``Data``) stores its edges
    as a sparse adjacency, if it does: a sparse tensor whose key holds
    ``'adj'``, as ``adj_t`` of
    :class:`~torch_geometric.transforms.ToSparseTensor` (sparse node
    features are not edges)."""
    for key, value in data.items():
        if 'adj' in key and is_sparse(value):
            return key
    return None
