r"""Tests of :class:`hsa_geo.nn.HSAConv`: shapes and options, exact agreement
(float64) with a reference built from the dense HSA matrix and the layer's
own weights, softmax attention on flat hierarchies, attention weights,
dropout, gradients, a short training run on batched nested signals, and input
validation."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader
from torch_geometric.nn import Sequential, global_mean_pool

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention_matrix
from hsa_geo.nn import HSAConv, HSATransformerLayer
from tests.helpers.layers import (EXACT, NUM_LEAVES, PARENT, SEEDS, build,
                                  example_hierarchy, linear,
                                  queries_keys_values, randn, state_of)
from tests.helpers.strategies import fewer, flat_tree, forests


pytestmark = pytest.mark.usefixtures('one_thread')


def reference_conv(conv: HSAConv, x, hierarchy) -> torch.Tensor:
    r"""The documented formula of :class:`HSAConv`, with the dense HSA matrix:
    ``q, k, v`` are ``lin_query(x)``, ``lin_key(x)``, ``lin_value(x)`` viewed
    as ``[N, H, C]``, the attention output is ``Q @ v`` per head, heads are
    concatenated or averaged, then the skip (gated with ``beta``)."""
    n, h, c = x.size(0), conv.heads, conv.out_channels
    q, k, v = queries_keys_values(conv, x)
    att = hierarchical_attention_matrix(q, k, hierarchy)  # [H, N, N]
    out = torch.einsum('hij,jhc->ihc', att, v)
    out = out.reshape(n, h * c) if conv.concat else out.mean(dim=1)
    if conv.root_weight:
        x_r = linear(conv.lin_skip, x)
        if conv.lin_beta is not None:
            b = torch.sigmoid(
                torch.cat([out, x_r, out - x_r], dim=-1)
                @ conv.lin_beta.weight.t())
            return b * x_r + (1 - b) * out
        return out + x_r
    return out


# HSAConv: shapes and options ###############################################


@pytest.mark.parametrize('heads', [1, 3])
@pytest.mark.parametrize('concat', [True, False])
@pytest.mark.parametrize('root_weight', [True, False])
@pytest.mark.parametrize('beta', [False, True])
def test_output_shapes(heads, concat, root_weight, beta):
    h = example_hierarchy()
    conv = HSAConv(5, 4, heads=heads, concat=concat, root_weight=root_weight,
                   beta=beta)
    out = conv(randn(NUM_LEAVES, 5), h)
    assert out.shape == (NUM_LEAVES, 4 * heads if concat else 4)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (conv.lin_skip is not None) == root_weight
    assert (conv.lin_beta is not None) == (beta and root_weight)


def test_lazy_in_channels():
    h = example_hierarchy()
    conv = HSAConv(-1, 8, heads=2)
    assert conv.in_channels == -1
    x = randn(NUM_LEAVES, 6)
    out = conv(x, h)
    assert out.shape == (NUM_LEAVES, 16)
    for lin in (conv.lin_query, conv.lin_key, conv.lin_value):
        assert lin.weight.shape == (2 * 8, 6)
    assert conv.lin_skip.weight.shape == (16, 6)
    # Once materialised it is an ordinary layer: exact and deterministic.
    conv = conv.double()
    torch.testing.assert_close(conv(x.double(), h),
                               reference_conv(conv, x.double(), h), rtol=0,
                               atol=EXACT)


def test_lazy_in_channels_with_beta_and_mean():
    conv = HSAConv(-1, 3, heads=2, concat=False, beta=True)
    out = conv(randn(NUM_LEAVES, 5), example_hierarchy())
    assert out.shape == (NUM_LEAVES, 3)
    assert conv.lin_value.weight.shape == (6, 5)


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(beta=True, heads=2),
    dict(root_weight=False, concat=False),
    dict(bias=False, heads=3),
])
def test_reset_parameters(kwargs):
    conv = HSAConv(6, 4, **kwargs)
    torch.manual_seed(123)
    conv.reset_parameters()
    first = state_of(conv)
    with torch.no_grad():
        for p in conv.parameters():
            p.fill_(0.0)
    torch.manual_seed(123)
    conv.reset_parameters()
    # Deterministic under a seed ...
    again = state_of(conv)
    assert again.keys() == first.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
    # ... every parameter re-randomised (none left at zero) ...
    for name, p in conv.named_parameters():
        assert bool((p != 0).any()), name
    # ... and another seed gives other values.
    torch.manual_seed(321)
    conv.reset_parameters()
    for name, p in conv.named_parameters():
        assert not torch.equal(p, first[name]), name


@pytest.mark.parametrize('bias', [True, False])
def test_state_with_one_fused_projection_loads(bias):
    r"""A state saved with one fused projection ``lin_qkv`` (rows q, k, v)
    loads into the three projections and gives the same layer."""
    h = example_hierarchy()
    conv = HSAConv(5, 3, heads=2, bias=bias).double()
    state = conv.state_dict()
    for name in ('weight', 'bias') if bias else ('weight', ):
        state[f'lin_qkv.{name}'] = torch.cat(
            [state.pop(f'lin_{lin}.{name}') for lin in
             ('query', 'key', 'value')])
    other = HSAConv(5, 3, heads=2, bias=bias).double()
    other.load_state_dict(state)
    x = randn(NUM_LEAVES, 5, dtype=torch.float64)
    assert torch.equal(other(x, h), conv(x, h))
    fused = torch.nn.Sequential(conv).state_dict()  # under a prefix
    fused['0.lin_qkv.weight'] = torch.cat(
        [fused.pop(f'0.lin_{lin}.weight') for lin in
         ('query', 'key', 'value')])
    other = torch.nn.Sequential(HSAConv(5, 3, heads=2, bias=bias).double())
    other.load_state_dict(fused)
    assert torch.equal(other[0](x, h), conv(x, h))


def test_repr():
    assert repr(HSAConv(16, 8, heads=2)) == 'HSAConv(16, 8, heads=2)'
    assert repr(HSAConv(-1, 4)) == 'HSAConv(-1, 4, heads=1)'
    assert repr(HSATransformerLayer(16, heads=4)) == \
        'HSATransformerLayer(16, heads=4)'


@pytest.mark.parametrize('kwargs,shown', [
    (dict(concat=False), 'concat=False'),
    (dict(beta=True), 'beta=True'),
    (dict(dropout=0.1), 'dropout=0.1'),
    (dict(bias=False), 'bias=False'),
    (dict(root_weight=False), 'root_weight=False'),
    (dict(max_branching=4), 'max_branching=4'),
    (dict(num_levels=3), 'num_levels=3'),
    (dict(geometry_bias=True),
     'geometry_bias=True, max_branching=16, num_levels=8'),
    (dict(geometry_bias=True, max_branching=5, num_levels=2),
     'geometry_bias=True, max_branching=5, num_levels=2'),
    (dict(concat=False, beta=True, dropout=0.25, bias=False),
     'concat=False, beta=True, dropout=0.25, bias=False'),
    (dict(edge_dim=3), 'edge_dim=3'),
    (dict(geometry_bias=True, edge_dim=2),
     'geometry_bias=True, max_branching=16, num_levels=8, edge_dim=2'),
])
def test_repr_shows_every_non_default_option(kwargs, shown):
    conv = HSAConv(16, 8, heads=2, **kwargs)
    assert repr(conv) == f'HSAConv(16, 8, heads=2, {shown})'
    # The repr is a call that builds the same layer.
    again = eval(repr(conv))
    assert repr(again) == repr(conv)
    assert [p.shape for p in again.parameters()] == \
        [p.shape for p in conv.parameters()]


def test_repr_of_beta_without_root_weight():
    # beta gates the root weight, so without one it is off, as in
    # TransformerConv; the repr shows what the layer does.
    assert repr(HSAConv(4, 4, beta=True, root_weight=False)) == \
        'HSAConv(4, 4, heads=1, root_weight=False)'


# HSAConv: the dynamic program as message passing ###########################


def passes_and_fused(conv: HSAConv, *args, **kwargs):
    r"""The layer's output through its message-passing passes and through
    its fused kernels."""
    conv.fuse = False
    try:
        passes = conv(*args, **kwargs)
    finally:
        conv.fuse = True
    return passes, conv(*args, **kwargs)


def sparse_family_graph(h: Hierarchy, seed: int) -> torch.Tensor:
    r"""About half of the ordered pairs of distinct siblings."""
    pairs = h.sibling_pairs
    off = pairs[:, pairs[0] != pairs[1]]
    g = torch.Generator().manual_seed(seed)
    return off[:, torch.rand(off.size(1), generator=g) < 0.5]


@fewer(2)
@given(forests(max_leaves=12), st.sampled_from([1, 3]), st.booleans(),
       SEEDS)
def test_passes_equal_dense_hsa_and_fused_kernels(f, heads, sparse, seed):
    r"""``fuse=False``: the passes of :meth:`HSAConv.message`,
    :meth:`~HSAConv.edge_update` and :meth:`~HSAConv.aggregate` give the
    dense HSA output and the fused kernels' output and family weights, with
    and without a family graph."""
    h = build(f)
    if sparse:
        h = h.with_family_graph(sparse_family_graph(h, seed))
    torch.manual_seed(seed)
    conv = HSAConv(4, 3, heads=heads, root_weight=False).double()
    x = randn(f.num_leaves, 4, seed=seed, dtype=torch.float64)
    q, k, v = queries_keys_values(conv, x)
    expected = torch.einsum('hij,jhc->ihc', hierarchical_attention_matrix(
        q, k, h), v).reshape(f.num_leaves, -1)
    (out_p, (pairs_p, w_p)), (out_f, (pairs_f, w_f)) = passes_and_fused(
        conv, x, h, return_attention_weights=True)
    torch.testing.assert_close(out_p, expected, rtol=0, atol=EXACT)
    torch.testing.assert_close(out_p, out_f, rtol=0, atol=EXACT)
    assert torch.equal(pairs_p, pairs_f)
    torch.testing.assert_close(w_p, w_f, rtol=0, atol=EXACT)


@fewer(4)
@given(forests(max_leaves=10, max_trees=2), SEEDS)
def test_passes_with_geometry_and_edge_biases(f, seed):
    r"""Both pair biases enter the passes' logits as they enter the
    kernels', and the kernels equal the dense reference with that bias."""
    h = build(f)
    torch.manual_seed(seed)
    conv = HSAConv(3, 2, heads=2, geometry_bias=True, edge_dim=2).double()
    with torch.no_grad():
        conv.geometry_bias.weight.normal_()
    x = randn(f.num_leaves, 3, seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(f.num_leaves, (2, 3 * f.num_leaves),
                               generator=g)
    edge_attr = torch.randn(edge_index.size(1), 2, generator=g,
                            dtype=torch.float64)
    out_p, out_f = passes_and_fused(conv, x, h, edge_index, edge_attr)
    torch.testing.assert_close(out_p, out_f, rtol=0, atol=EXACT)
    q, k, v = queries_keys_values(conv, x)
    bias = conv.geometry_bias(h) + conv.lin_edge(h, edge_index, edge_attr)
    att = torch.einsum('hij,jhc->ihc', hierarchical_attention_matrix(
        q, k, h, pair_bias=bias), v).reshape(f.num_leaves, -1)
    torch.testing.assert_close(out_p, att + linear(conv.lin_skip, x),
                               rtol=0, atol=EXACT)


def test_message_passing_hooks_fire():
    r"""The fused kernels run inside :meth:`propagate` (its hooks and the
    message-and-aggregate hooks fire); a message hook selects the passes,
    which it then sees, with the same output."""
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=2)
    x = randn(NUM_LEAVES, 5)
    seen = {'propagate': 0, 'fused': 0, 'message': 0, 'edge': 0}

    def count(name):
        return lambda *args: seen.__setitem__(name, seen[name] + 1)

    conv.register_propagate_forward_hook(count('propagate'))
    conv.register_message_and_aggregate_forward_hook(count('fused'))
    fused = conv(x, h)
    assert seen == {'propagate': 1, 'fused': 1, 'message': 0, 'edge': 0}
    assert conv.fuses
    handle = conv.register_message_forward_hook(count('message'))
    conv.register_edge_update_forward_hook(count('edge'))
    assert not conv.fuses
    torch.testing.assert_close(conv(x, h), fused)
    assert seen['fused'] == 1 and seen['message'] > 0 and seen['edge'] > 0
    handle.remove()


