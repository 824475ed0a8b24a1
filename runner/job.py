"""One job of the sweep: resolve -> validate -> prepare the model -> launch the worker -> collect."""
import json
import secrets
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from backends.synthetic import checkpoint_ready
from runner.launch import launcher_command, run_process
from runner.progress import PHASE_FILE, Progress, job_label
from runner.result import RESULT_FILE, new_result, read_result, write_result
from runner.session import WorkerSession, session_for, session_key
from runner.stack import interpreter, probe, visible_gpus
from runner.validate import invalid_reason

SWEEP_FILE = "sweep.json"
JOB_FILE = "job.json"
LOG_FILE = "job.log"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def resolve(cfg: DictConfig) -> dict:
    """The job's full config as plain data, with `num_gpus: null` resolved to what this machine has."""
    config = OmegaConf.to_container(cfg, resolve=True)
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


def _last_line(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run_in_session(job: dict, job_dir: Path, python: str, progress: Progress) -> int | None:
    """isolate=false: measure in the worker that already holds this model, or start one."""
    config, key = job["config"], session_key(job["config"])
    session_dir = job_dir / "session"
    session = session_for(key, lambda: WorkerSession(
        key, launcher_command(config, python, session_dir, visible_gpus()), session_dir))
    job["log"] = str(session.log_path)
    (job_dir / JOB_FILE).write_text(json.dumps(job, indent=2))
    with open(job_dir / LOG_FILE, "a") as log:
        log.write(f"measured in the shared worker of {session.session_dir}; its log: {session.log_path}\n")
    return session.run(job_dir, config["timeout_s"], progress.tick)


def run_job(cfg: DictConfig) -> dict:
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    run_id, index, total, started = _sweep_position()
    config = resolve(cfg)
    log_path = job_dir / LOG_FILE
    job = {"run_id": run_id, "job": index, "config": config, "log": str(log_path), "job_dir": str(job_dir)}
    progress = Progress(index, total, started, job_dir, job_label(config))
    result = _run(job, job_dir, log_path, progress)
    write_result(job_dir, result)
    progress.done(result)
    return result


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
        rc = run_process([python, "-m", "backends.synthetic", str(job_dir)], log_path, config["timeout_s"])
        if rc != 0:
            return new_result(job, "error", f"building the synthetic checkpoint failed: {_last_line(log_path)}")

    progress.phase("launching")
    if config["isolate"]:
        cmd = launcher_command(config, python, job_dir, visible_gpus())
        rc = run_process(cmd, log_path, config["timeout_s"], on_tick=progress.tick)
    else:
        rc = _run_in_session(job, job_dir, python, progress)
    progress.tick()
    result = read_result(job_dir)
    if result is not None:
        return result
    if rc is None:
        return new_result(job, "timeout", f"no result within timeout_s={config['timeout_s']}")
    return new_result(job, "error", f"exit code {rc}: {_last_line(log_path)}")

