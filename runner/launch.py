"""The launcher command for a job, and running it as one process tree under a timeout."""
import os
import signal
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
    raise ValueError(f"backend={backend}: no launcher")


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
