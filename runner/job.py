"""One job of the sweep: resume? -> resolve -> validate -> prepare the model -> launch the worker -> collect."""
import json
import re
import secrets
import signal
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from backends.synthetic import checkpoint_ready
from runner import cluster
from runner.launch import launcher_command, run_process
from runner.progress import PHASE_FILE, Progress, job_label
from runner.result import RESULT_FILE, new_result, read_result, set_aside, write_result
from runner.session import WorkerSession, close_session, session_for, session_key
from runner.stack import interpreter, probe, visible_gpus
from runner.validate import invalid_reason

SWEEP_FILE = "sweep.json"
JOB_FILE = "job.json"
LOG_FILE = "job.log"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def resolve(cfg: DictConfig) -> dict:
    """The job's full config as plain data, with `num_gpus: null` resolved to what this machine has."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if config["num_gpus"] is None:
        config["num_gpus"] = 1 if visible_gpus() else 0
    return config


def _sweep_position() -> tuple:
    """(run_id, job index, total jobs, sweep start time) from Hydra and the sweep file the callback wrote."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return new_run_id(), 0, 1, time.time()
    sweep_dir = Path(hc.sweep.dir)
    info = json.loads((sweep_dir / SWEEP_FILE).read_text()) if (sweep_dir / SWEEP_FILE).exists() else {}
    total = info.get("total", hc.job.num + 1)
    return info.get("run_id", new_run_id()), hc.job.num, total, info.get("started", time.time())


# Finished results that a sweep run again in the same directory keeps, by `rerun` (config.Rerun):
# ok and oom are measurements of the configuration on this machine; error and timeout are outcomes of
# one attempt (a crash, a kill, a hang, a busy machine), so rerun=failed tries them again; invalid is
# checked again too: it costs no model load, and depends on the machine (GPUs visible, libraries, paths).
KEEP = {"none": ("ok", "oom", "invalid", "error", "timeout"), "failed": ("ok", "oom"), "all": ()}
# Keys that do not change what a finished job measured: changing them does not make its result stale.
NOT_MEASURED = ("rerun", "timeout_s", "cluster")  # cluster: where the job ran (runner/cluster.py)


def _differences(old: dict, new: dict, prefix: str = "") -> list:
    """Dotted keys whose values differ between two resolved configs. A key only one of them has (the
    schema grew or shrank between the two runs) does not count: neither run could have set it."""
    keys = []
    for key in sorted(set(old) & set(new)):
        if not prefix and key in NOT_MEASURED:
            continue
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def finished_result(job_dir: Path, config: dict) -> tuple:
    """(the job's earlier result, "") when the job directory holds one that counts as finished for this
    config and `rerun`, else (None, why the job runs: "" when there was nothing to keep).

    A corrupt result.json is reported by name, set aside (result.json.corrupt) and the job runs again;
    so does a result of another config (another sweep run into the same directory: Hydra numbers jobs
    by position, so the directory alone is not the key), set aside as result.json.previous.
    """
    path = job_dir / RESULT_FILE
    if not path.exists():
        return None, ""
    try:
        result = read_result(job_dir)
    except ValueError as e:
        aside = set_aside(job_dir, "corrupt")
        return None, f"{e}; moved to {aside.name}, the job runs again"
    changed = _differences(result["config"], config)
    if changed:
        aside = set_aside(job_dir, "previous")
        return None, (f"{path} is the result of another config ({', '.join(changed[:6])} differ); "
                      f"moved to {aside.name}, the job runs again")
    rerun = config["rerun"]
    if result["status"] not in KEEP[rerun]:
        return None, f"earlier result was {result['status']}: rerun={rerun} runs it again"
    return result, ""


SIGNAL_DEATHS = (
    re.compile(r"died with <Signals\.(SIG[A-Z0-9]+): \d+>"),  # accelerate launch (CalledProcessError)
    re.compile(r"exits with return code = -(\d+)"),  # the deepspeed launcher, for the first rank that failed
)
FATAL_ERROR = re.compile(r"^Fatal Python error: (.+)$", re.MULTILINE)  # faulthandler (PYTHONFAULTHANDLER=1)
LAUNCHER_EXCEPTIONS = ("subprocess.CalledProcessError",)


def _signal_name(number: str) -> str:
    try:
        return signal.Signals(int(number)).name
    except ValueError:
        return f"signal {number}"


def exception_lines(text: str) -> list:
    """The final line of every Python traceback in `text` (the exception, as Python prints it last)."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last):"):
            i += 1
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
                i += 1
            if i < len(lines):
                found.append(lines[i].strip())
        i += 1
    return found


def signal_death(text: str) -> str | None:
    """`killed by SIGKILL` when a launcher's output says that a worker or rank died of a signal (with
    faulthandler's words for a fatal one: `killed by SIGSEGV (Segmentation fault)`), else None."""
    for pattern in SIGNAL_DEATHS:
        match = pattern.search(text)
        if match:
            name = match.group(1) if match.group(1).startswith("SIG") else _signal_name(match.group(1))
            fatal = FATAL_ERROR.search(text)
            return f"killed by {name}" + (f" ({fatal.group(1).strip()})" if fatal else "")
    return None


