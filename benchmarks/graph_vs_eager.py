"""backend=graph (a CUDA-graph-captured decode step) against the eager and compiled paths, on one GPU, in
one call of a few minutes. Run from the repository root on a GPU machine:

    python benchmarks/graph_vs_eager.py OUT_DIR [--budget-s 520] [--cache-dir DIR]

Sweeps bloom-7b1 and llama-8b (synthetic, bf16) in priority order (SWEEPS below): graph at batch sizes 1,
8, 64, 256; graph under profile=true (bloom-7b1, one short generate: 7 graph-replayed steps); graph with
a compiled step at 1; accelerate backend.compile=true at 1 and 64; accelerate (eager) and ds-inference
at 1, 8, 64, 256; graph's own step without the graph at 1 and 64. `--only a,b` runs the named sweeps
(the rest of a budget that ran out, in a second call). After the graph sweep, tests/test_graph.py's GPU
test checks the captured steps on the tiny models (OUT_DIR/gpu-tests.log; not with --only). Each sweep writes OUT_DIR/<name>/ (result.json
per job, the job logs); a sweep that would run past the budget is stopped (SIGTERM: the runner ends its jobs' process trees) and those after it are
skipped. Jobs that differ only in batch size share one loaded model (isolate=false). The history goes to
OUT_DIR/history.sqlite. At the end it prints, and writes to OUT_DIR/summary.md, one row per job: ms per
token, decode ms per step, the decode floor of the roofline and the step's multiple of it (the goal of
backend=graph: within 1.3x at batch size 1), the top-5 next tokens after the prompt (every backend computes
the same function: they should agree) and backend=graph's check of its replays against the uncaptured step.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = "model=bloom-7b1,llama-8b"
BATCHES = "batch_size=1,8,64,256"
COMMON = ["dtype=bf16", "num_gpus=1", "isolate=false", "timeout_s=300"]

# (sweep name, overrides), most wanted first. Every sweep starts one worker per model (about 30 s of
# imports on the H200 before anything loads), so the eager paths run one timed repeat and the compiled
# path (minutes of compilation per batch shape) two batch sizes.
SWEEPS = [
    ("graph", ["backend=graph", MODELS, BATCHES, "repeats=3"]),
    ("graph-profile", ["backend=graph", "model=bloom-7b1", "batch_size=1", "new_tokens=8", "repeats=1",
                       "profile=true"]),
    # the fused step: inductor's default mode (max-autotune's GEMM search would take minutes per shape)
    ("graph-compile-step", ["backend=graph", "backend.compile_step=true", "backend.compile_mode=default", MODELS,
                            "batch_size=1", "repeats=3"]),
    ("accelerate-compile", ["backend=accelerate", "backend.compile=true", MODELS, "batch_size=1,64", "repeats=2"]),
    ("accelerate", ["backend=accelerate", MODELS, BATCHES, "repeats=1"]),
    ("ds-inference", ["backend=ds-inference", MODELS, BATCHES, "repeats=1"]),
    ("graph-no-cuda-graph", ["backend=graph", "backend.cuda_graph=false", MODELS, "batch_size=1,64", "repeats=1"]),
]
MIN_START_S = 30  # a sweep is not started with less left than this
GPU_TESTS_S = 90  # at most this for the GPU test, run after the graph sweep


def child_env() -> dict:
    """This environment with the repository first on PYTHONPATH (the GPU machine's packages stay on it)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def run_sweep(name: str, overrides: list, out: Path, cache: str, left_s: float) -> tuple:
    """(exit status, seconds) of one `python -m runner -m` sweep, stopped after `left_s` seconds."""
    cmd = [sys.executable, "-m", "runner", "-m", *overrides, *COMMON, f"cache_dir={cache}",
           f"hydra.sweep.dir={out / name}"]
    env = {**child_env(), "INFERSWEEP_HISTORY": str(out / "history.sqlite")}
    print(f"== {name}: {' '.join(cmd[3:])} (at most {left_s:.0f} s)", flush=True)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=left_s)
        except subprocess.TimeoutExpired:
            print(f"   {name}: out of budget, stopping it", flush=True)
            proc.send_signal(signal.SIGTERM)  # the runner ends its jobs' process trees, keeps finished results
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
    seconds = time.perf_counter() - start
    print(f"   {name}: exit {code} after {seconds:.0f} s", flush=True)
    return code, seconds


def run_gpu_tests(out: Path, left_s: float) -> None:
    """tests/test_graph.py's GPU test (the captured steps against the uncaptured step and transformers on
    the tiny models), its output in OUT_DIR/gpu-tests.log."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_graph.py", "-k", "cuda_graph"]
    print(f"== gpu-tests: {' '.join(cmd[1:])} (at most {left_s:.0f} s)", flush=True)
    with open(out / "gpu-tests.log", "w") as log:
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=log,
                                  stderr=subprocess.STDOUT, timeout=left_s, check=False).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    print(f"   gpu-tests: exit {code} ({(out / 'gpu-tests.log').read_text().strip().splitlines()[-1:]})", flush=True)


def rows(out: Path) -> list:
    found = []
    for path in sorted(out.glob("*/*/result.json")):
        r = json.loads(path.read_text())
        c, roof, info = r["config"], r.get("roofline") or {}, r.get("backend_info") or {}
        step, floor = r.get("decode_ms_per_step"), roof.get("decode_floor_ms_per_step")
        found.append({
            "sweep": path.parent.parent.name, "model": c["model"]["name"], "bs": c["batch_size"],
            "status": r["status"], "ms_per_token": r.get("ms_per_token"), "decode_ms_per_step": step,
            "decode_floor_ms": floor, "x_floor": step / floor if step and floor else None,
            "capture_s": info.get("capture_s"), "compile_s": info.get("compile_s"),
            "load_s": r.get("load_s"), "warmup_s": r.get("warmup_s"),
            "top5_after_prompt": (r.get("prompt_logits_top5") or {}).get("ids"), "graph_check": info.get("graph_check"),
            "reason": (r.get("reason") or "")[:120]})
    return found


def table(found: list) -> str:
    cols = ["sweep", "model", "bs", "status", "ms_per_token", "decode_ms_per_step", "decode_floor_ms", "x_floor",
            "capture_s", "compile_s", "load_s", "warmup_s", "top5_after_prompt", "graph_check", "reason"]

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row[c]) for c in cols) + " |" for row in found]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget-s", type=float, default=520.0, help="wall-clock budget of all sweeps")
    parser.add_argument("--cache-dir", default=os.environ.get("INFERSWEEP_CACHE", "/tmp/infersweep-cache"))
    parser.add_argument("--only", default="", help="comma-separated sweep names (default: all, in order)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in SWEEPS if not args.only or s[0] in args.only.split(",")]
    deadline = time.perf_counter() + args.budget_s
    for name, overrides in wanted:
        left = deadline - time.perf_counter()
        if left < MIN_START_S:
            print(f"== {name}: skipped ({left:.0f} s of the budget left)", flush=True)
            continue
        run_sweep(name, overrides, args.out, args.cache_dir, left)
        if name == "graph" and not args.only:
            run_gpu_tests(args.out, min(GPU_TESTS_S, deadline - time.perf_counter()))
    summary = table(rows(args.out))
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
