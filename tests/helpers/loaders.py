r"""Shared helpers of the loader and heterogeneous-model tests: nested signals
on random forests (with per-cluster attributes), the dense formula of
:class:`~hsa_geo.nn.HSAConv`, and a plain-Python neighbour sampler (no
compiled backend needed)."""
from typing import List, Optional

import torch
from torch import Tensor
from torch_geometric.sampler import (BaseSampler, NodeSamplerInput,
                                     SamplerOutput)

from hsa_geo import Hierarchy, NestedSignal, hierarchical_attention_matrix
from hsa_geo.data import induced_hierarchy
from hsa_geo.nn import HSAConv
from tests.helpers.attention import random_pairs
from tests.helpers.layers import linear, queries_keys_values
from tests.helpers.strategies import Forest


def random_signal(f: Forest, seed: int = 0, family: bool = False,
                  num_edges: Optional[int] = None,
                  channels: int = 4) -> NestedSignal:
    r"""A float64 signal on the forest :obj:`f`: features, random leaf edges
    with features, node targets and a graph-level attribute; with
    :obj:`family`, a random family graph."""
    g = torch.Generator().manual_seed(seed)
    n = f.num_leaves
    pairs = random_pairs(f.parent, g) if family else None
    hierarchy = Hierarchy.from_parent(f.parent, n, pairs)
    num_edges = 3 * n if num_edges is None else num_edges
    edge_index = torch.randint(0, n, (2, num_edges), generator=g)
    return NestedSignal.from_hierarchy(
        hierarchy, torch.randn(n, channels, dtype=torch.float64, generator=g),
        edge_index=edge_index,
        edge_attr=torch.randn(num_edges, 2, dtype=torch.float64,
                              generator=g),
        y=torch.randint(0, 3, (n, ), generator=g), tag=torch.tensor([7]))


def with_cluster_rows(data: NestedSignal) -> NestedSignal:
    r""":obj:`data` with per-cluster attributes: a row number and a list."""
    m = data.num_clusters
    data.cluster_id = torch.arange(m) + 100
    data.cluster_name = [f'c{c}' for c in range(m)]
    return data


def check_cluster_rows(data: NestedSignal, batch: NestedSignal):
    r"""The batch keeps the rows of its clusters, in its tree's order."""
    n = data.num_nodes
    _, node_map = induced_hierarchy(data.hierarchy, batch.n_id,
                                    return_node_map=True)
    kept = (node_map[n:] >= 0).nonzero().view(-1)
    assert batch.hierarchy.num_clusters == kept.numel()
    assert batch.cluster_id.tolist() == (kept + 100).tolist()
    assert batch.cluster_name == [f'c{c}' for c in kept.tolist()]


def reference_conv(conv: HSAConv, x: Tensor, hierarchy: Hierarchy) -> Tensor:
    r"""``HSAConv(concat=True, root_weight=True, beta=False)`` from its
    weights and the dense HSA matrix: ``Q @ v`` per head plus the skip."""
    n, h, c = x.size(0), conv.heads, conv.out_channels
    q, k, v = queries_keys_values(conv, x)
    att = hierarchical_attention_matrix(q, k, hierarchy)  # [H, N, N]
    out = torch.einsum('hij,jhc->ihc', att, v).reshape(n, h * c)
    return out + linear(conv.lin_skip, x)


class FirstNeighbors(BaseSampler):
    r"""A neighbour sampler in plain Python: at hop ``i``, the first
    ``num_neighbors[i]`` incoming edges (in edge order) of every node reached
    at the hop before; nodes in order of discovery, the seeds first. Its
    output is what PyG's :class:`~torch_geometric.sampler.NeighborSampler`
    returns (``row`` the source, ``col`` the target, local ids)."""
    def __init__(self, edge_index: Tensor, num_nodes: int,
                 num_neighbors: List[int]):
        self.num_neighbors = num_neighbors
        self.incoming: List[List[int]] = [[] for _ in range(num_nodes)]
        self.source = edge_index[0].tolist()
        for e, target in enumerate(edge_index[1].tolist()):
            self.incoming[target].append(e)

    def sample_from_nodes(self, inputs: NodeSamplerInput) -> SamplerOutput:
        node = inputs.node.tolist()
        local = {v: i for i, v in enumerate(node)}
        rows, cols, edges = [], [], []
        frontier = list(node)
        for k in self.num_neighbors:
            reached = []
            for v in frontier:
                for e in self.incoming[v][:k]:
                    u = self.source[e]
                    if u not in local:
                        local[u] = len(node)
                        node.append(u)
                        reached.append(u)
                    rows.append(local[u])
                    cols.append(local[v])
                    edges.append(e)
            frontier = reached

        def long(values):
            return torch.tensor(values, dtype=torch.long)

        return SamplerOutput(node=long(node), row=long(rows), col=long(cols),
                             edge=long(edges),
                             metadata=(inputs.input_id, inputs.time))

    def sample_from_edges(self, inputs, neg_sampling=None):
        raise NotImplementedError('node-level sampling only')


def batch_of_signals(count: int = 3):
    r"""A :class:`~torch_geometric.data.Batch` of :obj:`count` two-leaf
    signals with an edge and a graph-level ``y`` each (what the loaders
    refuse)."""
    from torch_geometric.data import Batch
    return Batch.from_data_list([
        NestedSignal.from_hierarchy(Hierarchy.from_parent([2, 2, -1], 2),
                                    torch.randn(2, 1),
                                    edge_index=torch.tensor([[0], [1]]),
                                    y=torch.tensor([float(i)]))
        for i in range(count)])
