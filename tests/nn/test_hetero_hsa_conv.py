r"""HeteroHSAConv: per-type projections, one exact HSA over all leaf types,
checked against the dense reference in float64."""
import pytest
import torch
from hypothesis import given, strategies as st
from torch_geometric.loader import DataLoader

from hsa_geo import Hierarchy, hierarchical_attention_matrix
from hsa_geo.data import HeteroNestedSignal
from hsa_geo.data.hetero_nested_signal import node_modality
from hsa_geo.data.hierarchy import distinct_sibling_pairs
from hsa_geo.functional import leaf_attention_weights
from hsa_geo.nn.hetero_hsa_conv import HeteroHSAConv
from tests.helpers.layers import linear
from tests.helpers.strategies import forests, leaves_under

SEEDS = st.integers(0, 2**31 - 1)
WIDTH = {'word': 3, 'patch': 5, 'atom': 2}


def signal(f, seed, types=('word', 'patch', 'atom'), family=False):
    r"""The forest's leaves split into the types in order; with
    :obj:`family`, a random family graph of about half the sibling
    pairs."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randint(0, f.num_leaves + 1, (len(types) - 1, ),
                         generator=g).sort().values.tolist()
    bounds = [0] + cuts + [f.num_leaves]
    x_dict = {t: torch.randn(bounds[i + 1] - bounds[i], WIDTH[t],
                             generator=g, dtype=torch.float64)
              for i, t in enumerate(types)}
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    if family:
        pairs = distinct_sibling_pairs(h.parent, h.num_leaves)
        h = h.with_family_graph(
            pairs[:, torch.rand(pairs.size(1), generator=g) < 0.5])
    return HeteroNestedSignal.from_hierarchy(h, x_dict)


def expected(conv, data, edge_bias=None):
    r"""The layer by its definition: per-type projections, the dense HSA
    matrix with the modality bias (and :obj:`edge_bias`) of every sibling
    pair, per-type skips."""
    h, c = conv.heads, conv.out_channels
    order = data.leaf_types
    q, k, v = (torch.cat([linear(lins[t], data[t].x) for t in order]).view(
        -1, h, c) for lins in (conv.lin_query, conv.lin_key, conv.lin_value))
    bias = None
    if conv.modality_bias is not None:
        leaf_type = torch.cat([torch.full((data[t].x.size(0), ),
                                          conv.leaf_types.index(t))
                               for t in order])
        m = modality_by_definition(data.hierarchy, leaf_type,
                                   len(conv.leaf_types))
        a, b = data.hierarchy.sibling_pairs
        bias = conv.modality_bias[m[a], m[b]]
    if edge_bias is not None:
        bias = edge_bias if bias is None else bias + edge_bias
    Q = hierarchical_attention_matrix(q, k, data.hierarchy, pair_bias=bias)
    out = torch.einsum('hij,jhd->ihd', Q, v).reshape(-1, h * c)
    parts = dict(zip(order, out.split([data[t].x.size(0) for t in order])))
    return {t: y + conv.lin_skip[t](data[t].x) for t, y in parts.items()}


def modality_by_definition(hierarchy, leaf_type, mixed):
    parent = hierarchy.parent.tolist()
    n = hierarchy.num_leaves
    types = [set() for _ in parent]
    for leaf in range(n):
        node = leaf
        while node >= 0:
            types[node].add(int(leaf_type[leaf]))
            node = parent[node]
    return torch.tensor([s.pop() if len(s) == 1 else mixed for s in types])


@given(f=forests(max_leaves=18, root_leaves=False), seed=SEEDS,
       heads=st.integers(1, 2), with_bias=st.booleans(),
       family=st.booleans())
def test_matches_the_dense_definition(f, seed, heads, with_bias, family):
    torch.manual_seed(seed)
    data = signal(f, seed, family=family)
    conv = HeteroHSAConv(WIDTH, 2, list(WIDTH), heads=heads,
                         modality_bias=with_bias).double()
    if with_bias:
        torch.nn.init.normal_(conv.modality_bias)
    out = conv(data.x_dict, data)
    want = expected(conv, data)
    for t in data.leaf_types:
        assert torch.allclose(out[t], want[t], atol=1e-10)


EDGE_TYPES = {('word', 'next', 'word'): 2, ('patch', 'shows', 'word'): 3}


def with_edges(data, seed):
    r"""Random edges of both edge types, with features."""
    g = torch.Generator().manual_seed(seed)
    for (src, rel, dst), width in EDGE_TYPES.items():
        ns, nd = data[src].x.size(0), data[dst].x.size(0)
        e = 6 if ns and nd else 0
        data[src, rel, dst].edge_index = torch.stack([
            torch.randint(0, max(ns, 1), (e, ), generator=g),
            torch.randint(0, max(nd, 1), (e, ), generator=g)])
        data[src, rel, dst].edge_attr = torch.randn(e, width, generator=g,
                                                    dtype=torch.float64)
    return data


def edge_bias_by_definition(conv, data):
    r"""Per sibling pair (a, b): the mean of W_r e over the edges, of all
    types, from a leaf under a to another leaf under b."""
    h = data.hierarchy
    start = {t: s.start for t, s in data.leaf_slices.items()}
    under = leaves_under(h.parent.tolist(), h.num_leaves)
    edges = []
    for (src, rel, dst) in EDGE_TYPES:
        store = data[src, rel, dst]
        value = conv.lin_edge['__'.join((src, rel, dst))](store.edge_attr)
        for (i, j), val in zip(store.edge_index.t().tolist(), value):
            edges.append((i + start[src], j + start[dst], val))
    rows = []
    for a, b in h.sibling_pairs.t().tolist():
        vals = [val for i, j, val in edges
                if i != j and i in under[a] and j in under[b]]
        rows.append(torch.stack(vals).mean(0) if vals else
                    torch.zeros(conv.heads, dtype=torch.float64))
    return torch.stack(rows)


@given(f=forests(max_leaves=14, root_leaves=False), seed=SEEDS,
       with_bias=st.booleans())
def test_edge_features_match_the_dense_definition(f, seed, with_bias):
    torch.manual_seed(seed)
    data = with_edges(signal(f, seed, types=('word', 'patch')), seed)
    conv = HeteroHSAConv({'word': 3, 'patch': 5}, 2, ['word', 'patch'],
                         heads=2, modality_bias=with_bias,
                         edge_dim=EDGE_TYPES).double()
    if with_bias:
        torch.nn.init.normal_(conv.modality_bias)
    attr = {e: data[e].edge_attr for e in EDGE_TYPES}
    out = conv(data.x_dict, data, edge_attr_dict=attr)
    want = expected(conv, data, edge_bias_by_definition(conv, data))
    for t in data.leaf_types:
        assert torch.allclose(out[t], want[t], atol=1e-10)


def test_edge_features_are_checked():
    f = forests_example()
    data = with_edges(signal(f, 0, types=('word', 'patch')), 0)
    conv = HeteroHSAConv(-1, 2, ['word', 'patch'], edge_dim={
        ('word', 'next', 'word'): -1}).double()
    with pytest.raises(ValueError, match='pass edge_attr_dict'):
        conv(data.x_dict, data)
    with pytest.raises(ValueError, match=r'must be \[E, F\]'):
        conv(data.x_dict, data, edge_attr_dict={
            ('word', 'next', 'word'): torch.randn(1, 2)})
    with pytest.raises(ValueError, match=r"\[0, 0\] = 9 is not a leaf of "
                       r"type 'word'"):
        conv(data.x_dict, data, edge_attr_dict={
            ('word', 'next', 'word'): torch.randn(1, 2, dtype=torch.float64)},
            edge_index_dict={('word', 'next', 'word'): torch.tensor([[9],
                                                                     [0]])})
    with pytest.raises(ValueError, match="not one of this layer's"):
        conv(data.x_dict, data, edge_attr_dict={
            ('word', 'rev_next', 'word'): torch.randn(1, 2)})
    plain = HeteroHSAConv(-1, 2, ['word', 'patch']).double()
    with pytest.raises(ValueError, match='has no edge_dim'):
        plain(data.x_dict, data, edge_attr_dict={})
    with pytest.raises(ValueError, match='between leaf types'):
        HeteroHSAConv(-1, 2, ['word'], edge_dim={('word', 'x', 'atom'): 2})
    # ('a__b', 'r', 'c') and ('a', 'b__r', 'c') would share one key.
    for rel in ('x__y', 'x.y'):
        with pytest.raises(ValueError, match="without '__' or '.'"):
            HeteroHSAConv(-1, 2, ['word'], edge_dim={('word', rel, 'word'): 2})
    assert 'edge_types' in repr(conv)


@pytest.mark.parametrize('kwargs,error,pattern', [
    (dict(in_channels=0), ValueError,
     r"'in_channels\['word'\]' must be a positive int, or -1"),
    (dict(in_channels={'word': 3, 'patch': -2}), ValueError,
     r"'in_channels\['patch'\]' must be a positive int, or -1"),
    (dict(in_channels={'word': 3}), TypeError,
     r"'in_channels\['patch'\]' must be an int"),
    (dict(edge_dim={('word', 'next', 'word'): 0}), ValueError,
     r"'edge_dim\[\('word', 'next', 'word'\)\]' must be a positive int"),
])
def test_widths_positive_or_inferred(kwargs, error, pattern):
    kwargs = dict(dict(in_channels=-1, out_channels=2,
                       leaf_types=['word', 'patch']), **kwargs)
    with pytest.raises(error, match=pattern):
        HeteroHSAConv(**kwargs)


def forests_example():
    from tests.helpers.strategies import Forest
    return Forest(parent=[6, 6, 6, 7, 7, 7, 8, 8, -1], num_leaves=6)


@given(f=forests(max_leaves=20, root_leaves=False), seed=SEEDS)
def test_node_modality(f, seed):
    g = torch.Generator().manual_seed(seed)
    h = Hierarchy.from_parent(f.parent, f.num_leaves)
    leaf_type = torch.randint(0, 2, (f.num_leaves, ), generator=g)
    assert torch.equal(node_modality(h, leaf_type, 2),
                       modality_by_definition(h, leaf_type, 2))


def test_batches_lazy_widths_weights_and_gradients():
    fs = [Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5),
          Hierarchy.from_parent([4, 4, 4, 4, -1], 4)]
    items = [HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(2, 3, dtype=torch.float64),
            'patch': torch.randn(h.num_leaves - 2, 5, dtype=torch.float64)})
        for h in fs]
    batch = next(iter(DataLoader(items, batch_size=2)))
    conv = HeteroHSAConv(-1, 2, ['word', 'patch'], heads=2,
                         modality_bias=True)
    conv({t: x.float() for t, x in batch.x_dict.items()}, batch)  # widths
    conv = conv.double()
    torch.nn.init.normal_(conv.modality_bias)
    out, (pairs, weight) = conv(batch.x_dict, batch,
                                return_attention_weights=True)
    assert out['word'].shape == (4, 4) and out['patch'].shape == (5, 4)
    assert pairs.shape == (2, weight.size(0)) and weight.size(1) == 2
    for i, item in enumerate(items):  # the batch is its signals, apart
        alone = conv(item.x_dict, item)
        for t in ('word', 'patch'):
            rows = slice(int(batch[t].ptr[i]), int(batch[t].ptr[i + 1]))
            assert torch.allclose(out[t][rows], alone[t], atol=1e-12)
    x = {t: v.clone().requires_grad_() for t, v in items[0].x_dict.items()}
    assert torch.autograd.gradcheck(
        lambda w, p: tuple(conv({'word': w, 'patch': p}, items[0]).values()),
        (x['word'], x['patch']))


def test_a_hierarchy_takes_the_layer_order():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 5)})
    conv = HeteroHSAConv(WIDTH, 4, ['word', 'patch'])
    a, b = conv(data.x_dict, data), conv(data.x_dict, h)
    assert all(torch.allclose(a[t], b[t]) for t in a)
    # The signal's order differs from the layer's: its plain hierarchy
    # would be read in the layer's order, pairing leaves with wrong rows.
    other = HeteroNestedSignal.from_hierarchy(
        Hierarchy.from_parent([5, 5, 6, 6, 6, -1, 5], 5),
        {'patch': torch.randn(2, 5), 'word': torch.randn(3, 3)})
    conv(other.x_dict, other)
    with pytest.raises(ValueError, match=r"x_dict lists \['patch', "
                       r"'word'\]: pass the HeteroNestedSignal"):
        conv(other.x_dict, other.hierarchy)


def test_state_with_one_fused_projection_loads():
    r"""A state saved with one fused projection per type, ``lin_qkv``
    (rows q, k, v), loads into the three projections."""
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 5)})
    conv = HeteroHSAConv(WIDTH, 4, ['word', 'patch'], heads=2)
    state = conv.state_dict()
    for t in ('word', 'patch'):
        for name in ('weight', 'bias'):
            state[f'lin_qkv.{t}.{name}'] = torch.cat(
                [state.pop(f'lin_{lin}.{t}.{name}')
                 for lin in ('query', 'key', 'value')])
    other = HeteroHSAConv(WIDTH, 4, ['word', 'patch'], heads=2)
    other.load_state_dict(state)
    a, b = conv(data.x_dict, data), other(data.x_dict, data)
    assert all(torch.equal(a[t], b[t]) for t in a)


def test_pair_biases_that_cannot_fit_are_refused(monkeypatch):
    import hsa_geo._memory as memory
    n = 2000  # one family: 4,000,000 pairs
    h = Hierarchy.from_parent([n] * n + [-1], n)
    data = HeteroNestedSignal.from_hierarchy(h, {'word': torch.randn(n, 3)})
    conv = HeteroHSAConv(3, 2, ['word'], heads=2, modality_bias=True)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 200e6)
    with pytest.raises(ValueError, match='the pair biases of 4000000 '
                       'sibling pairs would need'):
        conv(data.x_dict, data)


def test_bad_input():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 5)})
    conv = HeteroHSAConv(WIDTH, 4, ['word', 'patch'])
    with pytest.raises(ValueError, match=r"x_dict\['patch'\] must be"):
        conv({'word': data['word'].x}, data)
    with pytest.raises(ValueError, match="holds 4 leaves"):
        conv({'word': torch.randn(2, 3), 'patch': torch.randn(2, 5)}, h)
    with pytest.raises(TypeError, match='HeteroNestedSignal or a Hierarchy'):
        conv(data.x_dict, 'tree')
    with pytest.raises(ValueError, match="'atom' is not one"):
        HeteroHSAConv(WIDTH, 4, ['word', 'patch'])(
            data.x_dict, HeteroNestedSignal.from_hierarchy(
                h, {'word': torch.randn(3, 3), 'atom': torch.randn(2, 2)}))
    with pytest.raises(ValueError, match='distinct node type names'):
        HeteroHSAConv(3, 4, ['word', 'word'])
    for name in ('word.piece', '', 3):
        with pytest.raises(ValueError, match="non-empty strings without"):
            HeteroHSAConv(3, 4, ['patch', name])


def test_every_type_must_fit_the_signal_and_the_layer():
    r"""Each leaf type's rows are its leaves in the signal (not only the
    total), and its width and dtype those of its projections."""
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 4), 'patch': torch.randn(2, 4)})
    conv = HeteroHSAConv(4, 4, ['word', 'patch'], modality_bias=True)
    with pytest.raises(ValueError, match=r"x_dict\['word'\] has 2 rows but "
                       r"the signal has 3 leaves of type 'word'"):
        conv({'word': torch.randn(2, 4), 'patch': torch.randn(3, 4)}, data)
    with pytest.raises(ValueError, match=r"'x_dict\['word'\]' has 5 "
                       r"features but the layer takes 4 "
                       r"\(in_channels\['word'\]\)"):
        conv({'word': torch.randn(3, 5), 'patch': torch.randn(2, 4)}, data)
    with pytest.raises(TypeError, match=r"'x_dict\['word'\]' has dtype "
                       r"torch.float64 but the layer's weights "
                       r"torch.float32"):
        conv({t: x.double() for t, x in data.x_dict.items()}, data)
    with pytest.raises(TypeError, match=r"'x_dict\['word'\]' must be a "
                       r"floating point tensor"):
        conv({t: x.long() for t, x in data.x_dict.items()}, data)
    # A lazy layer takes any width once, then that width.
    lazy = HeteroHSAConv({'word': -1, 'patch': 4}, 4, ['word', 'patch'])
    assert lazy(data.x_dict, data)['word'].shape == (3, 4)
    with pytest.raises(ValueError, match=r"'x_dict\['word'\]' has 2 "
                       r"features but the layer takes 4"):
        lazy({'word': torch.randn(3, 2), 'patch': torch.randn(2, 4)}, data)


def test_features_the_layer_would_drop_are_refused():
    r"""Features of a type that is not one of the signal's leaf types (a
    typo, a type the signal lacks) would be dropped: they raise; cluster
    features and empty tensors of other types are left alone."""
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 4), 'patch': torch.randn(2, 4)})
    conv = HeteroHSAConv(4, 4, ['word', 'patch', 'atom'])
    x_dict = dict(data.x_dict)
    for extra in ('wrod', 'atom'):
        with pytest.raises(ValueError, match=rf"x_dict\['{extra}'\] holds "
                           rf"features, but '{extra}' is not a leaf type"):
            conv({**x_dict, extra: torch.randn(2, 4)}, data)
    expected = conv(x_dict, data)
    for kept in ({'atom': torch.randn(0, 4)},
                 {'cluster': torch.randn(2, 7)}):
        out = conv({**x_dict, **kept}, data)
        assert out.keys() == expected.keys()
        for t in out:
            assert torch.equal(out[t], expected[t])
    # A plain hierarchy: the layer's own types are the leaf types.
    two = HeteroHSAConv(4, 4, ['word', 'patch'])
    with pytest.raises(ValueError, match=r"x_dict\['atom'\] holds"):
        two({**x_dict, 'atom': torch.randn(1, 4)}, h)


def test_return_attention_weights_must_be_a_bool():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 5)})
    conv = HeteroHSAConv(WIDTH, 4, ['word', 'patch'])
    for value in ('no', 1, 0):
        with pytest.raises(TypeError, match="'return_attention_weights' "
                           "must be True or False"):
            conv(data.x_dict, data, return_attention_weights=value)
    for value in (True, False):
        out = conv(data.x_dict, data, return_attention_weights=value)
        assert isinstance(out, tuple) and len(out[1]) == 2
        # The family weights leaf_attention_weights takes.
        alpha = leaf_attention_weights(out[1], data.hierarchy,
                                       torch.tensor([[0, 1], [1, 0]]))
        assert alpha.shape == (2, conv.heads)


def test_edge_features_must_fit_the_layer():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 3)})
    edge_type = ('word', 'r', 'patch')
    edge_index = {edge_type: torch.tensor([[0, 1], [0, 1]])}
    conv = HeteroHSAConv(3, 4, ['word', 'patch'], edge_dim={edge_type: 2})
    with pytest.raises(ValueError, match=r"has 3 features but the layer "
                       r"takes 2 \(edge_dim\[\('word', 'r', 'patch'\)\]\)"):
        conv(data.x_dict, data, edge_attr_dict={edge_type: torch.randn(2, 3)},
             edge_index_dict=edge_index)
    with pytest.raises(TypeError, match=r"edge_attr_dict\[\('word', 'r', "
                       r"'patch'\)\]' has dtype torch.float64"):
        conv(data.x_dict, data, edge_attr_dict={
            edge_type: torch.randn(2, 2, dtype=torch.float64)},
            edge_index_dict=edge_index)
    out = conv(data.x_dict, data, edge_attr_dict={edge_type: torch.randn(
        2, 2)}, edge_index_dict=edge_index)
    assert out['word'].shape == (3, 4)


def test_edges_the_layer_would_ignore_are_refused():
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 3)})
    edge_type, other = ('word', 'r', 'patch'), ('patch', 'r', 'word')
    edges = torch.tensor([[0], [1]])
    plain = HeteroHSAConv(3, 4, ['word', 'patch'])
    with pytest.raises(ValueError, match="edge_index_dict was given but this "
                       "layer has no edge_dim, so it would be ignored"):
        plain(data.x_dict, data, edge_index_dict={edge_type: edges})
    conv = HeteroHSAConv(3, 4, ['word', 'patch'], edge_dim={edge_type: 2})
    attr = {edge_type: torch.randn(1, 2)}
    with pytest.raises(ValueError, match=r"edge_index_dict has edge type "
                       r"\('patch', 'r', 'word'\), which is not one of this "
                       r"layer's edge_dim .*, so it would be ignored"):
        conv(data.x_dict, data, edge_attr_dict=attr,
             edge_index_dict={edge_type: edges, other: edges.flip(0)})
    with pytest.raises(TypeError, match="'edge_index_dict' must map edge "
                       "types"):
        conv(data.x_dict, data, edge_attr_dict=attr, edge_index_dict=edges)
    out = conv(data.x_dict, data, edge_attr_dict=attr,
               edge_index_dict={edge_type: edges})
    assert out['patch'].shape == (2, 4)


@pytest.mark.parametrize('value', [float('nan'), float('inf'),
                                   float('-inf')])
def test_edge_features_must_be_finite(value):
    # An inf would bias its pair by -inf, silently forbidding it.
    h = Hierarchy.from_parent([5, 5, 5, 6, 6, -1, 5], 5)
    data = HeteroNestedSignal.from_hierarchy(
        h, {'word': torch.randn(3, 3), 'patch': torch.randn(2, 3)})
    edge_type = ('word', 'r', 'patch')
    conv = HeteroHSAConv(3, 4, ['word', 'patch'], edge_dim={edge_type: 2})
    attr = torch.randn(2, 2)
    attr[1, 0] = value
    with pytest.raises(ValueError, match=r"edge_attr_dict\[\('word', 'r', "
                       r"'patch'\)\]' row 1 \(edge 1\) holds NaN or inf"):
        conv(data.x_dict, data, edge_attr_dict={edge_type: attr},
             edge_index_dict={edge_type: torch.tensor([[0, 1], [0, 1]])})


@pytest.mark.parametrize('kwargs,shown', [
    (dict(), ''),
    (dict(concat=False), 'concat=False, '),
    (dict(dropout=0.5), 'dropout=0.5, '),
    (dict(bias=False), 'bias=False, '),
    (dict(root_weight=False), 'root_weight=False, '),
    (dict(concat=False, dropout=0.5, bias=False, root_weight=False),
     'concat=False, dropout=0.5, bias=False, root_weight=False, '),
])
def test_repr_shows_every_non_default_option(kwargs, shown):
    conv = HeteroHSAConv(3, 4, ['word', 'patch'], heads=2, **kwargs)
    assert repr(conv) == (
        f"HeteroHSAConv({{'word': 3, 'patch': 3}}, 4, heads=2, {shown}"
        f"leaf_types=['word', 'patch'], modality_bias=False)")
