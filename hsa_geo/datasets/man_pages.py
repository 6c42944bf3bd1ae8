r"""ManPages: the Linux manual pages of Debian's ``manpages`` and
``manpages-dev`` packages, read offline, as nested signals labelled by
their manual section."""
import bz2
import codecs
import gzip
import hashlib
import json
import lzma
import os
import os.path as osp
import re
import shutil
import subprocess
import unicodedata
from collections import Counter
from functools import partial
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Union)

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from hsa_geo._checks import check_int, check_num_workers
from hsa_geo.data import Hierarchy, NestedSignal
from hsa_geo.datasets.parallel_map import parallel_map
from hsa_geo.datasets.processed_meta import (folder_record_ignored,
                                             load_processed, write_meta)
from hsa_geo.datasets.tokenizer_tag import tokenizer_tag
from hsa_geo.transforms import DocumentHierarchy, Vocabulary

PathLike = Union[str, os.PathLike]
# A page in plain text: its sections, each (heading, paragraphs).
Section = Tuple[str, List[str]]
# A page left out: (page, kind, detail); kinds as in ManPages.SKIP_KINDS.
Skipped = Tuple[str, str, str]


class ManPages(InMemoryDataset):
    r"""The Linux manual pages (`man-pages <https://www.kernel.org/doc/
    man-pages/>`_) as a corpus of long, structured real documents, read
    offline from Debian's ``manpages`` and ``manpages-dev`` packages
    (system calls, library functions, devices, file formats and overviews;
    ``apt install manpages manpages-dev``). Every page is one
    :class:`~hsa_geo.data.NestedSignal` whose leaves are its tokens, whose
    tree is its layout (page -> sections -> paragraphs -> sentences ->
    words -> subword tokens) and whose label is its manual section.

    **Pages.** By default the pages installed by the two packages (listed
    by ``dpkg -L``); or the page files and folders in :obj:`paths` (a
    folder is searched recursively). A page is a file in a folder named
    ``man<section>`` (``man2``, ``man3``, ``man3type``), gzip-, bzip2- or
    xz-compressed or plain. :meth:`download` copies them into
    :obj:`raw_dir`, with a list ``pages.json``, so that a processed
    dataset is rebuilt from its own copy. Left out, and listed in
    :attr:`skipped` as ``(page, kind, detail)``:

    - ``'alias'``: a symbolic link (Debian turns most one-line ``.so``
      stubs of man-pages into links to the page they name);
    - ``'redirect'``: a ``.so`` stub, a page that only includes another;
    - ``'empty'``: a page without text;
    - ``'rare section'``: a page of a section with fewer than
      :obj:`min_pages_per_section` pages.

    **Labels.** ``y`` ``LongTensor [1]`` is the index in :attr:`sections`
    of the page's section, the number of its ``man<N>`` folder: the
    sub-sections of man-pages (``3type``, ``3const``, ``3head``, ``2type``:
    types, constants and headers of a library or of the kernel) are part
    of their section, which holds them in Debian (``man3/size_t.3type``);
    the file's own section is kept in ``section`` (:obj:`str`). The
    sections with at least :obj:`min_pages_per_section` pages are the
    classes, sorted by number.

    **From roff to text.** The page source (roff with the ``man`` macros)
    becomes plain text, and only the layout that the tree needs is kept:

    - ``.SH`` starts a section, its heading (``DESCRIPTION``) the first
      paragraph of the section; text before the first ``.SH`` is a section
      without heading;
    - paragraphs end at ``.PP``, ``.LP``, ``.P``, ``.TP``, ``.IP``,
      ``.HP``, ``.RS``, ``.RE``, ``.sp``, blank lines and around code and
      tables; ``.SS`` headings are paragraphs of their own; the tag of
      ``.TP`` (the next line) and of ``.IP`` opens the paragraph it tags;
      ``.br`` and ``.TQ`` are line breaks within a paragraph;
    - font macros (``.B``, ``.I``, ``.BR``, ``.IR``, ``.BI``, ...) give
      their arguments, joined by spaces (``.B``, ``.I``, ``.SM``, ``.SB``)
      or concatenated (the alternating ones); font and size escapes
      (``\fB``, ``\fI``, ``\fR``, ``\fP``, ``\s-1``) are dropped;
    - special characters become Unicode (``\-`` ``-``, ``\(em`` ``—``,
      ``\[aq]`` ``'``, ``\(bu`` ``•``, ``\e`` ``\``, ``\[u00E9]`` ``é``,
      ``\*(lq`` ``“``, strings set by ``.ds``); ``\&``, ``\%`` and other
      zero-width escapes vanish, and ``\c`` joins two lines;
    - code (``.nf``/``.fi``, ``.EX``/``.EE``) is kept line by line, as a
      paragraph of its own (blank lines in it separate paragraphs);
    - tables (``.TS``/``.TE``, tbl) are a paragraph of their own, one line
      per row, cells separated by a tab; format lines and rules are
      dropped, ``T{ ... T}`` text blocks are converted as text;
    - links (``.UR``/``.UE``, ``.MT``/``.ME``) give their text, then the
      address in angle brackets;
    - comments (``.\"``, ``\"``), macro definitions (``.de``),
      conditionals (``.if``, ``.ie``, ``.el``) and formatting requests
      (``.TH``, ``.in``, ``.ad``, ``.nh``, ``.ft``, ``.PD``, ...) give no
      text; other macros give their arguments as text.

    In ``text``, paragraphs are separated by a blank line and sections by
    two, so the text alone gives the paragraphs of
    :class:`~hsa_geo.transforms.DocumentHierarchy`.

    **Tree.** Every section is turned by
    :class:`~hsa_geo.transforms.DocumentHierarchy` into tokens -> words ->
    sentences -> paragraphs -> section (see there how sentences and words
    are found, and when a word gets no node of its own), and the sections
    are children of the page root. Leaves are the tokens in reading order;
    clusters are numbered bottom-up, each level in reading order: words,
    sentences, paragraphs, sections, then the root. Pages are never
    truncated. The tokens are the ids of :attr:`vocab`, a
    :class:`~hsa_geo.transforms.Vocabulary` of the training pages' texts
    (tokens seen at least :obj:`min_freq` times), or of :obj:`tokenizer`
    (a HuggingFace fast tokenizer, then without special tokens: a page
    would get one ``[CLS]`` per section).

    **Output.** Every page is a :class:`~hsa_geo.data.NestedSignal` with
    ``x`` ``LongTensor [N]`` (token ids), ``offsets`` ``[N, 2]`` (character
    span of every token in ``text``), ``cluster_kind`` ``[M]`` (index into
    :attr:`KINDS`), ``cluster_offsets`` ``[M, 2]`` (character span of
    every cluster in ``text``), ``y``, and the strings ``text``, ``page``
    (``'man3/printf.3'``), ``name`` (``'printf'``) and ``section``
    (``'3'``). Then :obj:`pre_filter` and :obj:`pre_transform` apply, in
    this order.

    **Split.** :meth:`get_idx_split` gives a training, validation and test
    part (80/10/10) by a hash of the page name (``'man3/printf.3'``), so a
    page keeps its part when pages are added or removed; the vocabulary
    sees the training pages only.

    Args:
        root (str): Root directory; the copied pages go to
            ``root/raw/<source>``, the processed files to
            ``root/processed/<source>``, where ``<source>`` is
            ``'installed'`` or, with :obj:`paths`, a hash of them.
        paths (list of str, optional): page files and folders to read
            instead of the installed packages. (default: :obj:`None`)
        tokenizer (optional): a HuggingFace fast tokenizer (see
            :class:`~hsa_geo.transforms.DocumentHierarchy`); then
            :attr:`vocab` is :obj:`None`. (default: :obj:`None`)
        min_pages_per_section (int): the fewest pages a section needs to be
            a class. (default: :obj:`20`)
        min_freq (int): the fewest occurrences in the training pages a
            token needs to enter :attr:`vocab`. (default: :obj:`2`)
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
        force_reload (bool, optional): Whether to re-process the dataset;
            needed to change the :obj:`pre_transform` or :obj:`pre_filter`
            of a variant processed before (see
            :mod:`~hsa_geo.datasets.processed_meta`).
            (default: :obj:`False`)
        log (bool, optional): Whether to print to the console and show a
            progress bar while processing. (default: :obj:`True`)
        num_workers (int): worker processes that build the pages' trees
            while processing (:func:`~hsa_geo.datasets.parallel_map`); ``0``
            builds them in this process. The signals are the same, in the
            same order; :obj:`pre_filter` and :obj:`pre_transform` run in
            this process. (default: :obj:`0`)

    With the defaults, on ``manpages`` and ``manpages-dev`` 6.03 (Debian
    12), :attr:`sections` are ``'2'``, ``'3'``, ``'4'``, ``'5'`` and
    ``'7'``.
    """
    #: The packages whose pages are read by default.
    PACKAGES = ('manpages', 'manpages-dev')
    #: Cluster kinds, as stored in ``cluster_kind``.
    KINDS = ('page', 'section', 'paragraph', 'sentence', 'word')
    #: Why a page was left out, as in :attr:`skipped`.
    SKIP_KINDS = ('alias', 'redirect', 'empty', 'rare section')
    #: The parts of :meth:`get_idx_split` and the share of the pages each
    #: gets.
    SPLIT = (('train', 0.8), ('valid', 0.1), ('test', 0.1))

    def __init__(
        self,
        root: str,
        paths: Optional[Sequence[PathLike]] = None,
        tokenizer: Any = None,
        min_pages_per_section: int = 20,
        min_freq: int = 2,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
        num_workers: int = 0,
    ) -> None:
        self.paths = _check_paths(paths)
        self.num_workers = check_num_workers(num_workers)
        self.tokenizer = tokenizer
        if tokenizer is not None:  # refused here, before any file is read
            DocumentHierarchy(tokenizer=tokenizer)
        self.min_pages_per_section = check_int(min_pages_per_section,
                                               'min_pages_per_section')
        self.min_freq = check_int(min_freq, 'min_freq')
        with folder_record_ignored():  # load_processed checks the variant
            super().__init__(root, transform, pre_transform, pre_filter,
                             log=log, force_reload=force_reload)
        meta = load_processed(self)
        self.sections: List[str] = meta['sections']
        self.skipped: List[Skipped] = [tuple(s) for s in meta['skipped']]
        self._parts: List[str] = meta['parts']
        self.vocab: Optional[Vocabulary] = None
        if tokenizer is None:
            self.vocab = Vocabulary.load(self.processed_paths[2])

    # Options ###############################################################

    @property
    def source(self) -> str:
        r"""``'installed'``, or ``'paths-<hash>'`` for :obj:`paths`: the
        folder of the raw and processed files under :obj:`root`."""
        if self.paths is None:
            return 'installed'
        key = json.dumps(self.paths).encode()
        return 'paths-' + hashlib.sha1(key).hexdigest()[:12]

    @property
    def processed_stem(self) -> str:
        r"""The name of the processed files, without suffix: every option
        that changes the signals."""
        tag = 'vocab' if self.tokenizer is None else \
            tokenizer_tag(self.tokenizer)
        return (f'min{self.min_pages_per_section}_{tag}'
                + (f'{self.min_freq}' if self.tokenizer is None else ''))

    # PyG's dataset interface ###############################################

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, 'raw', self.source)

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, 'processed', self.source)

    @property
    def raw_file_names(self) -> List[str]:
        return ['pages.json']

    @property
    def processed_file_names(self) -> List[str]:
        names = [f'{self.processed_stem}.pt',
                 f'{self.processed_stem}_meta.json']
        if self.tokenizer is None:
            names.append(f'{self.processed_stem}_vocab.json')
        return names

    def download(self) -> None:
        r"""Copies the pages into :obj:`raw_dir` and lists them in
        ``pages.json``: nothing is downloaded. Raises a
        :class:`FileNotFoundError` that names the packages to install when
        the default pages are not installed."""
        pages: Dict[str, Optional[str]] = {}  # page file -> alias target
        names: Dict[str, str] = {}  # page name -> its file
        for path in find_pages(self.paths, self.PACKAGES):
            page = osp.join(osp.basename(osp.dirname(path)),
                            osp.basename(path))
            # 'man3/foo.3' and 'man3/foo.3.gz' are the same page.
            if _page_name(page) in names:
                raise ValueError(
                    f"ManPages: two page files are '{page}' (one is "
                    f"'{path}', the other '{names[_page_name(page)]}'); "
                    f"every page needs its own file name within its "
                    f"man<section> folder, compressed or not, so pass only "
                    f"one of them in 'paths'")
            names[_page_name(page)] = path
            pages[page] = os.readlink(path) if osp.islink(path) else None
            if pages[page] is None:
                os.makedirs(osp.join(self.raw_dir, osp.dirname(page)),
                            exist_ok=True)
                shutil.copyfile(path, osp.join(self.raw_dir, page))
        # Written last: its presence means that the copy is complete.
        with open(self.raw_paths[0], 'w') as f:
            json.dump({'pages': sorted(pages), 'aliases': {
                p: t for p, t in pages.items() if t is not None}}, f,
                indent=0)

    def process(self) -> None:
        with open(self.raw_paths[0]) as f:
            listing = json.load(f)
        texts, skipped = self._read_pages(listing)
        sections, rare = _classes(texts, self.min_pages_per_section)
        skipped += rare
        texts = {page: t for page, t in texts.items() if page not in
                 {p for p, _, _ in rare}}
        parts = {page: _part(page, self.SPLIT) for page in texts}
        builder = self._builder(
            t for page, t in texts.items() if parts[page] == 'train')

        data_list: List[NestedSignal] = []
        kept_parts: List[str] = []
        built = parallel_map(
            partial(_page_data, builder=builder, sections=sections),
            list(texts.items()), num_workers=self.num_workers,
            desc='ManPages', log=self.log)
        for page, data in zip(texts, built):
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)
            kept_parts.append(parts[page])
        if not data_list:
            raise ValueError(
                f"ManPages: no page is left of the {len(listing['pages'])} "
                f"in '{self.raw_dir}' ({len(skipped)} skipped, the others "
                f"refused by 'pre_filter')")
        self.save(data_list, self.processed_paths[0])
        write_meta(self.processed_paths[1], {
            'sections': sections, 'skipped': skipped, 'parts': kept_parts},
            self)

    def _read_pages(self, listing: Dict[str, Any]
                    ) -> Tuple[Dict[str, List[Section]], List[Skipped]]:
        r"""The text of every page that has some (by page name, sorted),
        and the aliases, redirects and empty pages."""
        texts: Dict[str, List[Section]] = {}
        skipped: List[Skipped] = []
        for page in listing['pages']:
            if page in listing['aliases']:
                skipped.append((_page_name(page), 'alias',
                                f"a link to {listing['aliases'][page]}"))
                continue
            reader = _RoffReader()
            reader.read(_read_source(osp.join(self.raw_dir, page)))
            sections = reader.sections()
            if not sections and reader.redirect is not None:
                skipped.append((_page_name(page), 'redirect',
                                f'.so {reader.redirect}'))
            elif not sections:
                skipped.append((_page_name(page), 'empty', 'no text'))
            else:
                texts[_page_name(page)] = sections
        return texts, skipped

    def _builder(self, train: Iterator[List[Section]]) -> DocumentHierarchy:
        r"""The section builder; the vocabulary over the training pages."""
        if self.tokenizer is not None:
            return DocumentHierarchy(tokenizer=self.tokenizer,
                                     special_tokens='drop',
                                     store_tokens=False)
        vocab = Vocabulary.build((_join_page(s)[0] for s in train),
                                 min_freq=self.min_freq)
        vocab.save(self.processed_paths[2])
        return DocumentHierarchy(vocab=vocab, store_tokens=False)

    # Splits and summary ####################################################

    def get_idx_split(self) -> Dict[str, Tensor]:
        r"""The training, validation and test indices, as OGB's
        ``get_idx_split`` returns them: a :obj:`dict` with the keys
        ``'train'``, ``'valid'`` and ``'test'``, each a sorted
        ``LongTensor`` of indices into this dataset (see *Split*), also
        where it is a subset or a shuffle of the processed pages."""
        parts = [self._parts[i] for i in self.indices()]
        return {
            part: torch.tensor([i for i, p in enumerate(parts)
                                if p == part], dtype=torch.long)
            for part, _ in self.SPLIT
        }

    @property
    def num_classes(self) -> int:
        r"""The number of manual sections that are classes."""
        return len(self.sections)

    @property
    def num_skipped(self) -> int:
        r"""How many pages were left out (see :attr:`skipped`)."""
        return len(self.skipped)

    def skipped_counts(self) -> Dict[str, int]:
        r"""How many pages were left out for each reason of
        :attr:`SKIP_KINDS`."""
        counts = Counter(kind for _, kind, _ in self.skipped)
        return {kind: counts[kind] for kind in self.SKIP_KINDS}

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, '
                f'sections={self.sections})')


