"""One job of the sweep: resume? -> resolve -> validate -> prepare the model -> launch the worker -> collect."""
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from backends.synthetic import checkpoint_dir, checkpoint_ready
from core.jobdir import (
    LOG_FILE,
    PHASE_FILE,
    RESULT_FILE,
    SESSION_DIR,
    CorruptResult,
    Job,
    Lease,
    Result,
    attempt_path,
    measurement_differences,
    new_result,
    new_run_id,
    next_attempt,
    read_attempt,
    read_lease,
    read_result,
    read_sweep,
    scheduler,
    set_aside,
    storage_error,
    write_attempt,
    write_job,
    write_lease,
    write_result,
)
from core.phases import durations, overhead_share
from core.rounds import add_round, rounds_done
from runner import multinode
from runner.callbacks import bad_input
from runner.config import resolve, unknown_key
from runner.failure import failure_reason, signal_death
from runner.launch import launcher_command, master_port, release_shared_memory, run_process
from runner.progress import Progress, job_label
from runner.session import WorkerSession, close_session, session_for, shares_worker
from runner.stack import interpreter, probe, visible_gpus
from runner.storage import stop_when_unwritable
from runner.validate import invalid_reason, preflight_reason


def _sweep_position() -> tuple:
    """(run_id, job index, total jobs, sweep start time, sweep dir, this run's invocation id) from Hydra and
    the sweep's sweep.json."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return new_run_id(), 0, 1, time.time(), None, None
    info = read_sweep(Path(hc.sweep.dir))
    total = info.get("total", hc.job.num + 1)
    return (info.get("run_id", new_run_id()), hc.job.num, total, info.get("started", time.time()), str(hc.sweep.dir),
            info.get("invocation"))


# Finished results that a sweep run again in the same directory keeps, by `rerun` (config.Rerun):
# ok and oom are measurements of the configuration on this machine; error and timeout are outcomes of
# one attempt (a crash, a kill, a hang, a busy machine), so rerun=failed tries them again; invalid is
# checked again too: it costs no model load, and depends on the machine (GPUs visible, libraries, paths).
KEEP = {"none": ("ok", "oom", "invalid", "error", "timeout"), "failed": ("ok", "oom"), "all": ()}


def earlier_result(job_dir: Path, config: dict, move: bool = True) -> tuple:
    """(the result the job directory holds for this measurement, or None; why the job runs: "" when there was
    nothing there).

    A corrupt result.json is reported by name, set aside (result.json.corrupt) and the job runs again;
    so does a result of another measurement (another sweep run into the same directory: Hydra numbers
    jobs by position, so the directory alone is not the key), set aside as result.json.previous.
    move=False (a dry run): nothing is set aside, the reason says it would be.
    """
    path = job_dir / RESULT_FILE
    if not path.exists():
        return None, ""

    def aside(why: str) -> str:
        return f"moved to {set_aside(job_dir, why).name}" if move else f"to be moved to {RESULT_FILE}.{why}"

    try:
        result = read_result(job_dir)
    except CorruptResult as e:
        return None, f"{e}; {aside('corrupt')}, the job runs again"
    changed = measurement_differences(result.config, config)
    if changed:
        return None, (f"{path} is the result of another config ({', '.join(changed[:6])} differ); "
                      f"{aside('previous')}, the job runs again")
    return result, ""


def finished_result(job_dir: Path, config: dict, invocation: str | None, move: bool = True) -> tuple:
    """(the result to build on, whether it already answers this round, why the job runs).

    A result this run of the sweep wrote (its `invocation`: an earlier round) is always built on. One from an
    earlier run is kept by `rerun`: its rounds that measured the point count, and the job runs only for
    the rounds it lacks. move: as earlier_result's."""
    result, why = earlier_result(job_dir, config, move)
    this_run = result is not None and invocation is not None and result.get("invocation") == invocation
    if result is not None and not this_run and result.status not in KEEP[config["rerun"]]:
        result, why = None, f"earlier result was {result.status}: rerun={config['rerun']} runs it again"
    if result is None:
        return None, False, why
    return result, result.status != "ok" or rounds_done(result) >= config["round"], ""


