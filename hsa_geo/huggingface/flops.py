r"""Attention FLOPs of a pretrained encoder with HSA in chosen layers, per
layer and for the whole model, against its dense softmax attention."""
from __future__ import annotations

from typing import (Dict, Iterable, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import torch
from torch import Tensor

from hsa_geo._checks import check_int
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.query_resolved_attention import (leaf_paths,
                                                         query_blocks)
from hsa_geo.huggingface.attention import (VARIANTS, Forest, HSASpec,
                                           layer_specs, patchable_modules)
from hsa_geo.huggingface.token_forest import TokenForest


class AttentionFlops(NamedTuple):
    r"""Forward attention FLOPs of one batch (see
    :func:`model_attention_flops`).

    Attributes:
        layers (tuple of float): per attention call of the forward, in the
            order they run, what it computes (one per layer; a module that
            several layers share, as in ALBERT, has one entry per layer).
        variants (tuple of str): per call, ``'hsa'``, ``'query_resolved'``
            or ``'softmax'``.
        dense (float): the same model with softmax attention in every call.
    """
    layers: Tuple[float, ...]
    variants: Tuple[str, ...]
    dense: float

    @property
    def total(self) -> float:
        r"""The whole model: the sum over the layers."""
        return float(sum(self.layers))

    @property
    def ratio(self) -> float:
        r""":attr:`total` over :attr:`dense`."""
        return self.total / self.dense if self.dense else float('nan')


def dense_attention_flops(valid: Tensor, heads: int, head_dim: int) -> float:
    r"""Softmax attention of a padded batch, counting the real tokens of
    every sequence only (as if each ran alone, unpadded): :math:`2 L_b^2 D`
    for the scores and :math:`2 L_b^2 D` for the weighted sum of values,

    .. math::
        \mathrm{FLOPs} = H \sum_b 4 L_b^2 D ,

    multiply-adds counted as 2; the softmax's exponentials (no :math:`D`
    factor) and the projections are left out.

    Args:
        valid (BoolTensor): ``[B, L]`` the real tokens (the attention
            mask); :math:`L_b` is the sum of row :math:`b`.
        heads (int): :math:`H`.
        head_dim (int): :math:`D`, channels per head.
    """
    heads, head_dim = check_int(heads, 'heads'), check_int(head_dim,
                                                           'head_dim')
    if not isinstance(valid, Tensor) or valid.dim() != 2:
        raise ValueError(
            f"'valid' must be the [B, L] attention mask of the batch, got "
            f"{tuple(valid.shape) if isinstance(valid, Tensor) else valid!r}")
    lengths = valid.bool().sum(1).double()
    return float(4 * lengths.pow(2).sum()) * head_dim * heads


def hsa_attention_flops(forest: Forest, heads: int, head_dim: int,
                        variant: str = 'hsa') -> float:
    r"""Forward FLOPs of one attention layer over :obj:`forest`, per head
    and channel as in ``examples/document_classification.py``:

    .. math::
        \mathrm{HSA}: (4 P + 2 N + 5 T) D, \qquad
        \text{query-resolved}: (4 R + 2 N + 2 T) D,

    times :math:`H`, for :math:`N` leaves, :math:`T` nodes, :math:`P =
    \sum_F |C(F)|^2` ordered sibling pairs (:math:`2 P D` family scores,
    :math:`2 P D` weighted sibling values), :math:`R` (query, block) pairs
    of query-resolved HSA (:math:`2 R D` scores, :math:`2 R D` weighted
    block values), :math:`2 N D` self scores of the leaves, :math:`3 T D`
    upward means of queries, keys and values and :math:`2 T D` downward
    contexts (query-resolved: :math:`2 T D` mean keys and values). The
    exponentials, the projections and the bookkeeping of the tree are left
    out, as for :func:`dense_attention_flops`.

    For a :class:`TokenForest` the padding leaves are not counted (they are
    one-leaf trees: no pair, no block), and every global leaf adds the
    :math:`4 L_b D` of its dense row (the HSA row it replaces is counted
    too: it is computed). ``variant='softmax'`` gives
    :func:`dense_attention_flops` and needs a :class:`TokenForest`. For a
    :class:`~hsa_geo.data.Hierarchy` every leaf counts.
    """
    heads, head_dim = check_int(heads, 'heads'), check_int(head_dim,
                                                           'head_dim')
    if variant not in VARIANTS:
        raise ValueError(f"'variant' must be one of {VARIANTS}, got "
                         f"{variant!r}")
    if isinstance(forest, TokenForest):
        hierarchy, padding = forest.hierarchy, int((~forest.valid).sum())
    elif isinstance(forest, Hierarchy):
        hierarchy, padding = forest, 0
    else:
        raise TypeError(f"'forest' must be a TokenForest or a Hierarchy, got "
                        f"{type(forest).__name__}")
    if variant == 'softmax':
        if not isinstance(forest, TokenForest):
            raise ValueError(
                "the softmax count needs the real tokens of every sequence: "
                "pass a TokenForest (a Hierarchy does not say which leaves "
                "form a sequence)")
        return dense_attention_flops(forest.valid, heads, head_dim)
    leaves = hierarchy.num_leaves - padding
    nodes = hierarchy.num_nodes - padding
    if variant == 'hsa':
        per_channel = 4 * hierarchy.num_sibling_pairs + 2 * leaves + \
            5 * nodes
    else:
        query, _ = query_blocks(hierarchy, *leaf_paths(hierarchy))
        per_channel = 4 * query.numel() + 2 * leaves + 2 * nodes
    if isinstance(forest, TokenForest) and forest.global_leaves.numel():
        lengths = forest.valid.sum(1)
        sequence = forest.global_leaves.cpu() // forest.seq_len
        per_channel += 4 * int(lengths.cpu()[sequence].sum())
    return float(per_channel) * head_dim * heads


def model_attention_flops(model: torch.nn.Module,
                          layers: Union[Mapping[int, Union[HSASpec, str]],
                                        Iterable[int]],
                          forests: Union[Forest, Mapping[str, Forest]],
                          call_order: Optional[Sequence[int]] = None
                          ) -> AttentionFlops:
    r"""Forward attention FLOPs of :obj:`model` on one batch with the
    chosen :obj:`layers` running their variant over :obj:`forests` (as
    :func:`~hsa_geo.huggingface.hsa_attention` runs them) and every other
    layer dense (:func:`dense_attention_flops`, real tokens only), and the
    dense count of the whole model for comparison, counting every attention
    call of one forward. :math:`H` and :math:`D` are each attention
    module's own (``num_attention_heads`` or ``num_heads`` and
    ``attention_head_size`` or ``head_dim``, as BERT and Llama name them;
    where a module has neither, ``config.num_attention_heads`` and
    ``config.head_dim`` or ``hidden_size // H``): MobileBERT's heads, for
    one, have ``true_hidden_size // H`` channels.

    Without :obj:`call_order`, every attention module is taken to run once
    per forward (one module per layer). A model whose layers share modules
    (ALBERT, where ``config.num_hidden_layers * config.inner_group_num``
    differs from the number of modules) is refused then: measure its
    forward with :meth:`HSAPatch.flops` after running it under
    :func:`~hsa_geo.huggingface.hsa_attention`, or pass
    :obj:`call_order`.

    Args:
        model (torch.nn.Module): the ``transformers`` model.
        layers (dict or list): as for :func:`hsa_attention`.
        forests (TokenForest or dict): the forest of the batch, or
            ``{name: forest}``; at least one must be a :class:`TokenForest`
            (the dense layers need the real tokens of every sequence).
        call_order (list of int, optional): the attention modules (indices
            of :func:`~hsa_geo.huggingface.attention_modules`) that one
            forward runs, one per call, in order
            (:attr:`HSAPatch.call_order`). (default: :obj:`None`)
    """
    modules = patchable_modules(model)
    specs = layer_specs(layers, len(modules))
    calls = _call_order(model, len(modules), call_order)
    if isinstance(forests, (TokenForest, Hierarchy)):
        forests = {'default': forests}
    if not isinstance(forests, Mapping):
        raise TypeError(f"'forests' must be a TokenForest or a dict {{name: "
                        f"forest}}, got {type(forests).__name__}")
    token = [f for f in forests.values() if isinstance(f, TokenForest)]
    if not token:
        raise ValueError(
            "no TokenForest among 'forests': the dense layers are counted on "
            "the real tokens of every sequence, which only a TokenForest "
            "knows")
    shapes = [_head_shape(module, model) for module in modules]
    counts, variants, dense = [], [], 0.0
    cache: Dict[Tuple[str, str, Tuple[int, int]], float] = {}
    for index in calls:
        spec = specs.get(index, HSASpec('softmax'))
        variants.append(spec.variant)
        key = ('', 'softmax', shapes[index])
        if key not in cache:
            cache[key] = dense_attention_flops(token[0].valid,
                                               *shapes[index])
        dense += cache[key]
        if spec.variant != 'softmax':
            if spec.forest not in forests:
                raise ValueError(f"layer {index} attends along forest "
                                 f"{spec.forest!r}, which 'forests' lacks")
            key = (spec.forest, spec.variant, shapes[index])
            if key not in cache:
                cache[key] = hsa_attention_flops(
                    forests[spec.forest], *shapes[index], spec.variant)
        counts.append(cache[key])
    return AttentionFlops(tuple(counts), tuple(variants), dense)


def _call_order(model: torch.nn.Module, count: int,
                call_order: Optional[Sequence[int]]) -> List[int]:
    r"""The attention modules one forward of :obj:`model` runs, in order,
    from :obj:`call_order` or, when each module runs once, the
    configuration."""
    if call_order is not None:
        if isinstance(call_order, (str, Mapping)) or \
                not isinstance(call_order, Iterable):
            raise TypeError(f"'call_order' must be a list of attention "
                            f"module indices, got "
                            f"{type(call_order).__name__}")
        order = list(call_order)
        for index in order:
            if isinstance(index, bool) or not isinstance(index, int) or \
                    not 0 <= index < count:
                raise ValueError(
                    f"'call_order' must hold attention module indices in "
                    f"0..{count - 1} (see hsa_geo.huggingface."
                    f"attention_modules(model)), got {index!r}")
        return order
    config = getattr(model, 'config', None)
    layers = getattr(config, 'num_hidden_layers', None)
    if isinstance(layers, int):
        # ALBERT runs the inner_group_num layers of a group per layer.
        calls = layers * getattr(config, 'inner_group_num', 1)
        if calls != count and getattr(config, 'is_encoder_decoder', False):
            raise ValueError(
                f"{type(model).__name__} is an encoder-decoder: its {count} "
                f"attention modules are not those of its "
                f"config.num_hidden_layers = {layers} layers, one each, and "
                f"which call runs which module is known only from a "
                f"forward; run the model inside hsa_attention(model, "
                f"layers, forest) and call patch.flops(), or pass "
                f"call_order=patch.call_order")
        if calls != count:
            raise ValueError(
                f"{type(model).__name__} makes {calls} attention calls per "
                f"forward with {count} attention modules: its layers share "
                f"modules, and which call runs which module is known only "
                f"from a forward; run the model inside hsa_attention(model, "
                f"layers, forest) and call patch.flops(), or pass "
                f"call_order=patch.call_order")
    return list(range(count))


def _head_shape(module: torch.nn.Module,
                model: torch.nn.Module) -> Tuple[int, int]:
    r"""``(H, D)`` of one attention module: its own attributes where it has
    them (heads need not have ``hidden_size // H`` channels), else the
    model's config."""
    config = getattr(model, 'config', None)
    heads = _first(module, ('num_attention_heads', 'num_heads', 'n_heads'))
    if heads is None:
        heads = getattr(config, 'num_attention_heads', None)
    head_dim = _first(module, ('attention_head_size', 'head_dim'))
    if head_dim is None:
        head_dim = getattr(config, 'head_dim', None)
    if head_dim is None and heads and \
            isinstance(getattr(config, 'hidden_size', None), int):
        head_dim = config.hidden_size // heads
    if heads is None or head_dim is None:
        raise ValueError(
            f"{type(module).__name__} of {type(model).__name__} names no "
            f"number of heads and channels per head (num_attention_heads "
            f"and attention_head_size or head_dim, on the module or its "
            f"config); count the layers with hsa_attention_flops(forest, "
            f"heads, head_dim)")
    return int(heads), int(head_dim)


def _first(module: torch.nn.Module, names: Sequence[str]) -> Optional[int]:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
