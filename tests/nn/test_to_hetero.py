r"""What :func:`torch_geometric.nn.to_hetero` does with a model that contains
:class:`~hsa_geo.nn.HSAConv`, pinned down.

``to_hetero`` copies every message-passing module once per *edge type* and
hands it the inputs of that type's two end node types; a placeholder whose
name holds neither ``'edge'`` nor ``'adj'`` (such as ``hierarchy``) is read
as node-level, one value per node type. So:

- with relations inside one node type (``('a', 'to', 'a')``), each copy of
  HSAConv runs over that node type's features and hierarchy (and, with
  ``edge_dim``, over that relation's edges and edge features); the copies
  of several relations into one node type are summed (or averaged), as
  ``to_hetero`` does for any layer;
- with a relation between two node types, the copy gets the pairs
  ``(x_src, x_dst)`` and ``(hierarchy_src, hierarchy_dst)`` and raises
  :class:`TypeError`: HSA is self-attention over the leaves of one
  hierarchy and has no bipartite form;
- the way around it: convert only the local layers, and run HSAConv outside
  the converted module, per node type with one hierarchy each, or on the
  homogeneous view (all node types concatenated under one hierarchy).
"""
import pytest
import torch
from torch_geometric.nn import SAGEConv, to_hetero

from hsa_geo import Hierarchy
from hsa_geo.nn import HSAConv
from tests.helpers.layers import EXACT, randn
from tests.helpers.loaders import reference_conv

pytestmark = pytest.mark.usefixtures('one_thread')

SIZES = {'a': 5, 'b': 4}


class LocalThenHSA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.local = SAGEConv((3, 3), 6)
        self.hsa = HSAConv(6, 3, heads=2)

    def forward(self, x, edge_index, hierarchy):
        x = self.local(x, edge_index).relu()
        return self.hsa(x, hierarchy)


