r"""The side file of a processed dataset: what processing found beside the
signals (skipped items, section names, ...), stamped with the format the
signals were stored in."""
import json
import os.path as osp
from typing import Any, Dict

from torch_geometric.data import InMemoryDataset

# The format of the processed signals. Raised whenever processing changes
# what a stored signal holds (its keys, its tree, its features), so that
# files processed before are refused instead of read as if they were new.
PROCESSED_FORMAT = 1


def write_meta(path: str, meta: Dict[str, Any]) -> None:
    r"""Writes :obj:`meta` as JSON to :obj:`path`, with the format."""
    with open(path, 'w') as f:
        json.dump({'format': PROCESSED_FORMAT, **meta}, f)


def read_meta(path: str) -> Dict[str, Any]:
    r"""The side file written by :func:`write_meta`; raises a
    :class:`ValueError` when the signals beside it were processed in
    another format (by another version of :mod:`hsa_geo`).

    Examples:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'meta.json')
        >>> write_meta(path, {'skipped': []})
        >>> read_meta(path)['skipped']
        []
    """
    with open(path) as f:
        meta = json.load(f)
    found = meta.get('format') if isinstance(meta, dict) else None
    if found == PROCESSED_FORMAT:
        return meta
    folder = osp.dirname(path)
    if isinstance(found, int) and found > PROCESSED_FORMAT:
        raise ValueError(
            f"the processed files in '{folder}' were made by a later "
            f"hsa_geo (format {found}; this version reads format "
            f"{PROCESSED_FORMAT}): upgrade hsa_geo to read them, or pass "
            f"force_reload=True to process the dataset again in this "
            f"version's format (which replaces them)")
    made = 'a version of hsa_geo before processed formats' \
        if found is None else f'format {found!r}'
    raise ValueError(
        f"the processed files in '{folder}' were made by {made}, and this "
        f"version reads format {PROCESSED_FORMAT}: process the dataset "
        f"again (pass force_reload=True) or delete that folder")


def load_processed(dataset: InMemoryDataset) -> Dict[str, Any]:
    r"""Loads the processed signals of :obj:`dataset` (its first processed
    file) and returns its side file (the second), read first: an error
    about the format then comes before any error loading signals stored in
    another format."""
    meta = read_meta(dataset.processed_paths[1])
    dataset.load(dataset.processed_paths[0])
    return meta
