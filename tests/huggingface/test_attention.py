r"""Tests of :func:`hsa_geo.huggingface.hsa_attention` on tiny randomly
initialised BERT and RoBERTa models: a flat tree reproduces the model, only
the chosen layers change, a padded batch equals its sequences one by one,
the patched attention equals the dense reference matrices, the patch is
undone on exit (also on an exception), and every error message."""
import sys

import pytest
import torch

transformers = pytest.importorskip('transformers')

from hsa_geo import Hierarchy  # noqa: E402
from hsa_geo.functional import (hierarchical_attention_matrix,  # noqa: E402
                                query_resolved_attention_matrix)
from hsa_geo.huggingface import (HSAPatch, HSASpec,  # noqa: E402
                                 TokenHierarchy, attention_modules,
                                 hsa_attention)
from tests.helpers.huggingface import (TEXTS, bert_tokenizer,  # noqa: E402
                                       roberta_tokenizer, tiny_model)

pytestmark = pytest.mark.usefixtures('one_thread')

ATOL = 2e-5


@pytest.fixture(scope='module', params=['bert', 'roberta'])
def setup(request):
    tokenizer = bert_tokenizer() if request.param == 'bert' else \
        roberta_tokenizer()
    return request.param, tokenizer, tiny_model(request.param, tokenizer)


def last_hidden(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs).last_hidden_state


def test_attention_modules(setup):
    _, _, model = setup
    modules = attention_modules(model)
    assert modules == [layer.attention.self for layer in model.encoder.layer]


@pytest.mark.parametrize('implementation', ['sdpa', 'eager'])
@pytest.mark.parametrize('variant', ['hsa', 'query_resolved'])
def test_flat_tree_reproduces_the_model(setup, variant, implementation):
    kind, tokenizer, model = setup
    model.config._attn_implementation = implementation
    try:
        inputs, flat = TokenHierarchy(tokenizer, levels=()).encode(TEXTS)
        reference = last_hidden(model, inputs)
        layers = {i: variant for i in range(len(attention_modules(model)))}
        with hsa_attention(model, layers, flat) as patch:
            out = last_hidden(model, inputs)
        assert patch.calls == {i: 1 for i in layers}
        real = flat.valid
        torch.testing.assert_close(out[real], reference[real], atol=ATOL,
                                   rtol=0)
    finally:
        model.config._attn_implementation = 'sdpa'


@pytest.mark.parametrize('variant', ['hsa', 'query_resolved'])
def test_only_chosen_layers_change(setup, variant):
    _, tokenizer, model = setup
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    layers = model.encoder.layer

    def outputs():
        seen = []

        def record(mod, args, kwargs, out):
            out = out[0] if isinstance(out, tuple) else out
            seen.append((args, kwargs, out.clone()))

        hooks = [layer.register_forward_hook(record, with_kwargs=True)
                 for layer in layers]
        try:
            last_hidden(model, inputs)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    reference = outputs()
    with hsa_attention(model, {1: variant}, forest):
        patched = outputs()
    real = forest.valid
    # Layer 0 is unchanged; layer 1 changes; layer 2 gets other inputs but
    # is the same function of them.
    torch.testing.assert_close(patched[0][2], reference[0][2])
    assert (patched[1][2] - reference[1][2])[real].abs().max() > 1e-3
    args, kwargs, out = patched[2]
    with torch.no_grad():
        again = layers[2](*args, **kwargs)
    again = again[0] if isinstance(again, tuple) else again
    torch.testing.assert_close(out, again)


@pytest.mark.parametrize('special', ['root', 'own', 'global'])
@pytest.mark.parametrize('variant', ['hsa', 'query_resolved'])
def test_padded_batch_equals_sequences_one_by_one(setup, special, variant):
    _, tokenizer, model = setup
    builder = TokenHierarchy(tokenizer, special_tokens=special)
    inputs, forest = builder.encode(TEXTS)
    layers = {0: variant, 2: variant}
    with hsa_attention(model, layers) as patch:
        patch.set_forest(forest)
        batch = last_hidden(model, inputs)
        for b, text in enumerate(TEXTS):
            one_inputs, one_forest = builder.encode([text])
            patch.set_forest(one_forest)
            one = last_hidden(model, one_inputs)[0]
            length = one.size(0)
            assert bool(forest.valid[b, :length].all())
            torch.testing.assert_close(batch[b, :length], one, atol=ATOL,
                                       rtol=0)


