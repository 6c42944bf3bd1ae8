r"""Tests of :class:`hsa_geo.nn.HSAGPSConv`: its attention branch against
:class:`~hsa_geo.nn.HSAConv` and the dense HSA matrix (float64, random
irregular forests), the whole layer against an independent re-composition
of its parts, edge features, batches of nested signals against each signal
alone, gradients, options, bad input, and why PyG's
:class:`~torch_geometric.nn.conv.GPSConv` cannot take HSA."""
import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINConv, GINEConv, GPSConv

from hsa_geo import Hierarchy, hierarchical_attention_matrix
from hsa_geo.nn import HSAConv, HSAGPSConv
from tests.helpers.gps import molecules, random_edges, signals, tree_batch
from tests.helpers.layers import (EXACT, NUM_LEAVES, SEEDS, build,
                                  example_hierarchy, linear,
                                  queries_keys_values, randn)
from tests.helpers.strategies import fewer, forests

pytestmark = pytest.mark.usefixtures('one_thread')


def gin(channels: int, edge_dim=None):
    nn = torch.nn.Sequential(torch.nn.Linear(channels, channels),
                             torch.nn.ReLU(),
                             torch.nn.Linear(channels, channels))
    return GINConv(nn) if edge_dim is None else GINEConv(nn,
                                                         edge_dim=edge_dim)


def dense_attention(attn: HSAConv, x, hierarchy, pair_bias=None):
    r"""``Q @ v`` per head from the dense HSA matrix and the weights of
    :obj:`attn` alone, heads concatenated (no skip connection)."""
    n, heads, c = x.size(0), attn.heads, attn.out_channels
    q, k, v = queries_keys_values(attn, x)
    att = hierarchical_attention_matrix(q, k, hierarchy, pair_bias=pair_bias)
    return torch.einsum('hij,jhc->ihc', att, v).reshape(n, heads * c)


def zero_mlp(layer: HSAGPSConv):
    r"""Makes the MLP branch zero: ``out = Norm3(h)``."""
    last = layer.mlp[-2]  # mlp[-1] is its dropout
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()


def randomize_norms(layer: HSAGPSConv):
    r"""Non-trivial affine weights (and running statistics) in every
    norm, so that an identity norm cannot pass for the right one."""
    gen = torch.Generator().manual_seed(1)
    for norm in (layer.norm1, layer.norm2, layer.norm3):
        for name, tensor in norm.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                with torch.no_grad():
                    tensor.copy_(torch.rand(tensor.shape, generator=gen,
                                            dtype=tensor.dtype) + 0.5)


def recompose(layer: HSAGPSConv, x, edge_index, hierarchy, batch, *,
              norm_takes_batch: bool, edge_attr=None, conv_edge_attr=False):
    r"""The documented formula of :class:`HSAGPSConv` in eval mode, from its
    modules, with the attention from the dense HSA matrix."""
    def norm(module, h):
        if module is None:
            return h
        return module(h, batch) if norm_takes_batch else module(h)

    bias = None
    if layer.attn.lin_edge is not None:
        bias = layer.attn.lin_edge(hierarchy, edge_index, edge_attr)
    h = norm(layer.norm2, x + dense_attention(layer.attn, x, hierarchy, bias))
    if layer.conv is not None:
        local = layer.conv(x, edge_index, edge_attr) if conv_edge_attr else \
            layer.conv(x, edge_index)
        h = h + norm(layer.norm1, x + local)
    mlp = layer.mlp
    return norm(layer.norm3, h + linear(mlp[3], mlp[1](linear(mlp[0], h))))


# The attention branch ######################################################


