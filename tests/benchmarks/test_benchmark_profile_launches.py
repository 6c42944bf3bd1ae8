r"""Smoke test of ``benchmarks/profile_launches.py`` on the CPU: a paragraph
per size and phase asked for, each with the profiler's operator table, the
same text printed and written. No timing is asserted."""
import re

import pytest

from tests.helpers.benchmarks import load_benchmark

bench = load_benchmark('profile_launches')


def test_main_profiles_each_size_and_the_backward_where_asked(tmp_path,
                                                              capsys):
    out = tmp_path / 'profile.txt'
    assert bench.main(['--device', 'cpu', '--sizes', '40', '300',
                       '--backward-at', '300', '--out', str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    heads = re.findall(r'^## (.*?): ([0-9.]+) ms/call wall, kernels launched '
                       r'(\d+), GPU busy ([0-9.]+) ms', text, re.M)
    assert [h[0] for h in heads] == ['forward N=40', 'forward N=300',
                                     'fwd+bwd N=300']
    # no kernels on the CPU; the host ran the attention's operators
    assert all(float(h[1]) > 0 and h[2] == '0' for h in heads)
    assert text.count('aten::') >= 3 and 'Self CPU' in text


def test_a_backward_size_outside_the_sizes_is_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(['--device', 'cpu', '--sizes', '40', '--backward-at',
                    '300'])
    assert '--backward-at 300 is none of --sizes [40]' in \
        capsys.readouterr().err


def test_one_leaf():
    assert bench.main(['--device', 'cpu', '--sizes', '1', '--backward-at',
                       '1']) == 0
