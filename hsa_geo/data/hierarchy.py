r"""The tree (forest) that turns a set of leaves into a nested signal."""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import (Any, Callable, Dict, Iterable, List, NamedTuple,
                    Optional, Sequence, Tuple, Union)

import torch
from torch import Tensor

from hsa_geo._checks import check_index, check_int
from hsa_geo._memory import ASK_ABOVE, ensure_memory
from hsa_geo._permutation import inverse_permutation
from hsa_geo.data.sparse_families import SparseFamilies, sparse_families
from hsa_geo.data.tensor_state import cache_mode

IndexLike = Union[Tensor, Sequence[int]]

# Families with more children get tables of their exact width.
WIDE_FAMILY = 1024
# Buckets with at most this many padded scores (F * W^2) join the pair
# list: below it the fixed cost of a bucket's operations outweighs its
# arithmetic, and one list serves every such bucket with a fixed number of
# operations (a batch of molecules has families of a dozen widths and three
# kinds). Read when a hierarchy's layout is first derived.
SPARSE_PAIR_LIMIT = 2**15
# A bucket with a family graph joins the pair list when its allowed pairs
# are at most this fraction of its padded scores, so that the scored pairs
# are never more than twice the allowed ones: on the sparse kernels of a
# pair list (docs/math.md, 6.5) an ogbn-arxiv-sized METIS tree whose family
# graph allows 20% of the pairs runs forward+backward in 0.8x the time of
# its masked tables.
SPARSE_DENSITY = 2
# What a pickled Hierarchy holds (its defining tensors, see __getstate__).
PICKLE_FORMAT = 1


@dataclass(frozen=True)
class FamilyBucket:
    r"""Families of the same padded width :math:`W` (the number of children
    rounded up to a power of two up to 64, above to a multiple of an eighth
    of the power of two below) and the same kind of children, laid out as
    an :math:`[F, W]` table so that the attention inside all of them is one
    batched matrix product.

    Attributes:
        width (int): :math:`W`.
        kind (str): ``'leaf'`` (every slot is a leaf, no padding),
            ``'cluster'`` (every slot an internal node, no padding) or
            ``'mixed'`` (anything else).
        source_range (tuple, optional): ``(start, end)`` when
            :attr:`source_index` is ``start..end-1`` (a ``'leaf'`` or
            ``'cluster'`` bucket whose slots are consecutive rows), so the
            table is a view of those rows and needs no gather.
        family (LongTensor): ``[F]`` node id of each family's parent.
        parent_cluster (LongTensor): ``[F]`` that id minus ``num_leaves``,
            increasing.
        parent_range (tuple, optional): ``(start, end)`` when
            :attr:`parent_cluster` is ``start..end-1``.
        mask (BoolTensor): ``[F, W]``, ``True`` on real slots.
        children (LongTensor): ``[F, W]`` node id of each child (``-1`` in
            padding).
        source_index (LongTensor): ``[F * W]`` row of each slot in the leaf
            rows (``'leaf'``) or in the internal-node rows (``'cluster'``);
            empty for ``'mixed'``.
        leaf_slot, leaf_node (LongTensor): slots holding a leaf, and its id.
        cluster_slot, cluster_node (LongTensor): slots holding an internal
            node, and its id minus ``num_leaves``.
        allowed (BoolTensor, optional): ``[F, W, W]`` with a family graph:
            ``allowed[f, i, j]`` if child ``i`` may attend to sibling ``j``
            (never on the diagonal or in padding); :obj:`None` for dense
            families.
        sparse (bool): whether the attention of these families runs on the
            list of their sibling pairs
            (:class:`~hsa_geo.data.sparse_families.SparseFamilies`) rather
            than on this table: for small buckets, and where a family graph
            allows few of the table's pairs.
        parents_are_roots (bool): whether every family's parent is a root
            (whose mass is 1: the passes need not scale its families).
    """
    width: int
    kind: str
    source_range: Optional[Tuple[int, int]]
    family: Tensor
    parent_cluster: Tensor
    parent_range: Optional[Tuple[int, int]]
    mask: Tensor
    children: Tensor
    source_index: Tensor
    leaf_slot: Tensor
    leaf_node: Tensor
    cluster_slot: Tensor
    cluster_node: Tensor
    allowed: Optional[Tensor] = None
    sparse: bool = False
    parents_are_roots: bool = False

    @property
    def num_families(self) -> int:
        return self.family.numel()

    def to(self, device: Union[str, torch.device]) -> 'FamilyBucket':
        return replace(
            self, **{
                f.name: getattr(self, f.name).to(device)
                for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)
            })


@dataclass(frozen=True)
class HierarchyLayout:
    r"""The arrays the dynamic program reads, derived once per
    :class:`Hierarchy` (see :attr:`Hierarchy.layout`). They are the
    hierarchy's own tensors, not copies: read them, never modify them.

    Attributes:
        buckets (list of FamilyBucket): the families by padded width.
        cluster_levels (list of (LongTensor, LongTensor)): per depth ``d >=
            1``, the internal nodes at that depth and their parents, both in
            the internal numbering ``0..M-1``.
        leaf_count (LongTensor): ``[T]`` :math:`|n|`.
        leaves_with_parent (LongTensor): leaves that are not roots.
        leaf_parent_cluster (LongTensor): their parents, ``0..M-1``.
        leaf_blocks (FamilyBucket, optional): the ``'leaf'`` bucket holding
            all leaves in order, when there is one (the fused leaf path).
        leaves_outside_leaf_families (LongTensor): non-root leaves that are
            not in a multi-child ``'leaf'`` bucket.
        outside_parent_cluster (LongTensor): their parents, ``0..M-1``.
        sparse (SparseFamilies): the families of the buckets flagged
            :attr:`FamilyBucket.sparse`, as one list of sibling pairs.
        cluster_parent (LongTensor): ``[M]`` the parent of every internal
            node, ``0..M-1`` (``-1`` for roots).
        cluster_jumps (list of (LongTensor, LongTensor), optional): the
            ancestor tables of pointer doubling over the internal nodes, for
            hierarchies deeper than 32 levels (:obj:`None` otherwise): entry
            ``j`` holds the internal nodes that have a :math:`2^j`-th
            ancestor, in increasing depth, and that ancestor. A sum over
            every path from a root (or over every subtree) takes one step
            per entry, :math:`\lceil \log_2 (\mathrm{depth} + 1) \rceil`
            in all, instead of one per level; the depth order lets a step
            update rows in place a chunk at a time, deepest (or shallowest)
            first, as no chunk reads a row an earlier one wrote.
        cluster_order (LongTensor): ``[M]`` the internal nodes by depth,
            roots first (each depth in increasing id: the children of
            :attr:`cluster_levels`, level after level, after the roots).
        cluster_order_parents (list of LongTensor): per entry of
            :attr:`cluster_levels`, the position in :attr:`cluster_order`
            of every child's parent.
    """
    buckets: List[FamilyBucket]
    cluster_levels: List[Tuple[Tensor, Tensor]]
    leaf_count: Tensor
    leaves_with_parent: Tensor
    leaf_parent_cluster: Tensor
    leaf_blocks: Optional[FamilyBucket]
    leaves_outside_leaf_families: Tensor
    outside_parent_cluster: Tensor
    sparse: SparseFamilies
    cluster_parent: Tensor
    cluster_jumps: Optional[List[Tuple[Tensor, Tensor]]]
    cluster_order: Tensor
    cluster_order_parents: List[Tensor]


