r"""Tests of :class:`hsa_geo.nn.EdgePairBias` and ``HSAConv(edge_dim=...)``:
the bias against a plain-Python construction (lowest common ancestors from
the parent list, mean per sibling pair), HSA with the bias against the dense
HSA matrix, softmax attention with the edge features as an additive mask on
flat trees, gradients through the edge projection, and bad input."""
import pytest
import torch
from hypothesis import given, strategies as st

from hsa_geo import Hierarchy, hierarchical_attention, \
    hierarchical_attention_matrix
from hsa_geo.nn import EdgePairBias, HSAConv
from tests.helpers.layers import queries_keys_values
from tests.helpers.strategies import (
    fewer, Forest, flat_tree, forests, lca_children)

SEEDS = st.integers(0, 2**31 - 1)
EXACT = 1e-10

pytestmark = pytest.mark.usefixtures('one_thread')

PARENT = [7, 7, 7, 8, 8, -1, 9, 9, 9, -1]
NUM_LEAVES = 7


def build(f: Forest) -> Hierarchy:
    return Hierarchy.from_parent(f.parent, f.num_leaves)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_edges(num_leaves: int, seed: int, edge_dim: int = 3):
    r"""Random leaf edges, repeats and self-loops included, with float64
    features."""
    gen = generator(seed)
    num_edges = int(torch.randint(0, 3 * num_leaves + 1, (1, ),
                                  generator=gen))
    edge_index = torch.randint(0, num_leaves, (2, num_edges), generator=gen)
    edge_attr = torch.randn(num_edges, edge_dim, dtype=torch.float64,
                            generator=gen)
    return edge_index, edge_attr


def projected(module: EdgePairBias, edge_attr):
    lin = module.lin
    return edge_attr @ lin.weight.t() + lin.bias


def reference_bias(f: Forest, h: Hierarchy, module: EdgePairBias,
                   edge_index, edge_attr):
    r"""Plain Python: the children ``(a, b)`` of the lowest common ancestor
    of every edge from the parent list, the mean projected feature per
    pair, 0 for pairs without edges."""
    value = projected(module, edge_attr)
    per_pair = {}
    for e, (i, j) in enumerate(edge_index.t().tolist()):
        if i == j:
            continue
        found = lca_children(f.parent, i, j)
        if found is None:
            continue
        per_pair.setdefault(found[1:], []).append(value[e])
    rows = []
    for a, b in h.sibling_pairs.t().tolist():
        vals = per_pair.get((a, b))
        rows.append(torch.stack(vals).mean(0) if vals else
                    value.new_zeros(module.heads))
    return torch.stack(rows) if rows else value.new_zeros(0, module.heads)


def dense_edge_mask(module, num_leaves, edge_index, edge_attr):
    r"""``[H, N, N]`` additive mask: the mean projected feature of the
    edges ``(i, j)``, 0 elsewhere and on the diagonal."""
    value = projected(module, edge_attr)
    total = value.new_zeros(num_leaves, num_leaves, module.heads)
    count = value.new_zeros(num_leaves, num_leaves, 1)
    i, j = edge_index
    total.index_put_((i, j), value, accumulate=True)
    count.index_put_((i, j), torch.ones_like(value[:, :1]), accumulate=True)
    mask = total / count.clamp(min=1)
    mask[torch.arange(num_leaves), torch.arange(num_leaves)] = 0
    return mask.permute(2, 0, 1)


# The bias ##################################################################


@given(forests(max_leaves=14), st.sampled_from([1, 3]), SEEDS)
def test_bias_equals_plain_python_construction(f, heads, seed):
    h = build(f)
    edge_index, edge_attr = random_edges(f.num_leaves, seed)
    torch.manual_seed(seed)
    module = EdgePairBias(3, heads).double()
    bias = module(h, edge_index, edge_attr)
    assert bias.shape == (h.num_sibling_pairs, heads)
    expected = reference_bias(f, h, module, edge_index, edge_attr)
    torch.testing.assert_close(bias, expected, rtol=0, atol=EXACT)


