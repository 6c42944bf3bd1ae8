r"""Argument handling of the dense HSA matrix (its values are checked
against the dynamic program and the KL optimiser in
``test_dynamic_program.py``)."""
import pytest
import torch

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix

PARENT, NUM_LEAVES = [4, 4, 5, 5, 6, 6, -1], 4


def _qk(dtypes):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(NUM_LEAVES, 2, 3, generator=g, dtype=torch.float64)
            .to(dtype) for dtype in dtypes]


def test_mixed_dtypes_compute_in_the_wider_one():
    """As hierarchical_attention does: float64 when one input is."""
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    q, k = _qk((torch.float64, torch.float32))
    matrix = hierarchical_attention_matrix(q, k, h)
    assert matrix.dtype == torch.float64
    assert torch.equal(matrix, hierarchical_attention_matrix(q, k.double(),
                                                             h))
    v = torch.randn(NUM_LEAVES, 2, 3, dtype=torch.float64)
    out = hierarchical_attention(q, k, v, h)
    assert torch.allclose(torch.einsum('hij,jhd->ihd', matrix, v), out,
                          atol=1e-12)


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_pair_bias_nan_or_plus_inf_is_refused(value):
    """As hierarchical_attention refuses it (-inf forbids a pair)."""
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    q, k = _qk((torch.float32, torch.float32))
    bias = torch.zeros(h.num_sibling_pairs, 2)
    bias[3, 1] = value
    with pytest.raises(ValueError, match="'pair_bias' row 3 holds NaN"):
        hierarchical_attention_matrix(q, k, h, pair_bias=bias)
    bias[3, 1] = float('-inf')
    assert hierarchical_attention_matrix(q, k, h,
                                         pair_bias=bias).isfinite().all()


def test_pair_bias_of_the_wrong_shape_is_refused():
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    q, k = _qk((torch.float32, torch.float32))
    with pytest.raises(ValueError, match='one column per head'):
        hierarchical_attention_matrix(
            q, k, h, pair_bias=torch.zeros(h.num_sibling_pairs))


def test_the_matrix_keeps_its_dtype_under_autocast():
    """As hierarchical_attention: autocast ran the scores in bfloat16."""
    from hsa_geo.functional import query_resolved_attention_matrix
    torch.manual_seed(0)
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    q, k, v = (3 * torch.randn(3, 4, 2, 8)).unbind(0)
    for matrix in (hierarchical_attention_matrix,
                   query_resolved_attention_matrix):
        expected = matrix(q, k, h)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            got = matrix(q, k, h)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = hierarchical_attention(q, k, v, h)
        m = hierarchical_attention_matrix(q, k, h)
    torch.testing.assert_close(out, torch.einsum('hij,jhd->ihd', m, v),
                               rtol=1e-5, atol=1e-5)