class _NodeData(NamedTuple):
    # Per node and per level, derived from the parents on first use.
    height: Tensor
    size: Tensor
    max_depth: int
    levels: List[Tensor]
    cluster_levels: List[Tuple[Tensor, Tensor]]
    cluster_parent: Tensor
    cluster_jumps: Optional[List[Tuple[Tensor, Tensor]]]
    cluster_order: Tensor
    cluster_order_parents: List[Tensor]
    leaves_with_parent: Tensor
    leaf_parent_cluster: Tensor
    num_trees: int
    max_branching: int
    num_pairs: int
    widest: Tuple[int, int]


class _FamilyData(NamedTuple):
    # The family tables, derived on first use.
    buckets: List[FamilyBucket]
    sibling_rank: Tensor
    leaf_blocks: Optional[int]  # position in `buckets`
    outside: Tuple[Tensor, Tensor]
    sparse: SparseFamilies


class _LevelViews(list):
    r"""The per-level pieces of flat tensors (:obj:`bases`, nodes sorted by
    depth) split by :obj:`counts`: single tensors, or tuples of the pieces
    of several bases. A list like any other, except that the immutability
    stamp reads only the bases, whose version counters the pieces share, and
    that a move splits the moved bases: a deep tree has thousands of levels,
    and reading every piece on every :attr:`Hierarchy.layout` would cost a
    Python step per level."""
    def __init__(self, bases: Tuple[Tensor, ...], counts: List[int]):
        self.bases, self.counts = bases, counts
        pieces = [torch.split(b, counts) for b in bases]
        super().__init__(pieces[0] if len(bases) == 1 else zip(*pieces))

    def to(self, device: Union[str, torch.device]) -> '_LevelViews':
        return _LevelViews(tuple(b.to(device) for b in self.bases),
                           self.counts)


def _tensors_in(values: Iterable[Any]) -> List[Tensor]:
    r"""The tensors in :obj:`values`, in lists, tuples and buckets at any
    depth, in a fixed order."""
    out, todo = [], list(values)
    while todo:
        value = todo.pop()
        if isinstance(value, Tensor):
            out.append(value)
        elif isinstance(value, _LevelViews):
            todo.extend(value.bases)
        elif isinstance(value, (list, tuple)):
            todo.extend(value)
        elif isinstance(value, (FamilyBucket, SparseFamilies)):
            todo.extend(getattr(value, f.name) for f in fields(value))
    return out


def _moved(value: Any, device: Union[str, torch.device]) -> Any:
    if isinstance(value, (Tensor, FamilyBucket, SparseFamilies,
                          _LevelViews)):
        return value.to(device)
    if isinstance(value, list):
        return [_moved(item, device) for item in value]
    if isinstance(value, tuple):
        items = (_moved(item, device) for item in value)
        return type(value)(*items) if hasattr(value, '_fields') else \
            tuple(items)
    return value


def _as_index(value: IndexLike, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"'{name}' must be a 1-D integer tensor or a "
                            f"sequence of ints ({e})") from None
        if value.numel() == 0:
            value = value.long()
    return check_index(value, name, rows=None)


def _as_range(index: Tensor) -> Optional[Tuple[int, int]]:
    r"""``(start, end)`` if :obj:`index` is ``start..end-1`` in order."""
    if index.numel() == 0:
        return None
    lo = int(index[0])
    hi = lo + index.numel()
    if bool((index == torch.arange(lo, hi, device=index.device)).all()):
        return lo, hi
    return None


def _allowed_slots(edges: Tensor, edge_fam: Tensor, fams: Tensor,
                   rank: Tensor, m: int, w: int) -> Tensor:
    r"""``[F, W, W]`` the family graph of a bucket's families :obj:`fams`
    (of the :obj:`m`) of width :obj:`w`: whether slot ``a`` may attend to
    slot ``b``."""
    count = fams.numel()
    ensure_memory(count * w * w, 'the family graph masks of the families '
                  f'of width {w}', edges.device)
    # Each family's row in the bucket, -1 outside it.
    local = torch.full((m, ), -1, dtype=torch.long, device=edges.device)
    local[fams] = torch.arange(count, device=edges.device)
    allowed = torch.zeros(count, w, w, dtype=torch.bool, device=edges.device)
    in_bucket = local[edge_fam] >= 0
    a, b = edges[:, in_bucket]
    allowed[local[edge_fam[in_bucket]], rank[a], rank[b]] = True
    return allowed


def _family_bucket(w: int, kind: str, fams: Tensor, n: int, child: Tensor,
                   flat: Tensor, allowed: Optional[Tensor],
                   parents_are_roots: bool) -> FamilyBucket:
    r"""The bucket of the families :obj:`fams` (cluster ids) of width
    :obj:`w`, from their children :obj:`child` and the slot ``f * w + s``
    of each (:obj:`flat`)."""
    children = torch.full((fams.numel() * w, ), -1, dtype=torch.long,
                          device=child.device).scatter_(0, flat, child)
    source_index = children[:0]
    if kind != 'mixed':
        source_index = children if kind == 'leaf' else children - n
    is_leaf = child < n
    range_ = _as_range(source_index)
    return FamilyBucket(
        width=w,
        kind=kind,
        source_range=range_,
        family=fams + n,
        parent_cluster=fams,
        parent_range=_as_range(fams),
        mask=(children >= 0).view(-1, w),
        children=children.view(-1, w),
        source_index=source_index,
        leaf_slot=flat[is_leaf],
        leaf_node=child[is_leaf],
        cluster_slot=flat[~is_leaf],
        cluster_node=child[~is_leaf] - n,
        allowed=allowed,
        sparse=_is_sparse(w, fams.numel(), allowed,
                          kind == 'leaf' and range_ == (0, n)),
        parents_are_roots=parents_are_roots,
    )


