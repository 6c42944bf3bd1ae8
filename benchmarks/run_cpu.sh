#!/usr/bin/env bash
# The CPU reference run: every case the README's performance tables come
# from, one after the other, on the code of this checkout, their JSON and
# Markdown written to one folder (about 70 minutes on a 2-core machine):
#
#   1. bench_small_graphs.py three times (the molecule batch; the ratios of
#      one run move by a few per cent), then once with competing processes;
#   2. bench_shapes.py, the deep and the contention cases;
#   3. bench_family_graph.py, bench_pair_kernels.py (the fused kernels'
#      limit) and bench_tree_order.py;
#   4. bench_attention.py, every method and size;
#   5. bench_growth.py, five back-to-back runs (the growth target);
#   6. bench_shapes.py, the wide case (the longest, about 17 minutes);
#   7. bench_collate.py and bench_loader_workers.py (nested signals in a
#      DataLoader).
#
#   bash benchmarks/run_cpu.sh [OUTDIR]
#
# OUTDIR defaults to benchmarks/results. Each benchmark records the commit
# it ran (with "+changes" when tracked files differ from it), so keep the
# checkout as it is until the run ends; to go on editing meanwhile, run it
# from a separate worktree with that worktree first on PYTHONPATH:
#
#   git worktree add /tmp/hsa_run HEAD && cd /tmp/hsa_run
#   PYTHONPATH=$PWD bash benchmarks/run_cpu.sh /tmp/hsa_run_out
#
# Nothing else should run on the machine meanwhile: the timings are ratios
# between methods of the same run, but a busy machine moves them. Every
# part's exit status is recorded in run_cpu.txt; the script exits 1 if any
# part failed, after running the others.
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
status=0
export PYTHONUNBUFFERED=1 OUTDATED_IGNORE=1
{
    date -u
    uptime
    python3 -c 'import torch, torch_geometric; print("torch",
        torch.__version__, "torch_geometric", torch_geometric.__version__,
        "threads", torch.get_num_threads())'
    git log -1 --format='commit %H' 2> /dev/null
} 2>&1 | tee "$out/run_cpu.txt"

run() {  # run NAME COMMAND...: one part, writing NAME.json and NAME.md;
    # NAME.log, and its exit status
    local name=$1 rc
    shift
    set -- "$@" --out "$out/$name.json" --markdown "$out/$name.md"
    echo "== $(date -u +%T) $*"
    "$@" 2>&1 | tee "$out/$name.log"
    rc=${PIPESTATUS[0]}
    echo "== $(date -u +%T) exit $rc: $name (load: $(cut -d' ' -f1-3 \
        /proc/loadavg))" | tee -a "$out/run_cpu.txt"
    [ "$rc" -eq 0 ] || status=1
}

for tag in '' _repeat1 _repeat2; do
    run "bench_small_graphs_cpu$tag" python3 benchmarks/bench_small_graphs.py
done
run bench_small_graphs_cpu_shared python3 benchmarks/bench_small_graphs.py \
    --channels 64 --competing 0 1 2
for case in deep contention; do
    run "bench_shapes_cpu_$case" python3 benchmarks/bench_shapes.py \
        --case "$case"
done
for bench in family_graph pair_kernels tree_order attention; do
    run "bench_${bench}_cpu" python3 "benchmarks/bench_$bench.py"
done
run bench_growth_cpu python3 benchmarks/bench_growth.py --runs 5
run bench_shapes_cpu_wide python3 benchmarks/bench_shapes.py --case wide
for bench in collate loader_workers; do
    run "bench_${bench}_cpu" python3 "benchmarks/bench_$bench.py"
done
date -u | tee -a "$out/run_cpu.txt"
exit $status
