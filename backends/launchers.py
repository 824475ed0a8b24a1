"""The real launcher CLIs that start a job's worker: `accelerate launch` and `deepspeed`. Torch-free.

A backend's spec picks one of these as its `command` (or brings its own of the same signature).
"""
import base64
import json
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


def world_info(ids: list) -> str:
    """DeepSpeed's `--world_info` for one node: {"localhost": [ids]}, JSON in URL-safe base64, as
    deepspeed.launcher.runner encodes it."""
    ids = [int(i) if str(i).isdigit() else i for i in ids]
    return base64.urlsafe_b64encode(json.dumps({"localhost": ids}).encode()).decode()


def deepspeed_launch(config: dict, launch: Launch) -> list:
    """DeepSpeed's launcher, run by the stack's interpreter so the launcher and its ranks use the stack's
    DeepSpeed. On one node: `deepspeed.launcher.launch --world_info=... --module --no_local_rank
    backends.worker JOB_DIR`, the command the `deepspeed` CLI (deepspeed.launcher.runner) builds and runs
    for a single node, started here directly: the CLI would import all of deepspeed (4.5 s on a CPU
    machine) only to encode the ranks' placement. Over several nodes, the CLI itself, with the hostfile and
    node rank of runner/multinode.py.

    Environment, set on the command line so that the log shows it: OMP_NUM_THREADS = cores / ranks
    (CPU ranks otherwise oversubscribe the cores many times over); on the CPU, LOCAL_SIZE = ranks, which
    is how DeepSpeed's CPU accelerator counts its "devices", and DS_ACCELERATOR=cpu so that a GPU box
    honours num_gpus=0.
    """
    n, world = config["num_gpus"], launch.ranks_per_node
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = [f"OMP_NUM_THREADS={max(1, cores // world)}"]
    if n == 0:
        env += [f"LOCAL_SIZE={world}", "DS_ACCELERATOR=cpu"]
    python = ["env", *env, launch.python]
    if launch.nodes_args:  # num_nodes > 1: hostfile, master addr/port, node rank
        return [*python, "-m", "deepspeed.launcher.runner", *launch.nodes_args, "--no_local_rank", "--module", WORKER,
                str(launch.job_dir)]
    # the ranks' devices: CPU "devices" 0..world-1, else the job's GPUs by id (the launcher sets
    # CUDA_VISIBLE_DEVICES to them); --no_local_rank: ranks read LOCAL_RANK from the environment
    ids = list(range(world)) if n == 0 else list(launch.gpu_ids[:n])
    return [*python, "-u", "-m", "deepspeed.launcher.launch", "--world_info", world_info(ids), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), "--module", "--no_local_rank", WORKER, str(launch.job_dir)]
