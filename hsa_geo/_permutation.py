r"""Inverting a permutation, as the hierarchy's layout and the pair kernels
do on every new batch."""
import torch
from torch import Tensor


def inverse_permutation(permutation: Tensor) -> Tensor:
    r"""The inverse of the 1-D :obj:`permutation`: ``out[permutation[i]] =
    i``, where every element lies in it. A scatter: several times faster on
    the CPU than assigning through ``out[permutation]``."""
    return torch.empty_like(permutation).scatter_(
        0, permutation, torch.arange(permutation.numel(),
                                     device=permutation.device))