def failure_reason(text: str, rc: int) -> str:
    """Why a job's processes ended without a result, from what this attempt wrote to its log: the signal
    that killed a worker or rank, else the last line of the worker's own exception (not the launcher's
    report of its exit), else the exit code and the last line."""
    death = signal_death(text)
    if death:
        return death
    if rc < 0:
        return f"launcher killed by {_signal_name(str(-rc))}"
    exceptions = [line for line in exception_lines(text) if not line.startswith(LAUNCHER_EXCEPTIONS)]
    if exceptions:
        return exceptions[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"exit code {rc}: {lines[-1] if lines else 'no output'}"


def _log_since(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _run_in_session(job: dict, job_dir: Path, python: str, progress: Progress) -> tuple:
    """isolate=false: measure in the worker that already holds this model, or start one.
    Returns (exit code or None, where in the session's log this job's output starts)."""
    config, key = job["config"], session_key(job["config"])
    session_dir = job_dir / "session"
    session = session_for(key, lambda: WorkerSession(
        key, launcher_command(config, python, session_dir, visible_gpus()), session_dir))
    job["log"] = str(session.log_path)
    (job_dir / JOB_FILE).write_text(json.dumps(job, indent=2))
    with open(job_dir / LOG_FILE, "a") as log:
        log.write(f"measured in the shared worker of {session.session_dir}; its log: {session.log_path}\n")
    offset = _size(session.log_path)
    return session.run(job_dir, config["timeout_s"], progress.tick), offset


@cluster.multinode_job
def run_job(cfg: DictConfig) -> dict:
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    run_id, index, total, started = _sweep_position()
    config = resolve(cfg)
    log_path = job_dir / LOG_FILE
    job = {"run_id": run_id, "job": index, "config": config, "log": str(log_path), "job_dir": str(job_dir)}
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
    except ValueError:
        result = {"status": "corrupt"}
    if result is not None and result["status"] not in ("ok", "oom"):
        set_aside(job_dir, "interrupted")


def _ended_ok(job_dir: Path) -> bool:
    """Whether the worker wrote an `ok` result; a job that did not end ok keeps its processes until they exit,
    so that how they ended (a rank's signal, the launcher's words) can name the cause."""
    try:
        result = read_result(job_dir)
    except ValueError:
        return False
    return result is not None and result["status"] == "ok"


def _run(job: dict, job_dir: Path, log_path: Path, progress: Progress) -> dict:
    config = job["config"]
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
    (job_dir / JOB_FILE).write_text(json.dumps(job, indent=2))
    if config["model"]["source"] == "synthetic" and not checkpoint_ready(config):
        progress.phase("building synthetic checkpoint")
        offset = _size(log_path)
        rc = run_process([python, "-m", "backends.synthetic", str(job_dir)], log_path, config["timeout_s"])
        if rc is None:
            return new_result(job, "timeout", f"building the synthetic checkpoint took over timeout_s={config['timeout_s']}")
        if rc != 0:
            return new_result(job, "error", "building the synthetic checkpoint failed: "
                              + failure_reason(_log_since(log_path, offset), rc))

    progress.phase("launching")
    cluster.release(config, job_dir, launch=True)  # multi-node: the other nodes start their ranks too
    if config["isolate"]:
        cmd = launcher_command(config, python, job_dir, visible_gpus())
        offset = _size(log_path)
        rc = run_process(cmd, log_path, config["timeout_s"], on_tick=progress.tick, finished=lambda: _ended_ok(job_dir))
    else:
        rc, offset = _run_in_session(job, job_dir, python, progress)
    progress.tick()
    try:
        result = read_result(job_dir)
    except ValueError as e:  # never read as a result
        aside = set_aside(job_dir, "corrupt")
        return new_result(job, "error", f"the worker left a {e}; moved to {aside.name}")
    if result is not None:
        if not config["isolate"] and result["status"] != "ok":
            close_session()  # the worker ends after a job that is not ok: the next job starts a fresh one
        if result["status"] == "error" and rc:
            # A rank that died of a signal writes nothing; a peer that saw it go reports `error` first
            # (gloo/NCCL: connection reset). Name the cause before the symptom.
            death = signal_death(_log_since(Path(job["log"]), offset))
            if death:
                result["reason"] = f"a rank was {death}; then: {result['reason']}"
        return result
    if rc is None:
        return new_result(job, "timeout", f"no result within timeout_s={config['timeout_s']}")
    return new_result(job, "error", failure_reason(_log_since(Path(job["log"]), offset), rc))
