r"""The dynamic program on an accelerator, against the dense reference and
the dynamic program on the CPU, in float64: random irregular forests, the
paths that only some shapes take (the pair list and its sparse kernels, the
fused leaf tables, wide families streamed as softmax attention, family
graphs with pair biases), gradients to second order, and
:class:`~hsa_geo.nn.HSAConv`.

The device is ``cuda`` unless the environment variable
``HSA_GEO_TEST_DEVICE`` names another; skipped where it is missing
(``benchmarks/run_accelerator.sh`` runs this file on a GPU machine).
``HSA_GEO_TEST_DEVICE=cpu`` runs the same checks on the CPU."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hsa_geo import Hierarchy, hierarchical_attention
from hsa_geo.nn import HSAConv
from tests.helpers.attention import dense_output, fragment_forest, \
    max_err, seeded_qkv
from tests.helpers.strategies import Forest, flat_tree, forests

DEVICE = torch.device(os.environ.get('HSA_GEO_TEST_DEVICE', 'cuda'))


def _present(device: torch.device) -> bool:
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError):  # (no driver, or not compiled)
        return False
    return True


pytestmark = pytest.mark.skipif(not _present(DEVICE),
                                reason=f'needs the device {DEVICE}')


def same_device(device: torch.device, wanted: torch.device) -> bool:
    # 'cuda' names the current GPU: a tensor on it says 'cuda:0'.
    return device.type == wanted.type and wanted.index in (None, device.index)


EXACT = 1e-10  # float64 agreement between independent constructions
SEEDS = st.integers(0, 2**31 - 1)


def check_against_cpu(hierarchy: Hierarchy, q, k, v, pair_bias=None):
    r"""Output against the dense reference (without a bias) and the CPU's
    dynamic program, gradients against the CPU's."""
    on_device = [x.to(DEVICE, copy=True).requires_grad_() for x in (q, k, v)]
    cpu = [x.clone().requires_grad_() for x in (q, k, v)]
    out = hierarchical_attention(
        *on_device, hierarchy.to(DEVICE),
        pair_bias=None if pair_bias is None else pair_bias.to(DEVICE))
    assert same_device(out.device, DEVICE)
    expected = hierarchical_attention(*cpu, hierarchy, pair_bias=pair_bias)
    if pair_bias is None:
        assert max_err(out, dense_output(q, k, v, hierarchy)) < EXACT
    assert max_err(out, expected) < EXACT
    w = torch.randn_like(expected)
    (out * w.to(DEVICE)).sum().backward()
    (expected * w).sum().backward()
    for a, b in zip(on_device, cpu):
        assert max_err(a.grad, b.grad) < EXACT


@settings(max_examples=25, deadline=None)
@given(f=forests(max_leaves=30), heads=st.sampled_from([1, 3]),
       d=st.integers(1, 4), seed=SEEDS)
def test_random_forests_match_the_dense_reference(f: Forest, heads, d, seed):
    hierarchy = Hierarchy.from_parent(f.parent, f.num_leaves)
    check_against_cpu(hierarchy, *seeded_qkv(f.num_leaves, heads, d, seed))


def test_many_small_trees_on_the_pair_list():
    # 64 molecule-like trees of 3-11 leaves: the pair list and its sparse
    # kernels.
    g = torch.Generator().manual_seed(0)
    hierarchy = fragment_forest(
        torch.randint(3, 12, (64, ), generator=g).tolist())
    assert hierarchy.layout.sparse.num_members > 0
    check_against_cpu(hierarchy, *seeded_qkv(hierarchy.num_leaves, 4, 8, 1))


@pytest.mark.parametrize('num_leaves', [40, 130])
def test_wide_family_streamed_as_softmax_attention(num_leaves):
    f = flat_tree(num_leaves)
    hierarchy = Hierarchy.from_parent(f.parent, f.num_leaves)
    q, k, v = seeded_qkv(num_leaves, 2, 16, num_leaves)
    check_against_cpu(hierarchy, q, k, v)
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
    out = hierarchical_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE),
                                 hierarchy.to(DEVICE))
    assert max_err(out, expected) < EXACT


