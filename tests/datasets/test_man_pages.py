r"""ManPages on small roff pages written as the packages install them
(gzipped, in man<section> folders), and on a few installed pages."""
import gzip
import os
import os.path as osp
import shutil
import subprocess

import pytest
import torch
from torch_geometric.loader import DataLoader

from hsa_geo.datasets import ManPages
from hsa_geo.transforms import DocumentHierarchy
from tests.helpers.signals import assert_same_signal

# Markup the converter handles: comments, font escapes and macros,
# special characters, .TP tags, .SS, code, a tbl table with a T{ block, a
# link, strings, a macro definition and a conditional.
ALPHA = r""".\" A comment that gives no text.
.TH ALPHA 2 2024-01-01 "test" "Test Manual"
.de XX
Defined text that is never shown.
..
.ie n .ds Q "
.el .ds Q \(lq
.SH NAME
alpha \- first test page
.SH DESCRIPTION
The
.BR alpha ()
call reads \fIdata\fP from \fBfile\fR.  \" trailing comment
It works\(emmostly, \*(lqsays\*(rq \[aq]the\[aq] doc\[u00E9].
.PP
Second paragraph here.
.TP
.B \-v
Verbose output.
.SS Code
.EX
int x = 1;
.EE
.TS
tab(;);
l l.
Name;Value
_
T{
.B one
T};1
.TE
.SH "SEE ALSO"
.UR https://example.org
the site
.UE .
"""
ALPHA_TEXT = (
    "NAME\n\nalpha - first test page"
    "\n\n\nDESCRIPTION\n\n"
    "The\nalpha()\ncall reads data from file.\n"
    "It works\u2014mostly, \u201csays\u201d 'the' doc\u00e9."
    "\n\nSecond paragraph here."
    "\n\n-v\nVerbose output."
    "\n\nCode\n\nint x = 1;\n\nName\tValue\none\t1"
    "\n\n\nSEE ALSO\n\nthe site\n<https://example.org>.")
BETA = r""".TH BETA 2
.SH NAME
beta \- a test-split page
.SH DESCRIPTION
Only betaword here.
"""
GAMMA = r""".TH GAMMA 3
.SH NAME
gamma \- a library page
.SH DESCRIPTION
.IP \[bu] 2
An item with
.I gammaword
in it.
"""
SIZE_T = r""".TH size_t 3type
.SH NAME
size_t \- a type
.SH DESCRIPTION
Holds sizes.
"""
PAGES = {
    'man2/alpha.2.gz': ALPHA,
    'man2/beta.2.gz': BETA,
    'man3/gamma.3.gz': GAMMA,
    'man3/size_t.3type.gz': SIZE_T,
    'man7/delta.7.gz': '.so man2/alpha.2\n',
    'man7/epsilon.7.gz': '.\\" only a comment\n.TH EPSILON 7\n',
    'man5/zeta.5.gz': '.TH ZETA 5\n.SH NAME\nzeta \\- rare\n',
}


def write_pages(folder, pages=PAGES, alias=True) -> str:
    r"""Writes gzipped :obj:`pages` under :obj:`folder`, and a link
    ``man3/gammalink.3.gz`` to ``gamma.3.gz`` (an alias)."""
    for name, source in pages.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, 'wt', encoding='utf-8') as f:
            f.write(source)
    if alias:
        os.symlink('gamma.3.gz', folder / 'man3' / 'gammalink.3.gz')
    return str(folder)


@pytest.fixture
def dataset(tmp_path):
    man = write_pages(tmp_path / 'man')
    return ManPages(str(tmp_path / 'root'), paths=[man],
                    min_pages_per_section=2, min_freq=1, log=False)


def page(dataset, name):
    return dataset[[d.page for d in dataset].index(name)]


