r"""IMDBReviews on a tiny corpus written in the layout of the original
archive aclImdb_v1.tar.gz: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt,
with HTML line breaks; downloaded from a file:// URL."""
import os
import os.path as osp
import socket
import tarfile
import warnings

import pytest
import torch
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import BaseTransform

from hsa_geo.data import NestedSignal
from hsa_geo.datasets import IMDBReviews
from hsa_geo.nn import HSAConv
from hsa_geo.transforms import DocumentHierarchy
from tests.helpers.signals import assert_same_signal

# A long review: 40 paragraphs of 3 sentences, 920 tokens.
LONG = '<br /><br />'.join(
    f'Paragraph {p} starts here. It has ten more words in it, and '
    f'one comma. The end of paragraph {p}!' for p in range(40))

# split -> folder -> file stem -> text
CORPUS = {
    'train': {
        'pos': {
            '0_9': 'A great film. I loved it!<br /><br />The cast is '
                   'superb.',
            '2_10': LONG,
        },
        'neg': {
            '10_1': 'Boring.<br /><br /><br />Skip it.',
            '0_2': 'Dull plot. Bad acting<br />Really bad.',
            '2_4': 'Not good, not bad. Mostly bad.',
        },
        'unsup': {'0_0': 'Unlabelled words like xylophone.'},
    },
    'test': {
        'pos': {'0_8': 'Zebras were great!<BR/><br>A film.'},
        'neg': {'0_3': 'Bad film. Dull.'},
    },
}


@pytest.fixture(scope='module', autouse=True)
def no_network():
    r"""Nothing here may reach the network."""
    def refuse(*args, **kwargs):
        raise AssertionError('a test tried to open a network connection')

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, 'connect', refuse)
        patch.setattr(socket, 'create_connection', refuse)
        yield


def write_corpus(raw, corpus=CORPUS):
    r"""Writes :obj:`corpus` as the archive holds it under ``raw``."""
    for split, folders in corpus.items():
        for folder, reviews in folders.items():
            path = raw / 'aclImdb' / split / folder
            path.mkdir(parents=True, exist_ok=True)
            for stem, text in reviews.items():
                (path / f'{stem}.txt').write_text(text, encoding='utf-8')
    (raw / 'aclImdb' / 'imdb.vocab').write_text('the\nxylophone\n')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp('imdb')
    write_corpus(path / 'raw')
    return str(path)


@pytest.fixture(scope='module')
def train(root):
    return IMDBReviews(root, log=False)


def test_labels_ratings_and_order(train):
    assert len(train) == 5 and train.num_classes == 2
    # neg first, then pos; each folder by its numeric id (2 before 10).
    assert train.y.tolist() == [0, 0, 0, 1, 1]
    assert train.review_id.tolist() == [0, 2, 10, 0, 2]
    assert train.rating.tolist() == [2, 4, 1, 9, 10]
    assert all(isinstance(d, NestedSignal) for d in train)
    assert train.skipped == []
    assert 'xylophone' not in train.vocab  # unsup is not read


def test_html_breaks_give_paragraphs_and_sentences(train):
    kinds = DocumentHierarchy.KINDS

    def units(data, kind):
        spans = data.cluster_offsets[data.cluster_kind == kinds.index(kind)]
        return [data.text[s:e] for s, e in spans.tolist()]

    great = train[3]
    assert great.text == 'A great film. I loved it!\n\nThe cast is superb.'
    assert units(great, 'paragraph') == ['A great film. I loved it!',
                                         'The cast is superb.']
    assert units(great, 'sentence') == ['A great film.', 'I loved it!',
                                        'The cast is superb.']
    # The leaves are the vocabulary's tokens of the text, in order.
    assert great.x.tolist() == train.vocab.encode(great.text).tolist()
    words = [great.text[s:e].lower() for s, e in great.offsets.tolist()]
    assert words == [train.vocab.lookup(i) for i in great.x.tolist()]
    # The tree: sentences under paragraphs under the root.
    h = great.hierarchy
    assert h.num_leaves == 13 and h.num_clusters == 6
    parent = h.parent.tolist()
    assert parent[:13] == [13] * 4 + [14] * 4 + [15] * 5
    assert parent[13:] == [16, 16, 17, 18, 18, -1]

    # One <br /> is a line break, which ends no sentence.
    dull = train[0]
    assert dull.text == 'Dull plot. Bad acting\nReally bad.'
    assert units(dull, 'paragraph') == [dull.text]
    assert units(dull, 'sentence') == ['Dull plot.',
                                       'Bad acting\nReally bad.']
    # Three breaks in a row are one paragraph break.
    boring = train[2]
    assert boring.text == 'Boring.\n\nSkip it.'
    assert units(boring, 'paragraph') == ['Boring.', 'Skip it.']
    assert IMDBReviews.review_text('a<br/>b<BR>c<br />  <br>d') == \
        'a\nb\nc\n\nd'


