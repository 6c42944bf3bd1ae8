r"""Models with hierarchical self-attention under :func:`torch.compile`.

The tree-following part of :class:`~hsa_geo.nn.HSAConv` is a compile
boundary (:func:`torch.compiler.disable`): what surrounds it is traced, the
attention runs eagerly. Checked on batches of real molecules of different
sizes (RDKit's NCI set through
:class:`~hsa_geo.transforms.MoleculeHierarchy`): the compiled frames stop
growing after the second batch (the first compiles with static sizes, the
second once more with dynamic ones), outputs and gradients equal eager
ones, and ``fullgraph=True`` fails at the boundary with a message that
names it.
"""
import copy
import os
from typing import Callable, Dict, List

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GINEConv

from hsa_geo.nn import HSAConv, HSAGPSConv, HSATransformerLayer
from hsa_geo.nn.models import HSAGraphTransformer
from tests.helpers.gps import signals

pytestmark = pytest.mark.usefixtures('one_thread')

NUM_BATCHES = 6
BATCH_SIZE = 5
CHANNELS, HEADS = 16, 4
ATOM_FEATURES, BOND_FEATURES = 9, 3
# AOT autograd decomposes the norms' backward, which sums in another order.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4),
       torch.float64: dict(rtol=1e-12, atol=1e-12)}


