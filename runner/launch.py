"""The launcher command for a job, and running it as one process tree under a timeout."""
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WORKER = "backends.worker"


def launcher_command(config: dict, python: str, job_dir: Path, gpu_ids: tuple) -> list:
    """The real launcher CLI for the job's backend, run by the stack's interpreter."""
    n = config["num_gpus"]
    backend = config["backend"]["name"]
    if backend == "accelerate":
        # One process that spreads the layers over the job's GPUs (Accelerate's big-model inference).
        cmd = [python, "-m", "accelerate.commands.accelerate_cli", "launch",
               "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd += ["--cpu"] if n == 0 else ["--gpu_ids", ",".join(gpu_ids[:n])]
        return cmd + ["--module", WORKER, str(job_dir)]
    if backend in ("ds-inference", "ds-zero"):
        return deepspeed_command(config, python, job_dir, gpu_ids)
    raise ValueError(f"backend={backend}: no launcher")


def world_size(config: dict) -> int:
    """Ranks a DeepSpeed job starts: one per GPU, or `cpu_ranks` processes on the CPU."""
    return config["num_gpus"] or config["cpu_ranks"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_command(config: dict, python: str, job_dir: Path, gpu_ids: tuple) -> list:
    """`deepspeed --num_gpus N --module backends.worker JOB_DIR` (the CLI's own module, run by the stack's
    interpreter so the launcher and its ranks use the stack's DeepSpeed).

    Environment, set on the command line so that the log shows it: OMP_NUM_THREADS = cores / ranks
    (CPU ranks otherwise oversubscribe the cores many times over); on the CPU, LOCAL_SIZE = ranks, which
    is how DeepSpeed's CPU accelerator counts its "devices" (without it the launcher sees one per NUMA
    node and refuses --num_gpus 2), and DS_ACCELERATOR=cpu so that a GPU box honours num_gpus=0.
    """
    n, world = config["num_gpus"], world_size(config)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = [f"OMP_NUM_THREADS={max(1, cores // world)}"]
    if n == 0:
        env += [f"LOCAL_SIZE={world}", "DS_ACCELERATOR=cpu"]
    cmd = ["env", *env, python, "-m", "deepspeed.launcher.runner"]
    ids = tuple(gpu_ids[:n])
    if n == 0 or ids == tuple(str(i) for i in range(n)):
        cmd += ["--num_gpus", str(world)]
    else:  # GPUs that are not the first n: name them (DeepSpeed ignores CUDA_VISIBLE_DEVICES with --num_gpus)
        cmd += ["--include", "localhost:" + ",".join(ids)]
    # --no_local_rank: ranks read LOCAL_RANK from the environment; the job dir stays the last argument.
    return cmd + ["--no_local_rank", "--master_port", str(free_port()), "--module", WORKER, str(job_dir)]


def job_environment() -> dict:
    """The worker imports this project's packages from the source tree, whatever the stack."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kill_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the launcher and every descendant (ranks included), SIGKILL what outlives the grace."""
    try:
        procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    proc.wait()


def run_process(cmd: list, log_path: Path, timeout_s: float, env: dict | None = None,
                on_tick: Callable[[], None] = lambda: None) -> int | None:
    """Run `cmd` with its output appended to `log_path`; its exit code, or None if it timed out.

    The process tree is killed on timeout and on any interruption of the runner (Ctrl-C included).
    """
    deadline = time.monotonic() + timeout_s
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or job_environment(),
                                start_new_session=True)
        try:
            while True:
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    on_tick()
                    if time.monotonic() > deadline:
                        kill_tree(proc)
                        return None
        except BaseException:
            kill_tree(proc)
            raise
