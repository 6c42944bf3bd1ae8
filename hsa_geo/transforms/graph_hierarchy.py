r"""Cluster trees of graphs: a graph's nodes become the leaves of a
:class:`~hsa_geo.data.Hierarchy` by recursive partitioning (METIS, Louvain)
or repeated matching (Graclus)."""
from __future__ import annotations

from collections import deque
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from hsa_geo._checks import check_bool, check_index, check_int
from hsa_geo.data.hierarchy import Hierarchy, parent_depths
from hsa_geo.data.nested_signal import NestedSignal
from hsa_geo.transforms._inputs import (check_no_sparse_adjacency,
                                        check_num_nodes)
from hsa_geo.transforms.tree_order import TreeOrder

_METHODS = ('metis', 'louvain', 'graclus')

# split(size, xadj, adjncy, num_parts, capacity) -> part of every node.
Splitter = Callable[[int, np.ndarray, np.ndarray, int, int], np.ndarray]


class GraphHierarchy(BaseTransform):
    r"""Builds a cluster tree over the nodes of a graph and returns the graph
    as a :class:`~hsa_geo.data.NestedSignal` (every attribute of the input
    kept, the tree added): the nodes are the leaves, in their order (or in
    the tree's order, with :obj:`tree_order`).

    The tree is always **one tree** per graph (a single root, also for
    disconnected graphs, so that every node receives context from every
    other node) in which every internal node has between 2 and
    :obj:`branching` children, except in a graph of one node (a root over
    the single leaf). No internal node has a single child. Graphs with at
    most :obj:`branching` nodes get the flat tree: one root over all nodes
    (plain softmax attention). Larger graphs, by :obj:`method`:

    - ``'metis'`` (top-down, `pymetis <https://pypi.org/project/pymetis/>`_):
      a set of :math:`n > b` nodes (:math:`b` = :obj:`branching`) needs
      :math:`L = \lceil \log_b n \rceil` levels below it. METIS (recursive
      bisection, minimum edge cut) splits it into
      :math:`k = \lceil n / b^{L-1} \rceil \le b` balanced parts of at
      most :math:`b^{L-1}` nodes each (should METIS make a part too large,
      its least connected nodes move to parts with room). A part of
      :math:`\ge 2` nodes becomes a child cluster, a part of one node a
      leaf child, and parts of more than :math:`b` nodes are split again.
      So the tree has the fewest levels possible, depth
      :math:`\lceil \log_b N \rceil`, and all families but the root's
      (:math:`k` children) are nearly :math:`b` wide; leaves in smaller
      parts may sit higher.
    - ``'louvain'`` (top-down, :func:`networkx.community.louvain_communities`
      with :obj:`seed`, unweighted): the communities of the set's induced
      subgraph become its children. When there are more than :math:`b`,
      they are taken in breadth-first order over the graph of communities
      (starting from the largest) and cut into :math:`b` runs of about
      :math:`n / b` nodes, so that merged communities tend to be adjacent.
      Communities of more than :math:`b` nodes are split again. The depth
      follows the community structure and may be uneven.
    - ``'graclus'`` (bottom-up, :func:`torch_geometric.nn.pool.graclus`
      under :obj:`seed`): :math:`\lfloor \log_2 b \rfloor` rounds of
      Graclus matching merge the nodes into clusters of at most
      :math:`2^{\lfloor \log_2 b \rfloor} \le b` nodes, which become one
      level of the tree; the coarsened graph is matched again until at most
      :math:`b` clusters remain, which get the root. Nodes left unmatched
      by a round that fails to halve the node count (isolated nodes, the
      leaves of a star) are grouped by :math:`b` in id order.

    Whenever a set of nodes has no edges among itself (or Louvain finds a
    single community, or Graclus cannot match), it is split into equal
    chunks of consecutive node ids instead; so graphs without edges,
    isolated nodes and disconnected graphs are all fine. Partitioning reads
    :obj:`edge_index` as undirected (both directions, self-loops and
    duplicates dropped). Internal node ids are given breadth-first (the root
    is node :math:`N`) and the result is deterministic under :obj:`seed`.

    With :obj:`family_graph=True` the hierarchy carries a family graph
    (sparse families): a leaf edge :math:`(u, v)`, :math:`u \ne v`, becomes
    the sibling pair :math:`(a, b)` of the two children of the lowest common
    ancestor of :math:`u` and :math:`v` that hold :math:`u` and :math:`v`
    (inside a bottom family, the leaf edge itself). Pairs keep the
    direction of the leaf edges and duplicates are removed; so context flows
    only between siblings joined by some leaf edge, and an isolated node
    sees nothing but itself. A graph of two or more nodes without edges
    then has no pairs at all, which is refused (:class:`ValueError`); use
    :obj:`family_graph=False` for it.

    Args:
        method (str, optional): ``'metis'``, ``'louvain'`` or
            ``'graclus'``. (default: ``'metis'``)
        branching (int, optional): :math:`b \ge 2`, the largest number of
            children of a node. (default: :obj:`16`)
        family_graph (bool, optional): attach the family graph made of the
            coarsened leaf edges. (default: :obj:`False`)
        seed (int, optional): seed of METIS, Louvain or Graclus.
            (default: :obj:`0`)
        tree_order (bool, optional): return the nodes in the depth-first
            order of the tree (see :class:`~hsa_geo.transforms.TreeOrder`),
            the permutation in ``n_id``; then the attention reads the
            families of the leaves as consecutive rows. (default:
            :obj:`False`)

    Raises:
        ImportError: if the package :obj:`method` needs is missing
            (``pymetis``; for ``'graclus'`` the kernel of
            :func:`~torch_geometric.nn.pool.graclus`).
    """
    def __init__(self, method: str = 'metis', branching: int = 16,
                 family_graph: bool = False, seed: int = 0,
                 tree_order: bool = False):
        if not isinstance(method, str):
            raise TypeError(f"'method' must be a str, one of {_METHODS}, got "
                            f"{type(method).__name__}")
        if method not in _METHODS:
            raise ValueError(
                f"unknown method {method!r}; choose one of "
                f"{', '.join(repr(m) for m in _METHODS)}")
        branching = check_int(branching, 'branching', low=2)
        check_bool(family_graph, 'family_graph')
        seed = check_int(seed, 'seed', low=0, high=2**31 - 1)
        check_bool(tree_order, 'tree_order')
        self.method = method
        self.branching = branching
        self.family_graph = family_graph
        self.seed = seed
        self.tree_order = tree_order
        # Fail here, not on the first graph of a dataset.
        if method == 'metis':
            _import_pymetis()
        elif method == 'louvain':
            _import_networkx()
        else:
            _check_graclus()

    def forward(self, data: Data) -> NestedSignal:
        r"""Returns :obj:`data` (``edge_index``, ``num_nodes`` and any other
        attributes) as a :class:`~hsa_geo.data.NestedSignal` carrying the
        tree over its nodes."""
        n = check_num_nodes(data, 'GraphHierarchy')
        check_no_sparse_adjacency(data, 'GraphHierarchy')
        edge_index = _check_edge_index(data.edge_index, n)
        parent = torch.from_numpy(self._parent(edge_index, n))
        family = None
        if self.family_graph:
            no_loops = edge_index[:, edge_index[0] != edge_index[1]]
            if n > 1 and no_loops.size(1) == 0:
                raise ValueError(
                    f"family_graph=True needs edges, but this graph of {n} "
                    f"nodes has none (besides self-loops): its family "
                    f"graph would be empty and no node would see another; "
                    f"use family_graph=False")
            family = _family_edges(parent, no_loops)
        hierarchy = Hierarchy.from_parent(parent, n, family)
        device = data.edge_index.device if data.edge_index is not None \
            else (data.x.device if isinstance(data.x, Tensor) else None)
        if device is not None and device != hierarchy.device:
            hierarchy = hierarchy.to(device)
        signal = NestedSignal.from_data(data, hierarchy)
        return TreeOrder()(signal) if self.tree_order else signal

    def _parent(self, edge_index: Tensor, n: int) -> np.ndarray:
        b = self.branching
        if n <= b:  # the flat tree
            parent = np.full(n + 1, n, dtype=np.int64)
            parent[n] = -1
            return parent
        ptr, col = _undirected_csr(edge_index, n)
        if self.method == 'graclus':
            return _bottom_up_graclus(n, ptr, col, b, self.seed)
        if self.method == 'metis':
            split = _metis_splitter(self.seed)
        else:
            split = _louvain_splitter(b, self.seed)
        return _top_down(n, ptr, col, b, split)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(method={self.method!r}, '
                f'branching={self.branching}, '
                f'family_graph={self.family_graph}, seed={self.seed}'
                + (', tree_order=True)' if self.tree_order else ')'))


