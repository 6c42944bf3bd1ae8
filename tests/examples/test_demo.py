r"""The demo runs and reports what it claims."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_and_checks_hold():
    proc = subprocess.run([sys.executable, str(ROOT / 'examples' / 'demo.py')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert '5 paragraphs -> 19 sentences -> 328 words' in out
    errors = re.findall(r'= ([0-9.]+e[-+][0-9]+)', out)
    assert len(errors) == 3  # flat vs SDPA, DP vs dense Q, row sums
    assert all(float(e) < 1e-5 for e in errors)
    # The family tables (5 paragraphs, 4 sentences): every row's weights
    # sum to one, and its printed sum says so.
    rows = [[float(x) for x in r.split()] for r in re.findall(
        r'^\s*\d+\s+".*?"\s+([0-9. ]+)$', out, re.M)]
    assert len(rows) == 9
    for *weights, total in rows:
        assert total == 1.0 and abs(sum(weights) - 1.0) <= 0.003
