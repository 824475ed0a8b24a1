"""One job of the sweep: resume? -> resolve -> validate -> prepare the model -> launch the worker -> collect."""
import os
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from backends.synthetic import checkpoint_ready
from core.jobdir import (
    LOG_FILE,
    PHASE_FILE,
    RESULT_FILE,
    SESSION_DIR,
    CorruptResult,
    Job,
    Result,
    measurement_differences,
    new_result,
    new_run_id,
    read_result,
    read_sweep,
    set_aside,
    write_job,
    write_result,
)
from runner import multinode
from runner.config import resolve
from runner.failure import failure_reason, signal_death
from runner.launch import launcher_command, run_process
from runner.progress import Progress, job_label
from runner.session import WorkerSession, close_session, session_for
from runner.stack import interpreter, probe, visible_gpus
from runner.validate import invalid_reason


def _sweep_position() -> tuple:
    """(run_id, job index, total jobs, sweep start time, sweep dir) from Hydra and the sweep's sweep.json."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return new_run_id(), 0, 1, time.time(), None
    info = read_sweep(Path(hc.sweep.dir))
    total = info.get("total", hc.job.num + 1)
    return info.get("run_id", new_run_id()), hc.job.num, total, info.get("started", time.time()), str(hc.sweep.dir)


# Finished results that a sweep run again in the same directory keeps, by `rerun` (config.Rerun):
# ok and oom are measurements of the configuration on this machine; error and timeout are outcomes of
# one attempt (a crash, a kill, a hang, a busy machine), so rerun=failed tries them again; invalid is
# checked again too: it costs no model load, and depends on the machine (GPUs visible, libraries, paths).
KEEP = {"none": ("ok", "oom", "invalid", "error", "timeout"), "failed": ("ok", "oom"), "all": ()}


def finished_result(job_dir: Path, config: dict) -> tuple:
    """(the job's earlier result, "") when the job directory holds one that counts as finished for this
    config and `rerun`, else (None, why the job runs: "" when there was nothing to keep).

    A corrupt result.json is reported by name, set aside (result.json.corrupt) and the job runs again;
    so does a result of another measurement (another sweep run into the same directory: Hydra numbers
    jobs by position, so the directory alone is not the key), set aside as result.json.previous.
    """
    path = job_dir / RESULT_FILE
    if not path.exists():
        return None, ""
    try:
        result = read_result(job_dir)
    except CorruptResult as e:
        aside = set_aside(job_dir, "corrupt")
        return None, f"{e}; moved to {aside.name}, the job runs again"
    changed = measurement_differences(result.config, config)
    if changed:
        aside = set_aside(job_dir, "previous")
        return None, (f"{path} is the result of another config ({', '.join(changed[:6])} differ); "
                      f"moved to {aside.name}, the job runs again")
    rerun = config["rerun"]
    if result.status not in KEEP[rerun]:
        return None, f"earlier result was {result.status}: rerun={rerun} runs it again"
    return result, ""


def _log_since(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _run_in_session(job: Job, job_dir: Path, python: str, progress: Progress) -> tuple:
    """isolate=false: measure in the worker that already holds this model, or start one.
    Returns (exit code or None, where in the session's log this job's output starts)."""
    config = job.config
    session_dir = job_dir / SESSION_DIR
    session = session_for(config, lambda key: WorkerSession(
        key, launcher_command(config, python, session_dir, visible_gpus()), session_dir))
    job.log = str(session.log_path)
    write_job(job_dir, job)
    with open(job_dir / LOG_FILE, "a") as log:
        log.write(f"measured in the shared worker of {session.session_dir}; its log: {session.log_path}\n")
    offset = _size(session.log_path)
    return session.run(job_dir, config["timeout_s"], progress.tick), offset


def run_job(cfg: DictConfig) -> Result | dict:
    """The job of Hydra's current job directory. On a follower node of a multi-node job: start this node's
    ranks instead (follow). On the first node, the followers are released however the job ends (invalid,
    kept from an earlier run, failed before launching, or done), so that none waits in vain."""
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    config = resolve(cfg)
    if multinode.follower(config):
        return follow(config, job_dir)
    try:
        return _run_job(config, job_dir)
    finally:
        multinode.release(config, job_dir, launch=False)


def _run_job(config: dict, job_dir: Path) -> Result:
    run_id, index, total, started, sweep_dir = _sweep_position()
    log_path = job_dir / LOG_FILE
    job = Job(run_id=run_id, job=index, config=config, log=str(log_path), job_dir=str(job_dir), sweep_dir=sweep_dir)
    progress = Progress(index, total, started, job_dir, job_label(config))
    kept, why = finished_result(job_dir, config)
    if kept is not None:
        progress.done(kept, earlier=True)
        return kept
    if why:
        progress.phase(why)
    try:
        result = _run(job, job_dir, log_path, progress)
    except KeyboardInterrupt as e:
        _interrupted(job_dir, log_path, e)
        raise
    write_result(job_dir, result)
    progress.done(result)
    return result


def _interrupted(job_dir: Path, log_path: Path, exc: KeyboardInterrupt) -> None:
    """The runner was interrupted during this job (its processes are already ended): say so in the log, and
    leave no result that was only the interruption's doing, so that a resume runs the job again."""
    with open(log_path, "a") as log:
        log.write(f"\n=== interrupted ({exc or 'SIGINT'}): the job's processes were ended; "
                  "no result, it runs again on resume\n")
    try:
        result = read_result(job_dir)
    except CorruptResult:
        set_aside(job_dir, "interrupted")
        return
    if result is not None and result.status not in ("ok", "oom"):
        set_aside(job_dir, "interrupted")


def _ended_ok(job_dir: Path) -> bool:
    """Whether the worker wrote an `ok` result; a job that did not end ok keeps its processes until they exit,
    so that how they ended (a rank's signal, the launcher's words) can name the cause."""
    try:
        result = read_result(job_dir)
    except CorruptResult:
        return False
    return result is not None and result.status == "ok"


def _build_checkpoint(python: str, config: dict, job_dir: Path, log_path: Path) -> tuple:
    """Build the job's synthetic checkpoint in a process of its own, before the launch (so that its time is
    never load time, and ranks never race to build it): (exit code or None on timeout, log offset)."""
    offset = _size(log_path)
    rc = run_process([python, "-m", "backends.synthetic", str(job_dir)], log_path, config["timeout_s"])
    return rc, offset


def _run(job: Job, job_dir: Path, log_path: Path, progress: Progress) -> Result:
    config = job.config
    python = interpreter(config["stack"])
    try:
        stack = probe(python)
    except ValueError as e:
        return new_result(job, "invalid", str(e))
    reason = invalid_reason(config, stack, visible_gpus())
    if reason:
        return new_result(job, "invalid", reason)

    for stale in (RESULT_FILE, PHASE_FILE):
        (job_dir / stale).unlink(missing_ok=True)
    write_job(job_dir, job)
    if config["model"]["source"] == "synthetic" and not checkpoint_ready(config):
        progress.phase("building synthetic checkpoint")
        rc, offset = _build_checkpoint(python, config, job_dir, log_path)
        if rc is None:
            return new_result(job, "timeout", f"building the synthetic checkpoint took over timeout_s={config['timeout_s']}")
        if rc != 0:
            return new_result(job, "error", "building the synthetic checkpoint failed: "
                              + failure_reason(_log_since(log_path, offset), rc))

    progress.phase("launching")
    multinode.release(config, job_dir, launch=True)  # multi-node: the other nodes start their ranks too
    if config["isolate"]:
        cmd = launcher_command(config, python, job_dir, visible_gpus())
        offset = _size(log_path)
        rc = run_process(cmd, log_path, config["timeout_s"], on_tick=progress.tick, finished=lambda: _ended_ok(job_dir))
    else:
        rc, offset = _run_in_session(job, job_dir, python, progress)
    progress.tick()
    try:
        result = read_result(job_dir)
    except CorruptResult as e:  # never read as a result
        aside = set_aside(job_dir, "corrupt")
        return new_result(job, "error", f"the worker left a {e}; moved to {aside.name}")
    if result is not None:
        if not config["isolate"] and result.status != "ok":
            close_session()  # the worker ends after a job that is not ok: the next job starts a fresh one
        if result.status == "error" and rc:
            # A rank that died of a signal writes nothing; a peer that saw it go reports `error` first
            # (gloo/NCCL: connection reset). Name the cause before the symptom.
            death = signal_death(_log_since(Path(job.log), offset))
            if death:
                result.reason = f"a rank was {death}; then: {result.reason}"
        return result
    if rc is None:
        return new_result(job, "timeout", f"no result within timeout_s={config['timeout_s']}")
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
