r"""N24News: New York Times articles of 24 sections, each with four texts
and an image, as multi-modal nested signals."""
import json
import os.path as osp
import warnings
from typing import (Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset
from tqdm import tqdm

from hsa_geo._checks import check_int
from hsa_geo.datasets.processed_meta import (check_vocabulary,
                                             folder_record_ignored,
                                             load_processed, write_meta)
from hsa_geo.datasets.tokenizer_tag import tokenizer_tag
from hsa_geo.transforms import (DocumentHierarchy, GridHierarchy,
                                MultiModalHierarchy, Vocabulary)

# An item of a raw JSON file, and why an item was skipped: (position in
# its file, reason).
Item = Dict[str, Any]
Skipped = Tuple[int, str]


class N24News(InMemoryDataset):
    r"""The N24News dataset from the `"N24News: A New Dataset for Multimodal
    News Classification" <https://aclanthology.org/2022.lrec-1.729>`_ paper
    (LREC 2022): New York Times articles of 24 sections, each with a
    headline, an abstract, an image caption, a body text and an image.
    Every article becomes one :class:`~hsa_geo.data.HeteroNestedSignal`
    whose label is its section.

    **Raw files.** The authors distribute the data as an archive (see
    :meth:`download`; nothing is downloaded automatically). Extracted into
    :obj:`raw_dir` (``root/raw``) it holds

    - ``news/nytimes_train.json``, ``news/nytimes_dev.json``,
      ``news/nytimes_test.json``: the training, validation and test splits,
      each a JSON list of one object per article with the string fields
      ``section`` (the label), ``headline``, ``abstract``, ``caption``
      (the image caption), ``article`` (the body text) and ``image_id``
      (further fields, such as the article's and the image's URLs, are not
      read). Where ``article`` is missing or empty, the body is read from
      ``body``, the name that the authors' script
      ``build_fully_dataset.py`` writes;
    - ``imgs/<image_id>.jpg``: the image of every article.

    Only the files that the chosen options read must be there: the
    training split (its texts give the vocabulary and its sections the
    label set), the chosen split, and ``imgs/`` when :obj:`fields` has
    ``'image'``.

    **Signals.** The leaf types are the chosen :obj:`fields`, in the order
    ``'headline'``, ``'abstract'``, ``'caption'``, ``'body'``, ``'image'``,
    joined by :class:`~hsa_geo.transforms.MultiModalHierarchy` under one
    root:

    - every text is turned into a subtree by
      :class:`~hsa_geo.transforms.DocumentHierarchy` (tokens -> sentences
      -> paragraphs -> document): ``data[t].x`` ``LongTensor [N_t]`` holds
      the token ids, ``data[t].offsets`` ``[N_t, 2]`` their character spans
      in ``data[t].text``. The ids are those of :attr:`vocab`, a
      :class:`~hsa_geo.transforms.Vocabulary` built over the chosen text
      fields of all training articles, or of :obj:`tokenizer`. The text
      subtrees are children of one cluster ``'text'``;
    - the image is read with PIL, converted to RGB, resized to
      :obj:`image_size` x :obj:`image_size` (the aspect ratio is not kept)
      as a float image ``[3, image_size, image_size]`` in :math:`[0, 1]`,
      and cut into :obj:`patch_size` patches by
      :class:`~hsa_geo.transforms.GridHierarchy` (a quadtree):
      ``data['image'].x`` ``[(image_size / patch_size)^2, 3 patch_size^2]``;
    - ``y`` ``LongTensor [1]``: the index of the section in
      :attr:`sections` (the sections of the training split, sorted
      alphabetically, for every split); ``image_id`` (:obj:`str`): the
      article's image id.

    **Missing data.** An article is skipped with a warning, and listed in
    :attr:`skipped` as ``(position in its JSON file, reason)``, when its
    ``section`` or one of the chosen text fields is missing, :obj:`None` or
    only whitespace (a text leaf type needs a token, and a placeholder text
    would be read as content), or when ``'image'`` is chosen and its image
    file is missing or unreadable. Fields that are not chosen are not
    checked, so a text-only dataset keeps the articles without an image.
    A field that is not a string, or a validation or test section that the
    training split lacks, is an error in the files and raises a
    :class:`ValueError`. Then :obj:`pre_filter` and :obj:`pre_transform`
    apply, in this order, to the built signals.

    Every combination of split, fields, image and patch size and tokenizer
    is processed into files of its own, so they coexist under one
    :obj:`root`. The signals batch with PyG's
    :class:`~torch_geometric.loader.DataLoader`; ``batch.hierarchy`` is the
    forest of their trees. In float32, one image of the default size takes
    48 KiB; a larger :obj:`image_size` grows the processed files
    quadratically.

    Args:
        root (str): Root directory; the raw files go to ``root/raw``, the
            processed ones to ``root/processed``.
        split (str): ``'train'``, ``'val'`` (``nytimes_dev.json``) or
            ``'test'``. (default: :obj:`'train'`)
        fields (tuple of str): the leaf types, any of :attr:`FIELDS`, e.g.
            ``('headline', 'body')`` for text only or ``('image',)`` for the
            image only. (default: all five)
        image_size (int): the side of the resized square image.
            (default: :obj:`64`)
        patch_size (int): the side of a square patch; it must divide
            :obj:`image_size`. (default: :obj:`16`)
        tokenizer (optional): a HuggingFace fast tokenizer for the texts
            (see :class:`~hsa_geo.transforms.DocumentHierarchy`); then
            :attr:`vocab` is :obj:`None`. (default: :obj:`None`, a
            :class:`~hsa_geo.transforms.Vocabulary` of the training texts)
        transform (callable, optional): A function/transform that takes in
            a :class:`~hsa_geo.data.HeteroNestedSignal` and returns a
            transformed version. The data object will be transformed before
            every access. (default: :obj:`None`)
        pre_transform (callable, optional): A function/transform that takes
            in a :class:`~hsa_geo.data.HeteroNestedSignal` and returns a
            transformed version. The data object will be transformed before
            being saved to disk. (default: :obj:`None`)
        pre_filter (callable, optional): A function that takes in a
            :class:`~hsa_geo.data.HeteroNestedSignal` and returns a boolean
            value, indicating whether the data object should be included in
            the final dataset. (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset;
            needed to change the :obj:`pre_transform` or :obj:`pre_filter`
            of a split processed before (see
            :mod:`~hsa_geo.datasets.processed_meta`).
            (default: :obj:`False`)
        log (bool, optional): Whether to print to the console and show a
            progress bar while processing. (default: :obj:`True`)

    On the released archive, :attr:`sections` are the 24 sections
    ``'Art & Design'``, ``'Automobiles'``, ``'Books'``, ``'Dance'``,
    ``'Economy'``, ``'Education'``, ``'Fashion & Style'``, ``'Food'``,
    ``'Global Business'``, ``'Health'``, ``'Media'``, ``'Movies'``,
    ``'Music'``, ``'Opinion'``, ``'Real Estate'``, ``'Science'``,
    ``'Sports'``, ``'Style'``, ``'Technology'``, ``'Television'``,
    ``'Theater'``, ``'Travel'``, ``'Well'`` and ``'Your Money'``.
    """
    #: The leaf types, in their order in a signal.
    FIELDS = ('headline', 'abstract', 'caption', 'body', 'image')
    #: The JSON keys of every text field, the first found is read.
    TEXT_KEYS = {
        'headline': ('headline', ),
        'abstract': ('abstract', ),
        'caption': ('caption', ),
        'body': ('article', 'body'),
    }
    #: The JSON file of every split, under ``raw_dir``.
    SPLITS = {
        'train': 'news/nytimes_train.json',
        'val': 'news/nytimes_dev.json',
        'test': 'news/nytimes_test.json',
    }
    #: The image folder under ``raw_dir``.
    IMAGES = 'imgs'
    #: Where the authors distribute the archive.
    urls = ('https://github.com/billywzh717/N24News',
            'https://drive.google.com/file/d/'
            '1OS1fXwZ1Vsj70lEQajccyssxQRYp5X9D/view')

    def __init__(
        self,
        root: str,
        split: str = 'train',
        fields: Sequence[str] = FIELDS,
        image_size: int = 64,
        patch_size: int = 16,
        tokenizer: Any = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
        log: bool = True,
    ) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"'split' must be one of {tuple(self.SPLITS)} "
                             f"('val' reads nytimes_dev.json), got "
                             f"{split!r}")
        self.split = split
        self.fields = _check_fields(fields, self.FIELDS)
        self.image_size = check_int(image_size, 'image_size')
        self.patch_size = check_int(patch_size, 'patch_size')
        if self.image_size % self.patch_size:
            raise ValueError(
                f"'patch_size' ({self.patch_size}) must divide "
                f"'image_size' ({self.image_size}); e.g. image_size="
                f"{-(-self.image_size // self.patch_size) * self.patch_size}")
        self.tokenizer = tokenizer
        if tokenizer is not None:  # refused here, before any file is read
            DocumentHierarchy(tokenizer=tokenizer)
        with folder_record_ignored():  # load_processed checks the variant
            super().__init__(root, transform, pre_transform, pre_filter,
                             log=log, force_reload=force_reload)
        meta = load_processed(self)
        self.sections: List[str] = meta['sections']
        self.skipped: List[Skipped] = [(i, why) for i, why in
                                       meta['skipped']]
        self.vocab: Optional[Vocabulary] = None
        if self.text_fields and tokenizer is None:
            self.vocab = Vocabulary.load(self.processed_paths[2])
            check_vocabulary(self, meta, self.vocab, self.processed_paths[2])

    # Options ###############################################################

    @property
    def text_fields(self) -> List[str]:
        r"""The chosen text fields, in the order of :attr:`FIELDS`."""
        return [t for t in self.fields if t != 'image']

    @property
    def processed_stem(self) -> str:
        r"""The name of the processed files, without suffix: every option
        that changes the signals."""
        stem = f"{self.split}_{'-'.join(self.fields)}"
        if 'image' in self.fields:
            stem += f'_img{self.image_size}_patch{self.patch_size}'
        if self.text_fields:
            stem += '_' + ('vocab' if self.tokenizer is None else
                           tokenizer_tag(self.tokenizer))
        return stem

    # PyG's dataset interface ###############################################

    @property
    def raw_file_names(self) -> List[str]:
        names = [self.SPLITS['train']]
        if self.split != 'train':
            names.append(self.SPLITS[self.split])
        if 'image' in self.fields:
            names.append(self.IMAGES)
        return names

    @property
    def processed_file_names(self) -> List[str]:
        names = [f'{self.processed_stem}.pt',
                 f'{self.processed_stem}_meta.json']
        if self.text_fields and self.tokenizer is None:
            names.append(f"vocab_{'-'.join(self.text_fields)}.json")
        return names

    def download(self) -> None:
        r"""Raises a :class:`FileNotFoundError` that says where to get the
        archive and what to put into :obj:`raw_dir`: the authors share it
        through file hosts (Google Drive, Baidu Cloud), not at a stable
        download URL, so it is fetched by hand."""
        missing = [name for name, path in zip(self.raw_file_names,
                                              self.raw_paths)
                   if not osp.exists(path)]
        raise FileNotFoundError(
            f"N24News is not downloaded automatically, and '{self.raw_dir}' "
            f"lacks {missing}. Get the archive from its authors (see "
            f"{self.urls[0]}; Google Drive: {self.urls[1]}) and extract it "
            f"into '{self.raw_dir}', so that it holds "
            f"{', '.join(self.SPLITS.values())} and {self.IMAGES}/"
            f"<image_id>.jpg")

    def process(self) -> None:
        train = self._read_items('train')
        # Read as _sample reads them, so that every label is found.
        sections = sorted({_text(item, ('section', )) for item in train}
                          - {None})
        items = train if self.split == 'train' else \
            self._read_items(self.split)
        label = {section: i for i, section in enumerate(sections)}
        builders = self._builders(train)
        transform = MultiModalHierarchy(
            builders, {t: 'text' for t in self.text_fields})

        data_list: List[HeteroData] = []
        skipped: List[Skipped] = []
        for i, item in enumerate(tqdm(items, desc=f'N24News {self.split}',
                                      disable=not self.log)):
            sample = self._sample(item, i, label)
            if isinstance(sample, str):
                skipped.append((i, sample))
                continue
            data = transform(sample)
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)

        if skipped:
            warnings.warn(
                f"N24News: skipped {len(skipped)} of the {len(items)} "
                f"articles of '{self.SPLITS[self.split]}' for missing data "
                f"(the first: article {skipped[0][0]}, {skipped[0][1]}); "
                f"they are listed in the dataset's 'skipped'", stacklevel=2)
        if not data_list:
            raise ValueError(
                f"N24News: none of the {len(items)} articles of "
                f"'{self.SPLITS[self.split]}' is left ({len(skipped)} "
                f"skipped for missing data, the others refused by "
                f"'pre_filter')")
        self.save(data_list, self.processed_paths[0])
        meta: Dict[str, Any] = {'sections': sections, 'skipped': skipped}
        vocab = getattr(builders.get(self.text_fields[0]), 'vocab', None) \
            if self.text_fields else None
        if vocab is not None:
            meta['vocab'] = vocab.digest
        write_meta(self.processed_paths[1], meta, self)

    # Reading ###############################################################

    def _read_items(self, split: str) -> List[Item]:
        r"""The articles of a split's JSON file, checked to be objects whose
        read fields are strings (or missing)."""
        path = osp.join(self.raw_dir, self.SPLITS[split])
        with open(path, encoding='utf-8') as f:
            try:
                items = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"'{path}' is not valid JSON ({e}); it "
                                 f"must hold a JSON list of articles") from e
        if not isinstance(items, list):
            raise ValueError(f"'{path}' must hold a JSON list of articles, "
                             f"got a {type(items).__name__}")
        keys = ('section', 'image_id') + sum(self.TEXT_KEYS.values(), ())
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"article {i} of '{path}' must be a JSON "
                                 f"object, got {type(item).__name__}")
            for key in keys:
                value = item.get(key)
                if value is not None and not isinstance(value, str):
                    raise ValueError(
                        f"article {i} of '{path}': '{key}' must be a string "
                        f"(or null when missing), got "
                        f"{type(value).__name__} {value!r:.40}")
        return items

    def _builders(self, train: List[Item]) -> Dict[str, Callable]:
        r"""The builder of every chosen field; the vocabulary, if any, over
        the chosen texts of all training articles."""
        builders: Dict[str, Callable] = {}
        if self.text_fields:
            if self.tokenizer is None:
                path = self.processed_paths[2]
                if osp.exists(path) and not self.force_reload:
                    # Built by another split already: the splits share it.
                    vocab = Vocabulary.load(path)
                else:
                    vocab = Vocabulary.build(
                        text for item in train for t in self.text_fields
                        if (text := _text(item, self.TEXT_KEYS[t])))
                    vocab.save(path)
                document = DocumentHierarchy(vocab=vocab, store_tokens=False)
            else:
                document = DocumentHierarchy(tokenizer=self.tokenizer,
                                             store_tokens=False)
            builders = {t: document for t in self.text_fields}
        if 'image' in self.fields:
            builders['image'] = GridHierarchy(self.patch_size)
        return builders

    def _sample(self, item: Item, i: int,
                label: Dict[str, int]) -> Union[HeteroData, str]:
        r"""The input of :class:`MultiModalHierarchy` for one article, or
        the reason (a :obj:`str`) to skip it."""
        section = _text(item, ('section', ))
        if section is None:
            return "no 'section' (the label)"
        if section not in label:
            raise ValueError(
                f"article {i} of '{self.SPLITS[self.split]}' has the section "
                f"{section!r}, which no training article has; the labels are "
                f"the training split's sections {sorted(label)}")
        data = HeteroData()
        for t in self.text_fields:
            text = _text(item, self.TEXT_KEYS[t])
            if text is None:
                keys = ' or '.join(f"'{k}'" for k in self.TEXT_KEYS[t])
                return f'{keys} is missing or empty'
            data[t].text = text
        image_id = item.get('image_id')
        if 'image' in self.fields:
            image = self._image(image_id)
            if isinstance(image, str):
                return image
            data['image'].image = image
        data.y = torch.tensor([label[section]])
        data.image_id = image_id
        return data

    def _image(self, image_id: Optional[str]) -> Union[Tensor, str]:
        r"""The image ``[3, image_size, image_size]`` in :math:`[0, 1]`, or
        the reason (a :obj:`str`) why there is none."""
        if not image_id:
            return "'image_id' is missing or empty"
        name = f'{self.IMAGES}/{image_id}.jpg'
        path = osp.join(self.raw_dir, name)
        if not osp.isfile(path):
            return f'the image {name} is missing'
        try:
            from PIL import Image
        except ImportError as e:
            raise ImportError(
                f"N24News reads its images with Pillow, which is not "
                f"installed ({e}); install it with 'pip install pillow', or "
                f"leave 'image' out of 'fields'") from e
        size = (self.image_size, self.image_size)
        try:
            with Image.open(path) as image:
                rgb = image.convert('RGB').resize(
                    size, Image.Resampling.BILINEAR)
        except OSError as e:  # not an image, or a truncated one
            return f'the image {name} is unreadable ({e})'
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1) / 255.0

    # Summary ###############################################################

    @property
    def num_classes(self) -> int:
        r"""The number of sections of the training split (also where a
        split lacks some)."""
        return len(self.sections)

    @property
    def num_skipped(self) -> int:
        r"""How many articles of the split were skipped for missing
        data."""
        return len(self.skipped)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, '
                f'split={self.split!r}, fields={self.fields})')


def _text(item: Item, keys: Tuple[str, ...]) -> Optional[str]:
    r"""The value of the first of :obj:`keys` in :obj:`item`; :obj:`None`
    where all are missing, :obj:`None` or only whitespace."""
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _check_fields(fields: Any, allowed: Tuple[str, ...]) -> Tuple[str, ...]:
    r"""The chosen fields in the order of :obj:`allowed`."""
    if isinstance(fields, str) or not isinstance(fields, Sequence):
        raise TypeError(f"'fields' must be a tuple of field names, e.g. "
                        f"('headline', 'image'), got {fields!r}")
    for i, field in enumerate(fields):
        if field not in allowed:
            raise ValueError(f"fields[{i}] = {field!r} is not a field of "
                             f"N24News; use names from {allowed}")
    if not fields or len(set(fields)) != len(fields):
        raise ValueError(f"'fields' = {tuple(fields)} must name at least "
                         f"one field, each once")
    return tuple(t for t in allowed if t in fields)
