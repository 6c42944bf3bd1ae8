r"""hsa_geo: Hierarchical Self-Attention for PyTorch Geometric."""
from hsa_geo import data, functional
from hsa_geo.data import Hierarchy
from hsa_geo.functional import (hierarchical_attention,
                                hierarchical_attention_matrix)

__version__ = '0.1.0'

__all__ = [
    'Hierarchy',
    'hierarchical_attention',
    'hierarchical_attention_matrix',
    'data',
    'functional',
    '__version__',
]
