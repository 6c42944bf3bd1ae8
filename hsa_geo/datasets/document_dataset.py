r"""What the datasets of labelled text documents share: the vocabulary of
the training split, the processed file names, and the processing loop
that turns every document into a nested signal with
:class:`~hsa_geo.transforms.DocumentHierarchy`."""
import os.path as osp
import warnings
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch_geometric.data import Data, InMemoryDataset

from hsa_geo._checks import check_int, check_num_workers
from hsa_geo.datasets.parallel_map import parallel_map
from hsa_geo.datasets.processed_meta import (check_vocabulary,
                                             folder_record_ignored,
                                             load_processed, write_meta)
from hsa_geo.datasets.tokenizer_tag import tokenizer_tag
from hsa_geo.transforms import DocumentHierarchy, Vocabulary
from hsa_geo.transforms.document_hierarchy import EmptyTextError

# Why a document was skipped: (where it was read, reason).
Skipped = Tuple[str, str]


class Document(NamedTuple):
    r"""One labelled document as read from the raw files."""
    text: str
    label: int
    #: Further per-document integers (a rating, a review id, ...).
    attrs: Dict[str, int]
    #: Where it was read, for messages: a file, or a file and a line.
    source: str


class DocumentDataset(InMemoryDataset):
    r"""The base of the text document datasets: every document of the
    chosen split becomes a :class:`~hsa_geo.data.NestedSignal` (tokens ->
    words -> sentences -> paragraphs -> document) with ``y``
    ``LongTensor [1]`` and the integers of :attr:`Document.attrs` as
    ``LongTensor [1]`` each.

    A subclass names :attr:`SPLITS`, :attr:`CLASSES`, :attr:`source_tag`
    and :meth:`raw_files_of`, and reads a split with
    :meth:`read_documents`.
    The token ids are those of :attr:`vocab`, a
    :class:`~hsa_geo.transforms.Vocabulary` built over the training split
    only (every split uses it; a word that is not in it gets
    :attr:`~hsa_geo.transforms.Vocabulary.unk_id`), or those of a
    HuggingFace :obj:`tokenizer`. Documents are kept whole. With
    :obj:`num_workers`, worker processes build the trees
    (:func:`~hsa_geo.datasets.parallel_map`): the same signals in the same
    order; :obj:`pre_filter` and :obj:`pre_transform` run in this process.
    Every split (:attr:`processed_stem`) records the two with its files,
    and loading it with others raises a :class:`ValueError` until
    :obj:`force_reload=True` processes it again (see
    :mod:`~hsa_geo.datasets.processed_meta`).
    """
    #: The splits, the first one the training split.
    SPLITS: Tuple[str, ...] = ('train', 'test')
    #: The dataset's name in messages and progress bars.
    name = 'documents'
    #: The class names, in label order.
    CLASSES: Tuple[str, ...] = ()

    def __init__(self, root: str, split: str, tokenizer: Any,
                 min_freq: int, vocab_size: Optional[int],
                 transform: Optional[Callable],
                 pre_transform: Optional[Callable],
                 pre_filter: Optional[Callable], force_reload: bool,
                 log: bool, num_workers: int = 0) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"{self.name}: 'split' must be one of "
                             f"{self.SPLITS}, got {split!r}")
        self.split = split
        self.num_workers = check_num_workers(num_workers)
        self.min_freq = check_int(min_freq, 'min_freq')
        self.vocab_size = None if vocab_size is None else check_int(
            vocab_size, 'vocab_size')
        self.tokenizer = tokenizer
        if tokenizer is not None:  # refused here, before any file is read
            DocumentHierarchy(tokenizer=tokenizer)
            if self.min_freq != 1 or self.vocab_size is not None:
                raise ValueError(
                    f"{self.name}: 'min_freq' and 'vocab_size' shape the "
                    f"built-in vocabulary, which a 'tokenizer' replaces; "
                    f"leave them at their defaults with a tokenizer")
        with folder_record_ignored():  # load_processed checks the variant
            super().__init__(root, transform, pre_transform, pre_filter,
                             log=log, force_reload=force_reload)
        meta = load_processed(self)
        self.skipped: List[Skipped] = [(s, why) for s, why in
                                       meta['skipped']]
        self.vocab: Optional[Vocabulary] = None
        if tokenizer is None:
            self.vocab = Vocabulary.load(self.processed_paths[2])
            check_vocabulary(self, meta, self.vocab, self.processed_paths[2])

    # For subclasses ########################################################

    @property
    def source_tag(self) -> str:
        r"""The raw data that the chosen options read, for file names."""
        raise NotImplementedError

    def raw_files_of(self, split: str) -> List[str]:
        r"""The raw files of :obj:`split`, relative to :obj:`raw_dir`."""
        raise NotImplementedError

    def read_documents(self, split: str) -> List[Document]:
        r"""The documents of :obj:`split` in a fixed order."""
        raise NotImplementedError

    # Names #################################################################

    @property
    def tokenizer_tag(self) -> str:
        r"""The token ids: ``'vocab-min<min_freq>[-max<vocab_size>]'`` or
        ``'tokenizer-<hash of the serialised tokenizer>'``."""
        if self.tokenizer is None:
            tag = f'vocab-min{self.min_freq}'
            if self.vocab_size is not None:
                tag += f'-max{self.vocab_size}'
            return tag
        return tokenizer_tag(self.tokenizer)

    @property
    def processed_stem(self) -> str:
        r"""The name of the split's processed files, without suffix: every
        option that changes the signals."""
        return f'{self.split}_{self.source_tag}_{self.tokenizer_tag}'

    @property
    def raw_file_names(self) -> List[str]:
        # The vocabulary needs the training split; a tokenizer does not.
        splits = [self.split]
        if self.tokenizer is None and self.split != self.SPLITS[0]:
            splits.insert(0, self.SPLITS[0])
        return [name for s in splits for name in self.raw_files_of(s)]

    @property
    def processed_file_names(self) -> List[str]:
        names = [f'{self.processed_stem}.pt',
                 f'{self.processed_stem}_meta.json']
        if self.tokenizer is None:
            # One vocabulary for all splits of the same training data.
            names.append(f'{self.source_tag}_{self.tokenizer_tag}.json')
        return names

    # Processing ############################################################

    def process(self) -> None:
        documents = self.read_documents(self.split)
        document = self._document_hierarchy(
            documents if self.split == self.SPLITS[0] else None)
        skipped: List[Skipped] = [(doc.source, 'the text is empty')
                                  for doc in documents if not doc.text.strip()]
        kept = [doc for doc in documents if doc.text.strip()]
        data_list: List[Data] = []
        for doc, data in zip(kept, parallel_map(
                partial(_document_signal, transform=document, name=self.name),
                kept, num_workers=self.num_workers,
                desc=f'{self.name} {self.split}', log=self.log)):
            if data is None:
                skipped.append((doc.source, 'the text has no tokens'))
                continue
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)

        if skipped:
            warnings.warn(
                f"{self.name}: skipped {len(skipped)} of the "
                f"{len(documents)} documents of the {self.split!r} split "
                f"(the first: {skipped[0][0]}, {skipped[0][1]}); they are "
                f"listed in the dataset's 'skipped'", stacklevel=2)
        if not data_list:
            raise ValueError(
                f"{self.name}: none of the {len(documents)} documents of "
                f"the {self.split!r} split is left ({len(skipped)} empty, "
                f"the others refused by 'pre_filter')")
        self.save(data_list, self.processed_paths[0])
        meta: Dict[str, Any] = {'skipped': skipped}
        if document.vocab is not None:
            meta['vocab'] = document.vocab.digest
        write_meta(self.processed_paths[1], meta, self)

    def _document_hierarchy(
            self, train: Optional[List[Document]]) -> DocumentHierarchy:
        r"""The transform; the vocabulary, if any, over the training split
        (:obj:`train`, read here if :obj:`None`), saved for all splits."""
        # Token strings are left out: the ids and the vocabulary give them,
        # and every document would store its text twice over.
        if self.tokenizer is not None:
            return DocumentHierarchy(tokenizer=self.tokenizer,
                                     store_tokens=False)
        path = self.processed_paths[2]
        if osp.exists(path) and not self.force_reload:
            # Built by the other split already, from the same training data.
            vocab = Vocabulary.load(path)
        else:
            if train is None:
                train = self.read_documents(self.SPLITS[0])
            vocab = Vocabulary.build((doc.text for doc in train),
                                     min_freq=self.min_freq,
                                     max_size=self.vocab_size)
            vocab.save(path)
        return DocumentHierarchy(vocab=vocab, store_tokens=False)

    # Summary ###############################################################

    @property
    def num_classes(self) -> int:
        r"""The number of classes (also where a split lacks some)."""
        return len(self.CLASSES)

    @property
    def num_skipped(self) -> int:
        r"""How many documents of the split were skipped as empty (blank,
        or without a token for the tokenizer)."""
        return len(self.skipped)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({len(self)}, split={self.split!r})'


def _document_signal(doc: Document, transform: DocumentHierarchy,
                     name: str) -> Optional[Data]:
    r"""The signal of a document (a :class:`ValueError` names it);
    :obj:`None` for a text in which the tokenizer finds no token."""
    data = Data(text=doc.text, y=torch.tensor([doc.label]), **{
        key: torch.tensor([value])
        for key, value in doc.attrs.items()
    })
    try:
        return transform(data)
    except EmptyTextError:
        return None
    except ValueError as e:  # say which document
        raise ValueError(f'{name}: {doc.source}: {e}') from e
