r"""Bad input to :class:`hsa_geo.nn.HSAConv`,
:class:`hsa_geo.nn.HSATransformerLayer` and
:class:`hsa_geo.nn.FamilyGeometryBias` (no silent wrong answers): a
wrong type raises :class:`TypeError`, a value out of range
:class:`ValueError`, both naming the argument; nothing is silently accepted
and no error comes from deep inside torch. The property tests draw random
values of every kind for each argument and accept only a clear error or a
working module."""
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo import Hierarchy, NestedSignal
from hsa_geo.nn import FamilyGeometryBias, HSAConv, HSATransformerLayer

pytestmark = pytest.mark.usefixtures('one_thread')

# Leaves 0..6 under clusters 7 (0, 1, 2), 8 (3, 4) and root 9 (7, 8, 6);
# leaf 5 is a tree of its own.
PARENT = [7, 7, 7, 8, 8, -1, 9, 9, 9, -1]
NUM_LEAVES = 7
CLEAR = (TypeError, ValueError)

# Any small value of any plain kind: what a caller might pass by mistake.
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.just([2]), st.just(torch.tensor(2)))


def example_hierarchy() -> Hierarchy:
    return Hierarchy.from_parent(PARENT, NUM_LEAVES)


# HSAConv: constructor #######################################################


@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(heads=2.5), TypeError, "'heads' must be an int"),
    (dict(heads=True), TypeError, "'heads' must be an int"),
    (dict(heads=0), ValueError, "'heads' must be an int in"),
    (dict(in_channels=0), ValueError, "'in_channels' must be a positive"),
    (dict(in_channels=-2), ValueError, "'in_channels' must be a positive"),
    (dict(in_channels=4.0), TypeError, "'in_channels' must be an int"),
    (dict(out_channels='3'), TypeError, "'out_channels' must be an int"),
    (dict(out_channels=3.0), TypeError, "'out_channels' must be an int"),
    (dict(dropout='0.1'), TypeError, "'dropout' must be a real number"),
    (dict(dropout=float('nan')), ValueError, "'dropout' must be a finite"),
    (dict(dropout=torch.tensor(0.1)), TypeError, "'dropout' must be a real"),
    (dict(concat=1), TypeError, "'concat' must be True or False"),
    (dict(beta='yes'), TypeError, "'beta' must be True or False"),
    (dict(bias=None), TypeError, "'bias' must be True or False"),
    (dict(root_weight=0), TypeError, "'root_weight' must be True or False"),
    (dict(geometry_bias=1), TypeError, "'geometry_bias' must be True or"),
    (dict(max_branching=1), ValueError, "'max_branching' must be an int in"),
    (dict(max_branching=4.0), TypeError, "'max_branching' must be an int"),
    (dict(num_levels=0), ValueError, "'num_levels' must be an int in"),
    (dict(num_levels=True), TypeError, "'num_levels' must be an int"),
    # MessagePassing arguments the dynamic program cannot honour
    (dict(aggr='mean'), ValueError, "cannot honour aggr='mean'"),
    (dict(aggr='max'), ValueError, "cannot honour aggr='max'"),
    (dict(flow='target_to_source'), ValueError, 'cannot honour flow'),
    (dict(decomposed_layers=2), ValueError,
     'cannot honour decomposed_layers=2'),
    (dict(decomposed_layers=True), ValueError, 'cannot honour'),
    (dict(aggr_kwargs={'p': 2}), ValueError, 'cannot honour aggr_kwargs'),
    (dict(node_dim=1), ValueError, "'node_dim' is fixed to 0"),
])
def test_conv_rejects_bad_arguments(kwargs, error, pattern):
    args = dict(in_channels=8, out_channels=4)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        HSAConv(**args)


def test_conv_lazy_in_channels_stays_allowed():
    conv = HSAConv(-1, 4, heads=2)
    assert conv(torch.randn(NUM_LEAVES, 5), example_hierarchy()).shape == \
        (NUM_LEAVES, 8)


# HSAConv: forward ###########################################################


