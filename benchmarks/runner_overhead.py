"""The runner's own cost per job: everything but loading and generating (Hydra, validation, the
launcher, the worker's imports, result I/O). Prints a table; run from the repository root:

    python benchmarks/runner_overhead.py [--jobs 4]

For each mode (isolate=true: a launcher per job; isolate=false: one shared worker) it runs a sweep of
`--jobs` tiny jobs and reports wall time, the time the workers spent loading and generating (from the
result files), and the difference per job.
"""
import argparse
import json
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


def run_mode(isolate: bool, jobs: int, workdir: Path) -> dict:
    sweep = workdir / f"isolate-{isolate}"
    sizes = ",".join(str(i) for i in range(1, jobs + 1))
    cmd = [sys.executable, "-m", "runner", "-m", f"batch_size={sizes}", "new_tokens=4", "repeats=1",
           f"isolate={str(isolate).lower()}", f"hydra.sweep.dir={sweep}"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in sweep.glob("*/result.json")]
    assert len(results) == jobs and all(r["status"] == "ok" for r in results), "a job did not end ok"
    counted: set = set()
    work = sum(measured_s(r, counted) for r in results)
    return {"isolate": isolate, "jobs": jobs, "wall_s": wall, "load_generate_s": work,
            "overhead_per_job_s": (wall - work) / jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # a first job builds the synthetic checkpoint, so that neither mode pays for it
        subprocess.run([sys.executable, "-m", "runner", "new_tokens=1", "repeats=1", f"hydra.run.dir={tmp}/warm"],
                       cwd=ROOT, check=True, capture_output=True)
        rows = [run_mode(isolate, args.jobs, Path(tmp)) for isolate in (True, False)]
    print(f"{'isolate':>8} {'jobs':>5} {'wall s':>8} {'load+generate s':>16} {'overhead/job s':>15}")
    for r in rows:
        print(f"{r['isolate']!s:>8} {r['jobs']:>5} {r['wall_s']:>8.1f} {r['load_generate_s']:>16.1f} "
              f"{r['overhead_per_job_s']:>15.2f}")


if __name__ == "__main__":
    main()
