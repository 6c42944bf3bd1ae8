r"""PyG's neighbour sampling for nested signals: every batch carries the
hierarchy induced on its sampled nodes."""
from __future__ import annotations

from typing import Callable, List, Optional, Union

import torch
import torch_geometric.typing
from torch_geometric.loader import NeighborLoader
from torch_geometric.sampler import BaseSampler, SamplerOutput
from torch_geometric.sampler.base import SubgraphType

from hsa_geo._checks import check_bool, check_index, first_out_of_range
from hsa_geo.data.induced_hierarchy import induced_hierarchy, kept_clusters
from hsa_geo.data.nested_signal import NestedSignal, select_cluster_attrs
from hsa_geo.loader._inputs import signal_hierarchy


class HierarchyNeighborLoader(NeighborLoader):
    r""":class:`~torch_geometric.loader.NeighborLoader` for a
    :class:`~hsa_geo.data.NestedSignal`: the same neighbour sampling (the
    seeds first, then :obj:`num_neighbors[i]` neighbours per node at hop
    :math:`i`), and a batch that is again a
    :class:`~hsa_geo.data.NestedSignal`, with the hierarchy that its
    sampled nodes induce (:func:`~hsa_geo.data.induced_hierarchy`: node
    ``n_id[i]`` becomes leaf ``i``, clusters without a sampled leaf are
    removed).

    PyG's own loader filters the node attributes and leaves the tree of a
    signal untouched, so that ``batch.hierarchy`` raises (the nodes no
    longer match the leaves); this loader rebuilds each batch from the
    sampled node ids instead, and keeps the rows of its clusters of the
    per-cluster attributes (``cluster_*``). The sampled edges, ``n_id``,
    ``e_id``, ``input_id`` and ``batch_size`` are PyG's. HSA on a batch is
    HSA over the hierarchy restricted to the sampled nodes: a seed receives
    context from every sampled node through the tree, not only along the
    sampled edges.

    PyG samples with a compiled backend, ``pyg-lib`` or ``torch-sparse``
    (``torch-sparse`` only for ``subgraph_type='induced'``); without one
    this loader raises :class:`ImportError` at construction, saying what to
    install, unless a :obj:`neighbor_sampler` of one's own is given.

    Args:
        data (NestedSignal): the signal (a graph with its hierarchy).
        num_neighbors (List[int]): neighbours sampled per node at each hop,
            as for :class:`~torch_geometric.loader.NeighborLoader`.
        input_nodes (Tensor, optional): the seed nodes (ids or a mask);
            :obj:`None`: all nodes. (default: :obj:`None`)
        subgraph_type (str, optional): ``'directional'``,
            ``'bidirectional'`` or ``'induced'``, as for
            :class:`~torch_geometric.loader.NeighborLoader`.
            (default: ``'directional'``)
        disjoint (bool, optional): must be :obj:`False`: a disjoint batch
            repeats nodes, and a leaf is in a hierarchy once.
            (default: :obj:`False`)
        transform (callable, optional): applied to each batch after its
            hierarchy is induced; it must keep the seeds as the first
            ``batch_size`` nodes (:class:`~hsa_geo.transforms.TreeOrder`,
            which would move them, raises). (default: :obj:`None`)
        neighbor_sampler (BaseSampler, optional): the sampler; :obj:`None`:
            PyG's :class:`~torch_geometric.sampler.NeighborSampler`.
            (default: :obj:`None`)
        **kwargs (optional): further arguments of
            :class:`~torch_geometric.loader.NeighborLoader` (e.g.
            :obj:`replace`, :obj:`transform_sampler_output`) and of
            :class:`torch.utils.data.DataLoader` (e.g. :obj:`batch_size`,
            :obj:`shuffle`).

    Raises:
        ImportError: if neither ``pyg-lib`` nor ``torch-sparse`` is
            installed and no :obj:`neighbor_sampler` is given.
    """
    def __init__(
        self,
        data: NestedSignal,
        num_neighbors: List[int],
        input_nodes: Optional[torch.Tensor] = None,
        subgraph_type: Union[SubgraphType, str] = 'directional',
        disjoint: bool = False,
        transform: Optional[Callable] = None,
        neighbor_sampler: Optional[BaseSampler] = None,
        **kwargs,
    ):
        hierarchy = signal_hierarchy(data, 'HierarchyNeighborLoader')
        if check_bool(disjoint, 'disjoint'):
            raise ValueError(
                "disjoint=True samples a separate subgraph per seed, so a "
                "node may appear several times in a batch, but a leaf is in "
                "a hierarchy once; use disjoint=False")
        if transform is not None and not callable(transform):
            raise TypeError(f"'transform' must be callable, got "
                            f"{type(transform).__name__}")
        if input_nodes is not None:
            _check_input_nodes(input_nodes, hierarchy.num_leaves)
        if neighbor_sampler is None:
            _check_sampler_backend(SubgraphType(subgraph_type))
        self.hierarchy = hierarchy
        self.signal_transform = transform
        # PyG's transform would see the batch before its hierarchy is
        # induced: this loader applies it afterwards.
        super().__init__(data, num_neighbors, input_nodes=input_nodes,
                         subgraph_type=subgraph_type, disjoint=disjoint,
                         neighbor_sampler=neighbor_sampler, **kwargs)

    def filter_fn(self, out: SamplerOutput) -> NestedSignal:
        r"""PyG's batch of the sampled nodes and edges, as a
        :class:`~hsa_geo.data.NestedSignal` with the induced hierarchy."""
        data = super().filter_fn(out)
        # leaf_index moves with the nodes: the ids of the sampled leaves in
        # the full signal, whatever the sampler or its output transform did.
        leaves = data.leaf_index if 'leaf_index' in data else data.n_id
        hierarchy, node_map = induced_hierarchy(self.hierarchy, leaves,
                                                return_node_map=True)
        n, m = self.hierarchy.num_leaves, self.hierarchy.num_clusters
        # PyG copies the per-cluster attributes whole: the batch keeps the
        # rows of its clusters, in the induced tree's order.
        for key, value in select_cluster_attrs(
                data, kept_clusters(node_map, n), m).items():
            data[key] = value
        batch = NestedSignal.from_data(data, hierarchy,
                                       cluster_attrs_of_new_tree=True)
        if self.signal_transform is not None:
            batch = self.signal_transform(batch)
        return batch