def test_balanced_tree_with_a_family_graph_and_bias():
    # 256 leaves in families of 8, three levels: the fused leaf tables.
    assignments = [torch.arange(256) // 8, torch.arange(32) // 8,
                   torch.zeros(4, dtype=torch.long)]
    hierarchy = Hierarchy.from_assignments(assignments)
    pairs = hierarchy.sibling_pairs
    off = pairs[:, pairs[0] != pairs[1]]
    keep = torch.rand(off.size(1),
                      generator=torch.Generator().manual_seed(2)) < 0.6
    graph = hierarchy.with_family_graph(off[:, keep])
    q, k, v = seeded_qkv(256, 2, 4, 3)
    bias = torch.randn(graph.sibling_pairs.size(1), 2, dtype=torch.float64)
    check_against_cpu(hierarchy, q, k, v)
    check_against_cpu(graph, q, k, v, pair_bias=bias)


def test_second_derivatives():
    f = Forest([5, 5, 6, 6, 6, 7, 7, -1], 5)
    hierarchy = Hierarchy.from_parent(f.parent, f.num_leaves).to(DEVICE)
    inputs = [x.to(DEVICE).requires_grad_() for x in seeded_qkv(5, 2, 3, 4)]

    def run(q, k, v):
        return hierarchical_attention(q, k, v, hierarchy)

    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


def test_hsa_conv_on_the_device_matches_the_cpu():
    f = Forest([8, 8, 9, 9, 9, 10, 10, 10, 10, 10, -1], 8)
    hierarchy = Hierarchy.from_parent(f.parent, f.num_leaves)
    torch.manual_seed(0)
    conv = HSAConv(6, 4, heads=2).double()
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    out = conv(x, hierarchy)
    out.square().sum().backward()
    moved = HSAConv(6, 4, heads=2).double().to(DEVICE)
    moved.load_state_dict(conv.state_dict())
    x_moved = x.detach().to(DEVICE, copy=True).requires_grad_()
    out_moved = moved(x_moved, hierarchy.to(DEVICE))
    out_moved.square().sum().backward()
    assert max_err(out_moved, out) < EXACT
    assert max_err(x_moved.grad, x.grad) < EXACT
    for (name, p), p_moved in zip(conv.named_parameters(),
                                  moved.parameters()):
        assert max_err(p_moved.grad, p.grad) < EXACT, name


def test_synchronisations_per_step():
    """On a GPU, a forward+backward on a derived layout waits for the device
    at most once on the pair list (its check for non-finite values), as the
    host reads counted on the CPU (``test_host_reads_per_step``)."""
    if DEVICE.type != 'cuda':
        pytest.skip('counts CUDA synchronisations')
    import warnings
    h = fragment_forest([5, 9, 3, 12, 7] * 8).to(DEVICE)
    qkv = [x.to(DEVICE).requires_grad_()
           for x in seeded_qkv(h.num_leaves, 4, 8, 0)]
    hierarchical_attention(*qkv, h).sum().backward()  # derives the layout
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            hierarchical_attention(*qkv, h).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught
             if 'synchroniz' in str(w.message).lower()]
    assert len(syncs) <= 1, syncs


def test_dense_reference_on_the_device():
    r"""The dense matrix (the reference, and what the attention picture
    draws) computes on the device of its inputs, as on the CPU."""
    from hsa_geo import hierarchical_attention_matrix
    h = fragment_forest([3, 2, 4, 2])
    q, k, _ = seeded_qkv(h.num_leaves, 2, 4, 0)
    out = hierarchical_attention_matrix(q.to(DEVICE), k.to(DEVICE),
                                        h.to(DEVICE))
    assert same_device(out.device, DEVICE)
    assert max_err(out.cpu(), hierarchical_attention_matrix(q, k, h)) < EXACT
