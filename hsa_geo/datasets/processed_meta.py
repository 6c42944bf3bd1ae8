r"""The side file of a processed dataset: what processing found beside the
signals (skipped items, section names, ...), stamped with the format the
signals were stored in and with the :obj:`pre_transform` and
:obj:`pre_filter` that made them.

**Variants and pre-processing.** The datasets of :mod:`hsa_geo.datasets`
keep several variants in one :obj:`processed_dir` (tasks, thresholds,
splits, options), each in files of its own, while PyG records one
:obj:`pre_transform` and :obj:`pre_filter` per folder (``pre_transform.pt``
and ``pre_filter.pt``), those of the variant processed last. So every
variant records its own, as their :func:`repr` without memory addresses
(:func:`pre_processing`), and :func:`load_processed` compares them with
those given to the dataset:

- where one differs, it raises a :class:`ValueError` that names the
  variant's file and both :func:`repr`: stored signals are never reused
  for another :obj:`pre_transform` or :obj:`pre_filter`, and never
  replaced unasked. Pass :obj:`force_reload=True` to process that variant
  again with the given ones (its files are replaced), or use another
  :obj:`root` to keep both;
- a side file written by an earlier :mod:`hsa_geo`, which does not record
  them, says nothing of how its variant was made: that variant is
  processed again, once, with the given ones, which are then recorded.

PyG's own warning about its per-folder record (which speaks of another
variant) is left out while a dataset is constructed
(:func:`folder_record_ignored`).

A function is recorded by its name (``'<function keep>'``), so two
functions of the same name, or a function whose code changed, look alike:
pass :obj:`force_reload=True` after changing one.
"""
import json
import os.path as osp
import re
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from torch_geometric.data import InMemoryDataset

# The format of the processed signals. Raised whenever processing changes
# what a stored signal holds (its keys, its tree, its features), so that
# files processed before are refused instead of read as if they were new.
# 2: the word rule keeps combining marks in their word (Vocabulary).
PROCESSED_FORMAT = 2


# What pre_processing records, in this order.
PRE_PROCESSING = ('pre_transform', 'pre_filter')
# PyG's warnings when a folder's one record differs from the dataset's.
_FOLDER_RECORD_WARNING = r'The `pre_(transform|filter)` argument differs'


def pre_processing(dataset: Any) -> Dict[str, str]:
    r"""The :func:`repr` of :obj:`dataset`'s :obj:`pre_transform` and
    :obj:`pre_filter` (``'None'`` where it has none), as recorded with its
    processed files; memory addresses (``' at 0x7f...'``) are left out,
    since they change from run to run.

    Examples:
        >>> from types import SimpleNamespace
        >>> def keep(data):
        ...     return True
        >>> pre_processing(SimpleNamespace(pre_transform=None,
        ...                                pre_filter=keep))
        {'pre_transform': 'None', 'pre_filter': '<function keep>'}
    """
    return {key: re.sub(r' at 0x[0-9a-fA-F]+', '',
                        repr(getattr(dataset, key)))
            for key in PRE_PROCESSING}


@contextmanager
def folder_record_ignored() -> Iterator[None]:
    r"""Leaves out PyG's warning that the :obj:`pre_transform` or
    :obj:`pre_filter` of a dataset differs from the one recorded for its
    :obj:`processed_dir`: for a folder of several variants, that record is
    the last processed variant's, and :func:`load_processed` checks the
    dataset's own variant instead. Other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=_FOLDER_RECORD_WARNING,
                                category=UserWarning)
        yield


def write_meta(path: str, meta: Dict[str, Any],
               dataset: Optional[Any] = None) -> None:
    r"""Writes :obj:`meta` as JSON to :obj:`path`, with the format and, for
    the processed files of :obj:`dataset`, its :func:`pre_processing`."""
    if dataset is not None:
        meta = {**meta, **pre_processing(dataset)}
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
    about the format or the pre-processing then comes before any error
    loading signals stored in another format.

    Raises a :class:`ValueError` where the files were processed with
    another :obj:`pre_transform` or :obj:`pre_filter`, and processes them
    again (:meth:`process`) where the side file does not say which (see
    the module's description)."""
    path = dataset.processed_paths[1]
    meta = read_meta(path)
    if any(key not in meta for key in PRE_PROCESSING):
        # Written before variants recorded their pre-processing.
        dataset.process()
        meta = read_meta(path)
    given = pre_processing(dataset)
    changed = [key for key in PRE_PROCESSING if meta[key] != given[key]]
    if changed:
        made = ' and '.join(f'{key}={meta[key]}' for key in changed)
        asked = ' and '.join(f'{key}={given[key]}' for key in changed)
        were = 'were' if len(changed) > 1 else 'was'
        raise ValueError(
            f"{dataset.__class__.__name__}: the processed file "
            f"'{osp.basename(dataset.processed_paths[0])}' in "
            f"'{osp.dirname(path)}' was made with {made}, but {asked} "
            f"{were} given; pass force_reload=True to process it again "
            f"with the given {' and '.join(changed)} (which replaces it), "
            f"or use another root to keep both")
    dataset.load(dataset.processed_paths[0])
    return meta


def check_vocabulary(dataset: InMemoryDataset, meta: Dict[str, Any],
                     vocab: Any, path: str) -> None:
    r"""Raises a :class:`ValueError` where the processed signals of
    :obj:`dataset` (side file :obj:`meta`) were made with another
    vocabulary than :obj:`vocab`, the one saved at :obj:`path` that several
    variants share: their token ids would be read with the wrong tokens.
    Side files that do not record the vocabulary are not checked."""
    made = meta.get('vocab')
    if made is None or made == vocab.digest:
        return
    raise ValueError(
        f"{dataset.__class__.__name__}: the processed file "
        f"'{osp.basename(dataset.processed_paths[0])}' in "
        f"'{osp.dirname(dataset.processed_paths[0])}' holds the token ids of "
        f"the vocabulary with digest {made!r}, but '{osp.basename(path)}' "
        f"is now the vocabulary {vocab.digest!r} (rebuilt since, when "
        f"another split was processed from changed training data); pass "
        f"force_reload=True to process it again with that vocabulary")
