r"""Argument handling of the dense query-resolved matrix (its values are
checked in ``test_query_resolved_attention.py``)."""
import torch

from hsa_geo import Hierarchy
from hsa_geo.functional import (query_resolved_attention,
                                query_resolved_attention_matrix)


def test_mixed_dtypes_compute_in_the_wider_one():
    """As query_resolved_attention does: float64 when one input is."""
    h = Hierarchy.from_parent([4, 4, 5, 5, 6, 6, -1], 4)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
               for _ in range(3))
    matrix = query_resolved_attention_matrix(q, k.float(), h)
    assert matrix.dtype == torch.float64
    out = query_resolved_attention(q, k.float(), v, h)
    assert torch.allclose(torch.einsum('hij,jhd->ihd', matrix, v), out,
                          atol=1e-12)
