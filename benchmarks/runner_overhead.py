"""The runner's own cost per job, from the phases every result records (core/phases.py): isolate=true (a
launcher per job) against isolate=false (one shared worker that loads the model once), run interleaved on the
same points. Run from the repository root:

    python benchmarks/runner_overhead.py [--batch-sizes 1,8,64] [--model bloom-tiny] [--new-tokens 4]
                                         [--pairs 3] [--set backend=ds-inference num_gpus=1 ...] [--json FILE]

Each pair runs the sweep batch_size=<batch sizes> once per mode, the order of the two modes alternating from
pair to pair so that a machine's drift hits both alike. For every sweep it prints the wall time of the
runner, the seconds of each phase summed over the sweep's jobs, the overhead share (the part outside load,
warmup and measure), the overhead per job and the seconds an isolated job spends before its load starts; then
each mode's medians over the pairs, and per batch size the ms/token of each mode (median over the pairs, and
its range) with their ratio: whether loading once measures the same thing as a process per job.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.phases import PHASES, WORK, overhead_share, total

# a job's phases before its model starts loading (a shared worker's later jobs have none of them but queued)
BEFORE_LOAD = ("queued", "build", "launch", "imports", "setup")


def run_sweep(isolate: bool, args: argparse.Namespace, sweep: Path, env: dict) -> dict:
    jobs = len(args.batch_sizes.split(","))
    cmd = [sys.executable, "-m", "runner", "-m", f"batch_size={args.batch_sizes}", f"model={args.model}",
           f"new_tokens={args.new_tokens}", f"repeats={args.repeats}", f"isolate={str(isolate).lower()}",
           *args.set, f"hydra.sweep.dir={sweep}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    if proc.returncode != 0 or len(results) != jobs or any(r["status"] != "ok" for r in results):
        sys.exit(f"isolate={isolate}: a job did not end ok (exit {proc.returncode}); see {sweep}\n{proc.stderr[-2000:]}")
    phases = total([r["phases_s"] for r in results])
    jobs_s = sum(phases.values())
    work = sum(phases.get(p, 0.0) for p in WORK)
    before_load = statistics.median(sum(v for p, v in r["phases_s"].items() if p in BEFORE_LOAD) for r in results)
    return {"isolate": isolate, "jobs": jobs, "wall_s": wall, "jobs_s": jobs_s, "phases_s": phases,
            "overhead_share": overhead_share(phases), "overhead_per_job_s": (wall - work) / jobs,
            "before_load_s": before_load,
            "ms_per_token": {str(r["config"]["batch_size"]): r["ms_per_token"] for r in results}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,64", help="the sweep's batch sizes, one job each")
    parser.add_argument("--model", default="bloom-tiny")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=1, help="sweeps per mode, the modes interleaved")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every sweep (key=value)")
    parser.add_argument("--json", type=Path, help="write every sweep's row here as well")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "INFERSWEEP_HISTORY": str(Path(tmp) / "history.sqlite")}  # not the user's history
        # a first job builds the synthetic checkpoint, so that neither mode pays for it
        subprocess.run([sys.executable, "-m", "runner", f"model={args.model}", "new_tokens=1", "repeats=1", *args.set,
                        f"hydra.run.dir={tmp}/warm"], cwd=ROOT, check=True, capture_output=True, env=env)
        for pair in range(args.pairs):
            for isolate in (True, False) if pair % 2 == 0 else (False, True):
                row = run_sweep(isolate, args, Path(tmp) / f"pair{pair}-isolate-{isolate}", env)
                rows.append({"pair": pair + 1, **row})
    shown = [p for p in PHASES if any(p in r["phases_s"] for r in rows)]
    print(f"{'pair':>4} {'isolate':>7} {'jobs':>4} {'wall s':>7} {'jobs s':>7} "
          + " ".join(f"{p:>8}" for p in shown) + f" {'overhead':>8} {'ovh/job s':>9} {'pre-load s':>10}")
    for r in rows:
        print(f"{r['pair']:>4} {r['isolate']!s:>7} {r['jobs']:>4} {r['wall_s']:>7.1f} {r['jobs_s']:>7.1f} "
              + " ".join(f"{r['phases_s'].get(p, 0.0):>8.2f}" for p in shown)
              + f" {r['overhead_share']:>8.0%} {r['overhead_per_job_s']:>9.2f} {r['before_load_s']:>10.2f}")
    for isolate in (True, False):
        mine = [r for r in rows if r["isolate"] == isolate]
        print(f"median isolate={isolate}: wall {statistics.median(r['wall_s'] for r in mine):.1f} s, overhead "
              f"{statistics.median(r['overhead_share'] for r in mine):.0%}, "
              f"{statistics.median(r['overhead_per_job_s'] for r in mine):.2f} s/job, "
              f"{statistics.median(r['before_load_s'] for r in mine):.2f} s before load (median job) "
              f"over {len(mine)} sweep(s)")
    print(f"{'bs':>4} {'isolate=true ms/token (range)':>32} {'isolate=false ms/token (range)':>32} {'false/true':>10}")
    for bs in args.batch_sizes.split(","):
        med = {}
        cells = []
        for isolate in (True, False):
            values = [r["ms_per_token"][bs] for r in rows if r["isolate"] == isolate]
            med[isolate] = statistics.median(values)
            cells.append(f"{med[isolate]:.4g} ({min(values):.4g}-{max(values):.4g})")
        print(f"{bs:>4} {cells[0]:>32} {cells[1]:>32} {med[False] / med[True]:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
