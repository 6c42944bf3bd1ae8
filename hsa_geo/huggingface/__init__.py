r"""Zero-shot hierarchical self-attention inside pretrained HuggingFace
encoders: the forest of a tokenized batch (:class:`TokenHierarchy`), a
patch that runs HSA in chosen layers (:func:`hsa_attention`), and the
attention FLOPs it saves (:func:`model_attention_flops`).

``transformers`` is imported only when a model is patched; install it with
``pip install 'hsa_geo[huggingface]'``.
"""
from hsa_geo.huggingface.attention import (HSAPatch, HSASpec,
                                           attention_modules, hsa_attention)
from hsa_geo.huggingface.flops import (AttentionFlops,
                                       dense_attention_flops,
                                       hsa_attention_flops,
                                       model_attention_flops)
from hsa_geo.huggingface.token_forest import TokenForest, TokenHierarchy

__all__ = [
    'TokenHierarchy',
    'TokenForest',
    'hsa_attention',
    'HSAPatch',
    'HSASpec',
    'attention_modules',
    'AttentionFlops',
    'dense_attention_flops',
    'hsa_attention_flops',
    'model_attention_flops',
]