def test_global_rows_are_the_models_rows(setup):
    r"""With ``'global'``, the rows of the special tokens are exact softmax
    attention: in the first patched layer their outputs are the model's."""
    _, tokenizer, model = setup
    layer = model.encoder.layer[0]
    for special, same in (('global', True), ('root', False)):
        inputs, forest = TokenHierarchy(
            tokenizer, special_tokens=special).encode(TEXTS)
        seen = []
        hook = layer.register_forward_hook(
            lambda mod, args, out: seen.append(
                out[0] if isinstance(out, tuple) else out))
        try:
            reference = last_hidden(model, inputs)
            with hsa_attention(model, {0: 'hsa'}, forest):
                last_hidden(model, inputs)
        finally:
            hook.remove()
        del reference
        special_rows = forest.special
        close = torch.allclose(seen[1][special_rows], seen[0][special_rows],
                               atol=ATOL)
        assert close == same
        assert not torch.allclose(seen[1][forest.valid & ~special_rows],
                                  seen[0][forest.valid & ~special_rows],
                                  atol=1e-3)


@pytest.mark.parametrize('variant', ['hsa', 'query_resolved'])
def test_matches_the_dense_reference(setup, variant):
    r"""The patched self-attention is ``Q V`` per head with ``Q`` the dense
    reference matrix of the tree, built independently pair by pair."""
    _, tokenizer, model = setup
    inputs, forest = TokenHierarchy(tokenizer, special_tokens='root').encode(
        TEXTS[:2])
    module = attention_modules(model)[1]
    seen = {}
    hooks = [module.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(x=args[0] if args else
                                              kwargs['hidden_states']),
        with_kwargs=True),
        module.register_forward_hook(
            lambda mod, args, out: seen.update(out=out[0]))]
    try:
        with hsa_attention(model, {1: variant}, forest):
            last_hidden(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    batch, length, _ = seen['x'].shape
    heads, dim = module.num_attention_heads, module.attention_head_size
    with torch.no_grad():
        q, k, v = (lin(seen['x']).reshape(batch * length, heads, dim)
                   for lin in (module.query, module.key, module.value))
    build = hierarchical_attention_matrix if variant == 'hsa' else \
        query_resolved_attention_matrix
    matrix = build(q.double(), k.double(), forest.hierarchy,
                   scale=module.scaling)  # [H, N, N]
    expected = torch.einsum('hij,jhd->ihd', matrix, v.double())
    out = seen['out'].reshape(batch * length, heads, dim)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)


def test_forest_passed_with_the_call_and_named_forests(setup):
    _, tokenizer, model = setup
    inputs, words = TokenHierarchy(tokenizer, levels=('word', )).encode(
        TEXTS)
    _, full = TokenHierarchy(tokenizer).encode(TEXTS)
    layers = {0: HSASpec('hsa', forest='words'), 1: 'query_resolved'}
    with hsa_attention(model, layers) as patch:
        patch.set_forest(words, name='words')
        patch.set_forest(full)
        set_out = last_hidden(model, inputs)
    with hsa_attention(model, layers) as patch:
        passed = last_hidden(model, inputs,
                             hsa_forest={'words': words, 'default': full})
    assert patch.calls == {0: 1, 1: 1}
    torch.testing.assert_close(set_out, passed)
    with hsa_attention(model, {0: 'hsa'}, words) as patch:
        # a forest passed with the call wins over the set one
        one = last_hidden(model, inputs, hsa_forest=full)
    with hsa_attention(model, {0: 'hsa'}, full):
        other = last_hidden(model, inputs)
    torch.testing.assert_close(one, other)


