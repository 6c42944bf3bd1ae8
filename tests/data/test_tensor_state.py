r"""Tests of :mod:`hsa_geo.data.tensor_state`: a state tells an unchanged
input from one replaced or changed in place, inference tensors (which
track no version) included."""
import torch

from hsa_geo.data.tensor_state import same_state, tensor_state


def _state(*values):
    return tuple(tensor_state(v) for v in values)


def test_a_tensor_changed_in_place_or_replaced_is_another_state():
    t = torch.arange(4)
    before = _state(t, 3)
    assert same_state(before, _state(t, 3))
    assert not same_state(before, _state(t, 4))
    assert not same_state(before, _state(t.clone(), 3))
    t[0] = 9
    assert not same_state(before, _state(t, 3))


def test_an_inference_tensor_changed_in_place_is_another_state():
    with torch.inference_mode():
        t = torch.arange(4)
        before = _state(t)
        assert same_state(before, _state(t))
        t[0] = 9
        assert not same_state(before, _state(t))
        after = _state(t)
        t[0] = 9  # the same values: the same inputs
        assert same_state(after, _state(t))
    assert same_state(after, _state(t))
