"""Load once, sweep many: one launched worker that keeps its model loaded and measures job after job.

With `isolate=false`, consecutive jobs that differ only in generation keys (batch size, tokens,
repeats, timeout) are handed to the same worker through numbered files in a session directory;
every rank reads them, rank 0 writes each job's result.json. A job whose worker dies or times out
ends the session; the next job starts a fresh one.
"""
import atexit
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from runner.launch import job_environment, kill_tree
from runner.result import RESULT_FILE

GENERATION_KEYS = ("batch_size", "new_tokens", "prompt_tokens", "repeats", "timeout_s", "profile")
STOP_FILE = "stop"
SESSION_MARKER = "session"  # a launched worker given a directory holding this file serves it


def session_key(config: dict) -> str:
    """Jobs with equal keys can share a loaded model."""
    return json.dumps({k: v for k, v in config.items() if k not in GENERATION_KEYS}, sort_keys=True)


def job_file(session_dir: Path, n: int) -> Path:
    return session_dir / f"job-{n:05d}"


class WorkerSession:
    def __init__(self, key: str, cmd: list, session_dir: Path):
        self.key, self.session_dir, self.jobs = key, session_dir, 0
        session_dir.mkdir(parents=True, exist_ok=True)
        (session_dir / SESSION_MARKER).write_text(key)
        self.log_path = session_dir / "worker.log"
        with open(self.log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=job_environment(),
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job_dir: Path, timeout_s: float, on_tick: Callable[[], None]) -> int | None:
        """Hand the job to the worker and wait for its result: 0 when it came, the worker's exit code
        if it died first, None on timeout (the session is then killed)."""
        path = job_file(self.session_dir, self.jobs)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(job_dir))
        os.replace(tmp, path)
        self.jobs += 1
        deadline = time.monotonic() + timeout_s
        try:
            while not (job_dir / RESULT_FILE).exists():
                if not self.alive():
                    self.close(kill=True)  # what the launcher left behind (a rank, a worker it lost)
                    return self.proc.returncode
                if time.monotonic() > deadline:
                    self.close(kill=True)
                    return None
                time.sleep(0.2)
                on_tick()
            return 0
        except BaseException:
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        if self.alive() and not kill:
            (self.session_dir / STOP_FILE).write_text("")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_tree(self.proc)  # also ends what an exited launcher left behind


_current: WorkerSession | None = None


def session_for(key: str, start: Callable[[], WorkerSession]) -> WorkerSession:
    """The live session for `key`, or a new one (closing the session of another key)."""
    global _current
    if _current is not None and (_current.key != key or not _current.alive()):
        close_session()
    if _current is None:
        _current = start()
    return _current


def close_session(kill: bool = False) -> None:
    """End the shared worker: asked to stop (it finishes nothing more), or killed with its whole tree
    (kill=True: the runner was interrupted)."""
    global _current
    if _current is not None:
        _current.close(kill=kill)
        _current = None


atexit.register(close_session)
