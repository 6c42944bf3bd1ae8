r"""Inputs of the GPS-style layer and model tests: random leaf edges, the
tree of every leaf as a batch vector, small nested signals of different
shapes, and molecules as nested signals (when RDKit is installed)."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from hsa_geo import Hierarchy, NestedSignal
from tests.helpers.strategies import Forest, root_of

# Trees of different shapes (one of them a forest of two trees).
PARENTS = [
    ([4, 4, 5, 5, 6, 6, -1], 4),
    ([3, 3, 3, -1], 3),
    ([7, 7, 7, 8, 8, -1, 9, 9, 9, -1], 7),
    ([5, 5, 6, 6, 6, 7, 7, -1], 5),
]
SMILES = ['CCO', 'c1ccccc1O', 'CC(=O)Nc1ccc(O)cc1', 'OC(=O)C1CC1']


def random_edges(num_leaves: int, seed: int, edge_dim: int = 3,
                 dtype=torch.float64) -> Tuple[Tensor, Tensor]:
    r"""About two random directed edges per leaf (repeats and self-loops
    included) and their features."""
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_leaves, (2, 2 * num_leaves),
                               generator=gen)
    edge_attr = torch.randn(2 * num_leaves, edge_dim, dtype=dtype,
                            generator=gen)
    return edge_index, edge_attr


def tree_batch(forest: Forest) -> Tensor:
    r"""The tree of every leaf, numbered ``0, 1, ...`` in order of first
    appearance: a batch vector whose graphs are the trees."""
    roots: List[int] = [root_of(forest.parent, leaf)
                        for leaf in range(forest.num_leaves)]
    ids = {}
    return torch.tensor([ids.setdefault(r, len(ids)) for r in roots])


def signals(channels: int, edge_dim: int = 3, seed: int = 0,
            y: Optional[str] = None) -> List[NestedSignal]:
    r"""One :class:`NestedSignal` per tree of :data:`PARENTS`, with random
    features, edges and edge features (float32); :obj:`y`: ``'node'`` for
    a class per leaf (the sign of its first feature), ``'graph'`` for a
    target per signal (the sum of the first features)."""
    out = []
    for i, (parent, num_leaves) in enumerate(PARENTS):
        gen = torch.Generator().manual_seed(seed + i)
        x = torch.randn(num_leaves, channels, generator=gen)
        edge_index, edge_attr = random_edges(num_leaves, seed + i, edge_dim,
                                             torch.float32)
        attrs = dict(edge_index=edge_index, edge_attr=edge_attr)
        if y == 'node':
            attrs['y'] = (x[:, 0] > 0).long()
        elif y == 'graph':
            attrs['y'] = x[:, :1].sum(0, keepdim=True)
        out.append(NestedSignal.from_hierarchy(
            Hierarchy.from_parent(parent, num_leaves), x, **attrs))
    return out


def molecules() -> Optional[List[NestedSignal]]:
    r"""The molecules of :data:`SMILES` as nested signals (OGB features,
    integer ``x`` and ``edge_attr``), or :obj:`None` without RDKit."""
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return None
    from hsa_geo.transforms import MoleculeHierarchy
    return [MoleculeHierarchy()(smiles) for smiles in SMILES]
