"""The launcher command for a job, and running it as one process tree under a timeout."""
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from backends import lookup
from backends.launchers import Launch
from runner import multinode

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def launcher_command(config: dict, python: str, job_dir: Path, gpu_ids: tuple) -> list:
    """The real launcher CLI that starts the job's worker, as its backend's spec builds it, run by the stack's
    interpreter; a multi-node job gets DeepSpeed's placement over its nodes (runner/multinode.py)."""
    spec = lookup(config["backend"]["name"])
    launch = Launch(python=python, job_dir=Path(job_dir), gpu_ids=tuple(gpu_ids),
                    ranks_per_node=spec.ranks_per_node(config),
                    nodes_args=multinode.deepspeed_args(config, job_dir) if spec.multinode else None)
    return spec.command(config, launch)


def job_environment() -> dict:
    """The worker imports this project's packages from the source tree, whatever the stack. Every Python
    process of the job dumps its stack on a fatal signal (SIGSEGV, SIGABRT, ...) into the job's log."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


class Interrupted(KeyboardInterrupt):
    """The runner got SIGINT (Ctrl-C), SIGTERM or SIGHUP. A KeyboardInterrupt, so that it passes through
    Hydra (which turns a job's Exception into a failed job and goes on) and every cleanup on the way out
    runs: the job's process tree is killed, no result is written, the sweep exits 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stopping: list = []  # the signal being handled; a repeat must not interrupt the cleanup it started


def _on_stop_signal(signum: int, frame: object) -> None:
    if _stopping:
        sys.stderr.write(f"\n{signal.Signals(signum).name} again: already stopping, ending the job's processes\n")
        return
    _stopping.append(signum)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted in the main thread (SIGTERM's default would end Python
    at once, leaving the job's launcher and ranks running in their own session)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)


def _signal_all(procs: list, sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _tree(proc: subprocess.Popen) -> list:
    """Every process under the launcher, and every member of its process group: the launcher was started
    in a session of its own, and ranks whose launcher died are orphans, no longer under it, but still in
    that group. (Linux does not reuse a pid while a process group of that id has members, so the group is
    safe to look up after the launcher was reaped; its children only while it was not.)"""
    found = {}
    if proc.returncode is None:
        try:
            found = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter():
        try:
            if p.pid != proc.pid and p.pid not in found and os.getpgid(p.pid) == proc.pid:
                found[p.pid] = p
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return list(found.values())


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_ended(procs: list, timeout_s: float) -> list:
    """Those of `procs` still running after up to `timeout_s`. A zombie has ended (its memory, GPU memory
    included, is freed): a rank whose launcher died first waits for init to reap it, which on the CPU
    test machine took 2 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in procs if not _ended(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


def kill_tree(proc: subprocess.Popen, grace_s: float = 5.0, at_once: bool = False) -> None:
    """End the launcher and every process of its tree and group (ranks included): SIGTERM, then SIGKILL
    what outlives the grace. A stopped process (SIGSTOP, a debugger) is continued so that it can act on
    the SIGTERM. Also what ends the leftovers of a launcher that exited on its own (one killed by a
    signal leaves its worker running). at_once: SIGKILL with no SIGTERM and no grace, for a job whose result
    is written (the launchers' own shutdown on SIGTERM took 2 s per job, and there is nothing left to save)."""
    procs = _tree(proc)
    wait_s = 0.0 if at_once else grace_s
    for sig in () if at_once else (signal.SIGTERM, signal.SIGCONT):
        _signal_all(procs, sig)
        if proc.returncode is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
    alive = _wait_ended(procs, wait_s)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
    _signal_all(alive, signal.SIGKILL)
    _wait_ended(alive, grace_s)
    proc.wait()
    release_shared_memory(master_port(proc.args))


def master_port(cmd: list) -> int | None:
    """The master port a DeepSpeed launcher command names (--master_port), else None."""
    return int(cmd[cmd.index("--master_port") + 1]) if "--master_port" in cmd else None


def release_shared_memory(port: int | None) -> list:
    """Remove the shared-memory allreduce buffers of a DeepSpeed job on the CPU: its ranks never unlink
    them (/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>, about 64 MiB per rank), and a
    CPU sweep filled a 24 GB machine's /dev/shm with them. The job's master port names them; a segment that
    a live process still maps (another job that took the same port since) is left alone. Returns the
    segments removed."""
    if port is None:
        return []
    segments = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))
    if not segments:
        return []
    in_use = _mapped()
    removed = [path for path in segments if str(path) not in in_use]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _mapped() -> set:
    """The files that the processes of this host map (from /proc/<pid>/maps)."""
    found = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process ended meanwhile, or belongs to another user
            continue
        for line in text.splitlines():
            fields = line.split(None, 5)  # address, perms, offset, device, inode[, path]
            if len(fields) == 6:
                found.add(fields[5])
    return found


POLL_S = 0.1  # how often a running job's process, its progress and its result file are looked at


def run_process(cmd: list, log_path: Path, timeout_s: float, env: dict | None = None,
                on_tick: Callable[[], None] = lambda: None, finished: Callable[[], bool] = lambda: False,
                on_start: Callable[[subprocess.Popen], None] = lambda proc: None) -> int | None:
    """Run `cmd` with its output appended to `log_path`; its exit code, or None if it timed out.

    The process tree is killed on timeout and on any interruption of the runner (Ctrl-C included), and
    once `finished()` says its work is done (on_start(proc) is told of the process first): the launchers' own shutdown (DeepSpeed's polls every second,
    then every rank tears down its interpreter) took seconds per job after the result was written; 0 then.
    Both are looked at every POLL_S.
    """
    deadline = time.monotonic() + timeout_s
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env or job_environment(),
                                start_new_session=True)
        try:
            on_start(proc)
            while True:
                try:
                    rc = proc.wait(timeout=POLL_S)
                    kill_tree(proc)  # what the launcher left behind, if anything
                    return rc
                except subprocess.TimeoutExpired:
                    on_tick()
                    if finished():
                        kill_tree(proc, at_once=True)
                        return 0
                    if time.monotonic() > deadline:
                        kill_tree(proc)
                        return None
        except BaseException:
            kill_tree(proc)
            raise
