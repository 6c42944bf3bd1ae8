r"""Hierarchical self-attention across the leaf types of a multi-modal
nested signal."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.dense.linear import Linear

from hsa_geo._checks import check_bool, check_float, check_int
from hsa_geo.data.hetero_nested_signal import (HeteroNestedSignal,
                                               node_modality)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.dynamic_program import hierarchical_attention


class HeteroHSAConv(torch.nn.Module):
    r"""Hierarchical self-attention over the leaves of all types of a
    multi-modal nested signal (:class:`~hsa_geo.data.HeteroNestedSignal`):
    each leaf type :math:`t` has its own query, key and value projections
    into one attention space (as :class:`~torch_geometric.nn.conv.HGTConv`
    projects per type), then **one** exact HSA runs over all leaves, so that
    a word attends to image patches through the tree:

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{W}^{t(i)}_{\mathrm{skip}}
        \mathbf{x}_i + \sum_j Q_{i,j} \mathbf{W}^{t(j)}_v \mathbf{x}_j,

    with :math:`Q` the HSA matrix of the queries
    :math:`\mathbf{W}^{t(i)}_q \mathbf{x}_i` and keys
    :math:`\mathbf{W}^{t(j)}_k \mathbf{x}_j` over the hierarchy
    (docs/math.md). It equals :class:`~hsa_geo.nn.HSAConv`'s attention on
    the concatenated leaves with these per-type projections.

    With :obj:`modality_bias`, a learned bias :math:`\beta_{m(a) m(b)}` per
    head is added to the logit of sibling :math:`a` attending to sibling
    :math:`b`, where :math:`m` is the leaf type of a leaf, the one leaf type
    of a cluster whose leaves share it, or "mixed". It is constant on the
    block of :math:`a` and :math:`b`, so the layer stays the exact KL
    minimiser of docs/math.md, section 6.

    Args:
        in_channels (int or Dict[str, int]): input width of every leaf
            type, or of each (``-1``: inferred on the first call).
        out_channels (int): channels per head.
        leaf_types (List[str]): the leaf node types.
        heads (int, optional): attention heads. (default: :obj:`1`)
        concat (bool, optional): concatenate the heads (else average).
            (default: :obj:`True`)
        dropout (float, optional): dropout on the family weights.
            (default: :obj:`0.`)
        bias (bool, optional): biases in the projections.
            (default: :obj:`True`)
        root_weight (bool, optional): the per-type skip connection
            :math:`\mathbf{W}^{t}_{\mathrm{skip}}`. (default: :obj:`True`)
        modality_bias (bool, optional): learn :math:`\beta`, initialised to
            0. (default: :obj:`False`)

    Shapes:
        - **input:** ``x_dict`` ``{t: [N_t, F_t]}``, and a
          :class:`~hsa_geo.data.HeteroNestedSignal` (or a
          :class:`~hsa_geo.data.Hierarchy` whose leaves are those of
          :obj:`leaf_types` in that order)
        - **output:** ``{t: [N_t, heads * out_channels]}`` (``[N_t,
          out_channels]`` without :obj:`concat`)
    """
    def __init__(self, in_channels: Union[int, Mapping[str, int]],
                 out_channels: int, leaf_types: Sequence[str],
                 heads: int = 1, concat: bool = True, dropout: float = 0.,
                 bias: bool = True, root_weight: bool = True,
                 modality_bias: bool = False):
        super().__init__()
        if isinstance(leaf_types, str) or len(leaf_types) == 0 or \
                len(set(leaf_types)) != len(leaf_types):
            raise ValueError(f"'leaf_types' must be a list of distinct "
                             f"node type names, got {leaf_types!r}")
        if not isinstance(in_channels, Mapping):
            in_channels = {t: in_channels for t in leaf_types}
        for t in leaf_types:
            width = check_int(in_channels.get(t), f'in_channels[{t!r}]',
                              low=None)
            if width != -1 and width < 1:
                raise ValueError(f"in_channels[{t!r}] must be positive or "
                                 f"-1 (inferred), got {width}")
        self.leaf_types = list(leaf_types)
        self.in_channels = {t: in_channels[t] for t in leaf_types}
        self.out_channels = check_int(out_channels, 'out_channels')
        self.heads = check_int(heads, 'heads')
        for name, flag in (('concat', concat), ('bias', bias),
                           ('root_weight', root_weight),
                           ('modality_bias', modality_bias)):
            check_bool(flag, name)
        self.concat = concat
        self.dropout = check_float(dropout, 'dropout', 0.0, 1.0,
                                   high_open=True)
        width = heads * out_channels
        self.lin_qkv = torch.nn.ModuleDict({
            t: Linear(self.in_channels[t], 3 * width, bias=bias)
            for t in leaf_types})
        out_size = width if concat else out_channels
        self.lin_skip = torch.nn.ModuleDict({
            t: Linear(self.in_channels[t], out_size, bias=bias)
            for t in leaf_types}) if root_weight else None
        # Rows and columns: the leaf types, then "mixed".
        num = len(leaf_types) + 1
        self.modality_bias = torch.nn.Parameter(
            torch.zeros(num, num, heads)) if modality_bias else None
        self.reset_parameters()

    def reset_parameters(self):
        for lin in self.lin_qkv.values():
            lin.reset_parameters()
        if self.lin_skip is not None:
            for lin in self.lin_skip.values():
                lin.reset_parameters()
        if self.modality_bias is not None:
            torch.nn.init.zeros_(self.modality_bias)

    def forward(self, x_dict: Mapping[str, Tensor],
                signal: Union[HeteroNestedSignal, Hierarchy],
                return_attention_weights: Optional[bool] = None
                ) -> Union[Dict[str, Tensor],
                           Tuple[Dict[str, Tensor], Tuple[Tensor, Tensor]]]:
        r"""Runs the layer; with :obj:`return_attention_weights` set (to
        anything), also returns ``(sibling_pairs [2, P], weights [P, H])``
        of the hierarchy, as :class:`~hsa_geo.nn.HSAConv` does."""
        order, hierarchy = self._order(x_dict, signal)
        counts = [x_dict[t].size(0) for t in order]
        if sum(counts) != hierarchy.num_leaves:
            raise ValueError(
                f"x_dict holds {sum(counts)} leaves "
                f"({dict(zip(order, counts))}) but the hierarchy has "
                f"{hierarchy.num_leaves}")
        h, c = self.heads, self.out_channels
        qkv = torch.cat([self.lin_qkv[t](x_dict[t]) for t in order])
        q, k, v = qkv.view(-1, 3, h, c).unbind(1)
        pair_bias = None
        if self.modality_bias is not None:
            pair_bias = self._pair_bias(hierarchy, order, counts)
        with_weights = return_attention_weights is not None
        out = hierarchical_attention(
            q, k, v, hierarchy, dropout_p=self.dropout,
            training=self.training, return_weights=with_weights,
            pair_bias=pair_bias)
        out, weights = out if with_weights else (out, None)
        out = out.reshape(-1, h * c) if self.concat else out.mean(dim=1)
        out_dict = dict(zip(order, out.split(counts)))
        if self.lin_skip is not None:
            out_dict = {t: y + self.lin_skip[t](x_dict[t])
                        for t, y in out_dict.items()}
        if weights is not None:
            return out_dict, (weights.index, weights.weight)
        return out_dict

    def _order(self, x_dict: Mapping[str, Tensor],
               signal: Union[HeteroNestedSignal, Hierarchy]
               ) -> Tuple[List[str], Hierarchy]:
        r"""The leaf types in the order of the hierarchy's leaves, and the
        hierarchy; checks that :obj:`x_dict` has exactly those types."""
        if isinstance(signal, HeteroNestedSignal):
            order, hierarchy = signal.leaf_types, signal.hierarchy
        elif isinstance(signal, Hierarchy):
            order, hierarchy = self.leaf_types, signal
        else:
            raise TypeError(f"'signal' must be a HeteroNestedSignal or a "
                            f"Hierarchy, got {type(signal).__name__}")
        unknown = set(order) - set(self.leaf_types)
        if unknown:
            raise ValueError(f"leaf type {sorted(unknown)[0]!r} is not one "
                             f"of this layer's {self.leaf_types}")
        for t in order:
            x = x_dict.get(t) if isinstance(x_dict, Mapping) else None
            if not isinstance(x, Tensor) or x.dim() != 2:
                raise ValueError(f"x_dict[{t!r}] must be a [N_t, F_t] "
                                 f"tensor of that type's leaf features")
        return list(order), hierarchy

    def _pair_bias(self, hierarchy: Hierarchy, order: List[str],
                   counts: List[int]) -> Tensor:
        r"""``[P, H]``: the learned bias of every sibling pair's modality
        pair."""
        device = self.modality_bias.device
        index = [self.leaf_types.index(t) for t in order]
        leaf_type = torch.repeat_interleave(
            torch.tensor(index, device=device),
            torch.tensor(counts, device=device))
        modality = node_modality(hierarchy, leaf_type, len(self.leaf_types))
        a, b = hierarchy.sibling_pairs
        return self.modality_bias[modality[a], modality[b]]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads}, '
                f'leaf_types={self.leaf_types}, '
                f'modality_bias={self.modality_bias is not None})')
