r"""Running exact kernels in the dtype they chose, also under autocast."""
import contextlib
from typing import ContextManager

import torch


def autocast_off(device: torch.device) -> ContextManager:
    r"""Autocast disabled on :obj:`device` for the block. The attention
    functions compute in the dtype they document (float32, or float64 for
    float64 inputs); autocast would run some of their products in a lower
    precision and then mix dtypes in their in-place sums. Their results
    take the inputs' dtype, as autocast's own casts would."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
