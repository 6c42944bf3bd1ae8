r"""The pair list's family attention (docs/math.md, 6.5) in fused CPU
kernels: the scores of every member's pairs with their logsumexp, and the
contexts, each one compiled pass over the list (``hsa_geo/csrc``) instead of
a dozen tensor operations and two sparse products, forward and backward.

The kernels are built with the package where a C++ compiler is found
(``setup.py``); without them, with ``HSA_GEO_FUSED_PAIRS=0`` in the
environment, inside ``fused_pairs(False)``, for tensors they do not take
(not on the CPU, not float32 or float64), or for lists longer than
:data:`FUSED_PAIRS_LIMIT`, :func:`fused_pairs_apply` says so
and the attention runs the same arithmetic as PyTorch operations
(:mod:`~hsa_geo.functional.sparse_family_attention`). Their results agree
to rounding; higher derivatives replay those operations
(:func:`~hsa_geo.functional.replayed_backward.replayed_backward`)."""
import contextlib
import importlib
import os
import weakref
from types import ModuleType
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from hsa_geo.data.sparse_families import SparseFamilies
from hsa_geo.data.tensor_state import cache_mode
from hsa_geo.functional.replayed_backward import replayed_backward
from hsa_geo.functional.sparse_family_attention import (scatter_logsumexp,
                                                        sparse_contexts,
                                                        sparse_scores)

# The builds of hsa_geo/csrc/pair_kernels.cpp (setup.py), by variant.
_MODULES = {'avx2': 'hsa_geo._pair_kernels_avx2',
            'baseline': 'hsa_geo._pair_kernels'}
_DTYPES = (torch.float32, torch.float64)
# The longest lists the attention runs on the kernels, in products
# P' * H * D per pass. The kernels win where a call's fixed cost or rows of
# one or two pairs dominate (128 molecules, 0.94 million products; deep
# trees up to 7.7 million) and tie or lose to PyTorch's sparse products on
# family graphs (1.31-1.37x slower at 9.0 million, on one thread or two;
# benchmarks/bench_pair_kernels.py). The limit lies between the two.
FUSED_PAIRS_LIMIT = 2**23


def _built() -> Dict[str, ModuleType]:
    built = {}
    for variant, name in _MODULES.items():
        try:
            built[variant] = importlib.import_module(name)
        except ImportError:  # not built here (no compiler, another CPU)
            pass
    return built


def _default(built: Dict[str, ModuleType]) -> Optional[str]:
    # PyTorch's own view of the CPU (ATEN_CPU_CAPABILITY lowers it).
    capability = torch.backends.cpu.get_cpu_capability()
    if 'avx2' in built and capability in ('AVX2', 'AVX512'):
        return 'avx2'
    return 'baseline' if 'baseline' in built else None


_BUILT = _built()
# HSA_GEO_FUSED_PAIRS=0 in the environment starts a process without them
# (fused_pairs(True) still turns them on).
_OFF = os.environ.get('HSA_GEO_FUSED_PAIRS', '1').strip().lower() in (
    '0', 'off', 'false', 'no')
_state = {'variant': None if _OFF else _default(_BUILT),
          'limit': FUSED_PAIRS_LIMIT}


def fused_pairs_variants() -> List[str]:
    r"""The builds of the fused kernels this install has and this CPU
    runs: ``'avx2'`` (x86-64 with AVX2 and FMA) and ``'baseline'``; empty
    where none was built (no C++ compiler at install time)."""
    default = _default(_BUILT)
    return [v for v in _BUILT if v == 'baseline' or v == default]


def fused_pairs_variant() -> Optional[str]:
    r"""The build of the fused kernels in use: ``'avx2'``, ``'baseline'``,
    or :obj:`None` (PyTorch operations)."""
    return _state['variant']


def fused_pairs_threaded() -> bool:
    r"""Whether the kernels in use split a list's rows among PyTorch's
    intra-op threads (built with OpenMP: with GCC, whose ``libgomp`` is
    PyTorch's own); :obj:`False` for single-threaded builds and where the
    PyTorch operations run."""
    variant = _state['variant']
    return variant is not None and bool(getattr(_BUILT[variant], 'openmp',
                                                0))


