r"""Elec: Amazon electronics product reviews for sentiment classification,
as nested signals of their text."""
import codecs
import os
import os.path as osp
from typing import Any, Callable, List, Optional

from torch_geometric.data import download_url, extract_tar

from hsa_geo.datasets.document_dataset import Document, DocumentDataset


class AmazonElec(DocumentDataset):
    r"""The Elec dataset from the `"Effective Use of Word Order for Text
    Categorization with Convolutional Neural Networks"
    <https://aclanthology.org/N15-1011>`_ paper (NAACL 2015): Amazon
    reviews of electronics products, labelled positive or negative, with a
    test set of 25,000 reviews of products that no training set reviews.
    Every review becomes one :class:`~hsa_geo.data.NestedSignal` of its
    text.

    **Raw files.** The authors' archive ``elec2.tar.gz`` (see :attr:`url`;
    :meth:`download` fetches and extracts it) extracted into
    :obj:`raw_dir` (``root/raw``) holds the folder ``elec/`` with, for the
    training sets ``elec-<size>-train`` (:attr:`TRAIN_SIZES`) and the test
    set ``elec-test``:

    - ``<name>.txt``: the reviews before tokenization, one per line;
    - ``<name>.txt.tok``: the same reviews tokenized by the authors, tokens
      separated by blanks, one per line in the same order;
    - ``<name>.cat``: the labels, one per line in the same order: ``1``
      negative, ``2`` positive.

    These names, the label encoding and the folder are those of the
    archive's own ``elec/README`` (its section "Filename Conventions") and
    of the authors' ConText scripts, which read ``elec-25k-train`` and
    ``elec-test``. The README names the training sets by their number of
    reviews, ``elec-${size}-train``; :attr:`TRAIN_SIZES` lists the sizes
    that published loaders of the archive read (``25k`` is the set of the
    paper's main results). Only the files of the chosen sets are read. Lines
    end at ``'\n'`` only (a stray ``'\r'`` inside a review does not split
    it, a trailing one is dropped); bytes that are not UTF-8 are read as
    ``'\ufffd'``.

    **Text.** A review is one line, hence one paragraph: the tree has
    sentences -> words -> tokens under it. With :obj:`tokenized`, the
    ``.txt.tok`` file is read instead of ``.txt``; its blanks before
    punctuation still end sentences (a ``.`` followed by a blank and a
    character that is not a lowercase letter), but its tokens are split
    again by the tokenizer of :attr:`vocab` or :obj:`tokenizer`.

    **Signals.** The reviews of the set in file order. Every review is
    turned into a tree of tokens -> words -> sentences -> paragraph ->
    document by :class:`~hsa_geo.transforms.DocumentHierarchy`, whole
    (never truncated): ``x`` ``LongTensor [N]`` holds the token ids,
    ``offsets`` ``[N, 2]`` their character spans in ``text``,
    ``cluster_kind`` and ``cluster_offsets`` the kind and span of every
    cluster. The ids are those of :attr:`vocab`, a
    :class:`~hsa_geo.transforms.Vocabulary` built over the chosen training
    set only and used for both splits (a word that no kept training word
    matches gets :attr:`~hsa_geo.transforms.Vocabulary.unk_id`), or those
    of :obj:`tokenizer`. Further, ``y`` ``LongTensor [1]``: ``1`` for
    positive (``2`` in ``.cat``) and ``0`` for negative (``1``); ``line``
    ``LongTensor [1]``: the review's line in its file, from ``0``.

    An empty review (blank, or one in which the tokenizer finds no token)
    is skipped with a warning and listed in :attr:`skipped` as ``(file and
    line, reason)``. Then :obj:`pre_filter`
    and :obj:`pre_transform` apply, in this order. Every combination of
    split, training size, :obj:`tokenized`, vocabulary options and
    tokenizer is processed into files of its own, so they coexist under one
    :obj:`root`; the vocabulary is saved next to them
    (``elec<size>[-tok]_vocab-<options>.json``) and shared by the splits.
    The signals batch with PyG's
    :class:`~torch_geometric.loader.DataLoader`; ``batch.hierarchy`` is the
    forest of their trees.

    Args:
        root (str): Root directory; the raw files go to ``root/raw``, the
            processed ones to ``root/processed``.
        split (str): ``'train'`` or ``'test'``. (default: :obj:`'train'`)
        train_size (str): the training set, one of :attr:`TRAIN_SIZES`;
            also the vocabulary's source for the test split.
            (default: :obj:`'25k'`)
        tokenized (bool): read the authors' tokenized ``.txt.tok`` files
            instead of the ``.txt`` ones. (default: :obj:`False`)
        tokenizer (optional): a HuggingFace fast tokenizer (see
            :class:`~hsa_geo.transforms.DocumentHierarchy`); then
            :attr:`vocab` is :obj:`None` and the test split needs no
            training files. (default: :obj:`None`, a
            :class:`~hsa_geo.transforms.Vocabulary` of the training reviews)
        min_freq (int): the fewest occurrences in the training reviews
            that a token needs to enter the vocabulary. (default: :obj:`1`)
        vocab_size (int, optional): keep at most this many most frequent
            tokens (besides padding and unknown).
            (default: :obj:`None`, all)
        transform (callable, optional): A function/transform that takes in
            a :class:`~hsa_geo.data.NestedSignal` and returns a transformed
            version. The data object will be transformed before every
            access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :class:`~hsa_geo.data.NestedSignal` and returns a
            transformed version. The data object will be transformed before
            being saved to disk. (default: :obj:`None`)
        pre_filter (callable, optional): A function that takes in a
            :class:`~hsa_geo.data.NestedSignal` and returns a boolean value,
            indicating whether the data object should be included in the
            final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset
            (and rebuild the vocabulary); needed to change the
            :obj:`pre_transform` or :obj:`pre_filter` of a split processed
            before (see :mod:`~hsa_geo.datasets.processed_meta`).
            (default: :obj:`False`)
        log (bool, optional): Whether to print to the console and show a
            progress bar while processing. (default: :obj:`True`)
        num_workers (int): worker processes that build the documents'
            trees while processing (:func:`~hsa_geo.datasets.parallel_map`);
            ``0`` builds them in this process. The signals are the same, in
            the same order; :obj:`pre_filter` and :obj:`pre_transform` run
            in this process. (default: :obj:`0`)
    """
    url = 'http://riejohnson.com/software/elec2.tar.gz'
    name = 'AmazonElec'
    SPLITS = ('train', 'test')
    #: The class names, in label order (``y``).
    CLASSES = ('negative', 'positive')
    #: The training sets, by their number of reviews.
    TRAIN_SIZES = ('02k', '05k', '10k', '25k', '50k', '100k', '200k')
    #: The labels of the ``.cat`` files, and their ``y``.
    LABELS = {'1': 0, '2': 1}

    def __init__(
        self,
        root: str,
        split: str = 'train',
        train_size: str = '25k',
        tokenized: bool = False,
        tokenizer: Any = None,
        min_freq: int = 1,
        vocab_size: Optional[int] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
        num_workers: int = 0,
    ) -> None:
        if train_size not in self.TRAIN_SIZES:
            raise ValueError(
                f"{self.name}: 'train_size' must be one of "
                f"{self.TRAIN_SIZES} (the training sets "
                f"elec-<size>-train of the archive), got {train_size!r}")
        if not isinstance(tokenized, bool):
            raise TypeError(f"{self.name}: 'tokenized' must be True (read "
                            f"the .txt.tok files) or False (.txt), got "
                            f"{tokenized!r}")
        self.train_size = train_size
        self.tokenized = tokenized
        super().__init__(root, split, tokenizer, min_freq, vocab_size,
                         transform, pre_transform, pre_filter, force_reload,
                         log, num_workers)

    @property
    def source_tag(self) -> str:
        return f"elec{self.train_size}{'-tok' if self.tokenized else ''}"

    def set_name(self, split: str) -> str:
        r"""The file name stem of :obj:`split`, e.g.
        ``'elec-25k-train'``."""
        return f'elec-{self.train_size}-train' if split == 'train' else \
            'elec-test'

    def raw_files_of(self, split: str) -> List[str]:
        text = 'txt.tok' if self.tokenized else 'txt'
        stem = f'elec/{self.set_name(split)}'
        return [f'{stem}.{text}', f'{stem}.cat']

    def download(self) -> None:
        path = download_url(self.url, self.raw_dir, log=self.log)
        extract_tar(path, self.raw_dir, log=self.log)
        os.unlink(path)

    def read_documents(self, split: str) -> List[Document]:
        text_name, label_name = self.raw_files_of(split)
        texts = self._lines(text_name)
        labels = self._lines(label_name)
        if len(texts) != len(labels):
            raise ValueError(
                f"{self.name}: '{text_name}' has {len(texts)} reviews but "
                f"'{label_name}' {len(labels)} labels; they must match line "
                f"by line, so extract both from the same archive again")
        documents = []
        for i, (text, label) in enumerate(zip(texts, labels)):
            y = self.LABELS.get(label.strip())
            if y is None:
                raise ValueError(
                    f"{self.name}: line {i + 1} of '{label_name}' is "
                    f"{label!r}; a label is '1' (negative) or '2' "
                    f"(positive)")
            documents.append(Document(text, y, {'line': i},
                                      f"'{text_name}' line {i + 1}"))
        return documents

    def _lines(self, name: str) -> List[str]:
        r"""The lines of the raw file :obj:`name`, split at ``'\n'``
        only."""
        path = osp.join(self.raw_dir, name)
        if not osp.isfile(path):
            raise FileNotFoundError(
                f"{self.name}: '{path}' is missing; extract {self.url} into "
                f"'{self.raw_dir}' (or delete the folder 'elec' there to "
                f"download it again)")
        with open(path, 'rb') as f:
            raw = f.read()
        # A byte order mark is an encoding signature, not text.
        raw = raw.removeprefix(codecs.BOM_UTF8)
        # Not str.splitlines: it also splits at '\r', '\x0b', '\x1c',
        # '\u2028', ..., which a review may hold, and would shift every
        # later review against its label.
        lines = raw.split(b'\n')
        if lines and lines[-1] == b'':
            lines.pop()  # the line break that ends the file
        return [line.removesuffix(b'\r').decode('utf-8', errors='replace')
                for line in lines]
