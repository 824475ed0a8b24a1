"""What a job will run on, found without importing torch: the stack's library versions and the GPUs."""
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from backends.spec import Stack
from core.jobdir import LIBRARIES

_PROBE = f"""
LIBRARIES = {LIBRARIES!r}
import json, sys
from importlib import metadata
versions = {{}}
for name in LIBRARIES:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
print(json.dumps({{"python": sys.version.split()[0], "versions": versions}}))
"""


def interpreter(stack: str | None) -> str:
    """The Python a job runs under: `stack` (an interpreter path, or an environment directory), or ours."""
    if stack is None:
        return sys.executable
    path = Path(stack).expanduser()
    if path.is_dir():
        path = path / "bin" / "python"
    return str(path)


@functools.cache
def probe(python: str) -> Stack:
    """Versions of the libraries installed for `python`. Raises ValueError if it cannot run."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)) and shutil.which(python) is None:
        raise ValueError(f"stack={python}: no such Python interpreter (allowed: a python executable or an env dir)")
    out = subprocess.run([python, "-c", _PROBE], check=False, capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or not out.stdout.strip():
        said = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"stack={python}: does not run as Python (exit code {out.returncode}: {said}) "
                         "(allowed: a python executable or an env dir)")
    try:
        info = json.loads(out.stdout)
    except ValueError:
        raise ValueError(f"stack={python}: does not run as Python (it printed {out.stdout.strip()[:60]!r}) "
                         "(allowed: a python executable or an env dir)") from None
    return Stack(python=python, python_version=info["python"], versions=info["versions"])


@functools.cache
def visible_gpus() -> tuple:
    """IDs of the GPUs a job may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return tuple(i for i in env.split(",") if i.strip() and i.strip() != "-1")
    if shutil.which("nvidia-smi") is None:
        return ()
    out = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        return ()
    return tuple(str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU "))


@functools.cache
def gpu_memory_gib() -> dict:
    """Total memory (GiB) of each GPU nvidia-smi lists, by index; empty where it cannot tell."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                         check=False, capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    rows = (line.split(",") for line in out.stdout.splitlines() if line.count(",") == 1)
    return {index.strip(): int(mib) / 1024 for index, mib in rows if mib.strip().isdigit()}