def test_explain_sees_the_passes_and_leaves_them_unmasked():
    r"""PyG's explainers switch every MessagePassing layer to explain mode;
    HSAConv then runs its passes (its messages travel along the tree, not
    along the explained leaf edges, so no mask applies) and PyG's
    GNNExplainer explains a model mixing GCNConv and HSAConv."""
    from torch_geometric.explain import Explainer, GNNExplainer
    from torch_geometric.nn import GCNConv

    h = example_hierarchy()
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.local = GCNConv(5, 4)
            self.attn = HSAConv(4, 2, heads=2)

        def forward(self, x, edge_index):
            return self.attn(self.local(x, edge_index).relu(), h)

    model = Model()
    x = randn(NUM_LEAVES, 5)
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4, 6, 0],
                               [1, 0, 2, 1, 4, 3, 0, 6]])
    expected = model(x, edge_index)
    model.attn.explain = True
    assert not model.attn.fuses
    torch.testing.assert_close(model(x, edge_index), expected)
    model.attn.explain = None
    explainer = Explainer(
        model, GNNExplainer(epochs=3), explanation_type='model',
        edge_mask_type='object', model_config=dict(
            mode='regression', task_level='node', return_type='raw'))
    explanation = explainer(x, edge_index, index=0)
    assert explanation.edge_mask.shape == (edge_index.size(1), )


