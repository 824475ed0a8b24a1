"""The job directory: the one contract between the runner, the worker it launches and the analysis.

A job of a sweep owns one directory (Hydra's `hydra.sweep.dir/<job number>`) that holds:

    job.json      what the worker is given (a Job, with the number of its attempt)
    job.log       the launcher's and the worker's output
    phases        one line per phase the worker enters (the progress line reads it)
    lease.json    who runs the current attempt (a Lease: host, pid, process group, start, attempt, and the
                  DeepSpeed master port that names its shared-memory segments)
    attempts/     every attempt's own result, numbered (0001.json, ...), never overwritten: the worker
                  writes only there, and only its own attempt's file; where it wrote none (killed, timed
                  out), the runner records the attempt's outcome there
    result.json   the job's current result (a Result), written by the runner alone from the attempt that
                  holds the lease (its rounds added up): the source of truth for everything downstream

and the sweep directory holds sweep.json (the run_id, the job count, when it started).

Everything here is torch-free and imports nothing of the project: the runner, the worker and the
analysis all read and write job files through this module, with one atomic write and one validating
reader, and decide "the same measurement" with one list of config keys.
"""
import atexit
import errno
import fcntl
import json
import os
import secrets
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
JOB_FILE = "job.json"
LOG_FILE = "job.log"
PHASE_FILE = "phases"
SWEEP_FILE = "sweep.json"
LEASE_FILE = "lease.json"
SWEEP_LOCK = "sweep.lock"
ATTEMPTS_DIR = "attempts"

# A shared worker (isolate=false) serves a session directory: the marker file says so, the runner hands
# over jobs as numbered files holding a job directory's path, and a stop file ends the worker.
SESSION_DIR = "session"
SESSION_MARKER = "session"
STOP_FILE = "stop"

STATUSES = ("ok", "oom", "error", "timeout", "invalid")
# What a reader reports for a result file that fails validation; never written by a job.
CORRUPT = "corrupt"

# The libraries whose versions a result's env records and the history keeps.
LIBRARIES = ("torch", "transformers", "accelerate", "deepspeed", "bitsandbytes", "safetensors")


# ---------------------------------------------------------------------------------------------------
# The same measurement

# Config keys that do not change what a job measures: how a sweep is resumed and how patient it is, where
# its files and cluster jobs go, how many samples it takes (repeats in a process, rounds of processes:
# the figure is a median either way), what its hardware costs, and whether it is only planned (dry_run).
# Results whose configs differ only in these are the same measurement, for resume, compare, trend, the
# history and the labels alike.
NOT_MEASURED = ("rerun", "timeout_s", "cluster", "cache_dir", "repeats", "rounds", "round", "warmup_process",
                "profile", "price_per_gpu_hour", "price_per_cpu_node_hour", "dry_run")
# Measured keys that do not change the loaded model: jobs that differ only in these can share one
# loaded worker (isolate=false).
GENERATION_KEYS = ("batch_size", "new_tokens", "prompt_tokens")


def measurement_key(config: dict) -> dict:
    """The part of a resolved config that identifies what a job measures."""
    return {k: v for k, v in config.items() if k not in NOT_MEASURED}


