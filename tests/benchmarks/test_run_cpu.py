r"""``benchmarks/run_cpu.sh`` with a stand-in ``python3`` on ``PATH``: every
part is called with its JSON and Markdown named after it in the output
folder, a failing part is recorded and makes the script exit 1 without
stopping the others. No benchmark runs."""
import os
import pathlib
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).parents[2] / 'benchmarks' / 'run_cpu.sh'
PARTS = ['bench_small_graphs_cpu', 'bench_small_graphs_cpu_repeat1',
         'bench_small_graphs_cpu_repeat2', 'bench_small_graphs_cpu_shared',
         'bench_shapes_cpu_deep', 'bench_shapes_cpu_contention',
         'bench_family_graph_cpu', 'bench_pair_kernels_cpu',
         'bench_tree_order_cpu',
         'bench_attention_cpu', 'bench_growth_cpu', 'bench_shapes_cpu_wide',
         'bench_collate_cpu', 'bench_loader_workers_cpu']

# Records its arguments, writes the files named by --out and --markdown,
# and exits 3 when its script is $FAIL.
STAND_IN = """#!/usr/bin/env bash
[ "$1" = -c ] && { echo 'torch (stand-in)'; exit 0; }
echo "$*" >> "$CALLS"
script=$1
while [ $# -gt 0 ]; do
    case "$1" in --out | --markdown) touch "$2"; shift ;; esac
    shift
done
[ "$script" = "${FAIL:-}" ] && exit 3
exit 0
"""


def _run(tmp_path, fail=''):
    bin_dir, out = tmp_path / 'bin', tmp_path / 'out'
    bin_dir.mkdir()
    (bin_dir / 'python3').write_text(STAND_IN)
    (bin_dir / 'python3').chmod(0o755)
    calls = tmp_path / 'calls.txt'
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               CALLS=str(calls), FAIL=fail)
    result = subprocess.run(['bash', str(SCRIPT), str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True,
                            timeout=60)
    return result, out, calls.read_text().splitlines(), \
        (out / 'run_cpu.txt').read_text()


needs_bash = pytest.mark.skipif(shutil.which('bash') is None,
                                reason='needs bash')


@needs_bash
def test_every_part_writes_its_files_named_after_it(tmp_path):
    result, out, calls, status = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(calls) == len(PARTS)
    for part, call in zip(PARTS, calls):
        assert call.endswith(f'--out {out / part}.json '
                             f'--markdown {out / part}.md')
        for suffix in ('.json', '.md', '.log'):
            assert (out / f'{part}{suffix}').exists()
        assert f'exit 0: {part} ' in status


@needs_bash
def test_a_failing_part_is_recorded_and_the_others_run(tmp_path):
    result, _, calls, status = _run(tmp_path,
                                    fail='benchmarks/bench_tree_order.py')
    assert result.returncode == 1
    assert len(calls) == len(PARTS)
    assert 'exit 3: bench_tree_order_cpu ' in status
    assert 'exit 0: bench_attention_cpu ' in status
