r"""The two products of attention on a list of pairs, as sparse matrix
kernels: the scores of the listed pairs (a sampled dense-dense product,
SDDMM) and the weighted sums over them (a sparse-dense product, SpMM).

On a list of :math:`P` pairs, gathering the ``[P, H, D]`` rows of both ends
and scattering them back moves :math:`P H D` numbers through memory several
times per pass, forward and backward; these kernels read the ``[K, H, D]``
tables in place and write ``[P, H]`` or ``[K, H, D]`` only (3-17x less
time on a batch of molecules, one CPU thread). Each backward is the other
product, so the gradients are differentiable to any order."""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import torch
from torch import Tensor

# The devices whose sparse CSR kernels these products need (sampled_addmm
# and CSR @ dense); elsewhere the callers gather and scatter. ROCm builds
# call their GPUs 'cuda' too: left to the gathers there, untested.
DEVICES = ('cpu', ) + (('cuda', ) if torch.version.hip is None else ())
# Emitted once per process on the first CSR tensor; filtered once here,
# rather than around every call (a global, thread-unsafe switch).
warnings.filterwarnings('ignore', '.*Sparse CSR tensor support is in beta.*')


class PairPattern(NamedTuple):
    r"""A list of pairs ``(src, dst)`` between :math:`K` members, repeated
    for every head as the blocks of one block-diagonal
    :math:`HK \times HK` CSR pattern; values are head-major ``[H * P]``.

    Attributes:
        crow, col (IntTensor or LongTensor): the CSR pattern (pairs sorted
            by ``src``, then ``dst``; 32-bit where the sizes allow).
        to_transpose (LongTensor): ``[H * P]`` for every entry of the
            transposed pattern, its entry here.
        from_transpose (LongTensor): the inverse permutation.
        t_crow, t_col (IntTensor or LongTensor): the transposed pattern.
        size (int): :math:`HK`.
    """
    crow: Tensor
    col: Tensor
    to_transpose: Tensor
    from_transpose: Tensor
    t_crow: Tensor
    t_col: Tensor
    size: int

    @staticmethod
    def build(src: Tensor, dst: Tensor, transpose: Tensor, members: int,
              heads: int) -> 'PairPattern':
        r"""The pattern of pairs ``(src, dst)`` sorted by ``src`` then
        ``dst``, given ``transpose``, their order sorted by ``dst`` then
        ``src``, for :obj:`heads` heads of :obj:`members` rows each."""
        inverse = torch.empty_like(transpose)
        inverse[transpose] = torch.arange(transpose.numel(),
                                          device=src.device)
        pairs, size = src.numel(), heads * members
        # 32-bit indices where they fit: the CPU kernels (MKL) convert
        # 64-bit ones on every call.
        index = torch.int32 if max(pairs * heads, size) < 2**31 \
            else torch.long
        crow, t_crow = (_per_head(_crow(x, members)[:-1], pairs, heads,
                                  pairs * heads).to(index)
                        for x in (src, dst[transpose]))
        return PairPattern(
            crow, _per_head(dst, members, heads).to(index),
            _per_head(transpose, pairs, heads),
            _per_head(inverse, pairs, heads), t_crow,
            _per_head(src[transpose], members, heads).to(index), size)

    def t(self) -> 'PairPattern':
        r"""The transposed pattern."""
        return PairPattern(self.t_crow, self.t_col, self.from_transpose,
                           self.to_transpose, self.crow, self.col, self.size)

    def matrix(self, values: Tensor) -> Tensor:
        r"""The sparse CSR matrix of :obj:`values` ``[H * P]``."""
        return torch.sparse_csr_tensor(self.crow, self.col, values,
                                       (self.size, self.size),
                                       check_invariants=False)

    def sampled_dot(self, a: Tensor, b: Tensor) -> Tensor:
        r"""``[H * P]`` :math:`\langle a_{src}, b_{dst} \rangle` per entry,
        from ``a, b`` ``[HK, D]``."""
        return _SampledDot.apply(self, a, b)

    def matmul(self, values: Tensor, x: Tensor) -> Tensor:
        r"""``[HK, D]`` :math:`\sum_{dst} \text{values} \cdot x_{dst}` per
        ``src``, from ``values`` ``[H * P]`` and ``x`` ``[HK, D]``."""
        return _PatternMatmul.apply(self, values, x)


def _crow(rows: Tensor, size: int) -> Tensor:
    r"""The CSR row pointers of sorted row indices."""
    count = torch.bincount(rows, minlength=size)
    return torch.cat([count.new_zeros(1), count.cumsum(0)])


def _per_head(x: Tensor, step: int, heads: int,
              end: Optional[int] = None) -> Tensor:
    r""":obj:`x` once per head, shifted by :obj:`step` per head (then
    :obj:`end` appended, to close row pointers)."""
    shift = torch.arange(heads, device=x.device) * step
    out = (x.unsqueeze(0) + shift.unsqueeze(1)).view(-1)
    return out if end is None else torch.cat([out, out.new_full((1, ), end)])


class _SampledDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: PairPattern, a: Tensor, b: Tensor) -> Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(a, b)
        zeros = a.new_zeros(pattern.col.numel())
        return torch.sparse.sampled_addmm(pattern.matrix(zeros), a, b.t(),
                                          beta=0.0).values()

    @staticmethod
    def backward(ctx, grad: Tensor):
        pattern, (a, b) = ctx.pattern, ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_a = pattern.matmul(grad, b)
        if ctx.needs_input_grad[2]:
            grad_b = pattern.t().matmul(
                grad.index_select(0, pattern.to_transpose), a)
        return None, grad_a, grad_b


class _PatternMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: PairPattern, values: Tensor,
                x: Tensor) -> Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(values, x)
        return pattern.matrix(values) @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        pattern, (values, x) = ctx.pattern, ctx.saved_tensors
        grad = grad.contiguous()
        grad_values: Optional[Tensor] = None
        grad_x: Optional[Tensor] = None
        if ctx.needs_input_grad[1]:
            grad_values = pattern.sampled_dot(grad, x)
        if ctx.needs_input_grad[2]:
            grad_x = pattern.t().matmul(
                values.index_select(0, pattern.to_transpose), grad)
        return None, grad_values, grad_x