def _log_since(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _run_in_session(job: Job, job_dir: Path, python: str, progress: Progress, starts: dict) -> tuple:
    """isolate=false: measure in the worker that already holds this model, or start one (the job's launch
    phase starts with the worker's, or with the hand-over). Returns (exit code or None, where in the
    session's log this job's output starts)."""
    config = job.config
    session_dir = job_dir / SESSION_DIR / f"{job.attempt:04d}"  # a session of its own: no stale job files
    session = session_for(config, lambda key: WorkerSession(
        key, launcher_command(config, python, session_dir, visible_gpus()), session_dir))
    job.log = str(session.log_path)
    write_job(job_dir, job)
    with open(job_dir / LOG_FILE, "a") as log:
        log.write(f"measured in the shared worker of {session.session_dir}; its log: {session.log_path}\n")
    _take_lease(job_dir, job.attempt, session.proc.pid, master_port(session.proc.args))
    offset = _size(session.log_path)
    starts["launch"] = session.started if session.jobs == 0 else time.time()
    return session.run(job_dir, attempt_path(job_dir, job.attempt), config["timeout_s"], progress.tick), offset


def run_job(cfg: DictConfig) -> Result | dict:
    """The job of Hydra's current job directory. On a follower node of a multi-node job: start this node's
    ranks instead (follow). On the first node, the followers are released however the job ends (invalid,
    kept from an earlier run, failed before launching, or done), so that none waits in vain. A write that fails
    for lack of space stops the runner in one line (runner/storage.py)."""
    config = resolve(cfg)
    if HydraConfig.get().mode != RunMode.MULTIRUN:  # a multirun checks every job before its first one
        if config["dry_run"]:
            bad_input("dry_run=true: a dry run plans a sweep (allowed with -m)")
        problem = unknown_key(cfg) or preflight_reason(config, visible_gpus())
        if problem:
            bad_input(problem)
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    with stop_when_unwritable(job_dir.parent if HydraConfig.get().mode == RunMode.MULTIRUN else job_dir):
        job_dir.mkdir(parents=True, exist_ok=True)
        if multinode.follower(config):
            return follow(config, job_dir)
        try:
            return _run_job(config, job_dir)
        finally:
            multinode.release(config, job_dir, launch=False)


def _take_lease(job_dir: Path, attempt: int, pgid: int | None, port: int | None = None) -> None:
    write_lease(job_dir, Lease(attempt=attempt, host=socket.gethostname(), pid=os.getpid(), pgid=pgid,
                               started=time.time(), master_port=port))


def end_orphans(job_dir: Path) -> str | None:
    """What an earlier attempt left behind when its runner died (kill -9 of the runner leaves the launcher
    and its ranks running, in a process group of their own, and their DeepSpeed shared-memory segments in
    /dev/shm): its whole process group is ended, then the segments of its master port are removed, before
    the job runs again. Returns what was done, or None. Only on the host that started them."""
    lease = read_lease(job_dir)
    if lease is None or lease.host != socket.gethostname() or lease.pid == os.getpid():
        return None
    ended = _end_group(lease.pgid) if lease.pgid else 0
    freed = release_shared_memory(lease.master_port)
    if not ended and not freed:
        return None
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.started))
    done = (f"ended {ended} process(es) of attempt {lease.attempt} left running by runner pid {lease.pid} "
            f"(process group {lease.pgid}, started {since})" if ended else
            f"attempt {lease.attempt} of runner pid {lease.pid} (started {since}) left no process running")
    if freed:
        done += f"; removed its {len(freed)} shared-memory segment(s) (/dev/shm, master port {lease.master_port})"
    return done