def test_pages_labels_and_skipped(dataset):
    assert [d.page for d in dataset] == [
        'man2/alpha.2', 'man2/beta.2', 'man3/gamma.3', 'man3/size_t.3type']
    # Sub-section 3type is part of section 3; 5 has too few pages.
    assert dataset.sections == ['2', '3']
    assert dataset.num_classes == 2
    assert [int(d.y) for d in dataset] == [0, 0, 1, 1]
    size_t = page(dataset, 'man3/size_t.3type')
    assert (size_t.name, size_t.section) == ('size_t', '3type')
    assert sorted(dataset.skipped) == [
        ('man3/gammalink.3', 'alias', 'a link to gamma.3.gz'),
        ('man5/zeta.5', 'rare section', 'section 5 has 1 page, fewer '
         'than 2'),
        ('man7/delta.7', 'redirect', '.so man2/alpha.2'),
        ('man7/epsilon.7', 'empty', 'no text'),
    ]
    assert dataset.skipped_counts() == {'alias': 1, 'redirect': 1,
                                        'empty': 1, 'rare section': 1}
    assert dataset.num_skipped == 4


def test_roff_to_text(dataset):
    assert page(dataset, 'man2/alpha.2').text == ALPHA_TEXT
    assert page(dataset, 'man3/gamma.3').text == (
        'NAME\n\ngamma - a library page\n\n\nDESCRIPTION\n\n'
        '\u2022\nAn item with\ngammaword\nin it.')


def test_tree(dataset):
    data = page(dataset, 'man2/alpha.2')
    n, kind = data.num_nodes, data.cluster_kind
    parent = data.hierarchy.parent
    assert data.hierarchy.num_trees == 1
    assert kind.tolist() == sorted(kind.tolist(), reverse=True)  # bottom-up
    assert kind[-1] == ManPages.KINDS.index('page')
    sections = (kind == ManPages.KINDS.index('section')).nonzero().view(-1)
    assert parent[n + sections].tolist() == [n + kind.numel() - 1] * 3
    spans = data.cluster_offsets[sections].tolist()
    assert [data.text[a:b].split('\n')[0] for a, b in spans] == [
        'NAME', 'DESCRIPTION', 'SEE ALSO']
    # DESCRIPTION: heading, 2 paragraphs, the .TP item, 'Code', code, table.
    paragraphs = (kind == ManPages.KINDS.index('paragraph')).nonzero()
    children = torch.bincount(parent[n + paragraphs.view(-1)] - n)
    assert children[sections].tolist() == [2, 7, 2]
    first = data.cluster_offsets[paragraphs[3]].view(-1).tolist()
    assert data.text[slice(*first)].endswith('doc\u00e9.')
    # Below the sections, the tree is DocumentHierarchy's of the text.
    reference = DocumentHierarchy(vocab=dataset.vocab)(data.text)
    assert torch.equal(reference.x, data.x)
    assert torch.equal(reference.offsets, data.offsets)
    below = reference.cluster_offsets[reference.hierarchy.parent[:n] - n]
    assert torch.equal(data.cluster_offsets[parent[:n] - n], below)
    assert torch.bincount(reference.cluster_kind)[1:].tolist() == \
        torch.bincount(kind)[2:].tolist()
    tokens = [data.text[a:b] for a, b in data.offsets.tolist()]
    assert tokens[:4] == ['NAME', 'alpha', '-', 'first']


def test_split_and_vocabulary(dataset):
    split = dataset.get_idx_split()
    assert sorted(torch.cat(list(split.values())).tolist()) == [0, 1, 2, 3]
    # By the hash of the page name: beta is the only non-training page.
    assert split['test'].tolist() == [1]
    assert split['train'].tolist() == [0, 2, 3]
    # The vocabulary sees the training pages only.
    assert 'gammaword' in dataset.vocab
    assert 'betaword' not in dataset.vocab
    beta = page(dataset, 'man2/beta.2')
    words = [beta.text[a:b] for a, b in beta.offsets.tolist()]
    assert beta.x[words.index('betaword')] == dataset.vocab.unk_id


def test_split_of_a_subset(dataset):
    pages = [d.page for d in dataset]
    part = {pages[i]: name for name, index in dataset.get_idx_split().items()
            for i in index.tolist()}
    for subset in (dataset[1:], dataset[[3, 0, 1]], dataset.shuffle()):
        split = subset.get_idx_split()
        # Indices into the subset, every page in the part it has in full.
        assert sorted(torch.cat(list(split.values())).tolist()) == \
            list(range(len(subset)))
        for name, index in split.items():
            assert index.tolist() == sorted(index.tolist())
            assert {part[subset[i].page] for i in index.tolist()} <= {name}


