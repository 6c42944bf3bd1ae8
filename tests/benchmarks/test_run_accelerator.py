r"""``benchmarks/run_accelerator.sh`` on the CPU with a stand-in
``timeout`` on ``PATH`` (no part runs): each part's command and limit,
the refusals of arguments out of place, the header's commit."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'benchmarks' / 'run_accelerator.sh'


# Records the limit and the command it was given instead of running it.
STAND_IN = """#!/usr/bin/env bash
shift 2  # --signal=INT --kill-after=10
echo "$*" >> "$CALLS"
"""


def run(tmp_path: Path, *args: str):
    # python3 must be this interpreter: the header calls python3.
    python_dir = Path(sys.executable).parent
    if not (python_dir / 'python3').exists():
        pytest.skip('no python3 beside this interpreter')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'timeout').write_text(STAND_IN)
    (bin_dir / 'timeout').chmod(0o755)
    env = dict(os.environ, HSA_GEO_COMMIT='abc123',
               CALLS=str(tmp_path / 'calls'), PATH=os.pathsep.join(
                   [str(bin_dir), str(python_dir), os.environ['PATH']]))
    return subprocess.run(['bash', str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args,message', [
    (['tests'], "'tests' is a part: OUTDIR and DEVICE come first"),
    (['OUT', 'deep:30'], "'deep:30' is a part"),
    (['OUT', 'cpu', 'tests:0'], 'unknown part tests:0'),
    (['OUT', 'cpu', 'attention', 'shapes'], 'unknown part shapes'),
])
def test_arguments_out_of_place_are_refused(tmp_path, args, message):
    args = [str(tmp_path / 'o') if a == 'OUT' else a for a in args]
    done = run(tmp_path, *args)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / 'o').exists()  # refused before anything ran


def test_each_part_runs_under_its_own_limit(tmp_path):
    out = tmp_path / 'o'
    done = run(tmp_path, str(out), 'cpu', 'tests:300', 'wide', 'tests:20')
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (out / 'accelerator_cpu.txt').read_text().splitlines()
    assert 'commit abc123' in lines
    assert lines[-3:] == [
        '== exit 0: accelerator_cpu_tests.log (limit 300 s)',
        '== exit 0: bench_shapes_wide_cpu.log (limit 400 s)',
        '== exit 0: accelerator_cpu_tests.log (limit 20 s)']
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert [c.split()[:4] for c in calls] == [
        ['300', 'python3', '-m', 'pytest'],
        ['400', 'python3', 'benchmarks/bench_shapes.py', '--case'],
        ['20', 'python3', '-m', 'pytest']]
    assert f'--json {out}/bench_shapes_wide_cpu.json' in calls[1]