class Local(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.local = SAGEConv((3, 3), 6)

    def forward(self, x, edge_index):
        return self.local(x, edge_index).relu()


def hierarchies() -> dict:
    # a: leaves 0..4 under clusters 5 (0, 1, 2) and 6 (3, 4), root 7;
    # b: a flat tree of 4 leaves.
    return {'a': Hierarchy.from_parent([5, 5, 5, 6, 6, 7, 7, -1], 5),
            'b': Hierarchy.from_parent([4, 4, 4, 4, -1], 4)}


def features(seed: int = 0) -> dict:
    return {t: randn(n, 3, seed=seed + i, dtype=torch.float64)
            for i, (t, n) in enumerate(SIZES.items())}


def edges(edge_types) -> dict:
    g = torch.Generator().manual_seed(0)
    return {(s, r, d): torch.stack([
        torch.randint(0, SIZES[s], (7, ), generator=g),
        torch.randint(0, SIZES[d], (7, ), generator=g)
    ]) for s, r, d in edge_types}


def test_relations_inside_node_types_run_hsa_per_node_type():
    metadata = (['a', 'b'], [('a', 'to', 'a'), ('b', 'to', 'b')])
    model = to_hetero(LocalThenHSA(), metadata).double()
    x, edge_index, h = features(), edges(metadata[1]), hierarchies()
    out = model(x, edge_index, h)
    for t in SIZES:
        key = f'{t}__to__{t}'
        local = model.local[key](x[t], edge_index[(t, 'to', t)]).relu()
        torch.testing.assert_close(
            out[t], reference_conv(model.hsa[key], local, h[t]), rtol=0,
            atol=EXACT)


def test_relations_into_one_node_type_are_summed():
    metadata = (['a'], [('a', 'to', 'a'), ('a', 'near', 'a')])
    model = to_hetero(LocalThenHSA(), metadata, aggr='sum').double()
    x, edge_index, h = features(), edges(metadata[1]), hierarchies()
    out = model({'a': x['a']}, edge_index, {'a': h['a']})
    local = sum(model.local[f'a__{r}__a'](x['a'], edge_index[('a', r, 'a')])
                for r in ('to', 'near')).relu()
    expected = sum(reference_conv(model.hsa[f'a__{r}__a'], local, h['a'])
                   for r in ('to', 'near'))
    torch.testing.assert_close(out['a'], expected, rtol=0, atol=EXACT)


def test_edge_features_per_relation():
    class WithEdges(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hsa = HSAConv(3, 3, heads=2, edge_dim=2)

        def forward(self, x, hierarchy, edge_index, edge_attr):
            return self.hsa(x, hierarchy, edge_index, edge_attr)

    metadata = (['a', 'b'], [('a', 'to', 'a'), ('b', 'to', 'b')])
    model = to_hetero(WithEdges(), metadata).double()
    x, edge_index, h = features(), edges(metadata[1]), hierarchies()
    edge_attr = {key: randn(7, 2, seed=3, dtype=torch.float64)
                 for key in edge_index}
    out = model(x, h, edge_index, edge_attr)
    for t in SIZES:
        key = (t, 'to', t)
        torch.testing.assert_close(
            out[t], model.hsa[f'{t}__to__{t}'](x[t], h[t], edge_index[key],
                                               edge_attr[key]),
            rtol=0, atol=EXACT)


def test_relations_between_node_types_fail():
    metadata = (['a', 'b'], [('a', 'to', 'a'), ('a', 'to', 'b'),
                             ('b', 'to', 'a')])
    model = to_hetero(LocalThenHSA(), metadata).double()
    # The copy for ('a', 'to', 'b') gets (hierarchy_a, hierarchy_b) and
    # (x_a, x_b): HSA has no bipartite form.
    with pytest.raises(TypeError, match=r'got tuple|bipartite'):
        model(features(), edges(metadata[1]), hierarchies())


def test_a_node_type_without_hierarchy_fails():
    metadata = (['a', 'b'], [('a', 'to', 'a'), ('b', 'to', 'b')])
    model = to_hetero(LocalThenHSA(), metadata).double()
    with pytest.raises(TypeError, match='got NoneType'):
        model(features(), edges(metadata[1]), {'a': hierarchies()['a']})


def test_hsa_per_node_type_after_a_converted_encoder():
    metadata = (['a', 'b'], [('a', 'to', 'a'), ('a', 'to', 'b'),
                             ('b', 'to', 'a')])
    encoder = to_hetero(Local(), metadata).double()
    hsa = torch.nn.ModuleDict({t: HSAConv(6, 3, heads=2)
                               for t in SIZES}).double()
    x, edge_index, h = features(), edges(metadata[1]), hierarchies()
    local = encoder(x, edge_index)
    out = {t: hsa[t](local[t], h[t]) for t in SIZES}
    for t in SIZES:
        torch.testing.assert_close(
            out[t], reference_conv(hsa[t], local[t], h[t]), rtol=0,
            atol=EXACT)
    sum(o.sum() for o in out.values()).backward()
    for p in list(encoder.parameters()) + list(hsa.parameters()):
        assert p.grad is not None


def test_hsa_on_the_homogeneous_view():
    metadata = (['a', 'b'], [('a', 'to', 'a'), ('a', 'to', 'b'),
                             ('b', 'to', 'a')])
    encoder = to_hetero(Local(), metadata).double()
    hsa = HSAConv(6, 3, heads=2).double()
    # One tree over all nodes, a's first: a's clusters 9 and 10 and b's
    # leaves 5..8 under one root 11, so the types attend to each other.
    h = Hierarchy.from_parent([9, 9, 9, 10, 10, 11, 11, 11, 11, 11, 11, -1],
                              9)
    local = encoder(features(), edges(metadata[1]))
    view = torch.cat([local['a'], local['b']])
    out = hsa(view, h)
    torch.testing.assert_close(out, reference_conv(hsa, view, h), rtol=0,
                               atol=EXACT)
    # Context crosses node types: a's outputs depend on b's nodes.
    shifted = torch.cat([local['a'], local['b'] + 1])
    assert not torch.allclose(hsa(shifted, h)[:5], out[:5])
