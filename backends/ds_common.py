"""What the two DeepSpeed backends share: the process group, devices, stale op-build locks.

Every rank of a DeepSpeed job (backends/launchers.py) runs this; DeepSpeed's launcher sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT. On a machine without a GPU DeepSpeed picks its CPU accelerator and gloo.
"""
import datetime
import os
from pathlib import Path

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def device(config: dict) -> torch.device:
    return torch.device("cuda", local_rank()) if config["num_gpus"] > 0 else torch.device("cpu")


def _held_open(path: Path) -> bool:
    """Whether a process on this host has `path` open: torch's FileBaton keeps its lock's fd open for
    the whole build, so a lock nobody holds was left by a process that died."""
    target = str(path.resolve())
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                return True
        except OSError:  # the process ended meanwhile, or belongs to another user
            continue
    return False


def clear_stale_build_locks(grace_s: float = 10.0, max_age_s: float = 300.0) -> list:
    """DeepSpeed JIT-builds (or just re-checks) its ops under torch's per-op `lock` file, and torch waits
    forever for a lock to go away. A rank killed while holding one (a job's timeout, Ctrl-C) leaves it
    behind and every later DeepSpeed job would hang in `preparing`. A lock is stale once no process on
    this host holds it open (older than `grace_s`: the moment between a release's close and its
    unlink), or, where there is no /proc to tell, once it is older than `max_age_s`. A live build's lock
    is waited for. The holder must be on this host: keep TORCH_EXTENSIONS_DIR node-local on clusters
    (docs/cluster.md)."""
    import time

    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    can_see_holders = Path("/proc/self/fd").is_dir()
    removed = []
    for lock in root.glob("*/lock") if root.is_dir() else []:
        while True:
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                break
            if (age > grace_s and not _held_open(lock)) if can_see_holders else age > max_age_s:
                lock.unlink(missing_ok=True)
                removed.append(str(lock))
                print(f"removed a stale torch-extension build lock ({age:.0f} s old): {lock}", flush=True)
                break
            time.sleep(0.5)
    return removed


def init_distributed(config: dict) -> None:
    """Bind this rank to its GPU and join the process group (NCCL on GPUs, gloo on the CPU).

    The collective timeout is the job's timeout: a rank left waiting for a dead peer gives up no later
    than the runner would kill it (the deepspeed launcher already kills the others when one exits).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    clear_stale_build_locks()  # init loads DeepSpeed's shm comm op on the CPU
    if config["num_gpus"] > 0:
        get_accelerator().set_device(local_rank())
    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                               timeout=datetime.timedelta(seconds=float(config["timeout_s"])))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def accelerator_name() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()
