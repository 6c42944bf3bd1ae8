r"""``examples/document_classification.py`` trains every arm for one epoch
on a tiny man-pages corpus written here (gzipped roff pages in ``man2``
and ``man3`` folders), and writes one JSON with every arm, finite metrics
and the attention FLOPs that the arms' trees imply."""
import gzip
import json
import math

import pytest
import torch
from torch_geometric.loader import DataLoader

from hsa_geo.functional import hierarchical_attention
from tests.examples import load_example

documents = load_example('document_classification')
pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--hidden', '8', '--layers', '1', '--heads', '2',
        '--batch-size', '8', '--max-tokens', '16', '--no-progress']
WORDS = {'2': 'call kernel process signal file descriptor returns error',
         '3': 'function library string buffer stream pointer value locale'}


def page(section: str, i: int) -> str:
    r"""A page of a few sections, paragraphs and sentences whose words
    tell its section."""
    words = WORDS[section].split()
    sentence = ' '.join(words[(i + j) % len(words)] for j in range(5 + i % 4))
    return '\n'.join([
        f'.TH PAGE{i} {section}', '.SH NAME', f'page{i} \\- a test page',
        '.SH DESCRIPTION', f'The {sentence}.  It {sentence} again.',
        '.PP', f'Another {sentence}.  And one more {sentence}.',
        '.SH NOTES', f'{sentence.capitalize()} here.', ''])


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    r"""36 pages of sections 2 and 3 (the hash of these names puts some
    into each part of the split)."""
    folder = tmp_path_factory.mktemp('man')
    for i in range(36):
        section = '23'[i % 2]
        path = folder / f'man{section}' / f'page{i}.{section}.gz'
        path.parent.mkdir(exist_ok=True)
        with gzip.open(path, 'wt') as f:
            f.write(page(section, i))
    return str(folder), str(tmp_path_factory.mktemp('data'))


def test_one_epoch_of_every_arm(corpus, tmp_path):
    pages, root = corpus
    result = documents.main(['--paths', pages, '--root', root, '--out',
                             str(tmp_path), *TINY])
    name = 'documents_man-pages'
    with open(tmp_path / f'{name}.json') as f:
        assert json.load(f) == json.loads(json.dumps(result))
    assert (tmp_path / f'{name}.png').stat().st_size > 1000
    assert list(result['arms']) == list(documents.ARMS)
    params, flops = {}, {}
    for arm, res in result['arms'].items():
        (run, ) = res['runs']
        (epoch, ) = run['epochs']
        assert math.isfinite(epoch['loss']) and epoch['loss'] > 0
        for key in ('valid', 'test', 'valid_f1', 'test_f1'):
            assert 0 <= run['final'][key] <= 1
        assert run['seconds_per_epoch'] > 0
        assert math.isfinite(run['peak_memory_mb'])
        params[arm] = run['final']['num_parameters']
        flops[arm] = res['attention_flops']
        assert flops[arm] > 0
    # The first four arms differ only in the tree.
    assert params['hsa'] == params['flat'] == params['truncated'] == \
        params['local']
    # Guaranteed: fewer tokens, or blocks that partition them.
    assert flops['truncated'] <= flops['flat']
    assert flops['local'] <= flops['flat']
    assert flops['hsa_pe'] == flops['hsa_geometry'] == flops['hsa']


def test_trees_of_the_arms(corpus):
    r"""``flat`` is softmax over each document, ``local`` softmax within
    each sentence, ``truncated`` softmax over the leading tokens."""
    pages, root = corpus
    dataset = documents.ManPages(f'{root}/ManPages', paths=[pages],
                                 min_pages_per_section=2, min_freq=1,
                                 log=False)
    below = [dataset.KINDS.index('word')]
    docs = [documents.light_document(dataset[i], None) for i in range(3)]
    data = next(iter(DataLoader(docs, batch_size=3)))
    n = data.num_nodes
    torch.manual_seed(0)
    q, k, v = torch.randn(3, n, 2, 4).unbind(0)

    def softmax_within(group: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum('ihc,jhc->hij', q, k) / 2.0
        same = group.view(-1, 1) == group.view(1, -1)
        weights = scores.masked_fill(~same, -math.inf).softmax(-1)
        return torch.einsum('hij,jhc->ihc', weights, v)

    flat = documents.ArmInput('flat', data, below, 16).tree
    assert torch.allclose(hierarchical_attention(q, k, v, flat),
                          softmax_within(data.batch), atol=1e-5)
    local = documents.ArmInput('local', data, below, 16).tree
    sentence = documents.sentence_of_leaves(data.hierarchy,
                                            data.cluster_kind, below)
    kinds = data.cluster_kind[sentence - n]
    assert (kinds == dataset.KINDS.index('sentence')).all()
    assert local.num_trees == sentence.unique().numel() > 3
    assert torch.allclose(hierarchical_attention(q, k, v, local),
                          softmax_within(sentence), atol=1e-5)
    truncated = documents.ArmInput('truncated', data, below, 16)
    assert truncated.x.numel() == 3 * 16 and truncated.tree.num_trees == 3
    # A document cut to its first tokens keeps the tree above them.
    cut = documents.light_document(dataset[0], 10)
    assert cut.num_nodes == 10
    assert cut.cluster_kind.numel() == cut.hierarchy.num_clusters
    assert cut.cluster_kind[-1] == dataset.KINDS.index('page')
