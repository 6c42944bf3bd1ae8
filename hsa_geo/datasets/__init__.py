r"""Datasets of real molecules with real labels whose raw files ship inside
RDKit, as PyG :class:`~torch_geometric.data.InMemoryDataset`\ s (no
network needed), and the scaffold and random splits they offer through
``get_idx_split``, as OGB's datasets do."""
from hsa_geo.datasets.chembl_activity import ChEMBLActivity
from hsa_geo.datasets.nci_tpsa import NCITPSA
from hsa_geo.datasets.random_split import random_split
from hsa_geo.datasets.rdkit_molecule_dataset import RDKitMoleculeDataset
from hsa_geo.datasets.scaffold_split import scaffold_split

__all__ = [
    'ChEMBLActivity',
    'NCITPSA',
    'RDKitMoleculeDataset',
    'random_split',
    'scaffold_split',
]
