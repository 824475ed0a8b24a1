"""Shared helpers: run the real `python -m runner` in a subprocess and read back its result files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One synthetic-checkpoint cache for the whole test session (each shape is built once)."""
    return tmp_path_factory.mktemp("cache")


def run_runner(args: list, cache: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {"INFERSWEEP_HISTORY": str(cache / "history.sqlite"), **os.environ, "INFERSWEEP_CACHE": str(cache),
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout, **kw)


def results(sweep_dir: Path) -> list:
    """result.json of every job of a sweep, in job order."""
    paths = sorted(Path(sweep_dir).glob("*/result.json"), key=lambda p: int(p.parent.name))
    return [json.loads(p.read_text()) for p in paths]
