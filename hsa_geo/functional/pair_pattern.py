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

import sys
import warnings
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from hsa_geo._permutation import inverse_permutation

# The devices whose sparse CSR kernels these products need (sampled_addmm
# and CSR @ dense); elsewhere the callers gather and scatter. ROCm builds
# call their GPUs 'cuda' too: left to the gathers there, untested.
DEVICES = ('cpu', ) + (('cuda', ) if torch.version.hip is None else ())
# Where CSR @ dense runs MKL's kernel (Linux builds with MKL), addmm with
# beta = 0 overwrites its output without reading it, so the products write
# into an empty table; elsewhere PyTorch's own fallback may scale what the
# output held (NaN or -inf from recycled memory would survive), and the
# products keep csr @ x. tests/functional/test_pair_pattern.py checks the
# property on the builds that use it.
EMPTY_OUTPUT = sys.platform.startswith('linux') and \
    torch.backends.mkl.is_available()
# Emitted once per process on the first CSR tensor; filtered once here,
# rather than around every call (a global, thread-unsafe switch).
warnings.filterwarnings('ignore', '.*Sparse CSR tensor support is in beta.*')


class PairPattern(NamedTuple):
    r"""A list of pairs ``(src, dst)`` between :math:`K` members, repeated
    for every head, as one :math:`KH \times KH` CSR pattern whose row and
    column ``a H + h`` are member ``a``'s head ``h``: the dense operands
    are the ``[K, H, D]`` member tables as they are (``[K * H, D]`` rows,
    no transposition). Values are head-major ``[H * P]`` (pair ``p`` of
    head ``h`` at ``h P + p``) in and out, for the pattern and its
    transpose alike; the CSR orders them by member, then head, then pair.

    Attributes:
        crow, col (IntTensor or LongTensor): the CSR pattern (pairs sorted
            by ``src``, then ``dst``; 32-bit where the sizes allow).
        order (LongTensor): ``[H * P]`` for every CSR entry, its head-major
            value.
        inverse (LongTensor): for every head-major value, its CSR entry.
        pairs_of (LongTensor): ``[K]`` the number of pairs of every member
            (as ``src``).
        t_crow, t_col, t_order, t_inverse, t_pairs_of: the same of the
            transposed pattern (pairs sorted by ``dst``, then ``src``), of
            the same head-major values: a transposed product permutes them
            once.
        size (int): :math:`KH`.
    """
    crow: Tensor
    col: Tensor
    order: Tensor
    inverse: Tensor
    pairs_of: Tensor
    t_crow: Tensor
    t_col: Tensor
    t_order: Tensor
    t_inverse: Tensor
    t_pairs_of: Tensor
    size: int

    @staticmethod
    def build(src: Tensor, dst: Tensor, transpose: Tensor, members: int,
              heads: int) -> 'PairPattern':
        r"""The pattern of pairs ``(src, dst)`` sorted by ``src`` then
        ``dst``, given ``transpose``, their order sorted by ``dst`` then
        ``src``, for :obj:`heads` heads of :obj:`members` rows each."""
        pairs, size = src.numel(), heads * members
        # 32-bit indices where they fit: the CPU kernels (MKL) convert
        # 64-bit ones on every call.
        index = torch.int32 if max(pairs * heads, size) < 2**31 \
            else torch.long
        ahead = _csr(src, dst, members, heads, index)
        t_src, t_dst = dst.index_select(0, transpose), \
            src.index_select(0, transpose)
        if torch.equal(t_src, src) and torch.equal(t_dst, dst):
            # A symmetric list (families without a family graph): the
            # transposed pattern is the same, not built twice.
            t_crow, t_col, t_order, _, t_pairs_of = ahead
        else:
            t_crow, t_col, t_order, _, t_pairs_of = _csr(
                t_src, t_dst, members, heads, index)
        # Transposed entry -> its head-major value there -> the value here.
        t_order = _per_head(transpose, pairs, heads).index_select(0, t_order)
        return PairPattern(*ahead, t_crow, t_col, t_order,
                           inverse_permutation(t_order), t_pairs_of, size)

    def t(self) -> 'PairPattern':
        r"""The transposed pattern (of the same values)."""
        return PairPattern(self.t_crow, self.t_col, self.t_order,
                           self.t_inverse, self.t_pairs_of,
                           self.crow, self.col, self.order, self.inverse,
                           self.pairs_of, self.size)

    def matrix(self, values: Tensor) -> Tensor:
        r"""The sparse CSR matrix of head-major :obj:`values` ``[H * P]``."""
        return self.csr(values.index_select(0, self.order))

    def csr(self, entries: Tensor) -> Tensor:
        r"""The sparse CSR matrix of :obj:`entries` ``[H * P]`` given in
        the order of the CSR entries."""
        return torch.sparse_csr_tensor(self.crow, self.col, entries,
                                       (self.size, self.size),
                                       check_invariants=False)

    def sampled_dot(self, a: Tensor, b: Tensor) -> Tensor:
        r"""``[H * P]`` :math:`\langle a_{src}, b_{dst} \rangle` per pair
        and head, from the member tables ``a, b`` ``[K, H, D]`` (or their
        ``[K * H, D]`` rows)."""
        return _SampledDot.apply(self, a, b)

    def matmul(self, values: Tensor, x: Tensor) -> Tensor:
        r""":math:`\sum_{dst} \text{values} \cdot x_{dst}` per ``src`` and
        head, of the shape of ``x`` ``[K, H, D]`` (or ``[K * H, D]``),
        from head-major ``values`` ``[H * P]``."""
        return _PatternMatmul.apply(self, values, x).view(x.shape)


