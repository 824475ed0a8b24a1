"""Load once, sweep many: one launched worker that keeps its model loaded and measures job after job.

With `isolate=false`, consecutive jobs whose configs have the same load key (core/jobdir.py: they differ
only in batch size, token counts, or keys that are not measured) are handed to the same worker through
numbered files in a session directory; every rank reads them, rank 0 writes each job's attempt result. A job
whose worker dies or times out ends the session; the next job starts a fresh one.
"""
import atexit
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from core.jobdir import SESSION_MARKER, STOP_FILE, atomic_write, load_key, session_job_file
from runner.launch import POLL_S, job_environment, kill_tree


def shares_worker(config: dict) -> bool:
    """Whether the job goes to a shared worker: isolate=false on one node (a multi-node job launches its
    ranks on every node itself)."""
    return not config["isolate"] and config["num_nodes"] == 1


class WorkerSession:
    def __init__(self, key: str, cmd: list, session_dir: Path):
        self.key, self.session_dir, self.jobs = key, session_dir, 0
        session_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(session_dir / SESSION_MARKER, key)
        self.log_path = session_dir / "worker.log"
        self.started = time.time()  # the first job's launch phase starts here
        with open(self.log_path, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=job_environment(),
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job_dir: Path, result_path: Path, timeout_s: float, on_tick: Callable[[], None]) -> int | None:
        """Hand the job to the worker and wait for its attempt's result file: 0 when it came, the worker's
        exit code if it died first, None on timeout (the session is then killed)."""
        atomic_write(session_job_file(self.session_dir, self.jobs), str(job_dir))
        self.jobs += 1
        deadline = time.monotonic() + timeout_s
        try:
            while not result_path.exists():
                if not self.alive():
                    self.close(kill=True)  # what the launcher left behind (a rank, a worker it lost)
                    return self.proc.returncode
                if time.monotonic() > deadline:
                    self.close(kill=True)
                    return None
                time.sleep(POLL_S)
                on_tick()
            return 0
        except BaseException:
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        if self.alive() and not kill:
            atomic_write(self.session_dir / STOP_FILE, "")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        kill_tree(self.proc)  # also ends what an exited launcher left behind


_current: WorkerSession | None = None


def session_for(config: dict, start: Callable[[str], WorkerSession]) -> WorkerSession:
    """The live session that holds this job's model (same load key, same round: a round is a process of its
    own), or a new one, start(key), closing the session of another key."""
    global _current
    key = f"{load_key(config)} round={config.get('round', 1)}"
    if _current is not None and (_current.key != key or not _current.alive()):
        close_session()
    if _current is None:
        _current = start(key)
    return _current


def close_session(kill: bool = False) -> None:
    """End the shared worker: asked to stop (it finishes nothing more), or killed with its whole tree
    (kill=True: the runner was interrupted)."""
    global _current
    if _current is not None:
        _current.close(kill=kill)
        _current = None


atexit.register(close_session)