def test_passes_gradcheck_second_order():
    r"""Gradients of the passes, first and second order, in float64."""
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(3, 2, heads=2, root_weight=False).double()
    conv.fuse = False
    x = randn(NUM_LEAVES, 3, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda t: conv(t, h), (x, ))
    torch.autograd.gradgradcheck(lambda t: conv(t, h), (x, ))


def test_passes_dropout():
    r"""With dropout the passes drop family weights in training only."""
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=2, dropout=0.5)
    conv.fuse = False
    x = randn(NUM_LEAVES, 5)
    conv.eval()
    expected = conv(x, h)
    conv.train()
    assert not torch.allclose(conv(x, h), expected)
    conv.dropout = 0.0
    torch.testing.assert_close(conv(x, h), expected)


@pytest.mark.parametrize('kwargs', [dict(aggr='mean'), dict(aggr='max'),
                                    dict(flow='target_to_source'),
                                    dict(decomposed_layers=2)])
def test_refuses_message_passing_arguments_it_cannot_honour(kwargs):
    with pytest.raises(ValueError, match='cannot honour'):
        HSAConv(4, 2, **kwargs)


# HSAConv: exactness ########################################################


@fewer(2)
@given(forests(max_leaves=10), st.sampled_from([1, 3]), SEEDS)
def test_equals_dense_hsa_of_own_projections(f, heads, seed):
    r"""``root_weight=False, concat=True``: the output is ``Q @ v`` per head,
    with ``Q`` the dense HSA matrix of the layer's own queries and keys."""
    h = build(f)
    torch.manual_seed(seed)
    conv = HSAConv(4, 3, heads=heads, root_weight=False).double()
    x = randn(f.num_leaves, 4, seed=seed, dtype=torch.float64)
    q, k, v = queries_keys_values(conv, x)
    att = hierarchical_attention_matrix(q, k, h)
    expected = torch.einsum('hij,jhc->ihc', att, v).reshape(f.num_leaves, -1)
    out = conv(x, h)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=EXACT)