@fewer(2)
@given(forests(max_leaves=10), st.sampled_from([1, 2]), SEEDS)
def test_hsa_with_edge_bias_equals_dense_matrix(f, heads, seed):
    h = build(f)
    edge_index, edge_attr = random_edges(f.num_leaves, seed)
    torch.manual_seed(seed)
    module = EdgePairBias(3, heads).double()
    bias = module(h, edge_index, edge_attr)
    gen = generator(seed + 1)
    q, k, v = (torch.randn(f.num_leaves, heads, 4, dtype=torch.float64,
                           generator=gen) for _ in range(3))
    out = hierarchical_attention(q, k, v, h, pair_bias=bias)
    att = hierarchical_attention_matrix(q, k, h, pair_bias=bias)
    torch.testing.assert_close(out, torch.einsum('hij,jhc->ihc', att, v),
                               rtol=0, atol=EXACT)


@given(st.integers(1, 12), st.sampled_from([1, 3]), SEEDS)
def test_flat_tree_is_softmax_with_edge_mask(num_leaves, heads, seed):
    r"""For sibling leaves a block is one entry: the bias is exactly the
    edge's, and HSA is softmax attention with an additive float mask."""
    h = build(flat_tree(num_leaves))
    edge_index, edge_attr = random_edges(num_leaves, seed)
    torch.manual_seed(seed)
    module = EdgePairBias(3, heads).double()
    gen = generator(seed + 1)
    q, k, v = (torch.randn(num_leaves, heads, 4, dtype=torch.float64,
                           generator=gen) for _ in range(3))
    out = hierarchical_attention(q, k, v, h,
                                 pair_bias=module(h, edge_index, edge_attr))
    mask = dense_edge_mask(module, num_leaves, edge_index, edge_attr)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
        attn_mask=mask).transpose(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=EXACT)


def test_ignored_edges_and_no_edges_give_zero():
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    module = EdgePairBias(2, 2)
    # A self-loop, and edges to and from leaf 5, a tree of its own.
    edge_index = torch.tensor([[2, 5, 0], [2, 0, 5]])
    bias = module(h, edge_index, torch.randn(3, 2))
    assert torch.equal(bias, torch.zeros(h.num_sibling_pairs, 2))
    empty = module(h, torch.empty(2, 0, dtype=torch.long),
                   torch.empty(0, 2))
    assert torch.equal(empty, torch.zeros(h.num_sibling_pairs, 2))


def test_block_mean_above_the_leaves():
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    module = EdgePairBias(1, 1)
    # Leaves 0, 1 under 7 and leaf 3 under 8: both edges are block (7, 8).
    bias = module(h, torch.tensor([[0, 1], [3, 4]]),
                  torch.tensor([[1.0], [3.0]]))
    row = h.sibling_pairs.t().tolist().index([7, 8])
    expected = module.lin.weight[0, 0] * 2.0 + module.lin.bias[0]
    torch.testing.assert_close(bias[row, 0], expected)
    assert int((bias != 0).sum()) == 1


def test_repr_and_reset():
    module = EdgePairBias(4, 2)
    assert repr(module) == 'EdgePairBias(edge_dim=4, heads=2)'
    before = module.lin.weight.detach().clone()
    torch.manual_seed(123)
    module.reset_parameters()
    assert not torch.equal(before, module.lin.weight)


# HSAConv(edge_dim=...) #####################################################


def test_conv_forward_backward():
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    conv = HSAConv(5, 4, heads=2, edge_dim=3, geometry_bias=True)
    edge_index = torch.tensor([[0, 1, 3, 0, 6], [1, 0, 4, 3, 2]])
    edge_attr = torch.randn(5, 3)
    x = torch.randn(NUM_LEAVES, 5, requires_grad=True)
    out = conv(x, h, edge_index, edge_attr)
    assert out.shape == (NUM_LEAVES, 8)
    out.square().sum().backward()
    assert conv.lin_edge.lin.weight.grad is not None
    assert bool(conv.lin_edge.lin.weight.grad.abs().sum() > 0)
    assert x.grad is not None
    # The edge bias enters: other edge features, another output.
    other = conv(x, h, edge_index, edge_attr + 1)
    assert not torch.allclose(out, other)
    out_w, (pair_index, alpha) = conv(x, h, edge_index, edge_attr,
                                      return_attention_weights=True)
    torch.testing.assert_close(out_w, out)
    assert alpha.shape == (h.num_sibling_pairs, 2)


