"""The sweep's progress on stderr: job i of N, elapsed, ETA, the running job's phase, a line per job."""
import statistics
import sys
import time
from pathlib import Path

from backends import lookup
from core.jobdir import PHASE_FILE, Result, option_text
from runner.config import DtypeConfig


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _changed_options(config: dict) -> str:
    """The backend's options, and int8's threshold, that differ from their defaults: what tells apart two
    jobs of one backend and dtype (pre_sharded=true, compile=true, ...)."""
    changed = lookup(config["backend"]["name"]).changed_options(config)
    threshold = config["dtype"]["llm_int8_threshold"]
    if config["dtype"]["name"] == "int8" and threshold != DtypeConfig.llm_int8_threshold:
        changed.append(("llm_int8_threshold", threshold))
    return "".join(f" {name}={option_text(value)}" for name, value in changed)


def job_label(config: dict) -> str:
    label = f"{config['backend']['name']} {config['dtype']['name']} gpus={config['num_gpus']} bs={config['batch_size']}"
    label += _changed_options(config)
    if config.get("num_nodes", 1) > 1:
        label += f" nodes={config['num_nodes']}"
    if config["offload"]["name"] != "none":
        label += f" offload={config['offload']['name']}"
    if config["stack"]:
        label += f" stack={config['stack']}"
    if config.get("round") == 0:
        label += " warm-up process (discarded)"
    elif config.get("rounds", 1) > 1:
        label += f" round {config['round']}/{config['rounds']}"
    return label


def result_line(result: Result) -> str:
    line = f"{job_label(result.config)} {result.status}"
    if result.get("ms_per_token") is not None:
        line += f" {result.get('ms_per_token'):.3f} ms/token"
    if result.get("load_s") is not None:
        line += f" load {result.get('load_s'):.2f} s"
    if result.status != "ok" and result.reason:
        line += f" ({result.reason})"
    return line


# Seconds each job run in this process took (results kept from an earlier run excluded). The ETA takes
# their median: in a shared-worker sweep the first job of a model also pays the worker start and the
# load, which an average would charge to every job left.
_job_seconds: list = []


class Progress:
    """Redraws one status line while a job runs (in place on a terminal, on change otherwise)."""

    def __init__(self, index: int, total: int, sweep_started: float, job_dir: Path, label: str):
        self.index, self.total, self.sweep_started = index, total, sweep_started
        self.job_dir, self.label = job_dir, label
        self.started = time.time()
        self.tty = sys.stderr.isatty()
        self.last = ""
        self.seen = 0

    def _prefix(self) -> str:
        elapsed = time.time() - self.sweep_started
        eta = None
        if _job_seconds:  # the jobs left, this one included, less what this one has already taken
            eta = max(0.0, statistics.median(_job_seconds) * (self.total - self.index) - (time.time() - self.started))
        return (f"[{self.index + 1}/{self.total} elapsed {clock(elapsed)}"
                + (f" eta {clock(eta)}" if eta is not None else "") + "]")

    def phase(self, phase: str) -> None:
        if phase == self.last:
            return
        self.last = phase
        text = f"{self._prefix()} {self.label}: {phase}"
        sys.stderr.write(f"\r\033[K{text}" if self.tty else text + "\n")
        sys.stderr.flush()

    def tick(self) -> None:
        """Show every phase the worker entered since the last tick."""
        path = self.job_dir / PHASE_FILE
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        for line in lines[self.seen:]:
            self.phase(line)
        self.seen = len(lines)

    def done(self, result: Result, earlier: bool = False) -> None:
        """earlier: the result of an earlier run, kept (nothing was measured now)."""
        if not earlier:
            _job_seconds.append(time.time() - self.started)
        line = result_line(result) + (" [kept from an earlier run]" if earlier else "")
        if result.status in ("error", "timeout") and result.log:
            line += f" log: {result.log}"
        sys.stderr.write(("\r\033[K" if self.tty else "") + f"{self._prefix()} {line}\n")
        sys.stderr.flush()