# Finding and reading pages #################################################

# A folder of pages, e.g. man3 or man3type: group 1 is the label.
_SECTION_DIR = re.compile(r'man(\d)\w*')
_COMPRESSED = {'.gz': gzip.open, '.bz2': bz2.open, '.xz': lzma.open}


def find_pages(paths: Optional[Sequence[PathLike]] = None,
               packages: Sequence[str] = ManPages.PACKAGES) -> List[str]:
    r"""The page files (and links, see :attr:`ManPages.SKIP_KINDS`) that
    :class:`ManPages` reads, sorted: those that ``dpkg`` lists for
    :obj:`packages`, or the files in :obj:`paths` (a folder is searched
    recursively for ``man<section>`` folders).

    Args:
        paths (list of str, optional): page files and folders.
            (default: :obj:`None`, the installed :obj:`packages`)
        packages (tuple of str): the Debian packages whose pages are read
            without :obj:`paths`. (default: :attr:`ManPages.PACKAGES`)
    """
    paths = _check_paths(paths)
    if paths is None:
        return _installed_pages(packages)
    found = []
    for path in paths:
        if osp.isdir(path):
            found += [osp.join(d, f) for d, _, files in os.walk(path)
                      if _SECTION_DIR.fullmatch(osp.basename(d))
                      for f in files]
        elif not osp.lexists(path):
            raise ValueError(f"ManPages: 'paths' names '{path}', which "
                             f"does not exist; pass page files or "
                             f"folders that hold man<section> folders")
        elif not _SECTION_DIR.fullmatch(
                osp.basename(osp.dirname(path))):
            raise ValueError(
                f"ManPages: the page '{path}' is not in a folder named "
                f"man<section> (e.g. man3), which gives its label; move "
                f"it into one")
        else:
            found.append(path)
    if not found:
        raise ValueError(f"ManPages: 'paths' = {paths} holds no "
                         f"page: no file in a folder named man<section> "
                         f"(e.g. man3/printf.3.gz)")
    return sorted(found)


