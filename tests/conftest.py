"""Shared helpers: run the real `python -m runner` in a subprocess and read back its result files.

The suite runs in two processes (pytest-xdist, `-n 2 --dist loadgroup`): tests that check one expensive
sweep share a module- or session-scoped fixture and carry the same `xdist_group` mark, so that the sweep
runs once, on one worker; everything else is spread over both.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")  # which pytest process this is (xdist: gw0, gw1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One synthetic-checkpoint cache for the whole test session (each shape is built once). Under xdist
    the workers share it (their base temp dirs have one parent): a checkpoint is built into a temp dir and
    renamed into place (backends/synthetic.py), so two workers building the same one at once is safe."""
    if WORKER == "main":
        return tmp_path_factory.mktemp("cache")
    shared = tmp_path_factory.getbasetemp().parent / "cache"
    shared.mkdir(exist_ok=True)
    return shared


def history_of(cache: Path) -> Path:
    """The history a run appends to unless the test names one: one per pytest process, so that the
    workers' sweeps never land in each other's history."""
    return cache / f"history-{WORKER}.sqlite"


def run_runner(args: list, cache: Path, timeout: float = 300, history: Path | None = None,
               **kw) -> subprocess.CompletedProcess:
    env = {"INFERSWEEP_HISTORY": str(history_of(cache)), **os.environ, "INFERSWEEP_CACHE": str(cache),
           "CUDA_VISIBLE_DEVICES": ""}
    if history is not None:
        env["INFERSWEEP_HISTORY"] = str(history)
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout, **kw)


def results(sweep_dir: Path) -> list:
    """result.json of every job of a sweep, in job order."""
    paths = sorted(Path(sweep_dir).glob("*/result.json"), key=lambda p: int(p.parent.name))
    return [json.loads(p.read_text()) for p in paths]


ACCELERATE_SWEEP = "accelerate_sweep"  # the xdist_group of the tests that check the sweep below


@pytest.fixture(scope="session")
def accelerate_sweep(tmp_path_factory, cache_dir) -> dict:
    """One real sweep that tests/test_runner.py and tests/test_analysis_report.py both check: bf16 at
    batch sizes 1 and 4, plus int8 (invalid on a CPU) in the same sweep; 16 new tokens, 3 repeats. The
    end of the sweep appends it to a history of its own."""
    root = tmp_path_factory.mktemp("accelerate-sweep")
    sweep_dir, history = root / "sweep", root / "history.sqlite"
    proc = run_runner(["-m", "dtype=bf16,int8", "batch_size=1,4", "new_tokens=16", "repeats=3", "prompt_tokens=4",
                       f"hydra.sweep.dir={sweep_dir}"], cache_dir, history=history)
    assert proc.returncode == 0, proc.stderr
    return {"dir": sweep_dir, "proc": proc, "results": results(sweep_dir), "history": history}