@fewer(2)
@given(forests(max_leaves=12), st.sampled_from([1, 2, 4]), SEEDS)
def test_attention_branch_is_hsaconv_and_dense_hsa(f, heads, seed):
    h = build(f)
    torch.manual_seed(seed)
    layer = HSAGPSConv(8, None, heads=heads, norm=None).double().eval()
    zero_mlp(layer)
    x = randn(f.num_leaves, 8, seed=seed, dtype=torch.float64)
    branch = layer(x, torch.empty(2, 0, dtype=torch.long), h) - x
    # By construction: HSAConv(8, 8 // heads, heads) without its own skip.
    attn = HSAConv(8, 8 // heads, heads=heads, root_weight=False).double()
    attn.load_state_dict(layer.attn.state_dict())
    torch.testing.assert_close(branch, attn(x, h), rtol=0, atol=EXACT)
    torch.testing.assert_close(branch, dense_attention(layer.attn, x, h),
                               rtol=0, atol=EXACT)


@fewer(2)
@given(forests(max_leaves=10),
       st.sampled_from(['batch_norm', 'graph_norm', None]), SEEDS)
def test_layer_equals_recomposition(f, norm, seed):
    h = build(f)
    batch = tree_batch(f)
    edge_index, _ = random_edges(f.num_leaves, seed)
    torch.manual_seed(seed)
    layer = HSAGPSConv(8, gin(8), heads=2, norm=norm).double().eval()
    if norm is not None:
        randomize_norms(layer)
    x = randn(f.num_leaves, 8, seed=seed, dtype=torch.float64)
    out = layer(x, edge_index, h, batch)
    expected = recompose(layer, x, edge_index, h, batch,
                         norm_takes_batch=norm == 'graph_norm')
    torch.testing.assert_close(out, expected, rtol=0, atol=EXACT)
    assert layer.norm_with_batch == (norm == 'graph_norm')


# Edge features #############################################################


@fewer(2)
@given(forests(max_leaves=10), SEEDS)
def test_edge_features_reach_the_attention_exactly(f, seed):
    h = build(f)
    edge_index, edge_attr = random_edges(f.num_leaves, seed)
    torch.manual_seed(seed)
    layer = HSAGPSConv(8, None, heads=2, norm=None,
                       attn_kwargs=dict(edge_dim=3)).double().eval()
    zero_mlp(layer)
    x = randn(f.num_leaves, 8, seed=seed, dtype=torch.float64)
    branch = layer(x, edge_index, h, edge_attr=edge_attr) - x
    torch.testing.assert_close(
        branch, layer.attn(x, h, edge_index, edge_attr), rtol=0, atol=EXACT)
    bias = layer.attn.lin_edge(h, edge_index, edge_attr)
    torch.testing.assert_close(branch,
                               dense_attention(layer.attn, x, h, bias),
                               rtol=0, atol=EXACT)


@pytest.mark.parametrize('conv_reads_edges', [True, False])
def test_edge_features_with_a_local_conv(conv_reads_edges):
    h = example_hierarchy()
    edge_index, edge_attr = random_edges(NUM_LEAVES, 0)
    torch.manual_seed(0)
    conv = gin(8, edge_dim=3) if conv_reads_edges else gin(8)
    layer = HSAGPSConv(8, conv, heads=2, norm='batch_norm',
                       attn_kwargs=dict(edge_dim=3)).double().eval()
    randomize_norms(layer)
    assert layer.conv_with_edge_attr == conv_reads_edges
    x = randn(NUM_LEAVES, 8, dtype=torch.float64)
    # GINConv takes no edge_attr: it goes to the attention only.
    out = layer(x, edge_index, h, edge_attr=edge_attr)
    expected = recompose(layer, x, edge_index, h, None,
                         norm_takes_batch=False, edge_attr=edge_attr,
                         conv_edge_attr=conv_reads_edges)
    torch.testing.assert_close(out, expected, rtol=0, atol=EXACT)
    assert not torch.allclose(out, layer(x, edge_index, h,
                                         edge_attr=2 * edge_attr))
    with pytest.raises(ValueError, match="'edge_attr' is missing"):
        layer(x, edge_index, h)


def test_edge_features_nobody_reads_are_refused():
    h = example_hierarchy()
    edge_index, edge_attr = random_edges(NUM_LEAVES, 0, dtype=torch.float32)
    x = randn(NUM_LEAVES, 8)
    layer = HSAGPSConv(8, gin(8)).eval()
    with pytest.raises(ValueError, match=r"\['edge_attr'\] would be "
                       "ignored: the local conv does not take edge_attr"):
        layer(x, edge_index, h, edge_attr=edge_attr)
    layer = HSAGPSConv(8, None).eval()
    with pytest.raises(ValueError, match='there is no local conv'):
        layer(x, edge_index, h, edge_attr=edge_attr)
    # GINEConv reads them: no attention edge features needed.
    layer = HSAGPSConv(8, gin(8, edge_dim=3)).eval()
    assert layer(x, edge_index, h, edge_attr=edge_attr).shape == x.shape


# Batches of nested signals #################################################


@pytest.mark.parametrize('norm', ['batch_norm', 'graph_norm', 'layer_norm'])
def test_batch_equals_each_signal_alone(norm):
    data = signals(8)
    torch.manual_seed(0)
    layer = HSAGPSConv(8, gin(8, edge_dim=3), heads=2, norm=norm,
                       attn_kwargs=dict(edge_dim=3)).eval()
    randomize_norms(layer)
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    out = layer(batch.x, batch.edge_index, batch, batch.batch,
                edge_attr=batch.edge_attr)
    for i, signal in enumerate(data):
        alone = layer(signal.x, signal.edge_index, signal.hierarchy,
                      edge_attr=signal.edge_attr)
        torch.testing.assert_close(out[batch.batch == i], alone, rtol=1e-5,
                                   atol=1e-5)


def test_one_graph_without_batch_is_normalised_as_in_a_batch():
    # PyG's LayerNorm divides by std + eps without a batch and by
    # sqrt(var + eps) with one; small features make eps tell them apart.
    data = signals(3)
    torch.manual_seed(0)
    layer = HSAGPSConv(3, gin(3), norm='layer_norm').double().eval()
    for signal in data:
        x = signal.x.double() * 1e-3
        zeros = torch.zeros(x.size(0), dtype=torch.long)
        torch.testing.assert_close(
            layer(x, signal.edge_index, signal.hierarchy),
            layer(x, signal.edge_index, signal.hierarchy, zeros),
            rtol=0, atol=1e-12)


@pytest.mark.parametrize('norm', ['graph_norm', 'layer_norm'])
def test_a_collated_batch_as_hierarchy_gives_the_batch_vector(norm):
    """Graph-aware norms run per graph (as HSAGraphTransformer's blocks),
    not over the whole batch, when the batch comes as the hierarchy."""
    data = signals(5)
    torch.manual_seed(0)
    layer = HSAGPSConv(5, gin(5), heads=1, norm=norm).eval()
    randomize_norms(layer)
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    out = layer(batch.x, batch.edge_index, batch)
    torch.testing.assert_close(
        out, layer(batch.x, batch.edge_index, batch, batch.batch))
    for i, signal in enumerate(data):
        torch.testing.assert_close(
            out[batch.batch == i], layer(signal.x, signal.edge_index,
                                         signal), rtol=1e-5, atol=1e-5)


def test_batch_of_molecules_equals_each_molecule_alone():
    data = molecules()
    if data is None:
        pytest.skip('rdkit is not installed (pip install rdkit)')
    torch.manual_seed(0)
    encode = torch.nn.Linear(9, 8)
    layer = HSAGPSConv(8, gin(8, edge_dim=3), heads=2,
                       attn_kwargs=dict(edge_dim=3)).eval()
    batch = next(iter(DataLoader(data, batch_size=len(data))))
    with torch.no_grad():
        out = layer(encode(batch.x.float()), batch.edge_index, batch,
                    edge_attr=batch.edge_attr.float())
        for i, mol in enumerate(data):
            alone = layer(encode(mol.x.float()), mol.edge_index, mol,
                          edge_attr=mol.edge_attr.float())
            torch.testing.assert_close(out[batch.batch == i], alone,
                                       rtol=1e-5, atol=1e-5)
    # Trees never attend to each other: changing one molecule changes only
    # its own rows.
    x = batch.x.float().clone()
    x[batch.batch == 0] += 1
    with torch.no_grad():
        moved = layer(encode(x), batch.edge_index, batch,
                      edge_attr=batch.edge_attr.float())
    torch.testing.assert_close(moved[batch.batch != 0],
                               out[batch.batch != 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved[batch.batch == 0], out[batch.batch == 0])


# Gradients, dropout, options ###############################################


def test_gradcheck():
    h = example_hierarchy()
    edge_index, _ = random_edges(NUM_LEAVES, 0)
    torch.manual_seed(0)
    layer = HSAGPSConv(4, gin(4), heads=2, norm='layer_norm').double()
    layer.eval()
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 0])  # leaf 5 is its own tree
    x = randn(NUM_LEAVES, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: layer(x, edge_index, h, batch), (x, ))


