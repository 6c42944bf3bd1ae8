#!/usr/bin/env bash
# Installs hsa_geo and runs the demo or the test suite.
#
#   bash scripts/setup.sh demo [demo options]    install, run examples/demo.py
#   bash scripts/setup.sh test [pytest options]  install with [test], run tests
#
# It uses `$PYTHON -m pip` (PYTHON defaults to python3, so an activated
# virtual environment is used as is). An installed torch, CPU or CUDA, is kept
# and pinned while the rest installs. Without one, a CPU build of torch is
# installed first, so that pip never falls back to a multi-GB CUDA build.
set -euo pipefail

TORCH_CPU_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: bash scripts/setup.sh demo|test [arguments for the demo or pytest]

  demo   install hsa_geo and run examples/demo.py
  test   install hsa_geo with its test extra and run the tests

Environment: PYTHON (default python3) is the interpreter to install into.
EOF
}

MODE="${1:-}"
case "$MODE" in
    demo | test) shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
START=$SECONDS

command -v "$PYTHON" >/dev/null 2>&1 ||
    die "'$PYTHON' not found; install Python >= 3.10 or set PYTHON=/path/to/python"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "hsa_geo needs Python >= 3.10; '$PYTHON' is $("$PYTHON" -V 2>&1)"

# A system Python that forbids pip installs (PEP 668) gets a private venv.
if "$PYTHON" - <<'EOF'
import os, sys, sysconfig
in_venv = sys.prefix != sys.base_prefix
marker = os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')
sys.exit(0 if (not in_venv and os.path.exists(marker)) else 1)
EOF
then
    say "$PYTHON is managed by the system package manager; using a virtual environment in .venv"
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv ||
            die "could not create .venv (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
    PYTHON="$ROOT/.venv/bin/python"
    say "activate it later with: source .venv/bin/activate"
fi

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    say "pip is missing for $PYTHON; bootstrapping it with ensurepip"
    "$PYTHON" -m ensurepip --upgrade || die "no pip for $PYTHON"
fi
PIP=("$PYTHON" -m pip install --progress-bar off)
say "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# torch #######################################################################

torch_version() {
    "$PYTHON" - <<'EOF'
try:
    from importlib.metadata import version
    print(version('torch'))
except Exception:
    import torch
    print(torch.__version__)
EOF
}

if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
    say "torch $(torch_version) is installed; keeping it"
else
    say "torch is not installed: installing a CPU build of torch"
    say "trying a local wheel: pip install --no-index torch==$TORCH_CPU_VERSION"
    if "${PIP[@]}" --no-index --no-deps "torch==$TORCH_CPU_VERSION"; then
        say "installed torch $(torch_version) from a local wheel; now its dependencies"
        "${PIP[@]}" "torch==$(torch_version)" ||
            die "could not install the dependencies of torch"
    else
        say "no local torch wheel; trying the PyTorch CPU index ($TORCH_CPU_INDEX)"
        "${PIP[@]}" torch --index-url "$TORCH_CPU_INDEX" ||
            die "could not install torch; install a build for your machine (see https://pytorch.org/get-started/locally/) and run this again"
    fi
    "$PYTHON" -c 'import torch' || die "torch was installed but does not import"
    say "installed torch $(torch_version)"
fi

# Pin the torch that is there, so that resolving the other dependencies can
# never replace it (with a CUDA build or anything else).
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$(torch_version)" >"$CONSTRAINTS"

# hsa_geo #####################################################################

# The optional C++ kernels build with the package where a compiler is found.
kernels() {
    say "fused pair-list kernels: $("$PYTHON" -c 'from hsa_geo.functional.fused_pair_kernels import fused_pairs_variant as v, fused_pairs_threaded as t; print((v() + (", on PyTorch threads" if t() else ", one thread")) if v() else "not built (no C++ compiler); PyTorch operations instead")')"
}

if [ "$MODE" = demo ]; then
    say "installing hsa_geo (editable): pip install -e ."
    "${PIP[@]}" --constraint "$CONSTRAINTS" -e .
    kernels
    say "running examples/demo.py"
    "$PYTHON" examples/demo.py "$@"
    say "demo done in $((SECONDS - START)) s"
else
    say "installing hsa_geo with its test extra (editable): pip install -e .[test]"
    "${PIP[@]}" --constraint "$CONSTRAINTS" -e ".[test]"
    kernels
    say "running the tests: python -m pytest tests -q"
    status=0
    "$PYTHON" -m pytest tests -q "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        die "pytest collected no tests (exit code 5)"
    elif [ "$status" -ne 0 ]; then
        die "tests failed (pytest exit code $status)"
    fi
    say "tests passed in $((SECONDS - START)) s"
fi