def test_conv_equals_hsa_with_edge_bias():
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    conv = HSAConv(4, 3, heads=2, edge_dim=2, root_weight=False).double()
    edge_index = torch.tensor([[0, 1, 3, 0, 6], [1, 0, 4, 3, 2]])
    edge_attr = torch.randn(5, 2, dtype=torch.float64)
    x = torch.randn(NUM_LEAVES, 4, dtype=torch.float64)
    q, k, v = queries_keys_values(conv, x)
    att = hierarchical_attention_matrix(
        q, k, h, pair_bias=conv.lin_edge(h, edge_index, edge_attr))
    expected = torch.einsum('hij,jhc->ihc', att, v).reshape(NUM_LEAVES, 6)
    torch.testing.assert_close(conv(x, h, edge_index, edge_attr), expected,
                               rtol=0, atol=EXACT)


def test_conv_gradcheck_through_edge_projection():
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    conv = HSAConv(3, 2, heads=2, edge_dim=2).double()
    edge_index = torch.tensor([[0, 1, 3, 0, 6, 2], [1, 0, 4, 3, 2, 6]])
    edge_attr = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(NUM_LEAVES, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, e: conv(x, h, edge_index, e), (x, edge_attr))
    # Through the projection's own weight and bias.
    lin = conv.lin_edge.lin
    params = (lin.weight.detach().clone().requires_grad_(),
              lin.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda w, b: torch.func.functional_call(
            conv, {'lin_edge.lin.weight': w, 'lin_edge.lin.bias': b},
            (x.detach(), h, edge_index, edge_attr.detach())), params)


def test_conv_repr_and_reset():
    conv = HSAConv(16, 8, heads=2, edge_dim=5)
    assert repr(conv) == 'HSAConv(16, 8, heads=2, edge_dim=5)'
    again = eval(repr(conv))
    assert [p.shape for p in again.parameters()] == \
        [p.shape for p in conv.parameters()]
    assert repr(HSAConv(16, 8, heads=2, bias=False, edge_dim=1)) == \
        'HSAConv(16, 8, heads=2, bias=False, edge_dim=1)'
    before = conv.lin_edge.lin.weight.detach().clone()
    torch.manual_seed(7)
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_edge.lin.weight)


def test_third_positional_argument_is_edge_index():
    """As in TransformerConv, the flag is a keyword: a bool in the place of
    edge_index is refused, not read as the flag."""
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    conv = HSAConv(4, 3, heads=2)
    x = torch.randn(NUM_LEAVES, 4)
    with pytest.raises((TypeError, ValueError), match='edge_index'):
        conv(x, h, True)
    out, (pair_index, alpha) = conv(x, h, return_attention_weights=True)
    torch.testing.assert_close(out, conv(x, h))
    assert torch.equal(pair_index, h.sibling_pairs)


# Bad input #################################################################


@pytest.mark.parametrize('edge_dim,error,pattern', [
    (0, ValueError, r"'edge_dim' must be an int in \[1, inf\)"),
    (-1, ValueError, r"'edge_dim' must be an int in \[1, inf\)"),
    (True, TypeError, r"'edge_dim' must be an int"),
    (2.5, TypeError, r"'edge_dim' must be an int"),
    ('3', TypeError, r"'edge_dim' must be an int"),
])
def test_bad_edge_dim(edge_dim, error, pattern):
    with pytest.raises(error, match=pattern):
        HSAConv(4, 3, edge_dim=edge_dim)
    with pytest.raises(error, match=pattern):
        EdgePairBias(edge_dim, 2)


E = 3
GOOD_INDEX = torch.tensor([[0, 1, 3], [1, 0, 4]])


