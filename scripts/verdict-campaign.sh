#!/usr/bin/env bash
# The sweeps of docs/benchmarks/verdicts-h200/: NAME... are run one after another, each the same config
# (bloom-1b7 bf16, $BACKENDS (accelerate and ds-inference), bs 1/8/64, $NEW_TOKENS new tokens, $REPEATS repeats,
# rounds=$ROUNDS, isolate=false), pinned to the
# cores $CORES; a NAME of the form slow<DUTY>-<label> runs with benchmarks/cpu_hog.py loading those cores at
# that duty cycle (slow0.3-a: 30%). Results and the history go under OUTDIR.
#   scripts/verdict-campaign.sh OUTDIR aa1 aa2 slow0.3-a
set -euo pipefail
out=$1; shift
CORES=${CORES:-4-7} ROUNDS=${ROUNDS:-3} NEW_TOKENS=${NEW_TOKENS:-32} REPEATS=${REPEATS:-2}
BACKENDS=${BACKENDS:-accelerate,ds-inference}
export INFERSWEEP_HISTORY=$out/history.sqlite INFERSWEEP_CACHE=${INFERSWEEP_CACHE:-/tmp/infersweep-cache}
mkdir -p "$out"
for name in "$@"; do
  hog=
  if [[ $name == slow* ]]; then
    duty=${name#slow}; duty=${duty%%-*}
    python3 benchmarks/cpu_hog.py --cores "$CORES" --duty "$duty" --seconds 900 & hog=$!
  fi
  start=$(date +%s) rc=0
  taskset -c "$CORES" python3 -m runner -m backend="$BACKENDS" model=bloom-1b7 dtype=bf16 \
    batch_size=1,8,64 new_tokens="$NEW_TOKENS" repeats="$REPEATS" rounds="$ROUNDS" isolate=false hydra.sweep.dir="$out/$name" > "$out/$name.log" 2>&1 || rc=$?
  echo "$name: $(( $(date +%s) - start )) s, exit $rc"
  # each sweep packed as it ends (the result files, attempts and sweep metadata; no worker session logs)
  tar czf "$out/$name.tgz" -C "$out" --exclude=session "$name" "$name.log" && rm -rf "${out:?}/$name"
  if [ -n "$hog" ]; then kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true; fi
done
