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
from hsa_geo.nn.hetero_hsa_conv import HeteroHSAConv
from tests.helpers.strategies import forests

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


def expected(conv, data):
    r"""The layer by its definition: per-type projections, the dense HSA
    matrix with the modality bias of every sibling pair, per-type skips."""
    h, c = conv.heads, conv.out_channels
    order = data.leaf_types
    q, k, v = (torch.cat([
        (data[t].x @ conv.lin_qkv[t].weight.t() +
         conv.lin_qkv[t].bias)[:, i * h * c:(i + 1) * h * c]
        for t in order]).view(-1, h, c) for i in range(3))
    bias = None
    if conv.modality_bias is not None:
        leaf_type = torch.cat([torch.full((data[t].x.size(0), ),
                                          conv.leaf_types.index(t))
                               for t in order])
        m = modality_by_definition(data.hierarchy, leaf_type,
                                   len(conv.leaf_types))
        a, b = data.hierarchy.sibling_pairs
        bias = conv.modality_bias[m[a], m[b]]
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
