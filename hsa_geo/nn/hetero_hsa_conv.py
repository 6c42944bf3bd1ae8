r"""Hierarchical self-attention across the leaf types of a multi-modal
nested signal."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.dense.linear import Linear

from torch_geometric.typing import EdgeType
from torch_geometric.utils import scatter

from hsa_geo._checks import (check_bool, check_device, check_features,
                             check_flags, check_float, check_floating,
                             check_index, check_int, check_width,
                             first_out_of_range)
from hsa_geo._memory import ensure_pairs_fit
from hsa_geo.data.hetero_nested_signal import (CLUSTER, HeteroNestedSignal,
                                               node_modality)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.dynamic_program import (FamilyWeights,
                                                hierarchical_attention)
from hsa_geo.nn.edge_pair_bias import EdgePairBias
from hsa_geo.nn.hsa_conv import split_fused_projection


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

    With :obj:`edge_dim`, features of edges between leaves, of one edge type
    or between two leaf types (a bond between atoms, a caption word that
    names a patch), enter as :class:`~hsa_geo.nn.HSAConv` takes them
    (:class:`~hsa_geo.nn.EdgePairBias`): each edge type has its own map
    :math:`\mathbf{W}^{r}_e` to one value per head, and the bias of sibling
    :math:`a` attending to :math:`b` is the mean of
    :math:`\mathbf{W}^{r(e)}_e \mathbf{e}` over all edges, of every type,
    from a leaf under :math:`a` to a leaf under :math:`b` (0 without
    edges): constant on the block, so exact too. As in
    :class:`~hsa_geo.nn.EdgePairBias`, an edge ``(i, j)`` biases :math:`i`
    attending to :math:`j` (the reverse of PyG's message direction
    :math:`j \to i`); add the reverse edge type for the other way.

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
        edge_dim (Dict[Tuple[str, str, str], int], optional): the edge types
            whose features enter, with their widths (``-1``: inferred on
            the first call); :meth:`forward` then needs their
            ``edge_attr`` (and ``edge_index``, read from the signal when
            not given). (default: :obj:`None`)

    Shapes:
        - **input:** ``x_dict`` ``{t: [N_t, F_t]}``, and a
          :class:`~hsa_geo.data.HeteroNestedSignal` (or a
          :class:`~hsa_geo.data.Hierarchy` whose leaves are those of
          :obj:`leaf_types` in that order; :obj:`x_dict` must then list
          its types in that order too, else :class:`ValueError`)
        - **output:** ``{t: [N_t, heads * out_channels]}`` (``[N_t,
          out_channels]`` without :obj:`concat`)
    """
    def __init__(self, in_channels: Union[int, Mapping[str, int]],
                 out_channels: int, leaf_types: Sequence[str],
                 heads: int = 1, concat: bool = True, dropout: float = 0.,
                 bias: bool = True, root_weight: bool = True,
                 modality_bias: bool = False,
                 edge_dim: Optional[Mapping[EdgeType, int]] = None):
        super().__init__()
        _check_leaf_types(leaf_types)
        self.leaf_types = list(leaf_types)
        self.in_channels = _checked_in_channels(in_channels, leaf_types)
        self.out_channels = check_int(out_channels, 'out_channels')
        self.heads = check_int(heads, 'heads')
        check_flags(concat=concat, bias=bias, root_weight=root_weight,
                    modality_bias=modality_bias)
        self.concat = concat
        self.dropout = check_float(dropout, 'dropout', 0.0, 1.0,
                                   high_open=True)
        width = heads * out_channels
        # One product each per type, as HSAConv: q, k, v arrive dense.
        self.lin_query, self.lin_key, self.lin_value = (
            torch.nn.ModuleDict({
                t: Linear(self.in_channels[t], width, bias=bias)
                for t in leaf_types}) for _ in range(3))
        out_size = width if concat else out_channels
        self.lin_skip = torch.nn.ModuleDict({
            t: Linear(self.in_channels[t], out_size, bias=bias)
            for t in leaf_types}) if root_weight else None
        # Rows and columns: the leaf types, then "mixed".
        num = len(leaf_types) + 1
        self.modality_bias = torch.nn.Parameter(
            torch.zeros(num, num, heads)) if modality_bias else None
        self.edge_types = _check_edge_dim(edge_dim, self.leaf_types)
        # ModuleDict keys are str: the edge type joined as to_hetero does.
        self.lin_edge = torch.nn.ModuleDict({
            '__'.join(e): Linear(edge_dim[e], heads)
            for e in self.edge_types}) if self.edge_types else None
        self.reset_parameters()

    def reset_parameters(self):
        for lins in (self.lin_query, self.lin_key, self.lin_value):
            for lin in lins.values():
                lin.reset_parameters()
        if self.lin_skip is not None:
            for lin in self.lin_skip.values():
                lin.reset_parameters()
        if self.modality_bias is not None:
            torch.nn.init.zeros_(self.modality_bias)
        if self.lin_edge is not None:
            for lin in self.lin_edge.values():
                lin.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        split_fused_projection(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x_dict: Mapping[str, Tensor],
                signal: Union[HeteroNestedSignal, Hierarchy],
                return_attention_weights: Optional[bool] = None, *,
                edge_attr_dict: Optional[Mapping[EdgeType, Tensor]] = None,
                edge_index_dict: Optional[Mapping[EdgeType, Tensor]] = None
                ) -> Union[Dict[str, Tensor],
                           Tuple[Dict[str, Tensor], FamilyWeights]]:
        r"""Runs the layer; with :obj:`return_attention_weights` set
        (:obj:`True` or :obj:`False`), also returns ``(sibling_pairs [2, P],
        weights [P, H])`` of the hierarchy, a
        :class:`~hsa_geo.functional.FamilyWeights`, as
        :class:`~hsa_geo.nn.HSAConv` does. With :obj:`edge_dim`,
        :obj:`edge_attr_dict` holds ``[E_r, F_r]`` for each of its edge
        types and :obj:`edge_index_dict` their ``[2, E_r]`` (taken from a
        :class:`~hsa_geo.data.HeteroNestedSignal` when not given); both
        are refused (:class:`ValueError`) without :obj:`edge_dim`, and so
        is an edge type in either that is not one of :obj:`edge_dim`'s:
        the layer would ignore it.

        Raises :class:`TypeError` for features that are not floating point
        tensors of the layer's dtype and :class:`ValueError` for an
        ``x_dict[t]`` whose rows are not the leaves of type ``t`` of the
        signal or whose width is not the layer's, as
        :meth:`HSAConv.check_input <hsa_geo.nn.HSAConv.check_input>`
        does, for features of a type that is not a leaf type of the
        signal (they would be dropped; ``'cluster'`` features and empty
        tensors are left alone), and for edge features holding NaN or inf,
        as :class:`~hsa_geo.nn.EdgePairBias` does."""
        with_weights = return_attention_weights is not None
        if with_weights:
            check_bool(return_attention_weights, 'return_attention_weights')
        order, hierarchy, counts = self._check_input(x_dict, signal)
        h, c = self.heads, self.out_channels
        q, k, v = (
            torch.cat([lins[t](x_dict[t]) for t in order]).view(-1, h, c)
            for lins in (self.lin_query, self.lin_key, self.lin_value))
        if self.modality_bias is not None or self.lin_edge is not None:
            # Pair lists, keys and both [P, H] biases (as HSAConv's).
            ensure_pairs_fit(hierarchy, 80 + 2 * h * q.element_size(),
                             'the pair biases')
        pair_bias = None
        if self.modality_bias is not None:
            pair_bias = self._pair_bias(hierarchy, order, counts)
        if self.lin_edge is not None:
            edge_bias = self._edge_bias(hierarchy, order, counts, signal,
                                        edge_attr_dict, edge_index_dict)
            pair_bias = edge_bias if pair_bias is None else \
                pair_bias + edge_bias
        else:
            for name, given in (('edge_attr_dict', edge_attr_dict),
                                ('edge_index_dict', edge_index_dict)):
                if given is not None:
                    raise ValueError(
                        f"{name} was given but this layer has no edge_dim, "
                        f"so it would be ignored; build it with "
                        f"edge_dim={{edge type: width}}, or leave it out")
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
            return out_dict, weights
        return out_dict

    def _check_input(self, x_dict: Mapping[str, Tensor],
                     signal: Union[HeteroNestedSignal, Hierarchy]
                     ) -> Tuple[List[str], Hierarchy, List[int]]:
        r"""The leaf types in the order of the hierarchy's leaves, the
        hierarchy and the number of leaves of each type; checks that
        :obj:`x_dict` holds one ``[N_t, F_t]`` tensor per type that fits
        the signal's leaves of that type and the type's projections."""
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
        # A plain Hierarchy tells only the total number of leaves.
        slices = signal.leaf_slices if isinstance(
            signal, HeteroNestedSignal) else None
        for t in order:
            x = x_dict.get(t) if isinstance(x_dict, Mapping) else None
            if not isinstance(x, Tensor) or x.dim() != 2:
                raise ValueError(f"x_dict[{t!r}] must be a [N_t, F_t] "
                                 f"tensor of that type's leaf features")
            name = f'x_dict[{t!r}]'
            check_floating(x, name)
            check_features(x, name, self.lin_query[t].weight,
                           f'in_channels[{t!r}]')
            check_device(x, name, hierarchy.device, 'the hierarchy')
            if slices is not None and \
                    x.size(0) != slices[t].stop - slices[t].start:
                raise ValueError(
                    f"x_dict[{t!r}] has {x.size(0)} rows but the signal has "
                    f"{slices[t].stop - slices[t].start} leaves of type "
                    f"{t!r}; row i must hold the features of the signal's "
                    f"leaf i of that type")
        _check_no_unused_features(x_dict, order)
        if slices is None:
            _check_plain_order(x_dict, order)
        counts = [x_dict[t].size(0) for t in order]
        if sum(counts) != hierarchy.num_leaves:
            raise ValueError(
                f"x_dict holds {sum(counts)} leaves "
                f"({dict(zip(order, counts))}) but the hierarchy has "
                f"{hierarchy.num_leaves}")
        return list(order), hierarchy, counts

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

    def _edge_bias(self, hierarchy: Hierarchy, order: List[str],
                   counts: List[int], signal, edge_attr_dict,
                   edge_index_dict) -> Tensor:
        r"""``[P, H]``: per sibling pair, the mean of the projected
        features of the edges between the two subtrees, over all edge
        types."""
        if not isinstance(edge_attr_dict, Mapping):
            raise ValueError(f"this layer has edge_dim: pass edge_attr_dict "
                             f"with the features of {self.edge_types}")
        if edge_index_dict is not None and \
                not isinstance(edge_index_dict, Mapping):
            raise TypeError(f"'edge_index_dict' must map edge types to their "
                            f"[2, E] edges, got "
                            f"{type(edge_index_dict).__name__}")
        for name, given in (('edge_attr_dict', edge_attr_dict),
                            ('edge_index_dict', edge_index_dict or {})):
            unknown = [e for e in given if e not in self.edge_types]
            if unknown:
                raise ValueError(
                    f"{name} has edge type {unknown[0]}, which is not one of "
                    f"this layer's edge_dim {self.edge_types}, so it would "
                    f"be ignored; leave it out, or add it to edge_dim")
        start = dict(zip(order, torch.tensor([0] + counts[:-1]).cumsum(0)
                         .tolist()))
        count = dict(zip(order, counts))
        rows, values = [], []
        for edge_type in self.edge_types:
            missing = [t for t in edge_type[::2] if t not in count]
            if missing:
                raise ValueError(f"edge type {edge_type} joins leaf type "
                                 f"'{missing[0]}', which the signal does "
                                 f"not have")
            index = _edge_index(edge_type, signal, edge_index_dict)
            bad = first_out_of_range(index, (count[edge_type[0]],
                                             count[edge_type[2]]))
            if bad is not None:
                row, j = bad
                raise ValueError(
                    f"edge_index of {edge_type}[{row}, {j}] = "
                    f"{int(index[row, j])} is not a leaf of type "
                    f"'{edge_type[2 * row]}' (0.."
                    f"{count[edge_type[2 * row]] - 1})")
            attr = edge_attr_dict.get(edge_type)
            if not isinstance(attr, Tensor) or attr.dim() != 2 or \
                    attr.size(0) != index.size(1) or \
                    not attr.is_floating_point():
                raise ValueError(
                    f"edge_attr_dict[{edge_type}] must be [E, F] floating "
                    f"point features of its {index.size(1)} edges")
            lin = self.lin_edge['__'.join(edge_type)]
            check_features(attr, f'edge_attr_dict[{edge_type}]', lin.weight,
                           f'edge_dim[{edge_type!r}]', row='edge', rows='E')
            EdgePairBias.check_finite(attr, f'edge_attr_dict[{edge_type}]')
            src, _, dst = edge_type
            edges = torch.stack([index[0] + start[src],
                                 index[1] + start[dst]])
            row, keep = EdgePairBias.pair_of_edge(hierarchy, edges)
            rows.append(row[keep])
            values.append(lin(attr[keep]))
        return scatter(torch.cat(values), torch.cat(rows), dim=0,
                       dim_size=hierarchy.num_sibling_pairs, reduce='mean')

    def __repr__(self) -> str:
        # The options that differ from their defaults, in the order of the
        # signature, after the heads.
        options = [f'heads={self.heads}']
        if not self.concat:
            options.append('concat=False')
        if self.dropout != 0.:
            options.append(f'dropout={self.dropout}')
        if self.lin_query[self.leaf_types[0]].bias is None:
            options.append('bias=False')
        if self.lin_skip is None:
            options.append('root_weight=False')
        options += [f'leaf_types={self.leaf_types}',
                    f'modality_bias={self.modality_bias is not None}']
        if self.edge_types:
            options.append(f'edge_types={self.edge_types}')
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, {", ".join(options)})')


