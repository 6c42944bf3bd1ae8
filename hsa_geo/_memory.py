r"""Refusing, before allocating, work that cannot fit in memory."""
from __future__ import annotations

import os
from typing import Optional

import torch

# Totals under 256 MiB do not ask the system (a file read per call).
ASK_ABOVE = 2**28


def available_memory(device: torch.device) -> Optional[int]:
    r"""Bytes that :obj:`device` can still allocate: free plus cached
    memory on CUDA, ``MemAvailable`` of ``/proc/meminfo`` on a Linux CPU;
    :obj:`None` where it cannot be known (then nothing is refused)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - \
            torch.cuda.memory_allocated(device)
    if device.type != 'cpu':
        return None
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, 'sysconf'):
        try:
            return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        except (ValueError, OSError):
            pass
    return None


def ensure_memory(nbytes: int, what: str, device: torch.device,
                  cause: str = ''):
    r"""Raises a :class:`ValueError` when :obj:`nbytes` exceed what
    :obj:`device` can still allocate, naming :obj:`what` needs them and
    :obj:`cause` (e.g. the widest family), so that an input too large for
    the machine fails at once instead of being killed by the operating
    system."""
    available = available_memory(device)
    if available is None or nbytes <= available:
        return
    raise ValueError(
        f"{what} would need about {_gib(nbytes)} but {device} has "
        f"{_gib(available)} available{'; ' + cause if cause else ''}. "
        f"Split wide families into nested ones (e.g. a deeper hierarchy "
        f"with bounded branching), use fewer heads, or run on a device with "
        f"more memory")


def ensure_pairs_fit(hierarchy, bytes_per_pair: int, what: str):
    r"""Refuses, before allocating, work of :obj:`bytes_per_pair` for every
    sibling pair of :obj:`hierarchy` (a pair bias and its index
    temporaries) that cannot fit; totals under :data:`ASK_ABOVE` do not
    ask the system."""
    pairs = hierarchy.num_sibling_pairs
    nbytes = pairs * bytes_per_pair
    if nbytes > ASK_ABOVE:
        ensure_memory(nbytes, f'{what} of {pairs} sibling pairs',
                      hierarchy.device,
                      'the widest family (node {}) has {} children'
                      .format(*hierarchy.widest_family))


def _gib(nbytes: int) -> str:
    return f'{nbytes / 2**30:.2f} GiB'
