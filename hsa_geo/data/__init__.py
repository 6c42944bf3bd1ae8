r"""Nested signals: hierarchies over leaves, and the PyG data that holds
them."""
from hsa_geo.data.hetero_nested_signal import HeteroNestedSignal
from hsa_geo.data.hierarchy import FamilyBucket, Hierarchy
from hsa_geo.data.induced_hierarchy import induced_hierarchy
from hsa_geo.data.nested_signal import NestedSignal

__all__ = ['Hierarchy', 'NestedSignal', 'HeteroNestedSignal', 'FamilyBucket',
           'induced_hierarchy']
