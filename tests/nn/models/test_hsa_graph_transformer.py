r"""Tests of :class:`hsa_geo.nn.models.HSAGraphTransformer`: shapes for
every local layer and task, the model as its encoders, blocks and readout,
batches against each graph alone, training on tiny node- and graph-level
tasks (synthetic nested signals, and molecules with OGB's encoders when
RDKit is installed), edge features, options and bad input."""
import ast
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader
from torch_geometric.nn import GCNConv, GINConv, GINEConv, global_add_pool

from hsa_geo.nn import HSAGPSConv, models
from hsa_geo.nn.models import HSAGraphTransformer, hsa_graph_transformer
from tests.helpers.gps import molecules, signals

pytestmark = pytest.mark.usefixtures('one_thread')


def collate(data):
    return next(iter(DataLoader(data, batch_size=len(data))))


def run(model, batch):
    edge_attr = batch.edge_attr if model.edge_dim is not None else None
    return model(batch.x, batch.edge_index, batch, edge_attr, batch.batch)


@pytest.mark.parametrize('local_conv, conv_type', [
    ('gine', GINEConv), ('gin', GINConv), ('gcn', GCNConv), (None, None)])
@pytest.mark.parametrize('task', ['node', 'graph'])
def test_shapes_and_blocks(local_conv, conv_type, task):
    batch = collate(signals(5))
    model = HSAGraphTransformer(5, 8, 3, num_layers=2, heads=2,
                                local_conv=local_conv, edge_dim=3, task=task)
    out = run(model, batch)
    assert out.shape == ((batch.num_nodes, 3) if task == 'node' else
                         (batch.num_graphs, 3))
    assert len(model.convs) == 2
    assert all(isinstance(conv, HSAGPSConv) for conv in model.convs)
    if conv_type is not None:  # one local layer per block
        assert model.convs[0].conv is not model.convs[1].conv
    for conv in model.convs:
        assert (conv.conv is None) if conv_type is None else \
            isinstance(conv.conv, conv_type)
        assert conv.attn.edge_dim == 8  # encoded edge features


