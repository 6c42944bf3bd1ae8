r"""Tests of the example training scripts of ``examples/``, which are not a
package: :func:`load_example` imports one as a module, with its folder on
``sys.path`` as when it runs (the scripts import ``training`` from it)."""
import importlib
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / 'examples'


def load_example(name: str) -> ModuleType:
    r"""``examples/<name>.py`` as the module :obj:`name` (imported once)."""
    if str(EXAMPLES_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLES_DIR))
    return importlib.import_module(name)
