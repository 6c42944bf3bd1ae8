r"""Builders of nested signals, as PyG transforms: each turns the data users
have (graphs, pooling outputs, molecules, sequences, image patch grids, raw
text) into a :class:`~hsa_geo.data.NestedSignal`, and several modalities
of one sample into a :class:`~hsa_geo.data.HeteroNestedSignal`."""
from hsa_geo.transforms.document_hierarchy import DocumentHierarchy
from hsa_geo.transforms.graph_hierarchy import GraphHierarchy
from hsa_geo.transforms.grid_hierarchy import GridHierarchy
from hsa_geo.transforms.hierarchy_from_pooling import hierarchy_from_pooling
from hsa_geo.transforms.molecule_hierarchy import MoleculeHierarchy
from hsa_geo.transforms.multimodal_hierarchy import MultiModalHierarchy
from hsa_geo.transforms.sequence_hierarchy import SequenceHierarchy
from hsa_geo.transforms.tree_order import TreeOrder
from hsa_geo.transforms.vocabulary import Vocabulary

__all__ = [
    'DocumentHierarchy',
    'GraphHierarchy',
    'GridHierarchy',
    'MoleculeHierarchy',
    'MultiModalHierarchy',
    'SequenceHierarchy',
    'TreeOrder',
    'Vocabulary',
    'hierarchy_from_pooling',
]