def test_patch_is_undone(setup):
    _, tokenizer, model = setup
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    configs = [m.config for m in attention_modules(model)]
    reference = last_hidden(model, inputs)
    with pytest.raises(RuntimeError, match='boom'):
        with hsa_attention(model, [0, 1, 2], forest):
            assert all(m.config is not model.config
                       for m in attention_modules(model))
            assert model.config._attn_implementation == 'sdpa'
            raise RuntimeError('boom')
    assert [m.config for m in attention_modules(model)] == configs
    assert all(c is model.config for c in configs)
    assert model.config._attn_implementation == 'sdpa'
    torch.testing.assert_close(last_hidden(model, inputs), reference)
    # apply / remove without a with block, and 'softmax' layers untouched
    patch = HSAPatch(model, {0: 'softmax', 1: 'hsa'}, forest).apply()
    assert attention_modules(model)[0].config is model.config
    assert attention_modules(model)[1].config is not model.config
    patch.remove()
    assert attention_modules(model)[1].config is model.config
    assert 'HSAPatch(' in repr(patch)


def test_output_attentions_keep_the_layer_positions(setup):
    _, tokenizer, model = setup
    model.config._attn_implementation = 'eager'
    try:
        inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
        with torch.no_grad():
            reference = model(**inputs, output_attentions=True).attentions
            with hsa_attention(model, [1], forest):
                patched = model(**inputs, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = 'sdpa'
    assert len(reference) == len(patched) == 3
    torch.testing.assert_close(patched[0], reference[0])
    assert patched[1].shape == reference[1].shape
    assert bool(patched[1].isnan().all())
    # Layer 2 gets other inputs: its weights differ but are weights.
    assert torch.allclose(patched[2].sum(-1), torch.ones(()))


def test_call_order_of_the_last_forward(setup):
    _, tokenizer, model = setup
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    # transformers 5 renames gradient checkpointing
    prefix = 'activation' if hasattr(model, 'activation_checkpointing_enable') \
        else 'gradient'
    model.train()
    getattr(model, f'{prefix}_checkpointing_enable')()
    try:
        with hsa_attention(model, {0: 'hsa', 2: 'softmax'}, forest) as patch:
            assert patch.call_order is None
            last_hidden(model, inputs)
            assert patch.call_order == [0, 1, 2]
            # checkpointed layers run again in the backward: no new calls
            out = model(**inputs).last_hidden_state
            out[forest.valid].sum().backward()
            assert patch.call_order == [0, 1, 2]
            assert patch.calls == {0: 3}
    finally:
        getattr(model, f'{prefix}_checkpointing_disable')()
        model.eval()
        model.zero_grad()
    # the hooks are gone with the patch
    last_hidden(model, inputs)
    assert patch.call_order == [0, 1, 2]
    assert patch.calls == {0: 3}


def test_training_mode_and_gradients(setup):
    _, tokenizer, model = setup
    inputs, forest = TokenHierarchy(tokenizer,
                                    special_tokens='global').encode(TEXTS)
    model.train()
    try:
        with hsa_attention(model, {0: 'hsa', 1: 'query_resolved'}, forest):
            out = model(**inputs).last_hidden_state
            out[forest.valid].sum().backward()
    finally:
        model.eval()
    grad = attention_modules(model)[0].query.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    model.zero_grad()


def test_errors(setup):
    _, tokenizer, model = setup
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    with pytest.raises(TypeError, match='torch.nn.Module'):
        hsa_attention('bert', [0])
    with pytest.raises(ValueError, match='has no attention module'):
        hsa_attention(torch.nn.Linear(2, 2), [0])
    with pytest.raises(ValueError, match=r'layer 5 does not exist.*0\.\.2'):
        hsa_attention(model, [5])
    with pytest.raises(ValueError, match='given twice'):
        hsa_attention(model, [1, -2])
    with pytest.raises(TypeError, match='must be ints'):
        hsa_attention(model, {'1': 'hsa'})
    with pytest.raises(ValueError, match='variant must be one of'):
        hsa_attention(model, {1: 'flash'})
    with pytest.raises(TypeError, match="'layers' must be a dict"):
        hsa_attention(model, 1)
    with pytest.raises(TypeError, match='TokenForest'):
        hsa_attention(model, [0], forest=torch.zeros(3))
    with pytest.raises(ValueError, match='no forest named'):
        with hsa_attention(model, [0]):
            last_hidden(model, inputs)
    _, other = TokenHierarchy(tokenizer).encode(TEXTS[:2])
    with pytest.raises(ValueError, match=r'batch of 3 x \d+ positions'):
        with hsa_attention(model, [0], other):
            last_hidden(model, inputs)
    masked = dict(inputs, attention_mask=inputs['attention_mask'].clone())
    masked['attention_mask'][0, 1] = 0
    with pytest.raises(ValueError, match=r'padding of the forest.*sequence '
                                         r'0'):
        with hsa_attention(model, [0], forest):
            last_hidden(model, masked)
    flat = Hierarchy.from_parent(torch.full((5, ), -1), 5)
    with pytest.raises(ValueError, match='5 leaves'):
        with hsa_attention(model, [0], flat):
            last_hidden(model, inputs)
    with hsa_attention(model, [0], forest):
        with pytest.raises(ValueError, match='already patched'):
            hsa_attention(model, [1, 0], forest).apply()
        assert attention_modules(model)[1].config is model.config
    causal = transformers.BertModel(transformers.BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=8, is_decoder=True))
    with pytest.raises(ValueError, match='causal'):
        hsa_attention(causal, [0])
    module = attention_modules(model)[0]
    config = module.config
    try:
        module.config = type(config).from_dict(config.to_dict())
        module.config._attn_implementation = 'hsa_geo'
        with pytest.raises(RuntimeError, match='not patched'):
            last_hidden(model, inputs)
    finally:
        module.config = config


