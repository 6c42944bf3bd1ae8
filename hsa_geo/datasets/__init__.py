r"""Datasets as PyG :class:`~torch_geometric.data.InMemoryDataset`\ s:

- molecules with real labels whose raw files ship inside RDKit (no network
  needed), with the scaffold and random splits of ``get_idx_split`` as
  OGB's datasets offer them, also seen as atom graph, SMILES tokens and
  depiction at once (multi-modal);
- N24News, multi-modal news articles read from the archive its authors
  distribute;
- text documents: IMDb and Amazon electronics (Elec) reviews read from, and
  downloaded as, their original archives, and the Linux manual pages, long
  documents read offline from the installed Debian packages."""
from hsa_geo.datasets.amazon_elec import AmazonElec
from hsa_geo.datasets.chembl_activity import ChEMBLActivity
from hsa_geo.datasets.document_dataset import DocumentDataset
from hsa_geo.datasets.imdb_reviews import IMDBReviews
from hsa_geo.datasets.man_pages import ManPages
from hsa_geo.datasets.multimodal_molecules import MultiModalMolecules
from hsa_geo.datasets.n24news import N24News
from hsa_geo.datasets.nci_tpsa import NCITPSA
from hsa_geo.datasets.parallel_map import parallel_map
from hsa_geo.datasets.random_split import random_split
from hsa_geo.datasets.rdkit_molecule_dataset import RDKitMoleculeDataset
from hsa_geo.datasets.scaffold_split import scaffold_split
from hsa_geo.datasets.tokenizer_tag import tokenizer_tag

__all__ = [
    'AmazonElec',
    'ChEMBLActivity',
    'DocumentDataset',
    'IMDBReviews',
    'ManPages',
    'MultiModalMolecules',
    'N24News',
    'NCITPSA',
    'parallel_map',
    'RDKitMoleculeDataset',
    'random_split',
    'scaffold_split',
    'tokenizer_tag',
]
