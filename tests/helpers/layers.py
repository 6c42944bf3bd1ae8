r"""Shared helpers of the layer tests: a small irregular hierarchy, seeded
inputs, and :func:`linear` and :func:`queries_keys_values`, projections
from a layer's weights alone."""
import torch
from hypothesis import strategies as st

from hsa_geo import Hierarchy
from tests.helpers.strategies import Forest

SEEDS = st.integers(0, 2**31 - 1)
EXACT = 1e-10


def build(f: Forest) -> Hierarchy:
    return Hierarchy.from_parent(f.parent, f.num_leaves)


#          9              leaves 0..6; family 7 of leaves, family 8 with a
#       /  |  \           single child, family 9 mixing leaves and clusters;
#      7   8   6          leaf 5 is a tree of its own.
#    / | \  \
#   0  1  2  3,4 (under 8: node 8 has children 3 and 4)
PARENT = [7, 7, 7, 8, 8, -1, 9, 9, 9, -1]
NUM_LEAVES = 7


def example_hierarchy() -> Hierarchy:
    return Hierarchy.from_parent(PARENT, NUM_LEAVES)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype,
                       generator=torch.Generator().manual_seed(seed))


def linear(lin, x):
    r"""``lin(x)`` from the weights alone."""
    out = x @ lin.weight.t()
    return out if lin.bias is None else out + lin.bias


def queries_keys_values(conv, x):
    r"""``q, k, v`` ``[N, H, C]`` of an :class:`~hsa_geo.nn.HSAConv` from
    its weights alone."""
    shape = (x.size(0), conv.heads, conv.out_channels)
    return tuple(linear(lin, x).view(shape)
                 for lin in (conv.lin_query, conv.lin_key, conv.lin_value))


def state_of(module) -> dict:
    r"""A copy of a module's state."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
