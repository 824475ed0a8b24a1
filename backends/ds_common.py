"""What the two DeepSpeed backends share: the process group, devices, stale op-build locks.

Every rank of a `deepspeed --num_gpus N` job runs this; the launcher sets RANK, LOCAL_RANK, WORLD_SIZE,
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


def clear_stale_build_locks(max_age_s: float = 300.0) -> list:
    """DeepSpeed JIT-builds (or just re-checks) its ops under torch's per-op `lock` file, and torch waits
    forever for a lock to go away. A rank killed while holding one (a job's timeout, Ctrl-C) leaves it
    behind and every later DeepSpeed job would hang in `preparing`. Wait for the locks there are; one
    older than `max_age_s` (a real build takes about a minute) is stale and removed."""
    import time

    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    removed = []
    for lock in root.glob("*/lock") if root.is_dir() else []:
        while True:
            try:
                age = time.time() - lock.stat().st_mtime
            except FileNotFoundError:
                break
            if age > max_age_s:
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
