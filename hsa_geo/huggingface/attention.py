r"""Zero-shot HSA inside a pretrained HuggingFace encoder: chosen layers
run hierarchical self-attention with the layer's own projections, the
others their own attention."""
from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass
from typing import (Any, Dict, Iterable, List, Mapping, Optional, Tuple,
                    Union)

import torch
from torch import Tensor

from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.data.tensor_state import same_state, tensor_state
from hsa_geo.functional.dynamic_program import hierarchical_attention
from hsa_geo.functional.query_resolved_attention import \
    query_resolved_attention
from hsa_geo.huggingface.token_forest import TokenForest

#: What a layer runs: family HSA, query-resolved HSA, or the model's own
#: softmax attention.
VARIANTS = ('hsa', 'query_resolved', 'softmax')
#: The name under which the attention function is registered with
#: ``transformers.AttentionInterface``.
ATTENTION_NAME = 'hsa_geo'
#: The keyword of a model call that may carry the forest of the batch.
FOREST_KWARG = 'hsa_forest'

Forest = Union[TokenForest, Hierarchy]
# The patched attention modules and what they run, read by the registered
# function (weak: a model deleted inside a patch leaves nothing behind).
_ROUTES: 'weakref.WeakKeyDictionary[torch.nn.Module, Tuple[HSAPatch, int]]' \
    = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class HSASpec:
    r"""What one attention layer runs under :func:`hsa_attention`.

    Args:
        variant (str): ``'hsa'`` (:func:`~hsa_geo.functional.
            hierarchical_attention`), ``'query_resolved'``
            (:func:`~hsa_geo.functional.query_resolved_attention`) or
            ``'softmax'`` (the model's own attention: the layer is left
            alone). (default: ``'hsa'``)
        forest (str): the name of the forest the layer attends along
            (:meth:`HSAPatch.set_forest`), so that layers may use different
            trees of the same batch (e.g. words only in the lower layers).
            (default: ``'default'``)
    """
    variant: str = 'hsa'
    forest: str = 'default'

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"HSASpec.variant must be one of {VARIANTS}, got "
                             f"{self.variant!r}")
        if not isinstance(self.forest, str):
            raise TypeError(f"HSASpec.forest must be the name of a forest "
                            f"(a str), got {type(self.forest).__name__}")


def attention_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    r"""The self-attention modules of :obj:`model` that dispatch through
    ``transformers``' attention interface, in the order of
    ``model.modules()``: layer ``i`` of :func:`hsa_attention` is entry
    ``i`` (for BERT and RoBERTa, ``model.encoder.layer[i].attention.self``).
    A module qualifies when it reads ``config._attn_implementation`` and
    has the ``scaling`` it passes on, and is no cross-attention. A model
    that shares one module across its layers (ALBERT) has one entry, and
    patching it patches every layer that runs it."""
    return [m for name, m in model.named_modules()
            if hasattr(getattr(m, 'config', None), '_attn_implementation')
            and hasattr(m, 'scaling')
            and 'CrossAttention' not in type(m).__name__
            and not getattr(m, 'is_cross_attention', False)
            and not name.rsplit('.', 1)[-1].lower().endswith(
                _CROSS_ATTENTION_NAMES)]


def patchable_modules(model: torch.nn.Module) -> List[torch.nn.Module]:
    r""":func:`attention_modules`, or :class:`ValueError` where
    :obj:`model` has none."""
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention module that "
            f"dispatches through transformers' AttentionInterface "
            f"(a module with 'config' and 'scaling'); HSA can be patched "
            f"into BERT-like encoders of transformers >= 4.54")
    return modules


#: Attribute names under which encoder-decoder models (BART, Marian,
#: Pegasus, Whisper, ...) keep a cross-attention module of the class of
#: their self-attention (told apart only by the call).
_CROSS_ATTENTION_NAMES = ('encoder_attn', 'crossattention', 'cross_attn',
                          'cross_attention')