class ConvNet(torch.nn.Module):
    r"""Two :class:`HSAConv` layers (the first with a gated skip) on
    encoded atom features."""
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(ATOM_FEATURES, CHANNELS)
        self.conv1 = HSAConv(CHANNELS, CHANNELS // HEADS, heads=HEADS,
                             beta=True)
        self.conv2 = HSAConv(CHANNELS, CHANNELS // HEADS, heads=HEADS)

    def forward(self, x, edge_index, edge_attr, hierarchy):
        x = self.conv1(self.encoder(x), hierarchy).relu()
        return self.conv2(x, hierarchy)


class TransformerNet(torch.nn.Module):
    r"""An :class:`HSATransformerLayer` with bond features as pair bias."""
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(ATOM_FEATURES, CHANNELS)
        self.layer = HSATransformerLayer(CHANNELS, heads=HEADS,
                                         edge_dim=BOND_FEATURES)

    def forward(self, x, edge_index, edge_attr, hierarchy):
        return self.layer(self.encoder(x), hierarchy, edge_index, edge_attr)


class GPSNet(torch.nn.Module):
    r"""An :class:`HSAGPSConv` layer with GINE as its local layer."""
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(ATOM_FEATURES, CHANNELS)
        mlp = torch.nn.Sequential(torch.nn.Linear(CHANNELS, CHANNELS),
                                  torch.nn.ReLU(),
                                  torch.nn.Linear(CHANNELS, CHANNELS))
        self.layer = HSAGPSConv(
            CHANNELS, GINEConv(mlp, edge_dim=BOND_FEATURES), heads=HEADS)

    def forward(self, x, edge_index, edge_attr, hierarchy):
        return self.layer(self.encoder(x), edge_index, hierarchy,
                          edge_attr=edge_attr)


class GraphTransformerNet(torch.nn.Module):
    r"""An :class:`HSAGraphTransformer` of two blocks (GINE, edge
    features in the attention too), one prediction per atom."""
    def __init__(self):
        super().__init__()
        self.model = HSAGraphTransformer(
            ATOM_FEATURES, CHANNELS, 1, num_layers=2, heads=HEADS,
            local_conv='gine', edge_dim=BOND_FEATURES)

    def forward(self, x, edge_index, edge_attr, hierarchy):
        return self.model(x, edge_index, hierarchy, edge_attr)


MODELS: Dict[str, Callable[[], torch.nn.Module]] = {
    'hsa_conv': ConvNet,
    'transformer_layer': TransformerNet,
    'gps_conv': GPSNet,
    'graph_transformer': GraphTransformerNet,
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    r"""Every test compiles from scratch and leaves no compiled code."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope='module')
def molecule_batches() -> List:
    r""":data:`NUM_BATCHES` batches of :data:`BATCH_SIZE` molecules each,
    every batch a different hierarchy with a different number of atoms."""
    pytest.importorskip('rdkit')
    from rdkit import Chem, RDConfig, rdBase

    from hsa_geo.transforms import MoleculeHierarchy
    transform = MoleculeHierarchy()
    path = os.path.join(RDConfig.RDDataDir, 'NCI', 'first_5K.smi')
    data = []
    with open(path) as f, rdBase.BlockLogs():
        for line in f:
            smiles = line.split()[0]
            if Chem.MolFromSmiles(smiles) is not None:
                data.append(transform(smiles))
            if len(data) == NUM_BATCHES * BATCH_SIZE:
                break
    batches = list(DataLoader(data, batch_size=BATCH_SIZE))
    assert len({b.num_nodes for b in batches}) > 1
    return batches


def inputs(batch, dtype: torch.dtype):
    r"""The model's inputs: float atom and bond features (the atom
    features require grad) and the batch's hierarchy."""
    x = batch.x.to(dtype).requires_grad_()
    return x, batch.edge_index, batch.edge_attr.to(dtype), batch.hierarchy


def forward_backward(model, args):
    out = model(*args)
    out.pow(2).sum().backward()
    return out.detach()


def assert_same_step(eager, model, compiled, batch, dtype):
    r"""One forward+backward of :obj:`eager` and of :obj:`compiled` (the
    compiled :obj:`model`) on the batch: equal outputs, input gradients and
    parameter gradients."""
    args, args_c = inputs(batch, dtype), inputs(batch, dtype)
    expected = forward_backward(eager, args)
    actual = forward_backward(compiled, args_c)
    tol = TOL[dtype]
    torch.testing.assert_close(actual, expected, **tol)
    torch.testing.assert_close(args_c[0].grad, args[0].grad, **tol)
    grads = dict(model.named_parameters())
    for name, p in eager.named_parameters():
        torch.testing.assert_close(
            grads[name].grad, p.grad, **tol,
            msg=lambda text, name=name: f'gradient of {name}: {text}')
    eager.zero_grad()
    model.zero_grad()


def make_pair(name: str, dtype: torch.dtype):
    r"""A model and an independent copy with the same weights."""
    torch.manual_seed(0)
    eager = MODELS[name]().to(dtype)
    return eager, copy.deepcopy(eager)


@pytest.mark.parametrize('name', list(MODELS))
def test_no_recompiles_after_the_second_batch(name, molecule_batches):
    r"""``aot_eager`` (forward and backward graphs, no code generation)
    behind a frame counter: outputs and gradients equal eager on every
    batch, and from the third batch on nothing is compiled again."""
    eager, model = make_pair(name, torch.float32)
    counter = CompileCounterWithBackend('aot_eager')
    compiled = torch.compile(model, backend=counter)
    frames = []
    for i, batch in enumerate(molecule_batches):
        # A recompile from the third batch on is an error, not a silent
        # fallback to eager once the recompile limit is reached.
        with torch._dynamo.config.patch(error_on_recompile=i >= 2):
            assert_same_step(eager, model, compiled, batch, torch.float32)
        frames.append(counter.frame_count)
    assert frames[0] > 0
    assert frames[1] == frames[-1], frames


def test_float64_matches_eager(molecule_batches):
    eager, model = make_pair('hsa_conv', torch.float64)
    compiled = torch.compile(model, backend='aot_eager')
    for batch in molecule_batches[:3]:
        assert_same_step(eager, model, compiled, batch, torch.float64)


def test_dynamic_sizes_compile_once(molecule_batches):
    r"""With ``dynamic=True`` the first batch already compiles with dynamic
    sizes: no recompile at all."""
    counter = CompileCounter()
    torch.manual_seed(0)
    compiled = torch.compile(ConvNet(), backend=counter, dynamic=True)
    for i, batch in enumerate(molecule_batches[:4]):
        with torch._dynamo.config.patch(error_on_recompile=i >= 1):
            compiled(*inputs(batch, torch.float32)).sum().backward()
    # two graphs per layer: before and after the attention
    assert counter.frame_count == 4


def test_attention_is_a_graph_break():
    counter = CompileCounter()
    torch.manual_seed(0)
    model = ConvNet()
    signal = signals(ATOM_FEATURES)[0]
    explanation = torch._dynamo.explain(model)(
        signal.x, None, None, signal.hierarchy)
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert len(reasons) == 2  # one per HSAConv
    assert all('HSAConv._attend' in r for r in reasons)
    assert explanation.graph_count == 4
    torch.compile(model, backend=counter)(signal.x, None, None,
                                          signal.hierarchy)
    assert counter.frame_count == 4


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(CHANNELS)
        self.conv = HSAConv(CHANNELS, CHANNELS // HEADS, heads=HEADS)

    def forward(self, x, hierarchy):
        return x + self.conv(self.norm(x), hierarchy).relu()


class BlockLoop(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x, hierarchy):
        for block in self.blocks:
            x = block(x, hierarchy)
        return x


def test_layers_in_a_loop_compile_as_blocks():
    r"""A graph break inside a loop makes Dynamo run the loop's own frame
    eagerly; a block called in it is still compiled around its
    attention."""
    counter = CompileCounterWithBackend('eager')
    torch.manual_seed(0)
    signal = signals(CHANNELS)[0]
    torch.compile(BlockLoop(), backend=counter)(signal.x, signal.hierarchy)
    ops = {node.target for graph in counter.graphs
           for node in graph.graph.nodes
           if node.op in ('call_function', 'call_method')}
    assert torch.nn.functional.layer_norm in ops and 'relu' in ops


@pytest.mark.parametrize('name', ['hsa_conv', 'graph_transformer'])
def test_fullgraph_fails_at_the_attention(name):
    r"""``fullgraph=True`` refuses the graph break at the attention: Dynamo's
    :class:`~torch._dynamo.exc.Unsupported` (a :class:`RuntimeError`) that
    names the disabled method."""
    torch.manual_seed(0)
    model = MODELS[name]()
    signal = signals(ATOM_FEATURES, edge_dim=BOND_FEATURES)[0]
    compiled = torch.compile(model, backend=CompileCounter(), fullgraph=True)
    with pytest.raises(torch._dynamo.exc.Unsupported,
                       match=r'(?s)torch\.compiler\.disable.*'
                       r'HSAConv\._attend') as info:
        compiled(signal.x, signal.edge_index, signal.edge_attr,
                 signal.hierarchy)
    assert isinstance(info.value, RuntimeError)
    assert 'hsa_conv.py' in str(info.value)  # the call site in forward