def flatten(config: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys ("backend.name", "model.hidden_size", ...)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def flat_key(config: dict) -> dict:
    """measurement_key as dotted keys."""
    return flatten(measurement_key(config))


def measurement_differences(old: dict, new: dict) -> list:
    """Dotted measured keys whose values differ between two resolved configs. A key only one of them has
    (the schema grew or shrank between the two runs) does not count: neither run could have set it."""
    a, b = flat_key(old), flat_key(new)
    return sorted(k for k in set(a) & set(b) if a[k] != b[k])


def measurement_id(config: dict) -> str:
    """measurement_key as one canonical string: equal for the same measurement."""
    return json.dumps(measurement_key(config), sort_keys=True, default=str)


def load_key(config: dict) -> str:
    """Jobs with equal load keys can share one loaded model (isolate=false)."""
    return json.dumps({k: v for k, v in measurement_key(config).items() if k not in GENERATION_KEYS},
                      sort_keys=True, default=str)


def option_text(value: Any) -> str:
    """A config value as labels show it: a boolean lower-case whether it came as one or as text (a yaml
    `true` on a str option arrives as "true", the same from the command line as "True")."""
    text = "default" if value is None else str(value)
    return text.lower() if text.lower() in ("true", "false") else text


# ---------------------------------------------------------------------------------------------------
# One atomic write


def atomic_write(path: Path, text: str, exclusive: bool = False) -> bool:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a part: a temp
    file in the same directory, flushed to disk, then renamed over `path`. exclusive: only if no file is
    there yet (a hard link never replaces; two writers race, one wins); returns whether it was written.
    Files get the user's umask. On any failure (a full disk included) the temp file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any, exclusive: bool = False) -> bool:
    return atomic_write(path, json.dumps(data, indent=2, default=str), exclusive)


# ---------------------------------------------------------------------------------------------------
# A disk that refuses writes

# A write that fails for lack of space, a quota or a file system gone read-only: the disk's fault, not the
# job's. A sweep that meets one stops (runner/storage.py) instead of failing job after job the same way.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def write_error(directory: Path) -> OSError | None:
    """The error a new file in `directory` gets when one byte is written to it and flushed to disk, or None
    if it takes it. A real write, not os.access: root passes every permission check, but not a read-only
    file system, and a full disk still takes an empty file. The file is removed again."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".infersweep-write-test-")
    except OSError as e:
        return e
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    except OSError as e:
        return e
    finally:
        os.close(fd)
        os.unlink(tmp)
    return None


def storage_error(path: Path) -> OSError | None:
    """Why a write of `path` failed where the writer could not say (another process wrote it, or SQLite,
    whose errors carry no errno): the error of a one-byte write beside it (its nearest existing directory),
    as an OSError naming `path`, when that error is the disk's (STORAGE_ERRNOS); else None."""
    path = Path(path)
    directory = next(p for p in path.parents if p.is_dir())
    error = write_error(directory)
    if error is None or error.errno not in STORAGE_ERRNOS:
        return None
    return OSError(error.errno, error.strerror, str(path))


# ---------------------------------------------------------------------------------------------------
# Job


@dataclass
class Job:
    """What the worker is given: the job's identity, its resolved config, and where its files go."""
    run_id: str
    job: int
    config: dict
    log: str
    job_dir: str
    sweep_dir: str | None = None
    attempt: int = 0  # the attempt this worker runs: it writes attempts/<attempt>.json and nothing else


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def write_job(job_dir: Path, job: Job) -> None:
    write_json(Path(job_dir) / JOB_FILE, asdict(job))


def read_job(job_dir: Path) -> Job:
    data = json.loads((Path(job_dir) / JOB_FILE).read_text())
    return Job(**{k: data[k] for k in Job.__dataclass_fields__ if k in data})


def session_job_file(session_dir: Path, n: int) -> Path:
    """The n-th job handed to a shared worker: a file holding that job's directory."""
    return Path(session_dir) / f"job-{n:05d}"


def read_sweep(sweep_dir: Path) -> dict:
    """sweep.json of a sweep directory ({} where there is none)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_sweep(sweep_dir: Path, info: dict) -> None:
    write_json(Path(sweep_dir) / SWEEP_FILE, info)


# ---------------------------------------------------------------------------------------------------
# Result


@dataclass
class Result:
    """A job's outcome. The identity and status fields are attributes; every measured field (ms_per_token,
    load_s, env, backend_info, ...; ARCHITECTURE.md lists them) is in `fields`, as it is stored."""
    run_id: str
    job: int
    timestamp: str
    config: dict
    status: str
    reason: str
    log: str
    fields: dict = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_dict(self) -> dict:
        identity = {k: getattr(self, k) for k in IDENTITY}
        return {**identity, **self.fields}


IDENTITY = ("run_id", "job", "timestamp", "config", "status", "reason", "log")


def scheduler(environ: dict = os.environ) -> dict | None:
    """Where a batch scheduler ran the job, for a result's `env.scheduler`: SLURM's job id (an array's own id,
    as squeue and sacct show it: `<job_id>_<array_task_id>`), the array task, the node list and how often
    SLURM requeued the job; None outside SLURM."""
    if not environ.get("SLURM_JOB_ID"):
        return None
    task, restarts = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_RESTART_COUNT")
    return {"name": "slurm", "job_id": environ.get("SLURM_ARRAY_JOB_ID") or environ["SLURM_JOB_ID"],
            "array_task_id": int(task) if task else None, "nodelist": environ.get("SLURM_JOB_NODELIST"),
            "restart_count": int(restarts) if restarts else 0}


def new_result(job: Job, status: str, reason: str = "", **fields: Any) -> Result:
    """A result for `job`, with `fields` added."""
    if status not in STATUSES:
        raise ValueError(f"status={status}: allowed: {', '.join(STATUSES)}")
    return Result(run_id=job.run_id, job=job.job, config=job.config, log=job.log, status=status, reason=reason,
                  timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"), fields=fields)


def write_result(job_dir: Path, result: Result, exclusive: bool = False) -> bool:
    """result.json, written atomically; exclusive: unless one is there already (the first rank of several to
    fail reports the job). Returns whether it was written."""
    return write_json(Path(job_dir) / RESULT_FILE, result.to_dict(), exclusive)


class CorruptResult(ValueError):
    """A result file that cannot be read as a Result: the message names the file and what is wrong."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"corrupt result file {path}: {problem}")
        self.path, self.problem = Path(path), problem


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Measured fields a result may hold, and the test each value must pass where it is not null.
NUMBERS = ("ms_per_token", "ms_per_token_min", "ms_per_token_max", "load_s", "warmup_s", "tokens_per_s",
           "ttft_ms", "decode_ms_per_step", "peak_mem_gib", "energy_j_per_token")
