import doctest
import json

import pytest

import hsa_geo.datasets.processed_meta as module
from hsa_geo.datasets.processed_meta import (PROCESSED_FORMAT,
                                             load_processed, read_meta,
                                             write_meta)


def test_written_meta_reads_back(tmp_path):
    path = str(tmp_path / 'meta.json')
    write_meta(path, {'skipped': [['a', 'b']], 'sections': ['x']})
    assert read_meta(path) == {'format': PROCESSED_FORMAT,
                               'skipped': [['a', 'b']], 'sections': ['x']}


@pytest.mark.parametrize('stored, made', [
    ({'skipped': []}, 'before processed formats'),
    ([['c1', 'CC']], 'before processed formats'),  # a bare list, as once
    ({'format': PROCESSED_FORMAT + 1, 'skipped': []},
     f'later hsa_geo \\(format {PROCESSED_FORMAT + 1}.*upgrade hsa_geo'),
    ({'format': 'x', 'skipped': []}, "format 'x'"),
])
def test_other_formats_are_refused(tmp_path, stored, made):
    path = tmp_path / 'meta.json'
    path.write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=f'{made}.*force_reload=True'):
        read_meta(str(path))


class _Stored:
    r"""A processed dataset's two files, whose signals fail to load."""
    def __init__(self, folder):
        self.processed_paths = [str(folder / 'data.pt'),
                                str(folder / 'meta.json')]
        self.loaded = []

    def load(self, path):
        self.loaded.append(path)
        raise RuntimeError('signals stored in another format')


def test_load_processed_reads_the_format_first(tmp_path):
    stored = _Stored(tmp_path)
    (tmp_path / 'meta.json').write_text('[]')  # before processed formats
    with pytest.raises(ValueError, match='force_reload=True'):
        load_processed(stored)
    assert stored.loaded == []
    write_meta(stored.processed_paths[1], {'skipped': []})
    with pytest.raises(RuntimeError, match='another format'):
        load_processed(stored)
    assert stored.loaded == [stored.processed_paths[0]]


def test_doctest():
    assert doctest.testmod(module, raise_on_error=True).attempted > 0