def _checked_clusters(levels: List[Tensor], lvl: int) -> int:
    r"""The number of clusters ``assignments[lvl]`` maps to, after checking
    it: leaves at level 0, no id below ``-1``, one entry per cluster in the
    next level, and no cluster without members."""
    assign = levels[lvl]
    size = assign.numel()
    if lvl == 0 and size == 0:
        raise ValueError("'assignments[0]' is empty; a hierarchy "
                         "needs at least one leaf")
    num_next = int(assign.max()) + 1 if size > 0 else 0
    if size > 0 and int(assign.min()) < -1:
        pos = int((assign < -1).nonzero()[0])
        raise ValueError(
            f"assignments[{lvl}][{pos}] = {int(assign[pos])} is "
            f"negative; use -1 for a root and cluster ids >= 0")
    if lvl + 1 < len(levels) and levels[lvl + 1].numel() != num_next:
        raise ValueError(
            f"assignments[{lvl + 1}] has {levels[lvl + 1].numel()} "
            f"entries but assignments[{lvl}] uses {num_next} "
            f"clusters (ids 0..{num_next - 1}); level {lvl + 1} needs "
            f"one entry per cluster of level {lvl + 1}")
    members = torch.bincount(assign[assign >= 0], minlength=num_next)
    if num_next > 0 and bool((members == 0).any()):
        empty = int((members == 0).nonzero()[0])
        raise ValueError(
            f"cluster {empty} of level {lvl + 1} has no members in "
            f"assignments[{lvl}]; cluster ids must be consecutive "
            f"(relabel with torch_geometric.nn.pool.consecutive."
            f"consecutive_cluster)")
    return num_next


def _is_sparse(width: int, num_families: int, allowed: Optional[Tensor],
               all_leaves_in_order: bool) -> bool:
    r"""Whether a bucket's families run on their pair list: when a family
    graph allows few of the table's pairs (:data:`SPARSE_DENSITY`), and when
    the bucket is small (:data:`SPARSE_PAIR_LIMIT`), unless it holds every
    leaf in order (the fused leaf path is faster)."""
    if width == 1:
        return False  # no pairs at all
    padded = num_families * width**2
    if allowed is not None and \
            int(allowed.sum()) * SPARSE_DENSITY <= padded:
        return True
    return not all_leaves_in_order and padded <= SPARSE_PAIR_LIMIT


def _padded_width(num_children: Tensor) -> Tensor:
    r"""The width of a family's table: the next power of two up to 64
    children (few, cheap buckets; at most 4x the pairs of small families),
    then the next multiple of an eighth of the power of two below, so that
    a family wastes at most about 27% of its :math:`W^2` scores (a power of
    two would pad 50,000 children to 65,536, 1.7x the scores); families of
    more than :data:`WIDE_FAMILY` children are not padded."""
    width = torch.ones_like(num_children)
    big = num_children > 1
    width[big] = 2**torch.ceil(torch.log2(num_children[big].double())).long()
    wide = num_children > 64
    step = 2**(torch.floor(torch.log2(num_children[wide].double())).long()
               - 3)
    width[wide] = (num_children[wide] + step - 1) // step * step
    # Wide families are few and each is a large piece of work: a table of
    # its exact width wastes nothing.
    exact = num_children > WIDE_FAMILY
    width[exact] = num_children[exact]
    return width


def parent_depths(parent: Tensor) -> Tensor:
    r"""``[T]`` the number of edges from every node up to its root, for a
    parent vector of a forest (``-1`` at roots), by pointer doubling in
    :math:`O(T \log \mathrm{depth})`."""
    return path_sums(parent, (parent >= 0).long())


def path_sums(parent: Tensor, weight: Tensor) -> Tensor:
    r"""``[T]`` per node, the sum of :obj:`weight` ``[T]`` over the node and
    its ancestors below its root (a root's own weight is never added), for
    a parent vector of a forest (``-1`` at roots), by pointer doubling in
    :math:`O(T \log \mathrm{depth})`."""
    # dist[i] = the sum from i up to, not including, `anc[i]`; both double
    # each round.
    dist = torch.where(parent >= 0, weight, 0)
    anc = parent.clone()
    while True:
        live = anc >= 0
        if not bool(live.any()):
            return dist
        a = anc.clamp(min=0)
        dist = torch.where(live, dist + dist[a], dist)
        anc = torch.where(live, anc[a], anc)


# Depth from which sums over paths and subtrees jump by pointer doubling
# (:attr:`HierarchyLayout.cluster_jumps`): below it, one step per level
# costs less than the doubling's extra rows.
DOUBLING_DEPTH = 32


def _ancestor_jumps(parent: Tensor, by_depth: Tensor
                    ) -> List[Tuple[Tensor, Tensor]]:
    r"""Pointer doubling over a ``[M]`` parent vector of a forest (``-1`` at
    roots), given its non-root nodes :obj:`by_depth` in increasing depth:
    per step ``j``, the nodes that have a :math:`2^j`-th ancestor (in
    increasing depth) and that ancestor;
    :math:`\lceil \log_2 (\mathrm{depth} + 1) \rceil` steps,
    :math:`O(M \log \mathrm{depth})` entries."""
    jumps, anc, node = [], parent, by_depth
    while node.numel() > 0:
        up = anc[node]
        jumps.append((node, up))
        # anc_{j+1}(v) = anc_j(anc_j(v))
        anc = torch.full_like(anc, -1).index_copy_(0, node, anc[up])
        node = node[anc[node] >= 0]
    return jumps


def _sizes_and_heights(parent: Tensor, n: int, depth: Tensor,
                       by_level: List[Tensor],
                       jumps: Optional[List[Tuple[Tensor, Tensor]]]
                       ) -> Tuple[Tensor, Tensor]:
    r"""``[T]`` the leaf count and the height of every node: bottom-up over
    the levels, or over the internal nodes' :func:`_ancestor_jumps` (a
    subtree sum and a subtree maximum) when there are any."""
    t, device = parent.numel(), parent.device
    size = torch.zeros(t, dtype=torch.long, device=device)
    size[:n] = 1
    height = torch.zeros(t, dtype=torch.long, device=device)
    if jumps is None:
        for nodes in reversed(by_level[1:]):
            par = parent[nodes]
            size.index_add_(0, par, size[nodes])
            height.scatter_reduce_(0, par, height[nodes] + 1, reduce='amax')
        return size, height
    # Leaf children per cluster and the depth of the deepest one; then
    # summed and maximised over subtrees (every subtree ends in leaves).
    leaf = (parent[:n] >= 0).nonzero().view(-1)
    par = parent[leaf] - n
    count = size[n:]
    count.index_add_(0, par, size[leaf])
    deepest = torch.full_like(count, -1).scatter_reduce_(
        0, par, depth[leaf], reduce='amax')
    for node, up in reversed(jumps):
        count.index_add_(0, up, count[node])
        deepest.scatter_reduce_(0, up, deepest[node], reduce='amax')
    height[n:] = deepest - depth[n:]
    return size, height


