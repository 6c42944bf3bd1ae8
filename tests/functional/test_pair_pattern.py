r"""The sparse kernels of pair lists against dense matrices, in float64,
with first and second derivatives."""
import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo.functional import pair_pattern
from hsa_geo.functional.pair_pattern import PairPattern

SEEDS = st.integers(0, 2**31 - 1)


def random_pattern(members: int, heads: int, density: float, seed: int,
                   symmetric: bool = False):
    r"""A pattern of random pairs (any direction, self pairs allowed; with
    each pair's reverse if :obj:`symmetric`) and its dense 0/1 mask
    ``[members, members]``."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(members, members, generator=g) < density
    if symmetric:
        mask = mask | mask.t()
    src, dst = mask.nonzero(as_tuple=True)  # sorted by src, then dst
    transpose = torch.argsort(dst * members + src)
    return PairPattern.build(src, dst, transpose, members, heads), mask


def dense_matrix(values: torch.Tensor, mask: torch.Tensor, heads: int):
    r"""``[H, K, K]`` the matrices of head-major values ``[H * P]``."""
    out = values.new_zeros((heads, ) + mask.shape)
    out[:, mask] = values.view(heads, -1)
    return out


@given(members=st.integers(1, 9), heads=st.integers(1, 3),
       density=st.sampled_from([0.0, 0.3, 1.0]),
       width=st.sampled_from([3, 64]), seed=SEEDS)
def test_products_match_dense(members, heads, density, width, seed):
    """Rows of 64 channels take PyTorch's own CSR kernel on the CPU,
    narrower ones MKL's."""
    pattern, mask = random_pattern(members, heads, density, seed)
    g = torch.Generator().manual_seed(seed + 1)
    a, b, x = (torch.randn(members, heads, width, generator=g,
                           dtype=torch.float64) for _ in range(3))
    values = torch.randn(heads * int(mask.sum()), generator=g,
                         dtype=torch.float64)
    dots = pattern.sampled_dot(a, b)
    out = pattern.matmul(values, x)
    assert out.shape == x.shape
    a, b, x = (t.transpose(0, 1) for t in (a, b, x))  # [H, K, width]
    expected = (a @ b.transpose(1, 2))[:, mask].reshape(-1)
    assert torch.allclose(dots, expected, atol=1e-12)
    assert torch.allclose(out.transpose(0, 1),
                          dense_matrix(values, mask, heads) @ x, atol=1e-12)


@pytest.mark.skipif(not pair_pattern.EMPTY_OUTPUT,
                    reason='the products keep csr @ x on this build')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_addmm_overwrites_an_output_it_does_not_read(dtype):
    """What the products rely on where they write into an empty table: with
    beta = 0, addmm into its own input replaces NaN, -inf and huge values,
    rows without entries included, by exactly csr @ x."""
    pattern, mask = random_pattern(12, 2, 0.2, 3)
    assert (mask.sum(1) == 0).any()  # rows without pairs
    values = torch.randn(2 * int(mask.sum()), dtype=dtype)
    matrix = pattern.matrix(values)
    x = torch.randn(24, 3, dtype=dtype)
    for fill in (float('nan'), float('-inf'), 1e30):
        out = torch.full((24, 3), fill, dtype=dtype)
        torch.addmm(out, matrix, x, beta=0.0, out=out)
        assert torch.equal(out, matrix @ x)


@given(members=st.integers(1, 9), heads=st.integers(1, 3), seed=SEEDS,
       symmetric=st.booleans())
def test_transpose_is_the_transposed_matrix(members, heads, seed,
                                            symmetric):
    """The transposed pattern takes and gives the same head-major values:
    its product is by the transposed matrices, and its sampled dot of pair
    ``(a, b)`` is that of ``(b, a)``; a symmetric list (as families
    without a family graph give) shares the pattern with it."""
    pattern, mask = random_pattern(members, heads, 0.4, seed, symmetric)
    values = torch.randn(heads * int(mask.sum()), dtype=torch.float64)
    dense = dense_matrix(values, mask, heads)
    flip = pattern.t()
    x, y = (torch.randn(members, heads, 2, dtype=torch.float64)
            for _ in range(2))
    out = flip.matmul(values, x.view(-1, 2))
    assert torch.allclose(out.view(members, heads, 2).transpose(0, 1),
                          dense.transpose(1, 2) @ x.transpose(0, 1),
                          atol=1e-12)
    x, y = x.transpose(0, 1), y.transpose(0, 1)  # [H, K, 2]
    expected = (y @ x.transpose(1, 2))[:, mask].reshape(-1)
    assert torch.allclose(flip.sampled_dot(x.transpose(0, 1).contiguous(),
                                           y.transpose(0, 1).contiguous()),
                          expected, atol=1e-12)
    assert torch.equal(flip.t().crow, pattern.crow)
    assert torch.equal(flip.t().col, pattern.col)
    assert torch.equal(pattern.pairs_of, mask.sum(1))
    assert torch.equal(flip.pairs_of, mask.sum(0))
    if symmetric:
        assert torch.equal(flip.crow, pattern.crow)
        assert torch.equal(flip.col, pattern.col)


@pytest.mark.parametrize('seed,width', [(0, 3), (1, 3), (2, 3), (3, 64)])
def test_gradients_to_second_order(seed, width):
    pattern, mask = random_pattern(6, 2, 0.5, seed)
    g = torch.Generator().manual_seed(seed)
    a, b, x = (torch.randn(6, 2, width, generator=g, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    values = torch.randn(2 * int(mask.sum()), generator=g,
                         dtype=torch.float64, requires_grad=True)
    for f, args in ((pattern.sampled_dot, (a, b)),
                    (pattern.matmul, (values, x))):
        assert torch.autograd.gradcheck(f, args)
        assert torch.autograd.gradgradcheck(f, args)


def test_one_input_without_gradient():
    pattern, mask = random_pattern(5, 1, 0.6, 0)
    a = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 2, dtype=torch.float64)
    pattern.sampled_dot(a, b).sum().backward()
    expected = (mask.to(torch.float64) @ b)
    assert torch.allclose(a.grad, expected, atol=1e-12)