class HSAPatch:
    r"""Runs hierarchical self-attention in chosen attention layers of a
    pretrained ``transformers`` encoder, with the layers' own projections
    :math:`W_q, W_k, W_v, W_o` and scale (zero-shot, docs/math.md, 6.11).

    Every chosen module gets a private copy of the model's config whose
    ``_attn_implementation`` is :data:`ATTENTION_NAME`, an attention
    function registered with ``transformers.AttentionInterface``: it turns
    the module's queries, keys and values ``[B, H, L, D]`` into rows
    ``b * L + t`` of ``[B L, H, D]`` and runs the layer's variant over the
    forest of the batch,

    .. math::
        \mathrm{out}_{b, t} = \mathrm{HSA}(Q, K, V; \mathcal{T})_{bL + t}
        \quad (\text{or query-resolved HSA}),

    returning ``[B, L, H, D]`` as the model expects. The model's config,
    the mask it builds and every other layer are untouched; :meth:`remove`
    (or leaving the ``with`` block, also on an exception) puts the
    original configs back. The attention mask is not used: the forest says
    who sees whom (padding positions are trees of their own), and it is
    checked against the mask.

    Patched layers compute no attention weights. With
    ``output_attentions=True`` (and an implementation that returns weights,
    such as ``'eager'``) each of them gives a placeholder of NaNs of the
    shape ``[B, H, L, L]`` of the others (an expanded scalar: no memory),
    so that ``attentions[i]`` stays the weights of the ``i``-th attention
    call.

    The forest of the current batch is set with :meth:`set_forest`, or
    passed with the model call as ``model(**inputs, hsa_forest=forest)``
    (a forest, or a ``{name: forest}`` dict), which wins over the set one.

    Args:
        model (torch.nn.Module): a ``transformers`` model whose attention
            modules dispatch through the attention interface (BERT,
            RoBERTa, MiniLM, ELECTRA, ... from ``transformers`` 4.54 on).
        layers (dict or list): ``{i: spec}`` for the chosen layers (see
            :func:`attention_modules` for the numbering), a spec being an
            :class:`HSASpec` or a variant name; a list of indices runs
            ``'hsa'`` in each. Other layers keep their own attention.
        forest (TokenForest or Hierarchy, optional): the forest named
            ``'default'``.

    Attributes:
        calls (dict): ``{i: count}`` how often each patched layer ran HSA.
        call_order (list of int, optional): the attention modules (indices
            of :func:`attention_modules`), one per attention call, in the
            order they ran during the last forward of :obj:`model` under
            the patch (:obj:`None` before the first); :meth:`flops` counts
            it. A module shared by several layers (ALBERT) appears once per
            layer.
    """
    def __init__(self, model: torch.nn.Module,
                 layers: Union[Mapping[int, Union[HSASpec, str]],
                               Iterable[int]],
                 forest: Optional[Forest] = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"'model' must be a torch.nn.Module (a "
                            f"transformers model), got "
                            f"{type(model).__name__}")
        self.model = model
        self.modules = patchable_modules(model)
        self.specs = layer_specs(layers, len(self.modules))
        for index in self.specs:
            if getattr(self.modules[index], 'is_causal', False):
                raise ValueError(
                    f"attention layer {index} is causal (a decoder); HSA "
                    f"attends both ways along the tree, patch an encoder")
        self.forests: Dict[str, Forest] = {}
        self.calls: Dict[int, int] = {}
        self.call_order: Optional[List[int]] = None
        self._recording = False
        self._hooks: List[Any] = []
        self._saved: Dict[int, Any] = {}
        self._on_device: Dict[Tuple[str, torch.device], Forest] = {}
        # The forests the last forward under the patch attended along.
        self._ran: Dict[str, Forest] = {}
        # The last mask checked and its keys: transformers hands every
        # layer the same mask, checked once (an O(B H L^2) pass).
        self._mask_seen: Optional[Tuple[Any, ...]] = None
        if forest is not None:
            self.set_forest(forest)

    # Forests ###############################################################

    def set_forest(self, forest: Forest, name: str = 'default'):
        r"""Sets the forest of the next batches for the layers whose
        :attr:`HSASpec.forest` is :obj:`name`: a :class:`TokenForest`
        (:class:`TokenHierarchy`) or a :class:`~hsa_geo.data.Hierarchy`
        over the :math:`B L` positions, leaf ``b * L + t``."""
        self.forests[name] = _check_forest(forest, f'forest {name!r}')
        self._on_device = {k: v for k, v in self._on_device.items()
                           if k[0] != name}

    def _forest(self, name: str, passed: Any, device: torch.device
                ) -> Forest:
        if passed is not None:
            if isinstance(passed, Mapping):
                passed = passed.get(name)
            if passed is not None:
                forest = _check_forest(passed, f"'{FOREST_KWARG}'")
                return forest if _device(forest) == device \
                    else forest.to(device)
        if name not in self.forests:
            raise ValueError(
                f"no forest named {name!r} is set; call patch.set_forest("
                f"forest, name={name!r}) before the model, or pass "
                f"model(..., {FOREST_KWARG}=forest)")
        key = (name, device)
        if key not in self._on_device:  # moved once per batch and device
            forest = self.forests[name]
            self._on_device[key] = forest if _device(forest) == device \
                else forest.to(device)
        return self._on_device[key]

    # Patching ##############################################################

    def apply(self) -> 'HSAPatch':
        r"""Routes the chosen layers to HSA (idempotent)."""
        _register()
        if not self._hooks:
            self._record_calls()
        for index, spec in self.specs.items():
            if spec.variant == 'softmax' or index in self._saved:
                continue
            module = self.modules[index]
            if module in _ROUTES:
                self.remove()
                raise ValueError(
                    f"attention layer {index} is already patched by another "
                    f"HSAPatch; leave that one first")
            config = copy.deepcopy(module.config)
            config._attn_implementation = ATTENTION_NAME
            self._saved[index] = module.config
            module.config = config
            _ROUTES[module] = (self, index)
        return self

    def remove(self):
        r"""Gives every patched module its original config back."""
        for index, config in self._saved.items():
            module = self.modules[index]
            module.config = config
            _ROUTES.pop(module, None)
        self._saved = {}
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._recording = [], False

    def _record_calls(self):
        r"""Hooks that fill :attr:`call_order` during each forward of the
        model; the calls of every attention module are recorded, as a
        module may run several times (layers sharing it) or not at all."""
        def start(*_: Any):
            self.call_order, self._recording = [], True
            self._ran, self._mask_seen = {}, None

        def stop(*_: Any):
            # Recomputations after the forward (gradient checkpointing)
            # are no calls of the forward.
            self._recording, self._mask_seen = False, None

        def called(index: int):
            def hook(*_: Any):
                if self._recording:
                    self.call_order.append(index)
            return hook

        self._hooks = [self.model.register_forward_pre_hook(start),
                       self.model.register_forward_hook(stop,
                                                        always_call=True)]
        self._hooks += [module.register_forward_pre_hook(called(index))
                        for index, module in enumerate(self.modules)]

    def __enter__(self) -> 'HSAPatch':
        return self.apply()

    def __exit__(self, *exc: Any):
        self.remove()

    # Attention #############################################################

    def attention(self, index: int, module: torch.nn.Module, query: Tensor,
                  key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                  dropout: float, scaling: Optional[float],
                  passed: Any) -> Tensor:
        r"""``[B, L, H, D]`` the attention of layer :obj:`index` for
        queries, keys and values ``[B, H, L, D]``."""
        spec = self.specs[index]
        batch, heads, length, channels = query.shape
        if key.size(2) != length:
            raise ValueError(
                f"attention layer {index} got {length} queries but "
                f"{key.size(2)} keys; HSA is self-attention over one "
                f"sequence (no cache, no cross-attention)")
        if key.size(1) != heads:  # grouped-query attention
            key = key.repeat_interleave(heads // key.size(1), dim=1)
            value = value.repeat_interleave(heads // value.size(1), dim=1)
        forest = self._forest(spec.forest, passed, query.device)
        keys = self._mask_keys(attention_mask, batch, length,
                               _device(forest), index)
        hierarchy = _check_batch(forest, batch, length, keys, index)
        if scaling is None:
            scaling = getattr(module, 'scaling', None) or \
                1.0 / math.sqrt(channels)
        rows = [t.transpose(1, 2).reshape(batch * length, heads, -1)
                for t in (query, key, value)]
        function = hierarchical_attention if spec.variant == 'hsa' else \
            query_resolved_attention
        out = function(*rows, hierarchy, scale=float(scaling),
                       dropout_p=dropout, training=module.training)
        out = out.view(batch, length, heads, -1)
        if isinstance(forest, TokenForest) and forest.global_leaves.numel():
            out = _global_rows(out, query, key, value, forest, scaling,
                               dropout, module.training)
        self.calls[index] = self.calls.get(index, 0) + 1
        if self._recording:
            self._ran[spec.forest] = forest
        return out

    def _mask_keys(self, mask: Any, batch: int, length: int,
                   device: torch.device, index: int) -> Optional[Tensor]:
        r""":func:`_mask_keys`, computed once for the mask the layers of
        one forward share: the same tensor, unchanged since (its version)
        and of the same batch, is not checked again."""
        seen = (tensor_state(mask), tensor_state(batch),
                tensor_state(length), tensor_state(device))
        if self._mask_seen is not None and \
                same_state(self._mask_seen[0], seen):
            return self._mask_seen[1]
        keys = _mask_keys(mask, batch, length, device, index)
        self._mask_seen = (seen, keys)
        return keys

    def flops(self):
        r"""The attention FLOPs of one forward of the model on the batch
        of the forests the last forward attended along (those passed with
        the call, else the set ones; before any forward, the set forests;
        :func:`~hsa_geo.huggingface.model_attention_flops`), one entry
        per attention call of the last
        forward under the patch (:attr:`call_order`); before any forward,
        one per attention module."""
        from hsa_geo.huggingface.flops import model_attention_flops
        forests = dict(self.forests)
        if self.call_order is not None:  # the forests that ran win
            forests.update(self._ran)
        return model_attention_flops(self.model, self.specs, forests,
                                     call_order=self.call_order)

    def __repr__(self) -> str:
        layers = {i: s.variant for i, s in self.specs.items()}
        return (f'{self.__class__.__name__}({type(self.model).__name__}, '
                f'layers={layers}, forests={sorted(self.forests)})')


def hsa_attention(model: torch.nn.Module,
                  layers: Union[Mapping[int, Union[HSASpec, str]],
                                Iterable[int]],
                  forest: Optional[Forest] = None) -> HSAPatch:
    r"""A context manager that runs HSA in the chosen :obj:`layers` of
    :obj:`model` and undoes it on exit (see :class:`HSAPatch`).

    Example:
        >>> builder = TokenHierarchy(tokenizer)
        >>> inputs, forest = builder.encode(texts)
        >>> with hsa_attention(model, {4: 'hsa', 5: 'query_resolved'},
        ...                    forest) as patch:
        ...     out = model(**inputs).last_hidden_state
    """
    return HSAPatch(model, layers, forest)


def _hsa_attention_forward(module: torch.nn.Module, query: Tensor,
                           key: Tensor, value: Tensor,
                           attention_mask: Optional[Tensor],
                           dropout: float = 0.0,
                           scaling: Optional[float] = None,
                           **kwargs: Any) -> Tuple[Tensor, Tensor]:
    r"""The function registered as :data:`ATTENTION_NAME`: the signature
    of ``transformers``' attention interface, ``[B, L, H, D]`` out and a
    ``[B, H, L, L]`` placeholder of NaNs for the weights."""
    route = _ROUTES.get(module)
    if route is None:
        raise RuntimeError(
            f"{type(module).__name__} asks for attention "
            f"{ATTENTION_NAME!r} but is not patched; set its config's "
            f"_attn_implementation through hsa_geo.huggingface.hsa_attention"
            f" only")
    patch, index = route
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"attention layer {index} ({type(module).__name__}) passes "
                f"{name}={kwargs[name]!r} to its attention function; HSA "
                f"attends along the forest with plain softmax scores and "
                f"would silently drop it ({_UNSUPPORTED_KWARGS[name]}); patch "
                f"only layers without it")
    out = patch.attention(index, module, query, key, value, attention_mask,
                          dropout, scaling, kwargs.get(FOREST_KWARG))
    # transformers leaves None weights out of `attentions`, which would
    # shift the layers after this one; an expanded scalar costs nothing.
    # Where the layer's own implementation returns no weights (sdpa,
    # flash, flex), neither does the patched layer, for the same reason.
    original = patch._saved[index]._attn_implementation
    if isinstance(original, str) and original.startswith(
            ('sdpa', 'flash', 'flex', 'paged')):
        return out, None
    batch, heads, length, _ = query.shape
    weights = query.new_full((), float('nan')).expand(batch, heads, length,
                                                      length)
    return out, weights


#: Keywords of the attention interface that change the scores; HSA
#: cannot honour them.
_UNSUPPORTED_KWARGS = {
    'sliding_window': 'a local window of keys',
    'softcap': 'a tanh soft cap of the scores',
    's_aux': 'attention sinks',
    'sinks': 'attention sinks',
}


def _register():
    try:
        from transformers import AttentionInterface
    except ImportError as e:
        raise ImportError(
            f"hsa_geo.huggingface needs transformers >= 4.54 ({e}); install "
            f"it with pip install 'hsa_geo[huggingface]'") from e
    AttentionInterface.register(ATTENTION_NAME, _hsa_attention_forward)


def layer_specs(layers: Any, count: int) -> Dict[int, HSASpec]:
    r"""The checked :obj:`layers` argument of :class:`HSAPatch` (a dict
    ``{layer: spec}`` or a list of layer indices, ``spec`` an
    :class:`HSASpec` or a variant's name) for a model of :obj:`count`
    attention layers, as ``{index in 0..count-1: HSASpec}``; a
    :class:`TypeError` or :class:`ValueError` says what is wrong."""
    if isinstance(layers, Mapping):
        items = list(layers.items())
    elif isinstance(layers, Iterable) and not isinstance(layers, str):
        items = [(i, 'hsa') for i in layers]
    else:
        raise TypeError(f"'layers' must be a dict {{layer: spec}} or a list "
                        f"of layer indices, got {type(layers).__name__}")
    specs = {}
    for index, spec in items:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"layer indices must be ints, got {index!r}")
        if not -count <= index < count:
            raise ValueError(
                f"layer {index} does not exist: the model has {count} "
                f"attention layers (0..{count - 1}, see "
                f"hsa_geo.huggingface.attention_modules(model))")
        if isinstance(spec, str):
            spec = HSASpec(spec)
        if not isinstance(spec, HSASpec):
            raise TypeError(f"layers[{index}] must be an HSASpec or one of "
                            f"{VARIANTS}, got {type(spec).__name__}")
        index %= count
        if index in specs:
            raise ValueError(f"layer {index} is given twice in 'layers'")
        specs[index] = spec
    return specs


