r"""The argument checks that every module shares."""
import math

import pytest
import torch

from hsa_geo import Hierarchy, hierarchical_attention
from hsa_geo._checks import check_float


@pytest.mark.parametrize('value', [0.0, math.inf])
def test_an_unbounded_end_reads_open(value):
    """Infinities are refused, so the interval says ')' at inf."""
    with pytest.raises(ValueError, match=r"in \(0\.0, inf\), got"):
        check_float(value, 'scale', low=0.0, low_open=True)


@pytest.mark.parametrize('layout', ['coo', 'csr'])
def test_sparse_features_are_refused_by_name(layout):
    """A sparse tensor is floating point too, but fails deep inside the
    attention: it is refused where it is passed."""
    h = Hierarchy.from_parent([3, 3, 3, -1], 3)
    q = torch.randn(3, 4)
    sparse = q.to_sparse() if layout == 'coo' else q.to_sparse_csr()
    with pytest.raises(TypeError, match=r"'k' must be a dense floating point "
                       r"tensor, got a sparse one .*'\.to_dense\(\)'"):
        hierarchical_attention(q, sparse, q, h)
