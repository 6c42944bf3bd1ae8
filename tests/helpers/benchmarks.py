r"""Loading a script of ``benchmarks/`` as a module, for its smoke test (the
scripts are not a package; they import each other from their folder)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[2] / 'benchmarks'


def load_benchmark(name: str) -> ModuleType:
    r"""``benchmarks/<name>.py`` as the module :obj:`name`."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name,
                                                  BENCH_DIR / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