def _rows(x: Tensor) -> Tensor:
    r"""``[K, H, D]`` as the ``[K * H, D]`` rows of the pattern (a view if
    it is contiguous)."""
    return x.reshape(-1, x.size(-1))


def _csr(src: Tensor, dst: Tensor, members: int, heads: int,
         index: torch.dtype) -> Tuple[Tensor, ...]:
    r"""``crow, col, order, inverse, pairs_of`` of the pairs ``(src,
    dst)`` (sorted by ``src``) on rows and columns ``member * heads +
    head``."""
    count = torch.bincount(src, minlength=members)
    start = torch.cumsum(count, 0) - count  # the first pair of every src
    pairs = src.numel()
    head = torch.arange(heads, device=src.device).unsqueeze(1)
    # Entry of pair p, head h: past the H * start[src] entries of the
    # members before, the h * count[src] of the heads before, and the
    # p - start[src] pairs of src before p: h * count[src] + p +
    # (H - 1) * start[src]. (index_select, not [src]: several times
    # faster on the CPU, and this runs on every new batch; as few [H * P]
    # tensors as can be, each of them fresh memory to fault in.)
    start_src = start.index_select(0, src)
    entry = (head * count.index_select(0, src)).add_(
        torch.arange(pairs, device=src.device) + (heads - 1) * start_src)
    inverse = entry.view(-1)  # head-major value -> CSR entry
    order = inverse_permutation(inverse)
    col = (dst.to(index) * heads + head.to(index)).view(-1)
    row_start = heads * start + head * count  # [H, K]: rows h, a
    crow = torch.cat([row_start.t().reshape(-1),
                      row_start.new_full((1, ), heads * pairs)])
    return crow.to(index), col.index_select(0, order), order, inverse, count


def _per_head(x: Tensor, step: int, heads: int) -> Tensor:
    r""":obj:`x` once per head, shifted by :obj:`step` per head."""
    shift = torch.arange(heads, device=x.device) * step
    return (x.unsqueeze(0) + shift.unsqueeze(1)).view(-1)


class _SampledDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: PairPattern, a: Tensor, b: Tensor) -> Tensor:
        ctx.pattern = pattern
        # The inputs themselves: rows made here would have no gradient
        # path for a second derivative.
        ctx.save_for_backward(a, b)
        zeros = pattern.csr(a.new_zeros(pattern.col.numel()))
        dots = torch.sparse.sampled_addmm(zeros, _rows(a),
                                          _rows(b).t(), beta=0.0).values()
        return dots.index_select(0, pattern.inverse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pattern, (a, b) = ctx.pattern, ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_a = pattern.matmul(grad, b).view(a.shape)
        if ctx.needs_input_grad[2]:
            grad_b = pattern.t().matmul(grad, a).view(b.shape)
        return None, grad_a, grad_b


class _PatternMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pattern: PairPattern, values: Tensor,
                x: Tensor) -> Tensor:
        ctx.pattern = pattern
        ctx.save_for_backward(values, x)
        return _spmm(pattern.matrix(values), _rows(x))

    @staticmethod
    def backward(ctx, grad: Tensor):
        pattern, (values, x) = ctx.pattern, ctx.saved_tensors
        grad = grad.contiguous()
        grad_values: Optional[Tensor] = None
        grad_x: Optional[Tensor] = None
        if ctx.needs_input_grad[1]:
            grad_values = pattern.sampled_dot(grad, x)
        if ctx.needs_input_grad[2]:
            grad_x = pattern.t().matmul(values, grad).view(x.shape)
        return None, grad_values, grad_x


def _spmm(matrix: Tensor, x: Tensor) -> Tensor:
    r"""``matrix @ x`` for a CSR :obj:`matrix` and ``[KH, D]`` rows."""
    if x.device.type != 'cpu':
        return matrix @ x
    if x.size(1) >= 64:
        # PyTorch's own CPU kernel writes its output once, where MKL's
        # (behind @) writes a second one and copies it: 1.2-4x faster on
        # rows of 64 channels and more, slower on narrower ones.
        return torch.sparse.mm(matrix, x, 'sum')
    if not EMPTY_OUTPUT:
        return matrix @ x
    # With MKL, matrix @ x fills a zero table, copies it into its output
    # and then overwrites it; addmm with beta = 0 writes the output once.
    out = x.new_empty(matrix.size(0), x.size(1))
    return torch.addmm(out, matrix, x, beta=0.0, out=out)