# Measured records a result may hold (an object, or null), and the latency percentiles each of its parts has.
RECORDS = ("telemetry", "latency")
PERCENTILES = ("p50", "p90", "p99")
REQUIRED_WHEN_OK = ("ms_per_token", "generate_s", "load_s")


def validate_result(data: Any, source: str) -> Result:
    """`data` (a parsed result.json) as a Result; raises CorruptResult naming `source` and the first problem."""
    def bad(what: str) -> CorruptResult:
        return CorruptResult(source, what)

    if not isinstance(data, dict):
        raise bad(f"not a JSON object but {type(data).__name__}")
    missing = [k for k in IDENTITY if k not in data]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    if data["status"] not in STATUSES:
        raise bad(f"status={data['status']!r} (allowed: {', '.join(STATUSES)})")
    config = data["config"]
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in ("backend", "dtype", "model")):
        raise bad("config is not a resolved job config (no backend, dtype or model)")
    for key, kind in (("run_id", str), ("timestamp", str), ("reason", str)):
        if not isinstance(data[key], kind):
            raise bad(f"{key}={data[key]!r} (expected text)")
    if not isinstance(data["job"], int) or isinstance(data["job"], bool):
        raise bad(f"job={data['job']!r} (expected an integer)")
    for key in NUMBERS:
        if data.get(key) is not None and not _number(data[key]):
            raise bad(f"{key}={data[key]!r} (expected a number or null)")
    for key in RECORDS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise bad(f"{key}={data[key]!r} (expected an object or null)")
    for part in ("ttft_ms", "itl_ms"):
        value = (data.get("latency") or {}).get(part)
        if value is not None and not (isinstance(value, dict) and all(_number(value.get(p)) for p in PERCENTILES)):
            raise bad(f"latency.{part}={value!r} (expected {', '.join(PERCENTILES)} numbers, or null)")
    if data["status"] == "ok":
        absent = [k for k in REQUIRED_WHEN_OK if data.get(k) is None]
        if absent:
            raise bad(f"status ok without {', '.join(absent)}")
        repeats = data["generate_s"]
        if not isinstance(repeats, list) or not repeats or not all(_number(s) and s > 0 for s in repeats):
            raise bad(f"generate_s={repeats!r} (expected a list of positive seconds)")
        if data["ms_per_token"] <= 0:
            raise bad(f"ms_per_token={data['ms_per_token']!r} (expected > 0)")
    return Result(**{k: data[k] for k in IDENTITY}, fields={k: v for k, v in data.items() if k not in IDENTITY})