def distinct_sibling_pairs(parent: Tensor, num_leaves: int,
                           families: Optional[Tensor] = None) -> Tensor:
    r"""``[2, P]`` every ordered pair of distinct siblings, from the
    ``[T]`` :obj:`parent` vector of a forest, in the families whose
    internal node ``c`` (``0..M-1``) has ``families[c]`` (all families if
    :obj:`None`): the family graph that makes those families dense.
    Raises a :class:`ValueError` before allocating when they cannot fit in
    memory, naming the widest of those families."""
    child = (parent >= 0).nonzero().view(-1)
    family = parent[child] - num_leaves
    if families is not None:
        child, family = child[families[family]], family[families[family]]
    order = torch.argsort(family, stable=True)
    child, family = child[order], family[order]
    size = torch.bincount(family, minlength=parent.numel() - num_leaves)
    _ensure_pairs_fit(size, num_leaves, parent.device)
    start = torch.cumsum(size, 0) - size
    # Child i pairs with the size[family[i]] children from start[family[i]].
    reps = size[family]
    a = child.repeat_interleave(reps)
    first = torch.cumsum(reps, 0) - reps
    offset = torch.arange(a.numel(), device=parent.device) - \
        first.repeat_interleave(reps)
    b = child[start[family].repeat_interleave(reps) + offset]
    keep = a != b
    return torch.stack([a[keep], b[keep]])


def _ensure_pairs_fit(size: Tensor, num_leaves: int, device: torch.device):
    r"""Refuses the pairs of :func:`distinct_sibling_pairs` for families of
    :obj:`size` children when they cannot fit: about ten int64 at the peak
    per child and sibling (the pairs and their index temporaries)."""
    nbytes = int((size * size).sum()) * 80
    if nbytes <= ASK_ABOVE:
        return
    widest = int(size.argmax())
    ensure_memory(
        nbytes, 'listing every sibling pair of the dense families', device,
        f"the widest of them (node {widest + num_leaves}) has "
        f"{int(size[widest])} children. A family graph lists every pair "
        f"of a dense family when other families are sparse (a hierarchy "
        f"or batch mixing both): give that family a family graph of its "
        f"own (mark it sparse), or batch it apart from the signals with "
        f"family graphs")