@pytest.mark.parametrize('local', [True, False])
def test_gradients_reach_every_parameter(local):
    """Also without a local layer: no norm waits for its output (a
    parameter without a gradient stalls DistributedDataParallel)."""
    h = example_hierarchy()
    edge_index, edge_attr = random_edges(NUM_LEAVES, 0, dtype=torch.float32)
    layer = HSAGPSConv(8, gin(8, edge_dim=3) if local else None, heads=2,
                       attn_kwargs=dict(edge_dim=3, geometry_bias=True))
    layer(randn(NUM_LEAVES, 8), edge_index, h,
          edge_attr=edge_attr).square().sum().backward()
    missing = [name for name, p in layer.named_parameters() if p.grad is None
               or not p.grad.abs().sum() > 0]
    assert not missing


def test_state_of_a_layer_without_local_layer_loads():
    """A state saved when a layer without a local layer still had its
    first norm loads (the norm is dropped)."""
    layer = HSAGPSConv(8, None, heads=2)
    state = layer.state_dict()
    state.update({f'norm1.module.{key}': value for key, value in
                  layer.norm2.module.state_dict().items()})
    again = HSAGPSConv(8, None, heads=2)
    again.load_state_dict(state)
    for key, value in layer.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_dropout_train_vs_eval():
    h = example_hierarchy()
    edge_index, _ = random_edges(NUM_LEAVES, 0)
    layer = HSAGPSConv(8, gin(8), heads=2, dropout=0.5, norm=None,
                       attn_kwargs=dict(dropout=0.5))
    assert layer.attn.dropout == 0.5
    x = randn(NUM_LEAVES, 8)
    torch.manual_seed(0)
    train = layer(x, edge_index, h)
    layer.eval()
    torch.testing.assert_close(layer(x, edge_index, h),
                               layer(x, edge_index, h))
    assert not torch.allclose(train, layer(x, edge_index, h))