def _check_paths(paths: Any) -> Optional[List[str]]:
    if paths is None:
        return None
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(
            paths, Sequence):
        raise TypeError(f"'paths' must be a list of page files and folders, "
                        f"e.g. ['/usr/share/man/man2'], got {paths!r}")
    for i, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"paths[{i}] = {path!r} is a "
                            f"{type(path).__name__}, not a path (str)")
    return sorted(osp.abspath(os.fspath(path)) for path in paths)


def _installed_pages(packages: Sequence[str]) -> List[str]:
    r"""The page files (and links) that dpkg lists for :obj:`packages`."""
    how = (f"install them with 'apt install {' '.join(packages)}', or pass "
           f"'paths' to read pages from elsewhere")
    try:
        listed = subprocess.run(['dpkg', '-L', *packages], text=True,
                                capture_output=True)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"ManPages reads the pages of the Debian packages "
            f"{', '.join(packages)}, but 'dpkg' is not found; on Debian or "
            f"Ubuntu {how}") from None
    if listed.returncode != 0:
        raise FileNotFoundError(
            f"ManPages reads the pages of the Debian packages "
            f"{', '.join(packages)}, which are not installed "
            f"({listed.stderr.strip()}); {how}")
    return sorted(
        path for path in listed.stdout.splitlines()
        if _SECTION_DIR.fullmatch(osp.basename(osp.dirname(path)))
        and osp.basename(osp.dirname(osp.dirname(path))) == 'man'
        and (osp.isfile(path) or osp.islink(path)))