def _check_edge_dim(edge_dim, leaf_types: List[str]) -> List[EdgeType]:
    r"""The edge types of :obj:`edge_dim`, checked: between leaf types,
    widths positive or -1."""
    if edge_dim is None:
        return []
    if not isinstance(edge_dim, Mapping) or len(edge_dim) == 0:
        raise ValueError("'edge_dim' must map edge types (src, rel, dst) to "
                         "their feature widths, e.g. {('atom', 'bond', "
                         "'atom'): 3}")
    for edge_type, width in edge_dim.items():
        if not (isinstance(edge_type, tuple) and len(edge_type) == 3) or \
                edge_type[0] not in leaf_types or \
                edge_type[2] not in leaf_types:
            raise ValueError(f"edge_dim key {edge_type!r} must be an edge "
                             f"type (src, rel, dst) between leaf types "
                             f"{leaf_types}")
        if any(not isinstance(name, str) or '__' in name or '.' in name
               for name in edge_type):
            # Two such types could join to one key and share one Linear.
            raise ValueError(
                f"edge_dim key {edge_type!r}: the names of an edge type "
                f"must be strings without '__' or '.', because its edge "
                f"bias is stored under '__'.join(edge_type), as PyG's "
                f"to_hetero does; rename the types (e.g. '__' -> '_')")
        check_width(width, f'edge_dim[{edge_type!r}]')
    return list(edge_dim)


