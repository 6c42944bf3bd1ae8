r"""Hierarchical self-attention on a real nested signal: a short document.

The document in ``datasets/hsa_intro.txt`` is split into paragraphs, the
paragraphs into sentences and the sentences into words by
:class:`~hsa_geo.transforms.DocumentHierarchy` with a
:class:`~hsa_geo.transforms.Vocabulary` built from the text. The words are
the leaves (each gets an embedding from a seeded, untrained table), the
sentences, paragraphs and the document are the internal nodes of the tree.

The demo

1. builds the :class:`~hsa_geo.data.NestedSignal` of the document: word ids
   and the :class:`~hsa_geo.data.Hierarchy` above them,
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
import sys
import time
from pathlib import Path
from typing import Any, List, NamedTuple, Sequence, Tuple

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
from hsa_geo.transforms import DocumentHierarchy, Vocabulary  # noqa: E402

DEFAULT_TEXT = ROOT / 'datasets' / 'hsa_intro.txt'


# Printing ###################################################################

def heading(title: str) -> None:
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


def short(text: str, n: int = 4) -> str:
    words = text.split()
    return '"' + ' '.join(words[:n]) + (' ..."' if len(words) > n else '"')


# The steps ##################################################################

class Document(NamedTuple):
    r"""The nested signal of a text, with the tree nodes and the text of its
    paragraphs and of its sentences."""
    data: NestedSignal  # word ids under the Hierarchy
    vocab: Vocabulary
    paragraph_nodes: List[int]
    paragraph_text: List[str]
    sentence_nodes: List[int]
    sentence_text: List[str]


def parse_args() -> argparse.Namespace:
    r"""The command line."""
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
    for name in ('paragraph', 'dim', 'heads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1')
    if args.dim % args.heads:
        parser.error('--dim must be a multiple of --heads')
    return args


def clusters(data: NestedSignal, kind: str) -> Tuple[List[int], List[str]]:
    r"""Node ids and text of the clusters of one kind, e.g. ``'sentence'``."""
    kind_id = DocumentHierarchy.KINDS.index(kind)
    ids = (data.cluster_kind == kind_id).nonzero().view(-1)
    n = data.hierarchy.num_leaves  # cluster i is tree node n + i
    return [n + i for i in ids.tolist()], [
        data.text[a:b] for a, b in data.cluster_offsets[ids].tolist()]


def nested_signal(path: Path) -> Document:
    r"""1. Builds the nested signal of the text and prints its tree."""
    heading('1. A nested signal from text')
    text = path.read_text(encoding='utf-8')
    vocab = Vocabulary.build([text], punctuation=False)
    data = DocumentHierarchy(vocab=vocab)(text)  # word ids under the tree
    doc = Document(data, vocab, *clusters(data, 'paragraph'),
                   *clusters(data, 'sentence'))
    print(f'text:        {path}')
    print(f'tree:        {len(doc.paragraph_nodes)} paragraphs -> '
          f'{len(doc.sentence_nodes)} sentences -> '
          f'{data.hierarchy.num_leaves} words '
          f'({len(set(data.tokens))} distinct)')
    print(f'vocabulary:  {vocab}')
    print(f'hierarchy:   {data.hierarchy}')
    print(f'data:        NestedSignal with {", ".join(sorted(data.keys()))}')
    return doc


def attend(doc: Document, dim: int, heads: int) -> Tuple[Tensor, Any]:
    r"""2. Runs an untrained HSAConv: the word embeddings and the weights."""
    heading('2. Hierarchical self-attention over the document')
    embedding = torch.nn.Embedding(len(doc.vocab), dim)  # seeded, untrained
    conv = HSAConv(dim, dim // heads, heads=heads).eval()
    with torch.no_grad():
        x = embedding(doc.data.x)
        out, weights = conv(x, doc.data.hierarchy,
                            return_attention_weights=True)
    pair_index, alpha = weights
    print(f'leaves:      one {dim}-dim embedding per word id')
    print(f'layer:       {conv}, untrained (random weights)')
    print(f'output:      {tuple(out.shape)}, one vector per word')
    print(f'weights:     pi_F(a -> b) for {pair_index.size(1)} ordered '
          f'sibling pairs (a, b), a == b included, per head: '
          f'{tuple(alpha.shape)}')
    return x, weights


def paragraph_family(doc: Document, weights: Any) -> None:
    r"""Prints the weights of the top family: the paragraphs."""
    print('\nThe top family: the document and its paragraphs. Row a is how '
          'the words of\nparagraph a split their attention: the diagonal '
          'stays inside the paragraph\n(and is shared out among its '
          'sentences below), every other column goes to\nanother paragraph '
          'seen as a whole. Mean over heads; rows sum to 1.\n'
          'Untrained, the weights follow mostly the sizes (the log|b| term): '
          'a longer\nsibling draws more attention. Training makes them '
          'depend on content.\n')
    family_table(weights, doc.paragraph_nodes,
                 [short(t) for t in doc.paragraph_text])


def sentence_family(doc: Document, weights: Any, paragraph: int) -> None:
    r"""Prints the weights of the sentences of one paragraph (1-based)."""
    if paragraph > len(doc.paragraph_nodes):
        raise SystemExit(f'--paragraph {paragraph}: the text has '
                         f'{len(doc.paragraph_nodes)} paragraphs')
    p = paragraph - 1
    parent = doc.data.hierarchy.parent.tolist()
    in_p = [i for i, s in enumerate(doc.sentence_nodes)
            if parent[s] == doc.paragraph_nodes[p]]
    print(f'\nOne sentence family: the sentences of paragraph {p + 1}. The '
          f'diagonal stays inside\nthe sentence (its words attend to each '
          f'other one by one); the rest goes to\nsibling sentences as '
          f'wholes.\n')
    family_table(weights, [doc.sentence_nodes[i] for i in in_p],
                 [short(doc.sentence_text[i]) for i in in_p])


def queries_keys_values(x: Tensor, heads: int) -> Tuple[Tensor, ...]:
    r"""Queries, keys and values ``[N, H, D]``: an untrained projection."""
    n, dim = x.shape
    proj = torch.nn.Linear(dim, 3 * dim, bias=False)
    with torch.no_grad():
        return proj(x).view(n, 3, heads, dim // heads).unbind(1)


def check_flat_tree(q: Tensor, k: Tensor, v: Tensor) -> Hierarchy:
    r"""3. Compares HSA on a flat tree with softmax; returns the tree."""
    heading('3. Flat tree = softmax attention')
    n, heads, head_dim = q.shape
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
    return flat


def check_dynamic_program(q: Tensor, k: Tensor, v: Tensor,
                          hierarchy: Hierarchy) -> None:
    r"""Compares the dynamic program with the dense closed form Q."""
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


def cost(hierarchy: Hierarchy, flat: Hierarchy) -> None:
    r"""4. Prints the scores HSA evaluates against dense attention's."""
    heading('4. Cost')
    n = hierarchy.num_leaves
    pairs = hierarchy.sibling_pairs.size(1)
    print(f'HSA scored {pairs} sibling pairs; dense attention scores N^2 = '
          f'{n}^2 = {n * n} pairs')
    print(f'that is {pairs / (n * n):.1%} of the dense scores '
          f'({n * n / pairs:.0f}x fewer); the flat tree has '
          f'{flat.sibling_pairs.size(1)} pairs, as many as dense attention')


# Main #######################################################################

def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    doc = nested_signal(args.text)
    x, weights = attend(doc, args.dim, args.heads)
    paragraph_family(doc, weights)
    sentence_family(doc, weights, args.paragraph)
    q, k, v = queries_keys_values(x, args.heads)
    flat = check_flat_tree(q, k, v)
    check_dynamic_program(q, k, v, doc.data.hierarchy)
    cost(doc.data.hierarchy, flat)
    print(f'\ndone in {time.perf_counter() - start:.2f} s')


if __name__ == '__main__':
    main()