@pytest.mark.parametrize('concat', [True, False])
@pytest.mark.parametrize('root_weight', [True, False])
@pytest.mark.parametrize('beta', [False, True])
@fewer(8)
@given(f=forests(max_leaves=8), seed=SEEDS)
def test_equals_reference_for_all_options(f, concat, root_weight, beta, seed):
    h = build(f)
    torch.manual_seed(seed)
    conv = HSAConv(3, 2, heads=2, concat=concat, root_weight=root_weight,
                   beta=beta).double()
    x = randn(f.num_leaves, 3, seed=seed, dtype=torch.float64)
    torch.testing.assert_close(conv(x, h), reference_conv(conv, x, h),
                               rtol=0, atol=EXACT)


@pytest.mark.parametrize('heads', [1, 4])
def test_flat_hierarchy_is_softmax_attention(heads):
    n, c = 9, 5
    h = build(flat_tree(n))
    torch.manual_seed(0)
    conv = HSAConv(6, c, heads=heads, root_weight=False).double()
    x = randn(n, 6, seed=1, dtype=torch.float64) * 2
    q, k, v = queries_keys_values(conv, x)
    sdpa = F.scaled_dot_product_attention(q.transpose(0, 1),
                                          k.transpose(0, 1),
                                          v.transpose(0, 1))  # [H, N, C]
    expected = sdpa.transpose(0, 1).reshape(n, heads * c)
    torch.testing.assert_close(conv(x, h), expected, rtol=0, atol=EXACT)


