r"""The Python examples in the README run as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    if 'GraphHierarchy' in BLOCKS[index]:
        pytest.importorskip('pymetis')
    monkeypatch.chdir(tmp_path)  # datasets write under their root
    exec(compile(BLOCKS[index], f'README.md[python block {index}]', 'exec'),
         {'__name__': '__readme__'})
