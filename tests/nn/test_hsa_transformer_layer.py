r"""Tests of :class:`hsa_geo.nn.HSATransformerLayer`: exact agreement (float64)
with the documented pre-norm block built from its weights, the residual
structure, gradients, dropout, and input validation."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from hsa_geo import NestedSignal, hierarchical_attention_matrix
from hsa_geo.nn import HSATransformerLayer
from tests.helpers.layers import (EXACT, NUM_LEAVES, SEEDS, build,
                                  example_hierarchy, linear,
                                  queries_keys_values, randn, state_of)
from tests.helpers.strategies import fewer, forests


pytestmark = pytest.mark.usefixtures('one_thread')


# HSATransformerLayer #######################################################


def reference_layer(layer: HSATransformerLayer, x, hierarchy):
    r"""The documented pre-norm block, from the layer's weights (eval)."""
    n, c = x.size(0), layer.channels
    xn = F.layer_norm(x, (c, ), layer.norm1.weight, layer.norm1.bias,
                      layer.norm1.eps)
    q, k, v = queries_keys_values(layer.attn, xn)
    att = hierarchical_attention_matrix(q, k, hierarchy)
    a = torch.einsum('hij,jhd->ihd', att, v).reshape(n, c)
    h = x + linear(layer.lin_out, a)
    hn = F.layer_norm(h, (c, ), layer.norm2.weight, layer.norm2.bias,
                      layer.norm2.eps)
    first, last = layer.mlp[0], layer.mlp[-1]
    return h + linear(last, F.gelu(linear(first, hn)))


@pytest.mark.parametrize('heads', [1, 2, 4])
def test_layer_shape(heads):
    h = example_hierarchy()
    layer = HSATransformerLayer(8, heads=heads)
    x = randn(NUM_LEAVES, 8)
    out = layer(x, h)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.allclose(out, x)
    assert layer.attn.heads == heads
    assert layer.attn.out_channels == 8 // heads
    assert layer.attn.lin_skip is None  # the block's residual is the skip


def test_layer_residual_structure():
    h = example_hierarchy()
    torch.manual_seed(0)
    layer = HSATransformerLayer(8, heads=2)
    x = randn(NUM_LEAVES, 8)
    with torch.no_grad():
        layer.lin_out.weight.zero_()
        layer.lin_out.bias.zero_()
        layer.mlp[-1].weight.zero_()
        layer.mlp[-1].bias.zero_()
    torch.testing.assert_close(layer(x, h), x, rtol=0, atol=0)
    # Only the MLP branch zeroed: output = x + W_o HSA(LN(x)).
    torch.manual_seed(0)
    layer = HSATransformerLayer(8, heads=2)
    with torch.no_grad():
        layer.mlp[-1].weight.zero_()
        layer.mlp[-1].bias.zero_()
    expected = x + layer.lin_out(layer.attn(layer.norm1(x), h))
    torch.testing.assert_close(layer(x, h), expected)


def test_layer_passes_leaf_edges_to_its_attention():
    h = example_hierarchy()
    torch.manual_seed(0)
    layer = HSATransformerLayer(8, heads=2, edge_dim=3)
    x = randn(NUM_LEAVES, 8)
    edge_index = torch.tensor([[0, 1, 2], [1, 0, 4]])
    edge_attr = randn(3, 3)
    with torch.no_grad():
        layer.mlp[-1].weight.zero_()
        layer.mlp[-1].bias.zero_()
    expected = x + layer.lin_out(layer.attn(layer.norm1(x), h, edge_index,
                                            edge_attr))
    out = layer(x, h, edge_index, edge_attr)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, layer(x, h, edge_index, 2 * edge_attr))
    with pytest.raises(ValueError, match='edge_attr'):
        layer(x, h, edge_index)


@fewer(4)
@given(forests(max_leaves=8), st.sampled_from([1, 2]), SEEDS)
def test_layer_float64_equals_reference(f, heads, seed):
    h = build(f)
    torch.manual_seed(seed)
    layer = HSATransformerLayer(4, heads=heads, ff_channels=6).double()
    with torch.no_grad():  # non-trivial norms
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = randn(f.num_leaves, 4, seed=seed, dtype=torch.float64)
    out = layer(x, h)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_layer(layer, x, h), rtol=0,
                               atol=EXACT)


@pytest.mark.parametrize('channels,heads,pattern', [
    (10, 3, r"'heads' \(3\) must divide 'channels' \(10\)"),
    (8, 3, r"'heads' \(3\) must divide 'channels' \(8\)"),
    (6, 4, r"'heads' \(4\) must divide 'channels' \(6\)"),
    (8, 0, r"'heads' must be an int in \[1, inf\)"),
])
def test_layer_heads_must_divide_channels(channels, heads, pattern):
    with pytest.raises(ValueError, match=pattern):
        HSATransformerLayer(channels, heads=heads)


def test_layer_gradients_reach_every_parameter():
    h = example_hierarchy()
    torch.manual_seed(0)
    layer = HSATransformerLayer(8, heads=2)
    x = randn(NUM_LEAVES, 8).requires_grad_()
    out = layer(x, h)
    (out * randn(*out.shape, seed=4)).sum().backward()
    assert bool((x.grad != 0).any())
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert bool((p.grad != 0).any()), name