def test_flat_forest_is_block_diagonal_softmax_attention():
    r"""Three flat trees side by side (one a lone root leaf): softmax
    attention restricted to each tree."""
    sizes = [4, 1, 3]
    n = sum(sizes)
    parent, tree = [], []
    for t, s in enumerate(sizes):
        tree += [t] * s
    clusters = [t for t, s in enumerate(sizes) if s > 1]
    cid = {t: n + i for i, t in enumerate(clusters)}
    parent = [cid.get(t, -1) for t in tree] + [-1] * len(clusters)
    h = Hierarchy.from_parent(parent, n)
    torch.manual_seed(0)
    conv = HSAConv(4, 3, heads=2, root_weight=False).double()
    x = randn(n, 4, seed=2, dtype=torch.float64)
    q, k, v = queries_keys_values(conv, x)
    same = torch.tensor(tree)[:, None] == torch.tensor(tree)[None, :]
    sdpa = F.scaled_dot_product_attention(q.transpose(0, 1),
                                          k.transpose(0, 1),
                                          v.transpose(0, 1), attn_mask=same)
    torch.testing.assert_close(conv(x, h),
                               sdpa.transpose(0, 1).reshape(n, 6), rtol=0,
                               atol=EXACT)


@given(st.integers(1, 6), SEEDS)
def test_single_child_chain_is_transparent(n, seed):
    r"""A chain of single-child nodes above a flat family changes nothing."""
    flat = build(flat_tree(n))
    chained = Hierarchy.from_parent([n] * n + [n + 1, n + 2, -1], n)
    torch.manual_seed(seed)
    conv = HSAConv(3, 2, heads=2).double()
    x = randn(n, 3, seed=seed, dtype=torch.float64)
    torch.testing.assert_close(conv(x, chained), conv(x, flat), rtol=0,
                               atol=EXACT)


# HSAConv: attention weights, NestedSignal, dropout ########################


@pytest.mark.parametrize('heads', [1, 3])
def test_return_attention_weights(heads):
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=heads)
    x = randn(NUM_LEAVES, 5)
    out, (pair_index, alpha) = conv(x, h, return_attention_weights=True)
    torch.testing.assert_close(out, conv(x, h))
    assert torch.equal(pair_index, h.sibling_pairs)
    assert pair_index.shape == (2, alpha.size(0))
    assert alpha.shape == (h.sibling_pairs.size(1), heads)
    assert bool((alpha >= 0).all())
    # One distribution over the siblings for every child a.
    sums = torch.zeros(h.num_nodes, heads).index_add_(0, pair_index[0], alpha)
    has_parent = h.parent >= 0
    torch.testing.assert_close(sums[has_parent],
                               torch.ones(int(has_parent.sum()), heads))
    assert bool((sums[~has_parent] == 0).all())
    # As in TransformerConv: any bool gives the tuple, False included ...
    out_f, (pair_index_f, alpha_f) = conv(x, h,
                                          return_attention_weights=False)
    assert torch.equal(out_f, out)
    assert torch.equal(pair_index_f, pair_index)
    assert torch.equal(alpha_f, alpha)
    # ... and only None (the default) a tensor alone.
    for res in (conv(x, h), conv(x, h, return_attention_weights=None)):
        assert isinstance(res, torch.Tensor)
        torch.testing.assert_close(res, out)


@pytest.mark.parametrize('fuse', [True, False])
def test_attention_weights_give_the_leaf_weights(fuse):
    from hsa_geo.functional import FamilyWeights, leaf_attention_weights
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=2).double()
    conv.fuse = fuse
    x = randn(NUM_LEAVES, 5, dtype=torch.float64)
    _, weights = conv(x, h, return_attention_weights=True)
    assert isinstance(weights, FamilyWeights)
    edge_index = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 0]])
    q, k, _ = queries_keys_values(conv, x)
    dense = hierarchical_attention_matrix(q, k, h)  # [H, N, N]
    torch.testing.assert_close(
        leaf_attention_weights(weights, h, edge_index),
        dense[:, edge_index[1], edge_index[0]].t(), rtol=0, atol=EXACT)


def test_attention_weights_on_flat_tree_are_softmax():
    n, heads, c = 6, 2, 3
    h = build(flat_tree(n))
    torch.manual_seed(0)
    conv = HSAConv(4, c, heads=heads).double()
    x = randn(n, 4, dtype=torch.float64)
    _, (pair_index, alpha) = conv(x, h, return_attention_weights=True)
    q, k, _ = queries_keys_values(conv, x)
    p = torch.softmax(torch.einsum('ihc,jhc->hij', q, k) / c**0.5, dim=-1)
    expected = p[:, pair_index[0], pair_index[1]].t()
    torch.testing.assert_close(alpha, expected, rtol=0, atol=EXACT)
    assert pair_index.size(1) == n * n