def _check_forest(forest: Any, name: str) -> Forest:
    if not isinstance(forest, (TokenForest, Hierarchy)):
        raise TypeError(
            f"{name} must be a TokenForest (TokenHierarchy(tokenizer)("
            f"encoding, texts)) or a Hierarchy over the B * L positions, got "
            f"{type(forest).__name__}")
    return forest


def _device(forest: Forest) -> torch.device:
    return forest.hierarchy.device if isinstance(forest, TokenForest) \
        else forest.device


def _check_batch(forest: Forest, batch: int, length: int,
                 keys: Optional[Tensor], index: int) -> Hierarchy:
    r"""The hierarchy of :obj:`forest` after checking that it covers this
    batch and, for a :class:`TokenForest`, that its padding is the mask's
    (:obj:`keys` ``[B, L]``, from :func:`_mask_keys`)."""
    hierarchy = forest.hierarchy if isinstance(forest, TokenForest) \
        else forest
    if hierarchy.num_leaves != batch * length:
        raise ValueError(
            f"attention layer {index} gets a batch of {batch} x {length} "
            f"positions but the forest has {hierarchy.num_leaves} leaves; "
            f"build the forest from this batch's encoding (leaf b * L + t "
            f"is position t of sequence b)")
    if isinstance(forest, TokenForest):
        valid = None if keys is None else keys.to(forest.valid.device)
        if valid is not None and not torch.equal(valid, forest.valid):
            b = int((valid != forest.valid).any(1).nonzero()[0])
            raise ValueError(
                f"the padding of the forest does not match the attention "
                f"mask of the batch (sequence {b}); build the forest from "
                f"the encoding the model gets")
    return hierarchy


