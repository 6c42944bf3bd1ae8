r"""Tests of :class:`hsa_geo.huggingface.TokenHierarchy`: the forest of a
padded batch of a BERT (WordPiece) and a RoBERTa (byte-level BPE)
tokenizer trained here, the options for special tokens, and every error
message."""
from collections import defaultdict

import pytest
import torch

pytest.importorskip('transformers')

from hsa_geo.huggingface import TokenForest, TokenHierarchy  # noqa: E402
from tests.helpers.huggingface import (TEXTS, bert_tokenizer,  # noqa: E402
                                       roberta_tokenizer)

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module', params=['bert', 'roberta'])
def tokenizer(request):
    return bert_tokenizer() if request.param == 'bert' else \
        roberta_tokenizer()


def children(parent):
    out = defaultdict(list)
    for node, p in enumerate(parent.tolist()):
        if p >= 0:
            out[p].append(node)
    return out


def root_of(parent, node):
    while parent[node] >= 0:
        node = int(parent[node])
    return node


@pytest.mark.parametrize('special', ['root', 'own', 'global'])
def test_one_tree_per_sequence(tokenizer, special):
    inputs, forest = TokenHierarchy(tokenizer,
                                    special_tokens=special).encode(TEXTS)
    assert isinstance(forest, TokenForest)
    batch, length = inputs['input_ids'].shape
    assert forest.batch_size == batch and forest.seq_len == length
    h = forest.hierarchy
    assert h.num_leaves == batch * length
    assert torch.equal(forest.valid, inputs['attention_mask'].bool())
    parent = h.parent
    for b in range(batch):
        rows = range(b * length, (b + 1) * length)
        real = [r for r in rows if forest.valid.view(-1)[r]]
        pad = [r for r in rows if not forest.valid.view(-1)[r]]
        assert all(parent[r] == -1 for r in pad)  # one-leaf trees
        special_rows = [r for r in real if forest.special.view(-1)[r]]
        words = [r for r in real if r not in special_rows]
        assert len(special_rows) == 2  # [CLS]/[SEP] or <s>/</s>
        roots = {root_of(parent, r) for r in words}
        assert len(roots) == 1 and roots.isdisjoint(real)
        root = roots.pop()
        for r in special_rows:
            if special == 'own':
                assert parent[r] == -1
            else:
                assert parent[r] == root
    expected = forest.special.view(-1).nonzero().view(-1) \
        if special == 'global' else torch.zeros(0, dtype=torch.long)
    assert torch.equal(forest.global_leaves, expected)
    assert 'offset_mapping' not in inputs


def test_tree_of_a_known_text():
    tokenizer = bert_tokenizer()
    text = 'A cat sat. It slept well!\n\nThe end.'
    inputs, forest = TokenHierarchy(tokenizer).encode([text])
    tokens = tokenizer.convert_ids_to_tokens(inputs['input_ids'][0])
    assert tokens == ['[CLS]', 'a', 'cat', 'sat', '.', 'it', 's', '##l',
                      '##e', '##p', '##t', 'well', '!', 'the', 'end', '.',
                      '[SEP]']
    # 'slept' is word 17 (single-token words get no node); sentences
    # 18-20; paragraphs 21, 22; root 23, which also holds [CLS] and [SEP].
    assert forest.hierarchy.parent.tolist() == [
        23, 18, 18, 18, 18, 19, 17, 17, 17, 17, 17, 19, 19, 20, 20, 20, 23,
        19, 21, 21, 22, 23, 23, -1]


def test_levels_and_single_token_words(tokenizer):
    inputs, flat = TokenHierarchy(tokenizer, levels=()).encode(TEXTS)
    h, length = flat.hierarchy, flat.seq_len
    assert h.num_nodes == h.num_leaves + len(TEXTS)  # one root each
    kids = children(h.parent)
    for b in range(len(TEXTS)):
        root = h.num_leaves + b
        assert kids[root] == flat.valid[b].nonzero().view(-1).add(
            b * length).tolist()
    # levels=('sentence',): the tokens of a sentence are its children.
    _, sent = TokenHierarchy(tokenizer, levels=('sentence',)).encode(TEXTS)
    assert sent.hierarchy.depth == 2
    _, full = TokenHierarchy(tokenizer).encode(TEXTS)
    _, kept = TokenHierarchy(tokenizer,
                             keep_single_token_words=True).encode(TEXTS)
    words = int((kept.valid & ~kept.special).sum())
    extra = kept.hierarchy.num_nodes - full.hierarchy.num_nodes
    assert 0 < extra < words
    # every real non-special token has the same depth
    depth = kept.hierarchy.node_depth[:kept.hierarchy.num_leaves]
    real = (kept.valid & ~kept.special).view(-1)
    assert depth[real].unique().numel() == 1