def test_accepts_nested_signal():
    h = example_hierarchy()
    x = randn(NUM_LEAVES, 5)
    data = NestedSignal.from_hierarchy(h, x)
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=2)
    torch.testing.assert_close(conv(x, data), conv(x, h), rtol=0, atol=0)
    out, (pair_index, _) = conv(x, data, return_attention_weights=True)
    assert torch.equal(pair_index, h.sibling_pairs)
    # And a batch of them (one forest).
    other = NestedSignal.from_hierarchy(Hierarchy.from_parent([2, 2, -1], 2),
                                        randn(2, 5, seed=1))
    batch = Batch.from_data_list([data, other])
    parts = torch.cat([conv(data.x, data), conv(other.x, other)])
    torch.testing.assert_close(conv(batch.x, batch), parts)


def test_nested_signal_batch_under_inference_mode():
    signals = [
        NestedSignal.from_hierarchy(example_hierarchy(),
                                    randn(NUM_LEAVES, 5)),
        NestedSignal.from_hierarchy(Hierarchy.from_parent([2, 2, -1], 2),
                                    randn(2, 5, seed=1)),
    ]
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=2).eval()
    batch = Batch.from_data_list(signals)
    expected = conv(batch.x, batch.hierarchy)
    with torch.inference_mode():
        batch = next(iter(DataLoader(signals, batch_size=2)))
        torch.testing.assert_close(conv(batch.x, batch), expected)


def test_dropout():
    h = example_hierarchy()
    x = randn(NUM_LEAVES, 5)
    torch.manual_seed(0)
    conv = HSAConv(5, 4, heads=2, dropout=0.5)
    plain = copy.deepcopy(conv)
    plain.dropout = 0.0
    conv.train()
    outs = [conv(x, h) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    assert any(not torch.allclose(o, plain(x, h)) for o in outs)
    # Reproducible under a seed.
    torch.manual_seed(5)
    a = conv(x, h)
    torch.manual_seed(5)
    b = conv(x, h)
    assert torch.equal(a, b)
    # No dropout in eval mode: deterministic, as without dropout.
    conv.eval()
    torch.testing.assert_close(conv(x, h), conv(x, h), rtol=0, atol=0)
    torch.testing.assert_close(conv(x, h), plain.eval()(x, h), rtol=0,
                               atol=0)


def test_no_dropout_when_zero_in_train_mode():
    h = example_hierarchy()
    x = randn(NUM_LEAVES, 5)
    conv = HSAConv(5, 4, heads=2).train()
    torch.testing.assert_close(conv(x, h), conv(x, h), rtol=0, atol=0)


# HSAConv: gradients ########################################################


@pytest.mark.parametrize('kwargs', [
    dict(heads=2),
    dict(heads=3, concat=False, beta=True),
    dict(heads=1, root_weight=False),
])
def test_gradients_reach_every_parameter(kwargs):
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(5, 4, **kwargs)
    x = randn(NUM_LEAVES, 5).requires_grad_()
    out = conv(x, h)
    (out * randn(*out.shape, seed=3)).sum().backward()
    assert x.grad is not None and bool((x.grad != 0).any())
    for name, p in conv.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert bool((p.grad != 0).any()), name


def test_gradient_matches_reference():
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(3, 2, heads=2, beta=True).double()
    x = randn(NUM_LEAVES, 3, dtype=torch.float64)
    w = randn(NUM_LEAVES, 4, seed=1, dtype=torch.float64)
    grads = torch.autograd.grad((conv(x, h) * w).sum(),
                                list(conv.parameters()))
    ref = torch.autograd.grad((reference_conv(conv, x, h) * w).sum(),
                              list(conv.parameters()))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize('kwargs', [dict(), dict(geometry_bias=True),
                                    dict(query_resolved=True)])
def test_trains_after_an_evaluation_in_inference_mode(kwargs):
    """A signal whose hierarchy (and the layer's caches on it) is first
    made during an evaluation under inference mode trains afterwards."""
    torch.manual_seed(0)
    h = example_hierarchy()
    # (a deep copy holds no decoded hierarchy: the evaluation decodes it)
    data = copy.deepcopy(NestedSignal.from_hierarchy(
        h, x=randn(NUM_LEAVES, 3)))
    conv = HSAConv(3, 2, heads=2, **kwargs).eval()
    with torch.inference_mode():
        expected = conv(data.x, data)
    out = conv.train()(data.x, data)
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in conv.parameters())


