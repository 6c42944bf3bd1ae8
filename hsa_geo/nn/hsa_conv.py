r"""The hierarchical self-attention layer."""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear

from hsa_geo._checks import (check_bool, check_device, check_features,
                             check_flags, check_float, check_floating,
                             check_int, check_width)
from hsa_geo.data.hierarchy import Hierarchy
from hsa_geo.functional.dynamic_program import (FamilyWeights,
                                                hierarchical_attention)
from hsa_geo.functional.query_resolved_attention import \
    query_resolved_attention
from hsa_geo.functional.sparse_family_attention import scatter_logsumexp
from hsa_geo.nn.edge_pair_bias import EdgePairBias
from hsa_geo.nn.family_geometry_bias import FamilyGeometryBias


class HSAConv(MessagePassing):
    r"""Hierarchical self-attention over the leaves of a nested signal
    (Amizadeh et al., *Hierarchical Self-Attention: Generalizing Neural
    Attention Mechanics to Multi-Scale Problems*, NeurIPS 2025), in the
    manner of :class:`~torch_geometric.nn.conv.TransformerConv`:

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{W}_1 \mathbf{x}_i +
        \sum_{j} Q_{i,j} \mathbf{W}_2 \mathbf{x}_{j},

    where :math:`Q` is the HSA attention matrix of the queries
    :math:`\mathbf{W}_3 \mathbf{x}` and keys :math:`\mathbf{W}_4 \mathbf{x}`
    over the hierarchy: the attention closest in KL divergence to softmax
    attention among those in which a sub-signal attends to each sibling
    sub-signal as a whole. On a flat hierarchy it is softmax attention over
    all leaves of a tree. :math:`Q` is never built: messages run up the
    cluster tree (mean queries, keys, values and log-partitions, scatter-sum
    per level), between siblings (one softmax per family) and down again
    (masses and contexts); cost :math:`O(T H C + P H C)` for :math:`T` tree
    nodes and :math:`P` sibling pairs, linear in the number of leaves for
    bounded branching.

    These passes are the layer's message passing, in PyG's two forms. By
    default :meth:`propagate` runs them fused
    (:meth:`message_and_aggregate`: the kernels of
    :func:`~hsa_geo.functional.hierarchical_attention`, one batched product
    per family width). With :obj:`fuse` set to :obj:`False`, in explain
    mode, or when a message, aggregate or edge-update hook is registered,
    it runs them one by one over the hierarchy's own edges, as the
    mathematics reads (docs/math.md, sections 3.3 and 3.7): :meth:`message`
    sends a weighted row along an edge and :meth:`aggregate` sums them, child to
    parent for the means and log-partitions, sibling to sibling for the
    family attention (whose logits are :meth:`edge_update`), parent to child
    for the masses and contexts. Both give the same output (tested to
    :math:`10^{-10}` in float64); the passes cost one Python step per level
    and are meant for reading, hooks and explainers, not speed.

    With :obj:`beta`, the skip connection is gated as in
    :class:`~torch_geometric.nn.conv.TransformerConv`. A family graph on the
    hierarchy (:attr:`~hsa_geo.data.Hierarchy.family_edge_index`) restricts
    each family's attention to its edges. With :obj:`geometry_bias`, a
    learnable :class:`~hsa_geo.nn.FamilyGeometryBias` of the siblings'
    relative position and level is added to the family logits. With
    :obj:`edge_dim`, features of edges between leaves enter as a learned
    :class:`~hsa_geo.nn.EdgePairBias`: for two sibling leaves exactly the
    projected feature of their edge, above the leaves the mean over the
    edges between two sibling subtrees (a bias constant on each block, so
    HSA stays exact, docs/math.md section 6.2); both biases add up.

    Arguments are checked: a value of the wrong type (``heads=2.5``,
    ``heads=True``, ``dropout='0.1'``, ``concat=1``) raises
    :class:`TypeError`, one out of range (``in_channels=0``, a NaN
    :obj:`dropout`) :class:`ValueError`.

    Args:
        in_channels (int): size of each input sample (positive), or ``-1``
            to infer it lazily.
        out_channels (int): size of each output sample per head (positive).
        heads (int, optional): number of attention heads. (default: :obj:`1`)
        concat (bool, optional): concatenate the heads (else average them).
            (default: :obj:`True`)
        beta (bool, optional): gated skip connection; it gates the skip
            projection, so without :obj:`root_weight` it is ignored, as in
            :class:`~torch_geometric.nn.conv.TransformerConv`.
            (default: :obj:`False`)
        dropout (float, optional): dropout on the family attention weights
            in training, in :math:`[0, 1)`. (default: :obj:`0.`)
        bias (bool, optional): learn additive biases. (default: :obj:`True`)
        root_weight (bool, optional): add the transformed root features
            :math:`\mathbf{W}_1 \mathbf{x}_i`. (default: :obj:`True`)
        geometry_bias (bool, optional): learn a bias of the relative
            position of siblings and of the level. (default: :obj:`False`)
        max_branching (int, optional): the largest family whose relative
            positions each have their own geometry bias, at least ``2``;
            wider families share log-spaced buckets, see
            :class:`~hsa_geo.nn.FamilyGeometryBias`. Checked even without
            :obj:`geometry_bias`. (default: :obj:`16`)
        num_levels (int, optional): levels with their own geometry bias,
            at least ``1``. (default: :obj:`8`)
        edge_dim (int, optional): features per leaf edge, at least ``1``;
            :meth:`forward` then needs :obj:`edge_index` and
            :obj:`edge_attr`. :obj:`None`: no edge features.
            (default: :obj:`None`)
        query_resolved (bool, optional): attend with query-resolved HSA
            (:func:`~hsa_geo.functional.query_resolved_attention`): every
            query leaf weighs the sibling subtrees along its path itself,
            never further from softmax than HSA, at
            :math:`O(N \cdot \mathrm{depth} \cdot b)` cost; it takes no
            geometry bias, edge features or returned weights, and runs the
            same way whether fused or not. (default: :obj:`False`)
        **kwargs (optional): arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** leaf features :math:`(N, F_{in})`, a
          :class:`~hsa_geo.data.Hierarchy` with :math:`N` leaves (or a
          :class:`~hsa_geo.data.NestedSignal`, whose ``.hierarchy`` is used);
          with :obj:`edge_dim`, leaf edges ``[2, E]`` and their features
          ``[E, edge_dim]``
        - **output:** :math:`(N, H * F_{out})` or :math:`(N, F_{out})` if
          :obj:`concat=False`; with :obj:`return_attention_weights` set
          (:obj:`True` or :obj:`False`) also
          ``(pair_index [2, P], alpha [P, H])``, the sibling pairs ``(a, b)``
          (tree node ids) and :math:`\pi_F(a \to b)`, normalised over
          ``a = pair_index[0]``, see :meth:`forward`.
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        beta: bool = False,
        dropout: float = 0.,
        bias: bool = True,
        root_weight: bool = True,
        geometry_bias: bool = False,
        max_branching: int = 16,
        num_levels: int = 8,
        edge_dim: Optional[int] = None,
        query_resolved: bool = False,
        **kwargs,
    ):
        _check_message_passing_kwargs(kwargs)
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)
        (in_channels, out_channels, heads, dropout, max_branching, num_levels,
         edge_dim) = _checked_arguments(
            in_channels=in_channels, out_channels=out_channels, heads=heads,
            concat=concat, beta=beta, dropout=dropout, bias=bias,
            root_weight=root_weight, geometry_bias=geometry_bias,
            max_branching=max_branching, num_levels=num_levels,
            edge_dim=edge_dim, query_resolved=query_resolved)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.beta = beta and root_weight
        self.dropout = dropout
        self.root_weight = root_weight
        self.max_branching = max_branching
        self.num_levels = num_levels
        self.edge_dim = edge_dim
        self.query_resolved = query_resolved

        # One product each, as TransformerConv: the attention reads rows of
        # q, k, v, which a strided third of one fused product would make it
        # copy (and its backward stack again).
        width = heads * out_channels
        self.lin_query = Linear(in_channels, width, bias=bias)
        self.lin_key = Linear(in_channels, width, bias=bias)
        self.lin_value = Linear(in_channels, width, bias=bias)
        out_size = heads * out_channels if concat else out_channels
        if root_weight:
            self.lin_skip = Linear(in_channels, out_size, bias=bias)
        else:
            self.register_parameter('lin_skip', None)
        if self.beta:
            self.lin_beta = Linear(3 * out_size, 1, bias=False)
        else:
            self.register_parameter('lin_beta', None)
        self.geometry_bias = FamilyGeometryBias(
            heads, max_branching, num_levels) if geometry_bias else None
        self.lin_edge = EdgePairBias(edge_dim, heads) \
            if edge_dim is not None else None
        self._weights: Optional[FamilyWeights] = None  # set by the kernels
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin_query.reset_parameters()
        self.lin_key.reset_parameters()
        self.lin_value.reset_parameters()
        if self.lin_skip is not None:
            self.lin_skip.reset_parameters()
        if self.lin_beta is not None:
            self.lin_beta.reset_parameters()
        if self.geometry_bias is not None:
            self.geometry_bias.reset_parameters()
        if self.lin_edge is not None:
            self.lin_edge.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        split_fused_projection(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        x: Tensor,
        hierarchy: Hierarchy,
        edge_index: Optional[Tensor] = None,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
    ) -> Union[Tensor, Tuple[Tensor, FamilyWeights]]:
        r"""Runs the layer.

        Args:
            x (Tensor): leaf features ``[N, F_in]``.
            hierarchy (Hierarchy): the forest over the ``N`` leaves (a
                :class:`~hsa_geo.data.NestedSignal` is accepted too).
            edge_index (Tensor, optional): edges between leaves ``[2, E]``,
                required with :obj:`edge_dim` and refused without it; edges
                across trees and self-loops are ignored, see
                :class:`~hsa_geo.nn.EdgePairBias`. (default: :obj:`None`)
            edge_attr (Tensor, optional): edge features ``[E, edge_dim]``,
                as :obj:`edge_index`. (default: :obj:`None`)
            return_attention_weights (bool, optional): will additionally
                return the tuple ``(pair_index, alpha)`` whenever it is set,
                regardless of its value (:obj:`True` or :obj:`False`):
                the sibling pairs ``(a, b)`` ``[2, P]`` of tree node ids
                (self pairs ``(a, a)`` included) and their family attention
                weights :math:`\pi_F(a \to b)` ``[P, H]``, how much the
                attending node ``a = pair_index[0]`` attends to ``b =
                pair_index[1]``; they sum to one over the pairs of each
                ``pair_index[0]``. This is the reverse of
                :class:`~torch_geometric.nn.conv.TransformerConv`, whose
                weights sum to one over the targets ``edge_index[1]``;
                ``pair_index.flip(0)`` gives its orientation. The tuple is
                a :class:`~hsa_geo.functional.FamilyWeights` ``(index,
                weight)``, which
                :func:`~hsa_geo.functional.leaf_attention_weights` takes.
                :obj:`None`: the output only. (default: :obj:`None`)

        Raises :class:`TypeError` for an :obj:`x` that is not a floating
        point tensor of the layer's dtype or a :obj:`hierarchy` that is
        neither a :class:`~hsa_geo.data.Hierarchy` nor holds one, and
        :class:`ValueError` for an :obj:`x` that is not ``[N, F_in]`` with
        :math:`N` the number of leaves, see :meth:`check_input`; edges
        that are missing, not wanted or malformed raise as well.
        """
        # Set at all (True or False) means: return the weights.
        with_weights = return_attention_weights is not None
        if with_weights:
            check_bool(return_attention_weights, 'return_attention_weights')
        out, weights = self._attend(x, hierarchy, edge_index, edge_attr,
                                    with_weights)
        num_leaves, heads, channels = x.size(0), self.heads, self.out_channels

        if self.concat:
            out = out.reshape(num_leaves, heads * channels)
        else:
            out = out.mean(dim=1)

        if self.lin_skip is not None:
            x_r = self.lin_skip(x)
            if self.lin_beta is not None:
                beta = self.lin_beta(torch.cat([out, x_r, out - x_r], dim=-1))
                beta = beta.sigmoid()
                out = beta * x_r + (1 - beta) * out
            else:  # into x_r, which no backward saves: no fresh [N, F]
                out = x_r.add_(out)

        if weights is not None:
            return out, weights
        return out

    # torch.compile traces the projections around it and runs this part as
    # it is: its loops follow the tree, and tracing them would specialise
    # (and recompile) on every new hierarchy.
    @torch.compiler.disable
    def _attend(self, x: Tensor, hierarchy: Hierarchy,
                edge_index: Optional[Tensor], edge_attr: Optional[Tensor],
                with_weights: bool
                ) -> Tuple[Tensor, Optional[FamilyWeights]]:
        r"""The attention part of :meth:`forward`: ``[N, H, C]`` and the
        family weights when asked for."""
        hierarchy = self.check_input(x, hierarchy)
        self._check_edges(edge_index, edge_attr)
        num_leaves, heads, channels = x.size(0), self.heads, self.out_channels
        q, k, v = (lin(x).view(num_leaves, heads, channels) for lin in
                   (self.lin_query, self.lin_key, self.lin_value))
        if self.query_resolved:
            if with_weights:
                raise ValueError(
                    "query_resolved=True has no family weights to return "
                    "(every query weighs its blocks itself); leave "
                    "return_attention_weights unset")
            return query_resolved_attention(
                q, k, v, hierarchy, dropout_p=self.dropout,
                training=self.training), None
        pair_bias = self._pair_bias(hierarchy, edge_index, edge_attr)
        if self.fuses:
            # PyG's rule: a sparse adjacency selects message_and_aggregate.
            out = self.propagate(hierarchy.adjacency, q=q, k=k, v=v,
                                 hierarchy=hierarchy, pair_bias=pair_bias,
                                 with_weights=with_weights)
            weights, self._weights = self._weights, None
            return out, weights
        out, weights = self._attend_by_message_passing(q, k, v, hierarchy,
                                                       pair_bias)
        return out, weights if with_weights else None

    def _check_edges(self, edge_index: Optional[Tensor],
                     edge_attr: Optional[Tensor]):
        r"""Checks that the leaf edges are given exactly when the layer has
        :obj:`edge_dim` (their contents are :class:`EdgePairBias`'s to
        check)."""
        if self.lin_edge is None:
            if edge_index is not None or edge_attr is not None:
                # query_resolved=True cannot take edge_dim at all.
                fix = ("query-resolved HSA takes no edge features; use the "
                       "family HSA (query_resolved=False) with edge_dim=F_e"
                       if self.query_resolved else
                       "build it with edge_dim=F_e to use them")
                raise ValueError(
                    f"this HSAConv has no edge features, so 'edge_index' and "
                    f"'edge_attr' would be ignored; {fix}, or leave them out")
        else:
            for name, value in (('edge_index', edge_index),
                                ('edge_attr', edge_attr)):
                if value is None:
                    raise ValueError(
                        f"'{name}' is missing: this HSAConv has "
                        f"edge_dim={self.edge_dim}, so forward needs "
                        f"edge_index [2, E] and edge_attr "
                        f"[E, {self.edge_dim}] (E may be 0)")

    def _pair_bias(self, hierarchy: Hierarchy, edge_index: Optional[Tensor],
                   edge_attr: Optional[Tensor]) -> Optional[Tensor]:
        r"""The geometry bias plus the edge bias (either may be absent)."""
        biases = []
        if self.geometry_bias is not None:
            biases.append(self.geometry_bias(hierarchy))
        if self.lin_edge is not None:
            biases.append(self.lin_edge(hierarchy, edge_index, edge_attr))
        return sum(biases[1:], biases[0]) if biases else None

    # The dynamic program as message passing ###############################

    def propagate(self, edge_index: Tensor, size=None, **kwargs) -> Tensor:
        r"""As :meth:`MessagePassing.propagate
        <torch_geometric.nn.conv.MessagePassing.propagate>`. Declared here
        because the passes call it with different arguments (the fused
        kernels with ``q, k, v``, the passes with ``x`` and ``weight``),
        which PyG's generated single-signature version does not allow."""
        return super().propagate(edge_index, size=size, **kwargs)

    @property
    def fuses(self) -> bool:
        r"""Whether :meth:`forward` runs the fused kernels of
        :func:`~hsa_geo.functional.hierarchical_attention` (through
        :meth:`message_and_aggregate`) rather than the passes of
        :meth:`message`, :meth:`edge_update` and :meth:`aggregate`. As in
        PyG, :attr:`fuse` (default :obj:`True`) and :attr:`explain` decide;
        a registered message, aggregate or edge-update hook also selects
        the passes, so that it sees the messages it asked for. Both compute
        the same attention (docs/math.md, section 3.3)."""
        hooks = (self._message_forward_pre_hooks, self._message_forward_hooks,
                 self._aggregate_forward_pre_hooks,
                 self._aggregate_forward_hooks,
                 self._edge_update_forward_pre_hooks,
                 self._edge_update_forward_hooks)
        return bool(self.fuse) and not self.explain and \
            not any(len(h) > 0 for h in hooks)

    def message_and_aggregate(self, adj_t: Tensor, q: Tensor, k: Tensor,
                              v: Tensor, hierarchy: Hierarchy,
                              pair_bias: Optional[Tensor],
                              with_weights: bool) -> Tensor:
        r"""All passes at once: the fused dynamic program over the cluster
        tree :obj:`adj_t` (parent x child), which reads the same tree from
        :attr:`hierarchy.layout <hsa_geo.data.Hierarchy.layout>`."""
        result = hierarchical_attention(
            q, k, v, hierarchy, dropout_p=self.dropout,
            training=self.training, return_weights=with_weights,
            pair_bias=pair_bias)
        if with_weights:
            result, self._weights = result
        return result

    def message(self, x_j: Tensor, weight: Tensor) -> Tensor:
        r"""Every pass sends its source rows scaled by a weight: a share
        :math:`|a| / |F|` of a child's mean up to its parent, the family
        weight :math:`\pi_F(a \to b)` of a sibling's mean value, or ``1``
        down to a child."""
        return weight.view(weight.shape + (1, ) *
                           (x_j.dim() - weight.dim())) * x_j

    def edge_update(self, q_i: Tensor, k_j: Tensor, log_size_j: Tensor,
                    g_i: Tensor, bias: Optional[Tensor], is_self: Tensor,
                    allowed: Tensor) -> Tensor:
        r"""The logit of sibling pair ``(j -> i)``: :math:`l_{ij} =
        \mathrm{scale} \langle \bar q_i, \bar k_j \rangle + \log |j| +
        \beta_{ij}`, the log-partition :math:`g_i` on self pairs, and
        :math:`-\infty` where a family graph forbids the pair."""
        logit = (q_i * k_j).sum(-1) * self.out_channels ** -0.5 + \
            log_size_j.unsqueeze(-1)
        if bias is not None:
            logit = logit + bias
        logit = torch.where(is_self.unsqueeze(-1), g_i, logit)
        return logit.masked_fill(~allowed.unsqueeze(-1), float('-inf'))

    def explain_message(self, inputs: Tensor, dim_size: Optional[int]
                        ) -> Tensor:
        r"""HSA's messages run along the cluster tree and between siblings,
        not along the leaf edges an explainer's edge mask is defined on, so
        they pass unmasked (its output does not depend on those edges,
        except through :obj:`edge_dim`)."""
        return inputs

    def _attend_by_message_passing(self, q: Tensor, k: Tensor, v: Tensor,
                                   hierarchy: Hierarchy,
                                   pair_bias: Optional[Tensor]
                                   ) -> Tuple[Tensor, FamilyWeights]:
        r"""The dynamic program of docs/math.md, section 3.3, as its passes
        of message passing over the hierarchy's own edges."""
        dtype = torch.float64 if torch.float64 in (q.dtype, k.dtype, v.dtype) \
            else torch.float32
        tree = _tree_edges(hierarchy, dtype)
        means = self._upward_means(torch.stack([q, k, v], 1).to(dtype), tree)
        g_leaf = (q * k).sum(-1).to(dtype) * self.out_channels ** -0.5
        if pair_bias is not None:
            pair_bias = pair_bias.to(dtype)
        pi = self._family_weights(means, g_leaf, tree, pair_bias)
        out = self._downward(pi, means[:, 2], v.to(dtype), tree)
        return out.to(v.dtype), FamilyWeights(hierarchy.sibling_pairs,
                                              pi.to(v.dtype))

    def _upward_means(self, leaf_rows: Tensor, tree: '_TreeEdges') -> Tensor:
        r"""Child -> parent, bottom-up: :math:`\bar x_F = \sum_a
        \tfrac{|a|}{|F|} \bar x_a` for ``x`` in ``q, k, v`` (``[T, 3, H,
        D]``)."""
        num_nodes = tree.size.numel()
        means = torch.cat([leaf_rows, leaf_rows.new_zeros(
            (num_nodes - leaf_rows.size(0), ) + leaf_rows.shape[1:])])
        for height in range(1, tree.height + 1):
            level = tree.up_height == height
            means = means + self.propagate(
                tree.up[:, level], x=means, weight=tree.share[level],
                size=(num_nodes, num_nodes))
        return means

    def _family_weights(self, means: Tensor, g_leaf: Tensor,
                        tree: '_TreeEdges', pair_bias: Optional[Tensor]
                        ) -> Tensor:
        r"""Sibling -> sibling and child -> parent, bottom-up: per family
        level the logits :meth:`edge_update`, their softmax
        :math:`\pi_F(a \to b)` with logsumexp :math:`\lambda_a`, and the
        parents' log-partitions :math:`g_F = \sum_a \tfrac{|a|}{|F|}
        \lambda_a`. Returns :math:`\pi` ``[P, H]`` in the order of
        :attr:`~hsa_geo.data.Hierarchy.sibling_pairs`."""
        num_nodes = tree.size.numel()
        g = torch.cat([g_leaf, g_leaf.new_zeros(
            num_nodes - g_leaf.size(0), g_leaf.size(1))])
        pi = g.new_zeros(tree.pairs.size(1), g.size(1))
        for height in range(1, tree.height + 1):
            level = (tree.pair_height == height).nonzero().view(-1)
            pairs = tree.pairs[:, level]
            logit = self.edge_updater(
                pairs, q=means[:, 0], k=means[:, 1], log_size=tree.size.log(),
                g=g, bias=None if pair_bias is None else pair_bias[level],
                is_self=tree.is_self[level], allowed=tree.allowed[level],
                size=(num_nodes, num_nodes))
            lse = scatter_logsumexp(logit, pairs[1], num_nodes,
                                    float('-inf'))
            pi = pi.index_copy(0, level, torch.exp(logit - lse[pairs[1]]))
            up = tree.up_height == height
            g = g + self.propagate(tree.up[:, up], x=lse,
                                   weight=tree.share[up],
                                   size=(num_nodes, num_nodes))
        return pi

    def _downward(self, pi: Tensor, v_mean: Tensor, v: Tensor,
                  tree: '_TreeEdges') -> Tensor:
        r"""Sibling -> sibling, then parent -> child, top-down: the
        contexts :math:`u_a = r_F \sum_{b \neq a} \pi_F(a \to b) \bar
        v_b`, the masses :math:`r_a = r_F \pi_F(a \to a)` and the
        collected contexts :math:`U_a = U_F + u_a` (docs/math.md, 3.3); the
        output :math:`y_i = U_i + r_i v_i`."""
        num_nodes, num_leaves = tree.size.numel(), v.size(0)
        if self.training and self.dropout > 0.0:
            keep = torch.rand_like(pi) >= self.dropout
            pi = pi * keep / (1.0 - self.dropout)
        off = ~tree.is_self
        u = self.propagate(tree.pairs[:, off], x=v_mean, weight=pi[off],
                           size=(num_nodes, num_nodes))
        own = tree.pairs[1, tree.is_self]
        pi_self = pi.new_ones(num_nodes, pi.size(1)).index_copy(
            0, own, pi[tree.is_self])
        # [T, H, 1 + D]: the mass r and the context U of every node.
        state = torch.cat([pi.new_ones(num_nodes, pi.size(1), 1),
                           torch.zeros_like(v_mean)], dim=-1)
        for depth in range(1, tree.depth + 1):
            level = tree.up_depth == depth
            down = tree.up[:, level].flip(0)
            from_parent = self.propagate(down, x=state,
                                         weight=tree.share.new_ones(
                                             down.size(1)),
                                         size=(num_nodes, num_nodes))
            r_parent = from_parent[..., :1]
            child = torch.zeros(num_nodes, dtype=torch.bool,
                                device=pi.device)
            child[down[1]] = True
            new = torch.cat([r_parent * pi_self.unsqueeze(-1),
                             from_parent[..., 1:] + r_parent * u], dim=-1)
            state = torch.where(child[:, None, None], new, state)
        r, context = state[:num_leaves, :, :1], state[:num_leaves, :, 1:]
        return context + r * v

    def check_input(self, x: Tensor, hierarchy: Hierarchy) -> Hierarchy:
        r"""Checks the input of :meth:`forward` and returns the
        :class:`~hsa_geo.data.Hierarchy` to use (:obj:`hierarchy` itself or
        its ``.hierarchy``), so that bad input fails here with a message
        rather than deep inside a matrix product."""
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(
                t is None or isinstance(t, Tensor) for t in x):
            raise TypeError(
                "HSAConv takes one [N, F] tensor of leaf features, not a "
                "bipartite (x_src, x_dst) pair: HSA is self-attention among "
                "the leaves of one hierarchy, whose family weights tie every "
                "leaf to its siblings, so sources and targets are the same "
                "nodes")
        if not isinstance(hierarchy, Hierarchy):
            hierarchy = getattr(hierarchy, 'hierarchy', hierarchy)
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(
                f"'hierarchy' must be a hsa_geo.data.Hierarchy or hold one "
                f"as '.hierarchy' (a NestedSignal), got "
                f"{type(hierarchy).__name__}")
        check_floating(x, 'x')
        if x.dim() != 2:
            raise ValueError(f"'x' must be a [N, F] tensor of leaf features, "
                             f"got shape {tuple(x.shape)}")
        check_features(x, 'x', self.lin_query.weight, 'in_channels')
        check_device(x, 'x', hierarchy.device, 'the hierarchy')
        if x.size(0) != hierarchy.num_leaves:
            raise ValueError(
                f"'x' has {x.size(0)} rows but the hierarchy has "
                f"{hierarchy.num_leaves} leaves; row i must hold the "
                f"features of leaf i")
        return hierarchy

    def __repr__(self) -> str:
        options = [f'heads={self.heads}'] + self.repr_options()
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, {", ".join(options)})')

    def repr_options(self, root_weight: bool = True) -> List[str]:
        r"""``'name=value'`` of every option after :obj:`heads` that differs
        from its default, in the order of the signature (with a geometry
        bias, always the size of its table): the reprs of this layer and of
        layers that build one from their own arguments.

        Args:
            root_weight (bool): the default of :obj:`root_weight` to compare
                with (a layer that builds this one may have another).
                (default: :obj:`True`)
        """
        options = []
        if not self.concat:
            options.append('concat=False')
        if self.beta:
            options.append('beta=True')
        if self.dropout != 0.:
            options.append(f'dropout={self.dropout}')
        if self.lin_query.bias is None:
            options.append('bias=False')
        if self.root_weight != root_weight:
            options.append(f'root_weight={self.root_weight}')
        if self.geometry_bias is not None:
            options.append('geometry_bias=True')
        if self.geometry_bias is not None or self.max_branching != 16:
            options.append(f'max_branching={self.max_branching}')
        if self.geometry_bias is not None or self.num_levels != 8:
            options.append(f'num_levels={self.num_levels}')
        if self.edge_dim is not None:
            options.append(f'edge_dim={self.edge_dim}')
        if self.query_resolved:
            options.append('query_resolved=True')
        return options


