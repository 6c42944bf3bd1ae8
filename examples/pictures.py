r"""Pictures of HSA: a document tree with its family attention weights, the
dense HSA matrix beside softmax attention, and a multi-modal signal.

The first sentences of ``datasets/hsa_intro.txt`` become a tree of
sentences and words (:class:`~hsa_geo.transforms.DocumentHierarchy`); a
seeded, untrained :class:`~hsa_geo.nn.HSAConv` gives queries and keys. The
script writes three PNG files:

- ``hierarchy.png``: :func:`hsa_geo.viz.plot_hierarchy` with the family
  weights :math:`\pi_F(a \to b)` of head 0;
- ``attention_matrix.png``: :func:`hsa_geo.viz.plot_attention_matrix`, the
  dense :math:`Q` with its family blocks, and softmax attention :math:`P`;
- ``hetero_modalities.png``: a news item of a headline (the paragraph's
  first sentence), a caption and a 4 x 4-patch image, joined by
  :class:`~hsa_geo.transforms.MultiModalHierarchy` (texts under one
  cluster), every node coloured by its modality.

Run ``python examples/pictures.py --out docs/images``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch_geometric.data import HeteroData

ROOT = Path(__file__).resolve().parent.parent
try:
    import hsa_geo  # noqa: F401
except ImportError:  # not installed: use the checkout this file is in
    sys.path.insert(0, str(ROOT))

from hsa_geo.functional import FamilyWeights  # noqa: E402
from hsa_geo.nn import HSAConv  # noqa: E402
from hsa_geo.transforms import (DocumentHierarchy,  # noqa: E402
                                GridHierarchy, MultiModalHierarchy,
                                Vocabulary)
from hsa_geo.viz import plot_attention_matrix, plot_hierarchy  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--text', type=Path,
                        default=ROOT / 'datasets' / 'hsa_intro.txt')
    parser.add_argument('--out', type=Path, default=Path('.'),
                        help='folder for the PNG files (default: .)')
    parser.add_argument('--sentences', type=int, default=3,
                        help='how many sentences of the first paragraph '
                        '(default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.sentences < 1:
        parser.error('--sentences must be at least 1')
    torch.manual_seed(args.seed)

    paragraph = args.text.read_text(encoding='utf-8').strip().split('\n\n')[0]
    paragraph = '. '.join(paragraph.split('. ')[:args.sentences]).rstrip('.')
    paragraph += '.'
    vocab = Vocabulary.build([paragraph], punctuation=False)
    data = DocumentHierarchy(vocab=vocab, levels=('sentence', ))(paragraph)
    hierarchy = data.hierarchy

    dim, heads = 32, 2
    x = torch.nn.Embedding(len(vocab), dim)(data.x)
    conv = HSAConv(dim, dim // heads, heads=heads).eval()
    with torch.no_grad():
        _, (index, weight) = conv(x, hierarchy, return_attention_weights=True)
        q, k = (lin(x).view(-1, heads, dim // heads)
                for lin in (conv.lin_query, conv.lin_key))

    args.out.mkdir(parents=True, exist_ok=True)
    labels = {i: t for i, t in enumerate(data.tokens)}
    labels[hierarchy.num_nodes - 1] = 'paragraph'
    plot_hierarchy(hierarchy, FamilyWeights(index, weight), node_labels=labels,
                   title='Sentences and words: family weights '
                   'pi_F(a -> b) >= 0.06, head 0', figsize=(20, 4.5),
                   min_weight=0.06,
                   path=args.out / 'hierarchy.png')
    plot_attention_matrix(q, k, hierarchy, softmax=True,
                          path=args.out / 'attention_matrix.png')
    news = news_item(paragraph.split('. ')[0] + '.')
    plot_hierarchy(news, title='A news item: headline, caption and image '
                   'patches under one tree', figsize=(12, 4),
                   path=args.out / 'hetero_modalities.png')
    print(f"wrote {args.out / 'hierarchy.png'}, "
          f"{args.out / 'attention_matrix.png'} ({hierarchy}) and "
          f"{args.out / 'hetero_modalities.png'} ({news.hierarchy})")


def news_item(headline: str):
    r"""A headline, a caption and a 32 x 32 image as one nested signal."""
    news = HeteroData()
    news['headline'].text = headline
    news['caption'].text = 'A tree of clusters over the leaves.'
    news['image'].image = torch.rand(3, 32, 32)
    vocab = Vocabulary.build([headline, news['caption'].text])
    return MultiModalHierarchy(
        {'headline': DocumentHierarchy(vocab=vocab),
         'caption': DocumentHierarchy(vocab=vocab),
         'image': GridHierarchy(patch_size=8)},
        groups={'headline': 'text', 'caption': 'text'})(news)


if __name__ == '__main__':
    main()
