r"""A function applied to many items in worker processes, results in order:
how the datasets build their trees with ``num_workers``."""
import copyreg
import io
import multiprocessing
import pickle
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from hsa_geo._checks import check_int, check_num_workers

# The function of this worker process (set once per worker, not per item).
_function: Optional[Callable] = None


def parallel_map(function: Callable, items: Sequence, num_workers: int = 0,
                 chunksize: Optional[int] = None, desc: Optional[str] = None,
                 log: bool = False) -> Iterator[Any]:
    r"""An iterator over ``function(item)`` for every item of :obj:`items`,
    in order, computed by :obj:`num_workers` worker processes: the same
    results as the built-in :func:`map`.

    On Linux the workers are forked, so that :obj:`function` (a transform
    with its vocabulary or tokenizer, a closure) reaches them without being
    pickled; elsewhere they are spawned and :obj:`function` must be
    picklable. Each worker runs torch
    with one thread, as :class:`~torch.utils.data.DataLoader` workers do.
    Items go to the workers in chunks; results come back pickled, CPU
    tensors as their values (not in shared memory, which costs a file
    descriptor per tensor and runs out over thousands of documents). An
    exception raised by :obj:`function` is raised here, and the chunks not
    started yet are dropped.

    Args:
        function (callable): applied to every item; its results must be
            picklable, and so must it unless the workers are forked.
        items (sequence): the inputs, picklable.
        num_workers (int): worker processes; ``0`` calls :obj:`function`
            in this process, one item at a time as the iterator advances.
            (default: :obj:`0`)
        chunksize (int, optional): items sent to a worker at once.
            (default: about 16 chunks per worker, at most 64 items each)
        desc (str, optional): the progress bar's label.
            (default: :obj:`None`)
        log (bool): show a progress bar. (default: :obj:`False`)

    Example:
        >>> list(parallel_map(len, ['a', 'bb', 'ccc'], num_workers=2))
        [1, 2, 3]
    """
    num_workers = check_num_workers(num_workers)
    if chunksize is None:
        chunksize = max(1, min(64, len(items) // (16 * max(num_workers, 1))))
    chunksize = check_int(chunksize, 'chunksize')
    if num_workers == 0 or len(items) == 0:
        results = map(function, items)
    else:
        results = _in_workers(function, items, num_workers, chunksize)
    return iter(tqdm(results, total=len(items), desc=desc,
                     disable=not log))


def _in_workers(function: Callable, items: Sequence, num_workers: int,
                chunksize: int) -> Iterator[Any]:
    # Fork is safe on Linux only (macOS's system libraries are not).
    context = multiprocessing.get_context(
        'fork' if sys.platform.startswith('linux') else 'spawn')
    pool = ProcessPoolExecutor(num_workers, mp_context=context,
                               initializer=_start_worker,
                               initargs=(function, ))
    try:
        for result in pool.map(_call, items, chunksize=chunksize):
            yield pickle.loads(result)
    finally:  # also when the caller stops early or an item failed
        pool.shutdown(cancel_futures=True)


def _start_worker(function: Callable):
    global _function
    _function = function
    torch.set_num_threads(1)  # one process per core, as DataLoader workers


def _call(item: Any) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(_function(item))
    return buffer.getvalue()


def _reduce_tensor(tensor: torch.Tensor):
    r"""A CPU tensor as its values (a NumPy array); others as torch
    pickles them."""
    if tensor.device.type != 'cpu' or tensor.layout != torch.strided or \
            tensor.requires_grad or tensor.dtype not in _NUMPY_DTYPES or \
            tensor.is_conj() or tensor.is_neg():
        return tensor.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return _from_numpy, (tensor.numpy(), )


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    # A tensor that owns its memory, as an unpickled one does.
    return torch.from_numpy(array).clone()


_NUMPY_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16,
                 torch.int32, torch.int64, torch.float16, torch.float32,
                 torch.float64, torch.complex64, torch.complex128}
_DISPATCH = dict(copyreg.dispatch_table)
_DISPATCH[torch.Tensor] = _reduce_tensor
