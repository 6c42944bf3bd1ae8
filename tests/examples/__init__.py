r"""Tests of the example training scripts of ``examples/``, which are not a
package: :func:`load_example` imports one as a module, with its folder on
``sys.path`` as when it runs (the scripts import ``training`` from it)."""
import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / 'examples'


def load_example(name: str) -> ModuleType:
    r"""``examples/<name>.py`` as the module :obj:`name` (imported once)."""
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    return importlib.import_module(name)


def torchrun(script: str, *argv: str) -> subprocess.CompletedProcess:
    r"""Runs ``examples/<script>.py *argv`` as ``torchrun
    --nproc_per_node=2`` on the CPU (one thread per rank, a free port) and
    fails the test with the end of its error output if it fails."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    command = [sys.executable, '-m', 'torch.distributed.run',
               '--nproc_per_node=2', '--master_addr=127.0.0.1',
               f'--master_port={port}', str(EXAMPLES_DIR / f'{script}.py'),
               '--ddp', '--device', 'cpu', *argv]
    proc = subprocess.run(command, capture_output=True, text=True,
                          timeout=300, env={**os.environ,
                                            'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
