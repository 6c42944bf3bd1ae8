r"""Hierarchical self-attention on a real nested signal: a short document.

The document in ``datasets/hsa_intro.txt`` is split into paragraphs, the
paragraphs into sentences and the sentences into words. The words are the
leaves (each gets a fixed pseudo-random embedding, the same on every run), the
sentences, paragraphs and the document are the internal nodes of the tree.

The demo

1. builds the :class:`~hsa_geo.data.Hierarchy` of the document and a
   :class:`~hsa_geo.data.NestedSignal` that holds it beside the word vectors,
2. runs an :class:`~hsa_geo.nn.HSAConv` layer over it and prints the family
   attention weights of the paragraphs and of the sentences of one
   paragraph,
3. checks that on a flat tree (every word a child of the root) HSA is exactly
   softmax attention, and that the dynamic program equals the dense closed
   form,
4. counts the scores HSA evaluates against the :math:`N^2` of dense attention.

Run it with ``python examples/demo.py`` (``--help`` lists the options).
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
try:
    import hsa_geo  # noqa: F401
except ImportError:  # not installed: use the checkout this file is in
    sys.path.insert(0, str(ROOT))

from hsa_geo.data import Hierarchy, NestedSignal  # noqa: E402
from hsa_geo.functional import (  # noqa: E402
    hierarchical_attention, hierarchical_attention_matrix)
from hsa_geo.nn import HSAConv  # noqa: E402

DEFAULT_TEXT = ROOT / 'datasets' / 'hsa_intro.txt'

Document = List[List[List[str]]]  # paragraphs -> sentences -> words


# Text -> tree ###############################################################

def read_document(path: Path) -> Document:
    r"""Splits a plain text file into paragraphs (blank lines), sentences
    (after ``.``, ``!`` or ``?``) and lowercase words."""
    text = Path(path).read_text(encoding='utf-8')
    document = []
    for paragraph in re.split(r'\n\s*\n', text.strip()):
        sentences = []
        for sentence in re.split(r'(?<=[.!?])\s+', paragraph.strip()):
            words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", sentence.lower())
            if words:
                sentences.append(words)
        if sentences:
            document.append(sentences)
    if not document:
        raise SystemExit(f'{path}: no words found')
    return document


def word_embedding(word: str, dim: int) -> Tensor:
    r"""A fixed pseudo-random vector per word: a generator seeded from a
    stable hash of the word (Python's ``hash`` changes between runs)."""
    digest = hashlib.sha256(word.encode('utf-8')).digest()
    seed = int.from_bytes(digest[:8], 'little') & (2**63 - 1)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=gen)


def document_hierarchy(document: Document) -> Hierarchy:
    r"""Words -> sentences -> paragraphs -> document, as per-level cluster
    assignments. Node ids: words ``0..N-1``, then the sentences, then the
    paragraphs, then the document."""
    word_to_sentence, sentence_to_paragraph = [], []
    for p, sentences in enumerate(document):
        for words in sentences:
            word_to_sentence += [len(sentence_to_paragraph)] * len(words)
            sentence_to_paragraph.append(p)
    paragraph_to_document = [0] * len(document)
    return Hierarchy.from_assignments([
        torch.tensor(word_to_sentence),
        torch.tensor(sentence_to_paragraph),
        torch.tensor(paragraph_to_document),
    ])


# Printing ###################################################################

def heading(title: str):
    print(f'\n== {title} ' + '=' * max(3, 74 - len(title)))


def family_table(weights, nodes: Sequence[int], labels: Sequence[str],
                 max_rows: int = 8):
    r"""Prints :math:`\pi_F(a \to b)` for the children ``nodes`` of one
    family, averaged over the heads (the first :obj:`max_rows` children)."""
    index, weight = weights
    if weight.dim() == 1:
        weight = weight.unsqueeze(-1)
    pos = {node: i for i, node in enumerate(nodes)}
    table = torch.zeros(len(nodes), len(nodes))
    for (a, b), w in zip(index.t().tolist(), weight.mean(-1).tolist()):
        if a in pos and b in pos:
            table[pos[a], pos[b]] = w
    shown = min(len(nodes), max_rows)
    width = max(len(label) for label in labels[:shown]) + 2
    print(' ' * (width + 4) + ''.join(f'{f"-> {i + 1}":>8}'
                                      for i in range(shown)) + '  row sum')
    for i, label in enumerate(labels[:shown]):
        row = ''.join(f'{w:8.3f}' for w in table[i, :shown].tolist())
        print(f'{i + 1:>2}  {label:<{width}}{row}{float(table[i].sum()):9.3f}')
    if shown < len(nodes):
        print(f'    (the first {shown} of {len(nodes)} children; the row '
              f'sums run over all of them)')


def short(words: Sequence[str], n: int = 4) -> str:
    return '"' + ' '.join(words[:n]) + (' ..."' if len(words) > n else '"')


# Main #######################################################################