@contextlib.contextmanager
def fused_pairs(enabled: bool, variant: Optional[str] = None,
                max_products: Optional[int] = None) -> Iterator[None]:
    r"""Within the block, the pair list runs on the fused kernels if
    :obj:`enabled` (in :obj:`variant`, one of
    :func:`fused_pairs_variants`; by default the fastest this CPU runs),
    for lists of at most :obj:`max_products` products (by default
    :data:`FUSED_PAIRS_LIMIT`), and on PyTorch operations otherwise; for
    comparisons of the two. A process-wide switch, not thread-local.

    .. code-block:: python

        with fused_pairs(False):
            out = hierarchical_attention(q, k, v, hierarchy)
    """
    if variant is not None and variant not in fused_pairs_variants():
        raise ValueError(
            f"fused_pairs: variant {variant!r} is not available here; "
            f"this install and CPU have {fused_pairs_variants()} (an empty "
            f"list: the package was installed without a C++ compiler)")
    if max_products is not None and (isinstance(max_products, bool) or
                                     not isinstance(max_products, int) or
                                     max_products < 0):
        raise ValueError(
            f"fused_pairs: max_products must be a non-negative int (pairs "
            f"x heads x channels per head), got {max_products!r}")
    before = dict(_state)
    _state['variant'] = (variant or _default(_BUILT)) if enabled else None
    if max_products is not None:
        _state['limit'] = max_products
    try:
        yield
    finally:
        _state.update(before)


def fused_pairs_apply(*tensors: Tensor, products: int = 0) -> bool:
    r"""Whether the fused kernels run on :obj:`tensors`: built, enabled,
    all of them on the CPU in one dtype, float32 or float64, and a list of
    at most :data:`FUSED_PAIRS_LIMIT` :obj:`products` (pairs x heads x
    channels per head; :func:`fused_pairs` may set another limit)."""
    if _state['variant'] is None or products > _state['limit']:
        return False
    dtype = tensors[0].dtype
    return dtype in _DTYPES and all(
        t.device.type == 'cpu' and t.dtype == dtype for t in tensors)


def _kernels() -> ModuleType:
    return _BUILT[_state['variant']]


class _Index(NamedTuple):
    r"""A pair list's indices as the kernels read them (int64, contiguous):
    ``rowptr`` ``[K + 1]`` of the pairs by ``src``, ``trowptr`` by ``dst``,
    ``tperm`` the pairs in the order of ``dst``."""
    rowptr: Tensor
    src: Tensor
    dst: Tensor
    trowptr: Tensor
    tperm: Tensor

    def args(self, heads: int) -> tuple:
        # The rows are split among PyTorch's intra-op threads of the call.
        return (self.rowptr.numel() - 1, self.src.numel(), heads,
                torch.get_num_threads(),
                self.rowptr.data_ptr(), self.src.data_ptr(),
                self.dst.data_ptr(), self.trowptr.data_ptr(),
                self.tperm.data_ptr())


_INDEX: 'weakref.WeakKeyDictionary[SparseFamilies, _Index]' = \
    weakref.WeakKeyDictionary()


def _index(families: SparseFamilies) -> _Index:
    if families not in _INDEX:
        with cache_mode():  # outlives the call
            K = families.num_members

            def rowptr(ids: Tensor) -> Tensor:
                counts = torch.bincount(ids, minlength=K)
                return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

            def dense(ids: Tensor) -> Tensor:  # what the kernels read
                return ids.to(torch.long).contiguous()
            _INDEX[families] = _Index(
                rowptr(families.src), dense(families.src),
                dense(families.dst), rowptr(families.dst),
                dense(families.transpose))
    return _INDEX[families]


def _addresses(*tensors: Optional[Tensor]) -> Tuple[int, ...]:
    r"""The data addresses of contiguous tensors (0 for :obj:`None`),
    which the caller keeps alive until the kernel returns."""
    assert all(x is None or x.is_contiguous() for x in tensors)
    return tuple(0 if x is None else x.data_ptr() for x in tensors)


