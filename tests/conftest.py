"""Shared helpers: run the real `python -m runner` in a subprocess and read back its result files.

The suite runs in two processes (pytest-xdist, `pytest -n 2`; README). Tests that check one expensive
sweep share a module- or session-scoped fixture and are methods of one test class; SweepClassScheduling
below sends every class of one name to one worker, which then runs the sweep once, and spreads every
other test over both workers one by one. (xdist's own `--dist loadgroup` would do it by mark, but on
pytest >= 9.2 it groups nothing: it renames test ids through an attribute pytest no longer reads.)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")  # which pytest process this is (xdist: gw0, gw1)

# Two test processes on two cores keep more threads runnable than there are cores. An OpenMP thread that
# waits at a barrier then spins (libgomp's default) on a core its peer needs: the maxbatch and compile
# tests took 1.4x the CPU next to another busy process. Passive waits change no result, only the waste.
# Set before torch is imported here, and inherited by every runner, launcher and worker the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
               env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {"INFERSWEEP_HISTORY": str(history_of(cache)), **os.environ, "INFERSWEEP_CACHE": str(cache),
           "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    if history is not None:
        env["INFERSWEEP_HISTORY"] = str(history)
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout, **kw)


def results(sweep_dir: Path) -> list:
    """result.json of every job of a sweep, in job order."""
    paths = sorted(Path(sweep_dir).glob("*/result.json"), key=lambda p: int(p.parent.name))
    return [json.loads(p.read_text()) for p in paths]


@pytest.fixture(scope="session")
def accelerate_sweep(tmp_path_factory, cache_dir) -> dict:
    """One real sweep that tests/test_runner.py and tests/test_analysis_report.py both check (in classes
    named TestAccelerateSweep: one worker), a launcher per job (isolate=true): bf16 at batch sizes 1 and 4, plus int8 (invalid on a CPU) in
    the same sweep; 16 new tokens, 3 repeats; a CPU node priced at 0.5 USD per hour. The end of the sweep
    appends it to a history of its own."""
    root = tmp_path_factory.mktemp("accelerate-sweep")
    sweep_dir, history = root / "sweep", root / "history.sqlite"
    proc = run_runner(["-m", "dtype=bf16,int8", "batch_size=1,4", "new_tokens=16", "repeats=3", "prompt_tokens=4", "isolate=true",
                       "price_per_cpu_node_hour=0.5", f"hydra.sweep.dir={sweep_dir}"], cache_dir, history=history)
    assert proc.returncode == 0, proc.stderr
    return {"dir": sweep_dir, "proc": proc, "results": results(sweep_dir), "history": history}


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown to a pytest without it
def pytest_xdist_make_scheduler(config, log):
    """With -n: SweepClassScheduling, for xdist's default distribution (load) and for loadgroup."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SweepClassScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, where a scope is a test class name (the tests of every class of that
        name, whichever module it is in, go to one worker as one unit) or else a single test. Units are
        handed out largest first (the sweep classes), then in collection order, whenever a worker has
        two tests or fewer left."""

        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("::")
            return f"class {parts[1]}" if len(parts) > 2 else nodeid

    return SweepClassScheduling(config, log)