@pytest.mark.parametrize('x,hierarchy,error,pattern', [
    (torch.randn(NUM_LEAVES, 3), 'example', ValueError,
     r"'x' has 3 features but"),
    (torch.randint(0, 5, (NUM_LEAVES, 4)), 'example', TypeError,
     r"'x' must be a floating point tensor"),
    (torch.randn(NUM_LEAVES, 4, dtype=torch.float64), 'example', TypeError,
     r"'x' has dtype torch.float64 but the layer"),
    (torch.randn(NUM_LEAVES, 0), 'example', ValueError,
     r"'x' has 0 features"),
    (torch.randn(0, 4), 'example', ValueError,
     r'0 rows but the hierarchy has 7'),
    (torch.randn(NUM_LEAVES, 4), torch.tensor(PARENT), TypeError,
     r"'hierarchy' must be a hsa_geo.data.Hierarchy"),
    (torch.randn(NUM_LEAVES, 4), None, TypeError,
     r"'hierarchy' must be a hsa_geo.data.Hierarchy"),
])
def test_conv_forward_rejects_bad_input(x, hierarchy, error, pattern):
    conv = HSAConv(4, 3, heads=2)
    if isinstance(hierarchy, str):
        hierarchy = example_hierarchy()
    with pytest.raises(error, match=pattern):
        conv(x, hierarchy)


def test_conv_forward_rejects_an_object_whose_hierarchy_is_not_one():
    conv = HSAConv(4, 3)
    data = SimpleNamespace(hierarchy=PARENT)
    with pytest.raises(TypeError, match=r"'hierarchy' must be a hsa_geo"):
        conv(torch.randn(NUM_LEAVES, 4), data)


@pytest.mark.parametrize('flag', ['yes', 0, 1, torch.tensor(True)])
def test_conv_rejects_non_bool_return_attention_weights(flag):
    # Set means 'return the weights' whatever the bool, so a value that is
    # no bool is refused rather than read as True or False.
    conv = HSAConv(4, 3)
    with pytest.raises(TypeError, match="'return_attention_weights' must"):
        conv(torch.randn(NUM_LEAVES, 4), example_hierarchy(),
             return_attention_weights=flag)


# HSATransformerLayer ########################################################


@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(ff_channels=0), ValueError, "'ff_channels' must be an int in"),
    (dict(ff_channels=-4), ValueError, "'ff_channels' must be an int in"),
    (dict(ff_channels=16.0), TypeError, "'ff_channels' must be an int"),
    (dict(heads=3), ValueError, r"'heads' \(3\) must divide 'channels'"),
    (dict(heads=True), TypeError, "'heads' must be an int"),
    (dict(heads=0), ValueError, "'heads' must be an int in"),
    (dict(channels=0), ValueError, "'channels' must be an int in"),
    (dict(channels=8.0), TypeError, "'channels' must be an int"),
    (dict(dropout=1.0), ValueError, "'dropout' must be a finite number"),
    (dict(dropout=-0.5), ValueError, "'dropout' must be a finite number"),
    (dict(attn_dropout=1.5), ValueError, "'attn_dropout' must be a finite"),
    (dict(dropout='0.1'), TypeError, "'dropout' must be a real number"),
    (dict(act='no_such_act'), ValueError, "'act'='no_such_act' is not"),
    (dict(act='swish'), ValueError, "'act'='swish' is not"),
    (dict(act=3), TypeError, "'act' must be the name of an activation"),
    (dict(act_kwargs=[1]), TypeError, "'act_kwargs' must be a dict"),
    (dict(act_kwargs=dict(nope=1)), TypeError, "'act_kwargs' do not fit"),
    (dict(act=torch.nn.ReLU(), act_kwargs=dict(inplace=True)), ValueError,
     "'act_kwargs' only apply"),
])
def test_layer_rejects_bad_arguments(kwargs, error, pattern):
    args = dict(channels=8, heads=2)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        HSATransformerLayer(**args)


def test_layer_ff_channels_none_and_module_act():
    layer = HSATransformerLayer(8, heads=2, ff_channels=None,
                                act=torch.nn.Tanh())
    assert layer.mlp[0].out_features == 32
    assert isinstance(layer.mlp[1], torch.nn.Tanh)
    layer = HSATransformerLayer(8, ff_channels=5, act='leaky_relu',
                                act_kwargs=dict(negative_slope=0.2))
    assert layer.mlp[0].out_features == 5
    assert layer.mlp[1].negative_slope == 0.2


