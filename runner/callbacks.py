"""Hydra callbacks: count the sweep when it starts, print and save its table when it ends."""
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core.jobdir import SweepLocked, lock_sweep, new_run_id, read_sweep, write_sweep
from runner.session import close_session

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


def bad_input(line: str) -> None:
    """A problem with what the user asked for, found before any job ran: one line, exit 2."""
    sys.stderr.write(f"error: {line}\n")
    raise SystemExit(2)


class SweepTable(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: take the sweep directory (one runner at a time), check the history can be written,
        record the sweep. (Each job's own config is checked by the sweeper, hydra_plugins/infersweep_sweeper.)"""
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
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
        # A sweep run again in the same directory (a resume) keeps its run_id and its rounds' order.
        earlier = read_sweep(sweep_dir)
        total = sweep_size(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
        write_sweep(sweep_dir, {"run_id": earlier.get("run_id") or new_run_id(), "total": total,
                                "rounds": config.rounds, "started": time.time(),
                                "round_seed": earlier.get("round_seed", secrets.randbelow(2**31))})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_session()
        from analysis.history import append_sweep, history_path
        from analysis.results import load_results
        from analysis.tables import seed_table

        sweep_dir = Path(config.hydra.sweep.dir)
        results = load_results([sweep_dir])
        OUTCOME["measured"] = int((results["status"] == "ok").sum()) if len(results) else 0
        table = seed_table(results)
        table.to_csv(sweep_dir / TABLE_FILE)
        print(f"\nms per token (rows backend+dtype, columns batch size) -- {sweep_dir / TABLE_FILE}")
        print(table.to_string())
        append_sweep(history_path(), sweep_dir)
