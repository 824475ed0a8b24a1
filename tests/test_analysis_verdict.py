"""The regression verdict and the history on result sets built to known distributions."""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.compare import compare
from analysis.results import frame
from core.jobdir import RESULT_FILE, write_json

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 8, 64)


def make_sweep(run_id: str, rng: np.random.Generator, ms: float = 10.0, noise: float = 0.01, repeats: int = 3,
               started: str = "2026-01-01T00:00:00+00:00", host: str = "ci", statuses: dict | None = None) -> list:
    """One bf16 result per batch size: `repeats` generate times of mean `ms` ms/token, relative noise `noise`."""
    results = []
    for job, bs in enumerate(BATCH_SIZES):
        status = (statuses or {}).get(bs, "ok")
        result = {"run_id": run_id, "job": job, "timestamp": started, "status": status, "reason": "", "log": "",
                  "config": {"backend": {"name": "accelerate"}, "dtype": {"name": "bf16"},
                             "offload": {"name": "none"}, "model": {"name": "bloom-tiny"}, "num_gpus": 0,
                             "batch_size": bs, "new_tokens": 100, "prompt_tokens": 8, "repeats": repeats,
                             "stack": None, "timeout_s": 600},
                  "env": {"hostname": host, "gpu_name": None, "gpu_count": 0, "torch": "2.13.0"}}
        if status == "ok":
            per_token = ms * (1 + noise * rng.standard_normal(repeats))
            result.update(generate_s=list(per_token * bs * 100 / 1000), ms_per_token=float(np.median(per_token)),
                          load_s=2.0, streams=1)
        results.append(result)
    return results


def verdicts(shift: float, noise: float, seeds: int, repeats: int = 3) -> list:
    """Verdicts of every point over `seeds` pairs of sweeps: candidate = baseline distribution x shift."""
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        base = frame(make_sweep("base", rng, noise=noise, repeats=repeats))
        cand = frame(make_sweep("cand", rng, ms=10.0 * shift, noise=noise, repeats=repeats))
        out += list(compare(base, cand)["verdict"])
    return out


def test_same_distribution_twice_is_never_flagged():
    # 2% noise (a GPU's usual spread), the default 3 repeats, 600 points.
    found = verdicts(shift=1.0, noise=0.02, seeds=200)
    assert len(found) == 600 and set(found) == {"unchanged"}


def test_ten_percent_slowdown_in_one_percent_noise_is_flagged():
    found = verdicts(shift=1.10, noise=0.01, seeds=50)
    assert set(found) == {"regressed"}
    assert set(verdicts(shift=0.90, noise=0.01, seeds=10)) == {"improved"}


def test_ten_percent_shift_inside_thirty_percent_noise_is_not_flagged():
    # 3 repeats in 30% noise are too thin a basis: a few flags in 100 seeds, about the 2.5% a 95%
    # interval allows on that side, where the same shift in 1% noise is flagged in every seed.
    found = verdicts(shift=1.10, noise=0.30, seeds=200)
    assert found.count("regressed") / len(found) < 0.05
    assert found.count("unchanged") / len(found) > 0.9


def write_sweep(root: Path, results: list) -> Path:
    sweep_dir = root / results[0]["run_id"]
    for r in results:
        (sweep_dir / str(r["job"])).mkdir(parents=True)
        write_json(sweep_dir / str(r["job"]) / RESULT_FILE, r)
    return sweep_dir


def analysis(*args, history: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "INFERSWEEP_HISTORY": str(history)})


def test_status_change_is_a_regression_and_new_and_missing_points_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    base = write_sweep(tmp_path, make_sweep("base", rng))
    cand_results = make_sweep("cand", rng, statuses={8: "oom"})
    cand_results[0]["config"]["new_tokens"] = 50  # bs=1 measured with other settings: a new point
    cand = write_sweep(tmp_path, cand_results)

    proc = analysis("compare", base, cand, history=tmp_path / "h.sqlite")
    assert proc.returncode == 1, proc.stderr
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| accelerate")]
    assert [(r[0], r[2], r[-1]) for r in rows] == [("accelerate bf16 new=100 bs=8", "oom", "**regressed**"),
                                                   ("accelerate bf16 new=100 bs=64", rows[1][2], "unchanged")]
    assert float(rows[1][1]) == pytest.approx(10, rel=0.05) and float(rows[1][2]) == pytest.approx(10, rel=0.05)
    assert "**New points** (no baseline):\n\n- accelerate bf16 new=50 bs=1: " in proc.stdout
    assert "**Missing points** (not in candidate):\n\n- accelerate bf16 new=100 bs=1: " in proc.stdout
    assert "REGRESSION" in proc.stdout

    assert analysis("compare", base, base, history=tmp_path / "h.sqlite").returncode == 0