def _mask_keys(mask: Any, batch: int, length: int, device: torch.device,
               index: int) -> Optional[Tensor]:
    r"""``[B, L]`` the keys the model's mask lets a query see, from a mask
    in the format of any implementation (:obj:`None` when no format is
    recognised). A mask that does more than hide padding keys (causal,
    sliding-window, block-diagonal, or additive biases) raises: HSA does
    not read it and would silently attend past it."""
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor):
        raise ValueError(
            f"attention layer {index} got an attention mask of type "
            f"{type(mask).__name__}, which HSA cannot check against the "
            f"forest; load the model with attn_implementation='sdpa' or "
            f"'eager' to patch it")
    if mask.dim() == 2 and tuple(mask.shape) == (batch, length):
        return mask.bool().to(device)
    if mask.dim() != 4 or mask.size(-1) != length:
        return None
    if mask.dtype == torch.bool:
        allowed = mask
    else:  # additive: 0 where allowed, the dtype's minimum where not
        allowed = mask > torch.finfo(mask.dtype).min / 2
        if bool((mask[allowed] != 0).any()):
            raise ValueError(
                f"attention layer {index} got an additive attention mask "
                f"that adds a bias to allowed scores (a position bias or "
                f"a dynamic mask); HSA does not read the mask and would "
                f"silently drop it; patch only layers whose mask hides "
                f"padding only")
    keys = allowed.any(1).any(1).expand(batch, length)
    _check_padding_only(allowed.expand(batch, -1, -1, -1), keys, index)
    return keys.to(device)