def _read_source(path: str) -> str:
    opener = _COMPRESSED.get(osp.splitext(path)[1], open)
    with opener(path, 'rb') as f:
        # A byte order mark would hide the first request.
        raw = f.read().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:  # a few old pages are Latin-1
        return raw.decode('latin-1')


def read_page(path: PathLike) -> Tuple[str, List[Tuple[int, int]]]:
    r"""The text of a page file as :class:`ManPages` stores it in
    ``text``, and the character span of every section in it: the texts
    that :class:`~hsa_geo.transforms.DocumentHierarchy` turns into the
    trees of the sections. ``('', [])`` for a page without text or one
    that only includes another (``.so``).

    Args:
        path (str): a page file, gzip-, bzip2- or xz-compressed or plain.
    """
    reader = _RoffReader()
    reader.read(_read_source(os.fspath(path)))
    sections = reader.sections()
    return _join_page(sections) if sections else ('', [])


def _page_name(page: str) -> str:
    r"""``'man3/printf.3.gz'`` -> ``'man3/printf.3'``."""
    stem, ext = osp.splitext(page)
    return stem if ext in _COMPRESSED else page


def _label(page: str) -> str:
    return _SECTION_DIR.fullmatch(osp.dirname(page)).group(1)


def _name(page: str) -> Tuple[str, str]:
    r"""``'man3/size_t.3type'`` -> ``('size_t', '3type')``; the folder's
    section where the file name has none."""
    name, dot, section = osp.basename(page).rpartition('.')
    if dot and section[:1] == _label(page):
        return name, section
    return osp.basename(page), _label(page)


