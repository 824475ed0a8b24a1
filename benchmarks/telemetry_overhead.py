"""What telemetry (backends/telemetry.py: the NVML sampler thread, the psutil readings) costs the figure it
rides on: ms/token with telemetry on against off, measured in one process, interleaved. Run from the
repository root:

    python benchmarks/telemetry_overhead.py [--model bloom-tiny] [--batch-sizes 1,64] [--pairs 10]
        [--new-tokens 100] [--repeats 3] [--limit 0.01] [--out DIR] [OVERRIDE ...]

Between worker processes ms/token moves by far more than 1% (docs/benchmarks/verdicts-h200/), so the two
settings are compared inside one process: a runner job (new_tokens=1) builds the model's checkpoint and
gives the resolved config, then this process loads the model once with the job's backend (accelerate: one
process, no launcher needed) and runs backends/measure.py's `measure` `--pairs` times per setting and batch
size, on and off alternating (on-off, off-on, ...: drift and order hit both alike). Each pair gives a
ratio on/off; the overhead is their geometric mean - 1 with a 95% t interval, within --limit or not.
`--out` also gets every measurement as overhead.json.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scipy import special

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def job_config(args: argparse.Namespace, out: Path) -> dict:
    """The resolved config of the point, from a runner job that also builds its synthetic checkpoint."""
    job_dir = out / "setup"
    cmd = [sys.executable, "-m", "runner", f"model={args.model}", f"batch_size={args.batch_sizes.split(',')[0]}",
           "new_tokens=1", "repeats=1", *args.overrides, f"hydra.run.dir={job_dir}"]
    env = {**os.environ, "INFERSWEEP_HISTORY": str(out / "history.sqlite")}  # not the user's history
    subprocess.run(cmd, cwd=ROOT, check=True, env=env, capture_output=True)
    result = json.loads((job_dir / "result.json").read_text())
    if result["status"] != "ok":
        raise SystemExit(f"the setup job ended {result['status']}: {result['reason']} ({job_dir})")
    return result["config"]


def interval(log_ratios: list) -> tuple:
    """Overhead (geometric mean of the ratios - 1) and its 95% t interval."""
    n = len(log_ratios)
    mean = statistics.fmean(log_ratios)
    half = float(special.stdtrit(n - 1, 0.975)) * statistics.stdev(log_ratios) / math.sqrt(n) if n > 1 else math.inf
    return math.exp(mean) - 1, math.exp(mean - half) - 1, math.exp(mean + half) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bloom-tiny")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--pairs", type=int, default=10, help="measurements per setting and batch size")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed generates per measurement")
    parser.add_argument("--limit", type=float, default=0.01, help="the overhead allowed (default 0.01)")
    parser.add_argument("--out", type=Path, help="where the setup job and overhead.json go (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="more runner overrides of the point, e.g. dtype=fp16")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="telemetry-overhead-"))
    out.mkdir(parents=True, exist_ok=True)
    config = job_config(args, out)
    if config["num_gpus"] > 0 and "CUDA_VISIBLE_DEVICES" not in os.environ:  # the job's GPUs, as its launcher gives
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(config["num_gpus"]))

    from backends.hf import import_model_code
    from backends.measure import measure, synchronize
    from backends.worker import make_backend

    backend = make_backend(config)
    import_model_code(backend.checkpoint)
    backend.load()
    synchronize()
    vocab = backend.model.config.vocab_size
    rows, raw = [], []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        point = {**config, "batch_size": bs, "new_tokens": args.new_tokens, "repeats": args.repeats}
        figures = {True: [], False: []}
        for k in range(args.pairs):
            for on in ((True, False) if k % 2 == 0 else (False, True)):
                m = measure(backend, point, vocab, 0, phase=lambda _: None, telemetry=on)
                figures[on].append(m["ms_per_token"])
                raw.append({"batch_size": bs, "pair": k, "telemetry": on, "ms_per_token": m["ms_per_token"],
                            "energy_j_per_token": m["energy_j_per_token"],
                            "gpu_reason": (m["telemetry"] or {}).get("gpu", {}).get("reason")})
        overhead, low, high = interval([math.log(a / b) for a, b in zip(figures[True], figures[False])])
        verdict = "within" if high <= args.limit else "over" if low > args.limit else "undecided (more pairs)"
        rows.append((bs, statistics.median(figures[False]), statistics.median(figures[True]), overhead, low, high,
                     f"{verdict} {args.limit:.0%}"))
    (out / "overhead.json").write_text(json.dumps({"config": config, "measurements": raw}, indent=2))
    gpu = next((r["gpu_reason"] for r in raw if r["telemetry"]), None)
    print(f"{config['backend']['name']} {config['dtype']['name']} {config['model']['name']} num_gpus={config['num_gpus']} "
          f"new_tokens={args.new_tokens} repeats={args.repeats}, {args.pairs} pairs; GPU telemetry: {gpu or 'on'}; "
          f"{out / 'overhead.json'}")
    print("| batch size | off ms/token (median) | on ms/token (median) | overhead | 95% interval | verdict |")
    print("|--:|--:|--:|--:|--:|:--|")
    for bs, off, on, overhead, low, high, verdict in rows:
        print(f"| {bs} | {off:.4f} | {on:.4f} | {overhead:+.2%} | {low:+.2%} to {high:+.2%} | {verdict} |")


if __name__ == "__main__":
    main()