def _check_padding_only(allowed: Tensor, keys: Tensor, index: int):
    r"""Raises unless every real query of a sequence may see the same
    keys, :obj:`keys` ``[B, L]``, in a 4-D mask :obj:`allowed` ``[B, H,
    Q, L]`` (a mask of one row per sequence, ``Q = 1``, can only be)."""
    if allowed.size(2) != keys.size(1):
        return
    differs = (allowed != keys[:, None, None, :]).any(-1) & \
        keys[:, None, :]  # [B, H, Q]
    if bool(differs.any()):
        b, _, t = (int(i) for i in differs.nonzero()[0])
        raise ValueError(
            f"attention layer {index} got an attention mask that hides "
            f"keys other than padding from query {t} of sequence {b} (a "
            f"causal, sliding-window or custom 4-D mask); HSA does not "
            f"read the mask, only the forest, and would silently attend "
            f"past it; pass a [B, L] padding mask, or patch only layers "
            f"whose mask hides padding only")


def _global_rows(out: Tensor, query: Tensor, key: Tensor, value: Tensor,
                 forest: TokenForest, scaling: float, dropout: float,
                 training: bool) -> Tensor:
    r""":obj:`out` ``[B, L, H, D]`` with the rows of the global leaves
    replaced by softmax attention over the real tokens of their sequence:
    :math:`\mathrm{softmax}_t(\mathrm{scale}\, q_g^\top k_{b t}) v_{b t}`,
    in float32 like the HSA rows."""
    length = out.size(1)
    rows = forest.global_leaves.to(out.device)
    b, t = rows // length, rows % length
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    q = query[b, :, t].to(dtype)  # [G, H, D]
    scores = torch.einsum('ghd,ghld->ghl', q, key[b].to(dtype)) * scaling
    valid = forest.valid.to(out.device)[b].unsqueeze(1)  # [G, 1, L]
    weight = scores.masked_fill(~valid, float('-inf')).softmax(-1)
    weight = torch.nn.functional.dropout(weight, dropout, training)
    rows_out = torch.einsum('ghl,ghld->ghd', weight, value[b].to(dtype))
    return out.index_put((b, t), rows_out.to(out.dtype))
