r"""The pre-norm transformer block built on :class:`HSAConv`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.resolver import activation_resolver

from hsa_geo._checks import check_float, check_heads, check_int
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.nn.hsa_conv import HSAConv


class HSATransformerLayer(torch.nn.Module):
    r"""A pre-norm transformer block with hierarchical self-attention:

    .. math::
        \mathbf{h} &= \mathbf{x} + \mathrm{Dropout}(\mathbf{W}_o\,
            \mathrm{HSA}(\mathrm{LN}(\mathbf{x}))), \\
        \mathbf{x}^{\prime} &= \mathbf{h} + \mathrm{Dropout}(
            \mathrm{MLP}(\mathrm{LN}(\mathbf{h}))),

    where :math:`\mathrm{HSA}` is :class:`HSAConv` with :obj:`heads` heads of
    ``channels // heads`` channels each, concatenated, without its own skip
    connection (the block's residual is the skip).

    Arguments are checked: a value of the wrong type raises
    :class:`TypeError`, one out of range :class:`ValueError`.

    Args:
        channels (int): size of each leaf's features (input and output),
            positive.
        heads (int, optional): attention heads; must divide :obj:`channels`.
            (default: :obj:`1`)
        dropout (float, optional): dropout after attention and in the MLP,
            in :math:`[0, 1)`. (default: :obj:`0.`)
        attn_dropout (float, optional): dropout on the family attention
            weights, in :math:`[0, 1)`. (default: :obj:`0.`)
        ff_channels (int, optional): hidden size of the MLP, positive
            (``0`` is rejected, not read as the default).
            (default: :obj:`4 * channels`)
        act (str or torch.nn.Module, optional): MLP activation, the name of
            a :mod:`torch.nn` activation module or a module.
            (default: :obj:`"gelu"`)
        act_kwargs (dict, optional): arguments of the activation (only with
            a name).
        edge_dim (int, optional): size of leaf-edge features, which then
            enter the attention as an exact pair bias
            (:class:`~hsa_geo.nn.EdgePairBias`). (default: :obj:`None`)
        geometry_bias (bool, optional): add a learnable bias of the
            siblings' relative position and level to the family logits
            (:class:`~hsa_geo.nn.FamilyGeometryBias`). (default:
            :obj:`False`)
        query_resolved (bool, optional): query-resolved HSA, see
            :class:`HSAConv`. (default: :obj:`False`)

    Shapes:
        - **input:** leaf features :math:`(N, C)`, a
          :class:`~hsa_geo.data.Hierarchy` over :math:`N` leaves
        - **output:** :math:`(N, C)`
    """
    def __init__(
        self,
        channels: int,
        heads: int = 1,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ff_channels: Optional[int] = None,
        act: Union[str, torch.nn.Module] = 'gelu',
        act_kwargs: Optional[Dict[str, Any]] = None,
        edge_dim: Optional[int] = None,
        geometry_bias: bool = False,
        query_resolved: bool = False,
    ):
        super().__init__()
        channels, heads = check_heads(channels, heads)
        dropout = check_float(dropout, 'dropout', 0.0, 1.0, high_open=True)
        attn_dropout = check_float(attn_dropout, 'attn_dropout', 0.0, 1.0,
                                   high_open=True)
        # None is the default; 0 must not fall back to it silently.
        ff_channels = 4 * channels if ff_channels is None else check_int(
            ff_channels, 'ff_channels')
        self.channels = channels
        self.heads = heads
        self.dropout = dropout
        self.norm1 = torch.nn.LayerNorm(channels)
        self.attn = HSAConv(channels, channels // heads, heads=heads,
                            dropout=attn_dropout, root_weight=False,
                            edge_dim=edge_dim, geometry_bias=geometry_bias,
                            query_resolved=query_resolved)
        self.lin_out = torch.nn.Linear(channels, channels)
        self.norm2 = torch.nn.LayerNorm(channels)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(channels, ff_channels),
            _activation(act, act_kwargs),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(ff_channels, channels),
        )
        self.reset_parameters()

    def reset_parameters(self):
        self.norm1.reset_parameters()
        self.attn.reset_parameters()
        self.lin_out.reset_parameters()
        self.norm2.reset_parameters()
        for module in self.mlp:
            if hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    def forward(self, x: Tensor, hierarchy: Hierarchy,
                edge_index: Optional[Tensor] = None,
                edge_attr: Optional[Tensor] = None) -> Tensor:
        r"""Runs the block; :obj:`edge_index` and :obj:`edge_attr` are the
        leaf edges and their features when the block has an
        :obj:`edge_dim` (see :class:`HSAConv`)."""
        # Check before the layer norm, which would fail on bad x with a
        # message about its own shapes.
        hierarchy = self.attn.check_input(x, hierarchy)
        h = self.lin_out(self.attn(self.norm1(x), hierarchy, edge_index,
                                   edge_attr))
        x = x + F.dropout(h, p=self.dropout, training=self.training)
        h = self.mlp(self.norm2(x))
        return x + F.dropout(h, p=self.dropout, training=self.training)

    def __repr__(self) -> str:
        # The options that differ from their defaults, in the order of the
        # signature; the activation as the module it resolved to.
        attn, ff_channels = self.attn, self.mlp[0].out_features
        options = [f'heads={self.heads}']
        if self.dropout != 0.:
            options.append(f'dropout={self.dropout}')
        if attn.dropout != 0.:
            options.append(f'attn_dropout={attn.dropout}')
        if ff_channels != 4 * self.channels:
            options.append(f'ff_channels={ff_channels}')
        if repr(self.mlp[1]) != repr(torch.nn.GELU()):
            options.append(f'act={self.mlp[1]}')
        if attn.edge_dim is not None:
            options.append(f'edge_dim={attn.edge_dim}')
        if attn.geometry_bias is not None:
            options.append('geometry_bias=True')
        if attn.query_resolved:
            options.append('query_resolved=True')
        return (f'{self.__class__.__name__}({self.channels}, '
                f'{", ".join(options)})')


def _activation(act: Union[str, torch.nn.Module],
                act_kwargs: Optional[Dict[str, Any]]) -> torch.nn.Module:
    r"""The activation module named by :obj:`act` (or :obj:`act` itself)."""
    if act_kwargs is not None and not isinstance(act_kwargs, Mapping):
        raise TypeError(f"'act_kwargs' must be a dict of arguments of the "
                        f"activation or None, got {type(act_kwargs).__name__}")
    if isinstance(act, torch.nn.Module):
        if act_kwargs:
            raise ValueError("'act_kwargs' only apply when 'act' is a name; "
                             "pass them to the module you built instead")
        return act
    if not isinstance(act, str):
        raise TypeError(f"'act' must be the name of an activation (e.g. "
                        f"'gelu') or a torch.nn.Module, got "
                        f"{type(act).__name__}")
    try:
        module = activation_resolver(act, **(act_kwargs or {}))
    except ValueError:
        module = None
    except TypeError as error:
        raise TypeError(f"'act_kwargs' do not fit act={act!r}: "
                        f"{error}") from None
    # The resolver also returns plain functions (e.g. 'swish').
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"'act'={act!r} is not the name of a torch.nn "
                         f"activation module (e.g. 'gelu', 'relu', 'silu')")
    return module
