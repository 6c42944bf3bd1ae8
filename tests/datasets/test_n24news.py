r"""N24News on a tiny dataset written in the released archive's format:
news/nytimes_{train,dev,test}.json and imgs/<image_id>.jpg."""
import json
import os.path as osp
import socket
import warnings

import pytest
import torch
from torch_geometric.loader import DataLoader

from hsa_geo.data import HeteroNestedSignal
from hsa_geo.datasets import N24News
from hsa_geo.nn import HeteroHSAConv
from hsa_geo.transforms import DocumentHierarchy

Image = pytest.importorskip('PIL.Image')

TEXTS = ('headline', 'abstract', 'caption', 'body')


def article(n: int, section: str, **changes) -> dict:
    r"""One article as the JSON files hold it (the body under
    'article'), with solid colour image ``img<n>``."""
    item = {
        'section': section,
        'headline': f'Headline {n} about {section}.',
        'abstract': f'An abstract of story {n}. It has two sentences.',
        'caption': f'A photo for story {n}.',
        'article': f'The body of story {n}.\n\nA second paragraph.',
        'image_id': f'img{n}',
        'image_url': f'https://example.invalid/img{n}.jpg',
        'article_url': f'https://example.invalid/story{n}.html',
    }
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def colour(n: int) -> tuple:
    return (40 * n % 256, 255 - 30 * n % 256, 100)


def write_raw(root, splits: dict, images=True):
    r"""Writes the JSON files of :obj:`splits` (name -> articles) and a
    JPEG of every ``image_id``, under ``root/raw``."""
    raw = root / 'raw'
    (raw / 'news').mkdir(parents=True)
    for name, items in splits.items():
        with open(raw / 'news' / f'nytimes_{name}.json', 'w') as f:
            json.dump(items, f)
    if images:
        (raw / 'imgs').mkdir()
        for items in splits.values():
            for item in items:
                n = int(item['image_id'][3:])
                size = (40 + 8 * n, 30 + 4 * n)  # any size is resized
                Image.new('RGB', size, colour(n)).save(
                    raw / 'imgs' / f"{item['image_id']}.jpg")
    return str(root)


SPLITS = {
    'train': [article(0, 'Sports'), article(1, 'Books'),
              article(2, 'Science'), article(3, 'Books')],
    'dev': [article(4, 'Science'), article(5, 'Sports')],
    'test': [article(6, 'Books', headline='Zebras unseen in training.')],
}


@pytest.fixture(scope='module', autouse=True)
def no_network():
    r"""Nothing here may reach the network."""
    def refuse(*args, **kwargs):
        raise AssertionError('a test tried to open a network connection')

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, 'connect', refuse)
        yield


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp('n24news'), SPLITS)


@pytest.fixture(scope='module')
def train(root):
    return N24News(root, log=False)


def below_root(h, node: int) -> int:
    r"""The ancestor of :obj:`node` that is a child of the root."""
    while int(h.parent[int(h.parent[node])]) != -1:
        node = int(h.parent[node])
    return node


def same_tree(whole, leaves: slice, part) -> bool:
    r"""Whether the tree :obj:`part` is the subtree of :obj:`whole` above
    its leaves :obj:`leaves` (leaf ``i`` of :obj:`part` is leaf
    ``leaves.start + i``): every node of :obj:`part` matches one node of
    :obj:`whole` on the paths up from the leaves."""
    up, down = whole.parent.tolist(), part.parent.tolist()
    if leaves.stop - leaves.start != part.num_leaves:
        return False
    match = {}
    for i in range(part.num_leaves):
        a, b = leaves.start + i, i
        while down[b] >= 0:
            a, b = up[a], down[b]
            if a < 0 or match.setdefault(b, a) != a:
                return False
    return len(set(match.values())) == len(match)


