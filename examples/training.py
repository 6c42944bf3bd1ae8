r"""Shared helpers of the example training scripts.

A script imports what it needs (the script's folder is on ``sys.path``
when it runs)::

    from training import (Results, Distributed, common_parser, log_epoch,
                          progress, resolve_device, seed_everything)

    parser = common_parser('What the script trains.', datasets=[...],
                           models=[...], dataset='...', model='...')
    args = parser.parse_args(argv)
    dist = Distributed.from_env(args.ddp, args.device, args.threads)
    with dist.main_first():  # rank 0 processes the dataset once
        dataset = ...
    results = Results('script_name', vars(args), metric='rocauc',
                      higher_is_better=True, dist=dist)
    for seed in args.seeds:
        seed_everything(seed)
        results.start_run(seed)
        for epoch in range(1, args.epochs + 1):
            for batch in progress(loader, epoch, dist):  # tqdm per epoch
                ...
            results.add_epoch(epoch, loss=loss, train=train, valid=valid,
                              test=test)  # logs one line on rank 0
        results.finish_run()
    results.write(args.out)  # <out>/<name>.json and <out>/<name>.png
    dist.close()

:class:`Results` keeps the configuration, one curve per seed (loss,
train/valid/test metric, seconds per epoch, peak memory), the final
metrics of every seed at its best validation epoch and their mean and
standard deviation over seeds, and a description of the machine.
:class:`Distributed` wraps ``torch.distributed`` for ``torchrun``: gloo on
CPU, nccl on CUDA, a :class:`DistributedSampler` per training set, and
sums and gathers across ranks, so that a metric is computed from the
predictions of all ranks; only rank 0 logs and writes files.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import sys
import time
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as torch_dist
from torch import Tensor
from tqdm import tqdm


def positive_int(text: str) -> int:
    r"""An ``argparse`` type: an int of at least 1 (a bad value is a usage
    error, not a traceback from deep in the run)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {text}')
    return value


def positive_float(text: str) -> float:
    r"""An ``argparse`` type: a finite float above 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f'must be above 0, got {text}')
    return value


def probability(text: str) -> float:
    r"""An ``argparse`` type: a dropout probability in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f'must be in [0, 1), got {text}')
    return value


def device_name(text: str) -> str:
    r"""An ``argparse`` type: ``'auto'`` or a name :class:`torch.device`
    reads (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...)."""
    if text != 'auto':
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(
                f"must be 'auto' or a device such as 'cpu' or 'cuda:0', got "
                f"{text!r}") from None
    return text


def parse_checked(parser: argparse.ArgumentParser,
                  argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    r"""``parser.parse_args(argv)``, with a usage error where ``--heads``
    does not divide ``--hidden`` (each head gets hidden // heads
    channels)."""
    args = parser.parse_args(argv)
    heads, hidden = getattr(args, 'heads', None), getattr(args, 'hidden',
                                                          None)
    if heads is not None and hidden is not None and hidden % heads:
        parser.error(f'--heads {heads} must divide --hidden {hidden} (each '
                     f'head gets hidden // heads channels)')
    return args


def common_parser(description: str, datasets: Sequence[str],
                  models: Sequence[str], dataset: str, model: str,
                  epochs: int = 50, hidden: int = 64, lr: float = 1e-3,
                  batch_size: int = 32, many_models: bool = False
                  ) -> argparse.ArgumentParser:
    r"""An :class:`argparse.ArgumentParser` with the options every example
    script has; the keyword arguments are their defaults. A script adds its
    own options to it.

    ``--seed`` and ``--seeds`` are one option taking one or more seeds
    (``--seeds 0 1 2 3 4`` trains five times; the results hold every run
    and their mean and standard deviation). ``--device`` is ``auto`` (CUDA
    where available), ``cpu``, ``cuda`` or ``cuda:K``; under ``--ddp`` each
    rank takes the GPU of its local rank. With :obj:`many_models`,
    ``--model`` takes one or more names (a list).
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add('--dataset', default=dataset, choices=list(datasets))
    if many_models:
        add('--model', '--models', dest='model', default=[model],
            nargs='+', choices=list(models))
    else:
        add('--model', default=model, choices=list(models))
    add('--root', default='data', help='where datasets are stored')
    add('--out', default='results', help='folder for results JSON and PNG')
    add('--epochs', type=positive_int, default=epochs)
    add('--seed', '--seeds', dest='seeds', type=int, nargs='+', default=[0],
        help='one run per seed')
    add('--device', type=device_name, default='auto')
    add('--hidden', type=positive_int, default=hidden,
        help='hidden channels')
    add('--lr', type=positive_float, default=lr, help='learning rate')
    add('--batch-size', type=positive_int, default=batch_size)
    add('--threads', type=positive_int, default=None,
        help='intra-op threads of torch (default: torch\'s choice; under '
        '--ddp on CPUs: the cores shared among the ranks)')
    add('--ddp', action='store_true',
        help='data-parallel training; launch with torchrun')
    add('--no-progress', action='store_true', help='no tqdm bars')
    return parser


@contextlib.contextmanager
def cached_tree_matches(option: str) -> Iterator[None]:
    r"""Inside: a dataset whose processed files were made with another
    ``pre_transform`` (PyG only warns, then loads them) ends the script
    with a message naming :obj:`option`, the choice of tree that the
    results would record while the cached trees were used."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            'error', message='The `pre_transform` argument differs',
            category=UserWarning)
        try:
            yield
        except UserWarning as error:
            if 'pre_transform' not in str(error):
                raise
            raise SystemExit(
                f'the processed files under --root hold trees made with '
                f'another {option} than this run asks for (PyG would load '
                f'them and the results would say {option} as given); use '
                f'a fresh --root, or delete its processed folder') from None


