r"""The GPS graph transformer layer with hierarchical self-attention as its
global attention."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Linear, Sequential
from torch_geometric.data import Batch
from torch_geometric.nn.inits import reset
from torch_geometric.nn.resolver import (activation_resolver,
                                         normalization_resolver)
from torch_geometric.typing import Adj
from torch_geometric.utils import is_sparse

from hsa_geo._checks import check_float, check_heads, check_index
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.nn.hsa_conv import HSAConv

# HSAConv arguments that the layer sets itself: the attention maps
# `channels` to `channels` with `heads` concatenated heads.
_FIXED_ATTN_KWARGS = ('in_channels', 'out_channels', 'heads', 'concat')


class HSAGPSConv(torch.nn.Module):
    r"""The GPS layer from the `"Recipe for a General, Powerful, Scalable
    Graph Transformer" <https://arxiv.org/abs/2205.12454>`_ paper, with
    hierarchical self-attention (:class:`~hsa_geo.nn.HSAConv`) over the
    leaves of a hierarchy as its global attention, in the shape of
    :class:`~torch_geometric.nn.conv.GPSConv`:

    .. math::
        \mathbf{h}_L &= \mathrm{Norm}_1\left(\mathbf{x} +
            \mathrm{Dropout}(\mathrm{MPNN}(\mathbf{x}, \mathbf{A}))\right),
            \\
        \mathbf{h}_G &= \mathrm{Norm}_2\left(\mathbf{x} +
            \mathrm{Dropout}(\mathrm{HSA}(\mathbf{x}, \mathcal{T}))\right),
            \\
        \mathbf{h} &= \mathbf{h}_L + \mathbf{h}_G, \\
        \mathbf{x}^{\prime} &= \mathrm{Norm}_3\left(\mathbf{h} +
            \mathrm{MLP}(\mathbf{h})\right),

    where :math:`\mathrm{MPNN}` is the local message passing layer
    :obj:`conv` on the leaf edges :math:`\mathbf{A}` (without it,
    :math:`\mathbf{h} = \mathbf{h}_G`), :math:`\mathrm{HSA}` is
    :class:`~hsa_geo.nn.HSAConv` with :obj:`heads` concatenated heads of
    ``channels // heads`` channels over the hierarchy :math:`\mathcal{T}`,
    and :math:`\mathrm{MLP}` is ``Linear(C, 2C)``, the activation, dropout,
    ``Linear(2C, C)`` and dropout. Every leaf attends to the whole tree it
    belongs to (a mini-batch of nested signals is a forest: trees never
    attend to each other) at a cost linear in the number of leaves for
    bounded branching; no dense batch is padded.

    .. note::

        :class:`~torch_geometric.nn.conv.GPSConv` cannot run HSA:
        ``attn_type`` knows only ``'multihead'`` and ``'performer'``, and
        an :class:`~hsa_geo.nn.HSAConv` assigned to ``GPSConv.attn`` is
        never called (its forward calls the attention only when it is a
        :class:`torch.nn.MultiheadAttention` or a
        :class:`~torch_geometric.nn.attention.PerformerAttention`, so the
        global branch is the identity) and has no hierarchy to read.

    Arguments are checked: a value of the wrong type raises
    :class:`TypeError`, one out of range :class:`ValueError`.

    Args:
        channels (int): size of each leaf's features (input and output),
            positive.
        conv (torch.nn.Module, optional): the local message passing layer,
            called as ``conv(x, edge_index, **kwargs)`` and mapping
            ``[N, channels]`` to ``[N, channels]``; :obj:`None` for
            attention only.
        heads (int, optional): attention heads; must divide
            :obj:`channels`. (default: :obj:`1`)
        dropout (float, optional): dropout of the intermediate embeddings,
            in :math:`[0, 1)`. (default: :obj:`0.`)
        act (str or Callable, optional): the activation of the MLP.
            (default: :obj:`"relu"`)
        act_kwargs (Dict[str, Any], optional): arguments of the activation
            named by :obj:`act`. (default: :obj:`None`)
        norm (str or Callable, optional): the normalization, resolved by
            :func:`~torch_geometric.nn.resolver.normalization_resolver`;
            one whose forward takes ``batch`` (``'graph_norm'``,
            ``'layer_norm'``, ...) receives :obj:`batch` (all zeros when
            there is none: one graph, normalised as in a batch).
            :obj:`None`: no normalization. ``'batch_norm'`` needs more
            than one node per input in training, as
            :class:`torch.nn.BatchNorm1d` does (a single one-node graph
            fails there; use ``'layer_norm'``).
            (default: :obj:`"batch_norm"`)
        norm_kwargs (Dict[str, Any], optional): arguments of the
            normalization. (default: :obj:`None`)
        attn_kwargs (Dict[str, Any], optional): further arguments of
            :class:`~hsa_geo.nn.HSAConv`: ``dropout`` (on the family
            attention weights), ``geometry_bias``, ``edge_dim``,
            ``root_weight`` (:obj:`False` unless given: the residual is the
            skip connection), ... With ``edge_dim``, the attention reads the
            leaf edges and their features ``edge_attr`` from the
            :obj:`kwargs` of :meth:`forward`; its :obj:`edge_index` must
            then be a ``[2, E]`` tensor in the order of ``edge_attr``, not a
            sparse adjacency. (default: :obj:`None`)

    Shapes:
        - **input:**
          leaf features :math:`(N, C)`, leaf edges :math:`(2, E)`, a
          :class:`~hsa_geo.data.Hierarchy` over the :math:`N` leaves (or a
          :class:`~hsa_geo.data.NestedSignal` or batch of them holding
          ``.hierarchy``), batch vector :math:`(N)` *(optional; without
          it, the ``batch`` of a collated batch given as the hierarchy)*,
          further
          arguments of :obj:`conv` (e.g. ``edge_attr`` :math:`(E, D)`)
        - **output:** leaf features :math:`(N, C)`
    """
    def __init__(
        self,
        channels: int,
        conv: Optional[torch.nn.Module],
        heads: int = 1,
        dropout: float = 0.0,
        act: Union[str, Callable] = 'relu',
        act_kwargs: Optional[Dict[str, Any]] = None,
        norm: Optional[Union[str, Callable]] = 'batch_norm',
        norm_kwargs: Optional[Dict[str, Any]] = None,
        attn_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        channels, heads = check_heads(channels, heads)
        if conv is not None and not isinstance(conv, torch.nn.Module):
            raise TypeError(f"'conv' must be a message passing layer (a "
                            f"torch.nn.Module called as conv(x, edge_index,"
                            f" **kwargs)) or None, got "
                            f"{type(conv).__name__}")
        self.channels = channels
        self.conv = conv
        self.heads = heads
        self.dropout = check_float(dropout, 'dropout', 0.0, 1.0,
                                   high_open=True)

        self.attn = HSAConv(channels, channels // heads, heads=heads,
                            **_attention_kwargs(attn_kwargs))

        self.mlp = Sequential(
            Linear(channels, channels * 2),
            activation_resolver(act, **_kwargs(act_kwargs, 'act_kwargs')),
            Dropout(self.dropout),
            Linear(channels * 2, channels),
            Dropout(self.dropout),
        )

        norm_kwargs = _kwargs(norm_kwargs, 'norm_kwargs')
        # norm1 follows the local layer: none without one (parameters
        # that never get a gradient would stall DistributedDataParallel).
        self.norm1 = None if conv is None else normalization_resolver(
            norm, channels, **norm_kwargs)
        self.norm2 = normalization_resolver(norm, channels, **norm_kwargs)
        self.norm3 = normalization_resolver(norm, channels, **norm_kwargs)

        self.norm_with_batch = self.norm3 is not None and _takes(
            self.norm3.forward, 'batch')
        if self.norm1 is None:  # states saved by earlier versions have it
            self._register_load_state_dict_pre_hook(_drop_unused_norm)
        # Edge features go to the local layer only if it reads them, so
        # that e.g. GINConv runs beside an attention with edge features.
        self.conv_with_edge_attr = conv is not None and _takes(
            conv.forward, 'edge_attr')

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        if self.conv is not None:
            reset(self.conv)
        self.attn.reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Adj,
        hierarchy: Hierarchy,
        batch: Optional[Tensor] = None,
        **kwargs,
    ) -> Tensor:
        r"""Runs the layer: :obj:`kwargs` (e.g. ``edge_attr``) go to
        :obj:`conv`; ``edge_attr`` goes to the attention as well when it
        has an ``edge_dim``, and to :obj:`conv` only if its forward takes
        it. Arguments that no part would read raise a
        :class:`ValueError`, as do a :obj:`hierarchy` whose leaves are not
        the rows of :obj:`x` and a :obj:`batch` that is not ``[N]``; with
        the attention's ``edge_dim``, edges and features that
        :class:`~hsa_geo.nn.EdgePairBias` refuses raise before
        :obj:`conv` runs."""
        if batch is None and isinstance(hierarchy, Batch):
            # A collated batch of signals: graph-aware norms per graph, as
            # HSAGraphTransformer does, not over the whole mini-batch.
            batch = hierarchy.batch
        # Checked first, so that bad input fails with a message about x and
        # the hierarchy rather than inside the local layer.
        hierarchy = self.attn.check_input(x, hierarchy)
        self._check_extra_input(x, edge_index, hierarchy, batch, kwargs)
        if batch is None and self.norm_with_batch:
            # One graph, as in a batch: PyG's LayerNorm without a batch
            # divides by std + eps rather than sqrt(var + eps).
            batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        attn_edges = self.attn.edge_dim is not None

        hs = []
        if self.conv is not None:  # Local MPNN.
            conv_kwargs = kwargs if self.conv_with_edge_attr else {
                key: value
                for key, value in kwargs.items() if key != 'edge_attr'
            }
            h = self.conv(x, edge_index, **conv_kwargs)
            if not isinstance(h, Tensor) or h.shape != x.shape:
                raise ValueError(
                    f"'conv' must map x [N, {self.channels}] to "
                    f"[N, {self.channels}], got "
                    f"{tuple(h.shape) if isinstance(h, Tensor) else h!r}")
            h = F.dropout(h, p=self.dropout, training=self.training)
            h = h + x
            hs.append(self._norm(self.norm1, h, batch))

        # Global hierarchical self-attention over each leaf's tree.
        if attn_edges:
            h = self.attn(x, hierarchy, edge_index, kwargs.get('edge_attr'))
        else:
            h = self.attn(x, hierarchy)
        h = F.dropout(h, p=self.dropout, training=self.training)
        h = h + x  # Residual connection.
        hs.append(self._norm(self.norm2, h, batch))

        out = sum(hs)  # Combine local and global outputs.

        out = out + self.mlp(out)
        return self._norm(self.norm3, out, batch)

    def _norm(self, norm: Optional[torch.nn.Module], x: Tensor,
              batch: Optional[Tensor]) -> Tensor:
        if norm is None:
            return x
        return norm(x, batch=batch) if self.norm_with_batch else norm(x)

    def _check_extra_input(self, x: Tensor, edge_index: Adj,
                           hierarchy: Hierarchy, batch: Optional[Tensor],
                           kwargs: Dict[str, Any]):
        r"""Refuses a malformed :obj:`batch`, arguments no part reads, a
        sparse adjacency where the attention reads edge features and edges
        the attention would refuse (before the local layer fails on them
        with a message of its own)."""
        if batch is not None:
            batch = check_index(batch, 'batch', rows=None)
            if batch.numel() != x.size(0):
                raise ValueError(f"'batch' has {batch.numel()} entries but "
                                 f"'x' has {x.size(0)} rows; give one graph "
                                 f"id per leaf")
        edge_dim = self.attn.edge_dim
        if edge_dim is not None and kwargs.get('edge_attr') is None:
            raise ValueError(f"'edge_attr' is missing: the attention has "
                             f"edge_dim={edge_dim}, so forward needs "
                             f"edge_attr=[E, {edge_dim}] (E may be 0)")
        # Row e of edge_attr belongs to column e of edge_index; a sparse
        # adjacency has no such columns (local layers read it as a whole).
        if edge_dim is not None and is_sparse(edge_index):
            layout = edge_index.layout if isinstance(edge_index, Tensor) \
                else type(edge_index).__name__
            raise TypeError(
                f"the attention's edge features need 'edge_index' as a "
                f"[2, E] tensor whose column e joins the two leaves of "
                f"edge_attr[e], got a sparse adjacency ({layout}); pass the "
                f"edge_index [2, E] in the order of edge_attr (e.g. from "
                f"torch_geometric.utils.to_edge_index), or build the layer "
                f"without edge_dim in attn_kwargs")
        if edge_dim is not None and not torch.compiler.is_compiling():
            # (reads values: under torch.compile the attention's own check,
            # which runs eagerly, refuses them after the local layer)
            self.attn.lin_edge.check_input(hierarchy, edge_index,
                                           kwargs['edge_attr'])
        if self.conv is None:
            unread = {key for key, value in kwargs.items() if value is not None}
            why = 'there is no local conv'
        else:
            unread = set()
            why = 'the local conv does not take edge_attr'
        if edge_dim is not None:
            unread.discard('edge_attr')
        elif kwargs.get('edge_attr') is not None and \
                not self.conv_with_edge_attr:
            unread.add('edge_attr')
        if unread:
            raise ValueError(
                f"{sorted(unread)} would be ignored: {why} and the "
                f"attention has no edge features; build the layer with a "
                f"conv that reads them or with attn_kwargs=dict(edge_dim="
                f"...), or leave them out")

    def __repr__(self) -> str:
        options = [f'conv={self.conv}', f'heads={self.heads}']
        options += self.repr_options()
        return (f'{self.__class__.__name__}({self.channels}, '
                f'{", ".join(options)})')

    def repr_options(self, attn_set: Sequence[str] = ()) -> List[str]:
        r"""``'name=value'`` of every option after :obj:`heads` that differs
        from its default, in the order of the signature, the activation and
        the norm as the modules they resolved to: the reprs of this layer
        and of models built of it.

        Args:
            attn_set (Sequence[str]): arguments of the attention that such
                a model sets itself and shows under its own names, left out
                of ``attn_kwargs``. (default: :obj:`()`)
        """
        options = []
        if self.dropout != 0.:
            options.append(f'dropout={self.dropout}')
        if repr(self.mlp[1]) != 'ReLU()':
            options.append(f'act={self.mlp[1]}')
        if self.norm3 is None or repr(self.norm3) != repr(
                normalization_resolver('batch_norm', self.channels)):
            options.append(f'norm={self.norm3}')
        attn = [option for option in self.attn.repr_options(
            root_weight=False) if option.split('=')[0] not in attn_set]
        if attn:
            options.append(f'attn_kwargs=dict({", ".join(attn)})')
        return options


def _drop_unused_norm(state_dict: Dict[str, Any], prefix: str, *args: Any):
    r"""Drops ``norm1`` from a state of a layer without a local layer
    (earlier versions had one there, which never got a gradient)."""
    for key in [k for k in state_dict if k.startswith(prefix + 'norm1.')]:
        del state_dict[key]


def _attention_kwargs(value: Optional[Mapping]) -> Dict[str, Any]:
    r"""The arguments of the attention from :obj:`attn_kwargs`, checked:
    not those HSAGPSConv sets itself, and ``root_weight`` :obj:`False`
    unless given."""
    attn_kwargs = dict(_kwargs(value, 'attn_kwargs'))
    fixed = [key for key in _FIXED_ATTN_KWARGS if key in attn_kwargs]
    if fixed:
        raise ValueError(
            f"'attn_kwargs' must not set {fixed[0]!r}: the attention "
            f"maps 'channels' to 'channels' with 'heads' concatenated "
            f"heads; set 'channels' and 'heads' of HSAGPSConv instead")
    attn_kwargs.setdefault('root_weight', False)
    if attn_kwargs.get('beta') and not attn_kwargs['root_weight']:
        # HSAConv ignores beta without its skip projection (as
        # TransformerConv does); here that default is ours, not the
        # user's.
        raise ValueError(
            "attn_kwargs=dict(beta=True) gates the attention's skip "
            "projection, which HSAGPSConv leaves out by default (the "
            "residual is its skip connection); pass "
            "attn_kwargs=dict(beta=True, root_weight=True), or leave "
            "beta out")
    return attn_kwargs


def _kwargs(value: Optional[Mapping], name: str) -> Mapping:
    r"""The keyword arguments :obj:`value` (``{}`` for :obj:`None`)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"'{name}' must be a dict of keyword arguments or "
                        f"None, got {type(value).__name__}")
    return value


def _takes(function: Callable, name: str) -> bool:
    r"""Whether :obj:`function` accepts the keyword argument :obj:`name`."""
    parameters = inspect.signature(function).parameters
    return name in parameters or any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