def read_result_file(path: Path) -> Result:
    """A result file, validated; raises CorruptResult naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptResult(path, str(e)) from e
    return validate_result(data, str(path))


def read_result(job_dir: Path) -> Result | None:
    """The job's result, or None if there is none yet; raises CorruptResult for a file that fails validation."""
    path = Path(job_dir) / RESULT_FILE
    if not path.exists():
        return None
    return read_result_file(path)


def set_aside(job_dir: Path, why: str) -> Path:
    """Move result.json out of the way, to result.json.<why> (kept for inspection), so that nothing reads it
    as the job's result; returns the new path."""
    path = Path(job_dir) / RESULT_FILE
    target = path.with_name(f"{RESULT_FILE}.{why}")
    os.replace(path, target)
    return target


def result_files(dirs: list) -> list:
    """Every result.json under `dirs`, sorted."""
    return sorted(p for d in dirs for p in Path(d).rglob(RESULT_FILE))


# ---------------------------------------------------------------------------------------------------
# Attempts and the lease


def attempt_path(job_dir: Path, attempt: int) -> Path:
    return Path(job_dir) / ATTEMPTS_DIR / f"{attempt:04d}.json"


def attempts(job_dir: Path) -> list:
    """The numbers of the job's attempts that left a result file, oldest first."""
    folder = Path(job_dir) / ATTEMPTS_DIR
    return sorted(int(p.stem) for p in folder.glob("[0-9]*.json") if p.stem.isdigit()) if folder.is_dir() else []


def read_attempt(job_dir: Path, attempt: int) -> Result | None:
    """The result attempt `attempt` wrote, or None; CorruptResult for a file that fails validation."""
    path = attempt_path(job_dir, attempt)
    return read_result_file(path) if path.exists() else None


def write_attempt(job_dir: Path, attempt: int, result: Result) -> bool:
    """The worker's result of its attempt, unless one is there already: never overwritten (the first of
    several ranks to fail reports the job; a stray second writer of the same attempt changes nothing)."""
    path = attempt_path(job_dir, attempt)
    path.parent.mkdir(exist_ok=True)
    return write_json(path, result.to_dict(), exclusive=True)


@dataclass
class Lease:
    """Who runs a job's current attempt: the runner's host and pid, the process group of its launcher
    (ended as a whole if the runner died and left it running), when it started, and the DeepSpeed master
    port that names its shared-memory segments (removed by the next run if the runner died)."""
    attempt: int
    host: str
    pid: int
    pgid: int | None
    started: float
    master_port: int | None = None


def read_lease(job_dir: Path) -> Lease | None:
    path = Path(job_dir) / LEASE_FILE
    try:
        data = json.loads(path.read_text())
        return Lease(**{k: data[k] for k in Lease.__dataclass_fields__ if k in data})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_lease(job_dir: Path, lease: Lease) -> None:
    write_json(Path(job_dir) / LEASE_FILE, asdict(lease))


def next_attempt(job_dir: Path) -> int:
    """One more than any attempt the job directory knows of (a result file or a lease)."""
    lease = read_lease(job_dir)
    return max([0, *attempts(job_dir), lease.attempt if lease else 0]) + 1


# ---------------------------------------------------------------------------------------------------
# One runner per sweep directory


class SweepLocked(RuntimeError):
    """Another live runner holds the sweep directory; the message names it."""


def lock_sweep(sweep_dir: Path) -> tuple:
    """Take the sweep directory's lock for this process's lifetime (the kernel releases it when the process
    dies, however it dies): (the open lock file, to keep; a note when the lock of a runner that is no longer
    running was taken over, else ""). Raises SweepLocked naming the live holder."""
    path = Path(sweep_dir) / SWEEP_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(lock.read())
        lock.close()
        raise SweepLocked(f"{sweep_dir} is in use by another runner ({holder}): wait for it to finish, or stop it "
                          "(a sweep directory takes one runner at a time)") from None
    earlier = lock.read()
    note = f"took over the lock of a runner that is no longer running ({_holder(earlier)})" if earlier.strip() else ""
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}))
    lock.flush()
    atexit.register(_release, lock)  # a runner that ends normally leaves no holder named
    return lock, note


def _release(lock) -> None:
    lock.seek(0)
    lock.truncate()
    lock.close()


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"host {info['host']}, pid {info['pid']}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