def test_model_is_encoders_blocks_and_readout():
    batch = collate(signals(5))
    torch.manual_seed(0)
    model = HSAGraphTransformer(5, 8, 2, heads=2, local_conv='gine',
                                edge_dim=3, task='graph', pool='add').eval()
    x = model.node_encoder(batch.x)
    edge_attr = model.edge_encoder(batch.edge_attr)
    for conv in model.convs:
        x = conv(x, batch.edge_index, batch.hierarchy, batch.batch,
                 edge_attr=edge_attr)
    expected = model.head(global_add_pool(x, batch.batch))
    torch.testing.assert_close(run(model, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize('task', ['node', 'graph'])
@pytest.mark.parametrize('norm', ['batch_norm', 'graph_norm'])
def test_batch_equals_each_graph_alone(task, norm):
    data = signals(5)
    torch.manual_seed(0)
    model = HSAGraphTransformer(5, 8, 2, heads=2, local_conv='gine',
                                edge_dim=3, task=task, norm=norm).eval()
    batch = collate(data)
    out = run(model, batch)
    for i, signal in enumerate(data):
        alone = model(signal.x, signal.edge_index, signal, signal.edge_attr)
        rows = out[batch.batch == i] if task == 'node' else out[i:i + 1]
        torch.testing.assert_close(rows, alone, rtol=1e-5, atol=1e-5)


def test_a_collated_hierarchy_gives_the_batch():
    """Without 'batch', a collated batch of signals is pooled graph by
    graph, not into one prediction."""
    torch.manual_seed(0)
    model = HSAGraphTransformer(5, 8, 2, heads=2, local_conv='gin',
                                task='graph').eval()
    batch = collate(signals(5))
    out = model(batch.x, batch.edge_index, batch)
    torch.testing.assert_close(out, model(batch.x, batch.edge_index, batch,
                                          batch=batch.batch))
    assert out.shape == (batch.num_graphs, 2)


def test_graph_task_refuses_a_plain_forest_without_batch():
    """A batch's plain Hierarchy does not say which trees are one graph:
    pooled, the whole batch would give one prediction."""
    torch.manual_seed(0)
    model = HSAGraphTransformer(5, 8, 2, heads=2, local_conv='gin',
                                task='graph').eval()
    batch = collate(signals(5))
    trees = batch.hierarchy.num_trees
    with pytest.raises(ValueError, match=f"'batch' is None and 'hierarchy' "
                       f"is a plain Hierarchy of {trees} trees"):
        model(batch.x, batch.edge_index, batch.hierarchy)
    assert model(batch.x, batch.edge_index, batch.hierarchy,
                 batch=batch.batch).shape == (batch.num_graphs, 2)
    one = torch.zeros(batch.num_nodes, dtype=torch.long)
    assert model(batch.x, batch.edge_index, batch.hierarchy,
                 batch=one).shape == (1, 2)


def train(model, batch, loss_fn, steps: int = 20):
    r"""Losses before and after :obj:`steps` full-batch Adam steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(run(model, batch), batch.y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_node_task_training_lowers_the_loss():
    batch = collate(signals(5, y='node'))
    torch.manual_seed(0)
    model = HSAGraphTransformer(5, 16, 2, heads=2, local_conv='gin')
    first, last = train(model, batch, F.cross_entropy)
    assert last < 0.5 * first


def test_graph_task_training_lowers_the_loss():
    batch = collate(signals(5, y='graph'))
    torch.manual_seed(0)
    model = HSAGraphTransformer(5, 16, 1, heads=2, local_conv='gine',
                                edge_dim=3, task='graph', pool='add',
                                norm='layer_norm')
    first, last = train(model, batch, F.mse_loss)
    assert last < 0.5 * first


def test_molecules_with_ogb_encoders():
    data = molecules()
    if data is None:
        pytest.skip('rdkit is not installed (pip install rdkit)')
    from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
    for i, mol in enumerate(data):
        mol.y = torch.tensor([[float(i % 2)]])
    batch = collate(data)
    torch.manual_seed(0)
    model = HSAGraphTransformer(
        9, 16, 1, heads=2, local_conv='gine', edge_dim=3, task='graph',
        node_encoder=AtomEncoder(16), edge_encoder=BondEncoder(16))
    first, last = train(model, batch,
                        F.binary_cross_entropy_with_logits, steps=15)
    assert last < 0.5 * first


def test_edge_features():
    batch = collate(signals(5))
    torch.manual_seed(0)
    # GIN ignores edges; the attention reads them.
    model = HSAGraphTransformer(5, 8, 2, local_conv='gin', edge_dim=3).eval()
    out = run(model, batch)
    assert not torch.allclose(out, model(batch.x, batch.edge_index, batch,
                                         2 * batch.edge_attr))
    with pytest.raises(ValueError, match="'edge_attr' is missing: the model "
                       "has edge_dim=3"):
        model(batch.x, batch.edge_index, batch)
    model = HSAGraphTransformer(5, 8, 2)
    assert model.edge_encoder is None and model.convs[0].attn.edge_dim is None
    with pytest.raises(ValueError, match="no edge features"):
        model(batch.x, batch.edge_index, batch, batch.edge_attr)


def test_options_lazy_input_and_reset_parameters():
    batch = collate(signals(5))
    model = HSAGraphTransformer(-1, 8, 2, heads=4, dropout=0.1,
                                attn_dropout=0.2,
                                attn_kwargs=dict(geometry_bias=True))
    assert run(model, batch).shape == (batch.num_nodes, 2)
    assert model.node_encoder.weight.shape == (8, 5)
    attn = model.convs[0].attn
    assert attn.dropout == 0.2 and attn.geometry_bias is not None
    assert model.convs[0].dropout == 0.1
    for p in model.parameters():
        torch.nn.init.constant_(p, 0.3)
    model.reset_parameters()
    changed = [not torch.equal(p, torch.full_like(p, 0.3))
               for name, p in model.named_parameters() if 'norm' not in name]
    assert all(changed)


def test_repr_and_package():
    assert repr(HSAGraphTransformer(5, 8, 2)) == (
        "HSAGraphTransformer(5, 8, 2, num_layers=2, heads=1, "
        "local_conv='gin', task='node')")
    assert repr(HSAGraphTransformer(
        5, 8, 1, local_conv='gine', edge_dim=3, task='graph',
        pool='max')) == (
            "HSAGraphTransformer(5, 8, 1, num_layers=2, heads=1, "
            "local_conv='gine', edge_dim=3, task='graph', pool='max')")
    assert models.HSAGraphTransformer is HSAGraphTransformer
    # OGB's encoders are for the user to pass: the module imports no ogb.
    tree = ast.parse(inspect.getsource(hsa_graph_transformer))
    imported = [alias.name for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)]
    assert imported and not any(name.startswith('ogb') for name in imported)


@pytest.mark.parametrize('kwargs, shown', [
    (dict(attn_dropout=0.3), "heads=1, attn_dropout=0.3, local_conv='gin', "
     "task='node')"),
    (dict(dropout=0.5), "task='node', dropout=0.5)"),
    (dict(act='gelu'), "task='node', act=GELU(approximate='none'))"),
    (dict(norm='layer_norm'),
     "task='node', norm=LayerNorm(8, affine=True, mode=graph))"),
    (dict(norm=None), "task='node', norm=None)"),
    (dict(attn_kwargs=dict(geometry_bias=True, query_resolved=False)),
     "task='node', attn_kwargs=dict(geometry_bias=True, max_branching=16, "
     "num_levels=8))"),
    # The attention's dropout and edge_dim are the model's own options.
    (dict(attn_dropout=0.3, edge_dim=3, local_conv='gine'),
     "attn_dropout=0.3, local_conv='gine', edge_dim=3, task='node')"),
])
def test_repr_shows_every_non_default_option(kwargs, shown):
    assert repr(HSAGraphTransformer(5, 8, 2, **kwargs)).endswith(shown)


@pytest.mark.parametrize('kwargs, error, pattern', [
    (dict(hidden_channels=6, heads=4), ValueError,
     "'heads' \\(4\\) must divide 'hidden_channels' \\(6\\)"),
    (dict(in_channels=0), ValueError, "'in_channels' must be a positive"),
    (dict(num_layers=0), ValueError, "'num_layers' must be an int in"),
    (dict(out_channels=2.0), TypeError, "'out_channels' must be an int"),
    (dict(local_conv='gat'), ValueError, "'local_conv' must be one of"),
    (dict(local_conv=GINConv), TypeError, "'local_conv' must be one of"),
    (dict(local_conv='gine'), ValueError,
     "local_conv='gine' reads edge features: give edge_dim"),
    (dict(task='edge'), ValueError, "'task' must be one of"),
    (dict(pool='sum'), ValueError, "'pool' must be one of"),
    (dict(edge_dim=0), ValueError, "'edge_dim' must be an int in"),
    (dict(node_encoder='atom'), TypeError, "'node_encoder' must be a"),
    (dict(edge_encoder=torch.nn.Linear(3, 8)), ValueError,
     "'edge_encoder' is given without 'edge_dim'"),
    (dict(attn_dropout=1.0), ValueError, "'attn_dropout' must be a finite"),
    (dict(attn_kwargs=dict(dropout=0.1)), ValueError,
     "must not set 'dropout'; set 'attn_dropout'"),
    (dict(attn_kwargs=dict(edge_dim=3)), ValueError,
     "must not set 'edge_dim'; set 'edge_dim' of the model"),
    (dict(attn_kwargs=dict(heads=2)), ValueError, "must not set 'heads'"),
    (dict(attn_kwargs=0.1), TypeError, "'attn_kwargs' must be a dict"),
])
def test_bad_arguments(kwargs, error, pattern):
    args = dict(in_channels=5, hidden_channels=8, out_channels=2)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        HSAGraphTransformer(**args)


def test_bad_forward_input():
    batch = collate(signals(5))
    model = HSAGraphTransformer(5, 8, 2).eval()
    with pytest.raises(ValueError, match="rows but the hierarchy has"):
        model(batch.x[:-1], batch.edge_index, batch)
    with pytest.raises(TypeError, match="'hierarchy' must be a"):
        model(batch.x, batch.edge_index, batch.edge_index)


@pytest.mark.parametrize('change, error, pattern', [
    (dict(x=lambda x: x[:, :4]), ValueError,
     r"'x' has 4 features but the layer takes 5 \(in_channels\)"),
    (dict(x=lambda x: x.double()), TypeError,
     "'x' has dtype torch.float64"),
    (dict(x=lambda x: x.long()), TypeError,
     "'x' must be a floating point tensor"),
    (dict(x=lambda x: x[0]), ValueError, r"'x' must be a \[N, F\] tensor"),
    (dict(edge_attr=lambda e: e[:, :2]), ValueError,
     r"'edge_attr' has 2 features but the layer takes 3 \(edge_dim\)"),
    (dict(edge_attr=lambda e: e[:-1]), ValueError,
     "'edge_attr' has 37 rows but 'edge_index' has 38 edges"),
    (dict(edge_attr=lambda e: e.double()), TypeError,
     "'edge_attr' has dtype torch.float64"),
])
def test_input_is_checked_before_the_default_encoders(change, error,
                                                      pattern):
    # Else it fails inside the encoders' products, naming no argument.
    batch = collate(signals(5))
    model = HSAGraphTransformer(5, 8, 2, local_conv='gine', edge_dim=3)
    x = change.get('x', lambda x: x)(batch.x)
    edge_attr = change.get('edge_attr', lambda e: e)(batch.edge_attr)
    with pytest.raises(error, match=pattern):
        model(x, batch.edge_index, batch, edge_attr)