@pytest.mark.parametrize('x,hierarchy,error,pattern', [
    (torch.randn(NUM_LEAVES, 6), None, ValueError, r"'x' has 6 features"),
    (torch.randn(NUM_LEAVES), None, ValueError, r"'x' must be a \[N, F\]"),
    ([[0.0] * 8], None, TypeError, r"'x' must be a floating point tensor"),
    (torch.randn(NUM_LEAVES, 8, dtype=torch.float64), None, TypeError,
     r"'x' has dtype torch.float64"),
    (torch.randn(3, 8), None, ValueError, r'3 rows but the hierarchy has 7'),
    (torch.randn(NUM_LEAVES, 8), 'tree', TypeError, r"'hierarchy' must be"),
])
def test_layer_forward_rejects_bad_input(x, hierarchy, error, pattern):
    layer = HSATransformerLayer(8, heads=2)
    with pytest.raises(error, match=pattern):
        layer(x, example_hierarchy() if hierarchy is None else hierarchy)


# FamilyGeometryBias #########################################################


@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(heads=True), TypeError, "'heads' must be an int"),
    (dict(heads=2.0), TypeError, "'heads' must be an int"),
    (dict(heads=0), ValueError, "'heads' must be an int in"),
    (dict(max_branching=1), ValueError, "'max_branching' must be an int in"),
    (dict(max_branching='4'), TypeError, "'max_branching' must be an int"),
    (dict(num_levels=0), ValueError, "'num_levels' must be an int in"),
    (dict(level=1), TypeError, "'level' must be 'height' or 'depth'"),
    (dict(level='width'), ValueError, "'level' must be 'height' or 'depth'"),
])
def test_geometry_bias_rejects_bad_arguments(kwargs, error, pattern):
    args = dict(heads=2)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        FamilyGeometryBias(**args)


@pytest.mark.parametrize('value', [None, torch.tensor(PARENT), PARENT])
def test_geometry_bias_forward_rejects_non_hierarchy(value):
    with pytest.raises(TypeError, match="'hierarchy' must be a hsa_geo"):
        FamilyGeometryBias(2)(value)


def test_geometry_bias_refuses_pairs_that_cannot_fit(monkeypatch):
    r"""Its index temporaries (about 104 bytes per sibling pair) are
    refused before they are allocated, even where the pair list itself
    (24 bytes per pair) would fit."""
    import hsa_geo._memory as memory
    n = 2000  # one family: 4,000,000 pairs
    h = Hierarchy.from_parent([n] * n + [-1], n)
    bias = FamilyGeometryBias(4)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 200e6)
    with pytest.raises(ValueError, match='the geometry bias of 4000000 '
                       'sibling pairs would need .* the widest family '
                       r'\(node 2000\) has 2000 children'):
        bias(h)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 600e6)
    assert bias(h).shape == (n * n, 4)


# Property tests: a clear error or a working module ##########################

# Each argument drawn from its valid values or from anything: both branches
# run, and an error must name an argument that was drawn from anything.
CONV_ARGS = dict(
    in_channels=st.one_of(st.just(-1), st.integers(1, 9)),
    out_channels=st.integers(1, 6), heads=st.integers(1, 4),
    concat=st.booleans(), beta=st.booleans(), dropout=st.floats(0.0, 0.9),
    bias=st.booleans(), root_weight=st.booleans(),
    geometry_bias=st.booleans(), max_branching=st.integers(4, 8),
    num_levels=st.integers(3, 6))


def draw_args(data, valid, bad):
    r"""One value per argument of :obj:`valid`: from its valid values,
    or from :data:`ANYTHING` for the arguments in :obj:`bad`."""
    return {name: data.draw(ANYTHING if name in bad else strategy, name)
            for name, strategy in valid.items()}


def assert_names_one_of(error: Exception, bad):
    assert any(f"'{name}'" in str(error) for name in bad), (bad, error)