def _classes(texts: Dict[str, List[Section]], least: int
             ) -> Tuple[List[str], List[Skipped]]:
    r"""The sections with at least :obj:`least` pages, and the pages of the
    others."""
    counts = Counter(_label(page) for page in texts)
    sections = sorted((s for s, c in counts.items() if c >= least), key=int)
    if not sections:
        raise ValueError(
            f"ManPages: no manual section has min_pages_per_section="
            f"{least} pages (the sections have {dict(counts)}); lower "
            f"'min_pages_per_section'")
    rare = [(page, 'rare section', f'section {_label(page)} has '
             f'{_count_pages(counts[_label(page)])}, fewer than {least}')
            for page in texts if _label(page) not in sections]
    return sections, rare


def _count_pages(count: int) -> str:
    return f"{count} page{'s' if count != 1 else ''}"


def _part(page: str, split: Tuple[Tuple[str, float], ...]) -> str:
    r"""The part of a page, by the hash of its name: the same on every
    machine (unlike Python's ``hash``)."""
    digest = hashlib.sha1(page.encode('utf-8')).digest()
    position = int.from_bytes(digest[:8], 'big') / 2.0**64
    for part, share in split:
        position -= share
        if position < 0:
            return part
    return split[-1][0]


# The tree of a page ########################################################

_PARAGRAPH_BREAK = '\n\n'
_SECTION_BREAK = '\n\n\n'


def _join_page(sections: List[Section]) -> Tuple[str, List[Tuple[int, int]]]:
    r"""The text of a page (NFC) and the character span of every section in
    it."""
    texts = [unicodedata.normalize('NFC', _PARAGRAPH_BREAK.join(
        ([heading] if heading else []) + paragraphs))
        for heading, paragraphs in sections]
    spans, start = [], 0
    for text in texts:
        spans.append((start, start + len(text)))
        start += len(text) + len(_SECTION_BREAK)
    return _SECTION_BREAK.join(texts), spans


def _page_data(page_sections: Tuple[str, List[Section]],
               builder: DocumentHierarchy, sections: List[str]
               ) -> NestedSignal:
    r"""The signal of a page (name, sections of text) with its label
    (the index of its section in :obj:`sections`) and names."""
    page, text = page_sections
    data = _page_signal(text, builder)
    data.y = torch.tensor([sections.index(_label(page))])
    data.page, data.name, data.section = page, *_name(page)
    return data


def _page_signal(sections: List[Section],
                 builder: DocumentHierarchy) -> NestedSignal:
    r"""The nested signal of a page: one :class:`DocumentHierarchy` tree
    per section, their roots (kind ``'document'`` there) the sections,
    under one page root."""
    text, spans = _join_page(sections)
    built = [builder(text[start:end]) for start, end in spans]
    n = sum(b.num_nodes for b in built)
    # DocumentHierarchy's kinds (document, paragraph, sentence, word) are
    # ours from 'section' on.
    kind = torch.cat([b.cluster_kind + 1 for b in built])
    # Bottom-up, each level in reading order: a stable sort by kind.
    order = torch.sort(-kind, stable=True).indices
    shift = [torch.tensor(start) for start, _ in spans]
    offsets = torch.cat([b.cluster_offsets + s for b, s in zip(built, shift)])
    data = Data(
        text=text,
        x=torch.cat([b.x for b in built]),
        offsets=torch.cat([b.offsets + s for b, s in zip(built, shift)]),
        cluster_kind=torch.cat([kind[order], torch.tensor([0])]),
        cluster_offsets=torch.cat([offsets[order], torch.tensor(
            [[spans[0][0], spans[-1][1]]])]),
        num_nodes=n)
    parent = _joined_parent([b.hierarchy.parent for b in built],
                            [b.num_nodes for b in built], order)
    return NestedSignal.from_data(data, Hierarchy.from_parent(parent, n))


