r"""Differentiable backwards of hand-written autograd functions."""
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


def replayed_backward(plain: Callable, args: Sequence, needs: Sequence[bool],
                      grads: Sequence[Optional[Tensor]]) -> tuple:
    r"""The backward of a hand-written autograd function when autograd
    records it for a higher derivative (``create_graph=True``): the
    function's :obj:`plain` form, the same map in differentiable torch
    operations, is replayed on :obj:`args` and differentiated by autograd,
    so that the gradient is itself differentiable. The hand-written
    backwards (in place, through staging buffers) run otherwise.

    :obj:`needs` flags the arguments to differentiate (``needs_input_grad``).
    Each is replaced by an alias (``view_as``): the gradient is the partial
    derivative in that argument, not a total derivative through the others
    (the saved scores and their logsumexp depend on each other), while the
    alias keeps the result attached to the graph. A flagged argument that
    does not require grad (the unsaved input of a linear map, passed as a
    zero stand-in) is made to."""
    with torch.enable_grad():
        args = [(a.view_as(a) if a.requires_grad else
                 a.detach().requires_grad_()) if n else a
                for a, n in zip(args, needs)]
        outs = plain(*args)
        outs = outs if isinstance(outs, tuple) else (outs, )
        pairs = [(o, g) for o, g in zip(outs, grads)
                 if g is not None and o.requires_grad]
        wrt = [a for a, n in zip(args, needs) if n]
        if not pairs or not wrt:
            return (None, ) * len(args)
        got = iter(torch.autograd.grad(
            [o for o, _ in pairs], wrt, [g for _, g in pairs],
            create_graph=True, allow_unused=True))
        return tuple(next(got) if n else None for n in needs)
