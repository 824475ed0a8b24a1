"""Hydra callbacks: count the sweep when it starts, print and save its table when it ends."""
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from core.jobdir import new_run_id, read_sweep, write_sweep
from runner.session import close_session

TABLE_FILE = "seed_table.csv"


def sweep_size(overrides: list, params: dict | None = None) -> int:
    """How many jobs Hydra's basic sweeper makes of its `hydra.sweeper.params` (an experiment's sweep)
    and the command-line overrides, which replace params of the same key."""
    swept = [f"{key}={value}" for key, value in (params or {}).items()]
    parsed = OverridesParser.create().parse_overrides(swept + overrides)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


class SweepTable(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # A sweep run again in the same directory (a resume) keeps its run_id.
        run_id = read_sweep(sweep_dir).get("run_id") or new_run_id()
        total = sweep_size(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
        write_sweep(sweep_dir, {"run_id": run_id, "total": total, "started": time.time()})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        close_session()
        from analysis.history import append_sweep, history_path
        from analysis.results import load_results
        from analysis.tables import seed_table

        sweep_dir = Path(config.hydra.sweep.dir)
        table = seed_table(load_results([sweep_dir]))
        table.to_csv(sweep_dir / TABLE_FILE)
        print(f"\nms per token (rows backend+dtype, columns batch size) -- {sweep_dir / TABLE_FILE}")
        print(table.to_string())
        append_sweep(history_path(), sweep_dir)