def _joined_parent(parents: List[Tensor], leaves: List[int],
                   order: Tensor) -> Tensor:
    r"""The parent vector of trees (given by their parent vectors and
    leaf counts) joined under a new root: the leaves of all trees first,
    then their clusters in :obj:`order` (positions among all clusters,
    tree by tree), then the root."""
    n, root = sum(leaves), sum(leaves) + order.numel()
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(order.numel())
    parent = torch.full((root + 1, ), -1, dtype=torch.long)
    leaf_base, cluster_base = 0, 0
    for local, n_local in zip(parents, leaves):
        m = local.numel() - n_local
        # Local cluster c is node n + new_id[cluster_base + c]; the local
        # root (parent -1) hangs under the new root.
        cluster = cluster_base + (local - n_local).clamp(min=0)
        up = torch.where(local < 0, root, n + new_id[cluster])
        parent[leaf_base:leaf_base + n_local] = up[:n_local]
        parent[n + new_id[cluster_base:cluster_base + m]] = up[n_local:]
        leaf_base += n_local
        cluster_base += m
    return parent


# From roff to text #########################################################

# Special characters (\(xx, \[xx]) and the strings (\*(xx) man pages use.
_GLYPHS = {
    'em': '\u2014', 'en': '\u2013', 'hy': '-', 'mi': '-', 'aq': "'",
    'dq': '"', 'lq': '\u201c', 'rq': '\u201d', 'oq': '\u2018',
    'cq': '\u2019', 'bu': '\u2022', 'ha': '^', 'ti': '~', 'ga': '`',
    'rs': '\\', 'sl': '/', 'co': '\u00a9', 'rg': '\u00ae', 'tm': '\u2122',
    'mu': '\u00d7', 'di': '\u00f7', '+-': '\u00b1', '<=': '\u2264',
    '>=': '\u2265', '!=': '\u2260', '->': '\u2192', '<-': '\u2190',
    'la': '\u27e8', 'ra': '\u27e9', 'de': '\u00b0', 'dg': '\u2020',
    'fm': '\u2032', 'sd': '\u2033', 'sc': '\u00a7', 'ps': '\u00b6',
    '12': '\u00bd', '14': '\u00bc', '34': '\u00be', 'ct': '\u00a2',
    '^o': '\u00f4', ':a': '\u00e4', ':A': '\u00c4', ':o': '\u00f6',
    ':u': '\u00fc', 'ss': '\u00df', 'pl': '+', 'eq': '=', 'lB': '[',
    'rB': ']', 'lC': '{', 'rC': '}', 'ba': '|', 'or': '|', 'at': '@',
    'sh': '#', 'Do': '$', 'tno': '~', 'ua': '\u2191', 'da': '\u2193',
}
_STRINGS = {'lq': '\u201c', 'rq': '\u201d', 'R': '\u00ae',
            'Tm': '\u2122', '-': '-', '<': '\u27e8', '>': '\u27e9'}
# One-character escapes; the others give the character itself.
_CHARS = {
    '-': '-', 'e': '\\', '\\': '\\', ' ': ' ', '~': ' ', '0': ' ',
    't': '\t', "'": '\u00b4', '`': '`', '.': '.', '&': '', ':': '',
    '%': '', '|': '', '^': '', '/': '', ',': '', ')': '', '{': '', '}': '',
    'c': '', 'r': '', 'u': '', 'd': '', 'p': '', 'z': '', 'a': '',
}
_ESCAPE = re.compile(r"""\\(?:
      ["\#].*                                       # comment
    | \[(?P<bracket>[^\]]*)\]                       # \[name]
    | \((?P<paren>..)                               # \(xx
    | \*(?:\[(?P<sb>[^\]]*)\]|\((?P<sp>..)|(?P<s1>.))   # strings
    | [fFnkmMgYV$](?:\[[^\]]*\]|\(..|.)             # fonts, registers
    | s(?:[-+]?\(\d\d|\([-+]?\d\d|\[[^\]]*\]|'[^']*'|[-+]?\d)  # sizes
    | [hvwHlLNbxoDXSRZAB](?P<q>[^\s\\]).*?(?P=q)    # quoted arguments
    | (?P<char>.)
)""", re.X)
# Requests and macros that give no text: formatting, titles, registers.
_SILENT = {
    'TH', 'in', 'ad', 'na', 'nh', 'hy', 'ft', 'ta', 'ti', 'PD', 'ne',
    'nr', 'bp', 'll', 'ps', 'vs', 'UC', 'DT', 'ce', 'cs', 'ss', 'lf', 'mso',
    'hw', 'tr', 'rm', 'ns', 'rs', 'ev', 'fc', 'lg', 'pl', 'po', 'ls', 'ul',
    'cu', 'pc', 'hc', 'ec', 'eo', 'cc', 'c2', 'tm', 'ab', 'sy', 'pso',
    'do', 'rr', 'rn', 'als', 'chop', 'fam', 'AT', 'T&', 'TE', 'EE', 'fi',
}
# Macros that end a paragraph (those with a tag emit it after the break).
_BREAKS = {'PP', 'LP', 'P', 'TP', 'IP', 'HP', 'RS', 'RE', 'sp', 'nf', 'fi',
           'EX', 'EE', 'INDENT', 'UNINDENT', 'SY', 'YS'}