def test_no_review_is_truncated(train):
    long = train[4]
    text = IMDBReviews.review_text(LONG)
    assert long.text == text
    tokens = train.vocab.tokenize(text)
    assert len(tokens) == 920
    assert long.num_nodes == len(tokens)
    assert long.offsets[-1].tolist() == [len(text) - 1, len(text)]
    kinds = long.cluster_kind.tolist()
    assert kinds.count(1) == 40 and kinds.count(2) == 120


def test_the_splits_share_the_training_vocabulary(root, train):
    test = IMDBReviews(root, split='test', log=False)
    assert test.vocab == train.vocab
    assert test.y.tolist() == [0, 1] and test.rating.tolist() == [3, 8]
    zebras = test[1]
    assert zebras.text == 'Zebras were great!\n\nA film.'
    assert 'zebras' not in train.vocab
    assert zebras.x[0].item() == train.vocab.unk_id
    assert zebras.x[1].item() == train.vocab['were']
    # One vocabulary file for both splits; every option its own files.
    processed = os.listdir(osp.join(root, 'processed'))
    assert 'aclImdb_vocab-min1.json' in processed
    assert {'train_aclImdb_vocab-min1.pt',
            'test_aclImdb_vocab-min1.pt'} <= set(processed)
    small = IMDBReviews(root, split='test', min_freq=2, vocab_size=3,
                        log=False)
    assert small.processed_file_names == [
        'test_aclImdb_vocab-min2-max3.pt',
        'test_aclImdb_vocab-min2-max3_meta.json',
        'aclImdb_vocab-min2-max3.json']
    assert len(small.vocab) == 5 and small.vocab.tokens[2] == '.'
    assert small[1].x.tolist() == small.vocab.encode(small[1].text).tolist()
    # Loaded back, not processed again.

    def fail(self):
        raise AssertionError('processed again')

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setattr(IMDBReviews, 'process', fail)
        warnings.simplefilter('error')
        again = IMDBReviews(root, split='test', log=False)
    assert torch.equal(again.x, test.x)


class Tag(BaseTransform):
    r"""Stores :obj:`value` in every review."""
    def __init__(self, value):
        self.value = value

    def forward(self, data):
        data.tag = torch.tensor([self.value])
        return data

    def __repr__(self):
        return f'Tag({self.value})'


