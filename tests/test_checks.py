r"""The argument checks that every module shares."""
import math

import pytest

from hsa_geo._checks import check_float


@pytest.mark.parametrize('value', [0.0, math.inf])
def test_an_unbounded_end_reads_open(value):
    """Infinities are refused, so the interval says ')' at inf."""
    with pytest.raises(ValueError, match=r"in \(0\.0, inf\), got"):
        check_float(value, 'scale', low=0.0, low_open=True)
