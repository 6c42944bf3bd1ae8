r"""parallel_map: the results of the built-in map, in order, from worker
processes; tensors come back whole; errors are raised here."""
import doctest
import importlib
import os

import pytest
import torch

from hsa_geo.datasets import parallel_map

module = importlib.import_module('hsa_geo.datasets.parallel_map')


def square_and_tensors(i: int) -> dict:
    return {'i': i * i, 'long': torch.arange(i),
            'view': torch.arange(12.).view(3, 4)[:, 1],
            'flags': torch.tensor([True, False]), 'text': 'x' * i}


@pytest.mark.parametrize('num_workers', [0, 1, 2])
def test_same_results_in_order(num_workers):
    items = list(range(23))
    expected = [square_and_tensors(i) for i in items]
    got = list(parallel_map(square_and_tensors, items,
                            num_workers=num_workers, chunksize=3))
    assert [g['i'] for g in got] == [i * i for i in items]
    for g, e in zip(got, expected):
        for key in ('long', 'view', 'flags'):
            assert g[key].dtype == e[key].dtype
            assert torch.equal(g[key], e[key])
        assert g['text'] == e['text']
    # The tensors own their memory, as unpickled tensors do.
    got[3]['long'].resize_(10)


def test_closures_reach_forked_workers():
    offset = 5
    assert list(parallel_map(lambda i: i + offset, [1, 2, 3],
                             num_workers=2)) == [6, 7, 8]


@pytest.mark.parametrize('num_workers', [1, 2])
def test_workers_are_other_processes(num_workers):
    pids = set(parallel_map(lambda i: os.getpid(), range(8),
                            num_workers=num_workers, chunksize=1))
    assert os.getpid() not in pids and 1 <= len(pids) <= num_workers


def test_in_process_it_is_lazy():
    seen = []
    results = parallel_map(seen.append, [1, 2, 3])
    assert seen == []
    next(results)
    assert seen == [1]


def fail_on_three(i: int) -> int:
    if i == 3:
        raise ValueError(f'item {i} is bad')
    return i


def test_errors_are_raised_here():
    with pytest.raises(ValueError, match='item 3 is bad'):
        list(parallel_map(fail_on_three, list(range(8)), num_workers=2,
                          chunksize=1))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'num_workers' must be 0 \(work "
                       r"in this process\) or a number of worker processes"):
        parallel_map(len, ['a'], num_workers=-1)
    with pytest.raises(TypeError, match="'num_workers' must be an int"):
        parallel_map(len, ['a'], num_workers=1.5)
    with pytest.raises(TypeError, match="'num_workers' must be an int"):
        parallel_map(len, ['a'], num_workers=True)
    with pytest.raises(ValueError, match="'chunksize'"):
        parallel_map(len, ['a'], num_workers=1, chunksize=0)
    assert list(parallel_map(len, [], num_workers=2)) == []


def test_doctest():
    assert doctest.testmod(module, raise_on_error=True).attempted > 0
