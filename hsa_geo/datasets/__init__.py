r"""Datasets of real molecules with real labels whose raw files ship inside
RDKit, as PyG :class:`~torch_geometric.data.InMemoryDataset`\ s (no
network needed), also as atom graph, SMILES tokens and depiction at once
(multi-modal), and the scaffold and random splits they offer through
``get_idx_split``, as OGB's datasets do; and N24News, multi-modal news
articles read from the archive its authors distribute."""
from hsa_geo.datasets.chembl_activity import ChEMBLActivity
from hsa_geo.datasets.multimodal_molecules import MultiModalMolecules
from hsa_geo.datasets.n24news import N24News
from hsa_geo.datasets.nci_tpsa import NCITPSA
from hsa_geo.datasets.random_split import random_split
from hsa_geo.datasets.rdkit_molecule_dataset import RDKitMoleculeDataset
from hsa_geo.datasets.scaffold_split import scaffold_split

__all__ = [
    'ChEMBLActivity',
    'MultiModalMolecules',
    'N24News',
    'NCITPSA',
    'RDKitMoleculeDataset',
    'random_split',
    'scaffold_split',
]