def test_a_split_made_with_another_pre_transform_is_refused(tmp_path):
    write_corpus(tmp_path / 'raw')
    root = str(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        IMDBReviews(root, pre_transform=Tag(1), log=False)
        IMDBReviews(root, split='test', pre_transform=Tag(2), log=False)
        train = IMDBReviews(root, pre_transform=Tag(1), log=False)
    # PyG's one record per folder is that of the split processed last.
    assert not [w for w in caught if 'pre_transform' in str(w.message)]
    assert train.tag.tolist() == [1] * len(train)
    with pytest.raises(ValueError, match=(
            r"'train_aclImdb_vocab-min1\.pt' .* made with pre_transform="
            r"Tag\(1\), but pre_transform=Tag\(2\) was given.*"
            r"force_reload=True")):
        IMDBReviews(root, pre_transform=Tag(2), log=False)
    train = IMDBReviews(root, pre_transform=Tag(2), force_reload=True,
                        log=False)
    assert train.tag.tolist() == [2] * len(train)


def test_a_data_loader_batch_through_hsa_conv(train):
    batch = next(iter(DataLoader(train, batch_size=3)))
    assert batch.num_graphs == 3
    assert batch.y.tolist() == [0, 0, 0]
    assert batch.rating.tolist() == [2, 4, 1]
    assert len(batch.text) == 3
    h = batch.hierarchy
    assert h.num_trees == 3
    assert h.num_leaves == sum(train[i].num_nodes for i in range(3))

    torch.manual_seed(0)
    embed = torch.nn.Embedding(len(train.vocab), 8)
    conv = HSAConv(8, 4, heads=2)
    out = conv(embed(batch.x), h)
    assert out.shape == (batch.num_nodes, 8)
    # Each review's rows are the layer's output on the review alone.
    for i in range(3):
        alone = conv(embed(train[i].x), train[i].hierarchy)
        assert torch.allclose(out[batch.batch == i], alone, atol=1e-5)


def test_download_extracts_the_archive(tmp_path, monkeypatch):
    source = tmp_path / 'source'
    write_corpus(source)
    archive = tmp_path / 'aclImdb_v1.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(source / 'aclImdb', arcname='aclImdb')
    monkeypatch.setattr(IMDBReviews, 'url', archive.as_uri())
    root = tmp_path / 'root'
    dataset = IMDBReviews(str(root), split='test', log=False)
    assert dataset.y.tolist() == [0, 1]
    assert dataset.vocab is not None and 'superb' in dataset.vocab
    raw = os.listdir(root / 'raw')
    assert raw == ['aclImdb']  # the archive is removed once extracted
    assert sorted(os.listdir(root / 'raw' / 'aclImdb' / 'train')) == [
        'neg', 'pos', 'unsup']


def test_a_tokenizer_instead_of_the_vocabulary(tmp_path):
    tokenizers = pytest.importorskip('tokenizers')
    # Only the test split: a tokenizer needs no training files.
    write_corpus(tmp_path / 'raw', {'test': CORPUS['test']})
    words = ['[UNK]', 'bad', 'film', 'were', '.', '!']
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    dataset = IMDBReviews(str(tmp_path), split='test', tokenizer=tokenizer,
                          log=False)
    assert dataset.vocab is None
    assert dataset.raw_file_names == ['aclImdb/test/neg', 'aclImdb/test/pos']
    assert dataset[0].x.tolist() == [1, 2, 4, 0, 4]
    assert dataset.processed_stem.startswith('test_aclImdb_tokenizer-')
    with pytest.raises(ValueError, match="'min_freq' and 'vocab_size' "
                       "shape the built-in vocabulary"):
        IMDBReviews(str(tmp_path), tokenizer=tokenizer, min_freq=2)
    with pytest.raises(TypeError, match="'tokenizer' must be"):
        IMDBReviews(str(tmp_path), tokenizer={'a': 0})


def test_errors_and_empty_reviews(tmp_path):
    with pytest.raises(ValueError, match="'split' must be one of "
                       r"\('train', 'test'\), got 'unsup'"):
        IMDBReviews(str(tmp_path), split='unsup')
    with pytest.raises(ValueError, match="'min_freq' must be an int in"):
        IMDBReviews(str(tmp_path), min_freq=0)
    with pytest.raises(TypeError, match="'vocab_size' must be an int"):
        IMDBReviews(str(tmp_path), vocab_size=2.5)

    corpus = {'train': {'pos': {'0_9': 'Fine.', '1_8': ' <br /><br /> '},
                        'neg': {'0_1': 'Poor.'}}}
    write_corpus(tmp_path / 'raw', corpus)
    (tmp_path / 'raw' / 'aclImdb' / 'train' / 'pos' / '.DS_Store').write_text(
        'ignored')
    with pytest.warns(UserWarning, match="skipped 1 of the 3 documents of "
                      "the 'train' split .*aclImdb/train/pos/1_8.txt, the "
                      "text is empty"):
        dataset = IMDBReviews(str(tmp_path), log=False)
    assert dataset.y.tolist() == [0, 1]
    assert dataset.skipped == [('aclImdb/train/pos/1_8.txt',
                                'the text is empty')]

    bad = tmp_path / 'raw' / 'aclImdb' / 'train' / 'neg' / 'notes.txt'
    bad.write_text('a stray file')
    with pytest.raises(ValueError, match="'aclImdb/train/neg/notes.txt' is "
                       "not named '<id>_<rating>.txt'"):
        IMDBReviews(str(tmp_path), force_reload=True, log=False)
    bad.rename(bad.with_name('3_11.txt'))
    with pytest.raises(ValueError, match="gives the rating 11, but ratings "
                       "are scores from 1 to 10"):
        IMDBReviews(str(tmp_path), force_reload=True, log=False)


def test_workers_give_the_same_reviews(tmp_path, train):
    write_corpus(tmp_path / 'raw')
    parallel = IMDBReviews(str(tmp_path), num_workers=2, log=False)
    assert parallel.num_workers == 2
    assert len(parallel) == len(train)
    for a, b in zip(parallel, train):
        assert_same_signal(a, b)
    assert parallel.vocab == train.vocab


def test_a_review_without_tokens_is_skipped_in_workers(tmp_path):
    """A review in which the tokenizer finds no token is skipped and
    listed, as a blank one is, also when workers build the trees."""
    tokenizers = pytest.importorskip('tokenizers')
    write_corpus(tmp_path / 'raw', {'test': {
        'pos': {'0_8': 'Zebras were great!'}, 'neg': {'0_3': 'dull'}}})
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {'[UNK]': 0}, unk_token='[UNK]'))
    # Lowercase words vanish: 'dull' gives no token at all.
    tokenizer.normalizer = tokenizers.normalizers.Replace(
        tokenizers.Regex('[a-z]+'), '')
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    with pytest.warns(UserWarning, match='skipped 1 of the 2'):
        dataset = IMDBReviews(str(tmp_path), split='test',
                              tokenizer=tokenizer, log=False, num_workers=2)
    assert len(dataset) == 1
    assert dataset.skipped == [('aclImdb/test/neg/0_3.txt',
                                'the text has no tokens')]