def test_attn_kwargs_and_reset_parameters():
    layer = HSAGPSConv(8, gin(8), heads=2,
                       attn_kwargs=dict(geometry_bias=True, root_weight=True))
    assert layer.attn.geometry_bias is not None
    assert layer.attn.lin_skip is not None
    assert HSAGPSConv(8, None).attn.lin_skip is None  # the residual is it
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    for p in layer.parameters():
        torch.nn.init.constant_(p, 0.3)
    layer.reset_parameters()
    for name, p in layer.named_parameters():
        if 'norm' in name:  # norms reset to ones and zeros
            torch.testing.assert_close(p, before[name])
        else:
            assert not torch.equal(p, torch.full_like(p, 0.3)), name


def test_repr():
    assert repr(HSAGPSConv(8, None, heads=2)) == \
        'HSAGPSConv(8, conv=None, heads=2)'
    conv = gin(4)
    assert repr(HSAGPSConv(4, conv)) == f'HSAGPSConv(4, conv={conv}, heads=1)'


@pytest.mark.parametrize('kwargs,shown', [
    (dict(dropout=0.1), ', dropout=0.1'),
    (dict(act='gelu'), ", act=GELU(approximate='none')"),
    (dict(norm=None), ', norm=None'),
    (dict(norm='layer_norm'), ', norm=LayerNorm(8, affine=True, mode=graph)'),
    (dict(attn_kwargs=dict(dropout=0.2)), ', attn_kwargs=dict(dropout=0.2)'),
    (dict(attn_kwargs=dict(root_weight=False)), ''),  # the default here
    (dict(attn_kwargs=dict(root_weight=True)),
     ', attn_kwargs=dict(root_weight=True)'),
    (dict(attn_kwargs=dict(beta=True, root_weight=True)),
     ', attn_kwargs=dict(beta=True, root_weight=True)'),
    (dict(dropout=0.1, attn_kwargs=dict(edge_dim=3, geometry_bias=True)),
     ', dropout=0.1, attn_kwargs=dict(geometry_bias=True, max_branching=16, '
     'num_levels=8, edge_dim=3)'),
])
def test_repr_shows_every_non_default_option(kwargs, shown):
    layer = HSAGPSConv(8, None, heads=2, **kwargs)
    assert repr(layer) == f'HSAGPSConv(8, conv=None, heads=2{shown})'
    if 'act' not in kwargs and 'norm' not in kwargs:
        again = eval(repr(layer))  # a call that builds the same layer
        assert repr(again) == repr(layer)
        assert [p.shape for p in again.parameters()] == \
            [p.shape for p in layer.parameters()]