def test_missing_transformers(setup, monkeypatch):
    _, _, model = setup
    monkeypatch.setitem(sys.modules, 'transformers', None)
    with pytest.raises(ImportError, match=r"hsa_geo\[huggingface\]"):
        hsa_attention(model, [0]).apply()
    assert attention_modules(model)[0].config is model.config


# What the model's attention does beside the scores #######################


def _model_class(name: str):
    r"""A transformers class, or a skip where this version lacks it."""
    if not hasattr(transformers, name):
        pytest.skip(f'transformers {transformers.__version__} has no {name}')
    return getattr(transformers, name)


def _flat_forest(batch: int, length: int) -> Hierarchy:
    parent = torch.cat([torch.full((length, ), batch * length + b)
                        for b in range(batch)] + [torch.full((batch, ), -1)])
    return Hierarchy.from_parent(parent, batch * length)


@pytest.mark.parametrize('implementation', ['sdpa', 'eager'])
@pytest.mark.parametrize('kind', ['bool', 'additive'])
def test_a_mask_that_hides_more_than_padding_raises(implementation, kind):
    """HSA reads the forest, not the mask: a block-diagonal (or causal)
    4-D mask would be dropped without a word."""
    tokenizer = bert_tokenizer()
    model = tiny_model('bert', tokenizer)
    model.set_attn_implementation(implementation)
    inputs, flat = TokenHierarchy(tokenizer, levels=()).encode(TEXTS)
    length = inputs['input_ids'].size(1)
    pad = inputs['attention_mask'][:, None, None, :].bool().expand(
        -1, 1, length, length)
    mask = pad.clone()
    mask[0, 0, :5, 5:] = False
    mask[0, 0, 5:, :5] = False
    if kind == 'additive':
        mask = torch.zeros(mask.shape).masked_fill(
            ~mask, torch.finfo(torch.float32).min)
    with pytest.raises(ValueError, match='hides keys other than padding '
                                         'from query 0 of sequence 0'):
        with torch.no_grad(), hsa_attention(model, [0], flat):
            model(input_ids=inputs['input_ids'], attention_mask=mask)
    # a 4-D mask of padding only runs and equals the model
    with torch.no_grad():
        ref = model(**inputs).last_hidden_state
        with hsa_attention(model, [0, 1, 2], flat):
            out = model(input_ids=inputs['input_ids'],
                        attention_mask=pad).last_hidden_state
    torch.testing.assert_close(out[flat.valid], ref[flat.valid], atol=ATOL,
                               rtol=0)


@pytest.mark.parametrize('implementation', ['eager', 'sdpa'])
def test_a_causal_mask_raises_without_is_causal(implementation):
    """A decoder whose attention has no is_causal attribute (Doge) is
    caught by its mask."""
    config = _model_class('DogeConfig')(
        vocab_size=100, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=64)
    config._attn_implementation = implementation
    model = _model_class('DogeForCausalLM')(config).eval()
    with pytest.raises(ValueError, match='attention layer 0 got an'):
        with torch.no_grad(), hsa_attention(model, [0], _flat_forest(1, 8)):
            model(input_ids=torch.randint(3, 100, (1, 8)))