def test_signals_of_the_training_split(train):
    assert len(train) == 4 and train.skipped == []
    assert train.sections == ['Books', 'Science', 'Sports']
    assert train.num_classes == 3
    assert repr(train) == ("N24News(4, split='train', fields=('headline', "
                           "'abstract', 'caption', 'body', 'image'))")
    for data, item in zip(train, SPLITS['train']):
        assert isinstance(data, HeteroNestedSignal)
        assert data.leaf_types == list(TEXTS) + ['image']
        assert data.y.dtype == torch.long and data.y.shape == (1, )
        assert train.sections[int(data.y)] == item['section']
        assert data.image_id == item['image_id']
        # Each text is DocumentHierarchy's tree of it, the body read from
        # the 'article' key.
        document = DocumentHierarchy(vocab=train.vocab)
        for t, key in zip(TEXTS, ('headline', 'abstract', 'caption',
                                  'article')):
            alone = document(item[key])
            assert data[t].text == item[key]
            assert torch.equal(data[t].x, alone.x)
            assert bool((data[t].x > 1).all())  # no token is unknown
            assert same_tree(data.hierarchy, data.leaf_slices[t],
                             alone.hierarchy)
        # A 64 x 64 RGB image in [0, 1] cut into 16 patches of 16 x 16.
        x = data['image'].x
        assert x.shape == (16, 3 * 16 * 16) and x.dtype == torch.float
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        rgb = x.view(16, 3, 256).mean(dim=(0, 2))
        expected = torch.tensor(colour(int(item['image_id'][3:]))) / 255
        assert torch.allclose(rgb, expected, atol=0.03)


def test_the_tree_joins_the_texts_under_text_and_the_image(train):
    data = train[1]
    h, slices = data.hierarchy, data.leaf_slices
    root = h.num_nodes - 1
    assert h.num_trees == 1 and int(h.parent[root]) == -1
    text = h.num_nodes - 2  # the only group, numbered before the root
    assert int(h.parent[text]) == root
    num_text = slices['body'].stop
    assert int(h.leaf_count[text]) == num_text
    tops = {t: {below_root(h, leaf) for leaf in range(s.start, s.stop)}
            for t, s in slices.items()}
    assert all(tops[t] == {text} for t in TEXTS)
    assert len(tops['image']) == 1 and tops['image'] != {text}
    image_top = tops['image'].pop()
    assert int(h.leaf_count[image_top]) == 16
    children = (h.parent == root).nonzero().view(-1).tolist()
    assert sorted(children) == sorted([text, image_top])
    # Every text is one subtree under 'text'.
    assert int((h.parent == text).sum()) == 4


def test_splits_share_labels_and_vocabulary(root, train):
    val = N24News(root, split='val', log=False)
    test = N24News(root, split='test', log=False)
    assert len(val) == 2 and len(test) == 1
    assert val.sections == test.sections == train.sections
    assert [val.sections[int(d.y)] for d in val] == ['Science', 'Sports']
    assert test.num_classes == 3  # one section present, three classes
    assert val.vocab == test.vocab == train.vocab
    # The vocabulary is the training texts': unseen words are unknown.
    assert 'zebras' not in train.vocab
    assert int(test[0]['headline'].x[0]) == train.vocab.unk_id
    names = set(train.processed_file_names + val.processed_file_names +
                test.processed_file_names)
    assert len(names) == 7  # a .pt and a meta file each, one vocabulary
    for name in names:
        assert osp.isfile(osp.join(train.processed_dir, name))
    with pytest.raises(ValueError, match="'split' must be one of"):
        N24News(root, split='dev')


def sports(data):
    return int(data.y) == 2


