r"""AmazonElec on a tiny corpus written in the format of the authors'
archive elec2.tar.gz: elec/elec-<size>-train.{txt,txt.tok,cat} and
elec/elec-test.{txt,txt.tok,cat}, one review or label ('1' negative, '2'
positive) per line; downloaded from a file:// URL."""
import os
import os.path as osp
import socket
import tarfile

import pytest
import torch
from torch_geometric.loader import DataLoader

from hsa_geo.data import NestedSignal
from hsa_geo.datasets import AmazonElec
from hsa_geo.nn import HSAConv
from hsa_geo.transforms import DocumentHierarchy
from tests.helpers.signals import assert_same_signal

# A long review: 150 sentences, 1,200 tokens on one line.
LONG = ' '.join(f'Sentence {i} of a very long review.' for i in range(150))

# set -> [(text, tokenized text, label)]
CORPUS = {
    'elec-25k-train': [
        ('Works great. I love it!', 'Works great . I love it !', '2'),
        ('Broke after a day. Do not buy.',
         'Broke after a day . Do not buy .', '1'),
        # A stray carriage return inside a review does not split it.
        ('Cheap cable.\rIt works.', 'Cheap cable .\rIt works .', '2'),
        (LONG, LONG.replace('.', ' .'), '2'),
        ('Returned it, e.g. for noise.', 'Returned it , e.g. for noise .',
         '1'),
    ],
    'elec-test': [
        ('Quixotic gadget. Works.', 'Quixotic gadget . Works .', '2'),
        ('Do not buy.', 'Do not buy .', '1'),
    ],
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


def write_corpus(raw, corpus=CORPUS, end='\n'):
    r"""Writes :obj:`corpus` as the archive holds it, under ``raw/elec``,
    every line ended by :obj:`end`."""
    path = raw / 'elec'
    path.mkdir(parents=True, exist_ok=True)
    for name, reviews in corpus.items():
        for ext, column in (('txt', 0), ('txt.tok', 1), ('cat', 2)):
            lines = ''.join(r[column] + end for r in reviews)
            (path / f'{name}.{ext}').write_bytes(lines.encode('utf-8'))
    (path / 'README').write_text('Elec dataset\n')


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp('elec')
    write_corpus(path / 'raw')
    return str(path)


@pytest.fixture(scope='module')
def train(root):
    return AmazonElec(root, log=False)


def units(data, kind):
    r"""The text of the clusters of :obj:`kind`, in reading order."""
    kinds = DocumentHierarchy.KINDS
    spans = data.cluster_offsets[data.cluster_kind == kinds.index(kind)]
    return [data.text[s:e] for s, e in spans.tolist()]


def test_labels_and_lines(train):
    assert len(train) == 5 and train.num_classes == 2
    assert all(isinstance(d, NestedSignal) for d in train)
    # '1' is negative (0), '2' positive (1).
    assert train.y.tolist() == [1, 0, 1, 1, 0]
    assert train.line.tolist() == [0, 1, 2, 3, 4]
    assert [d.text for d in train] == [r[0] for r in CORPUS['elec-25k-train']]
    assert train.raw_file_names == ['elec/elec-25k-train.txt',
                                    'elec/elec-25k-train.cat']


def test_sentences_and_the_tree(train):
    first = train[0]
    # One line, one paragraph.
    assert units(first, 'paragraph') == ['Works great. I love it!']
    assert units(first, 'sentence') == ['Works great.', 'I love it!']
    assert first.x.tolist() == train.vocab.encode(first.text).tolist()
    assert first.hierarchy.parent.tolist() == [7, 7, 7, 8, 8, 8, 8, 9, 9,
                                               10, -1]
    assert units(train[2], 'sentence') == ['Cheap cable.', 'It works.']
    # No sentence end before a lowercase letter.
    assert units(train[4], 'sentence') == ['Returned it, e.g. for noise.']


def test_no_review_is_truncated(train):
    long = train[3]
    assert long.text == LONG
    assert long.num_nodes == len(train.vocab.tokenize(LONG)) == 1200
    assert long.offsets[-1].tolist() == [len(LONG) - 1, len(LONG)]
    assert long.cluster_kind.tolist().count(2) == 150


def test_the_splits_share_the_training_vocabulary(root, train):
    test = AmazonElec(root, split='test', log=False)
    assert test.vocab == train.vocab
    assert test.y.tolist() == [1, 0]
    assert 'quixotic' not in train.vocab
    assert test[0].x.tolist()[:3] == [train.vocab.unk_id,
                                      train.vocab['gadget'],
                                      train.vocab['.']]
    processed = os.listdir(osp.join(root, 'processed'))
    assert 'elec25k_vocab-min1.json' in processed
    assert test.raw_file_names == [
        'elec/elec-25k-train.txt', 'elec/elec-25k-train.cat',
        'elec/elec-test.txt', 'elec/elec-test.cat']
    small = AmazonElec(root, split='test', vocab_size=4, log=False)
    assert small.processed_stem == 'test_elec25k_vocab-min1-max4'
    assert len(small.vocab) == 6
    assert small[1].x.tolist() == small.vocab.encode('Do not buy.').tolist()


def test_the_tokenized_files(root, train):
    tok = AmazonElec(root, tokenized=True, log=False)
    assert tok.processed_stem == 'train_elec25k-tok_vocab-min1'
    assert tok.raw_file_names == ['elec/elec-25k-train.txt.tok',
                                  'elec/elec-25k-train.cat']
    assert tok[0].text == 'Works great . I love it !'
    assert tok.y.tolist() == train.y.tolist()
    # The blanks before the marks do not change sentences or tokens.
    assert units(tok[0], 'sentence') == ['Works great .', 'I love it !']
    assert tok[0].x.tolist() == [tok.vocab[w] for w in
                                 ('works', 'great', '.', 'i', 'love', 'it',
                                  '!')]
    test = AmazonElec(root, split='test', tokenized=True, log=False)
    assert test.vocab == tok.vocab


def test_a_data_loader_batch_through_hsa_conv(train):
    batch = next(iter(DataLoader(train, batch_size=3)))
    assert batch.num_graphs == 3 and batch.y.tolist() == [1, 0, 1]
    assert batch.line.tolist() == [0, 1, 2]
    h = batch.hierarchy
    assert h.num_trees == 3
    assert h.num_leaves == sum(train[i].num_nodes for i in range(3))

    torch.manual_seed(0)
    embed = torch.nn.Embedding(len(train.vocab), 8)
    conv = HSAConv(8, 4, heads=2)
    out = conv(embed(batch.x), h)
    for i in range(3):
        alone = conv(embed(train[i].x), train[i].hierarchy)
        assert torch.allclose(out[batch.batch == i], alone, atol=1e-5)


def test_download_extracts_the_archive(tmp_path, monkeypatch):
    source = tmp_path / 'source'
    write_corpus(source, end='\r\n')  # CRLF line ends are read as well
    archive = tmp_path / 'elec2.tar.gz'
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(source / 'elec', arcname='elec')
    monkeypatch.setattr(AmazonElec, 'url', archive.as_uri())
    root = tmp_path / 'root'
    dataset = AmazonElec(str(root), split='test', log=False)
    assert dataset.y.tolist() == [1, 0]
    assert [d.text for d in dataset] == [r[0] for r in CORPUS['elec-test']]
    assert os.listdir(root / 'raw') == ['elec']  # the archive is removed


def test_a_tokenizer_instead_of_the_vocabulary(tmp_path):
    tokenizers = pytest.importorskip('tokenizers')
    # Only the test set: a tokenizer needs no training files.
    write_corpus(tmp_path / 'raw', {'elec-test': CORPUS['elec-test']})
    words = ['[UNK]', 'do', 'not', 'buy', '.']
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    dataset = AmazonElec(str(tmp_path), split='test', tokenizer=tokenizer,
                         log=False)
    assert dataset.vocab is None
    assert dataset[1].x.tolist() == [1, 2, 3, 4]
    assert dataset.processed_stem.startswith('test_elec25k_tokenizer-')


def test_a_review_without_tokens_is_skipped(tmp_path):
    """A review that is not blank but in which the tokenizer finds no token
    (zero-width spaces, which BERT's normalizer removes) is skipped and
    listed as an empty one is, not an error that stops the whole split."""
    tokenizers = pytest.importorskip('tokenizers')
    corpus = {'elec-test': [('Do not buy.', 'Do not buy .', '1'),
                            ('\u200b\u200b', '\u200b\u200b', '2')]}
    write_corpus(tmp_path / 'raw', corpus)
    words = ['[UNK]', 'do', 'not', 'buy', '.']
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    with pytest.warns(UserWarning, match='skipped 1 of the 2'):
        dataset = AmazonElec(str(tmp_path), split='test',
                             tokenizer=tokenizer, log=False)
    assert len(dataset) == 1 and dataset[0].x.tolist() == [1, 2, 3, 4]
    assert dataset.skipped == [("'elec/elec-test.txt' line 2",
                                'the text has no tokens')]


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="'train_size' must be one of"):
        AmazonElec(str(tmp_path), train_size='30k')
    with pytest.raises(TypeError, match="'tokenized' must be True"):
        AmazonElec(str(tmp_path), tokenized='yes')
    with pytest.raises(ValueError, match="'split' must be one of"):
        AmazonElec(str(tmp_path), split='dev')

    corpus = {'elec-25k-train': CORPUS['elec-25k-train'][:2]}
    write_corpus(tmp_path / 'raw', corpus)
    cat = tmp_path / 'raw' / 'elec' / 'elec-25k-train.cat'
    cat.write_text('2\n1\n2\n')
    with pytest.raises(ValueError, match="'elec/elec-25k-train.txt' has 2 "
                       "reviews but 'elec/elec-25k-train.cat' 3 labels"):
        AmazonElec(str(tmp_path), log=False)
    cat.write_text('2\npos\n')
    with pytest.raises(ValueError, match="line 2 of 'elec/elec-25k-train"
                       ".cat' is 'pos'; a label is '1' .* or '2'"):
        AmazonElec(str(tmp_path), log=False)

    cat.write_text('2\n1\n1\n')
    (tmp_path / 'raw' / 'elec' / 'elec-25k-train.txt').write_text(
        'Good.\n  \nBad.\n')
    with pytest.warns(UserWarning, match="skipped 1 of the 3 documents .*"
                      "'elec/elec-25k-train.txt' line 2, the text is "
                      "empty"):
        dataset = AmazonElec(str(tmp_path), log=False)
    assert dataset.y.tolist() == [1, 0] and dataset.line.tolist() == [0, 2]


def test_workers_give_the_same_reviews(tmp_path, train):
    write_corpus(tmp_path / 'raw')
    parallel = AmazonElec(str(tmp_path), num_workers=2, log=False)
    assert parallel.num_workers == 2
    assert len(parallel) == len(train)
    for a, b in zip(parallel, train):
        assert_same_signal(a, b)
    with pytest.raises(ValueError, match="'num_workers' must be 0"):
        AmazonElec(str(tmp_path), num_workers=-1)


def test_a_byte_order_mark_is_not_text(tmp_path):
    elec = tmp_path / 'raw' / 'elec'
    elec.mkdir(parents=True)
    (elec / 'elec-25k-train.txt').write_text('Works great.\nBad cable.\n',
                                             encoding='utf-8-sig')
    (elec / 'elec-25k-train.cat').write_text('2\n1\n')
    dataset = AmazonElec(str(tmp_path), log=False)
    assert dataset[0].text == 'Works great.'
    assert '\ufeff' not in dataset.vocab.tokens