# What HSA's dynamic program is: a sum of attention-weighted values, from
# leaves to leaves of one hierarchy, one pass (so these are the only values
# of MessagePassing's arguments it honours).
_HONOURED = {'aggr': ('add', 'sum'), 'flow': ('source_to_target', ),
             'decomposed_layers': (1, ), 'aggr_kwargs': (None, )}


def _check_message_passing_kwargs(kwargs: dict):
    r"""Refuses :class:`~torch_geometric.nn.conv.MessagePassing` arguments
    that HSA cannot honour, instead of accepting and ignoring them."""
    if 'node_dim' in kwargs:
        raise ValueError("'node_dim' is fixed to 0 in HSAConv (leaf "
                         "features are [N, F]); remove the argument")
    for name, allowed in _HONOURED.items():
        value = kwargs.get(name, allowed[0])
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(
                f"HSAConv cannot honour {name}={kwargs[name]!r}: its "
                f"attention is one softmax-weighted sum over the hierarchy "
                f"(aggr='add', flow='source_to_target', "
                f"decomposed_layers=1); remove the argument")


def _checked_arguments(*, in_channels: Any, out_channels: Any, heads: Any,
                       concat: Any, beta: Any, dropout: Any, bias: Any,
                       root_weight: Any, geometry_bias: Any,
                       max_branching: Any, num_levels: Any, edge_dim: Any,
                       query_resolved: Any
                       ) -> Tuple[int, int, int, float, int, int,
                                  Optional[int]]:
    r"""``(in_channels, out_channels, heads, dropout, max_branching,
    num_levels, edge_dim)`` of :class:`HSAConv`, checked with its flags one
    by one, so that the first wrong argument is the one that raises."""
    in_channels = check_width(in_channels, 'in_channels')
    out_channels = check_int(out_channels, 'out_channels')
    heads = check_int(heads, 'heads')
    check_flags(concat=concat, beta=beta, bias=bias, root_weight=root_weight,
                geometry_bias=geometry_bias, query_resolved=query_resolved)
    if query_resolved and (geometry_bias or edge_dim is not None):
        raise ValueError(
            "query_resolved=True takes no geometry_bias or edge_dim: "
            "query-resolved HSA has no family logits to add them to; "
            "leave them out, or use the family HSA (the default)")
    dropout = check_float(dropout, 'dropout', 0.0, 1.0, high_open=True)
    # Checked here even when unused, so that a typo is not ignored;
    # FamilyGeometryBias repeats the check when it is built.
    max_branching = check_int(max_branching, 'max_branching', low=2)
    num_levels = check_int(num_levels, 'num_levels')
    if edge_dim is not None:
        edge_dim = check_int(edge_dim, 'edge_dim')
    return (in_channels, out_channels, heads, dropout, max_branching,
            num_levels, edge_dim)