def _check_input_nodes(input_nodes, n: int):
    r"""Raises unless :obj:`input_nodes` is an ``[N]`` bool mask or a
    1-D tensor of node ids in ``0..N-1`` (PyG reads any bool tensor as the
    ids of its :obj:`True` entries)."""
    if isinstance(input_nodes, torch.Tensor) and \
            input_nodes.dtype == torch.bool:
        if tuple(input_nodes.shape) != (n, ):
            raise ValueError(
                f"'input_nodes' is a mask of shape "
                f"{tuple(input_nodes.shape)} but the signal has {n} nodes "
                f"(the leaves); give one flag per node, [{n}], or the ids "
                f"of the seed nodes")
        return
    ids = check_index(input_nodes, 'input_nodes', rows=None)
    bad = first_out_of_range(ids.view(1, -1), [n])
    if bad is not None:
        j = bad[1]
        raise ValueError(
            f"input_nodes[{j}] = {int(ids[j])} is not a node id "
            f"(0..{n - 1}); the seeds are leaves of the hierarchy")


def _check_sampler_backend(subgraph_type: SubgraphType):
    r"""Raises :class:`ImportError`, saying what to install, when PyG's
    :class:`~torch_geometric.sampler.NeighborSampler` has no backend for
    :obj:`subgraph_type`."""
    with_pyg_lib = torch_geometric.typing.WITH_PYG_LIB
    with_torch_sparse = torch_geometric.typing.WITH_TORCH_SPARSE
    # PyG samples induced subgraphs with torch-sparse only.
    if subgraph_type == SubgraphType.induced:
        if with_torch_sparse:
            return
        packages = ['torch-sparse']
    else:
        if with_pyg_lib or with_torch_sparse:
            return
        packages = ['pyg-lib', 'torch-sparse']
    url = _wheel_index_url()
    commands = ' or '.join(f"'pip install {p} -f {url}'" for p in packages)
    raise ImportError(
        f"HierarchyNeighborLoader samples with PyG's NeighborSampler, which "
        f"needs {' or '.join(repr(p) for p in packages)} "
        f"(subgraph_type='{subgraph_type.value}'), and none is installed: "
        f"run {commands} (the wheels for torch {torch.__version__}; if that "
        f"page has none, pick the torch version nearest to yours at "
        f"https://data.pyg.org/whl/), pass a neighbor_sampler of your own, "
        f"or load whole subtrees with hsa_geo.loader.SubtreeLoader, which "
        f"needs no sampler")


def _wheel_index_url() -> str:
    r"""PyG's wheel index for the installed torch: one page per minor
    version of torch and CUDA build (``torch-2.5.0+cu121``)."""
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    cuda = torch.version.cuda
    build = 'cpu' if cuda is None else 'cu' + cuda.replace('.', '')
    return f'https://data.pyg.org/whl/torch-{major}.{minor}.0+{build}.html'