def _dense(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


class _ScoresLse(torch.autograd.Function):
    r"""``(s [P', H], lse [K, H])``: the scores of the pairs and their
    logsumexp per member, as :func:`sparse_scores` and
    :func:`scatter_logsumexp` compute them."""

    @staticmethod
    def forward(ctx, families: SparseFamilies, q: Tensor, k: Tensor,
                log_size: Tensor, bias: Optional[Tensor], scale: float,
                fill: float) -> Tuple[Tensor, Tensor]:
        q, k, log_size, bias = map(_dense, (q, k, log_size, bias))
        K, H, D = q.shape
        index = _index(families)
        s, prob = q.new_empty(2, families.num_pairs, H).unbind()
        lse = q.new_empty(K, H)
        ctx.kernels = _kernels()  # the backward's, whatever the switch then
        ctx.kernels.scores_lse(
            index.args(H), q.dtype == torch.float64, D, scale, fill,
            _addresses(q, k, log_size, bias, s, lse, prob))
        ctx.save_for_backward(q, k, log_size, bias, prob)
        ctx.families, ctx.scale, ctx.fill = families, scale, fill
        return s, lse

    @staticmethod
    def plain(families: SparseFamilies, q: Tensor, k: Tensor,
              log_size: Tensor, bias: Optional[Tensor], scale: float,
              fill: float) -> Tuple[Tensor, Tensor]:
        s = sparse_scores(families, q, k, log_size, scale, bias)
        return s, scatter_logsumexp(s, families.src, families.num_members,
                                    fill)

    @staticmethod
    def backward(ctx, grad_s: Optional[Tensor], grad_lse: Optional[Tensor]):
        q, k, log_size, bias, prob = ctx.saved_tensors
        if torch.is_grad_enabled():  # a higher derivative follows
            return replayed_backward(
                _ScoresLse.plain, (ctx.families, q, k, log_size, bias,
                                   ctx.scale, ctx.fill),
                ctx.needs_input_grad, (grad_s, grad_lse))
        need = ctx.needs_input_grad
        gs = torch.empty_like(prob)
        grad_q = torch.empty_like(q) if need[1] else None
        grad_k = torch.empty_like(k) if need[2] else None
        grad_log_size = torch.empty_like(log_size) if need[3] else None
        # Dense copies held by names: an address outlives no temporary.
        grad_s, grad_lse = _dense(grad_s), _dense(grad_lse)
        ctx.kernels.scores_lse_backward(
            _index(ctx.families).args(q.size(1)), q.dtype == torch.float64,
            q.size(2), ctx.scale, 0.0, _addresses(
                q, k, prob, grad_s, grad_lse, gs, grad_q, grad_k,
                grad_log_size))
        return (None, grad_q, grad_k, grad_log_size,
                gs if need[4] else None, None, None)


class _Contexts(torch.autograd.Function):
    r"""``[K, H, D_v]`` the contexts of the members, as
    :func:`sparse_contexts` computes them (finite values only)."""

    @staticmethod
    def forward(ctx, families: SparseFamilies, s: Tensor, shift: Tensor,
                keep: Optional[Tensor], v: Tensor) -> Tensor:
        s, shift, keep, v = map(_dense, (s, shift, keep, v))
        K, H, D = v.shape
        u = v.new_empty(K, H, D)
        weight = s.new_empty(s.shape)
        ctx.kernels = _kernels()  # the backward's, whatever the switch then
        ctx.kernels.contexts(
            _index(families).args(H), v.dtype == torch.float64, D, 0.0, 0.0,
            _addresses(s, shift, keep, v, u, weight))
        ctx.save_for_backward(s, shift, keep, v, weight)
        ctx.families = families
        return u

    @staticmethod
    def plain(families: SparseFamilies, s: Tensor, shift: Tensor,
              keep: Optional[Tensor], v: Tensor) -> Tensor:
        return sparse_contexts(families, s, shift, v, keep)

    @staticmethod
    def backward(ctx, grad: Tensor):
        s, shift, keep, v, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # a higher derivative follows
            return replayed_backward(
                _Contexts.plain, (ctx.families, s, shift, keep, v),
                ctx.needs_input_grad, (grad, ))
        need = ctx.needs_input_grad
        gs = torch.empty_like(s)
        grad_shift = torch.empty_like(shift) if need[2] else None
        grad_v = torch.empty_like(v) if need[4] else None
        grad = grad.contiguous()  # held by a name: see above
        ctx.kernels.contexts_backward(
            _index(ctx.families).args(v.size(1)), v.dtype == torch.float64,
            v.size(2), 0.0, 0.0, _addresses(weight, v, grad, gs, grad_shift,
                                            grad_v))
        return (None, gs if need[1] else None, grad_shift, None, grad_v)


def fused_scores_lse(families: SparseFamilies, q: Tensor, k: Tensor,
                     log_size: Tensor, scale: float, fill: float,
                     bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""``(s [P', H], lse [K, H])``: the logits of the scored pairs
    (as :func:`sparse_scores`, from the member tables ``q, k``
    ``[K, H, D]``, ``log_size`` ``[K]`` and a ``[P', H]`` pair bias) and
    their logsumexp per member (as :func:`scatter_logsumexp`, :obj:`fill`
    where a member has none), in the fused kernels. Call only where
    :func:`fused_pairs_apply` holds for the tensors."""
    return _ScoresLse.apply(families, q, k, log_size, bias, scale, fill)


def fused_contexts(families: SparseFamilies, s: Tensor, shift: Tensor,
                   v: Tensor, keep: Optional[Tensor] = None) -> Tensor:
    r"""``[K, H, D_v]`` the contexts of :func:`sparse_contexts` in the
    fused kernels, for finite values ``v``: where a value is infinite or
    NaN, :func:`sparse_contexts` is exact (a weight that underflowed to 0
    contributes no term) and the kernel is not. Call only where
    :func:`fused_pairs_apply` holds for the tensors."""
    return _Contexts.apply(families, s, shift, keep, v)
