r"""Tests of the attention FLOPs counters of :mod:`hsa_geo.huggingface`
against hand counts on a small forest."""
import pytest
import torch

pytest.importorskip('transformers')

from hsa_geo import Hierarchy  # noqa: E402
from hsa_geo.huggingface import (HSASpec, TokenForest,  # noqa: E402
                                 TokenHierarchy, dense_attention_flops,
                                 hsa_attention, hsa_attention_flops,
                                 model_attention_flops)
from tests.helpers.huggingface import (TEXTS, bert_tokenizer,  # noqa: E402
                                       tiny_model)

pytestmark = pytest.mark.usefixtures('one_thread')


def small_forest(global_leaves=()):
    r"""Two sequences of L = 4: ``[CLS] w w [SEP]`` with the two words in a
    sentence (node 8) under the root 9; and ``[CLS] w`` under the root 10
    with two padding positions 6, 7."""
    parent = torch.tensor([9, 8, 8, 9, 10, 10, -1, -1, 9, -1, -1])
    valid = torch.tensor([[True] * 4, [True, True, False, False]])
    special = torch.tensor([[True, False, False, True],
                            [True, False, False, False]])
    return TokenForest(Hierarchy.from_parent(parent, 8), valid, special,
                       torch.tensor(global_leaves, dtype=torch.long))


def test_hand_count():
    heads, dim = 2, 16
    forest = small_forest()
    # Real leaves N = 6, nodes T = 11 - 2 padding = 9; sibling pairs P:
    # node 8 has 2 children (4), node 9 has 3 (9), node 10 has 2 (4).
    n, t, p = 6, 9, 17
    assert hsa_attention_flops(forest, heads, dim) == \
        (4 * p + 2 * n + 5 * t) * dim * heads
    # (query, block) pairs R: leaf 0: {8, 3}; 1: {2} + {0, 3}; 2: the same;
    # 3: {0, 8}; 4: {5}; 5: {4}; padding: none.
    r = 2 + 3 + 3 + 2 + 1 + 1
    assert hsa_attention_flops(forest, heads, dim, 'query_resolved') == \
        (4 * r + 2 * n + 2 * t) * dim * heads
    dense = 4 * (4 ** 2 + 2 ** 2) * dim * heads
    assert dense_attention_flops(forest.valid, heads, dim) == dense
    assert hsa_attention_flops(forest, heads, dim, 'softmax') == dense
    # global rows [CLS] and [SEP] of sequence 0: 4 L_0 D each, on top
    with_global = small_forest([0, 3])
    assert hsa_attention_flops(with_global, heads, dim) == \
        (4 * p + 2 * n + 5 * t + 2 * 4 * 4) * dim * heads
    # a bare Hierarchy counts every leaf
    assert hsa_attention_flops(forest.hierarchy, heads, dim) == \
        (4 * p + 2 * 8 + 5 * 11) * dim * heads


def test_model_count():
    model = tiny_model('bert', bert_tokenizer())  # 3 layers, H 2, D 16
    forest = small_forest()
    dense = 4 * (16 + 4) * 16 * 2
    hsa = hsa_attention_flops(forest, 2, 16)
    resolved = hsa_attention_flops(forest, 2, 16, 'query_resolved')
    count = model_attention_flops(
        model, {1: 'hsa', 2: HSASpec('query_resolved', forest='f')},
        {'default': forest, 'f': forest})
    assert count.layers == (dense, hsa, resolved)
    assert count.variants == ('softmax', 'hsa', 'query_resolved')
    assert count.dense == 3 * dense
    assert count.total == dense + hsa + resolved
    assert count.ratio == pytest.approx(count.total / count.dense)
    # the patch counts what it runs
    with hsa_attention(model, {1: 'hsa'}, forest) as patch:
        assert patch.flops() == model_attention_flops(model, [1], forest)


