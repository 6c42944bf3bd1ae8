r"""A graph transformer of GPS layers with hierarchical self-attention."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor
from torch.nn import Sequential
from torch_geometric.data import Batch
from torch_geometric.nn.conv import GCNConv, GINConv, GINEConv
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import reset
from torch_geometric.nn.pool import (global_add_pool, global_max_pool,
                                     global_mean_pool)
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import is_sparse

from hsa_geo._checks import (check_features, check_float, check_floating,
                             check_int, check_width)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.nn.hsa_gps_conv import HSAGPSConv

_LOCAL_CONVS = ('gine', 'gin', 'gcn', None)
_TASKS = ('node', 'graph')
_POOLS = {
    'mean': global_mean_pool,
    'add': global_add_pool,
    'max': global_max_pool,
}


class HSAGraphTransformer(torch.nn.Module):
    r"""A graph transformer of :obj:`num_layers`
    :class:`~hsa_geo.nn.HSAGPSConv` layers: in every layer, a local message
    passing layer on the graph's edges beside hierarchical self-attention
    over the leaves of a hierarchy (each node attends to its whole tree at
    a cost linear in the number of nodes for bounded branching), then an
    MLP, as in the `"Recipe for a General, Powerful, Scalable Graph
    Transformer" <https://arxiv.org/abs/2205.12454>`_ paper:

    .. math::
        \mathbf{x}^{(0)} &= \mathrm{Enc}(\mathbf{x}), \qquad
        \mathbf{e} = \mathrm{Enc}_E(\mathbf{e}_{in}), \\
        \mathbf{x}^{(l)} &= \mathrm{HSAGPS}_l(\mathbf{x}^{(l-1)},
            \mathbf{A}, \mathcal{T}, \mathbf{e}), \\
        \mathbf{y} &= \mathbf{W} \mathbf{x}^{(L)} \quad \text{(node task)},
        \qquad \mathbf{y}_g = \mathbf{W} \operatorname{pool}_{i \in g}
            \mathbf{x}^{(L)}_i \quad \text{(graph task)}.

    The local layer of each block is :class:`~torch_geometric.nn.conv.
    GINEConv` (``'gine'``, which reads the encoded edge features),
    :class:`~torch_geometric.nn.conv.GINConv` (``'gin'``),
    :class:`~torch_geometric.nn.conv.GCNConv` (``'gcn'``) or none
    (:obj:`None`: attention only); GIN's network is ``Linear``, the
    activation, ``Linear``. With :obj:`edge_dim`, the encoded edge features
    also enter every attention as an exact pair bias
    (``HSAConv(edge_dim=hidden_channels)``, see
    :class:`~hsa_geo.nn.EdgePairBias`). The output is the raw prediction
    (no softmax).

    Arguments are checked: a value of the wrong type raises
    :class:`TypeError`, one out of range :class:`ValueError`.

    Args:
        in_channels (int): size of each input node feature, or ``-1`` to
            infer it (with the default node encoder).
        hidden_channels (int): size of the node features inside the model.
        out_channels (int): size of each prediction.
        num_layers (int, optional): number of blocks. (default: :obj:`2`)
        heads (int, optional): attention heads; must divide
            :obj:`hidden_channels`. (default: :obj:`1`)
        dropout (float, optional): dropout of the intermediate embeddings,
            in :math:`[0, 1)`. (default: :obj:`0.`)
        attn_dropout (float, optional): dropout on the family attention
            weights, in :math:`[0, 1)`. (default: :obj:`0.`)
        local_conv (str, optional): ``'gine'``, ``'gin'``, ``'gcn'`` or
            :obj:`None`; ``'gine'`` needs :obj:`edge_dim`.
            (default: :obj:`"gin"`)
        edge_dim (int, optional): size of each input edge feature; turns
            edge features on. (default: :obj:`None`)
        task (str, optional): ``'node'`` (one prediction per node) or
            ``'graph'`` (one per graph of :obj:`batch`).
            (default: :obj:`"node"`)
        pool (str, optional): the readout of a graph task, ``'mean'``,
            ``'add'`` or ``'max'``. (default: :obj:`"mean"`)
        node_encoder (torch.nn.Module, optional): maps the input node
            features to :obj:`hidden_channels` (e.g. OGB's
            ``AtomEncoder(hidden_channels)``). (default: ``Linear(
            in_channels, hidden_channels)``)
        edge_encoder (torch.nn.Module, optional): maps the input edge
            features to :obj:`hidden_channels` (e.g. OGB's
            ``BondEncoder(hidden_channels)``); needs :obj:`edge_dim`.
            (default: ``Linear(edge_dim, hidden_channels)``)
        act (str or Callable, optional): the activation of the MLPs.
            (default: :obj:`"relu"`)
        act_kwargs (Dict[str, Any], optional): its arguments.
            (default: :obj:`None`)
        norm (str or Callable, optional): the normalization of the blocks,
            see :class:`~hsa_geo.nn.HSAGPSConv`.
            (default: :obj:`"batch_norm"`)
        norm_kwargs (Dict[str, Any], optional): its arguments.
            (default: :obj:`None`)
        attn_kwargs (Dict[str, Any], optional): further arguments of every
            :class:`~hsa_geo.nn.HSAConv` (e.g. ``geometry_bias=True``);
            not ``dropout`` or ``edge_dim``, which the model sets.
            (default: :obj:`None`)

    Shapes:
        - **input:**
          node features :math:`(N, F_{in})`, edge indices :math:`(2, E)`, a
          :class:`~hsa_geo.data.Hierarchy` over the :math:`N` nodes (or a
          :class:`~hsa_geo.data.NestedSignal` or batch of them holding
          ``.hierarchy``), edge features :math:`(E, D)` *(with
          edge_dim)*, batch vector :math:`(N)` *(optional)*
        - **output:** :math:`(N, F_{out})` for a node task,
          :math:`(B, F_{out})` for a graph task
    """
    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int = 2,
        heads: int = 1,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        local_conv: Optional[str] = 'gin',
        edge_dim: Optional[int] = None,
        task: str = 'node',
        pool: str = 'mean',
        node_encoder: Optional[torch.nn.Module] = None,
        edge_encoder: Optional[torch.nn.Module] = None,
        act: Union[str, Callable] = 'relu',
        act_kwargs: Optional[Dict[str, Any]] = None,
        norm: Optional[Union[str, Callable]] = 'batch_norm',
        norm_kwargs: Optional[Dict[str, Any]] = None,
        attn_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        self.in_channels = check_width(in_channels, 'in_channels')
        self.hidden_channels = check_int(hidden_channels, 'hidden_channels')
        self.out_channels = check_int(out_channels, 'out_channels')
        self.num_layers = check_int(num_layers, 'num_layers')
        self.heads = check_int(heads, 'heads')
        if hidden_channels % heads != 0:
            raise ValueError(f"'heads' ({heads}) must divide "
                             f"'hidden_channels' ({hidden_channels}): each "
                             f"head gets hidden_channels // heads of them")
        self.local_conv = _check_choice(local_conv, 'local_conv', _LOCAL_CONVS)
        self.edge_dim = None if edge_dim is None else check_int(
            edge_dim, 'edge_dim')
        self.task = _check_choice(task, 'task', _TASKS)
        self.pool = _check_choice(pool, 'pool', tuple(_POOLS))
        _check_encoders(node_encoder, edge_encoder, self.edge_dim)
        if local_conv == 'gine' and edge_dim is None:
            raise ValueError("local_conv='gine' reads edge features: give "
                             "edge_dim (and edge_attr to forward), or use "
                             "local_conv='gin'")
        attn_kwargs = _attn_kwargs(attn_kwargs, attn_dropout,
                                   hidden_channels, self.edge_dim)

        self.node_encoder = node_encoder if node_encoder is not None else \
            Linear(in_channels, hidden_channels)
        if edge_dim is not None and edge_encoder is None:
            edge_encoder = Linear(edge_dim, hidden_channels)
        self.edge_encoder = edge_encoder

        self.convs = torch.nn.ModuleList()
        for _ in range(num_layers):
            conv = HSAGPSConv(
                hidden_channels, self._local_conv(act, act_kwargs),
                heads=heads, dropout=dropout, act=act, act_kwargs=act_kwargs,
                norm=norm, norm_kwargs=norm_kwargs, attn_kwargs=attn_kwargs)
            self.convs.append(conv)

        self.head = Linear(hidden_channels, out_channels)
        self.reset_parameters()

    def _local_conv(self, act: Union[str, Callable],
                    act_kwargs: Optional[Dict[str, Any]]
                    ) -> Optional[torch.nn.Module]:
        r"""A fresh local message passing layer for one block."""
        channels = self.hidden_channels
        if self.local_conv == 'gcn':
            return GCNConv(channels, channels)
        if self.local_conv in ('gin', 'gine'):
            nn = Sequential(
                Linear(channels, channels),
                activation_resolver(act, **(act_kwargs or {})),
                Linear(channels, channels),
            )
            return GINEConv(nn) if self.local_conv == 'gine' else GINConv(nn)
        return None

    def reset_parameters(self):
        r"""Resets all learnable parameters of the module."""
        reset(self.node_encoder)
        if self.edge_encoder is not None:
            reset(self.edge_encoder)
        for conv in self.convs:
            conv.reset_parameters()
        self.head.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        hierarchy: Hierarchy,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
    ) -> Tensor:
        r"""Runs the model.

        Args:
            x (Tensor): node features ``[N, F_in]`` (or what
                :obj:`node_encoder` takes).
            edge_index (Tensor): edges ``[2, E]``.
            hierarchy (Hierarchy): the forest over the ``N`` nodes (a
                :class:`~hsa_geo.data.NestedSignal` or batch is accepted).
            edge_attr (Tensor, optional): edge features ``[E, edge_dim]``,
                required with :obj:`edge_dim` and refused without it.
                (default: :obj:`None`)
            batch (Tensor, optional): the graph of every node ``[N]``, for
                graph-aware norms and the graph readout; :obj:`None`: the
                ``batch`` of :obj:`hierarchy` where it is a collated
                :class:`~torch_geometric.data.Batch`, else one graph; for
                ``task='graph'`` a plain :class:`Hierarchy` of several trees
                then raises :class:`ValueError` (it does not say which
                trees are one graph). (default: :obj:`None`)

        With the default encoders (``Linear``), :obj:`x` and
        :obj:`edge_attr` are checked before they are encoded, as
        :meth:`HSAConv.check_input <hsa_geo.nn.HSAConv.check_input>` checks
        its input: :class:`TypeError` unless floating point tensors of the
        model's dtype, :class:`ValueError` unless ``[N, in_channels]`` and
        ``[E, edge_dim]``.
        """
        if isinstance(self.node_encoder, Linear):
            _check_linear_input(x, 'x', self.node_encoder, 'in_channels',
                                'node', 'N')
        kwargs = self._encode_edges(edge_index, edge_attr)

        if batch is None and isinstance(hierarchy, Batch):
            # (not one prediction for the whole batch)
            batch = hierarchy.batch
        if batch is None and self.task == 'graph' and \
                isinstance(hierarchy, Hierarchy) and hierarchy.num_trees > 1:
            # A plain Hierarchy does not say which trees form one graph; a
            # collated batch's (batch.hierarchy) would be pooled into one
            # prediction for all its graphs.
            raise ValueError(
                f"task='graph' pools one prediction per graph of 'batch', "
                f"but 'batch' is None and 'hierarchy' is a plain Hierarchy "
                f"of {hierarchy.num_trees} trees (that of a collated "
                f"mini-batch?), so all {hierarchy.num_leaves} nodes would "
                f"be pooled into one prediction; pass batch=data.batch (or "
                f"the collated NestedSignal itself as 'hierarchy'), or "
                f"batch=torch.zeros(N, dtype=torch.long) if the trees are "
                f"one graph")
        x = self.node_encoder(x)
        for conv in self.convs:
            x = conv(x, edge_index, hierarchy, batch, **kwargs)
        if self.task == 'graph':
            x = _POOLS[self.pool](x, batch)
        return self.head(x)

    def _encode_edges(self, edge_index: Tensor, edge_attr: Optional[Tensor]
                      ) -> Dict[str, Tensor]:
        r"""The encoded edge features for the blocks (none without
        :obj:`edge_dim`), checked first."""
        if self.edge_encoder is None:
            if edge_attr is not None:
                raise ValueError("the model has no edge features, so "
                                 "'edge_attr' would be ignored; build it with "
                                 "edge_dim=D to use them, or leave them out")
            return {}
        if edge_attr is None:
            raise ValueError(f"'edge_attr' is missing: the model has "
                             f"edge_dim={self.edge_dim}, so forward "
                             f"needs edge_attr [E, {self.edge_dim}]")
        if isinstance(self.edge_encoder, Linear):
            _check_linear_input(edge_attr, 'edge_attr', self.edge_encoder,
                                'edge_dim', 'edge', 'E')
        # (A sparse adjacency has no columns; the blocks refuse it with
        # edge features.)
        if isinstance(edge_attr, Tensor) and edge_attr.dim() > 0 and \
                isinstance(edge_index, Tensor) and edge_index.dim() == 2 \
                and not is_sparse(edge_index) and \
                edge_attr.size(0) != edge_index.size(1):
            raise ValueError(
                f"'edge_attr' has {edge_attr.size(0)} rows but 'edge_index' "
                f"has {edge_index.size(1)} edges; row e must hold the "
                f"features of edge e (column e of edge_index)")
        return {'edge_attr': self.edge_encoder(edge_attr)}

    def __repr__(self) -> str:
        # Then the options of the blocks that differ from their defaults,
        # as HSAGPSConv shows them, but for those the model sets itself.
        block = self.convs[0]
        options = [f'num_layers={self.num_layers}', f'heads={self.heads}']
        if block.attn.dropout != 0.:
            options.append(f'attn_dropout={block.attn.dropout}')
        options.append(f'local_conv={self.local_conv!r}')
        if self.edge_dim is not None:
            options.append(f'edge_dim={self.edge_dim}')
        options.append(f'task={self.task!r}')
        if self.task == 'graph':
            options.append(f'pool={self.pool!r}')
        options += block.repr_options(attn_set=('dropout', 'edge_dim'))
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.hidden_channels}, {self.out_channels}, '
                f'{", ".join(options)})')


def _check_choice(value: Any, name: str, choices: tuple) -> Any:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"'{name}' must be one of {choices}, got {value!r} "
                        f"({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"'{name}' must be one of {choices}, got {value!r}")
    return value


def _check_linear_input(value: Any, name: str, encoder: Linear, width: str,
                        row: str, rows: str):
    r"""Checks that :obj:`value` is ``[rows, F]`` features that fit the
    ``Linear`` :obj:`encoder` (other encoders take what they take, e.g.
    OGB's integer ids), so that bad input fails here with a message
    rather than inside the product."""
    check_floating(value, name)
    if value.dim() != 2:
        raise ValueError(f"'{name}' must be a [{rows}, F] tensor of {row} "
                         f"features, got shape {tuple(value.shape)}")
    check_features(value, name, encoder.weight, width, row=row, rows=rows)


def _check_encoders(node_encoder: Any, edge_encoder: Any,
                    edge_dim: Optional[int]):
    for name, encoder in (('node_encoder', node_encoder),
                          ('edge_encoder', edge_encoder)):
        if encoder is not None and not isinstance(encoder, torch.nn.Module):
            raise TypeError(f"'{name}' must be a torch.nn.Module or None, "
                            f"got {type(encoder).__name__}")
    if edge_encoder is not None and edge_dim is None:
        raise ValueError("'edge_encoder' is given without 'edge_dim'; give "
                         "edge_dim (the size of the input edge features) "
                         "to turn edge features on")


def _attn_kwargs(attn_kwargs: Any, attn_dropout: Any, hidden_channels: int,
                 edge_dim: Optional[int]) -> Dict[str, Any]:
    r"""The arguments of every block's :class:`~hsa_geo.nn.HSAConv`."""
    if attn_kwargs is None:
        attn_kwargs = {}
    if not isinstance(attn_kwargs, Mapping):
        raise TypeError(f"'attn_kwargs' must be a dict of keyword arguments "
                        f"or None, got {type(attn_kwargs).__name__}")
    for key, instead in (('dropout', 'attn_dropout'),
                         ('edge_dim', 'edge_dim')):
        if key in attn_kwargs:
            raise ValueError(f"'attn_kwargs' must not set {key!r}; set "
                             f"{instead!r} of the model instead")
    attn_kwargs = dict(attn_kwargs)
    attn_kwargs['dropout'] = check_float(attn_dropout, 'attn_dropout', 0.0,
                                         1.0, high_open=True)
    if edge_dim is not None:
        # Encoded edge features: one vector of hidden_channels per edge.
        attn_kwargs['edge_dim'] = hidden_channels
    return attn_kwargs