def seed_everything(seed: int):
    r"""Seeds Python's, NumPy's and torch's generators (all devices)."""
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    r"""The :class:`torch.device` that ``--device`` names: ``'auto'`` is
    CUDA where available, else the CPU; a bare ``'cuda'`` is the GPU of
    :obj:`local_rank` (one GPU per rank under ``torchrun``)."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda':
        device = f'cuda:{local_rank}'
    return torch.device(device)


def progress(iterable: Iterable, epoch: int, dist: 'Distributed',
             enabled: bool = True) -> Iterable:
    r"""A tqdm bar over one epoch's batches, on rank 0 only (and not when
    :obj:`enabled` is :obj:`False`, e.g. for ``--no-progress``)."""
    disable = not enabled or not dist.is_main
    return tqdm(iterable, desc=f'Epoch {epoch:03d}', leave=False,
                disable=disable, file=sys.stdout)


def log_epoch(epoch: int, **values: float):
    r"""Prints one line per epoch, PyG style: ``Epoch: 003, Loss: 0.4127,
    Train: 0.7312, Valid: 0.7004, Test: 0.6891, Time: 1.52s``."""
    parts = [f'Epoch: {epoch:03d}']
    for key, value in values.items():
        name = key.replace('_', ' ').capitalize()
        if key == 'seconds':
            parts.append(f'Time: {value:.2f}s')
        elif key.endswith('seconds'):
            parts.append(f'{name}: {value:.2f}s')
        else:
            parts.append(f'{name}: {value:.4f}')
    print(', '.join(parts), flush=True)


def machine_description(device: torch.device,
                        world_size: int = 1) -> Dict[str, Any]:
    r"""What the numbers were measured on: platform, CPU count, threads,
    library versions, the device (and GPU name) and the number of ranks."""
    import torch_geometric
    info = {
        'platform': platform.platform(),
        'python': platform.python_version(),
        'processor': platform.processor() or platform.machine(),
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'torch_geometric': torch_geometric.__version__,
        'device': str(device),
        'world_size': world_size,
    }
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def peak_memory_mb(device: torch.device) -> float:
    r"""Peak memory of this process in MiB: the CUDA allocator's peak on a
    GPU (reset with :func:`reset_peak_memory`), else the peak resident set
    size of the process (which never decreases, so on the CPU it is the
    peak of the whole run so far, data loading included)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (2**20 if sys.platform == 'darwin' else 2**10)