def tiny_albert(tokenizer, layers, groups=1):
    r"""A randomly initialised ``AlbertModel``: :obj:`groups` attention
    modules shared by :obj:`layers` layers, H 2, D 16."""
    import transformers
    config = transformers.AlbertConfig(
        vocab_size=len(tokenizer), embedding_size=16, hidden_size=32,
        num_hidden_layers=layers, num_hidden_groups=groups,
        num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=160, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return transformers.AlbertModel(config).eval()


def test_shared_attention_modules_count_every_call():
    tokenizer = bert_tokenizer()
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    dense = dense_attention_flops(forest.valid, 2, 16)
    hsa = hsa_attention_flops(forest, 2, 16)
    model = tiny_albert(tokenizer, layers=4)  # one module, run 4 times
    with pytest.raises(ValueError, match='4 attention calls per forward '
                                         'with 1 attention modules'):
        model_attention_flops(model, [0], forest)
    with hsa_attention(model, [0], forest) as patch:
        with pytest.raises(ValueError, match='share'):
            patch.flops()  # no forward measured yet
        with torch.no_grad():
            model(**inputs)
        count = patch.flops()
    assert patch.calls == {0: 4} and patch.call_order == [0] * 4
    assert count.layers == (hsa, ) * 4
    assert count.variants == ('hsa', ) * 4
    assert count.dense == 4 * dense
    assert count == model_attention_flops(model, [0], forest,
                                          call_order=[0] * 4)
    # two groups of two layers each
    model = tiny_albert(tokenizer, layers=4, groups=2)
    with hsa_attention(model, {1: 'hsa'}, forest) as patch:
        with torch.no_grad():
            model(**inputs)
        count = patch.flops()
    assert patch.call_order == [0, 0, 1, 1]
    assert count.layers == (dense, dense, hsa, hsa)
    assert count.variants == ('softmax', 'softmax', 'hsa', 'hsa')
    assert count.dense == 4 * dense
    # one module per layer: counted without a forward
    model = tiny_albert(tokenizer, layers=2, groups=2)
    assert model_attention_flops(model, [1], forest).layers == (dense, hsa)


def test_flat_tree_saves_nothing_on_the_scores():
    r"""On a flat tree HSA scores every pair, like softmax: P = L^2."""
    tokenizer = bert_tokenizer()
    _, flat = TokenHierarchy(tokenizer, levels=()).encode(TEXTS)
    lengths = flat.valid.sum(1)
    assert flat.hierarchy.num_sibling_pairs == int(lengths.pow(2).sum())
    _, tree = TokenHierarchy(tokenizer).encode(TEXTS)
    assert hsa_attention_flops(tree, 2, 16) < \
        dense_attention_flops(tree.valid, 2, 16)


def test_errors():
    forest = small_forest()
    with pytest.raises(ValueError, match="'variant' must be one of"):
        hsa_attention_flops(forest, 2, 16, 'flash')
    with pytest.raises(TypeError, match='TokenForest or a Hierarchy'):
        hsa_attention_flops(torch.zeros(2), 2, 16)
    with pytest.raises(ValueError, match='pass a TokenForest'):
        hsa_attention_flops(forest.hierarchy, 2, 16, 'softmax')
    with pytest.raises(ValueError, match=r"'heads' must be an int in"):
        hsa_attention_flops(forest, 0, 16)
    with pytest.raises(ValueError, match=r'\[B, L\] attention mask'):
        dense_attention_flops(torch.ones(3, dtype=torch.bool), 2, 16)
    model = tiny_model('bert', bert_tokenizer())
    with pytest.raises(ValueError, match='no TokenForest'):
        model_attention_flops(model, [0], forest.hierarchy)
    with pytest.raises(ValueError, match="lacks"):
        model_attention_flops(model, {0: HSASpec(forest='x')}, forest)
    with pytest.raises(TypeError, match="'forests' must be"):
        model_attention_flops(model, [0], [forest])
    with pytest.raises(ValueError, match='Module has no attention module'):
        model_attention_flops(torch.nn.Module(), [], forest)
    with pytest.raises(ValueError, match=r'indices in 0\.\.2.*got 3'):
        model_attention_flops(model, [0], forest, call_order=[0, 3])
    with pytest.raises(TypeError, match="'call_order' must be a list"):
        model_attention_flops(model, [0], forest, call_order=3)


def test_flops_count_the_forest_passed_with_the_call():
    tokenizer = bert_tokenizer()
    model = tiny_model('bert', tokenizer)
    builder = TokenHierarchy(tokenizer)
    _, small = builder.encode(TEXTS[:1])
    inputs, forest = builder.encode(TEXTS)
    layers = {0: 'hsa', 1: 'query_resolved'}
    expected = model_attention_flops(model, layers, forest)
    with torch.no_grad(), hsa_attention(model, layers, small) as patch:
        model(**inputs, hsa_forest=forest)
        assert patch.flops() == expected
    with torch.no_grad(), hsa_attention(model, layers) as patch:
        model(**inputs, hsa_forest=forest)
        assert patch.flops() == expected


def test_an_encoder_decoder_is_not_taken_for_shared_layers():
    import transformers
    config = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
    forest = TokenForest(Hierarchy.from_parent(torch.tensor([4] * 4 + [-1]),
                                               4),
                         torch.ones(1, 4, dtype=torch.bool),
                         torch.zeros(1, 4, dtype=torch.bool),
                         torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="BartModel is an encoder-decoder: "
                       "its 4 attention modules"):
        model_attention_flops(transformers.BartModel(config), [0], forest)


def test_heads_are_counted_with_their_own_channels():
    r"""MobileBERT's heads have ``true_hidden_size // H`` channels, not
    ``hidden_size // H``: the count reads them from the attention
    modules, as the patch sees them."""
    import transformers
    tokenizer = bert_tokenizer()
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    config = transformers.MobileBertConfig(
        vocab_size=len(tokenizer), hidden_size=64, embedding_size=32,
        intra_bottleneck_size=16, true_hidden_size=16,
        num_attention_heads=4, num_hidden_layers=2, intermediate_size=32,
        num_feedforward_networks=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = transformers.MobileBertModel(config).eval()
    dense = dense_attention_flops(forest.valid, 4, 4)  # D = 16 // 4
    hsa = hsa_attention_flops(forest, 4, 4)
    count = model_attention_flops(model, [1], forest)
    assert count.layers == (dense, hsa) and count.dense == 2 * dense
    with hsa_attention(model, [1], forest) as patch:
        with torch.no_grad():
            model(**inputs)
        assert patch.flops() == count


def test_a_module_without_head_sizes_falls_back_to_the_config():
    model = tiny_model('bert', bert_tokenizer())  # H 2, D 16
    forest = small_forest()
    expected = model_attention_flops(model, [1], forest)
    for module in model.modules():
        for name in ('num_attention_heads', 'attention_head_size'):
            if hasattr(module, name):
                delattr(module, name)
    assert model_attention_flops(model, [1], forest) == expected
    model.config = type('Config', (), {})()  # the modules keep theirs
    with pytest.raises(ValueError, match='names no number of heads'):
        model_attention_flops(model, [1], forest)