@pytest.mark.parametrize('kwargs', [dict(), dict(geometry_bias=True),
                                    dict(query_resolved=True)])
def test_runs_under_autocast(kwargs):
    """Under autocast the projections run in bfloat16 and the attention in
    float32 (a tree of mixed depth, which mixed dtypes used to fail)."""
    torch.manual_seed(0)
    conv = HSAConv(3, 2, heads=2, **kwargs)
    x = randn(NUM_LEAVES, 3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x, example_hierarchy())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), conv(x, example_hierarchy()),
                          atol=0.05)
    out.float().sum().backward()
    assert all(p.grad is not None for p in conv.parameters())


# HSAConv in a small PyG model ##############################################


def _cluster_mean_signal(sizes, g):
    r"""Two levels: leaves in clusters of the given sizes under one root.
    Target of each leaf: the mean of x over its cluster."""
    n = sum(sizes)
    parent = [n + c for c, s in enumerate(sizes) for _ in range(s)]
    parent += [n + len(sizes)] * len(sizes) + [-1]
    x = torch.randn(n, 1, generator=g)
    target = torch.cat([
        chunk.mean(0, keepdim=True).expand(len(chunk), 1)
        for chunk in torch.split(x, sizes)
    ])
    return NestedSignal.from_hierarchy(Hierarchy.from_parent(parent, n), x,
                                       target=target, y=target.mean(0))


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = HSAConv(-1, 16, heads=2)
        self.conv2 = HSAConv(32, 1)
        self.head = torch.nn.Linear(32, 1)

    def forward(self, data):
        h = self.conv1(data.x, data).relu()
        return self.conv2(h, data), self.head(global_mean_pool(h, data.batch))


def test_training_reduces_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    signals = [
        _cluster_mean_signal(
            torch.randint(1, 5, (3, ), generator=g).tolist(), g)
        for _ in range(16)
    ]
    model = _Net()
    full = next(iter(DataLoader(signals, batch_size=len(signals))))

    def loss_of(data):
        leaf, graph = model(data)
        return F.mse_loss(leaf, data.target) + F.mse_loss(
            graph.view(-1), data.y.view(-1))

    with torch.no_grad():
        model(full)  # materialise the lazy layer
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    with torch.no_grad():
        before = float(loss_of(full))
    for _ in range(20):
        for batch in DataLoader(signals, batch_size=4, shuffle=True):
            opt.zero_grad()
            loss = loss_of(batch)
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = float(loss_of(full))
    assert after < 0.3 * before, (before, after)


def test_in_pyg_sequential():
    h = example_hierarchy()
    torch.manual_seed(0)
    conv, layer = HSAConv(3, 4, heads=2), HSATransformerLayer(8, heads=2)
    model = Sequential('x, hierarchy', [
        (conv, 'x, hierarchy -> x'),
        torch.nn.ReLU(),
        (layer, 'x, hierarchy -> x'),
    ])
    x = randn(NUM_LEAVES, 3)
    out = model(x, h)
    assert out.shape == (NUM_LEAVES, 8)
    torch.testing.assert_close(out, layer(conv(x, h).relu(), h), rtol=0,
                               atol=0)


# HSAConv: validation #######################################################


