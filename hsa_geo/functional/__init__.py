r"""Hierarchical self-attention as functions of queries, keys and values."""
from hsa_geo.functional.dense_reference import hierarchical_attention_matrix
from hsa_geo.functional.dynamic_program import (FamilyWeights,
                                                hierarchical_attention)
from hsa_geo.functional.leaf_attention_weights import leaf_attention_weights
from hsa_geo.functional.query_resolved_attention import \
    query_resolved_attention
from hsa_geo.functional.query_resolved_matrix import \
    query_resolved_attention_matrix

__all__ = [
    'hierarchical_attention',
    'hierarchical_attention_matrix',
    'FamilyWeights',
    'leaf_attention_weights',
    'query_resolved_attention',
    'query_resolved_attention_matrix',
]