def test_nested_signal_as_hierarchy():
    signal = signals(8)[2]
    layer = HSAGPSConv(8, gin(8)).eval()
    torch.testing.assert_close(
        layer(signal.x, signal.edge_index, signal),
        layer(signal.x, signal.edge_index, signal.hierarchy))


# Bad input #################################################################


@pytest.mark.parametrize('kwargs, error, pattern', [
    (dict(channels=6, heads=4), ValueError, "'heads' \\(4\\) must divide"),
    (dict(channels=0), ValueError, "'channels' must be an int in"),
    (dict(channels=8.0), TypeError, "'channels' must be an int"),
    (dict(heads=True), TypeError, "'heads' must be an int"),
    (dict(dropout=1.0), ValueError, "'dropout' must be a finite number"),
    (dict(dropout='0.1'), TypeError, "'dropout' must be a real number"),
    (dict(conv='gin'), TypeError, "'conv' must be a message passing layer"),
    (dict(attn_kwargs=dict(heads=2)), ValueError,
     "'attn_kwargs' must not set 'heads'"),
    (dict(attn_kwargs=dict(concat=False)), ValueError,
     "must not set 'concat'"),
    (dict(attn_kwargs=[('dropout', 0.1)]), TypeError,
     "'attn_kwargs' must be a dict"),
    (dict(norm_kwargs=1), TypeError, "'norm_kwargs' must be a dict"),
    (dict(attn_kwargs=dict(dropout=1.5)), ValueError, "'dropout'"),
    (dict(attn_kwargs=dict(beta=True)), ValueError,
     "pass attn_kwargs=dict\\(beta=True, root_weight=True\\)"),
])
def test_bad_arguments(kwargs, error, pattern):
    args = dict(channels=8, conv=None)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        HSAGPSConv(**args)


def test_bad_forward_input():
    h = example_hierarchy()
    edge_index, _ = random_edges(NUM_LEAVES, 0)
    layer = HSAGPSConv(8, gin(8)).eval()
    x = randn(NUM_LEAVES, 8)
    with pytest.raises(ValueError, match="'x' has 6 rows but the hierarchy "
                       "has 7 leaves"):
        layer(x[:6], edge_index, h)
    with pytest.raises(TypeError, match="'hierarchy' must be a"):
        layer(x, edge_index, h.parent)
    with pytest.raises(ValueError, match="'x' has 5 features but the layer "
                       "takes 8"):
        layer(x[:, :5], edge_index, h)
    with pytest.raises(ValueError, match="'batch' has 3 entries"):
        layer(x, edge_index, h, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="'batch' must have an integer"):
        layer(x, edge_index, h, torch.zeros(NUM_LEAVES))
    with pytest.raises(ValueError, match=r"\['size'\] would be ignored"):
        HSAGPSConv(8, None)(x, edge_index, h, size=(7, 7))
    wrong = torch.nn.Module()
    wrong.forward = lambda x, edge_index: x[:, :4]
    with pytest.raises(ValueError, match="'conv' must map x"):
        HSAGPSConv(8, wrong)(x, edge_index, h)


def test_bad_edge_features_are_refused_before_the_local_conv():
    # The local conv would fail on them first, with a message of its own.
    h = example_hierarchy()
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    layer = HSAGPSConv(8, gin(8, edge_dim=8),
                       attn_kwargs=dict(edge_dim=8)).eval()
    x = randn(NUM_LEAVES, 8)
    for edge_attr, error, pattern in (
            (randn(3, 8), ValueError,
             r"'edge_attr' must have shape \[E, edge_dim\] = \[4, 8\]"),
            (randn(4, 5), ValueError,
             r"'edge_attr' must have shape \[E, edge_dim\] = \[4, 8\]"),
            (randn(4, 8, dtype=torch.float64), TypeError,
             "'edge_attr' has dtype torch.float64")):
        with pytest.raises(error, match=pattern):
            layer(x, edge_index, h, edge_attr=edge_attr)
    with pytest.raises(ValueError, match="'edge_index' holds ids from 0 to "
                       "12 but the hierarchy has 7 leaves"):
        layer(x, edge_index * 3, h, edge_attr=randn(4, 8))