def reset_peak_memory(device: torch.device):
    r"""Starts a new peak for :func:`peak_memory_mb` on a GPU (the CPU's
    peak resident set size cannot be reset)."""
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    r"""Mean and sample standard deviation (``0`` for one value) of
    :obj:`values`, with their count."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    var = sum((v - mean)**2 for v in values) / (n - 1) if n > 1 else 0.0
    return {'mean': mean, 'std': math.sqrt(var), 'count': n}


class Distributed:
    r"""Data-parallel set-up from the environment variables of ``torchrun``
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``), or a single process when :obj:`enabled` is
    :obj:`False`, with the same methods, so that a script has one code
    path.

    The process group uses nccl on CUDA and gloo on the CPU. On the CPU
    each rank gets ``cpu_count // local_world_size`` intra-op threads, so
    that the ranks do not oversubscribe the cores.

    Build it with :meth:`from_env`; call :meth:`close` at the end.
    """
    def __init__(self, rank: int, world_size: int, local_rank: int,
                 device: torch.device):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device

    @classmethod
    def from_env(cls, enabled: bool, device: str = 'auto',
                 threads: Optional[int] = None) -> 'Distributed':
        r"""Joins the process group when :obj:`enabled` (``--ddp``), and
        sets torch's intra-op :obj:`threads` where given (``--threads``;
        small graphs often train faster on one thread, most of all on a
        shared machine)."""
        if threads is not None:
            torch.set_num_threads(threads)
        if not enabled:
            return cls(0, 1, 0, resolve_device(device))
        if 'RANK' not in os.environ:
            raise RuntimeError('--ddp needs the environment that torchrun '
                               'sets: run `torchrun --nproc_per_node=K '
                               'script.py --ddp ...`')
        rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        dev = resolve_device(device, local_rank)
        backend = 'nccl' if dev.type == 'cuda' else 'gloo'
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        elif threads is None:
            local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        torch_dist.init_process_group(backend, rank=rank, world_size=world)
        return cls(rank, world, local_rank, dev)

    @property
    def enabled(self) -> bool:
        return torch_dist.is_available() and torch_dist.is_initialized()

    @property
    def is_main(self) -> bool:
        r"""Whether this is rank 0, the one that logs and writes."""
        return self.rank == 0

    def sampler(self, dataset, shuffle: bool = True, seed: int = 0):
        r"""A :class:`~torch.utils.data.DistributedSampler` over
        :obj:`dataset` (each rank one shard of every epoch; call
        ``sampler.set_epoch(epoch)`` to reshuffle), or :obj:`None` for a
        single process."""
        if not self.enabled:
            return None
        from torch.utils.data.distributed import DistributedSampler
        return DistributedSampler(dataset, num_replicas=self.world_size,
                                  rank=self.rank, shuffle=shuffle, seed=seed)

    def shard(self, index: Tensor) -> Tensor:
        r"""This rank's part of :obj:`index` for evaluation: every
        ``world_size``-th entry, so that the ranks together hold every
        sample exactly once (a :class:`DistributedSampler` would repeat
        samples to even out the shards, and repeats change a metric)."""
        return index[self.rank::self.world_size]

    def sum(self, *values: float) -> List[float]:
        r"""The sums of :obj:`values` over all ranks (e.g. a loss total and
        a sample count, to average over all samples)."""
        tensor = torch.tensor(values, dtype=torch.float64)
        if self.enabled:
            tensor = tensor.to(self._comm_device())
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def gather(self, tensor: Tensor) -> Tensor:
        r"""Concatenates :obj:`tensor` ``[n_r, ...]`` of every rank ``r``
        along dimension 0, in rank order, on every rank. The shards may
        differ in length (they are padded for the transfer and cut
        back)."""
        if not self.enabled:
            return tensor
        dev = self._comm_device()
        count = torch.tensor([tensor.size(0)], device=dev)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        torch_dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        padded = tensor.new_zeros((max(counts), ) + tensor.shape[1:])
        padded[:tensor.size(0)] = tensor
        padded = padded.to(dev)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        return torch.cat([p[:c].to(tensor.device)
                          for p, c in zip(parts, counts)])

    def gather_objects(self, obj: Any) -> List[Any]:
        r"""The picklable :obj:`obj` of every rank, as a list in rank
        order."""
        if not self.enabled:
            return [obj]
        objects = [None] * self.world_size
        torch_dist.all_gather_object(objects, obj)
        return objects

    def broadcast_buffers(self, module: torch.nn.Module):
        r"""Copies rank 0's buffers of :obj:`module` (e.g. batch norm
        statistics) to every rank. Under DDP every rank updates its own
        statistics in its last training step, after DDP's broadcast, so
        without this the ranks would evaluate slightly different models."""
        if self.enabled:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer.data, src=0)

    def barrier(self):
        r"""Waits for every rank (a no-op for a single process)."""
        if self.enabled:
            torch_dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        r"""Runs the block on rank 0 first, then on the other ranks: rank 0
        downloads and processes a dataset, the others load its files."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def _comm_device(self) -> torch.device:
        # nccl only moves CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == 'cuda' else \
            torch.device('cpu')

    def close(self):
        r"""Leaves the process group (a no-op for a single process)."""
        if self.enabled:
            torch_dist.barrier()
            torch_dist.destroy_process_group()