# Input ######################################################################


def _check_edge_index(edge_index: Optional[Tensor], n: int) -> Tensor:
    if edge_index is None:  # a graph without edges
        return torch.empty(2, 0, dtype=torch.long)
    check_index(edge_index, 'edge_index')
    edge_index = edge_index.as_subclass(Tensor).detach().cpu().long()
    bad = (edge_index < 0) | (edge_index >= n)
    if bool(bad.any()):
        row, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"edge_index[{row}, {j}] = {int(edge_index[row, j])} is not a "
            f"node id of this graph of {n} nodes (0..{n - 1}); fix the edges "
            f"or set 'num_nodes'")
    return edge_index


def _undirected_csr(edge_index: Tensor, n: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
    r"""CSR ``(ptr, col)`` of the simple undirected graph: both directions,
    no self-loops, no duplicates, neighbours in increasing id."""
    src, dst = edge_index.numpy()
    keep = src != dst
    src, dst = src[keep], dst[keep]
    key = np.concatenate([src * n + dst, dst * n + src])
    key.sort()  # a sort and a mask: np.unique hashes, several times slower
    if key.size:
        key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    row, col = np.divmod(key, n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=ptr[1:])
    return ptr, col.astype(np.int64)


# Top-down partitioning ######################################################


def _capacity(n: int, b: int) -> int:
    r""":math:`b^{L-1}` for :math:`L = \lceil \log_b n \rceil`: the most
    nodes a part of a set of :math:`n > b` nodes may keep without making
    the tree deeper than needed."""
    capacity = 1
    while capacity * b < n:
        capacity *= b
    return capacity


def _chunks(size: int, num_parts: int) -> np.ndarray:
    r"""Consecutive ids in :obj:`num_parts` equal chunks (sizes differ by at
    most one)."""
    return np.arange(size, dtype=np.int64) * num_parts // size


def _consecutive(part: np.ndarray) -> np.ndarray:
    return np.unique(part, return_inverse=True)[1].astype(np.int64)


def _top_down(n: int, ptr: np.ndarray, col: np.ndarray, b: int,
              split: Splitter) -> np.ndarray:
    r"""Parent vector of the tree that splits every set of more than
    :obj:`b` nodes with :obj:`split`, breadth-first: one pass per level,
    subgraphs cut out for all sets of a level at once."""
    leaf_parent = np.empty(n, dtype=np.int64)  # cluster ids 0..M-1
    cluster_parent: List[np.ndarray] = [np.array([-1], dtype=np.int64)]
    num_clusters = 1
    # The sets still to split: their nodes by set, increasing ids in a set.
    nodes = np.arange(n, dtype=np.int64)
    group = np.zeros(n, dtype=np.int64)
    group_cluster = np.zeros(1, dtype=np.int64)
    while nodes.size:
        sizes = np.bincount(group, minlength=group_cluster.size)
        lptr, nbr = _inner_edges(nodes, group, sizes, ptr, col, n)
        labels, num_parts = _split_sets(sizes, lptr, nbr, b, split)
        part_size = np.bincount(labels, minlength=num_parts)
        part_owner = np.empty(num_parts, dtype=np.int64)
        part_owner[labels] = group_cluster[group]
        is_cluster = part_size >= 2
        part_id = num_clusters + np.cumsum(is_cluster) - 1
        cluster_parent.append(part_owner[is_cluster])
        num_clusters += int(is_cluster.sum())
        size_of = part_size[labels]
        # A part of one node: the node is a child of the set's cluster.
        leaf_parent[nodes[size_of == 1]] = part_owner[labels[size_of == 1]]
        done = (size_of >= 2) & (size_of <= b)
        leaf_parent[nodes[done]] = part_id[labels[done]]
        # Parts of more than b nodes are the sets of the next level.
        more = size_of > b
        nodes, lab = nodes[more], labels[more]
        order = np.argsort(lab, kind='stable')
        nodes, lab = nodes[order], lab[order]
        big = part_size > b
        group = (np.cumsum(big) - 1)[lab]
        group_cluster = part_id[big]
    parent = np.concatenate([leaf_parent] + cluster_parent)
    return np.where(parent >= 0, parent + n, -1)


def _inner_edges(nodes: np.ndarray, group: np.ndarray, sizes: np.ndarray,
                 ptr: np.ndarray, col: np.ndarray,
                 n: int) -> Tuple[np.ndarray, np.ndarray]:
    r"""The CSR ``(ptr, neighbours)`` of the edges inside each set of a
    level, on the level's positions: :obj:`nodes` by set (:obj:`group`,
    sets of :obj:`sizes` nodes), neighbours numbered inside their set."""
    starts = np.cumsum(sizes) - sizes
    pos = np.arange(nodes.size, dtype=np.int64)
    local = np.empty(n, dtype=np.int64)
    local[nodes] = pos - starts[group]
    owner = np.full(n, -1, dtype=np.int64)
    owner[nodes] = group
    deg = ptr[nodes + 1] - ptr[nodes]
    src = np.repeat(pos, deg)
    first = np.repeat(ptr[nodes] - (np.cumsum(deg) - deg), deg)
    nbr = col[first + np.arange(src.size, dtype=np.int64)]
    keep = owner[nbr] == group[src]
    src, nbr = src[keep], local[nbr[keep]]
    lptr = np.zeros(nodes.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=nodes.size), out=lptr[1:])
    return lptr, nbr