def _first_occurrences(edges: Tensor, num_nodes: int) -> Tensor:
    r"""The pairs of :obj:`edges` ``[2, E]`` with every repeated pair kept
    once, at its first place (a copy): a family graph is a set of pairs,
    and a pair listed twice (edges coarsened to the same two siblings) must
    not count twice where the pairs are read as a list."""
    key = edges[0] * num_nodes + edges[1]
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    first = torch.ones_like(sorted_key, dtype=torch.bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    keep = torch.zeros_like(first)
    keep[order[first]] = True
    return edges[:, keep]


def _path_of(parent: List[int], start: int, limit: int = 12) -> str:
    seen, path, node = set(), [], start
    while node != -1 and node not in seen and len(path) < limit:
        seen.add(node)
        path.append(str(node))
        node = parent[node]
    return ' -> '.join(path + [str(node)])


class Hierarchy:
    r"""An immutable forest over :math:`N` leaves: the cluster tree of a
    nested signal.

    Nodes ``0..N-1`` are the leaves and match the rows of the leaf features;
    nodes ``N..T-1`` are internal nodes (clusters, sub-signals). A node with
    its children is a *family*. Every internal node has at least one child,
    leaves have none, and a node whose parent is ``-1`` is a root. Several
    roots make a forest: trees never attend to each other.

    The parents are checked at construction. Everything the dynamic program
    needs is derived once, on first use, with vectorised tensor code: the
    leaf count :math:`|n|`, depth and height of every node, the nodes of
    every depth level, and the families laid out by width
    (:class:`FamilyBucket`).

    A hierarchy may carry a *family graph* (sparse families): for every
    family, the ordered sibling pairs ``(a, b)`` along which child ``a`` may
    attend to sibling ``b``. Pairs not listed get zero weight; each child
    always keeps its self pair. Without a family graph every sibling sees
    every other one.

    Build one with :meth:`from_parent`, :meth:`from_assignments` or
    :meth:`batch`; add a family graph with :meth:`with_family_graph`; move
    it with :meth:`to`. A pickle holds the parents, the leaf count and the
    family graph only: they are checked again on
    loading and the rest is derived again on use, so pickles load in later
    versions. Copies (:mod:`copy`) keep what was derived.

    Args:
        parent (LongTensor): ``[T]`` parent of every node, ``-1`` for roots.
        num_leaves (int): :math:`N`.
        family_edge_index (LongTensor, optional): ``[2, E]`` the family
            graph, as pairs ``(a, b)`` of node ids of two different children
            of one parent (a pair listed more than once is kept once).
    """
    def __init__(self, parent: IndexLike, num_leaves: int,
                 family_edge_index: Optional[Tensor] = None):
        parent = _as_index(parent, 'parent')
        num_leaves = check_int(num_leaves, 'num_leaves')
        if num_leaves > parent.numel():
            raise ValueError(
                f"'parent' has {parent.numel()} entries but num_leaves="
                f"{num_leaves}; it needs one entry per node, leaves first "
                f"(T >= num_leaves)")
        # Private copies (the caller may go on modifying its tensors), and
        # normal tensors even when built under inference mode, so that a
        # hierarchy made during an evaluation can be trained on.
        with cache_mode():
            self._parent = parent.clone()
            self._num_leaves = num_leaves
            self._depth = self._check()
            self._family_edges = self._check_family_edges(family_edge_index)
        # Derived on first use (a batch may only be checked, never attended
        # over).
        self._nodes: Optional[_NodeData] = None
        self._families: Optional[_FamilyData] = None
        self._cache = {}  # derived on demand: sibling pairs, adjacency
        self._restamp()

    # Construction ##########################################################

    @classmethod
    def from_parent(cls, parent: IndexLike, num_leaves: int,
                    family_edge_index: Optional[Tensor] = None
                    ) -> 'Hierarchy':
        r"""Builds a hierarchy from the parent of every node.

        Args:
            parent (LongTensor): ``[T]``; ``parent[n]`` is the parent of node
                ``n`` or ``-1`` if ``n`` is a root. Leaves are ``0..N-1``.
            num_leaves (int): :math:`N`.
            family_edge_index (LongTensor, optional): ``[2, E]`` the family
                graph (see :class:`Hierarchy`).
        """
        return cls(parent, num_leaves, family_edge_index)

    @classmethod
    def from_assignments(cls, assignments: Sequence[IndexLike],
                         family_edge_index: Optional[Tensor] = None
                         ) -> 'Hierarchy':
        r"""Builds a hierarchy from per-level cluster assignments, as the
        ``cluster`` vectors of PyG poolings produce them.

        ``assignments[0]`` has one entry per leaf and maps it to a cluster of
        level 1 (``0..n_1-1``); ``assignments[l]`` maps the ``n_l`` clusters
        of level ``l`` to those of level ``l+1``. ``-1`` marks a node without
        parent (a root). The clusters of the last level are roots. Node ids
        are given level by level: leaves, then the clusters of level 1, ...

        Args:
            assignments (list of LongTensor): ``assignments[l]`` is ``[n_l]``.
            family_edge_index (LongTensor, optional): ``[2, E]`` the family
                graph in these node ids (see :class:`Hierarchy`).
        """
        if isinstance(assignments, Tensor) or not isinstance(
                assignments, Sequence):
            raise TypeError(
                f"'assignments' must be a list of 1-D index tensors, one per "
                f"level, got {type(assignments).__name__}; wrap a single "
                f"level as [assignment]")
        if len(assignments) == 0:
            raise ValueError("'assignments' is empty; pass at least the "
                             "assignment of the leaves to level-1 clusters")
        levels = [
            _as_index(a, f'assignments[{i}]')
            for i, a in enumerate(assignments)
        ]
        device = levels[0].device
        offset, parents = 0, []
        for lvl, assign in enumerate(levels):
            num_next = _checked_clusters(levels, lvl)
            nxt = offset + assign.numel()
            parents.append(torch.where(assign >= 0, assign + nxt, assign))
            offset = nxt
            if lvl + 1 == len(levels) and num_next > 0:
                parents.append(
                    torch.full((num_next, ), -1, dtype=torch.long,
                               device=device))
        return cls(torch.cat(parents), levels[0].numel(), family_edge_index)

    @classmethod
    def batch(cls, hierarchies: Sequence['Hierarchy']) -> 'Hierarchy':
        r"""Joins hierarchies into one forest. The leaves of all of them come
        first, in order (matching ``torch.cat`` of their leaf features), then
        their internal nodes."""
        if isinstance(hierarchies, Hierarchy) or not isinstance(
                hierarchies, Sequence):
            raise TypeError(f"'hierarchies' must be a list of Hierarchy, got "
                            f"{type(hierarchies).__name__}")
        if len(hierarchies) == 0:
            raise ValueError("'hierarchies' is empty")
        for i, h in enumerate(hierarchies):
            if not isinstance(h, Hierarchy):
                raise TypeError(f"hierarchies[{i}] must be a Hierarchy, got "
                                f"{type(h).__name__}")
            if h.device != hierarchies[0].device:
                raise ValueError(
                    f"hierarchies[{i}] is on {h.device} but hierarchies[0] "
                    f"on {hierarchies[0].device}; move them to one device "
                    f"first (Hierarchy.to)")
        num_leaves = sum(h.num_leaves for h in hierarchies)
        leaf_off, clus_off, parts_leaf, parts_clus = 0, num_leaves, [], []
        sparse = [h._family_edges is not None for h in hierarchies]
        edges = []
        for h in hierarchies:
            p, n = h.parent, h.num_leaves

            def shift(ids: Tensor) -> Tensor:
                out = torch.where(ids >= n, ids - n + clus_off,
                                  ids + leaf_off)
                return torch.where(ids < 0, ids, out)

            new = shift(p)
            parts_leaf.append(new[:n])
            parts_clus.append(new[n:])
            if any(sparse):
                edges.append(shift(
                    h._family_edges if h._family_edges is not None else
                    distinct_sibling_pairs(p, n)))
            leaf_off += n
            clus_off += h.num_nodes - n
        return cls(torch.cat(parts_leaf + parts_clus), num_leaves,
                   torch.cat(edges, dim=1) if edges else None)

    def with_family_graph(self, family_edge_index: Optional[Tensor]
                          ) -> 'Hierarchy':
        r"""The same tree with the family graph :obj:`family_edge_index`
        (``[2, E]`` sibling pairs; :obj:`None`: dense families)."""
        return Hierarchy(self._parent, self._num_leaves, family_edge_index)

    def to(self, device: Union[str, torch.device]) -> 'Hierarchy':
        r"""Returns a copy whose tensors live on :obj:`device` (the derived
        data built so far is moved, not recomputed)."""
        with cache_mode():
            return self._copied(lambda value: _moved(value, device),
                                empty_cache=True)

    # Validation ############################################################

    def _check(self) -> Tensor:
        r"""Checks the parents; returns ``[T]`` the depth of every node,
        which the check for cycles computes on the way."""
        parent, n = self._parent, self._num_leaves
        t = parent.numel()
        low, high = torch.stack(parent.aminmax()).tolist()
        if low < -1 or high >= t:
            bad = (parent < -1) | (parent >= t)
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"parent[{i}] = {int(parent[i])} is out of range for {t} "
                f"nodes; use -1 for a root or a node id in 0..{t - 1}")
        # Children per node, roots counted in a first bin that is dropped.
        num_children = torch.bincount(parent + 1, minlength=t + 1)[1:]
        if bool(num_children[:n].any()):
            is_child_of_leaf = (parent >= 0) & (parent < n)
            i = int(is_child_of_leaf.nonzero()[0])
            raise ValueError(
                f"node {int(parent[i])} is a leaf (ids below num_leaves={n}) "
                f"but is the parent of node {i}; leaves have no children, so "
                f"number clusters from {n} on (or raise num_leaves)")
        childless = (num_children[n:] == 0)
        if bool(childless.any()):
            i = int(childless.nonzero()[0]) + n
            raise ValueError(
                f"internal node {i} has no children; every node with id >= "
                f"num_leaves={n} must be a cluster of at least one node: "
                f"remove it or count it as a leaf")
        # Pointer jumping: after k rounds `anc` is the 2^k-th ancestor (or
        # -1) and `depth` the edges up to it; a path of parents longer than T
        # exists only through a cycle.
        depth = (parent >= 0).long()
        anc = parent.clone()
        for _ in range(t.bit_length() + 1):
            live = anc >= 0
            if not bool(live.any()):
                return depth
            a = anc.clamp(min=0)
            depth = torch.where(live, depth + depth[a], depth)
            anc = torch.where(live, anc[a], anc)
        if bool((anc >= 0).any()):
            i = int((anc >= 0).nonzero()[0])
            raise ValueError(
                f"the parent pointers contain a cycle reachable from node "
                f"{i} ({_path_of(parent.tolist(), i)}); a hierarchy must be a "
                f"forest: every path of parents has to end in a root (-1)")
        return depth

    def _check_family_edges(self, edges: Optional[Tensor]
                            ) -> Optional[Tensor]:
        if edges is None:
            return None
        name = 'family_edge_index'
        edges = check_index(edges, name).to(self._parent.device)
        t = self._parent.numel()
        bad = (edges < 0) | (edges >= t)
        if bool(bad.any()):
            row, j = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"{name}[{row}, {j}] = {int(edges[row, j])} is not a node id "
                f"(0..{t - 1}); pairs hold node ids, leaves first")
        pa, pb = self._parent[edges[0]], self._parent[edges[1]]
        bad = (pa != pb) | (pa < 0)
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            a, b = int(edges[0, j]), int(edges[1, j])
            raise ValueError(
                f"{name}[:, {j}] = ({a}, {b}) is not a pair of siblings "
                f"(parents {int(pa[j])} and {int(pb[j])}); a family graph "
                f"only links children of one parent: coarsen edges between "
                f"clusters to the children of their lowest common ancestor")
        loop = edges[0] == edges[1]
        if bool(loop.any()):
            j = int(loop.nonzero()[0])
            raise ValueError(
                f"{name}[:, {j}] = ({int(edges[0, j])}, {int(edges[1, j])}) "
                f"is a self pair; every child keeps its self pair, so list "
                f"only pairs of different siblings (remove_self_loops)")
        return _first_occurrences(edges, t)

    # Derived data ##########################################################

    def _node_data(self) -> _NodeData:
        return self._lazy('_nodes', self._derive_nodes)

    def _family_data(self) -> _FamilyData:
        return self._lazy('_families', self._derive_families)

    def _lazy(self, name: str, derive: Callable[[], Any]) -> Any:
        r"""The derived data stored as :obj:`name`, derived on first use from
        the unchanged tensors."""
        value = self.__dict__[name]
        if value is None:
            self._check_unchanged()
            with cache_mode():
                value = derive()
            self.__dict__[name] = value
            self._restamp()
        return value

    def _check_unchanged(self):
        if self._versions() != self._stamp:
            raise ValueError(
                "a tensor of this Hierarchy was modified in place; a "
                "Hierarchy is immutable and its derived data no longer "
                "matches: build a new one (Hierarchy.from_parent) instead of "
                "editing its tensors")

    def _derive_nodes(self) -> _NodeData:
        parent, n, depth = self._parent, self._num_leaves, self._depth
        t = parent.numel()
        max_depth = int(depth.max()) if t > 0 else 0

        # Nodes of every depth level (roots are level 0), each in increasing
        # id: pieces of one sorted order, not a step per level.
        order = torch.argsort(depth, stable=True)
        counts = torch.bincount(depth, minlength=max_depth + 1).tolist()
        by_level = _LevelViews((order, ), counts)

        # Internal non-root nodes per depth, as (cluster id, parent cluster id)
        # in the internal numbering 0..T-N-1 the dynamic program works in.
        clusters = order[order >= n]
        counts = torch.bincount(depth[n:], minlength=max_depth + 1).tolist()
        cluster_order = clusters - n
        clusters = clusters[counts[0]:]  # without the roots
        cluster_levels = _LevelViews(
            (clusters - n, parent[clusters] - n), counts[1:])
        position = inverse_permutation(cluster_order)
        order_parents = _LevelViews((position[parent[clusters] - n], ),
                                    counts[1:])
        cluster_parent = torch.where(parent[n:] >= 0, parent[n:] - n, -1)
        jumps = _ancestor_jumps(cluster_parent, clusters - n) \
            if max_depth > DOUBLING_DEPTH else None
        size, height = _sizes_and_heights(parent, n, depth, by_level, jumps)

        leaf_parent = parent[:n]
        leaf_has_parent = (leaf_parent >= 0).nonzero().view(-1)
        num_children = torch.bincount(parent[parent >= 0], minlength=t)
        widest = int(num_children.argmax()) if t > 0 else 0
        return _NodeData(
            height=height, size=size, max_depth=max_depth, levels=by_level,
            cluster_levels=cluster_levels, cluster_parent=cluster_parent,
            cluster_jumps=jumps, cluster_order=cluster_order,
            cluster_order_parents=order_parents,
            leaves_with_parent=leaf_has_parent,
            leaf_parent_cluster=leaf_parent[leaf_has_parent] - n,
            num_trees=int((parent < 0).sum()),
            max_branching=int(num_children.max()) if t > n else 0,
            num_pairs=int((num_children**2).sum()),
            widest=(widest, int(num_children[widest]) if t > 0 else 0))

    def _derive_families(self) -> _FamilyData:
        parent, n = self._parent, self._num_leaves
        leaf_has_parent = self._node_data().leaves_with_parent
        buckets, rank = self._layout_families(parent, n, self._family_edges)
        # Leaves whose family is not a multi-child 'leaf' bucket receive the
        # context of their parent's path separately in the dynamic program.
        covered = torch.zeros(n, dtype=torch.bool, device=parent.device)
        for b in buckets:
            if b.kind == 'leaf' and b.width > 1 and not b.sparse:
                covered[b.children.flatten()] = True
        rest = leaf_has_parent[~covered[leaf_has_parent]]
        # All leaves in order in equal-width families: block reductions
        # replace scatters over the leaves.
        leaf_blocks = next(
            (i for i, b in enumerate(buckets) if b.kind == 'leaf'
             and b.source_range == (0, n) and not b.sparse), None)
        return _FamilyData(buckets=buckets, sibling_rank=rank,
                           leaf_blocks=leaf_blocks,
                           outside=(rest, parent[rest] - n),
                           sparse=sparse_families(buckets, n, parent.numel()))

    def _tensors(self) -> List[Tensor]:
        r"""Every tensor the hierarchy holds, derived data and the cached
        pair lists included."""
        return _tensors_in(
            [value for key, value in self.__dict__.items()
             if key != '_watched'] + list(self._cache.values()))

    # Copies within a process keep the derived data, which is current here.
    def __copy__(self) -> 'Hierarchy':
        out = object.__new__(Hierarchy)  # sharing the (immutable) tensors
        out.__dict__.update(self.__dict__)
        out._cache = dict(self._cache)
        out._restamp()
        return out

    def __deepcopy__(self, memo: Dict[int, Any]) -> 'Hierarchy':
        # Normal tensors, as every tensor of a hierarchy (see _versions).
        with cache_mode():
            return self._copied(lambda value: copy.deepcopy(value, memo))

    def _copied(self, convert: Callable[[Any], Any],
                empty_cache: bool = False) -> 'Hierarchy':
        r"""A hierarchy of :obj:`convert` of every attribute (the cache
        empty if asked) but the version stamps, which it takes anew."""
        out = object.__new__(Hierarchy)
        for key, value in self.__dict__.items():
            if key in ('_watched', '_stamp'):
                continue
            out.__dict__[key] = {} if key == '_cache' and empty_cache \
                else convert(value)
        out._restamp()
        return out

    # A pickle holds what defines the hierarchy, never its derived data,
    # whose layout changes between versions: it then loads in any later
    # version, and its parents are checked again on loading.
    def __getstate__(self) -> Dict[str, Any]:
        return {'format': PICKLE_FORMAT, 'parent': self._parent,
                'num_leaves': self._num_leaves,
                'family_edge_index': self._family_edges,
                # (read by earlier versions; the tensors are never
                # inference tensors now)
                'inference': False}

    def __setstate__(self, state: Dict[str, Any]):
        version = state.get('format')
        if version is None:
            # Pickled whole by a version before formats (which loads only
            # while its derived classes have the fields of this version's).
            state = {'parent': state['_parent'],
                     'num_leaves': state['_num_leaves'],
                     'family_edge_index': state.get('_family_edges')}
        elif version > PICKLE_FORMAT:
            raise ValueError(
                f"this Hierarchy was pickled by a later hsa_geo (format "
                f"{version}; this version reads formats up to "
                f"{PICKLE_FORMAT}): upgrade hsa_geo, or pickle its parent "
                f"and num_leaves instead")
        Hierarchy.__init__(self, state['parent'], state['num_leaves'],
                           state['family_edge_index'])

    def _restamp(self):
        r"""Records the tensors to watch and their versions; called whenever
        the set of tensors changes (construction, a move, derived data), so
        that each check reads a flat list instead of walking the layout."""
        self._watched = self._tensors()
        self._stamp = self._versions()

    def _versions(self) -> tuple:
        # Every tensor of a hierarchy is made under cache_mode, never an
        # inference tensor, whose in-place changes no version would count.
        return tuple(t._version for t in self._watched)

    @staticmethod
    def _layout_families(parent: Tensor, n: int, edges: Optional[Tensor]
                         ) -> Tuple[List[FamilyBucket], Tensor]:
        t = parent.numel()
        m = t - n
        device = parent.device
        rank = torch.zeros(t, dtype=torch.long, device=device)
        if m == 0:
            return [], rank
        child = (parent >= 0).nonzero().view(-1)
        fam = parent[child] - n
        # Children of a family in increasing node id; slot = rank in family.
        perm = torch.argsort(fam, stable=True)
        child, fam = child[perm], fam[perm]
        num_children = torch.bincount(fam, minlength=m)
        start = torch.cumsum(num_children, 0) - num_children
        slot = torch.arange(child.numel(), device=device) - \
            start.index_select(0, fam)
        rank.scatter_(0, child, slot)
        width = _padded_width(num_children)
        num_leaf_children = torch.bincount(fam[child < n], minlength=m)
        full = num_children == width
        kind = torch.full((m, ), 2, dtype=torch.long, device=device)  # mixed
        kind[full & (num_leaf_children == num_children)] = 0  # leaf
        kind[full & (num_leaf_children == 0)] = 1  # cluster
        key = width * 3 + kind
        # Families by key, then id, and children by their family's key,
        # then family, then slot: every bucket is a slice of both (no mask
        # over all nodes per bucket: this runs on every new batch).
        fam_order = torch.argsort(key, stable=True)
        by_key = torch.argsort(key.index_select(0, fam), stable=True)
        child, fam, slot = (x.index_select(0, by_key)
                            for x in (child, fam, slot))
        position = inverse_permutation(fam_order).index_select(0, fam)
        keys, counts = torch.unique_consecutive(
            key.index_select(0, fam_order), return_counts=True)
        ends = torch.cumsum(num_children.index_select(0, fam_order), 0)
        ends = ends.index_select(0, torch.cumsum(counts, 0) - 1)
        edge_fam = None if edges is None else parent[edges[0]] - n
        f0 = c0 = 0
        buckets = []
        for k, f1, c1 in zip(*(x.tolist() for x in (keys, counts, ends))):
            f1 += f0
            w, kd = divmod(k, 3)
            fams = fam_order[f0:f1]
            allowed = None if edges is None else _allowed_slots(
                edges, edge_fam, fams, rank, m, w)
            buckets.append(_family_bucket(
                w, ('leaf', 'cluster', 'mixed')[kd], fams, n, child[c0:c1],
                (position[c0:c1] - f0) * w + slot[c0:c1], allowed,
                bool((parent[fams + n] < 0).all())))
            f0, c0 = f1, c1
        return buckets, rank

    # Public properties ######################################################
    # A Hierarchy is immutable: the per-node tensors below are copies, so
    # changing one in place changes nothing here; the layout the dynamic
    # program reads is checked against in-place changes before every use.

    @property
    def parent(self) -> Tensor:
        r"""``[T]`` parent of every node, ``-1`` for roots (a copy)."""
        return self._parent.clone()

    @property
    def num_leaves(self) -> int:
        r""":math:`N`, the number of leaves (rows of the leaf features)."""
        return self._num_leaves

    @property
    def num_nodes(self) -> int:
        r""":math:`T`, leaves and internal nodes."""
        return self._parent.numel()

    @property
    def num_clusters(self) -> int:
        r"""Number of internal nodes, :math:`T - N`."""
        return self.num_nodes - self._num_leaves

    @property
    def num_families(self) -> int:
        r"""Number of families (one per internal node)."""
        return self.num_clusters

    @property
    def num_trees(self) -> int:
        r"""Number of roots."""
        return self._node_data().num_trees

    @property
    def max_branching(self) -> int:
        r"""The largest number of children of any node (0 if all nodes are
        roots)."""
        return self._node_data().max_branching

    @property
    def depth(self) -> int:
        r"""The largest number of edges from a node up to its root."""
        return self._node_data().max_depth

    @property
    def node_depth(self) -> Tensor:
        r"""``[T]`` edges from each node up to its root (roots: 0)."""
        return self._depth.clone()

    @property
    def node_height(self) -> Tensor:
        r"""``[T]`` edges on the longest path from each node down to a leaf
        (leaves: 0)."""
        return self._node_data().height.clone()

    @property
    def leaf_count(self) -> Tensor:
        r"""``[T]`` :math:`|n|`, the number of leaves under each node."""
        return self._node_data().size.clone()

    @property
    def device(self) -> torch.device:
        return self._parent.device

    @property
    def layout(self) -> HierarchyLayout:
        r"""The arrays the dynamic program reads (:class:`HierarchyLayout`),
        after checking that none of the hierarchy's tensors was changed in
        place since it was built (:class:`ValueError` otherwise)."""
        nodes, families = self._node_data(), self._family_data()
        self._check_unchanged()
        rest, rest_parent = families.outside
        blocks = families.leaf_blocks
        return HierarchyLayout(
            buckets=families.buckets, cluster_levels=nodes.cluster_levels,
            leaf_count=nodes.size, leaves_with_parent=nodes.leaves_with_parent,
            leaf_parent_cluster=nodes.leaf_parent_cluster,
            leaf_blocks=None if blocks is None else families.buckets[blocks],
            leaves_outside_leaf_families=rest,
            outside_parent_cluster=rest_parent, sparse=families.sparse,
            cluster_parent=nodes.cluster_parent,
            cluster_jumps=nodes.cluster_jumps,
            cluster_order=nodes.cluster_order,
            cluster_order_parents=nodes.cluster_order_parents)

    @property
    def family_buckets(self) -> List[FamilyBucket]:
        r"""The families grouped by padded width (see
        :class:`FamilyBucket`): the hierarchy's own tensors, checked like
        :attr:`layout`."""
        return self.layout.buckets

    @property
    def levels(self) -> List[Tensor]:
        r"""Node ids of every depth level: ``levels[d]`` holds the nodes at
        depth ``d`` (``levels[0]`` the roots)."""
        return [nodes.clone() for nodes in self._node_data().levels]

    @property
    def family_edge_index(self) -> Optional[Tensor]:
        r"""``[2, E]`` the family graph (pairs of sibling node ids along which
        attention may flow), or :obj:`None` when every family is dense."""
        edges = self._family_edges
        return None if edges is None else edges.clone()

    @property
    def sibling_rank(self) -> Tensor:
        r"""``[T]`` the position of every node among its siblings, in
        increasing node id (``0..|C(F)|-1``; roots: 0). This is the slot
        order of the family tables and of :attr:`sibling_pairs`."""
        return self._family_data().sibling_rank.clone()

    def family_level(self, by: str = 'height') -> Tensor:
        r"""``[T]`` the level of every node as a child: the level of the
        family it belongs to, the same for all siblings.

        - ``by='height'``: the height of the parent minus one (the families
          of leaves in a tree of uniform depth are level 0, in every tree of
          a batch); a root: its own height.
        - ``by='depth'``: the node's depth (children of a root are level 1;
          roots are 0).
        """
        if by == 'depth':
            return self._depth.clone()
        if by != 'height':
            raise ValueError(f"'by' must be 'height' (levels counted from "
                             f"the leaves) or 'depth' (from the roots), got "
                             f"{by!r}")
        parent, height = self._parent, self._node_data().height
        return torch.where(parent >= 0, height[parent.clamp(min=0)] - 1,
                           height)

    @property
    def widest_family(self) -> Tuple[int, int]:
        r"""``(node, number of children)`` of the family with the most
        children."""
        return self._node_data().widest

    @property
    def num_sibling_pairs(self) -> int:
        r""":math:`P = \sum_F |C(F)|^2`, the number of ordered sibling pairs
        (self pairs included), without building them."""
        return self._node_data().num_pairs

    @property
    def sibling_pairs(self) -> Tensor:
        r"""``[2, P]`` every ordered pair ``(a, b)`` of children of a common
        parent, ``a == b`` included, with :math:`P = \sum_F |C(F)|^2`. The
        order is the one in which
        :func:`~hsa_geo.functional.hierarchical_attention` returns the family
        weights. (A copy.)"""
        pairs = self._cache.get('sibling_pairs')
        if pairs is None:
            with cache_mode():
                parts = [
                    torch.stack([b.children[f, i], b.children[f, j]])
                    for b, (f, i, j) in zip(self._family_data().buckets,
                                            self.bucket_pairs)
                ]
                pairs = torch.cat(parts, dim=1) if parts else torch.empty(
                    2, 0, dtype=torch.long, device=self.device)
            self._cache['sibling_pairs'] = pairs
        return pairs.clone()

    @property
    def adjacency(self) -> Tensor:
        r"""``[T, T]`` the forest as a sparse COO matrix, entry ``(p, c)``
        ``1.0`` for every child ``c`` of ``p`` (PyG's ``[dst, src]``
        convention for a message from child to parent). Derived once (on a
        GPU that takes a synchronisation); a copy."""
        adjacency = self._cache.get('adjacency')
        if adjacency is None:
            with cache_mode():
                child = (self._parent >= 0).nonzero().view(-1)
                adjacency = torch.sparse_coo_tensor(
                    torch.stack([self._parent[child], child]),
                    torch.ones(child.numel(), device=self.device),
                    (self.num_nodes, self.num_nodes),
                    check_invariants=False).coalesce()
            self._cache['adjacency'] = adjacency
        return adjacency.clone()

    @property
    def bucket_pairs(self) -> List[Tuple[Tensor, Tensor, Tensor]]:
        r"""Per bucket of :attr:`family_buckets`, ``(family, slot a, slot
        b)`` of its real sibling pairs, row-major: the order of
        :attr:`sibling_pairs`, bucket after bucket. The hierarchy's own
        tensors, not copies: one changed in place raises at the next use."""
        cached = self._cache.get('bucket_pairs')
        if cached is None:
            self._check_unchanged()
            ensure_memory(
                self.num_sibling_pairs * 3 * 8, 'the sibling pairs of this '
                'hierarchy (a pair bias or family weights need them)',
                self.device, 'the widest family (node {}) has {} children'
                .format(*self.widest_family))
            with cache_mode():
                cached = [(b.mask.unsqueeze(2) & b.mask.unsqueeze(1))
                          .nonzero(as_tuple=True)
                          for b in self._family_data().buckets]
            self._cache['bucket_pairs'] = cached
            self._restamp()  # (watched from now on)
        return cached

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_leaves={self.num_leaves}, '
                f'num_nodes={self.num_nodes}, num_trees={self.num_trees}, '
                f'depth={self.depth}, max_branching={self.max_branching}'
                + (f', family_edges={self._family_edges.size(1)}'
                   if self._family_edges is not None else '') + ')')