def test_edge_features_need_an_edge_index_tensor():
    r"""The attention reads edge features row by row with the columns of
    an ``edge_index`` ``[2, E]``: a sparse adjacency is refused with that
    reason, while without edge features it goes to the local layer."""
    from torch_geometric.nn import GCNConv
    from torch_geometric.utils import to_torch_csr_tensor
    h = example_hierarchy()
    edge_index = torch.tensor([[0, 1, 2, 3, 5, 6], [1, 0, 4, 6, 3, 2]])
    edge_attr = randn(6, 8, seed=1)
    x = randn(NUM_LEAVES, 8)
    # PyG's sparse form: the transposed adjacency, adj_t[i, j] for j -> i.
    adj = to_torch_csr_tensor(edge_index.flip(0),
                              size=(NUM_LEAVES, NUM_LEAVES))
    layer = HSAGPSConv(8, GCNConv(8, 8), heads=2,
                       attn_kwargs=dict(edge_dim=8)).eval()
    with pytest.raises(TypeError, match=r"edge features need 'edge_index' as "
                       r"a \[2, E\] tensor.*got a sparse adjacency"):
        layer(x, adj, h, edge_attr=edge_attr)
    assert layer(x, edge_index, h, edge_attr=edge_attr).shape == x.shape
    plain = HSAGPSConv(8, GCNConv(8, 8), heads=2).eval()
    torch.testing.assert_close(plain(x, adj, h), plain(x, edge_index, h))


# PyG's GPSConv #############################################################


def test_gpsconv_cannot_run_hsa():
    r"""Why HSA needs its own GPS layer. ``GPSConv(attn_type='hsa')`` is
    refused. An :class:`HSAConv` assigned to ``GPSConv.attn`` is never
    called: ``GPSConv.forward`` (PyG 2.8.1) packs ``x`` with
    ``to_dense_batch``, calls ``self.attn`` only if it is a
    ``MultiheadAttention`` or a ``PerformerAttention``, and unpacks with
    ``h[mask]``, so its global branch is the identity: ``out = Norm3(h +
    MLP(h))`` with ``h = Norm2(x + Dropout(x))`` (plus the local branch).
    It takes no hierarchy (a ``hierarchy`` keyword goes to the local conv,
    or nowhere without one), the HSAConv's parameters get no gradient, and
    ``reset_parameters`` fails on MultiheadAttention's private
    ``_reset_parameters``."""
    with pytest.raises(ValueError, match='hsa is not supported'):
        GPSConv(8, None, attn_type='hsa')

    torch.manual_seed(0)
    gps = GPSConv(8, None, heads=2, norm=None)
    gps.attn = HSAConv(8, 4, heads=2, root_weight=False)
    gps.eval()
    x = randn(NUM_LEAVES, 8)
    edge_index, _ = random_edges(NUM_LEAVES, 0)
    out = gps(x, edge_index)
    torch.testing.assert_close(out, 2 * x + gps.mlp(2 * x))
    # Any hierarchy, or none: the same output.
    flat = Hierarchy.from_parent([NUM_LEAVES] * NUM_LEAVES + [-1], NUM_LEAVES)
    for hierarchy in (example_hierarchy(), flat):
        torch.testing.assert_close(gps(x, edge_index, hierarchy=hierarchy),
                                   out)
    out.sum().backward()
    assert all(p.grad is None for p in gps.attn.parameters())
    with pytest.raises(AttributeError, match='_reset_parameters'):
        gps.reset_parameters()
    # With a local conv the hierarchy keyword reaches the conv instead.
    gps = GPSConv(8, gin(8), heads=2)
    gps.attn = HSAConv(8, 4, heads=2)
    with pytest.raises(TypeError, match='hierarchy'):
        gps(x, edge_index, hierarchy=flat)

    # The same attention in HSAGPSConv does read the hierarchy.
    layer = HSAGPSConv(8, None, heads=2, norm=None).eval()
    assert not torch.allclose(layer(x, edge_index, example_hierarchy()),
                              layer(x, edge_index, flat))