@pytest.mark.parametrize('kwargs,pattern', [
    (dict(heads=0), r"'heads' must be an int in \[1, inf\)"),
    (dict(heads=-2), r"'heads' must be an int in \[1, inf\)"),
    (dict(out_channels=0), r"'out_channels' must be an int in \[1, inf\)"),
    (dict(dropout=1.0), r"'dropout' must be a finite number in \[0.0, 1.0\)"),
    (dict(dropout=-0.1), r"'dropout' must be a finite number in \[0.0, 1.0\)"),
    (dict(dropout=1.5), r"'dropout' must be a finite number in \[0.0, 1.0\)"),
])
def test_bad_arguments(kwargs, pattern):
    args = dict(in_channels=4, out_channels=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        HSAConv(**args)


@pytest.mark.parametrize('x', [
    torch.randn(NUM_LEAVES),
    torch.randn(NUM_LEAVES, 2, 4),
    torch.tensor(1.0),
])
def test_x_not_2d(x):
    conv = HSAConv(4, 3)
    with pytest.raises(ValueError, match=r"'x' must be a \[N, F\] tensor"):
        conv(x, example_hierarchy())


def test_x_not_a_tensor():
    conv = HSAConv(4, 3)
    with pytest.raises(TypeError, match=r"'x' must be a floating point"):
        conv([[0.0] * 4] * NUM_LEAVES, example_hierarchy())


def test_x_rows_differ_from_leaves():
    conv = HSAConv(4, 3, heads=2)
    h = example_hierarchy()
    for rows in (NUM_LEAVES - 1, NUM_LEAVES + 1):
        with pytest.raises(ValueError,
                           match=f'{rows} rows but the hierarchy has '
                           f'{NUM_LEAVES} leaves'):
            conv(torch.randn(rows, 4), h)


def test_not_a_hierarchy():
    conv = HSAConv(4, 3)
    with pytest.raises(TypeError, match='Hierarchy'):
        conv(torch.randn(NUM_LEAVES, 4), torch.tensor(PARENT))


# query_resolved ############################################################


def test_query_resolved_conv_is_its_functional():
    from hsa_geo.functional import query_resolved_attention
    h = example_hierarchy()
    torch.manual_seed(0)
    conv = HSAConv(5, 3, heads=2, query_resolved=True).double()
    x = randn(NUM_LEAVES, 5, dtype=torch.float64)
    q, k, v = queries_keys_values(conv, x)
    ref = query_resolved_attention(q, k, v, h).reshape(NUM_LEAVES, 6) + \
        linear(conv.lin_skip, x)
    assert (conv(x, h) - ref).abs().max() < 1e-12
    conv.fuse = False  # the passes are HSA's: the same function runs
    assert (conv(x, h) - ref).abs().max() < 1e-12
    assert repr(conv) == 'HSAConv(5, 3, heads=2, query_resolved=True)'
    conv = HSAConv(5, 3, heads=2, query_resolved=True, dropout=0.5)
    conv.train()
    out = conv(randn(NUM_LEAVES, 5), h)
    out.sum().backward()
    assert conv.lin_query.weight.grad.abs().sum() > 0


def test_query_resolved_conv_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match='geometry_bias or edge_dim'):
        HSAConv(4, 2, query_resolved=True, geometry_bias=True)
    with pytest.raises(ValueError, match='geometry_bias or edge_dim'):
        HSAConv(4, 2, query_resolved=True, edge_dim=3)
    with pytest.raises(TypeError, match='query_resolved'):
        HSAConv(4, 2, query_resolved=1)
    conv = HSAConv(4, 2, query_resolved=True)
    with pytest.raises(ValueError, match='no family weights'):
        conv(randn(NUM_LEAVES, 4), example_hierarchy(),
             return_attention_weights=True)
    edge_index, edge_attr = torch.tensor([[0, 1], [1, 2]]), randn(2, 3)
    for edges in ((edge_index, edge_attr), (edge_index, None),
                  (None, edge_attr)):
        with pytest.raises(ValueError, match="would be ignored; "
                           "query-resolved HSA takes no edge features"):
            conv(randn(NUM_LEAVES, 4), example_hierarchy(), *edges)


def test_attention_weights_sum_to_one_over_the_attending_node():
    r"""``alpha[p]`` is how much ``pair_index[0, p]`` attends to
    ``pair_index[1, p]``: the weights of every node sum to one over the
    pairs it starts (not, as in TransformerConv, over their targets)."""
    from torch_geometric.utils import scatter
    h = Hierarchy.from_parent([6, 6, 7, 7, 7, 8, 9, 9, 9, -1], 6)
    conv = HSAConv(3, 2, heads=2, geometry_bias=True).double()
    torch.nn.init.normal_(conv.geometry_bias.weight)
    x = torch.randn(6, 3, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    _, (index, alpha) = conv(x, h, return_attention_weights=True)
    assert bool((index[0] == index[1]).any())  # self pairs included
    attending = torch.unique(index[0])
    total = scatter(alpha, index[0], dim=0, reduce='sum')[attending]
    torch.testing.assert_close(total, torch.ones_like(total))
    by_target = scatter(alpha, index[1], dim=0, reduce='sum')[attending]
    assert not torch.allclose(by_target, torch.ones_like(by_target))
