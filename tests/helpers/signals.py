r"""Comparing nested signals attribute by attribute."""
import torch
from torch import Tensor

from hsa_geo.data import NestedSignal


def assert_same_signal(a: NestedSignal, b: NestedSignal):
    r"""Same attributes (tensors of the same dtype, shape and values) and
    the same tree."""
    assert type(a) is type(b)
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        if isinstance(a[key], Tensor):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key
    assert torch.equal(a.hierarchy.parent, b.hierarchy.parent)
