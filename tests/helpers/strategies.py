r"""Hypothesis strategies for random irregular forests, and plain-Python tree
utilities that recompute what :class:`hsa_geo.Hierarchy` derives.

A forest is drawn as nested Python lists (a leaf is ``None``, an internal
node is the list of its children) and then flattened to a parent vector with
randomly permuted leaf ids and internal ids, so that tests never rely on ids
following the tree order. The shapes cover what breaks tree code: unbalanced
depths, single-child chains (also above roots and above leaves), forests with
several roots, trees that are a single leaf, and families mixing leaves and
clusters.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from hypothesis import strategies as st

LEAF = None


class Forest(NamedTuple):
    r"""A forest as a parent vector: leaves ``0..num_leaves-1`` first."""
    parent: List[int]
    num_leaves: int

    @property
    def num_nodes(self) -> int:
        return len(self.parent)


# Drawing nested trees ######################################################


def _split(draw, total: int, parts: int) -> List[int]:
    r"""Splits ``total`` into ``parts`` positive integers."""
    sizes = []
    for i in range(parts - 1):
        rest = parts - 1 - i
        sizes.append(draw(st.integers(1, total - sum(sizes) - rest)))
    sizes.append(total - sum(sizes))
    return sizes


def _chain(node, length: int):
    for _ in range(length):
        node = [node]
    return node


def _draw_tree(draw, num_leaves: int, max_depth: int, max_branching: int,
               chains: bool):
    r"""A nested tree with exactly ``num_leaves`` leaves and at most
    ``max_depth`` branching levels (single-child chains not counted; a
    family is made flat, wider than ``max_branching`` if it must, once the
    depth is used up)."""
    chain = draw(st.sampled_from((0, 0, 0, 1, 2))) if chains else 0
    if num_leaves == 1:
        return _chain(LEAF, chain)
    if max_depth <= 1 or (num_leaves <= max_branching and draw(st.booleans())):
        # A family of leaves only.
        return _chain([LEAF] * num_leaves, chain)
    width = draw(st.integers(2, max(2, min(num_leaves, max_branching))))
    sizes = _split(draw, num_leaves, width)
    kids = [
        _draw_tree(draw, s, max_depth - 1, max_branching, chains)
        for s in sizes
    ]
    return _chain(kids, chain)


def _flatten(trees, draw, shuffle: bool) -> Forest:
    r"""Parent vector of a list of nested trees, ids randomly permuted."""
    edges = []  # (child key, parent key); keys are ('L', k) or ('C', k)
    counters = {'L': 0, 'C': 0}

    def visit(node, parent_key):
        kind = 'L' if node is LEAF else 'C'
        key = (kind, counters[kind])
        counters[kind] += 1
        edges.append((key, parent_key))
        if node is not LEAF:
            # Iterative would be nicer, but depth is bounded by the drawer.
            for c in node:
                visit(c, key)

    for t in trees:
        visit(t, None)
    n, m = counters['L'], counters['C']
    if shuffle:
        leaf_perm = draw(st.permutations(range(n)))
        clus_perm = draw(st.permutations(range(m)))
    else:
        leaf_perm, clus_perm = list(range(n)), list(range(m))

    def node_id(key):
        kind, k = key
        return leaf_perm[k] if kind == 'L' else n + clus_perm[k]

    parent = [-1] * (n + m)
    for key, pkey in edges:
        parent[node_id(key)] = -1 if pkey is None else node_id(pkey)
    return Forest(parent, n)


@st.composite
def forests(draw, min_leaves: int = 1, max_leaves: int = 20,
            max_trees: int = 3, max_depth: int = 5, max_branching: int = 5,
            chains: bool = True, root_leaves: bool = True,
            shuffle: bool = True) -> Forest:
    r"""A random irregular forest as a :class:`Forest`.

    Args:
        min_leaves, max_leaves: bounds on the total number of leaves.
        max_trees: at most this many roots.
        max_depth: at most this many edges from a root down to a leaf, not
            counting single-child chains (up to two extra edges per level).
        max_branching: at most this many children per node.
        chains: allow single-child nodes (chains), above roots and leaves.
        root_leaves: allow a tree that is a single leaf without parent.
        shuffle: permute leaf ids and internal ids randomly.
    """
    n = draw(st.integers(min_leaves, max_leaves))
    num_trees = draw(st.integers(1, min(max_trees, n)))
    trees = []
    for size in _split(draw, n, num_trees):
        if size == 1 and root_leaves and draw(st.booleans()):
            trees.append(LEAF)  # a root that is a leaf
            continue
        tree = _draw_tree(draw, size, max_depth, max_branching, chains)
        if tree is LEAF:
            # A one-leaf tree needs an internal node unless root leaves are
            # wanted; give it a single-child root.
            tree = [LEAF]
        trees.append(tree)
    return _flatten(trees, draw, shuffle)


def subset_values(num_leaves: int):
    r"""Leaf ids of a subset of :obj:`num_leaves` leaves: half the time
    distinct ids in range in any order (all of them, a permutation, in
    one in eight draws), else any short list of small integers (out of
    range, repeated, empty)."""
    ids = list(range(num_leaves))
    valid = st.permutations(ids).flatmap(
        lambda p: st.integers(1, len(p)).map(lambda k: list(p[:k])))
    anything = st.lists(st.integers(-2, num_leaves + 2),
                        max_size=num_leaves + 2)
    return st.one_of(valid, st.permutations(ids).map(list), anything,
                     anything)


def single_trees(**kwargs):
    r""":func:`forests` restricted to one root."""
    kwargs.setdefault('root_leaves', False)
    return forests(max_trees=1, **kwargs)


def flat_tree(num_leaves: int) -> Forest:
    r"""One root whose children are all the leaves: softmax attention."""
    return Forest([num_leaves] * num_leaves + [-1], num_leaves)


def balanced_assignments(num_leaves: int, branching: int) -> list:
    r"""Per-level cluster assignments of a balanced tree (last level: one
    root)."""
    import torch
    levels, size = [], num_leaves
    while size > 1:
        levels.append(torch.arange(size) // branching)
        size = (size + branching - 1) // branching
    if not levels:
        levels.append(torch.zeros(1, dtype=torch.long))
    return levels


@st.composite
def assignment_lists(draw, max_leaves: int = 15, max_levels: int = 4):
    r"""Random per-level cluster assignments: consecutive cluster ids per
    level, ``-1`` (a root) allowed at any level."""
    n = draw(st.integers(1, max_leaves))
    levels = []
    size = n
    for _ in range(draw(st.integers(1, max_levels))):
        num_next = draw(st.integers(1, size))
        raw = draw(
            st.lists(st.integers(-1, num_next - 1), min_size=size,
                     max_size=size))
        # Relabel the used ids consecutively (in order of first use).
        ids: Dict[int, int] = {}
        assign = []
        for a in raw:
            if a < 0:
                assign.append(-1)
            else:
                assign.append(ids.setdefault(a, len(ids)))
        levels.append(assign)
        size = len(ids)
        if size == 0:
            break
    return levels


# Plain-Python recomputation ################################################


def children_of(parent: List[int]) -> Dict[int, List[int]]:
    r"""Children of every node, in increasing id (nodes without children
    absent)."""
    kids: Dict[int, List[int]] = {}
    for node, p in enumerate(parent):
        if p >= 0:
            kids.setdefault(p, []).append(node)
    return kids


def root_of(parent: List[int], node: int) -> int:
    while parent[node] >= 0:
        node = parent[node]
    return node


def ancestors(parent: List[int], node: int) -> List[int]:
    r"""``node`` and its ancestors, bottom-up."""
    path = [node]
    while parent[path[-1]] >= 0:
        path.append(parent[path[-1]])
    return path


def depth_of(parent: List[int]) -> List[int]:
    return [len(ancestors(parent, i)) - 1 for i in range(len(parent))]


def leaves_under(parent: List[int], num_leaves: int) -> List[List[int]]:
    r"""Sorted leaf ids under every node."""
    under: List[List[int]] = [[] for _ in parent]
    for leaf in range(num_leaves):
        for a in ancestors(parent, leaf):
            under[a].append(leaf)
    return under


def height_of(parent: List[int], num_leaves: int) -> List[int]:
    height = [0] * len(parent)
    for leaf in range(num_leaves):
        for h, a in enumerate(ancestors(parent, leaf)):
            height[a] = max(height[a], h)
    return height


def lca_children(parent: List[int], i: int, j: int) -> Optional[tuple]:
    r"""``(F, a, b)`` for leaves ``i != j``: their lowest common ancestor and
    the children of ``F`` above ``i`` and ``j``; ``None`` across trees."""
    pi, pj = ancestors(parent, i), ancestors(parent, j)
    if pi[-1] != pj[-1]:
        return None
    # Walk down from the common root while the paths agree.
    pi, pj = pi[::-1], pj[::-1]
    d = 0
    while d + 1 < len(pi) and d + 1 < len(pj) and pi[d + 1] == pj[d + 1]:
        d += 1
    return pi[d], pi[d + 1], pj[d + 1]


def relabel(forest: Forest, leaf_perm: List[int],
            clus_perm: List[int]) -> Forest:
    r"""The same forest with leaf ``i`` renamed ``leaf_perm[i]`` and internal
    node ``n + c`` renamed ``n + clus_perm[c]``."""
    n = forest.num_leaves

    def new(x):
        if x < 0:
            return x
        return leaf_perm[x] if x < n else n + clus_perm[x - n]

    parent = [0] * forest.num_nodes
    for node, p in enumerate(forest.parent):
        parent[new(node)] = new(p)
    return Forest(parent, n)


def insert_chains(forest: Forest, lengths: List[int]) -> Forest:
    r"""Inserts ``lengths[x]`` single-child nodes between every node ``x``
    and its parent (above the root for roots). New nodes get the next
    internal ids."""
    parent = list(forest.parent)
    for node, length in enumerate(lengths):
        above = parent[node]
        below = node
        for _ in range(length):
            new = len(parent)
            parent.append(above)
            parent[below] = new
            below = new
    return Forest(parent, forest.num_leaves)


def fewer(divisor: int):
    r"""Hypothesis settings with a fraction of the active profile's examples
    (at least 3), for the expensive tests."""
    from hypothesis import settings
    return settings(max_examples=max(3, settings().max_examples // divisor))


def induced_forest(f: Forest, keep: List[int]) -> Tuple[Forest, Dict]:
    r"""The forest restricted to the leaves ``keep`` (leaf ``keep[i]``
    becomes leaf ``i``), and the new id of every kept node: the internal
    nodes above a kept leaf follow the leaves, in their old order."""
    alive = {a for leaf in keep for a in ancestors(f.parent, leaf)}
    new = {old: i for i, old in enumerate(keep)}
    for old in range(f.num_leaves, f.num_nodes):
        if old in alive:
            new[old] = len(new)
    parent = [0] * len(new)
    for old, i in new.items():
        parent[i] = -1 if f.parent[old] < 0 else new[f.parent[old]]
    return Forest(parent, len(keep)), new
