r"""IMDb movie reviews of the Large Movie Review Dataset for sentiment
classification, as nested signals of their text."""
import os
import os.path as osp
import re
from typing import Any, Callable, List, Optional, Tuple

from torch_geometric.data import download_url, extract_tar

from hsa_geo.datasets.document_dataset import Document, DocumentDataset


class IMDBReviews(DocumentDataset):
    r"""The Large Movie Review Dataset from the `"Learning Word Vectors for
    Sentiment Analysis" <https://aclanthology.org/P11-1015>`_ paper (ACL
    2011): 50,000 IMDb movie reviews, half for training and half for
    testing, each labelled positive or negative. Every review becomes one
    :class:`~hsa_geo.data.NestedSignal` of its text. (Named
    :class:`IMDBReviews` because PyG's
    :class:`~torch_geometric.datasets.IMDB` is a graph of movies.)

    **Raw files.** The archive ``aclImdb_v1.tar.gz`` of the authors (see
    :attr:`url`; :meth:`download` fetches and extracts it) extracted into
    :obj:`raw_dir` (``root/raw``): one UTF-8 text file per review,
    ``aclImdb/<split>/<pos|neg>/<id>_<rating>.txt``, where ``<split>`` is
    ``train`` or ``test``, ``<id>`` numbers the reviews of a folder from
    ``0`` and ``<rating>`` is the reviewer's score out of 10 (``1`` to
    ``4`` in ``neg``, ``7`` to ``10`` in ``pos``). The unlabelled reviews of
    ``aclImdb/train/unsup`` and the other files of the archive (bags of
    words, URLs) are not read. Bytes that are not UTF-8 are read as
    ``'\ufffd'``; a hidden file (name starting with ``.``) is ignored, and
    any other file not named ``<id>_<rating>.txt`` is an error.

    **Text.** A review is one line whose line breaks are HTML tags
    ``<br />``. Two or more of them in a row (whitespace between them
    allowed) become a blank line, which
    :class:`~hsa_geo.transforms.DocumentHierarchy` reads as a paragraph
    break: that is how reviewers separate paragraphs. A single ``<br />``
    becomes one line break, which by itself ends no sentence (as
    everywhere in :class:`~hsa_geo.transforms.DocumentHierarchy`; a ``.``
    before it still does): reviewers use it inside lists and sentences as
    often as between them. Any spelling of
    the tag (``<br>``, ``<br/>``, ``<BR />``) counts; nothing else of the
    text is changed.

    **Signals.** The reviews of the split, the ``neg`` folder first, each
    folder by ``<id>``. Every review is turned into a tree of tokens ->
    words -> sentences -> paragraphs -> document by
    :class:`~hsa_geo.transforms.DocumentHierarchy`, whole (never
    truncated): ``x`` ``LongTensor [N]`` holds the token ids, ``offsets``
    ``[N, 2]`` their character spans in ``text`` (the review with its
    breaks replaced as above), ``cluster_kind`` and ``cluster_offsets`` the
    kind and span of every cluster. The ids are those of :attr:`vocab`, a
    :class:`~hsa_geo.transforms.Vocabulary` built over the training reviews
    only and used for both splits (a word that no kept training word
    matches gets :attr:`~hsa_geo.transforms.Vocabulary.unk_id`), or those
    of :obj:`tokenizer`. Further, ``y`` ``LongTensor [1]``: ``1`` for
    ``pos`` and ``0`` for ``neg``; ``rating`` ``LongTensor [1]``: the score
    out of 10; ``review_id`` ``LongTensor [1]``: the ``<id>`` of the file.

    An empty review (blank, or one in which the tokenizer finds no token)
    is skipped with a warning and listed in :attr:`skipped` as ``(file,
    reason)``. Then :obj:`pre_filter` and
    :obj:`pre_transform` apply, in this order. Every combination of split,
    vocabulary options and tokenizer is processed into files of its own,
    so they coexist under one :obj:`root`; the vocabulary is saved next to
    them (``aclImdb_vocab-<options>.json``) and shared by the splits. The
    signals batch with PyG's :class:`~torch_geometric.loader.DataLoader`;
    ``batch.hierarchy`` is the forest of their trees.

    Args:
        root (str): Root directory; the raw files go to ``root/raw``, the
            processed ones to ``root/processed``.
        split (str): ``'train'`` or ``'test'``. (default: :obj:`'train'`)
        tokenizer (optional): a HuggingFace fast tokenizer (see
            :class:`~hsa_geo.transforms.DocumentHierarchy`); then
            :attr:`vocab` is :obj:`None` and the test split needs no
            training files. (default: :obj:`None`, a
            :class:`~hsa_geo.transforms.Vocabulary` of the training reviews)
        min_freq (int): the fewest occurrences in the training reviews
            that a token needs to enter the vocabulary. (default: :obj:`1`)
        vocab_size (int, optional): keep at most this many most
            frequent tokens (besides padding and unknown).
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

    **STATS:**

    .. list-table::
        :widths: 10 10 10 10
        :header-rows: 1

        * - Split
          - #reviews
          - #positive
          - #negative
        * - train
          - 25,000
          - 12,500
          - 12,500
        * - test
          - 25,000
          - 12,500
          - 12,500
    """
    url = 'https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz'
    name = 'IMDBReviews'
    SPLITS = ('train', 'test')
    #: The class names, in label order (``y``).
    CLASSES = ('neg', 'pos')
    #: The name of a review file: ``<id>_<rating>.txt``.
    FILE_NAME = re.compile(r'(\d+)_(\d+)\.txt')
    #: Two or more HTML line breaks: a paragraph break.
    PARAGRAPH_BREAK = re.compile(r'<br\s*/?>(?:\s*<br\s*/?>)+', re.I)
    #: One HTML line break.
    LINE_BREAK = re.compile(r'<br\s*/?>', re.I)

    def __init__(
        self,
        root: str,
        split: str = 'train',
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
        super().__init__(root, split, tokenizer, min_freq, vocab_size,
                         transform, pre_transform, pre_filter, force_reload,
                         log, num_workers)

    @property
    def source_tag(self) -> str:
        return 'aclImdb'

    def raw_files_of(self, split: str) -> List[str]:
        return [f'aclImdb/{split}/{folder}' for folder in self.CLASSES]

    def download(self) -> None:
        path = download_url(self.url, self.raw_dir, log=self.log)
        extract_tar(path, self.raw_dir, log=self.log)
        os.unlink(path)

    def read_documents(self, split: str) -> List[Document]:
        documents = []
        for label, folder in enumerate(self.CLASSES):
            name = f'aclImdb/{split}/{folder}'
            path = osp.join(self.raw_dir, name)
            if not osp.isdir(path):
                raise FileNotFoundError(
                    f"{self.name}: the folder '{path}' is missing; extract "
                    f"{self.url} into '{self.raw_dir}' (or delete that "
                    f"folder to download it again)")
            for review_id, rating, file in self._review_files(path, name):
                # utf-8-sig: a byte order mark is not text.
                with open(osp.join(path, file), encoding='utf-8-sig',
                          errors='replace') as f:
                    text = self.review_text(f.read())
                documents.append(Document(
                    text, label, {'rating': rating, 'review_id': review_id},
                    f'{name}/{file}'))
        return documents

    def _review_files(self, path: str,
                      name: str) -> List[Tuple[int, int, str]]:
        r"""``(id, rating, file name)`` of the reviews in :obj:`path`,
        sorted by id."""
        found = []
        for file in os.listdir(path):
            if file.startswith('.'):  # e.g. .DS_Store of a file manager
                continue
            match = self.FILE_NAME.fullmatch(file)
            if match is None:
                raise ValueError(
                    f"{self.name}: '{name}/{file}' is not named "
                    f"'<id>_<rating>.txt' (e.g. '0_3.txt'); the folder may "
                    f"only hold the reviews of the original archive, so "
                    f"move that file out of it")
            rating = int(match[2])
            if not 1 <= rating <= 10:
                raise ValueError(
                    f"{self.name}: '{name}/{file}' gives the rating "
                    f"{rating}, but ratings are scores from 1 to 10; fix "
                    f"the file name")
            found.append((int(match[1]), rating, file))
        return sorted(found)

    @classmethod
    def review_text(cls, raw: str) -> str:
        r"""The text of a review file with its HTML line breaks replaced:
        a run of ``<br />`` by a blank line (a paragraph break), a single
        one by a line break.

        Example:
            >>> IMDBReviews.review_text('Good.<br /><br />Bad.<br />End.')
            'Good.\n\nBad.\nEnd.'
        """
        return cls.LINE_BREAK.sub('\n', cls.PARAGRAPH_BREAK.sub('\n\n', raw))
