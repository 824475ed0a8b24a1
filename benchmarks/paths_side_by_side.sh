#!/usr/bin/env bash
# Every decode path on one GPU, one model, the same points, one call: DeepSpeed-Inference's fused kernels
# (under a transformers 4.43.4 stack, README "A second stack"), eager accelerate, backend=graph (a captured
# step), accelerate's compiled generate (backend.compile=true) and graph's compiled step. Run from the
# repository root on a GPU machine:
#
#   benchmarks/paths_side_by_side.sh OUTDIR [DEADLINE_S]     # MODEL (bloom-7b1), BATCHES (1,8,64), STACK (/tmp/tf443)
#
# The sweeps run in the order below (the cheapest to compile first); none starts once DEADLINE_S (default 540)
# seconds have passed, and a running one is stopped at the deadline (the runner keeps what finished). Each
# writes OUTDIR/<name>/ and OUTDIR/<name>.log; the history goes to OUTDIR/history.sqlite. Then:
#   python -m analysis report OUTDIR/* --price-per-gpu-hour 3.5 --out OUTDIR/report
set -uo pipefail
out=${1:?usage: $0 OUTDIR [DEADLINE_S]}
deadline=${2:-540}
MODEL=${MODEL:-bloom-7b1} BATCHES=${BATCHES:-1,8,64} STACK=${STACK:-/tmp/tf443}
export INFERSWEEP_HISTORY=$out/history.sqlite
mkdir -p "$out"
common=(model="$MODEL" batch_size="$BATCHES" num_gpus=1 isolate=false timeout_s=300)
began=$(date +%s)

sweep() {  # NAME OVERRIDES...
  local name=$1; shift
  local left=$(( deadline - ($(date +%s) - began) ))
  if (( left < 30 )); then echo "$name: not started ($left s left)"; return; fi
  local start=$(date +%s) rc=0
  timeout -s TERM -k 20 "$left" python3 -m runner -m "$@" "${common[@]}" hydra.sweep.dir="$out/$name" \
    > "$out/$name.log" 2>&1 || rc=$?
  echo "$name: $(( $(date +%s) - start )) s, exit $rc"
}

sweep ds-inference backend=ds-inference backend.kernel_inject=true stack="$STACK" dtype=fp16,bf16 repeats=3
sweep eager-and-graph backend=accelerate,graph dtype=bf16 repeats=3
sweep graph-compile-step backend=graph backend.compile_step=true backend.compile_mode=default dtype=bf16 repeats=3
sweep accelerate-compile backend=accelerate backend.compile=true dtype=bf16 repeats=2
