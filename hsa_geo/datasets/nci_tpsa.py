r"""The first 5,000 NCI molecules with their polar surface area, from
RDKit."""
from typing import List

from hsa_geo.datasets.rdkit_molecule_dataset import (Record,
                                                     RDKitMoleculeDataset,
                                                     read_smiles_file)


class NCITPSA(RDKitMoleculeDataset):
    r"""The first 4,999 molecules of the `NCI open database
    <https://cactus.nci.nih.gov/download/nci/>`_ as they ship with `RDKit
    <https://www.rdkit.org>`_ (``Data/NCI``), each labelled with its
    topological polar surface area (TPSA, `Ertl et al. (2000)
    <https://doi.org/10.1021/jm000942e>`_). Needs RDKit
    (``pip install rdkit``); nothing is downloaded: :meth:`download` copies
    ``first_5K.smi`` (SMILES and NCI identifier) and ``first_5k.tpsa.csv``
    (SMILES and TPSA, line by line in the same order) from the installed
    RDKit into :obj:`raw_dir`.

    **Label.** ``y`` ``FloatTensor [1, 1]`` is the TPSA in square
    ångström (Å²), from 0 to 778 (mean 54.9), as the file gives it
    (computed with Daylight's tools and Ertl's ``tpsa.c``). TPSA is a
    **computed descriptor, not a measurement**: a sum of fixed
    contributions of the polar atoms and their neighbourhoods, so a
    message-passing network with a few layers can in principle compute it
    exactly. This is a sanity and regression benchmark (does a model learn
    a known local function of the graph?), not a measured property;
    :class:`~hsa_geo.datasets.ChEMBLActivity` has measured labels.

    RDKit cannot parse 8 of the 4,999 SMILES (valences it refuses, such as
    pentavalent nitrogen or hexavalent aluminium); they are skipped with a
    warning and listed in :attr:`skipped`, leaving 4,991 molecules. Graphs
    and splits are as in :class:`~hsa_geo.datasets.RDKitMoleculeDataset`:
    OGB's features (``x`` ``[N, 9]``, ``edge_attr`` ``[E, 3]``),
    ``smiles``, ``compound_id`` (the NCI identifier of the file), and
    :meth:`get_idx_split` (``'scaffold'``: 1,069 Bemis-Murcko scaffolds,
    the largest the 1,149 acyclic molecules; ``'random'``).

    Args:
        root (str): Root directory; the files go to
            ``root/nci_tpsa/{raw,processed}``.
        transform (callable, optional): A function/transform that takes in
            a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :obj:`torch_geometric.data.Data` object and returns a
            transformed version. The data object will be transformed before
            being saved to disk. (default: :obj:`None`)
        pre_filter (callable, optional): A function that takes in a
            :obj:`torch_geometric.data.Data` object and returns a boolean
            value, indicating whether the data object should be included in
            the final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset;
            needed to change the :obj:`pre_transform` or :obj:`pre_filter`
            it was processed with before (see
            :mod:`~hsa_geo.datasets.processed_meta`).
            (default: :obj:`False`)
        log (bool, optional): Whether to print to the console while
            processing. (default: :obj:`True`)

    **STATS:**

    .. list-table::
        :widths: 10 10 10 10 10
        :header-rows: 1

        * - #graphs
          - #nodes
          - #edges
          - #features
          - #tasks
        * - 4,991
          - ~16.4
          - ~33.8
          - 9
          - 1
    """
    name = 'nci_tpsa'
    rdkit_files = (('RDDataDir', 'NCI/first_5K.smi'),
                   ('RDDataDir', 'NCI/first_5k.tpsa.csv'))

    def read_raw(self) -> List[Record]:
        molecules = read_smiles_file(self.raw_paths[0])
        with open(self.raw_paths[1]) as f:
            # '#' lines say how the values were computed.
            labels = [line.strip().rsplit(',', 1) for line in f
                      if line.strip() and not line.startswith('#')]
        if len(molecules) != len(labels):
            raise ValueError(
                f"'{self.raw_paths[0]}' has {len(molecules)} molecules but "
                f"'{self.raw_paths[1]}' {len(labels)} values")
        records = []
        for i, ((smiles, compound_id), (labelled, tpsa)) in enumerate(
                zip(molecules, labels)):
            # The files are parallel; a mismatch would pair wrong labels.
            if smiles != labelled:
                raise ValueError(
                    f"Line {i + 1} of '{self.raw_paths[0]}' is {smiles!r} "
                    f"but '{self.raw_paths[1]}' labels {labelled!r}")
            records.append((smiles, compound_id, float(tpsa)))
        return records
