r"""Nested signals: hierarchies over leaves, and the PyG data that holds them."""
from hsa_geo.data.hierarchy import FamilyBucket, Hierarchy

__all__ = ['Hierarchy', 'FamilyBucket']