def test_layer_dropout_train_vs_eval():
    h = example_hierarchy()
    torch.manual_seed(0)
    layer = HSATransformerLayer(8, heads=2, dropout=0.3, attn_dropout=0.3)
    x = randn(NUM_LEAVES, 8)
    layer.train()
    assert not torch.allclose(layer(x, h), layer(x, h))
    layer.eval()
    torch.testing.assert_close(layer(x, h), layer(x, h), rtol=0, atol=0)


def test_layer_reset_parameters_and_nested_signal():
    h = example_hierarchy()
    torch.manual_seed(0)
    layer = HSATransformerLayer(8, heads=2)
    x = randn(NUM_LEAVES, 8)
    data = NestedSignal.from_hierarchy(h, x)
    torch.testing.assert_close(layer(x, data), layer(x, h), rtol=0, atol=0)
    torch.manual_seed(1)
    layer.reset_parameters()
    a = state_of(layer)
    torch.manual_seed(1)
    layer.reset_parameters()
    b = state_of(layer)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # every parameter is reset: norms to ones and zeros, the rest redrawn
    for p in layer.parameters():
        torch.nn.init.constant_(p, 0.3)
    layer.reset_parameters()
    for name, p in layer.named_parameters():
        if 'norm' in name:
            expected = 1.0 if name.endswith('weight') else 0.0
            assert torch.equal(p, torch.full_like(p, expected)), name
        else:
            assert not torch.equal(p, torch.full_like(p, 0.3)), name


@given(forests(max_leaves=12), SEEDS)
def test_query_resolved_layer_is_the_dense_block(f, seed):
    r"""``query_resolved=True``: the block with the query-resolved matrix
    in place of HSA's (float64, eval)."""
    from hsa_geo.functional import query_resolved_attention_matrix
    h = build(f)
    torch.manual_seed(seed)
    layer = HSATransformerLayer(6, heads=2, query_resolved=True).double()
    layer.eval()
    x = randn(f.num_leaves, 6, seed=seed, dtype=torch.float64)
    n, c = x.size(0), 6
    xn = F.layer_norm(x, (c, ), layer.norm1.weight, layer.norm1.bias,
                      layer.norm1.eps)
    q, k, v = queries_keys_values(layer.attn, xn)
    att = query_resolved_attention_matrix(q, k, h)
    a = torch.einsum('hij,jhd->ihd', att, v).reshape(n, c)
    hid = x + linear(layer.lin_out, a)
    hn = F.layer_norm(hid, (c, ), layer.norm2.weight, layer.norm2.bias,
                      layer.norm2.eps)
    ref = hid + linear(layer.mlp[-1], F.gelu(linear(layer.mlp[0], hn)))
    assert (layer(x, h) - ref).abs().max() < EXACT


def test_layer_options_reach_its_attention():
    layer = HSATransformerLayer(8, heads=2, geometry_bias=True)
    assert layer.attn.geometry_bias is not None
    assert repr(layer) == 'HSATransformerLayer(8, heads=2, geometry_bias=True)'
    h = example_hierarchy()
    out = layer(randn(NUM_LEAVES, 8), h)
    out.sum().backward()
    assert layer.attn.geometry_bias.weight.grad.abs().sum() > 0
    layer = HSATransformerLayer(8, heads=2, query_resolved=True)
    assert repr(layer) == \
        'HSATransformerLayer(8, heads=2, query_resolved=True)'
    with pytest.raises(ValueError, match='would be ignored'):
        layer(randn(NUM_LEAVES, 8), h, torch.tensor([[0, 1], [1, 2]]),
              randn(2, 3))
    with pytest.raises(ValueError, match='query_resolved'):
        HSATransformerLayer(8, heads=2, query_resolved=True,
                            geometry_bias=True)


@pytest.mark.parametrize('kwargs,shown', [
    (dict(), ''),
    (dict(dropout=0.1), ', dropout=0.1'),
    (dict(attn_dropout=0.2), ', attn_dropout=0.2'),
    (dict(ff_channels=7), ', ff_channels=7'),
    (dict(ff_channels=32), ''),  # the default, 4 * channels
    (dict(act='relu'), ', act=ReLU()'),
    (dict(act='leaky_relu', act_kwargs=dict(negative_slope=0.2)),
     ', act=LeakyReLU(negative_slope=0.2)'),
    (dict(edge_dim=3), ', edge_dim=3'),
    (dict(dropout=0.1, attn_dropout=0.2, ff_channels=7, edge_dim=3),
     ', dropout=0.1, attn_dropout=0.2, ff_channels=7, edge_dim=3'),
])
def test_repr_shows_every_non_default_option(kwargs, shown):
    layer = HSATransformerLayer(8, heads=2, **kwargs)
    assert repr(layer) == f'HSATransformerLayer(8, heads=2{shown})'
    if 'act' not in kwargs:  # the repr is a call that builds the same
        again = eval(repr(layer))
        assert [p.shape for p in again.parameters()] == \
            [p.shape for p in layer.parameters()]
        assert repr(again) == repr(layer)
