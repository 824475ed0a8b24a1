"""What telemetry (backends/telemetry.py: the NVML sampler thread, the psutil readings) costs the figure it
rides on: ms/token with telemetry=true against telemetry=false, point by point. Run from the repository root:

    python benchmarks/telemetry_overhead.py [--model bloom-tiny] [--batch-sizes 1,64] [--rounds 6]
        [--new-tokens 100] [--repeats 3] [--out DIR] [OVERRIDE ...]
    python benchmarks/telemetry_overhead.py --analyze DIR    # the table of a sweep it ran before

It runs one sweep `-m telemetry=true,false batch_size=<sizes> rounds=<rounds>` (every point and round its
own worker process, the rounds interleaved and shuffled by the sweeper, so that drift hits both settings
alike), with a history of its own, then prints per batch size the median ms/token of each setting over its
rounds, the overhead (on / off - 1) with a 95% interval from the rounds (Welch on the log figures, as
`python -m analysis compare` judges rounds), and whether it is within --limit (default 1%).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import special

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.compare import from_rounds, round_figures  # after the repository is on the path


def run_sweep(args: argparse.Namespace, sweep_dir: Path) -> None:
    cmd = [sys.executable, "-m", "runner", "-m", "telemetry=true,false", f"batch_size={args.batch_sizes}",
           f"rounds={args.rounds}", f"model={args.model}", f"new_tokens={args.new_tokens}",
           f"repeats={args.repeats}", *args.overrides, f"hydra.sweep.dir={sweep_dir}"]
    print(" ".join(cmd), file=sys.stderr)
    env = {**os.environ, "INFERSWEEP_HISTORY": str(sweep_dir / "history.sqlite")}  # not the user's history
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def figures(sweep_dir: Path) -> dict:
    """{(batch size, telemetry): (round figures, result)} of the sweep's ok results."""
    found = {}
    for path in sorted(sweep_dir.glob("*/result.json")):
        r = json.loads(path.read_text())
        if r["status"] != "ok":
            print(f"{path}: {r['status']} {r['reason']}", file=sys.stderr)
            continue
        found[(r["config"]["batch_size"], bool(r["config"]["telemetry"]))] = (round_figures(r), r)
    return found


def table(sweep_dir: Path, limit: float) -> list:
    rows = []
    found = figures(sweep_dir)
    for bs in sorted({bs for bs, _ in found}, key=str):
        if (bs, True) not in found or (bs, False) not in found:
            continue
        (off, _), (on, r) = found[(bs, False)], found[(bs, True)]
        ev = from_rounds(off, on)
        if ev is None:
            low = high = math.nan
        else:
            q = float(special.stdtrit(ev.df, 0.975))
            low, high = math.exp(ev.log_ratio - q * ev.se) - 1, math.exp(ev.log_ratio + q * ev.se) - 1
        verdict = ("within" if high <= limit else "over" if low > limit else "undecided: more rounds")
        gpu = (r.get("telemetry") or {}).get("gpu") or {}
        rows.append({"batch_size": bs, "rounds": f"{len(off)}+{len(on)}", "off_ms": float(np.median(off)),
                     "on_ms": float(np.median(on)), "overhead": float(np.median(on) / np.median(off) - 1),
                     "low": low, "high": high, "verdict": f"{verdict} {limit:.0%}",
                     "samples": sum(g.get("samples", 0) for g in gpu.get("per_gpu", [])),
                     "energy_j_per_token": r.get("energy_j_per_token"), "gpu_reason": gpu.get("reason")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bloom-tiny")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--rounds", type=int, default=6, help="worker processes per point and setting")
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=float, default=0.01, help="the overhead allowed (default 0.01)")
    parser.add_argument("--out", type=Path, help="the sweep directory (default: a temporary one)")
    parser.add_argument("--analyze", type=Path, help="only print the table of this sweep directory")
    parser.add_argument("overrides", nargs="*", help="more runner overrides, e.g. num_gpus=1 backend=ds-inference")
    args = parser.parse_args()
    if args.analyze:
        sweep_dir = args.analyze
    else:
        sweep_dir = args.out or Path(tempfile.mkdtemp(prefix="telemetry-overhead-"))
        run_sweep(args, sweep_dir)
    rows = table(sweep_dir, args.limit)
    print(f"sweep: {sweep_dir}")
    print("| batch size | rounds off+on | off ms/token | on ms/token | overhead | 95% interval | verdict "
          "| GPU samples (one round) | J/token | GPU telemetry |")
    print("|--:|--:|--:|--:|--:|--:|:--|--:|--:|:--|")
    for r in rows:
        energy = "" if r["energy_j_per_token"] is None else f"{r['energy_j_per_token']:.4g}"
        print(f"| {r['batch_size']} | {r['rounds']} | {r['off_ms']:.4f} | {r['on_ms']:.4f} | {r['overhead']:+.2%} "
              f"| {r['low']:+.2%} to {r['high']:+.2%} | {r['verdict']} | {r['samples']} | {energy} "
              f"| {r['gpu_reason'] or 'on'} |")


if __name__ == "__main__":
    main()
