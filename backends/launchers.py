"""The real launcher CLIs that start a job's worker: `accelerate launch` and `deepspeed`. Torch-free.

A backend's spec picks one of these as its `command` (or brings its own of the same signature).
"""
import os
import socket
from dataclasses import dataclass
from pathlib import Path

WORKER = "backends.worker"


@dataclass(frozen=True)
class Launch:
    """Where and how a job's worker starts."""
    python: str               # the stack's interpreter: the launcher and the ranks run under it
    job_dir: Path             # the worker's job directory (or a shared worker's session directory)
    gpu_ids: tuple            # the GPUs visible to this job, by id
    ranks_per_node: int       # processes to start on each node
    nodes_args: list | None   # DeepSpeed's placement over several nodes (runner/multinode.py); None: one node


def accelerate_launch(config: dict, launch: Launch) -> list:
    """`accelerate launch --module backends.worker JOB_DIR`: one process that spreads the layers over the
    job's GPUs (Accelerate's big-model inference). The `launch` command's own module, which `accelerate
    launch` runs: the CLI's entry point first imports every other command too (`estimate` pulls in
    transformers and the hub client, 1.6 s of the launcher's 4.2 s of imports on a CPU machine)."""
    n = config["num_gpus"]
    cmd = [launch.python, "-m", "accelerate.commands.launch",
           "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--cpu"] if n == 0 else ["--gpu_ids", ",".join(launch.gpu_ids[:n])]
    return cmd + ["--module", WORKER, str(launch.job_dir)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launch(config: dict, launch: Launch) -> list:
    """`deepspeed --num_gpus N --module backends.worker JOB_DIR` (the CLI's own module, run by the stack's
    interpreter so the launcher and its ranks use the stack's DeepSpeed).

    Environment, set on the command line so that the log shows it: OMP_NUM_THREADS = cores / ranks
    (CPU ranks otherwise oversubscribe the cores many times over); on the CPU, LOCAL_SIZE = ranks, which
    is how DeepSpeed's CPU accelerator counts its "devices" (without it the launcher sees one per NUMA
    node and refuses --num_gpus 2), and DS_ACCELERATOR=cpu so that a GPU box honours num_gpus=0.
    """
    n, world = config["num_gpus"], launch.ranks_per_node
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = [f"OMP_NUM_THREADS={max(1, cores // world)}"]
    if n == 0:
        env += [f"LOCAL_SIZE={world}", "DS_ACCELERATOR=cpu"]
    cmd = ["env", *env, launch.python, "-m", "deepspeed.launcher.runner"]
    if launch.nodes_args:  # num_nodes > 1: hostfile, master addr/port, node rank
        return cmd + launch.nodes_args + ["--no_local_rank", "--module", WORKER, str(launch.job_dir)]
    ids = tuple(launch.gpu_ids[:n])
    if n == 0 or ids == tuple(str(i) for i in range(n)):
        cmd += ["--num_gpus", str(world)]
    else:  # GPUs that are not the first n: name them (DeepSpeed ignores CUDA_VISIBLE_DEVICES with --num_gpus)
        cmd += ["--include", "localhost:" + ",".join(ids)]
    # --no_local_rank: ranks read LOCAL_RANK from the environment; the job dir stays the last argument.
    return cmd + ["--no_local_rank", "--master_port", str(free_port()), "--module", WORKER, str(launch.job_dir)]