def test_sliding_windows_and_soft_caps_raise():
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 12))
    config = _model_class('Gemma3TextConfig')(
        vocab_size=100, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, sliding_window=4,
        layer_types=['sliding_attention', 'full_attention'],
        use_bidirectional_attention=True, max_position_embeddings=64)
    model = _model_class('Gemma3TextModel')(config).eval()
    with pytest.raises(ValueError, match='passes sliding_window='):
        with torch.no_grad(), hsa_attention(model, [0], _flat_forest(2, 12)):
            model(input_ids=ids)
    # its full-attention layer (grouped queries, head_dim != width / heads)
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
        with hsa_attention(model, [1], _flat_forest(2, 12)):
            out = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    config = _model_class('Gemma2Config')(
        vocab_size=100, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, use_bidirectional_attention=True,
        attn_logit_softcapping=1.0, max_position_embeddings=64)
    config._attn_implementation = 'eager'
    model = _model_class('Gemma2Model')(config).eval()
    with pytest.raises(ValueError, match='softcap'):
        with torch.no_grad(), hsa_attention(model, [1], _flat_forest(2, 12)):
            model(input_ids=ids)


def test_cross_attention_of_encoder_decoders_is_not_listed():
    config = transformers.BartConfig(
        vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64)
    model = transformers.BartModel(config)
    expected = [layer.self_attn for layer in model.encoder.layers] + \
        [layer.self_attn for layer in model.decoder.layers]
    assert attention_modules(model) == expected


def test_a_block_mask_of_flex_attention_raises():
    tokenizer = bert_tokenizer()
    model = tiny_model('bert', tokenizer)
    try:
        model.set_attn_implementation('flex_attention')
    except (ImportError, ValueError) as e:
        pytest.skip(f'no flex_attention here: {e}')
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    with pytest.raises(ValueError, match="BlockMask.*attn_implementation="
                                         "'sdpa'"):
        with torch.no_grad(), hsa_attention(model, [0], forest):
            model(**inputs)


def test_sdpa_output_attentions_keep_their_layers():
    """sdpa returns no weights: neither does a patched layer, or
    attentions[i] would be another layer's."""
    tokenizer = bert_tokenizer()
    model = tiny_model('bert', tokenizer)
    model.set_attn_implementation('sdpa')
    inputs, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
        with hsa_attention(model, [1], forest):
            patched = model(**inputs, output_attentions=True).attentions
    assert len(patched) == len(reference)


def test_the_shared_mask_is_checked_once_per_forward(monkeypatch):
    """Every layer gets the same mask: its O(B H L^2) check runs once, and
    again for a mask changed in place since."""
    import hsa_geo.huggingface.attention as module
    tokenizer = bert_tokenizer()
    model = tiny_model('bert', tokenizer)
    model.set_attn_implementation('eager')
    inputs, flat = TokenHierarchy(tokenizer, levels=()).encode(TEXTS)
    checks = []
    check = module._mask_keys
    monkeypatch.setattr(module, '_mask_keys',
                        lambda *args: checks.append(1) or check(*args))
    layers = list(range(len(attention_modules(model))))
    with torch.no_grad(), hsa_attention(model, layers, flat) as patch:
        model(**inputs)
        model(**inputs)
    assert len(layers) > 1 and patch.calls == {i: 2 for i in layers}
    assert len(checks) == 2  # one per forward
    with torch.inference_mode(), hsa_attention(model, layers, flat):
        model(**inputs)  # a mask without a version counter
    assert len(checks) == 3

    batch, length = inputs['input_ids'].shape
    q = torch.randn(batch, 2, length, 4)
    mask = inputs['attention_mask'][:, None, None, :].bool().expand(
        -1, 1, length, length).clone()
    with hsa_attention(model, layers, flat) as patch:
        run = lambda: patch.attention(  # noqa: E731
            0, patch.modules[0], q, q, q, mask, 0.0, None, None)
        run()
        mask[0, 0, :5, 5:] = False  # a block-diagonal mask now
        with pytest.raises(ValueError, match='hides keys other than'):
            run()
