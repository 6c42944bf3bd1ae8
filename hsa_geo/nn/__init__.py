r"""Neural network layers with hierarchical self-attention."""
from hsa_geo.nn.edge_pair_bias import EdgePairBias
from hsa_geo.nn.family_geometry_bias import FamilyGeometryBias
from hsa_geo.nn.hetero_hsa_conv import HeteroHSAConv
from hsa_geo.nn.hierarchical_positional_encoding import \
    HierarchicalPositionalEncoding
from hsa_geo.nn.hsa_conv import HSAConv
from hsa_geo.nn.hsa_gps_conv import HSAGPSConv
from hsa_geo.nn.hsa_transformer_layer import HSATransformerLayer
from hsa_geo.nn import models  # last: it builds on the layers above

__all__ = [
    'EdgePairBias',
    'FamilyGeometryBias',
    'HeteroHSAConv',
    'HierarchicalPositionalEncoding',
    'HSAConv',
    'HSAGPSConv',
    'HSATransformerLayer',
    'models',
]