class _TreeEdges(NamedTuple):
    r"""The hierarchy's own edges, as the passes read them: child ->
    parent (``up``, with the height of the parent, the depth of the child
    and the share :math:`|a| / |F|`), and the sibling pairs ``(b -> a)``
    in the order of :attr:`~hsa_geo.data.Hierarchy.sibling_pairs` (with
    the height of their parent, whether a pair is a self pair, whether a
    family graph allows it)."""
    up: Tensor
    up_height: Tensor
    up_depth: Tensor
    share: Tensor
    pairs: Tensor
    pair_height: Tensor
    is_self: Tensor
    allowed: Tensor
    size: Tensor
    height: int
    depth: int


def _tree_edges(hierarchy: Hierarchy, dtype: torch.dtype) -> _TreeEdges:
    parent, height = hierarchy.parent, hierarchy.node_height
    child = (parent >= 0).nonzero().view(-1)
    up = torch.stack([child, parent[child]])
    size = hierarchy.leaf_count.to(dtype)
    pairs = hierarchy.sibling_pairs.flip(0)  # b -> a: a attends to b
    is_self = pairs[0] == pairs[1]
    allowed = is_self.clone()
    family = hierarchy.family_edge_index
    if family is None:
        allowed.fill_(True)
    elif family.numel() > 0:
        num_nodes = parent.numel()
        keys = (family[0] * num_nodes + family[1]).sort().values
        wanted = pairs[1] * num_nodes + pairs[0]
        at = torch.searchsorted(keys, wanted).clamp(max=keys.numel() - 1)
        allowed |= keys[at] == wanted
    return _TreeEdges(
        up, height[up[1]], hierarchy.node_depth[child],
        size[up[0]] / size[up[1]], pairs, height[parent[pairs[1]]], is_self,
        allowed, size, int(height.max()) if height.numel() else 0,
        hierarchy.depth)


def split_fused_projection(state_dict: Dict[str, Tensor], prefix: str):
    r"""Rewrites, in place, the entries of a state saved with one fused
    projection ``lin_qkv`` (its rows: ``q``, then ``k``, then ``v``) under
    :obj:`prefix` into those of ``lin_query``, ``lin_key`` and
    ``lin_value``, so that such states load (for ``lin_qkv.weight`` as for
    ``lin_qkv.<leaf type>.weight``)."""
    fused = f'{prefix}lin_qkv.'
    for key in [key for key in state_dict if key.startswith(fused)]:
        rest = key[len(fused):]
        for name, part in zip(('query', 'key', 'value'),
                              state_dict.pop(key).chunk(3)):
            state_dict[f'{prefix}lin_{name}.{rest}'] = part
