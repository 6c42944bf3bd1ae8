import torch
from hypothesis import given, strategies as st

from hsa_geo._permutation import inverse_permutation


@given(n=st.integers(0, 50), seed=st.integers(0, 2**31 - 1))
def test_inverse_permutation(n, seed):
    p = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    inv = inverse_permutation(p)
    assert torch.equal(inv[p], torch.arange(n))
    assert torch.equal(p[inv], torch.arange(n))
