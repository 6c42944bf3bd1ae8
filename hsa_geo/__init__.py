r"""hsa_geo: Hierarchical Self-Attention for PyTorch Geometric."""
from hsa_geo import (data, datasets, functional, loader, nn, transforms,
                     viz)
from hsa_geo.data import Hierarchy, NestedSignal
from hsa_geo.functional import (hierarchical_attention,
                                hierarchical_attention_matrix)

__version__ = '0.1.0'

__all__ = [
    'Hierarchy',
    'NestedSignal',
    'hierarchical_attention',
    'hierarchical_attention_matrix',
    'data',
    'datasets',
    'functional',
    'loader',
    'nn',
    'transforms',
    'viz',
    '__version__',
]