def has_beta(data):
    return 'beta' in data.text


def test_other_pre_filter_is_refused(tmp_path, dataset):
    with pytest.raises(ValueError, match=(
            r"'min2_vocab1\.pt' .* made with pre_filter=None, but "
            r"pre_filter=<function has_beta> was given.*force_reload=True")):
        ManPages(str(tmp_path / 'root'), paths=[str(tmp_path / 'man')],
                 min_pages_per_section=2, min_freq=1, pre_filter=has_beta,
                 log=False)
    only = ManPages(str(tmp_path / 'root'), paths=[str(tmp_path / 'man')],
                    min_pages_per_section=2, min_freq=1, pre_filter=has_beta,
                    force_reload=True, log=False)
    assert [d.page for d in only] == ['man2/beta.2']
    assert only.get_idx_split()['test'].tolist() == [0]


def test_batching(dataset):
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch.hierarchy.num_trees == 4
    assert batch.y.tolist() == [0, 0, 1, 1]
    assert batch.num_nodes == sum(d.num_nodes for d in dataset)
    assert batch.cluster_kind.numel() == batch.hierarchy.num_clusters


def test_reload_and_sources(tmp_path, dataset):
    # The processed files are read back without the source pages.
    shutil.rmtree(tmp_path / 'man')
    again = ManPages(str(tmp_path / 'root'), paths=[str(tmp_path / 'man')],
                     min_pages_per_section=2, min_freq=1, log=False)
    assert again.vocab == dataset.vocab
    assert [d.text for d in again] == [d.text for d in dataset]
    # Other paths and options get folders and files of their own.
    other = write_pages(tmp_path / 'other', {'man2/beta.2.gz': BETA},
                        alias=False)
    single = ManPages(str(tmp_path / 'root'), paths=[other], log=False,
                      min_pages_per_section=1)
    assert single.source != dataset.source
    assert [d.page for d in single] == ['man2/beta.2']
    assert single.vocab != dataset.vocab  # beta has no training page


def test_tokenizer(tmp_path):
    tokenizers = pytest.importorskip('tokenizers')
    words = ['NAME', 'beta', '-', 'a', 'page', 'DESCRIPTION', 'Only', '.']
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(['[UNK]'] + words)}, unk_token='[UNK]'))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    other = write_pages(tmp_path / 'man', {'man2/beta.2.gz': BETA},
                        alias=False)
    dataset = ManPages(str(tmp_path / 'root'), paths=[other], log=False,
                       tokenizer=tokenizer, min_pages_per_section=1)
    assert dataset.vocab is None
    data = dataset[0]
    sections = data.text.split('\n\n\n')
    ids = sum((tokenizer.encode(s).ids for s in sections), [])
    assert data.x.tolist() == ids


def test_errors(tmp_path):
    root = str(tmp_path / 'root')
    with pytest.raises(TypeError, match='list of page files'):
        ManPages(root, paths='/usr/share/man')
    with pytest.raises(TypeError, match=r'paths\[0\]'):
        ManPages(root, paths=[3])
    with pytest.raises(ValueError, match='does not exist'):
        ManPages(root, paths=[str(tmp_path / 'missing')])
    loose = tmp_path / 'loose.2.gz'
    loose.write_bytes(gzip.compress(BETA.encode()))
    with pytest.raises(ValueError, match='not in a folder named man'):
        ManPages(root, paths=[str(loose)])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='holds no page'):
        ManPages(root, paths=[str(tmp_path / 'empty')])
    man = write_pages(tmp_path / 'man')
    with pytest.raises(ValueError, match="lower 'min_pages_per_section'"):
        ManPages(root, paths=[man], min_pages_per_section=50, log=False)
    with pytest.raises(ValueError, match='min_pages_per_section'):
        ManPages(root, paths=[man], min_pages_per_section=0)
    with pytest.raises(ValueError, match="two page files are "
                       "'man2/alpha.2.gz'"):
        ManPages(root, paths=[man, str(tmp_path / 'man' / 'man2')])