@pytest.mark.parametrize('edge_index,edge_attr,error,pattern', [
    (GOOD_INDEX, None, ValueError, r"'edge_attr' is missing"),
    (None, torch.randn(E, 2), ValueError, r"'edge_index' is missing"),
    (None, None, ValueError, r"'edge_index' is missing"),
    (GOOD_INDEX.float(), torch.randn(E, 2), TypeError,
     r"'edge_index' must have an integer dtype"),
    (GOOD_INDEX.tolist(), torch.randn(E, 2), TypeError,
     r"'edge_index' must be an integer tensor"),
    (GOOD_INDEX[0], torch.randn(E, 2), ValueError,
     r"'edge_index' must have shape \[2, E\]"),
    (GOOD_INDEX.t(), torch.randn(E, 2), ValueError,
     r"'edge_index' must have shape \[2, E\]"),
    (torch.tensor([[0, 1], [1, 7]]), torch.randn(2, 2), ValueError,
     r"'edge_index' holds ids from 0 to 7 but the hierarchy has 7 leaves"),
    (torch.tensor([[0, -1], [1, 2]]), torch.randn(2, 2), ValueError,
     r"'edge_index' holds ids from -1 to 2"),
    (GOOD_INDEX, torch.randn(E, 3), ValueError,
     r"'edge_attr' must have shape \[E, edge_dim\] = \[3, 2\]"),
    (GOOD_INDEX, torch.randn(E + 1, 2), ValueError,
     r"'edge_attr' must have shape \[E, edge_dim\] = \[3, 2\]"),
    (GOOD_INDEX, torch.randn(E * 2), ValueError,
     r"'edge_attr' must have shape"),
    (GOOD_INDEX, torch.ones(E, 2, dtype=torch.long), TypeError,
     r"'edge_attr' must be a floating point tensor"),
    (GOOD_INDEX, torch.randn(E, 2, dtype=torch.float64), TypeError,
     r"'edge_attr' has dtype torch.float64"),
    (GOOD_INDEX, torch.tensor([[0., 1], [2, float('nan')], [0, 0]]),
     ValueError, r"'edge_attr' row 1 \(edge 1\) holds NaN or inf"),
    (GOOD_INDEX, torch.tensor([[0., 1], [2, 0], [float('-inf'), 0]]),
     ValueError, r"'edge_attr' row 2 \(edge 2\) holds NaN or inf"),
])
def test_conv_rejects_bad_edges(edge_index, edge_attr, error, pattern):
    conv = HSAConv(4, 3, heads=2, edge_dim=2)
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    with pytest.raises(error, match=pattern):
        conv(torch.randn(NUM_LEAVES, 4), h, edge_index, edge_attr)


@pytest.mark.parametrize('dtype', [torch.float32, torch.long])
def test_conv_refuses_a_sparse_adjacency(dtype):
    conv = HSAConv(4, 3, heads=2, edge_dim=2)
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    adj = torch.sparse_coo_tensor(GOOD_INDEX, torch.ones(E, dtype=dtype),
                                  (NUM_LEAVES, NUM_LEAVES))
    with pytest.raises(TypeError, match=r"'edge_index' must be a dense "
                       r"integer tensor, got a sparse one.*to_edge_index"):
        conv(torch.randn(NUM_LEAVES, 4), h, adj, torch.randn(E, 2))


def test_conv_without_edge_dim_refuses_edges():
    conv = HSAConv(4, 3)
    h = Hierarchy.from_parent(PARENT, NUM_LEAVES)
    with pytest.raises(ValueError, match=r"build it with edge_dim"):
        conv(torch.randn(NUM_LEAVES, 4), h, GOOD_INDEX, torch.randn(E, 2))


def test_bias_rejects_a_non_hierarchy():
    with pytest.raises(TypeError, match=r"'hierarchy' must be a hsa_geo"):
        EdgePairBias(2, 1)(PARENT, GOOD_INDEX, torch.randn(E, 2))


def test_bias_refuses_pairs_that_cannot_fit(monkeypatch):
    r"""Its pair lists, sorted keys and output (about 96 bytes per sibling
    pair with 4 heads) are refused before they are allocated, even where
    the pair list itself (24 bytes per pair) would fit."""
    import hsa_geo._memory as memory
    n = 2000  # one family: 4,000,000 pairs
    h = Hierarchy.from_parent([n] * n + [-1], n)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    bias = EdgePairBias(2, 4)
    monkeypatch.setattr(memory, 'available_memory', lambda device: 200e6)
    with pytest.raises(ValueError, match='the edge bias of 4000000 sibling '
                       'pairs would need .* the widest family '
                       r'\(node 2000\) has 2000 children'):
        bias(h, edge_index, torch.randn(2, 2))
    monkeypatch.setattr(memory, 'available_memory', lambda device: 600e6)
    assert bias(h, edge_index, torch.randn(2, 2)).shape == (n * n, 4)
