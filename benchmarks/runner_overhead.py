"""The runner's own cost per job: everything but loading and generating (Hydra, validation, the
launcher, the worker's imports, result I/O). Prints a table; run from the repository root:

    python benchmarks/runner_overhead.py [--batch-sizes 1,8,64] [--model bloom-tiny] [--new-tokens 4]

For each mode (isolate=true: a launcher per job; isolate=false: one shared worker that loads the model
once) it runs the sweep batch_size=<batch sizes> and reports wall time, the time the workers spent
loading and generating (from the result files), and the difference per job.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measured_s(result: dict, counted_load: set) -> float:
    """Seconds the worker spent on load (once per load) and generate calls."""
    load = 0.0
    if result["model_loaded_by_job"] not in counted_load:
        counted_load.add(result["model_loaded_by_job"])
        load = result["load_s"]
    repeats = len(result["generate_s"])
    return load + result["warmup_s"] + sum(result["generate_s"]) + repeats * result["ttft_ms"] / 1000


def run_mode(isolate: bool, args: argparse.Namespace, workdir: Path) -> dict:
    sweep = workdir / f"isolate-{isolate}"
    jobs = len(args.batch_sizes.split(","))
    cmd = [sys.executable, "-m", "runner", "-m", f"batch_size={args.batch_sizes}", f"model={args.model}",
           f"new_tokens={args.new_tokens}", "repeats=1", f"isolate={str(isolate).lower()}", f"hydra.sweep.dir={sweep}"]
    start = time.perf_counter()
    env = {**os.environ, "INFERSWEEP_HISTORY": str(workdir / "history.sqlite")}  # not the user's history
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]
    assert len(results) == jobs and all(r["status"] == "ok" for r in results), "a job did not end ok"
    counted: set = set()
    work = sum(measured_s(r, counted) for r in results)
    return {"isolate": isolate, "jobs": jobs, "wall_s": wall, "load_generate_s": work,
            "overhead_per_job_s": (wall - work) / jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,64", help="the sweep's batch sizes, one job each")
    parser.add_argument("--model", default="bloom-tiny")
    parser.add_argument("--new-tokens", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # a first job builds the synthetic checkpoint, so that neither mode pays for it
        subprocess.run([sys.executable, "-m", "runner", f"model={args.model}", "new_tokens=1", "repeats=1",
                        f"hydra.run.dir={tmp}/warm"], cwd=ROOT, check=True, capture_output=True)
        rows = [run_mode(isolate, args, Path(tmp)) for isolate in (True, False)]
    print(f"{'isolate':>8} {'jobs':>5} {'wall s':>8} {'load+generate s':>16} {'overhead/job s':>15}")
    for r in rows:
        print(f"{r['isolate']!s:>8} {r['jobs']:>5} {r['wall_s']:>8.1f} {r['load_generate_s']:>16.1f} "
              f"{r['overhead_per_job_s']:>15.2f}")


if __name__ == "__main__":
    main()