def _check_leaf_types(leaf_types: Sequence[str]) -> None:
    r"""Checks that :obj:`leaf_types` are distinct names that can key the
    projections."""
    if isinstance(leaf_types, str) or len(leaf_types) == 0 or \
            len(set(leaf_types)) != len(leaf_types):
        raise ValueError(f"'leaf_types' must be a list of distinct "
                         f"node type names, got {leaf_types!r}")
    for t in leaf_types:
        # The projections are a ModuleDict keyed by type name.
        if not isinstance(t, str) or t == '' or '.' in t:
            raise ValueError(
                f"leaf type {t!r}: node type names must be non-empty "
                f"strings without '.', because each type's projections "
                f"are stored under its name (a '.' would read as a "
                f"submodule path); rename the type (e.g. '.' -> '_')")


def _checked_in_channels(in_channels: Union[int, Mapping[str, int]],
                         leaf_types: Sequence[str]) -> Dict[str, int]:
    r"""The input width of every leaf type (one for all, or one each),
    checked."""
    if not isinstance(in_channels, Mapping):
        in_channels = {t: in_channels for t in leaf_types}
    for t in leaf_types:
        check_width(in_channels.get(t), f'in_channels[{t!r}]')
    return {t: in_channels[t] for t in leaf_types}


def _check_no_unused_features(x_dict: Mapping[str, Tensor],
                              order: List[str]) -> None:
    r"""Refuses features the layer would drop: rows for a type that is not
    one of the leaf types in :obj:`order` (a typo, or a type the signal
    has no leaves of). The clusters' features (``'cluster'``) are not
    leaves and are left alone, as are empty tensors."""
    for t, x in x_dict.items():
        if t in order or t == CLUSTER or (isinstance(x, Tensor) and
                                          x.numel() == 0):
            continue
        raise ValueError(
            f"x_dict[{t!r}] holds features, but {t!r} is not a leaf type "
            f"of this signal ({order}), so the layer would drop them; "
            f"remove the key, or give the signal (and the layer) that leaf "
            f"type")


