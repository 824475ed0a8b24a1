"""result.json: the one file a job leaves behind, and the source of truth for everything downstream.

Torch-free on purpose: the runner, the worker and analysis all read and write it through here.
"""
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
STATUSES = ("ok", "oom", "error", "timeout", "invalid")


def new_result(job: dict, status: str, reason: str = "", **fields: Any) -> dict:
    """A result for the job described by `job` (run_id, job, config, log), with `fields` added."""
    assert status in STATUSES, status
    return {
        "run_id": job["run_id"],
        "job": job["job"],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": job["config"],
        "status": status,
        "reason": reason,
        "log": job["log"],
        **fields,
    }


def write_result(job_dir: Path, result: dict) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a result."""
    job_dir = Path(job_dir)
    fd, tmp = tempfile.mkstemp(dir=job_dir, prefix=".result.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    path = job_dir / RESULT_FILE
    os.replace(tmp, path)
    return path


def read_result(job_dir: Path) -> dict | None:
    """The job's result, or None if there is none yet. A corrupt file raises ValueError naming it."""
    path = Path(job_dir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt result file {path}: {e}") from e
    if not isinstance(result, dict) or result.get("status") not in STATUSES or not isinstance(result.get("config"), dict):
        raise ValueError(f"corrupt result file {path}: no valid status or config")
    return result


def set_aside(job_dir: Path, why: str) -> Path:
    """Move result.json out of the way (to result.json.<why>, kept for inspection), so that nothing reads
    it as the job's result; returns the new path."""
    path = Path(job_dir) / RESULT_FILE
    target = path.with_name(f"{RESULT_FILE}.{why}")
    os.replace(path, target)
    return target