def test_missing_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(ManPages, 'PACKAGES', ('hsa-geo-no-such-package', ))
    with pytest.raises(FileNotFoundError,
                       match='apt install hsa-geo-no-such-package'):
        ManPages(str(tmp_path / 'root'))


def _installed(*pages):
    paths = [osp.join('/usr/share/man', p) for p in pages]
    if shutil.which('dpkg') is None or subprocess.run(
            ['dpkg', '-s', *ManPages.PACKAGES],
            capture_output=True).returncode != 0:
        return None
    return paths if all(osp.lexists(p) for p in paths) else None


REAL = ('man2/read.2.gz', 'man3/printf.3.gz', 'man3/fprintf.3.gz',
        'man3/size_t.3type.gz', 'man7/pipe.7.gz')


@pytest.mark.skipif(_installed(*REAL) is None, reason=(
    "needs the Debian packages manpages and manpages-dev (apt install "
    "manpages manpages-dev) with the pages " + ', '.join(REAL)))
def test_installed_pages(tmp_path):
    dataset = ManPages(str(tmp_path), paths=_installed(*REAL), log=False,
                       min_pages_per_section=1)
    assert [d.page for d in dataset] == [
        'man2/read.2', 'man3/printf.3', 'man3/size_t.3type', 'man7/pipe.7']
    assert dataset.sections == ['2', '3', '7']
    assert dataset.skipped_counts()['alias'] == 1  # fprintf -> printf
    for data in dataset:
        assert data.text.startswith('NAME\n\n')
        assert '\n\n\nDESCRIPTION\n\n' in data.text
        assert '\\f' not in data.text and '\n.' not in data.text
        assert data.hierarchy.num_trees == 1
    printf = dataset[1]
    assert 'int printf(const char *restrict format, ...);' in printf.text
    assert printf.num_nodes > 3000  # whole, never truncated


def test_workers_give_the_same_pages(tmp_path, dataset):
    man = write_pages(tmp_path / 'again')
    parallel = ManPages(str(tmp_path / 'parallel'), paths=[man],
                        min_pages_per_section=2, min_freq=1, log=False,
                        num_workers=2)
    assert parallel.num_workers == 2
    assert len(parallel) == len(dataset)
    for a, b in zip(parallel, dataset):
        assert_same_signal(a, b)
    assert parallel.vocab == dataset.vocab
    assert parallel.skipped == dataset.skipped
    assert torch.equal(parallel.get_idx_split()['train'],
                       dataset.get_idx_split()['train'])


def test_bad_num_workers(tmp_path):
    with pytest.raises(ValueError, match="'num_workers' must be 0"):
        ManPages(str(tmp_path), paths=[str(tmp_path)], num_workers=-2)


def test_a_page_compressed_and_plain_is_refused(tmp_path):
    page = '.TH X 3\n.SH NAME\n{0} \\- page\n.SH DESCRIPTION\nThe word {0}.\n'
    (tmp_path / 'a' / 'man3').mkdir(parents=True)
    (tmp_path / 'b' / 'man3').mkdir(parents=True)
    (tmp_path / 'a' / 'man3' / 'foo.3').write_text(page.format('plain'))
    (tmp_path / 'a' / 'man3' / 'bar.3').write_text(page.format('bar'))
    with gzip.open(tmp_path / 'b' / 'man3' / 'foo.3.gz', 'wt') as f:
        f.write(page.format('gzip'))
    with pytest.raises(ValueError, match=(
            r"two page files are .man3/foo\.3(\.gz)?. \(one is "
            r".*foo\.3.*, the other .*foo\.3")):
        ManPages(str(tmp_path / 'root'),
                 paths=[str(tmp_path / 'a'), str(tmp_path / 'b')],
                 min_pages_per_section=1, min_freq=1, log=False)


def test_a_byte_order_mark_does_not_hide_the_first_request(tmp_path):
    from hsa_geo.datasets.man_pages import read_page
    (tmp_path / 'man3').mkdir()
    page = tmp_path / 'man3' / 'foo.3'
    page.write_bytes(b'\xef\xbb\xbf.TH FOO 3\n.SH NAME\nfoo \\- bar\n')
    assert read_page(page)[0] == 'NAME\n\nfoo - bar'