def _split_sets(sizes: np.ndarray, lptr: np.ndarray, nbr: np.ndarray,
                b: int, split: Splitter) -> Tuple[np.ndarray, int]:
    r"""Every set of a level split into parts of at most its capacity: the
    part of every position, numbered across the level, and the number of
    parts."""
    labels = np.empty(int(sizes.sum()), dtype=np.int64)
    num_parts, s = 0, 0
    for size in sizes.tolist():
        e = s + size
        capacity = _capacity(size, b)
        k = -(-size // capacity)
        part = split(size, lptr[s:e + 1] - lptr[s], nbr[lptr[s]:lptr[e]], k,
                     capacity)
        if int(part.max()) < 1:  # no split: never loop forever
            part = _chunks(size, k)
        labels[s:e] = part + num_parts
        num_parts += int(part.max()) + 1
        s = e
    return labels, num_parts


def _metis_splitter(seed: int) -> Splitter:
    pymetis = _import_pymetis()
    csr = getattr(pymetis, 'CSRAdjacency', None)  # pymetis >= 2025.2

    def split(size: int, xadj: np.ndarray, adjncy: np.ndarray, k: int,
              capacity: int) -> np.ndarray:
        if adjncy.size == 0:
            return _chunks(size, k)
        # Recursive bisection: tighter balance than k-way (parts stay within
        # capacity) and faster on both small and large sets.
        options = pymetis.Options(seed=seed)
        if csr is not None:
            result = pymetis.part_graph(k, csr(xadj, adjncy), options=options,
                                        recursive=True)
        else:
            result = pymetis.part_graph(k, xadj=xadj, adjncy=adjncy,
                                        options=options, recursive=True)
        part = np.asarray(result.vertex_part, dtype=np.int64)
        return _consecutive(_within_capacity(part, k, capacity, xadj,
                                             adjncy))

    return split


def _within_capacity(part: np.ndarray, k: int, capacity: int,
                     xadj: np.ndarray, adjncy: np.ndarray) -> np.ndarray:
    r"""Moves the nodes beyond :obj:`capacity` out of too large parts (the
    ones with the fewest edges inside their part first) into parts with
    room; :math:`k \cdot` capacity :math:`\ge n` guarantees the room."""
    counts = np.bincount(part, minlength=k)
    if int(counts.max()) <= capacity:
        return part
    size = part.size
    src = np.repeat(np.arange(size), np.diff(xadj))
    inner = np.bincount(src[part[src] == part[adjncy]], minlength=size)
    order = np.lexsort((np.arange(size), inner, part))
    starts = np.cumsum(counts) - counts
    rank = np.arange(size) - starts[part[order]]
    over = np.maximum(counts - capacity, 0)
    movers = order[rank < over[part[order]]]
    room = np.maximum(capacity - counts, 0)
    part = part.copy()
    part[movers] = np.repeat(np.arange(k), room)[:movers.size]
    return part


def _louvain_splitter(b: int, seed: int) -> Splitter:
    nx = _import_networkx()

    def split(size: int, xadj: np.ndarray, adjncy: np.ndarray, k: int,
              capacity: int) -> np.ndarray:
        if adjncy.size == 0:
            return _chunks(size, k)
        src = np.repeat(np.arange(size), np.diff(xadj))
        graph = nx.Graph()
        graph.add_nodes_from(range(size))
        graph.add_edges_from(zip(src.tolist(), adjncy.tolist()))
        communities = nx.community.louvain_communities(graph, weight=None,
                                                       seed=seed)
        if len(communities) < 2:
            return _chunks(size, k)
        # Community ids in order of their smallest node: independent of the
        # order networkx returns them in.
        communities = sorted((sorted(c) for c in communities),
                             key=lambda c: c[0])
        part = np.empty(size, dtype=np.int64)
        for i, members in enumerate(communities):
            part[members] = i
        if len(communities) <= b:
            return part
        return _merge_communities(part, len(communities), src, adjncy, b)

    return split


def _merge_communities(part: np.ndarray, r: int, src: np.ndarray,
                       dst: np.ndarray, b: int) -> np.ndarray:
    r"""Joins :obj:`r` > :obj:`b` communities into :obj:`b` groups: runs
    of about :math:`n / b` nodes along a breadth-first order of the
    community graph."""
    sizes = np.bincount(part, minlength=r)
    a, c = part[src], part[dst]
    keep = a != c
    key = np.unique(a[keep] * r + c[keep])
    qptr = np.zeros(r + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // r, minlength=r), out=qptr[1:])
    qcol = key % r
    seen = np.zeros(r, dtype=bool)
    order: List[int] = []
    # Starts: largest community first (ties: smallest id), each component.
    for start in np.lexsort((np.arange(r), -sizes)).tolist():
        if seen[start]:
            continue
        seen[start] = True
        queue = deque([start])
        while queue:
            u = queue.popleft()
            order.append(u)
            for v in qcol[qptr[u]:qptr[u + 1]].tolist():
                if not seen[v]:
                    seen[v] = True
                    queue.append(v)
    target = -(-part.size // b)
    group = np.empty(r, dtype=np.int64)
    current, filled = 0, 0
    for u in order:
        if filled > 0 and filled + sizes[u] > target and current < b - 1:
            current, filled = current + 1, 0
        group[u] = current
        filled += int(sizes[u])
    return _consecutive(group[part])


# Bottom-up matching #########################################################


def _bottom_up_graclus(n: int, ptr: np.ndarray, col: np.ndarray, b: int,
                       seed: int) -> np.ndarray:
    r"""Parent vector of the tree made by repeated Graclus matching (see
    :class:`GraphHierarchy`)."""
    from torch_geometric.nn import pool

    rounds = b.bit_length() - 1  # clusters of at most 2**rounds <= b nodes
    # Every internal node has >= 2 children: fewer than n of them.
    parent = np.full(2 * n, -1, dtype=np.int64)
    next_id = n
    # The nodes of the current level (leaves or clusters) and their edges.
    entity = np.arange(n, dtype=np.int64)
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(ptr))
    edges = torch.from_numpy(np.stack([row, col]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while entity.size > b:
            m = entity.size
            cluster = torch.arange(m)
            coarse, num = edges, m
            for _ in range(rounds):
                if coarse.size(1) == 0:
                    break
                c = pool.graclus(coarse, num_nodes=num).view(-1).cpu()
                c = torch.unique(c, return_inverse=True)[1]
                cluster = c[cluster]
                num = int(c.max()) + 1
                coarse = _coarsen(coarse, c, num)
            cluster = cluster.numpy()
            counts = np.bincount(cluster, minlength=num)
            if 2 * num > m:  # poor progress: group the unmatched by b
                single = counts[cluster] == 1
                s = int(single.sum())
                if s > 1:
                    cluster = cluster.copy()
                    cluster[single] = num + _chunks(s, -(-s // b))
                    cluster = _consecutive(cluster)
                    num = int(cluster.max()) + 1
                    counts = np.bincount(cluster, minlength=num)
            # Clusters of >= 2 get a node; a lone entity moves up as it is.
            is_new = counts >= 2
            new_id = next_id + np.cumsum(is_new) - 1
            next_id += int(is_new.sum())
            member = is_new[cluster]
            parent[entity[member]] = new_id[cluster[member]]
            up = np.where(is_new, new_id, -1)
            up[cluster[~member]] = entity[~member]
            entity = up
            edges = _coarsen(edges, torch.from_numpy(cluster), num)
    if entity.size > 1 or entity[0] < n:  # the root over what is left
        parent[entity] = next_id
        next_id += 1
    return parent[:next_id]


def _coarsen(edges: Tensor, cluster: Tensor, num: int) -> Tensor:
    r"""Edges between clusters: no self-loops, no duplicates."""
    e = cluster[edges]
    return _unique_pairs(e[:, e[0] != e[1]], num)


def _unique_pairs(e: Tensor, num: int) -> Tensor:
    key = torch.unique(e[0] * num + e[1])
    return torch.stack([key // num, key % num])


# Family graph ###############################################################


def _family_edges(parent: Tensor, edge_index: Tensor) -> Tensor:
    r"""The leaf edges coarsened to the children of the lowest common
    ancestor of their ends (no self-loops in :obj:`edge_index`): both ends
    climb to their parents, the deeper one first, until they are siblings;
    one vectorised step per level."""
    depth = parent_depths(parent)
    a, b = edge_index[0].clone(), edge_index[1].clone()
    while True:
        pa, pb = parent[a], parent[b]
        active = pa != pb
        if not bool(active.any()):
            break
        da, db = depth[a], depth[b]
        up_a = active & (da >= db)
        up_b = active & (db >= da)
        a = torch.where(up_a, pa, a)
        b = torch.where(up_b, pb, b)
    # Different trees meet at two roots (parent -1): no pair.
    keep = parent[a] >= 0
    num = parent.numel()
    return _unique_pairs(torch.stack([a[keep], b[keep]]), num)


# Optional dependencies ######################################################


def _import_pymetis():
    try:
        import pymetis
    except ImportError:
        raise ImportError(
            "GraphHierarchy(method='metis') needs pymetis: 'pip install "
            "pymetis', or choose method='louvain'") from None
    return pymetis


def _import_networkx():
    try:
        import networkx
    except ImportError:
        raise ImportError(
            "GraphHierarchy(method='louvain') needs networkx >= 2.8: 'pip "
            "install networkx', or choose method='metis'") from None
    return networkx


def _check_graclus():
    from torch_geometric.nn import pool
    try:  # The kernel lives in pyg-lib (PyG >= 2.7) or torch-cluster.
        pool.graclus(torch.tensor([[0, 1], [1, 0]]), num_nodes=2)
    except (ImportError, RuntimeError, AttributeError) as e:
        raise ImportError(
            f"GraphHierarchy(method='graclus') needs the kernel of "
            f"torch_geometric.nn.pool.graclus, which is missing ({e}): "
            f"'pip install pyg-lib' (PyG >= 2.7) or 'pip install "
            f"torch-cluster' (older PyG), or choose method='metis' or "
            f"'louvain'") from None
