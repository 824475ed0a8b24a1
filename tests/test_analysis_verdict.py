"""The regression verdict and the history on result sets built to known distributions."""
import io
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from analysis.__main__ import main
from analysis.compare import compare
from analysis.results import frame
from core.jobdir import write_json

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 8, 64)


def make_result(run_id: str, job: int, bs: int, rounds_ms: list, repeats: int = 3,
                started: str = "2026-01-01T00:00:00+00:00", host: str = "ci", status: str = "ok",
                env: dict | None = None) -> dict:
    """One bf16 result at batch size `bs`, as the runner writes it: `rounds_ms` is each round's ms/token (one
    worker process each, its `repeats` repeats all at that figure). A single figure gives a result without a
    `rounds` field, as written before rounds existed."""
    config = {"backend": {"name": "accelerate"}, "dtype": {"name": "bf16"}, "offload": {"name": "none"},
              "model": {"name": "bloom-tiny"}, "num_gpus": 0, "batch_size": bs, "new_tokens": 100,
              "prompt_tokens": 8, "repeats": repeats, "stack": None, "timeout_s": 600}
    result = {"run_id": run_id, "job": job, "timestamp": started, "status": status, "reason": "", "log": "",
              "config": config, "env": {"hostname": host, "gpu_name": None, "gpu_count": 0, "torch": "2.13.0",
                                        "git_rev": "8ff5182", **(env or {})}}
    if len(rounds_ms) > 1:
        config["rounds"] = len(rounds_ms)
    if status == "ok":
        seconds = [[ms * bs * 100 / 1000] * repeats for ms in rounds_ms]
        result.update(ms_per_token=float(np.median(rounds_ms)), generate_s=[s for one in seconds for s in one], load_s=2.0, streams=1)
        if len(rounds_ms) > 1:
            result["rounds"] = [{"round": k + 1, "started": started, "ended": started, "ms_per_token": ms,
                                 "generate_s": s, "load_s": 2.0, "pid": 1000 + k}
                                for k, (ms, s) in enumerate(zip(rounds_ms, seconds))]
    return result


def make_sweep(run_id: str, rng: np.random.Generator, ms: float = 10.0, noise: float = 0.01, rounds: int = 3,
               started: str = "2026-01-01T00:00:00+00:00", host: str = "ci", statuses: dict | None = None,
               env: dict | None = None) -> list:
    """One bf16 result per batch size: `rounds` rounds of median `ms` ms/token, relative noise `noise` between
    rounds (one round: a result without a `rounds` field, as before rounds existed)."""
    results = []
    for job, bs in enumerate(BATCH_SIZES):
        status = (statuses or {}).get(bs, "ok")
        figures = list(ms * np.exp(noise * rng.standard_normal(rounds)))
        results.append(make_result(run_id, job, bs, figures, started=started, host=host, status=status, env=env))
    return results


def verdicts(shift: float, noise: float, seeds: int, rounds: int = 3) -> list:
    """Verdicts of every point over `seeds` pairs of sweeps: candidate = baseline distribution x shift."""
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        base = frame(make_sweep("base", rng, noise=noise, rounds=rounds))
        cand = frame(make_sweep("cand", rng, ms=10.0 * shift, noise=noise, rounds=rounds))
        out += list(compare(base, cand)["verdict"])
    return out


def test_same_distribution_twice_is_never_flagged():
    # 2% noise between processes (a quiet GPU), 3 rounds a side, 300 points. Mostly sure of it (unchanged:
    # it would have seen a 10% change); inconclusive where its three rounds happened to spread wider.
    found = verdicts(shift=1.0, noise=0.02, seeds=100)
    assert len(found) == 300 and set(found) == {"unchanged", "inconclusive"}
    assert found.count("unchanged") / len(found) > 0.6


def test_ten_percent_slowdown_in_one_percent_noise_is_flagged():
    found = verdicts(shift=1.10, noise=0.01, seeds=40)
    assert set(found) == {"regressed"}
    assert set(verdicts(shift=0.90, noise=0.01, seeds=10)) == {"improved"}


