"""The `env` of a result: hardware, driver and library versions, host, the project's git revision."""
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from core.jobdir import LIBRARIES

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _run(cmd: list) -> str:
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_rev() -> str | None:
    """The project's commit, `-dirty` when tracked files differ from it. A tree made by `git archive` (as
    copied to a GPU machine) has it in REVISION (.gitattributes: export-subst), and must not take the
    commit of a repository it happens to sit in; None where neither tells."""
    top = _run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--show-toplevel"])
    if not top or Path(top).resolve() != PROJECT_ROOT:
        try:
            archived = (PROJECT_ROOT / "REVISION").read_text().strip()
        except OSError:
            return None
        return archived if archived and not archived.startswith("$Format") else None
    rev = _run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"])
    return f"{rev}-dirty" if rev and dirty else rev or None


def collect_env() -> dict:
    env = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
        "git_rev": git_rev(),
        **{name: _version(name) for name in LIBRARIES},
        "gpu_count": torch.cuda.device_count(),
        "gpu_name": None,
        "gpu_mem_gib": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu_name"] = props.name
        env["gpu_mem_gib"] = round(props.total_memory / 2**30, 1)
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).split("\n")[0] or None
    return env