def _end_group(pgid: int) -> int:
    """End every process of process group `pgid` (SIGTERM, SIGCONT, SIGKILL after 5 s); how many there were."""
    members = [p for p in psutil.process_iter() if _in_group(p, pgid)]
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for p in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
    _, alive = psutil.wait_procs(members, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(members)


def _in_group(process: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(process.pid) == pgid
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


# When the job that runs next was handed to this process: the end of the previous job, or the process's start
# (its import of this module) for its first job, which thus carries the runner's own start and the checks
# before the sweep (core/phases.py: queued).
_handed: dict = {"at": time.time()}


def record_phases(result: Result, starts: dict) -> None:
    """Add the job's phases to its result: the runner's own (`starts`: queued, build, launch) and the worker's
    (the result's phase_starts), ending now, before the result is written."""
    merged = {**starts, **(result.get("phase_starts") or {})}
    phases = durations(merged, time.time())
    result.fields.update(phase_starts=merged, phases_s=phases, overhead_share=overhead_share(phases))


def _run_job(config: dict, job_dir: Path) -> Result:
    try:
        return _run_job_phases(config, job_dir, {"queued": _handed["at"]})
    finally:
        _handed["at"] = time.time()


def _run_job_phases(config: dict, job_dir: Path, starts: dict) -> Result:
    """_run_job, its phases starting with `starts` (queued)."""
    run_id, index, total, started, sweep_dir, invocation = _sweep_position()
    log_path = job_dir / LOG_FILE
    job = Job(run_id=run_id, job=index, config=config, log=str(log_path), job_dir=str(job_dir), sweep_dir=sweep_dir)
    progress = Progress(index, total, started, job_dir, job_label(config))
    ended = end_orphans(job_dir)
    if ended:
        progress.phase(ended)
    previous, done, why = finished_result(job_dir, config, invocation)
    if done:
        progress.done(previous, earlier=True)
        return previous
    if why:
        progress.phase(why)
    began = time.time()
    try:
        result = _run(job, job_dir, log_path, progress, starts)
    except KeyboardInterrupt as e:
        _interrupted(log_path, e)
        raise
    if job.attempt:  # it launched: the attempt's outcome in its own file too, where the worker wrote none
        result.fields["attempt"] = job.attempt  # (killed, timed out): every attempt a runner saw end is listed
        write_attempt(job_dir, job.attempt, result)
    if config["round"] == 0:  # the sweep's warm-up process: reported, never kept, its worker not reused
        close_session()
        progress.done(result)
        return result
    record_phases(result, starts)
    result = add_round(previous, result, config["round"], began)
    result.fields["invocation"] = invocation  # which run of the sweep wrote it (rounds build on their own run's)
    result.fields.setdefault("env", {})["scheduler"] = scheduler()  # this runner's SLURM job, or None
    write_result(job_dir, result)
    progress.done(result)
    return result


def _interrupted(log_path: Path, exc: KeyboardInterrupt) -> None:
    """The runner was interrupted during this job (its processes are already ended): say so in the log. The
    job's result.json is untouched (the worker writes only its attempt's file), so a resume finds the
    result of before, if there was one, and runs the job again otherwise."""
    with open(log_path, "a") as log:
        log.write(f"\n=== interrupted ({exc or 'SIGINT'}): the job's processes were ended; "
                  "its earlier result, if any, is kept; it runs again on resume\n")


def _ended_ok(job_dir: Path, attempt: int) -> bool:
    """Whether the worker wrote an `ok` result; a job that did not end ok keeps its processes until they exit,
    so that how they ended (a rank's signal, the launcher's words) can name the cause."""
    try:
        result = read_attempt(job_dir, attempt)
    except CorruptResult:
        return False
    return result is not None and result.status == "ok"


def _build_checkpoint(python: str, config: dict, job_dir: Path, log_path: Path) -> tuple:
    """Build the job's synthetic checkpoint in a process of its own, before the launch (so that its time is
    never load time, and ranks never race to build it): (exit code or None on timeout, log offset). A build
    that failed while the cache takes no byte (a full disk, a read-only file system) raises that error naming
    the checkpoint: the disk's fault stops the sweep (runner/storage.py) where every job after it would fail
    the same way. The builder has removed its partial copy (backends/synthetic.py)."""
    offset = _size(log_path)
    rc = run_process([python, "-m", "backends.synthetic", str(job_dir)], log_path, config["timeout_s"])
    if rc:
        refused = storage_error(checkpoint_dir(config))
        if refused:
            raise refused
    return rc, offset


def _last_phase(job_dir: Path) -> str:
    """Where a job that timed out was: the last phase its worker reported (the phases file), if any."""
    path = job_dir / PHASE_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return f"the worker was at: {lines[-1]}" if lines else "the worker reported no phase: it was starting or importing"


def _run(job: Job, job_dir: Path, log_path: Path, progress: Progress, starts: dict) -> Result:
    config = job.config
    python = interpreter(config["stack"])
    try:
        stack = probe(python)
    except ValueError as e:
        return new_result(job, "invalid", str(e))
    reason = invalid_reason(config, stack, visible_gpus())
    if reason:
        return new_result(job, "invalid", reason)

    (job_dir / PHASE_FILE).unlink(missing_ok=True)
    job.attempt = next_attempt(job_dir)
    _take_lease(job_dir, job.attempt, None)
    write_job(job_dir, job)
    if config["model"]["source"] == "synthetic" and not checkpoint_ready(config):
        progress.phase("building synthetic checkpoint")
        starts["build"] = time.time()
        rc, offset = _build_checkpoint(python, config, job_dir, log_path)
        if rc is None:
            return new_result(job, "timeout", f"building the synthetic checkpoint took over timeout_s={config['timeout_s']}")
        if rc != 0:
            return new_result(job, "error", "building the synthetic checkpoint failed: "
                              + failure_reason(_log_since(log_path, offset), rc))

    progress.phase("launching")
    multinode.release(config, job_dir, launch=True)  # multi-node: the other nodes start their ranks too
    if not shares_worker(config):
        cmd = launcher_command(config, python, job_dir, visible_gpus())
        offset = _size(log_path)
        starts["launch"] = time.time()
        rc = run_process(cmd, log_path, config["timeout_s"], on_tick=progress.tick,
                         finished=lambda: _ended_ok(job_dir, job.attempt),
                         on_start=lambda proc: _take_lease(job_dir, job.attempt, proc.pid, master_port(proc.args)))
    else:
        rc, offset = _run_in_session(job, job_dir, python, progress, starts)
    progress.tick()
    try:  # the result of this attempt only: a late writer of an earlier one can never count
        result = read_attempt(job_dir, job.attempt)
    except CorruptResult as e:
        return new_result(job, "error", f"the worker left a {e}")
    if result is not None:
        if shares_worker(config) and result.status != "ok":
            close_session()  # the worker ends after a job that is not ok: the next job starts a fresh one
        if result.status == "error" and rc:
            # A rank that died of a signal writes nothing; a peer that saw it go reports `error` first
            # (gloo/NCCL: connection reset). Name the cause before the symptom.
            death = signal_death(_log_since(Path(job.log), offset))
            if death:
                result.reason = f"a rank was {death}; then: {result.reason}"
        return result
    if rc is None:
        return new_result(job, "timeout", f"no result within timeout_s={config['timeout_s']} ({_last_phase(job_dir)})")
    return new_result(job, "error", failure_reason(_log_since(Path(job.log), offset), rc))


def follow(config: dict, job_dir: Path) -> dict:
    """A follower node's runner: once the first node says go, start this node's ranks under the job's
    timeout, their output in job.node<K>.log. Writes no result: a rank that fails here writes it itself
    (backends/worker.py), and the first node's runner reports everything else."""
    node_rank = int(os.environ.get("SLURM_NODEID") or 0)
    log_path = job_dir / f"job.node{node_rank}.log"
    # the first node may build the synthetic checkpoint (up to timeout_s) before it launches
    if not multinode.wait_for_release(job_dir, 2 * config["timeout_s"] + 300):
        with open(log_path, "a") as log:
            log.write("the first node did not launch the job (invalid, failed before launch, or no word)\n")
        return {"status": "skipped", "node_rank": node_rank}
    python = interpreter(config["stack"])
    if config["model"]["source"] == "synthetic" and not checkpoint_ready(config):  # a node-local cache_dir
        _build_checkpoint(python, config, job_dir, log_path)
    rc = run_process(launcher_command(config, python, job_dir, visible_gpus()), log_path, config["timeout_s"])
    return {"status": "launched", "node_rank": node_rank, "exit_code": rc}