def _check_plain_order(x_dict: Mapping[str, Tensor], order: List[str]):
    r"""With a plain :class:`Hierarchy` the leaves are read in the layer's
    type order; an :obj:`x_dict` listing its types in another order (that
    of a signal, say) most likely belongs to leaves in that order."""
    given = [t for t in x_dict if t in order]
    if given != [t for t in order if t in given]:
        raise ValueError(
            f"with a plain Hierarchy, HeteroHSAConv reads the leaves type "
            f"by type in the order of its leaf_types {order}, but x_dict "
            f"lists {given}: pass the HeteroNestedSignal itself (it knows "
            f"its order), or build x_dict in the order {order} if the "
            f"hierarchy's leaves are in that order")


def _edge_index(edge_type: EdgeType, signal, edge_index_dict) -> Tensor:
    r"""The ``[2, E]`` edges of :obj:`edge_type`, given or from the
    signal."""
    index = None
    if edge_index_dict is not None:
        index = edge_index_dict.get(edge_type)
    elif isinstance(signal, HeteroNestedSignal) and \
            edge_type in signal.edge_types:
        index = signal[edge_type].get('edge_index')
    if index is None:
        raise ValueError(f"no edge_index for edge type {edge_type}: pass "
                         f"edge_index_dict or store it in the signal")
    return check_index(index, f'edge_index_dict[{edge_type}]')
