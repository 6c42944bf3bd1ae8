import doctest
import json
import re
from types import SimpleNamespace

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


class _Tag:
    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f'_Tag({self.value})'


def _keep(data):
    return True


def test_meta_records_the_pre_processing(tmp_path):
    path = str(tmp_path / 'meta.json')
    dataset = SimpleNamespace(pre_transform=_Tag(1), pre_filter=_keep)
    write_meta(path, {'skipped': []}, dataset)
    # Without the memory address, which changes from run to run.
    assert read_meta(path) == {'format': PROCESSED_FORMAT, 'skipped': [],
                               'pre_transform': '_Tag(1)',
                               'pre_filter': '<function _keep>'}
    dataset = SimpleNamespace(pre_transform=None, pre_filter=object())
    write_meta(path, {}, dataset)
    assert read_meta(path)['pre_transform'] == 'None'
    assert read_meta(path)['pre_filter'] == '<object object>'


class _Stored:
    r"""A processed dataset's two files, whose signals fail to load."""
    def __init__(self, folder, pre_transform=None, pre_filter=None):
        self.processed_paths = [str(folder / 'data.pt'),
                                str(folder / 'meta.json')]
        self.pre_transform = pre_transform
        self.pre_filter = pre_filter
        self.loaded = []
        self.processed = 0

    def load(self, path):
        self.loaded.append(path)
        raise RuntimeError('signals stored in another format')

    def process(self):
        self.processed += 1
        write_meta(self.processed_paths[1], {'skipped': []}, self)


def test_load_processed_reads_the_format_first(tmp_path):
    stored = _Stored(tmp_path)
    (tmp_path / 'meta.json').write_text('[]')  # before processed formats
    with pytest.raises(ValueError, match='force_reload=True'):
        load_processed(stored)
    assert stored.loaded == []
    write_meta(stored.processed_paths[1], {'skipped': []}, stored)
    with pytest.raises(RuntimeError, match='another format'):
        load_processed(stored)
    assert stored.loaded == [stored.processed_paths[0]]


@pytest.mark.parametrize('given, changed, recorded, passed', [
    (dict(pre_transform=_Tag(2)), 'pre_transform', '_Tag(1)', '_Tag(2)'),
    (dict(pre_filter=None), 'pre_filter', '<function _keep>', 'None'),
])
def test_other_pre_processing_is_refused(tmp_path, given, changed,
                                         recorded, passed):
    write_meta(str(tmp_path / 'meta.json'), {'skipped': []},
               _Stored(tmp_path, pre_transform=_Tag(1), pre_filter=_keep))
    stored = _Stored(tmp_path, **{'pre_transform': _Tag(1),
                                  'pre_filter': _keep, **given})
    message = re.escape(f"made with {changed}={recorded}, but "
                        f"{changed}={passed} was given")
    with pytest.raises(ValueError, match=f"'data.pt'.*{message}.*"
                       f"force_reload=True.*root"):
        load_processed(stored)
    assert stored.loaded == [] and stored.processed == 0


def test_meta_without_pre_processing_is_processed_again(tmp_path):
    # As an earlier hsa_geo wrote it: what made it is unknown.
    write_meta(str(tmp_path / 'meta.json'), {'skipped': []})
    stored = _Stored(tmp_path, pre_transform=_Tag(1))
    with pytest.raises(RuntimeError, match='another format'):
        load_processed(stored)
    assert stored.processed == 1
    assert read_meta(stored.processed_paths[1])['pre_transform'] == '_Tag(1)'


def test_doctest():
    assert doctest.testmod(module, raise_on_error=True).attempted > 0
