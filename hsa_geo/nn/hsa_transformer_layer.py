r"""The pre-norm transformer block built on :class:`HSAConv`."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.resolver import activation_resolver

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

    Args:
        channels (int): size of each leaf's features (input and output).
        heads (int, optional): attention heads; must divide :obj:`channels`.
            (default: :obj:`1`)
        dropout (float, optional): dropout after attention and in the MLP.
            (default: :obj:`0.`)
        attn_dropout (float, optional): dropout on the family attention
            weights. (default: :obj:`0.`)
        ff_channels (int, optional): hidden size of the MLP.
            (default: :obj:`4 * channels`)
        act (str, optional): MLP activation. (default: :obj:`"gelu"`)
        act_kwargs (dict, optional): arguments of the activation.

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
        act: str = 'gelu',
        act_kwargs: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if heads < 1 or channels % heads != 0:
            raise ValueError(f"'heads' ({heads}) must be positive and divide "
                             f"'channels' ({channels})")
        self.channels = channels
        self.heads = heads
        self.dropout = dropout
        ff_channels = ff_channels or 4 * channels
        self.norm1 = torch.nn.LayerNorm(channels)
        self.attn = HSAConv(channels, channels // heads, heads=heads,
                            dropout=attn_dropout, root_weight=False)
        self.lin_out = torch.nn.Linear(channels, channels)
        self.norm2 = torch.nn.LayerNorm(channels)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(channels, ff_channels),
            activation_resolver(act, **(act_kwargs or {})),
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

    def forward(self, x: Tensor, hierarchy: Hierarchy) -> Tensor:
        h = self.lin_out(self.attn(self.norm1(x), hierarchy))
        x = x + F.dropout(h, p=self.dropout, training=self.training)
        h = self.mlp(self.norm2(x))
        return x + F.dropout(h, p=self.dropout, training=self.training)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'heads={self.heads})')
