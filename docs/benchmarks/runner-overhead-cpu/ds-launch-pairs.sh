#!/usr/bin/env bash
# Interleaved single ds-inference jobs on the CPU (1 and 2 ranks), the committed tree (CLI: deepspeed.launcher.runner)
# against the working tree (deepspeed.launcher.launch directly); each job's phases from its result.json.
set -u
OLD=$1 NEW=$2 OUT=$3 PAIRS=${4:-5}
mkdir -p "$OUT"
for i in $(seq 1 "$PAIRS"); do
  for ranks in 1 2; do
    for side in old new; do
      tree=$OLD; [ $side = new ] && tree=$NEW
      d="$OUT/$side-r$ranks-$i"
      start=$(date +%s.%N)
      (cd "$tree" && PYTHONPATH=$tree python3 -m runner backend=ds-inference cpu_ranks=$ranks dtype=fp32 new_tokens=4 \
        prompt_tokens=4 repeats=1 num_gpus=0 isolate=true hydra.run.dir="$d" > "$d.log" 2>&1)
      end=$(date +%s.%N)
      echo "$side r$ranks $i wall=$(python3 -c "print(round($end-$start,2))") $(python3 -c "
import json,sys; r=json.load(open('$d/result.json')); p=r['phases_s']; print(r['status'], 'launch=%.2f imports=%.2f load=%.2f' % (p.get('launch',0), p.get('imports',0), p.get('load',0)))")"
    done
  done
done
