r"""Tiny man-page corpora in the installed on-disk format: gzipped roff
pages in ``man2`` and ``man3`` folders, whose words tell their section."""
import gzip
from pathlib import Path

WORDS = {'2': 'call kernel process signal file descriptor returns error',
         '3': 'function library string buffer stream pointer value locale'}


def page(section: str, i: int, synopsis: bool = False) -> str:
    r"""Page :obj:`i` of :obj:`section`: a few sections, paragraphs and
    sentences whose words tell its section, and with :obj:`synopsis` a
    ``SYNOPSIS`` section (which the documents leave out)."""
    words = WORDS[section].split()
    sentence = ' '.join(words[(i + j) % len(words)] for j in range(5 + i % 4))
    head = [f'.TH PAGE{i} {section}', '.SH NAME', f'page{i} \\- a test page']
    if synopsis:
        head += ['.SH SYNOPSIS', '.nf', f'#include <page{i}.h>', '.fi']
    return '\n'.join(head + [
        '.SH DESCRIPTION', f'The {sentence}.  It {sentence} again.',
        '.PP', f'Another {sentence}.  And one more {sentence}.',
        '.SH NOTES', f'{sentence.capitalize()} here.', ''])


def write_man_pages(folder: Path, count: int, synopsis: bool = False
                    ) -> str:
    r"""Writes :obj:`count` pages, alternately of sections 2 and 3, as
    ``<folder>/man<s>/page<i>.<s>.gz``; returns the folder as a str."""
    for i in range(count):
        section = '23'[i % 2]
        path = Path(folder) / f'man{section}' / f'page{i}.{section}.gz'
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, 'wt') as f:
            f.write(page(section, i, synopsis))
    return str(folder)