def test_ten_percent_shift_inside_thirty_percent_noise_is_inconclusive_never_unchanged():
    # 3 rounds in 30% noise cannot see 10%: a few chance flags (about the 2.5% a 95% interval allows on
    # that side), the rest inconclusive, none called unchanged.
    found = verdicts(shift=1.10, noise=0.30, seeds=100)
    assert found.count("regressed") / len(found) < 0.05
    assert "unchanged" not in found and found.count("inconclusive") / len(found) > 0.9


def write_sweep(root: Path, results: list) -> Path:
    """The results as a sweep directory, one job directory each: root/<run_id>/<job>/result.json."""
    sweep_dir = root / results[0]["run_id"]
    for r in results:
        (sweep_dir / str(r["job"])).mkdir(parents=True)
        write_json(sweep_dir / str(r["job"]) / "result.json", r)
    return sweep_dir


def analysis(*args, history: Path) -> subprocess.CompletedProcess:
    """`python -m analysis ARGS` in a subprocess, on the history `history`."""
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "INFERSWEEP_HISTORY": str(history)})


def analysis_main(*args, history: Path) -> tuple[int, str, str]:
    """What `python -m analysis ARGS` does, run in this process (a subprocess costs seconds to start):
    (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"INFERSWEEP_HISTORY": str(history)}), redirect_stdout(out), \
            redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def table_rows(markdown: str) -> list[dict]:
    """The rows of the first Markdown table in `markdown`, as dicts by column header."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def test_status_change_is_a_regression_and_new_and_missing_points_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    base = write_sweep(tmp_path, make_sweep("base", rng))
    cand_results = make_sweep("cand", rng, statuses={8: "oom"})
    cand_results[0]["config"]["new_tokens"] = 50  # bs=1 measured with other settings: a new point
    cand = write_sweep(tmp_path, cand_results)

    code, out, err = analysis_main("compare", base, cand, history=tmp_path / "h.sqlite")
    assert code == 1, err
    rows = table_rows(out)
    assert [(r["point"], r["candidate ms/token"], r["verdict"]) for r in rows] == [
        ("accelerate bf16 new=100 bs=8", "oom", "**regressed**"),
        ("accelerate bf16 new=100 bs=64", rows[1]["candidate ms/token"], rows[1]["verdict"])]
    assert rows[1]["verdict"].startswith("unchanged; would have seen ")
    assert rows[1]["noise (one round)"].endswith("rounds (n=3+3)")
    assert float(rows[1]["baseline ms/token"]) == pytest.approx(10, rel=0.05)
    assert float(rows[1]["candidate ms/token"]) == pytest.approx(10, rel=0.05)
    assert "**New points** (no baseline):\n\n- accelerate bf16 new=50 bs=1: " in out
    assert "**Missing points** (not in candidate):\n\n- accelerate bf16 new=100 bs=1: " in out
    assert "REGRESSION" in out

    assert analysis_main("compare", base, base, history=tmp_path / "h.sqlite")[0] == 0


def test_default_baseline_is_the_latest_earlier_sweep_on_the_same_hardware(tmp_path):
    history = tmp_path / "h.sqlite"
    rng = np.random.default_rng(0)
    sweeps = {name: write_sweep(tmp_path, make_sweep(name, rng, started=f"2026-01-0{day}T00:00:00+00:00",
                                                     host=host, statuses=statuses))
              for name, day, host, statuses in (("old", 1, "ci", {}), ("good", 2, "ci", {}),
                                                ("other-host", 3, "elsewhere", {1: "oom"}),
                                                ("cand", 4, "ci", {}), ("later", 5, "ci", {1: "error"}))}
    assert analysis_main("history", "--add", *sweeps.values(), history=history)[0] == 0
    code, out, err = analysis_main("compare", "cand", history=history)
    assert code == 0, out + err
    assert "vs baseline `good` (2026-01-02 00:00, cpu@ci)" in out

    code, out, err = analysis_main("trend", "--out", tmp_path, history=history)
    assert code == 0, err
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
