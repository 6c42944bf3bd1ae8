r"""Loaders of large nested signals, as in :mod:`torch_geometric.loader`:
mini-batches that carry the hierarchy induced on their nodes."""
from hsa_geo.loader.hierarchy_neighbor_loader import HierarchyNeighborLoader
from hsa_geo.loader.subtree_loader import SubtreeLoader

__all__ = ['HierarchyNeighborLoader', 'SubtreeLoader']
