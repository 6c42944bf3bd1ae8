r"""Pictures of hierarchies and of their attention (matplotlib).

matplotlib is imported only when a function is called; the figures are
plain :class:`matplotlib.figure.Figure` objects (no pyplot state), so they
work with any backend, ``Agg`` included.
"""
from hsa_geo.viz.plot_attention_matrix import plot_attention_matrix
from hsa_geo.viz.plot_hierarchy import plot_hierarchy

__all__ = ['plot_hierarchy', 'plot_attention_matrix']
