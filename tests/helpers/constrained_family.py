r"""A third construction of HSA's constrained family, for the KL tests.

It shares nothing with the library: ``log Q`` is a fixed linear map of the
per-family ``log pi``, built from the parent vector with plain Python walks
(see ``strategies.py`` beside it), and the target softmax ``P`` is built
from the dense scores. Family graphs and pair biases (docs/math.md, section
6) are options.
"""
import math
from typing import Dict, List, Optional, Set, Tuple

import torch

from tests.helpers.strategies import (
    Forest, ancestors, children_of, lca_children, leaves_under, root_of)

# log 0 as a finite number: M @ log_pi multiplies it by 0 elsewhere.
LOG_ZERO = -1e300


def same_tree_mask(f: Forest) -> torch.Tensor:
    roots = torch.tensor([root_of(f.parent, i) for i in range(f.num_leaves)])
    return roots[:, None] == roots[None, :]


class ConstrainedFamily:
    r"""The constrained family parametrised by per-family logits
    ``theta_F [c x c]``: ``pi_F = softmax`` of the rows (over the allowed
    siblings when a family graph ``allowed`` is given),
    ``Q[i, j] = r_F pi_F(a -> b) / |b|``, ``Q[i, i] = r_i``,
    ``r_a = r_F pi_F(a -> a)``.

    ``log Q`` is a fixed linear map of the concatenated ``log pi`` (each
    entry is a sum of ``log pi`` along the path to the root), built once
    from the parent vector; entries across trees are ``-inf``.
    """
    def __init__(self, f: Forest,
                 allowed: Optional[Set[Tuple[int, int]]] = None):
        parent, n = f.parent, f.num_leaves
        self.n = n
        self.kids = children_of(parent)
        self.families = sorted(self.kids)
        self.width = [len(self.kids[fam]) for fam in self.families]
        self.masks = [
            torch.tensor([[a == b or allowed is None or (a, b) in allowed
                           for b in self.kids[fam]] for a in self.kids[fam]])
            for fam in self.families
        ]
        pos = {c: i for fam in self.families
               for i, c in enumerate(self.kids[fam])}
        base, off = {}, 0
        for fam, c in zip(self.families, self.width):
            base[fam] = off
            off += c * c
        self.num_params = off
        size = [len(u) for u in leaves_under(parent, n)]

        def idx(fam, a, b):
            return base[fam] + pos[a] * len(self.kids[fam]) + pos[b]

        def self_path(x):  # log r_x = sum of log pi(y -> y) above x
            return [idx(parent[y], y, y) for y in ancestors(parent, x)[:-1]]

        M = torch.zeros(n * n, off, dtype=torch.float64)
        c = torch.full((n * n, ), -math.inf, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                row = i * n + j
                if i == j:
                    cols, c[row] = self_path(i), 0.0
                else:
                    t = lca_children(parent, i, j)
                    if t is None:
                        continue
                    fam, a, b = t
                    cols = self_path(fam) + [idx(fam, a, b)]
                    c[row] = -math.log(size[b])
                for col in cols:
                    M[row, col] += 1.0
        self.M, self.c = M, c
        self.mask = torch.isfinite(c).view(n, n)

    def log_pi(self, theta: torch.Tensor) -> torch.Tensor:
        parts, off = [], 0
        for w, mask in zip(self.width, self.masks):
            logits = theta[off:off + w * w].view(w, w).masked_fill(
                ~mask, -math.inf)
            parts.append(
                torch.log_softmax(logits, dim=-1).masked_fill(
                    ~mask, LOG_ZERO).flatten())
            off += w * w
        return torch.cat(parts) if parts else theta

    def theta_from_weights(self, index, weight) -> torch.Tensor:
        r"""Logits ``log pi`` from returned family weights ``[P]``."""
        theta = torch.zeros(self.num_params, dtype=torch.float64)
        pi = {(a, b): float(w) for (a, b), w in
              zip(index.t().tolist(), weight.tolist())}
        off = 0
        for fam, w in zip(self.families, self.width):
            kids = self.kids[fam]
            for ia, a in enumerate(kids):
                for ib, b in enumerate(kids):
                    if pi[(a, b)] > 0:  # pairs off the family graph: 0
                        theta[off + ia * w + ib] = math.log(pi[(a, b)])
            off += w * w
        return theta

    def log_q(self, theta: torch.Tensor) -> torch.Tensor:
        return (self.M @ self.log_pi(theta) + self.c).view(self.n, self.n)

    def kl(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        r"""``sum_i KL(Q_i || P_i)`` over pairs in the same tree (``0 log 0
        = 0`` across blocks a family graph leaves out)."""
        lq, lp = log_q[self.mask], log_p[self.mask]
        q = lq.exp()
        return torch.where(q > 0, q * (lq - lp), torch.zeros_like(q)).sum()


def per_tree_log_softmax(f: Forest, q, k, scale=None,
                         bias: Optional[Dict[Tuple[int, int], float]] = None
                         ) -> torch.Tensor:
    r"""Softmax attention within each tree; ``bias[(a, b)]`` is added to the
    score of every leaf under ``a`` for every leaf under its sibling ``b``."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    s = scale * q @ k.t()
    if bias:
        s = s.clone()
        for i in range(f.num_leaves):
            for j in range(f.num_leaves):
                t = lca_children(f.parent, i, j) if i != j else None
                if t is not None:
                    s[i, j] += bias.get(t[1:], 0.0)
    return torch.log_softmax(s.masked_fill(~same_tree_mask(f), -math.inf),
                             dim=-1)


def lbfgs_kl(family: ConstrainedFamily, log_p: torch.Tensor,
             theta: torch.Tensor, rounds: int, max_iter: int = 400
             ) -> Tuple[List[float], torch.Tensor]:
    r"""Minimises the total KL over the family's logits with L-BFGS from
    :obj:`theta`; returns every loss it evaluated and the final logits."""
    theta = theta.clone().requires_grad_()
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter,
                            history_size=50, tolerance_grad=1e-13,
                            tolerance_change=1e-16,
                            line_search_fn='strong_wolfe')
    seen: List[float] = []

    def closure():
        opt.zero_grad()
        loss = family.kl(family.log_q(theta), log_p)
        loss.backward()
        seen.append(loss.item())
        return loss

    for _ in range(rounds):
        opt.step(closure)
    return seen, theta.detach()