# Font macros: the arguments joined by spaces, or concatenated.
_FONT_SPACED = {'B', 'I', 'SM', 'SB'}
_FONT_ALTERNATING = {'BR', 'BI', 'IB', 'IR', 'RB', 'RI'}
# A line that ends with \c (not \\c): the next line continues it.
_JOINS = re.compile(r'(?<!\\)(\\\\)*\\c\s*$')
# Blocks skipped to their end: macro definitions and ignored input.
_DEFINITIONS = {'de', 'de1', 'am', 'am1', 'ig'}


def _inline(text: str, strings: Dict[str, str]) -> str:
    r"""The text of a line: escapes to characters, fonts and comments
    dropped."""
    def replace(m: re.Match) -> str:
        if m.group('bracket') is not None:
            return _glyph(m.group('bracket'))
        if m.group('paren') is not None:
            return _glyph(m.group('paren'))
        name = m.group('sb') or m.group('sp') or m.group('s1')
        if name is not None:
            return strings.get(name, '')
        char = m.group('char')
        if char is not None:
            return _CHARS.get(char, char)
        return ''  # comments, fonts, sizes, motions, registers
    return _ESCAPE.sub(replace, text)


def _glyph(name: str) -> str:
    if re.fullmatch(r'u[0-9A-Fa-f]{4,6}(_[0-9A-Fa-f]{4,6})*', name):
        return ''.join(chr(int(code, 16))
                       for code in name[1:].split('_'))
    return _GLYPHS.get(name, '')


def _arguments(rest: str) -> List[str]:
    r"""The arguments of a macro: separated by spaces, ``"quoted"`` ones
    may hold spaces (``""`` is a quote); escapes stay for :func:`_inline`.
    """
    args, i = [], 0
    while i < len(rest):
        if rest[i] in ' \t':
            i += 1
            continue
        quoted = rest[i] == '"'
        i += quoted
        arg = []
        while i < len(rest):
            char = rest[i]
            if char == '\\' and i + 1 < len(rest):
                arg.append(rest[i:i + 2])
                i += 2
                continue
            if quoted and char == '"':
                if rest[i + 1:i + 2] == '"':
                    arg.append('"')
                    i += 2
                    continue
                i += 1
                break
            if not quoted and char in ' \t':
                break
            arg.append(char)
            i += 1
        args.append(''.join(arg))
    return args


def _lines(source: str) -> List[str]:
    r"""The input lines, with escaped newlines (a line ending in an odd
    number of backslashes) joined to the next."""
    lines: List[str] = []
    pending = ''
    for line in source.replace('\r\n', '\n').split('\n'):
        line = pending + line
        trailing = len(line) - len(line.rstrip('\\'))
        if trailing % 2:
            pending = line[:-1]
            continue
        pending = ''
        lines.append(line)
    if pending:
        lines.append(pending)
    return lines