def test_truncated_batch(tokenizer):
    inputs, forest = TokenHierarchy(tokenizer).encode(
        TEXTS, truncation=True, max_length=12)
    assert inputs['input_ids'].shape[1] == 12
    assert forest.hierarchy.num_leaves == 12 * len(TEXTS)
    assert int(forest.special.sum()) == 2 * len(TEXTS)


def test_left_padding():
    tokenizer = bert_tokenizer()
    tokenizer.padding_side = 'left'
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    tokenizer.padding_side = 'right'
    right_inputs, right = TokenHierarchy(tokenizer).encode(TEXTS)
    assert not forest.valid[:, 0].all()
    assert torch.equal(forest.valid.sum(1), right.valid.sum(1))
    assert forest.hierarchy.num_nodes == right.hierarchy.num_nodes


def test_errors():
    tokenizer = bert_tokenizer()
    with pytest.raises(TypeError, match='fast tokenizer'):
        TokenHierarchy(object())
    with pytest.raises(ValueError, match="'special_tokens' must be one"):
        TokenHierarchy(tokenizer, special_tokens='drop')
    with pytest.raises(ValueError, match='not a level'):
        TokenHierarchy(tokenizer, levels=('chapter', ))
    builder = TokenHierarchy(tokenizer)
    with pytest.raises(TypeError, match='wrap a single text'):
        builder.encode('one text')
    with pytest.raises(TypeError, match=r'texts\[1\] must be a str'):
        builder.encode(['a', 3])
    encoding = tokenizer(TEXTS, padding=True)
    with pytest.raises(ValueError, match='return_offsets_mapping=True'):
        builder(encoding, TEXTS)
    encoding = tokenizer(TEXTS, padding=True, return_offsets_mapping=True)
    with pytest.raises(ValueError, match='2 texts were given'):
        builder(encoding, TEXTS[:2])
    with pytest.raises(ValueError, match='pass the texts that were encoded'):
        builder(encoding, [TEXTS[0], 'short', TEXTS[2]])
    with pytest.raises(TypeError, match='BatchEncoding'):
        builder({'attention_mask': [[1]]}, ['a'])
    unpadded = tokenizer(TEXTS, return_offsets_mapping=True)
    with pytest.raises(ValueError, match='padded batch'):
        builder(unpadded, TEXTS)
    pair = tokenizer([TEXTS[0]], [TEXTS[1]], return_offsets_mapping=True)
    with pytest.raises(ValueError, match='pair of texts'):
        builder(pair, [TEXTS[0]])
    assert repr(builder).startswith('TokenHierarchy(tokenizer=')
    for key in ('return_tensors', 'return_offsets_mapping'):
        with pytest.raises(TypeError, match=f"encode sets '{key}' itself"):
            builder.encode(TEXTS, **{key: 'np' if key == 'return_tensors'
                                     else False})


def test_repr_names_what_changes_the_forest():
    """Options and tokenizers that change the forest change the repr,
    as the repr of DocumentHierarchy does."""
    bert, roberta = bert_tokenizer(), roberta_tokenizer()
    plain = TokenHierarchy(bert)
    words = TokenHierarchy(bert, keep_single_token_words=True)
    assert repr(words) != repr(plain)
    assert repr(words).endswith(', keep_single_token_words=True)')
    assert repr(TokenHierarchy(roberta)) != repr(plain)
    before = repr(plain)
    plain.encode(TEXTS, truncation=True, max_length=8)
    assert repr(plain) == before  # a used tokenizer tags as a fresh one


def test_empty_list_of_texts():
    tokenizer = bert_tokenizer()
    builder = TokenHierarchy(tokenizer)
    with pytest.raises(ValueError, match="'texts' is empty"):
        builder.encode([])
    encoding = tokenizer(TEXTS, padding=True, return_offsets_mapping=True)
    with pytest.raises(ValueError, match="'texts' is empty"):
        builder(encoding, [])