class Results:
    r"""The record of one invocation of a script: its configuration, the
    machine, and one run per seed, written as ``<out>/<name>.json`` with a
    plot of the training curves ``<out>/<name>.png``.

    Every run keeps per-epoch values (whatever :meth:`add_epoch` gets,
    e.g. ``loss``, ``train``, ``valid``, ``test``, ``seconds``), and at
    :meth:`finish_run` its final metrics: every value of its best epoch by
    ``valid`` (the largest if :obj:`higher_is_better`, else the smallest),
    the mean seconds per epoch and the peak memory. The summary holds the
    mean and standard deviation of the final metrics over the runs.

    Args:
        name (str): the file stem of the outputs.
        config (dict): the configuration (e.g. ``vars(args)``).
        metric (str): the name of the metric in ``train``/``valid``/
            ``test`` (e.g. ``'rocauc'``).
        higher_is_better (bool): how the best epoch is chosen.
        dist (Distributed, optional): only its rank 0 logs and writes.
    """
    def __init__(self, name: str, config: Dict[str, Any], metric: str,
                 higher_is_better: bool,
                 dist: Optional[Distributed] = None):
        self.dist = dist or Distributed(0, 1, 0, torch.device('cpu'))
        self.name = name
        self.config = dict(config)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.runs: List[Dict[str, Any]] = []
        self.extra: Dict[str, Any] = {}

    def start_run(self, seed: int):
        r"""Begins the run of :obj:`seed` (and a new memory peak)."""
        reset_peak_memory(self.dist.device)
        self.runs.append({'seed': seed, 'epochs': []})

    def add_epoch(self, epoch: int, log: bool = True, **values: float):
        r"""Records one epoch of the current run; logs it on rank 0."""
        values = {k: float(v) for k, v in values.items()}
        self.runs[-1]['epochs'].append({'epoch': epoch, **values})
        if log and self.dist.is_main:
            log_epoch(epoch, **values)

    def finish_run(self, **extra: Any) -> Dict[str, float]:
        r"""Closes the current run: picks its best epoch by ``valid`` and
        stores its values (and :obj:`extra`) as the run's ``final``."""
        run = self.runs[-1]
        epochs = run['epochs']
        pick = max if self.higher_is_better else min
        best = pick(epochs, key=lambda e: e['valid']) if epochs else {}
        final = {k: v for k, v in best.items()
                 if not k.endswith('seconds')}
        final['best_epoch'] = final.pop('epoch', 0)
        seconds = [e['seconds'] for e in epochs if 'seconds' in e]
        run['final'] = {**final, **extra}
        run['seconds_per_epoch'] = sum(seconds) / max(len(seconds), 1)
        run['peak_memory_mb'] = peak_memory_mb(self.dist.device)
        return run['final']

    def summary(self) -> Dict[str, Dict[str, float]]:
        r"""Mean and standard deviation over runs of every numeric final
        value, the seconds per epoch and the peak memory."""
        keys = [k for k, v in self.runs[0]['final'].items()
                if isinstance(v, (int, float))] if self.runs else []
        out = {k: mean_std([r['final'][k] for r in self.runs]) for k in keys}
        for key in ('seconds_per_epoch', 'peak_memory_mb'):
            out[key] = mean_std([r[key] for r in self.runs])
        return out

    def as_dict(self) -> Dict[str, Any]:
        return {
            'name': self.name, 'config': self.config,
            'machine': machine_description(self.dist.device,
                                           self.dist.world_size),
            'metric': self.metric,
            'higher_is_better': self.higher_is_better,
            'runs': self.runs, 'summary': self.summary(), **self.extra,
        }

    def write(self, out: str) -> Optional[str]:
        r"""Writes ``<out>/<name>.json`` and the curves ``<out>/<name>.png``
        on rank 0, prints the summary and returns the JSON's path (other
        ranks: :obj:`None`)."""
        if not self.dist.is_main:
            return None
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f'{self.name}.json')
        with open(path, 'w') as f:
            json.dump(self.as_dict(), f, indent=2, allow_nan=True)
        plot_curves(self.runs, self.metric,
                    os.path.join(out, f'{self.name}.png'), title=self.name)
        for key in ('valid', 'test'):
            if key in self.summary():
                s = self.summary()[key]
                print(f'{key.capitalize()} {self.metric}: {s["mean"]:.4f} '
                      f'± {s["std"]:.4f} over {s["count"]} seed(s)')
        return path


