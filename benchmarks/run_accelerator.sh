#!/usr/bin/env bash
# The GPU run: the exactness checks on the device, the small-graph case and
# the whole attention benchmark, each under its own time limit
# (100 + 110 + 300 s by default, inside one 10-minute command), their JSON,
# Markdown and logs written to one folder as they finish (a part cut short
# keeps what it wrote). Every part's exit status and limit are added to
# accelerator_DEVICE.txt; the script exits 1 if any part failed.
#
#   bash benchmarks/run_accelerator.sh [OUTDIR [DEVICE [PART[:SECONDS]...]]]
#
# OUTDIR defaults to benchmarks/results, DEVICE to cuda; PARTS to the three
# above, in this order: tests, small_graphs, attention. Two more parts run
# only when named: wide and deep, bench_shapes.py's wide families against
# SDPA and deep trees against a balanced one, on the device (400 and 90 s:
# on an H200 a family of 65,536 leaves outlasted 125 s, and its
# forward+backward a worker's 60 s).
# A part may name its own limit (1 s or more), to split the run over
# commands with a longer limit for the attention benchmark
# (`tests small_graphs`, then `attention:420`); a part named twice runs
# twice, and its files are the second run's.
# BENCH_ARGS (say --quick, to try the script on a CPU) is added to every
# benchmark; on a copy of the working tree (without git, or with the git
# metadata of another commit), HSA_GEO_COMMIT names the commit for the
# header and the JSON (bench_attention.source_commit). It runs
# from the repository root with the machine's own python3 (torch with CUDA,
# torch_geometric) and this checkout on PYTHONPATH: nothing is installed
# into that Python.
# The molecules need RDKit and OGB; on a machine without a package index,
# bring them as wheels in .whl/ (ignored by git), fetched where pip works:
#
#   python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl \
#       rdkit ogb outdated littleutils
#
# and they are installed into a temporary folder here (unless python3 has
# them already).
set -uo pipefail
out=${1:-benchmarks/results}
device=${2:-cuda}
shift $(( $# < 2 ? $# : 2 ))
if [ $# -gt 0 ]; then parts=("$@"); else parts=(tests small_graphs attention); fi
names='tests|small_graphs|attention|wide|deep'
for arg in "$out" "$device"; do  # a part where OUTDIR or DEVICE belongs
    [[ $arg =~ ^($names)(:.*)?$ ]] && {
        echo "'${arg}' is a part: OUTDIR and DEVICE come first" \
            "(benchmarks/results cuda ${arg})" >&2
        exit 2
    }
done
for part in "${parts[@]}"; do
    [[ $part =~ ^($names)(:[1-9][0-9]*)?$ ]] || {
        echo "unknown part ${part}: tests, small_graphs, attention, wide" \
            "or deep, each with :SECONDS (1 or more) if you like" >&2
        exit 2
    }
done
tag=${device//:/_}  # file names without ':' (cuda:0)
mkdir -p "$out"
status=0
export PYTHONUNBUFFERED=1 OUTDATED_IGNORE=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G '.whl/*.whl' > /dev/null \
        && ! python3 -c 'import rdkit, ogb' 2> /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/hsa_geo_site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/hsa_geo_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
        2> /dev/null
    python3 - << 'EOF'
import torch
import torch_geometric
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'torch_geometric', torch_geometric.__version__, 'gpu', gpu)
EOF
    # as the JSON records it (+changes where tracked files differ)
    python3 -c 'import sys; sys.path.insert(0, "benchmarks")
import bench_attention as ba; print("commit", ba.source_commit())'
} 2>&1 | tee -a "$out/accelerator_${tag}.txt"

run() {  # run LIMIT_SECONDS LOG COMMAND...: one part, under its limit; its
    # exit status goes into accelerator_TAG.txt and into the script's own
    local limit=$1 log=$2 rc
    shift 2
    echo "== $* (at most ${limit} s)"
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    echo "== exit $rc: $(basename "$log") (limit ${limit} s)" \
        | tee -a "$out/accelerator_${tag}.txt"
    [ "$rc" -eq 0 ] || status=1
}

for part in "${parts[@]}"; do
    name=${part%%:*}
    seconds=${part#"$name"}  # ':SECONDS', or empty: the part's default
    seconds=${seconds#:}
    case $name in
    tests)  # Exactness on the device, against the dense reference.
        HSA_GEO_TEST_DEVICE=$device run "${seconds:-100}" \
            "$out/accelerator_${tag}_tests.log" \
            python3 -m pytest -q -p no:cacheprovider \
            tests/functional/test_dynamic_program_devices.py ;;
    small_graphs)  # 128 molecules, 64 and 256 channels.
        run "${seconds:-110}" \
            "$out/bench_small_graphs_${tag}.log" \
            python3 benchmarks/bench_small_graphs.py --device "$device" \
            ${BENCH_ARGS:-} --out "$out/bench_small_graphs_${tag}.json" \
            --markdown "$out/bench_small_graphs_${tag}.md" ;;
    attention)  # Every method and size in fresh processes; SDPA up to
        # N = 65,536 as on the CPU.
        run "${seconds:-300}" "$out/bench_attention_${tag}.log" \
            python3 benchmarks/bench_attention.py --device "$device" \
            --min-time 0.5 --timeout 120 --no-progress ${BENCH_ARGS:-} \
            --out "$out/bench_attention_${tag}.json" \
            --markdown "$out/bench_attention_${tag}.md" ;;
    wide|deep)  # bench_shapes.py's case of that name, workers as on the CPU.
        if [ "$name" = wide ]; then default=400; else default=90; fi
        run "${seconds:-$default}" "$out/bench_shapes_${name}_${tag}.log" \
            python3 benchmarks/bench_shapes.py --case "$name" \
            --device "$device" --min-time 0.5 --timeout 150 ${BENCH_ARGS:-} \
            --json "$out/bench_shapes_${name}_${tag}.json" \
            --markdown "$out/bench_shapes_${name}_${tag}.md" ;;
    esac
done
exit $status
