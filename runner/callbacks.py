"""Hydra callbacks: count the sweep when it starts, print and save its table when it ends."""
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from core.jobdir import SweepLocked, flatten, lock_sweep, new_run_id, read_sweep, write_sweep
from runner.session import close_session
from runner.storage import stop_when_unwritable, unwritable

TABLE_FILE = "seed_table.csv"


def sweep_size(overrides: list, params: dict | None = None) -> int:
    """How many jobs Hydra's basic sweeper makes of its `hydra.sweeper.params` (an experiment's sweep)
    and the command-line overrides, which replace params of the same key."""
    swept = [f"{key}={value}" for key, value in (params or {}).items()]
    parsed = OverridesParser.create().parse_overrides(swept + overrides)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


# What the sweep measured, for the runner's exit status (runner/__main__.py): jobs that ended ok.
OUTCOME: dict = {}
_lock: list = []  # the sweep directory's lock, held until the process ends


# Keys a resume may change: how it resumes, how patient it is, where its files and cluster jobs go, how
# many rounds it takes (a resume with more rounds adds them), and whether it is only planned.
RESUME_MAY_CHANGE = ("rerun", "timeout_s", "cache_dir", "cluster", "rounds", "round", "warmup_process", "dry_run")


def fixed_config(config: DictConfig, overrides: list, params: dict | None) -> dict:
    """The sweep's config less its axes (the keys its overrides or an experiment's params sweep over):
    what every job of it shares, as dotted keys."""
    swept = [f"{key}={value}" for key, value in (params or {}).items()]
    axes = {o.key_or_group for o in OverridesParser.create().parse_overrides(swept + overrides) if o.is_sweep_override()}
    plain = OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]),
                                   resolve=True, enum_to_str=True)
    return {k: v for k, v in flatten(plain).items()
            if not any(k == a or k.startswith(f"{a}.") for a in axes) and k.split(".")[0] not in RESUME_MAY_CHANGE}


def drift(before: dict, now: dict) -> list:
    """The keys whose values differ between the config a sweep directory was started with and this run's
    (keys only one of them has, a schema that grew, do not count)."""
    return sorted(k for k in set(before) & set(now) if before[k] != now[k])


def resume_problem(config: DictConfig, sweep_dir: Path) -> str | None:
    """Why this run may not resume the sweep in `sweep_dir` (a key that is no axis changed since it started),
    as one line; None for a new sweep directory, the same values, or rerun=all. Reads only."""
    earlier = read_sweep(sweep_dir)
    if "config" not in earlier or getattr(config.rerun, "name", config.rerun) == "all":
        return None
    fixed = fixed_config(config, list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
    changed = drift(earlier["config"], fixed)
    if not changed:
        return None
    was = ", ".join(f"{k}={earlier['config'][k]} (now {fixed[k]})" for k in changed)
    return (f"{sweep_dir} was started with {was}, not an axis of the sweep: resuming would mix two configs "
            "(allowed: the same values, rerun=all, or a new hydra.sweep.dir)")


def bad_input(line: str) -> None:
    """A problem with what the user asked for, found before any job ran: one line, exit 2."""
    sys.stderr.write(f"error: {line}\n")
    raise SystemExit(2)


def failure_lines(results: Any) -> list:
    """A line for each job of the sweep that failed (error, timeout): its reason, and its log beside it."""
    if not len(results):
        return []
    failed = results[results["status"].isin(("error", "timeout"))].sort_values("job")
    return [f"job {r.job} {r.status}: {r.reason} -- log: {r.log}" for r in failed.itertuples()]


class SweepTable(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before a single run (no -m): its directory must take a file, or it stops in one line, exit 2, before
        Hydra's own first write there (which would end in its traceback)."""
        problem = unwritable(Path(config.hydra.run.dir), "hydra.run.dir")
        if problem:
            bad_input(problem)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: take the sweep directory (one runner at a time), check the history can be written,
        check a resume does not change the sweep, record the sweep. (Each job's own config is checked by the
        sweeper, hydra_plugins/infersweep_sweeper.) A dry run only checks the resume: it writes nothing."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.dry_run:
            problem = resume_problem(config, sweep_dir)
            if problem:
                bad_input(problem)
            return
        problem = unwritable(sweep_dir, "hydra.sweep.dir")
        if problem:
            bad_input(problem)
        with stop_when_unwritable(sweep_dir):
            self._start(config, sweep_dir)

    def _start(self, config: DictConfig, sweep_dir: Path) -> None:
        try:
            lock, note = lock_sweep(sweep_dir)
        except SweepLocked as e:
            bad_input(str(e))
        _lock.append(lock)
        if note:
            sys.stderr.write(f"{sweep_dir}: {note}\n")
        from analysis.history import check_history, history_path

        problem = check_history(history_path())
        if problem:
            bad_input(problem)
        problem = resume_problem(config, sweep_dir)
        if problem:
            bad_input(problem)
        # A sweep run again in the same directory (a resume) keeps its run_id and its rounds' order.
        earlier = read_sweep(sweep_dir)
        overrides, params = list(config.hydra.overrides.task), config.hydra.sweeper.get("params")
        fixed = fixed_config(config, overrides, params)
        write_sweep(sweep_dir, {"run_id": earlier.get("run_id") or new_run_id(),
                                "total": sweep_size(overrides, params), "rounds": config.rounds,
                                "started": time.time(), "config": fixed, "invocation": secrets.token_hex(4),
                                "round_seed": earlier.get("round_seed", secrets.randbelow(2**31))})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_session()
        if config.dry_run:
            return
        with stop_when_unwritable(config.hydra.sweep.dir):
            self._end(config)

    def _end(self, config: DictConfig) -> None:
        from analysis.history import append_sweep, history_path
        from analysis.overhead import overhead_line
        from analysis.results import load_results
        from analysis.tables import seed_table

        sweep_dir = Path(config.hydra.sweep.dir)
        results = load_results([sweep_dir])
        OUTCOME["measured"] = int((results["status"] == "ok").sum()) if len(results) else 0
        table = seed_table(results)
        table.to_csv(sweep_dir / TABLE_FILE)
        print(f"\nms per token (rows backend+dtype, columns batch size) -- {sweep_dir / TABLE_FILE}")
        print(table.to_string())
        line = overhead_line(results) if len(results) else None
        if line:
            print(line)
        for line in failure_lines(results):
            print(line)
        append_sweep(history_path(), sweep_dir)
