#!/usr/bin/env bash
# The sweeps of docs/benchmarks/verdicts-h200/: NAME... are run one after another, each the same config
# ($MODEL (bloom-1b7) bf16, $BACKENDS (accelerate and ds-inference), bs 1/8/64, $NEW_TOKENS new tokens, $REPEATS repeats,
# rounds=$ROUNDS, isolate=false), pinned to the
# cores $CORES (CORES= : not pinned); a NAME of the form slow<DUTY>-<label> runs with benchmarks/cpu_hog.py loading those cores at
# that duty cycle (slow0.3-a: 30%), gpu<DUTY>-<label> with benchmarks/gpu_hog.py loading the GPU,
# step<US>-<label> with every CUDA graph replay followed by a GPU kernel spinning US microseconds
# (benchmarks/slow_step/sitecustomize.py: the captured steps of backend=graph); a NAME
# that contains "warm" runs with warmup_process=true. Results and the history go under OUTDIR.
# DEADLINE_S: start no sweep once the campaign has run this long (a device call has 10 minutes).
#   scripts/verdict-campaign.sh OUTDIR aa1 aa2 slow0.3-a aa-warm1 gpu0.1-a
set -euo pipefail
out=$1; shift
CORES=${CORES-4-7} ROUNDS=${ROUNDS:-1} MODEL=${MODEL:-bloom-1b7} NEW_TOKENS=${NEW_TOKENS:-32} REPEATS=${REPEATS:-2}
BACKENDS=${BACKENDS:-accelerate,ds-inference}
export INFERSWEEP_HISTORY=$out/history.sqlite INFERSWEEP_CACHE=${INFERSWEEP_CACHE:-/tmp/infersweep-cache}
mkdir -p "$out"
began=$(date +%s)
for name in "$@"; do
  if [ -n "${DEADLINE_S:-}" ] && (( $(date +%s) - began > DEADLINE_S )); then echo "$name: not started (DEADLINE_S)"; continue; fi
  hog= warm=false slow_us=0
  if [[ $name == slow* ]]; then
    duty=${name#slow}; duty=${duty%%-*}
    python3 benchmarks/cpu_hog.py --cores "$CORES" --duty "$duty" --seconds 900 & hog=$!
  elif [[ $name == gpu* ]]; then
    duty=${name#gpu}; duty=${duty%%-*}
    python3 benchmarks/gpu_hog.py --duty "$duty" --seconds 900 & hog=$!
  elif [[ $name == step* ]]; then
    slow_us=${name#step}; slow_us=${slow_us%%-*}
  fi
  if [[ $name == *warm* ]]; then warm=true; fi
  start=$(date +%s) rc=0
  pin=(); if [ -n "$CORES" ]; then pin=(taskset -c "$CORES"); fi
  INFERSWEEP_SLOW_STEP_US=$slow_us PYTHONPATH=$PWD/benchmarks/slow_step${PYTHONPATH:+:$PYTHONPATH} \
  "${pin[@]}" python3 -m runner -m backend="$BACKENDS" model="$MODEL" dtype=bf16 \
    batch_size=1,8,64 new_tokens="$NEW_TOKENS" repeats="$REPEATS" rounds="$ROUNDS" warmup_process=$warm isolate=false hydra.sweep.dir="$out/$name" > "$out/$name.log" 2>&1 || rc=$?
  echo "$name: $(( $(date +%s) - start )) s, exit $rc"
  # each sweep packed as it ends (the result files, attempts and sweep metadata; no worker session logs)
  tar czf "$out/$name.tgz" -C "$out" --exclude=session "$name" "$name.log" && rm -rf "${out:?}/$name"
  if [ -n "$hog" ]; then kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true; fi
done