def plot_curves(runs: List[Dict[str, Any]], metric: str, path: str,
                title: str = ''):
    r"""Plots the training loss (left) and the train/valid/test metric
    (right) per epoch, one line per run and split, into the PNG
    :obj:`path` (matplotlib's Agg backend: no display needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {'train': 'tab:blue', 'valid': 'tab:orange', 'test': 'tab:green'}
    for i, run in enumerate(runs):
        epochs = [e['epoch'] for e in run['epochs']]
        label = f'seed {run["seed"]}'
        if any('loss' in e for e in run['epochs']):
            ax_loss.plot(epochs, [e.get('loss') for e in run['epochs']],
                         marker='.', alpha=0.7, label=label)
        for split, color in colors.items():
            if any(split in e for e in run['epochs']):
                ax_metric.plot(epochs, [e.get(split) for e in run['epochs']],
                               marker='.', color=color, alpha=0.6,
                               label=split if i == 0 else None)
    ax_loss.set(xlabel='epoch', ylabel='training loss', title='loss')
    ax_metric.set(xlabel='epoch', ylabel=metric, title=metric)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Timer:
    r"""Seconds since construction or the last :meth:`lap`."""
    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.start = now - self.start, now
        return seconds


def mean_std_cell(summary: Dict[str, Dict[str, float]], key: str,
                  digits: int = 4) -> str:
    r"""``'mean ± std'`` of :obj:`key` in a :meth:`Results.summary`, or
    ``''`` where it has none: a cell of the results tables."""
    s = summary.get(key)
    return '' if s is None else \
        f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f}'


def result_sets(path: str) -> List[Dict[str, Any]]:
    r"""The result sets of the results JSON file :obj:`path`, each a dict
    of ``label``, ``config``, ``metric``, ``runs`` and ``summary``: one for
    a file of :meth:`Results.write`, one per arm for a file of
    :func:`write_arms` (the arm is the label)."""
    with open(path) as f:
        res = json.load(f)
    sets = []
    if isinstance(res, dict) and 'summary' in res and 'runs' in res:
        cfg = res.get('config', {})
        label = cfg.get('model') or os.path.basename(path)
        sets = [dict(res, label=str(label), config=cfg)]
    elif isinstance(res, dict) and isinstance(res.get('arms'), dict):
        sets = [dict(r, label=arm, config=res.get('config', {}),
                     metric=res.get('metric'))
                for arm, r in res['arms'].items() if isinstance(r, dict)]
    keys = ('runs', 'summary', 'metric')
    if not sets or any(k not in r for r in sets for k in keys) or any(
            'peak_memory_mb' not in r['summary'] for r in sets):
        raise ValueError(
            f"{path} is not a results file of the training scripts (no "
            f"runs with a summary, metric and peak memory, as one model or "
            f"as arms); pass the JSON files that the scripts write to "
            f"--out")
    return [{k: r[k] for k in ('label', 'config') + keys} for r in sets]


def labelled_sets(paths: Sequence[str]) -> List[Dict[str, Any]]:
    r"""The result sets of every file of :obj:`paths` in order
    (:func:`result_sets`), a label that more than one of them has followed
    by its file's name (two files of arms of the same names, say), so that
    no two rows or curves read alike."""
    sets = [(path, r) for path in paths for r in result_sets(path)]
    counts = collections.Counter(r['label'] for _, r in sets)
    for path, r in sets:
        if counts[r['label']] > 1:
            r['label'] = f"{r['label']} ({os.path.basename(path)})"
    return [r for _, r in sets]


def results_table(paths: Sequence[str]) -> str:
    r"""A Markdown table of the results JSON files :obj:`paths`: one row
    per result set (:func:`labelled_sets`: dataset, split, model or arm),
    with the mean ± standard deviation over seeds of the test and
    validation metric, the seconds per epoch, the peak memory and the
    number of parameters."""
    rows = ['| dataset | split | model | seeds | test | valid | s/epoch | '
            'peak MiB | params |', '|' + ' --- |' * 9]
    for res in labelled_sets(paths):
        cfg, summ = res['config'], res['summary']

        def cell(key: str, digits: int = 4) -> str:
            return mean_std_cell(summ, key, digits)
        # (not every script records its parameters: '-', not 0)
        params = summ.get('num_parameters', {}).get('mean')
        params = '-' if params is None else f'{params:,.0f}'
        rows.append(
            f'| {cfg.get("dataset", "")} | {cfg.get("split") or ""} | '
            f'{res["label"]} | {len(res["runs"])} | '
            f'{cell("test")} {res["metric"]} | {cell("valid")} | '
            f'{cell("seconds_per_epoch", 2)} | '
            f'{summ["peak_memory_mb"]["mean"]:.0f} | {params} |')
    return '\n'.join(rows)


def compare_curves(paths: Sequence[str], path: str, title: str = ''):
    r"""Plots, for several results JSON files :obj:`paths` (e.g. one per
    model on the same split, or one with several arms), the training loss
    (left) and the validation metric (right) per epoch of each result set
    (:func:`labelled_sets`): the mean over seeds as a line, the minimum to
    maximum over seeds as a band, one colour per set, into the PNG
    :obj:`path`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    metric = ''
    for res in labelled_sets(paths):
        metric = res['metric']
        for ax, key in zip(axes, ('loss', 'valid')):
            curves = torch.tensor([[e[key] for e in run['epochs']]
                                   for run in res['runs']])
            epochs = [e['epoch'] for e in res['runs'][0]['epochs']]
            line, = ax.plot(epochs, curves.mean(0).tolist(),
                            label=res['label'])
            ax.fill_between(epochs, curves.min(0).values.tolist(),
                            curves.max(0).values.tolist(),
                            color=line.get_color(), alpha=0.15)
    axes[0].set(xlabel='epoch', ylabel='training loss', title='loss')
    axes[1].set(xlabel='epoch', ylabel=f'validation {metric}',
                title=f'validation {metric}')
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_arms(arms: Dict[str, 'Results'], path: str, title: str = '',
              panels: Sequence[str] = ('loss', 'valid', 'test')):
    r"""One panel per key of :obj:`panels` (training loss, validation and
    test metric), one curve per arm of a script that trains several: the
    mean over seeds as a line, minimum to maximum as a band."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4))
    metric = next(iter(arms.values())).metric if arms else ''
    for arm, results in arms.items():
        epochs = [e['epoch'] for e in results.runs[0]['epochs']]
        for ax, key in zip(axes, panels):
            curves = torch.tensor([[e[key] for e in run['epochs']]
                                   for run in results.runs])
            line, = ax.plot(epochs, curves.mean(0).tolist(), marker='.',
                            label=arm)
            ax.fill_between(epochs, curves.min(0).values.tolist(),
                            curves.max(0).values.tolist(),
                            color=line.get_color(), alpha=0.15)
    names = {'loss': 'training loss', 'valid': f'validation {metric}',
             'test': f'test {metric}'}
    for ax, key in zip(axes, panels):
        name = names.get(key, key)
        ax.set(xlabel='epoch', ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_arms(arms: Dict[str, 'Results'], name: str, args,
               device: torch.device, panels: Sequence[str] = (
                   'loss', 'valid', 'test'),
               extra: Optional[Dict[str, Dict[str, Any]]] = None
               ) -> Dict[str, Any]:
    r"""Writes ``<args.out>/<name>.json`` (configuration, machine, and per
    arm its runs, summary and the entries of ``extra[arm]``) and
    ``<args.out>/<name>.png`` (:func:`plot_arms`); returns the JSON's
    content."""
    first = next(iter(arms.values()))
    out = {'name': name, 'config': vars(args),
           'machine': machine_description(device),
           'metric': first.metric,
           'higher_is_better': first.higher_is_better,
           'arms': {arm: {**(extra or {}).get(arm, {}), 'runs': r.runs,
                          'summary': r.summary()}
                    for arm, r in arms.items()}}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f'{name}.json'), 'w') as f:
        json.dump(out, f, indent=2, allow_nan=True)
    plot_arms(arms, os.path.join(args.out, f'{name}.png'), name, panels)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    r"""``python examples/training.py results/*.json [--plot curves.png]``:
    the results files as one table (and their curves in one picture)."""
    parser = argparse.ArgumentParser(
        description='The results JSON files of the example scripts as one '
                    'Markdown table, and their curves in one picture.')
    parser.add_argument('files', nargs='+', metavar='RESULTS.json')
    parser.add_argument('--plot', metavar='CURVES.png',
                        help='also draw the training loss and validation '
                             'metric of every file into this PNG')
    args = parser.parse_args(argv)
    try:
        print(results_table(args.files))
        if args.plot:
            compare_curves(args.files, args.plot)
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error))
    return 0


if __name__ == '__main__':
    sys.exit(main())
