r"""A small on-disk PyG dataset for checking builders as ``pre_transform``."""
from typing import Callable, List

from torch_geometric.data import Data, InMemoryDataset


class PreTransformDataset(InMemoryDataset):
    r"""Processes :obj:`items` (made by :obj:`make`) once with
    :obj:`pre_transform`, saves them under :obj:`root` and loads them back
    (with ``weights_only`` loading, as PyG does)."""
    def __init__(self, root: str, make: Callable[[], List[Data]],
                 pre_transform: Callable):
        self._make = make
        super().__init__(root, pre_transform=pre_transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self):
        return []

    @property
    def processed_file_names(self):
        return ['data.pt']

    def download(self):
        pass

    def process(self):
        self.save([self.pre_transform(d) for d in self._make()],
                  self.processed_paths[0])
