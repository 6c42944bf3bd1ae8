r"""The family graph of a multi-modal nested signal: its sibling pairs kept
as edge types by the node types of their two ends, so that PyG's
``DataLoader`` shifts each end by its own type."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from hsa_geo._checks import check_index, first_out_of_range
from hsa_geo.data.hierarchy import Hierarchy, distinct_sibling_pairs

# The relation of a pair (a, b) along which child a attends to sibling b.
SIBLING_OF = 'sibling_of'


def store_family_graph(data, hierarchy: Hierarchy, slices: Dict[str, slice],
                       sparse: Tensor, cluster: str):
    r"""Stores the pairs of :obj:`hierarchy`'s family graph that lie in the
    families :obj:`sparse` marks (``[M]`` bool) as ``(type_a, 'sibling_of',
    type_b)`` edge types (leaf types by :obj:`slices`, clusters as node type
    :obj:`cluster`), with ``data[cluster].sparse_family`` and
    ``data[cluster].family_pairs`` ``[M]``, the number of pairs of every
    family: :func:`read_family_graph` checks it, so that pairs lost on the
    way raise instead of leaving a family silently without pairs.

    Every pair of node types gets its edge type, empty where it has no
    pairs, and every signal its flags: PyG's ``DataLoader`` takes the
    stores of a batch from its first signal and shifts each store by the
    signals that have it, so signals with and without family graphs batch
    in any order only when all of them have the same stores."""
    for edge_type in family_edge_types(data):
        del data[edge_type]
    n, parent = hierarchy.num_leaves, hierarchy.parent
    edges = hierarchy.family_edge_index
    if edges is None:
        edges = parent.new_empty(2, 0)
    sparse = sparse.to(parent.device)
    edges = edges[:, sparse[parent[edges[0]] - n]]
    data[cluster].sparse_family = sparse
    data[cluster].family_pairs = torch.bincount(
        parent[edges[0]] - n, minlength=hierarchy.num_clusters)
    names = list(slices) + [cluster]
    kind, local = _kinds(edges, slices, n)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            keep = (kind[0] == i) & (kind[1] == j)
            data[a, SIBLING_OF, b].edge_index = local[:, keep]


def read_family_graph(data, parent: Tensor, slices: Dict[str, slice],
                      cluster: str) -> Optional[Tensor]:
    r"""The family graph ``[2, E]`` in node ids of the tree :obj:`parent`
    (leaves type by type as :obj:`slices`, then the clusters): the stored
    pairs, plus every pair of siblings in the dense families when some
    family is sparse; :obj:`None` when all are dense. Raises a
    :class:`ValueError` when the stored pairs do not match the recorded
    counts."""
    n = max((s.stop for s in slices.values()), default=0)
    m = parent.numel() - n
    store = data[cluster]
    kinds = family_edge_types(data)
    sparse, counts = store.get('sparse_family'), store.get('family_pairs')
    if sparse is None or counts is None:
        # Never read as "no family graph": a batch whose first signal lacks
        # them drops the flags and pairs of all the others.
        raise ValueError(
            f"the signal has no data['{cluster}'].sparse_family and "
            f".family_pairs (every signal of a batch needs them); build it "
            f"with HeteroNestedSignal.from_hierarchy")
    sparse, counts = _checked_flags(sparse, counts, m, cluster)
    offset = {t: (s.start, s.stop - s.start) for t, s in slices.items()}
    offset[cluster] = (n, m)
    parts = [_checked_pairs(data, e, offset) for e in kinds]
    pairs = torch.cat(parts, dim=1) if parts else parent.new_empty(2, 0)
    family = parent[pairs[0]]
    found = torch.bincount((family - n).clamp(min=0)[family >= 0],
                           minlength=m)
    if bool((family < 0).any()) or not torch.equal(found, counts):
        c = int((found != counts).nonzero()[0]) if \
            not torch.equal(found, counts) else -1
        raise ValueError(
            f"the family of cluster {c} has {int(found[c])} stored sibling "
            f"pairs but {int(counts[c])} were recorded in "
            f"data['{cluster}'].family_pairs: an operation dropped or added "
            f"pairs of the family graph (e.g. a DataLoader batch mixing "
            f"signals with and without family graphs, the first without)")
    if not bool(sparse.any()):
        return None
    return torch.cat([pairs, distinct_sibling_pairs(parent, n, ~sparse)],
                     dim=1)


def family_edge_types(data) -> List[Tuple[str, str, str]]:
    r"""The edge types that hold sibling pairs."""
    return [e for e in data.edge_types if e[1] == SIBLING_OF]


def _kinds(edges: Tensor, slices: Dict[str, slice], n: int
           ) -> Tuple[Tensor, Tensor]:
    r"""For every end of :obj:`edges`: the index of its node type (the leaf
    types in order, then the clusters) and its id inside that type."""
    starts = torch.tensor([s.start for s in slices.values()] + [n],
                          device=edges.device)
    kind = torch.bucketize(edges, starts, right=True) - 1
    return kind, edges - starts[kind]


def _checked_flags(sparse, counts, m: int, cluster: str
                   ) -> Tuple[Tensor, Tensor]:
    if not isinstance(sparse, Tensor) or sparse.dtype != torch.bool or \
            sparse.shape != (m, ):
        raise ValueError(f"data['{cluster}'].sparse_family must be a bool "
                         f"tensor [{m}] (one flag per cluster)")
    if not isinstance(counts, Tensor) or counts.shape != (m, ):
        raise ValueError(f"data['{cluster}'].family_pairs must be a tensor "
                         f"[{m}] (pairs per family)")
    return sparse, counts.long()


def _checked_pairs(data, edge_type: Tuple[str, str, str],
                   offset: Dict[str, Tuple[int, int]]) -> Tensor:
    r"""The pairs of :obj:`edge_type` in node ids, checked in range."""
    a, _, b = edge_type
    name = f"data{edge_type}.edge_index"
    for t in (a, b):
        if t not in offset:
            raise ValueError(f"{name} joins '{t}', which is not a node type "
                             f"of the tree")
    index = data[edge_type].get('edge_index')
    if index is None:
        raise ValueError(f"{name} is missing; the family graph's edge types "
                         f"need their edge_index")
    index = check_index(index, name)
    bad = first_out_of_range(index, (offset[a][1], offset[b][1]))
    if bad is not None:
        row, j = bad
        raise ValueError(f"{name}[{row}, {j}] = {int(index[row, j])} is not "
                         f"a node of type '{(a, b)[row]}'")
    return torch.stack([index[0] + offset[a][0], index[1] + offset[b][0]])