class _RoffReader:
    r"""Reads the roff source of a page into sections of paragraphs, as
    :class:`ManPages` describes."""
    def __init__(self, strings: Optional[Dict[str, str]] = None):
        self.strings = dict(_STRINGS if strings is None else strings)
        self.redirect: Optional[str] = None  # the page a .so includes
        self._sections: List[Section] = []
        self._heading = ''
        self._paragraphs: List[str] = []
        self._lines: List[str] = []
        self._join = False  # the last line ended with \c
        self._pending: Optional[str] = None  # 'SH'/'SS' awaiting its title
        self._link: Optional[str] = None  # the address of an open .UR/.MT

    def read(self, source: Union[str, List[str]]):
        lines = _lines(source) if isinstance(source, str) else source
        i = 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if line[:1] not in ('.', "'"):
                self._text(line)
                continue
            name, rest = _control_line(line)
            if name in _DEFINITIONS:
                # .de name [end] and .ig [end]: to '..' by default.
                args = _arguments(rest)[name != 'ig':]
                end = '.' + (args[0] if args else '.')
                while i < len(lines) and lines[i].strip() != end:
                    i += 1
                i += 1
            elif name in ('if', 'ie', 'el'):
                i = _skip_block(lines, i - 1)
            elif name == 'TS':
                i = self._table(lines, i)
            else:
                self._request(name, rest)

    def sections(self) -> List[Section]:
        r"""The sections read, those without text left out."""
        self._new_section('')
        return [(h, p) for h, p in self._sections if h or p]

    # Text and layout #######################################################

    def _text(self, line: str):
        if not line.strip():  # a blank line ends the paragraph
            self._end_paragraph()
            return
        joins = _JOINS.search(line) is not None
        self._emit(_inline(line, self.strings))
        self._join = joins

    def _emit(self, text: str):
        text = text.rstrip()
        if not text.strip():
            return
        if self._pending == 'SH':
            self._new_section(text.strip())
        elif self._pending == 'SS':
            self._end_paragraph()
            self._paragraphs.append(text.strip())
        elif self._join and self._lines:
            self._lines[-1] += text.lstrip()
        else:
            self._lines.append(text)
        self._pending = None

    def _end_paragraph(self):
        if self._lines:
            self._paragraphs.append('\n'.join(self._lines))
        self._lines = []
        self._join = False

    def _new_section(self, heading: str):
        self._end_paragraph()
        self._sections.append((self._heading, self._paragraphs))
        self._heading, self._paragraphs = heading, []

    def _request(self, name: str, rest: str):
        args = _arguments(rest)
        text = [_inline(a, self.strings) for a in args]
        if name in ('SH', 'SS'):
            self._end_paragraph()
            self._pending = name
            if text:
                self._emit(' '.join(text))
        elif name in _BREAKS:
            self._end_paragraph()
            if name in ('IP', 'SY') and text:
                self._emit(text[0])
        elif name in ('br', 'TQ'):
            self._join = False
        elif name in _FONT_SPACED or name in _FONT_ALTERNATING:
            joins = _JOINS.search(rest) is not None
            self._emit((' ' if name in _FONT_SPACED else '').join(text))
            self._join = joins
        elif name in ('UR', 'MT'):
            self._link = text[0] if text else ''
        elif name in ('UE', 'ME'):
            link = f'<{self._link}>' if self._link else ''
            self._emit(link + ''.join(text))
            self._join, self._link = False, None
        elif name == 'so':
            self.redirect = rest.strip()
        elif name == 'ds' and args:
            value = rest.lstrip()[len(args[0]):].lstrip()
            self.strings[args[0]] = _inline(value[value[:1] == '"':],
                                            self.strings)
        elif name not in _SILENT and name and text:
            self._emit(' '.join(text))  # unknown macros: keep their text

    def _table(self, lines: List[str], i: int) -> int:
        r"""Reads a tbl table from line :obj:`i` (after ``.TS``) as a
        paragraph of rows, cells separated by tabs; returns the line after
        ``.TE``."""
        self._end_paragraph()
        tab = '\t'
        if i < len(lines) and lines[i].rstrip().endswith(';'):
            found = re.search(r'tab\s*\((.)\)', lines[i])
            tab = found.group(1) if found else tab
            i += 1
        i = _skip_format(lines, i)
        row: List[str] = []
        while i < len(lines) and _control_line(lines[i])[0] != 'TE':
            line = lines[i]
            i += 1
            if _control_line(line)[0] == 'T&':
                i = _skip_format(lines, i)
                continue
            if line.strip() in ('_', '=', '') or line[:1] in ('.', "'"):
                continue  # rules, and requests between rows
            cells = line.split(tab)
            for k, cell in enumerate(cells):
                if cell.strip() == 'T{' and k == len(cells) - 1:
                    block, i = _text_block(lines, i, self.strings)
                    row.append(block[0])
                    cells += block[1].split(tab)[1:]
                elif cell.strip() not in ('_', '=', 'T}'):
                    row.append(_inline(cell, self.strings).strip())
            if any(row):
                self._lines.append('\t'.join(row))
            row = []
        self._end_paragraph()
        return i + 1


def _control_line(line: str) -> Tuple[str, str]:
    r"""The name and the rest of a control line (``'.  ds x'`` too); no
    name for a comment or a line of only ``'.'``."""
    found = re.match(r"""[.'][ \t]*([^\s\\"]+|\\"?)?(.*)""", line)
    if found is None or found.group(1) in (None, '\\', '\\"'):
        return '', ''
    return found.group(1), found.group(2)


def _skip_block(lines: List[str], i: int) -> int:
    r"""The line after a conditional at line :obj:`i`: after its ``\}``
    where it opens a ``\{`` block, else the next line. The conditions are
    not evaluated: man pages use them for output devices and fallbacks."""
    depth = 0
    while i < len(lines):
        depth += lines[i].count('\\{') - lines[i].count('\\}')
        i += 1
        if depth <= 0:
            return i
    return i


def _skip_format(lines: List[str], i: int) -> int:
    r"""The line after a tbl format, whose last line ends with ``.``."""
    while i < len(lines) and not lines[i].rstrip().endswith('.'):
        i += 1
    return i + 1


def _text_block(lines: List[str], i: int, strings: Dict[str, str]
                ) -> Tuple[Tuple[str, str], int]:
    r"""A tbl ``T{ ... T}`` cell from line :obj:`i`: its text on one line,
    the rest of the line of ``T}`` (more cells), and the line after it."""
    start = i
    while i < len(lines) and not lines[i].startswith('T}'):
        i += 1
    reader = _RoffReader(strings)
    reader.read(lines[start:i])
    text = ' '.join(' '.join(p.split()) for _, paragraphs in
                    reader.sections() for p in paragraphs)
    rest = lines[i] if i < len(lines) else ''
    return (text, rest[2:]), i + 1