def test_default_baseline_is_the_latest_earlier_sweep_on_the_same_hardware(tmp_path):
    history = tmp_path / "h.sqlite"
    rng = np.random.default_rng(0)
    sweeps = {name: write_sweep(tmp_path, make_sweep(name, rng, started=f"2026-01-0{day}T00:00:00+00:00",
                                                     host=host, statuses=statuses))
              for name, day, host, statuses in (("old", 1, "ci", {}), ("good", 2, "ci", {}),
                                                ("other-host", 3, "elsewhere", {1: "oom"}),
                                                ("cand", 4, "ci", {}), ("later", 5, "ci", {1: "error"}))}
    assert analysis("history", "--add", *sweeps.values(), history=history).returncode == 0
    proc = analysis("compare", "cand", history=history)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vs baseline `good` (2026-01-02 00:00, cpu@ci)" in proc.stdout

    proc = analysis("trend", "--out", tmp_path, history=history)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "trend_ms_per_token.png").read_bytes().startswith(b"\x89PNG")


def test_two_processes_appending_at_once_both_land(tmp_path):
    history = tmp_path / "h.sqlite"
    rng = np.random.default_rng(0)
    dirs = {who: [write_sweep(tmp_path / who, make_sweep(f"{who}-{i}", rng)) for i in range(15)]
            for who in ("a", "b")}
    cmd = [sys.executable, "-m", "analysis", "history", "--add"]
    env = {**os.environ, "INFERSWEEP_HISTORY": str(history)}
    procs = [subprocess.Popen(cmd + [str(d) for d in dirs[who]], cwd=ROOT, env=env, stderr=subprocess.PIPE)
             for who in dirs]
    assert [p.wait(timeout=120) for p in procs] == [0, 0], [p.stderr.read() for p in procs]

    db = sqlite3.connect(history)
    counts = dict(db.execute("SELECT s.run_id, COUNT(*) FROM sweeps s JOIN results r ON r.sweep = s.id"
                             " GROUP BY s.run_id").fetchall())
    assert counts == {f"{who}-{i}": len(BATCH_SIZES) for who in dirs for i in range(15)}
    listed = analysis("history", history=history).stdout
    assert all(f"{who}-{i} " in listed for who in dirs for i in range(15))
    stored = json.loads(db.execute("SELECT result FROM results LIMIT 1").fetchone()[0])
    assert stored["config"]["dtype"]["name"] == "bf16"


def test_sweep_summary_names_every_gpu_count_of_a_scaling_sweep():
    from analysis.results import sweep_summary

    results = make_sweep("scaling", np.random.default_rng(0))
    for result, gpus in zip(results, (1, 2, 2)):
        result["config"]["num_gpus"] = gpus
        result["env"].update(gpu_name="NVIDIA H200", gpu_count=gpus)
    assert sweep_summary(frame(results))["hardware"].tolist() == ["1x NVIDIA H200, 2x NVIDIA H200"]


def test_row_labels_name_each_backend_option_that_varies():
    """pre_sharded=false,true are two points, not one measured twice; kernel_inject "true" (a yaml file) and
    True (the command line) are one value."""
    from analysis.tables import row_labels

    results = make_sweep("options", np.random.default_rng(0))[:2] * 2
    results = json.loads(json.dumps(results))
    for result, pre, inject in zip(results, (False, False, True, True), ("true", True, "True", "true")):
        result["config"]["backend"].update(name="ds-inference", pre_sharded=pre, kernel_inject=inject)
    labels = row_labels(frame(results)).tolist()
    assert labels == ["ds-inference bf16 pre_sharded=false"] * 2 + ["ds-inference bf16 pre_sharded=true"] * 2