def main():
    parser = argparse.ArgumentParser(
        description='Hierarchical self-attention over a document tree.')
    parser.add_argument('--text', type=Path, default=DEFAULT_TEXT,
                        help='plain text file: paragraphs separated by blank '
                        'lines (default: %(default)s)')
    parser.add_argument('--paragraph', type=int, default=3,
                        help='paragraph (1-based) whose sentence family is '
                        'shown (default: %(default)s)')
    parser.add_argument('--dim', type=int, default=32,
                        help='embedding size of a word (default: '
                        '%(default)s)')
    parser.add_argument('--heads', type=int, default=2,
                        help='attention heads (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the layer weights (default: '
                        '%(default)s)')
    args = parser.parse_args()
    if args.dim % args.heads:
        parser.error('--dim must be a multiple of --heads')
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    # 1. The nested signal ###################################################
    heading('1. A nested signal from text')
    document = read_document(args.text)
    words = [w for sentences in document for s in sentences for w in s]
    sentences = [s for sentences in document for s in sentences]
    x = torch.stack([word_embedding(w, args.dim) for w in words])
    hierarchy = document_hierarchy(document)
    n = hierarchy.num_leaves
    print(f'text:        {args.text}')
    print(f'tree:        {len(document)} paragraphs -> {len(sentences)} '
          f'sentences -> {n} words ({len(set(words))} distinct)')
    print(f'leaves:      one {args.dim}-dim embedding per word, seeded from '
          f'the word itself')
    print(f'hierarchy:   {hierarchy}')

    # 2. Attention over the tree #############################################
    heading('2. Hierarchical self-attention over the document')
    data = NestedSignal.from_hierarchy(hierarchy, x)
    conv = HSAConv(args.dim, args.dim // args.heads, heads=args.heads).eval()
    with torch.no_grad():
        out, weights = conv(data.x, data.hierarchy,
                            return_attention_weights=True)
    pair_index, alpha = weights
    print(f'data:        {data}')
    print(f'layer:       {conv}, untrained (random weights)')
    print(f'output:      {tuple(out.shape)}, one vector per word')
    print(f'weights:     pi_F(a -> b) for {pair_index.size(1)} ordered '
          f'sibling pairs (a, b), a == b included, per head: '
          f'{tuple(alpha.shape)}')

    num_sentences = len(sentences)
    first_paragraph = n + num_sentences  # node id of paragraph 1
    print('\nThe top family: the document and its paragraphs. Row a is how '
          'the words of\nparagraph a split their attention: the diagonal '
          'stays inside the paragraph\n(and is shared out among its '
          'sentences below), every other column goes to\nanother paragraph '
          'seen as a whole. Mean over heads; rows sum to 1.\n'
          'Untrained, the weights follow mostly the sizes (the log|b| term): '
          'a longer\nsibling draws more attention. Training makes them '
          'depend on content.\n')
    paragraph_nodes = list(range(first_paragraph,
                                 first_paragraph + len(document)))
    family_table(weights, paragraph_nodes, [
        short([w for s in sentences_ for w in s]) for sentences_ in document
    ])

    p = min(max(args.paragraph, 1), len(document)) - 1
    first_sentence = n + sum(len(s) for s in document[:p])
    sentence_nodes = list(range(first_sentence,
                                first_sentence + len(document[p])))
    print(f'\nOne sentence family: the sentences of paragraph {p + 1}. The '
          f'diagonal stays inside\nthe sentence (its words attend to each '
          f'other one by one); the rest goes to\nsibling sentences as '
          f'wholes.\n')
    family_table(weights, sentence_nodes,
                 [short(s) for s in document[p]])

    # 3. Checks ##############################################################
    heading('3. Flat tree = softmax attention')
    heads, head_dim = args.heads, args.dim // args.heads
    proj = torch.nn.Linear(args.dim, 3 * args.dim, bias=False)
    with torch.no_grad():
        q, k, v = proj(x).view(n, 3, heads, head_dim).unbind(1)
    flat = Hierarchy.from_assignments([torch.zeros(n, dtype=torch.long)])
    with torch.no_grad():
        hsa_flat = hierarchical_attention(q, k, v, flat)
        sdpa = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        sdpa = sdpa.transpose(0, 1)
    print('All words children of one root, queries, keys and values '
          f'[{n}, {heads}, {head_dim}]:')
    print(f'flat tree:   {flat}')
    print('max |hierarchical_attention(flat) - scaled_dot_product_attention|'
          f' = {(hsa_flat - sdpa).abs().max().item():.2e}')

    with torch.no_grad():
        tree_out = hierarchical_attention(q, k, v, hierarchy)
        dense = hierarchical_attention_matrix(q, k, hierarchy)  # [H, N, N]
        dense_out = torch.einsum('hij,jhd->ihd', dense, v)
    print('\nOn the document tree, the dynamic program against the dense '
          'closed form Q:')
    print('max |DP - Q @ V|        = '
          f'{(tree_out - dense_out).abs().max().item():.2e}')
    print('max |row sum of Q - 1|  = '
          f'{(dense.sum(-1) - 1).abs().max().item():.2e}')

    # 4. Cost ################################################################
    heading('4. Cost')
    pairs = hierarchy.sibling_pairs.size(1)
    print(f'HSA scored {pairs} sibling pairs; dense attention scores N^2 = '
          f'{n}^2 = {n * n} pairs')
    print(f'that is {pairs / (n * n):.1%} of the dense scores '
          f'({n * n / pairs:.0f}x fewer); the flat tree has '
          f'{flat.sibling_pairs.size(1)} pairs, as many as dense attention')
    print(f'\ndone in {time.perf_counter() - start:.2f} s')


if __name__ == '__main__':
    main()
