r"""Neural network layers with hierarchical self-attention."""
from hsa_geo.nn.hsa_conv import HSAConv
from hsa_geo.nn.hsa_transformer_layer import HSATransformerLayer

__all__ = ['HSAConv', 'HSATransformerLayer']