def test_a_split_made_with_another_pre_filter_is_refused(tmp_path):
    root = write_raw(tmp_path, SPLITS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        N24News(root, fields=('headline', ), log=False)
        N24News(root, split='val', fields=('headline', ),
                pre_filter=sports, log=False)
        assert len(N24News(root, fields=('headline', ), log=False)) == 4
    # PyG's one record per folder is that of the split processed last.
    assert not [w for w in caught if 'pre_filter' in str(w.message)]
    with pytest.raises(ValueError, match=(
            r"'train_headline_vocab\.pt' .* made with pre_filter=None, but "
            r"pre_filter=<function sports> was given.*force_reload")):
        N24News(root, fields=('headline', ), pre_filter=sports,
                log=False)


def test_field_selection(root, train, tmp_path):
    both = N24News(root, fields=('image', 'headline'), image_size=32,
                   log=False)
    assert both.fields == ('headline', 'image')  # in the order of FIELDS
    assert both[0].leaf_types == ['headline', 'image']
    assert both[0]['image'].x.shape == (4, 768)
    # The vocabulary is that of the chosen texts: other ids, same tokens.
    assert len(both.vocab) < len(train.vocab)
    assert [both.vocab.lookup(i) for i in both[0]['headline'].x.tolist()] \
        == [train.vocab.lookup(i) for i in train[0]['headline'].x.tolist()]
    assert both.processed_file_names[0] == \
        'train_headline-image_img32_patch16_vocab.pt'
    image = N24News(root, fields=('image', ), patch_size=8, log=False)
    assert image.vocab is None and image[0].leaf_types == ['image']
    assert image[0]['image'].x.shape == (64, 192)
    assert image[0].hierarchy.num_trees == 1
    # Text only needs no image folder.
    text_root = write_raw(tmp_path, SPLITS, images=False)
    text = N24News(text_root, fields=('headline', 'body'), log=False)
    assert len(text) == 4 and text[0].leaf_types == ['headline', 'body']
    assert text.raw_file_names == ['news/nytimes_train.json']
    with pytest.raises(ValueError, match="'video' is not a field"):
        N24News(root, fields=('headline', 'video'))
    with pytest.raises(ValueError, match='at least one field, each once'):
        N24News(root, fields=('body', 'body'))
    with pytest.raises(TypeError, match="'fields' must be a tuple"):
        N24News(root, fields='headline')
    with pytest.raises(ValueError, match="'patch_size' .* must divide"):
        N24News(root, image_size=60)
    with pytest.raises(TypeError, match="'image_size' must be an int"):
        N24News(root, image_size=64.0)


def test_missing_and_empty_fields_skip_the_article(tmp_path):
    items = [
        article(0, 'Sports'),
        article(1, 'Books', caption=''),
        article(2, 'Books', abstract=...),  # the key is absent
        article(3, 'Sports', headline='  \n'),
        article(4, 'Books', article=None, body='Read from body.'),
        article(5, 'Sports'),  # its image is removed below
        article(6, 'Books'),  # its image is not a JPEG
        {**article(7, 'Sports'), 'section': None},
    ]
    root = write_raw(tmp_path, {'train': items})
    imgs = tmp_path / 'raw' / 'imgs'
    (imgs / 'img5.jpg').unlink()
    (imgs / 'img6.jpg').write_text('<html>Not found</html>')
    with pytest.warns(UserWarning, match=r'skipped 6 of the 8 articles of '
                      r"'news/nytimes_train.json'"):
        dataset = N24News(root, log=False)
    assert [d.image_id for d in dataset] == ['img0', 'img4']
    assert dataset[1]['body'].text == 'Read from body.'
    assert dataset.num_skipped == 6
    reasons = dict(dataset.skipped)
    assert sorted(reasons) == [1, 2, 3, 5, 6, 7]
    assert reasons[1] == "'caption' is missing or empty"
    assert reasons[2] == "'abstract' is missing or empty"
    assert reasons[3] == "'headline' is missing or empty"
    assert reasons[5] == 'the image imgs/img5.jpg is missing'
    assert reasons[6].startswith('the image imgs/img6.jpg is unreadable')
    assert reasons[7] == "no 'section' (the label)"
    # Loaded back: the same list, no second warning.
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        again = N24News(root, log=False)
    assert again.skipped == dataset.skipped
    # Only the chosen fields count.
    with pytest.warns(UserWarning, match='skipped 2 of the 8'):
        text = N24News(root, fields=('headline', 'body'), log=False)
    assert [i for i, _ in text.skipped] == [3, 7]


def test_errors_in_the_files(tmp_path):
    root = write_raw(tmp_path, {
        'train': [article(0, 'Sports'), article(1, 'Books', caption=3)],
        'test': [article(2, 'Opinion')]})
    with pytest.raises(ValueError, match="article 1 of .*'caption' must be "
                       "a string"):
        N24News(root, log=False)
    with open(tmp_path / 'raw' / 'news' / 'nytimes_train.json', 'w') as f:
        json.dump([article(0, 'Sports')], f)
    with pytest.raises(ValueError, match="section 'Opinion', which no "
                       "training article has"):
        N24News(root, split='test', log=False)
    with open(tmp_path / 'raw' / 'news' / 'nytimes_train.json', 'w') as f:
        f.write('[{"headline": "cut off')
    with pytest.raises(ValueError, match="nytimes_train.json' is not valid "
                       "JSON"):
        N24News(root, log=False, force_reload=True)


def test_download_says_where_to_get_the_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        N24News(str(tmp_path))
    message = str(info.value)
    assert 'not downloaded automatically' in message
    assert 'https://drive.google.com/file/d/' in message
    assert 'github.com/billywzh717/N24News' in message
    for name in ('news/nytimes_train.json', 'news/nytimes_dev.json',
                 'news/nytimes_test.json', 'imgs/<image_id>.jpg'):
        assert name in message
    assert osp.join(str(tmp_path), 'raw') in message


def test_a_tokenizer_instead_of_the_vocabulary(root, train):
    tokenizers = pytest.importorskip('tokenizers')
    words = ['[UNK]', 'headline', 'about', 'sports', 'a', 'photo', '.']
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    dataset = N24News(root, fields=('headline', 'caption'),
                      tokenizer=tokenizer, log=False)
    assert dataset.vocab is None
    data = dataset[0]
    for t in ('headline', 'caption'):
        ids = tokenizer.encode(data[t].text).ids
        assert data[t].x.tolist() == ids
    assert data['headline'].x.tolist() == [1, 0, 2, 3, 6]
    stem = dataset.processed_stem
    assert stem.startswith('train_headline-caption_tokenizer-')
    assert N24News(root, fields=('headline', 'caption'), tokenizer=tokenizer,
                   log=False).processed_stem == stem
    with pytest.raises(TypeError, match="'tokenizer' must be"):
        N24News(root, tokenizer={'a': 0})


def test_a_data_loader_batch_through_hetero_hsa_conv(train):
    batch = next(iter(DataLoader(train, batch_size=3)))
    assert batch.num_graphs == 3 and batch.y.tolist() == [2, 0, 1]
    assert batch.image_id == ['img0', 'img1', 'img2']
    h = batch.hierarchy
    assert h.num_trees == 3
    assert h.num_leaves == sum(train[i].hierarchy.num_leaves
                               for i in range(3))

    torch.manual_seed(0)
    embed = torch.nn.Embedding(len(train.vocab), 8)
    conv = HeteroHSAConv({**{t: 8 for t in TEXTS}, 'image': 768}, 4,
                         batch.leaf_types, heads=2)

    def features(data):
        return {t: embed(data[t].x) if t in TEXTS else data[t].x
                for t in data.leaf_types}

    out = conv(features(batch), batch)
    for t in batch.leaf_types:
        assert out[t].shape == (batch[t].num_nodes, 8)
    # Each article's rows are the layer's output on the article alone.
    for i in range(3):
        alone = conv(features(train[i]), train[i])
        for t in batch.leaf_types:
            rows = batch[t].batch == i
            assert torch.allclose(out[t][rows], alone[t], atol=1e-5)
    loss = sum(o.square().sum() for o in out.values())
    loss.backward()
    assert embed.weight.grad is not None


def test_splits_keep_the_vocabulary_they_were_made_with(tmp_path):
    """Processing another split reuses the vocabulary file the splits
    share, even after the training items changed."""
    import os

    def write(split, heads):
        os.makedirs(osp.join(tmp_path, 'raw', 'news'), exist_ok=True)
        items = [{'section': s, 'headline': h, 'image_id': str(i)}
                 for i, (s, h) in enumerate(heads)]
        with open(osp.join(tmp_path, 'raw', 'news',
                           f'nytimes_{split}.json'), 'w') as f:
            json.dump(items, f)

    root = str(tmp_path)
    write('train', [('Books', 'A new novel.'), ('Sports', 'The game ends.')])
    write('test', [('Books', 'The novel ends.')])
    write('dev', [('Sports', 'A game.')])
    N24News(root, fields=('headline', ), log=False)
    N24News(root, split='test', fields=('headline', ), log=False)
    write('train', [('Books', 'Zebra zebra zebra yak yak novel.'),
                    ('Sports', 'The game ends.')])
    N24News(root, split='val', fields=('headline', ), log=False)
    test = N24News(root, split='test', fields=('headline', ), log=False)
    text = test[0]['headline']
    assert text.x.tolist() == test.vocab.encode(text.text).tolist()
