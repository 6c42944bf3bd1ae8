r"""Models built from hsa_geo layers, instantiated in one line."""
from hsa_geo.nn.models.hsa_graph_transformer import HSAGraphTransformer

__all__ = [
    'HSAGraphTransformer',
]
