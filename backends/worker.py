"""The process the launcher starts: `python -m backends.worker JOB_DIR`.

Reads JOB_DIR/job.json, loads the model with the job's backend, runs the shared measurement loop and
writes JOB_DIR/result.json (rank 0 only). Every failure it can catch becomes a result: out of memory
is `oom`, anything else `error` with the exception's last line.
"""
import importlib
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import torch

from backends.env import collect_env
from backends.measure import measure, synchronize
from backends.synthetic import checkpoint_dir
from runner.progress import PHASE_FILE
from runner.result import new_result, write_result

BACKENDS = {
    "accelerate": "backends.accelerate:AccelerateBackend",
}

OOM_MESSAGES = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed", "cannot allocate memory",
                "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def limit_host_memory(gib: float) -> None:
    """Cap the address space at `gib` GiB above what the process already maps (RLIMIT_AS)."""
    import psutil

    mapped = psutil.Process().memory_info().vms
    limit = mapped + int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def make_backend(config: dict):
    module, cls = BACKENDS[config["backend"]["name"]].split(":")
    return getattr(importlib.import_module(module), cls)(config, str(checkpoint_dir(config)))


def run(job: dict, job_dir: Path) -> dict:
    config = job["config"]

    def phase(text: str) -> None:
        if rank() == 0:
            with open(job_dir / PHASE_FILE, "a") as f:
                f.write(text + "\n")

    fields = {"env": collect_env()}
    backend = None
    try:
        backend = make_backend(config)
        if config["host_mem_limit_gib"] is not None:
            limit_host_memory(config["host_mem_limit_gib"])
        phase("loading")
        start = time.perf_counter()
        backend.load()
        synchronize()
        fields["load_s"] = time.perf_counter() - start
        fields["backend_info"] = backend.info
        vocab = backend.model.config.vocab_size
        fields.update(measure(backend, config, vocab, stream=rank(), phase=phase))
        return new_result(job, "ok", **fields)
    except BaseException as exc:  # noqa: BLE001 -- every failure must become a result
        traceback.print_exc()
        last = (traceback.format_exception_only(type(exc), exc)[-1].strip().splitlines() or [repr(exc)])[-1]
        fields["backend_info"] = backend.info if backend is not None else {}
        return new_result(job, "oom" if is_oom(exc) else "error", last, **fields)
    finally:
        if backend is not None and hasattr(backend, "close"):
            backend.close()


def main(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    result = run(job, job_dir)
    if rank() == 0:
        write_result(job_dir, result)
    print(f"worker rank {rank()}: {result['status']} {result['reason']}", flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[-1])))