def test_bad_num_workers(tmp_path):
    with pytest.raises(ValueError, match="'num_workers' must be 0"):
        IMDBReviews(str(tmp_path), num_workers=-1)
    with pytest.raises(TypeError, match="'num_workers' must be an int"):
        IMDBReviews(str(tmp_path), num_workers='2')


# Raw data that changes, and byte order marks ###############################


def _write_review(root, split, folder, name, text, encoding='utf-8'):
    path = os.path.join(root, 'raw', 'aclImdb', split, folder)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), 'w', encoding=encoding) as f:
        f.write(text)


def test_a_split_of_another_vocabulary_is_refused(tmp_path):
    """The splits share one vocabulary file: a split cached with the ids
    of a vocabulary rebuilt since is not read with the new one."""
    root = str(tmp_path)
    _write_review(root, 'train', 'pos', '0_9.txt', 'A great film.')
    _write_review(root, 'train', 'neg', '0_1.txt', 'A bad film.')
    _write_review(root, 'test', 'pos', '0_8.txt', 'A great film.')
    _write_review(root, 'test', 'neg', '0_2.txt', 'A bad film.')
    IMDBReviews(root, log=False)
    IMDBReviews(root, split='test', log=False)
    _write_review(root, 'train', 'neg', '1_2.txt',
                  'Terrible terrible terrible acting acting, bad bad.')
    IMDBReviews(root, force_reload=True, log=False)
    with pytest.raises(ValueError, match=r"'test_aclImdb_vocab-min1\.pt'.*"
                       r"vocabulary.*force_reload=True"):
        IMDBReviews(root, split='test', log=False)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        test = IMDBReviews(root, split='test', force_reload=True, log=False)
    for data in test:
        assert data.x.tolist() == test.vocab.encode(data.text).tolist()


def test_a_byte_order_mark_is_not_text(tmp_path):
    for folder, name, text in (('pos', '0_9.txt', 'Great film.'),
                               ('neg', '0_1.txt', 'Bad film.')):
        _write_review(str(tmp_path), 'train', folder, name, text,
                      encoding='utf-8-sig')
    dataset = IMDBReviews(str(tmp_path), log=False)
    assert [d.text for d in dataset] == ['Bad film.', 'Great film.']
    assert '\ufeff' not in dataset.vocab.tokens
