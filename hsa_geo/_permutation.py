r"""Inverting a permutation, as the hierarchy's layout and the pair kernels
do on every new batch."""
import torch
from torch import Tensor


def inverse_permutation(permutation: Tensor) -> Tensor:
    r"""The inverse of :obj:`permutation`, a 1-D ``LongTensor`` holding
    every index ``0..n-1`` once: ``out[permutation[i]] = i``. A scatter,
    several times faster on the CPU than assigning through
    ``out[permutation]``; on anything but a permutation, some entries are
    left unset."""
    return torch.empty_like(permutation).scatter_(
        0, permutation, torch.arange(permutation.numel(),
                                     device=permutation.device))