@given(st.data(), st.sets(st.sampled_from(sorted(CONV_ARGS)), max_size=2))
def test_conv_arguments_property(data, bad):
    args = draw_args(data, CONV_ARGS, bad)
    try:
        conv = HSAConv(**args)
    except CLEAR as e:
        assert_names_one_of(e, bad)
        return
    x = torch.randn(NUM_LEAVES, 5 if conv.in_channels == -1 else
                    conv.in_channels)
    out = conv(x, example_hierarchy())
    width = conv.out_channels * (conv.heads if conv.concat else 1)
    assert out.shape == (NUM_LEAVES, width)
    assert bool(out.isfinite().all())


FLOAT_DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool]


KINDS = ['hierarchy', 'signal', 'tensor', 'none', 'list']


@given(st.one_of(
    st.tuples(st.just([NUM_LEAVES, 4]), st.just(torch.float32),
              st.sampled_from(KINDS[:2])),  # valid
    st.tuples(st.lists(st.integers(0, 9), max_size=3),
              st.sampled_from(FLOAT_DTYPES), st.sampled_from(KINDS))))
def test_conv_forward_property(args):
    shape, dtype, kind = args
    conv = HSAConv(4, 3, heads=2)
    x = torch.zeros(shape, dtype=dtype)
    h = example_hierarchy()
    hierarchy = dict(hierarchy=h, tensor=torch.tensor(PARENT), none=None,
                     list=PARENT,
                     signal=NestedSignal.from_hierarchy(h))[kind]
    try:
        out = conv(x, hierarchy)
    except CLEAR as e:
        assert "'x'" in str(e) or "'hierarchy'" in str(e) or \
            "dtype" in str(e), e
        assert shape != [NUM_LEAVES, 4] or dtype != torch.float32 \
            or kind not in ('hierarchy', 'signal')
        return
    assert out.shape == (NUM_LEAVES, 6)


LAYER_ARGS = dict(channels=st.integers(1, 4).map(lambda c: 2 * c),
                  heads=st.just(2), dropout=st.floats(0.0, 0.9),
                  attn_dropout=st.floats(0.0, 0.9),
                  ff_channels=st.one_of(st.none(), st.integers(1, 16)),
                  act=st.sampled_from(['gelu', 'relu']),
                  act_kwargs=st.none())


@given(st.data(), st.sets(st.sampled_from(sorted(LAYER_ARGS)), max_size=1))
def test_layer_arguments_property(data, bad):
    try:
        layer = HSATransformerLayer(**draw_args(data, LAYER_ARGS, bad))
    except CLEAR as e:
        assert_names_one_of(e, bad)
        return
    out = layer(torch.randn(NUM_LEAVES, layer.channels), example_hierarchy())
    assert out.shape == (NUM_LEAVES, layer.channels)
    assert bool(out.isfinite().all())


GEOMETRY_ARGS = dict(heads=st.integers(1, 4), max_branching=st.integers(4, 8),
                     num_levels=st.integers(3, 6),
                     level=st.sampled_from(['height', 'depth']))


@given(st.data(), st.sets(st.sampled_from(sorted(GEOMETRY_ARGS)),
                          max_size=1))
def test_geometry_bias_arguments_property(data, bad):
    try:
        bias = FamilyGeometryBias(**draw_args(data, GEOMETRY_ARGS, bad))
    except CLEAR as e:
        assert_names_one_of(e, bad)
        return
    out = bias(example_hierarchy())
    assert out.shape == (example_hierarchy().sibling_pairs.size(1),
                         bias.heads)
    assert bool(out.isfinite().all())


@pytest.mark.parametrize('kwargs', [dict(aggr='add'), dict(aggr='sum'),
                                    dict(flow='source_to_target'),
                                    dict(decomposed_layers=1)])
def test_conv_accepts_what_it_honours(kwargs):
    h = example_hierarchy()
    conv = HSAConv(4, 3, heads=2, **kwargs)
    assert conv(torch.randn(NUM_LEAVES, 4), h).shape == (NUM_LEAVES, 6)


def test_conv_explains_why_there_is_no_bipartite_form():
    h = example_hierarchy()
    x = torch.randn(NUM_LEAVES, 4)
    with pytest.raises(TypeError, match='not a bipartite .* self-attention '
                       'among the leaves of one hierarchy'):
        HSAConv(4, 3)((x, x), h)
