r"""The list of sibling pairs of the families that run on it
(:func:`~hsa_geo.data.sparse_families.sparse_families`), against the same
list made in plain Python: members by node id, pairs sorted both ways, rows
into :attr:`Hierarchy.sibling_pairs`."""
import contextlib
import unittest.mock

import torch
from hypothesis import given, strategies as st

from hsa_geo import Hierarchy
from tests.helpers.strategies import children_of, forests


@contextlib.contextmanager
def pair_list_everywhere():
    r"""Every bucket but the fused leaf path on the pair list."""
    with unittest.mock.patch('hsa_geo.data.hierarchy.SPARSE_PAIR_LIMIT',
                             2**62):
        yield


def expected_lists(h: Hierarchy, graph):
    r"""``(members, pairs)`` of the sparse families, in plain Python:
    members by node id, pairs ``(a, b)`` of node ids (the family graph's,
    or every ordered pair of distinct siblings) sorted."""
    sparse = {int(b.family[i]) for b in h.family_buckets if b.sparse
              for i in range(b.family.numel())}
    kids = {p: c for p, c in children_of(h.parent.tolist()).items()
            if p in sparse}
    members = sorted(c for c in sum(kids.values(), []))
    if graph is None:
        pairs = [(a, b) for c in kids.values() for a in c for b in c
                 if a != b]
    else:
        parent = h.parent.tolist()
        pairs = [(a, b) for a, b in graph if parent[a] in sparse]
    return members, sorted(pairs)


@given(f=forests(max_leaves=30), graph=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_pair_list_matches_python(f, graph, seed):
    with pair_list_everywhere():
        h = Hierarchy.from_parent(f.parent, f.num_leaves)
        edges = None
        if graph:
            pairs = h.sibling_pairs
            pairs = pairs[:, pairs[0] != pairs[1]]
            g = torch.Generator().manual_seed(seed)
            keep = torch.rand(pairs.size(1), generator=g) < 0.5
            h = h.with_family_graph(pairs[:, keep])
            edges = pairs[:, keep].t().tolist()
        sparse = h.layout.sparse
    members, pairs = expected_lists(h, edges)
    n = h.num_leaves
    node = torch.cat([sparse.leaf, sparse.cluster + n])
    assert node.tolist() == members
    assert sparse.parent_cluster.tolist() == \
        [h.parent.tolist()[m] - n for m in members]
    src, dst = node[sparse.src], node[sparse.dst]
    assert list(zip(src.tolist(), dst.tolist())) == pairs
    t = sparse.transpose
    assert list(zip(dst[t].tolist(), src[t].tolist())) == \
        sorted((b, a) for a, b in pairs)
    rows = h.sibling_pairs
    assert torch.equal(rows[:, sparse.row], torch.stack([src, dst]))
    assert torch.equal(rows[:, sparse.self_row], torch.stack([node, node]))
