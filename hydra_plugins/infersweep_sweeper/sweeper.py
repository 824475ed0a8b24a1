"""hydra/sweeper=infersweep (conf/config.yaml's default): Hydra's basic sweeper, plus `rounds=R`.

With rounds=1 it is the basic sweeper. With R > 1 every job of the sweep is measured in R separate worker
processes, scheduled in interleaved rounds over the whole sweep: every job's round 1, then every job's
round 2, ..., the order within each round shuffled (seed `round_seed` in sweep.json), so that the drift of
a machine between processes minutes apart hits every point alike. A job keeps its number (its directory)
in every round and is launched with `round=k`; the runner adds each round to the job's result
(core/rounds.py). Jobs that share a loaded model (isolate=false: same load key) stay together in a round,
so that a round is one worker process over their batch sizes.

`warmup_process=true` first runs the first job of round 1's order once more, in a worker process of its own
whose result is thrown away (docs/benchmarks/noise-at-source.md: the first process a GPU machine runs after
a pause is slower than the ones after it).

With dry_run=true it checks every job as before a launch, prints the plan (runner/dryrun.py) and launches
nothing.
"""
import random
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from core.jobdir import GENERATION_KEYS, read_sweep
from hydra_plugins.infersweep_launcher.launcher import cluster_refusal
from runner.callbacks import bad_input
from runner.config import resolve, unknown_key
from runner.dryrun import job_state, print_plan
from runner.stack import visible_gpus
from runner.storage import stop_when_unwritable
from runner.validate import preflight_reason


@dataclass
class InfersweepSweeperConf:
    _target_: str = "hydra_plugins.infersweep_sweeper.sweeper.RoundsSweeper"
    max_batch_size: int | None = None
    params: dict | None = None


WARMUP_DIR = "warmup"  # the warm-up process's job directory under the sweep's (no result.json)

ConfigStore.instance().store(group="hydra/sweeper", name="infersweep", node=InfersweepSweeperConf,
                             provider="infersweep")


def _group_key(overrides: list, together: bool) -> str:
    """Jobs with equal keys run one after another within a round: those that differ only in generation
    keys when they share a loaded worker (together), else every job on its own."""
    if not together:
        return "\n".join(overrides)
    return "\n".join(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in GENERATION_KEYS)


def round_order(jobs: list, together: bool, seed: int, round_number: int) -> list:
    """(job number, overrides) of every job in the order round `round_number` runs them: the groups of
    jobs shuffled (seed + round: another order each round, the same on every resume), a group's jobs in
    sweep order."""
    groups: dict = {}
    for number, overrides in enumerate(jobs):
        groups.setdefault(_group_key(overrides, together), []).append((number, overrides))
    order = list(groups.values())
    random.Random(seed * 1000 + round_number).shuffle(order)
    return [job for group in order for job in group]


class RoundsSweeper(BasicSweeper):
    def sweep(self, arguments: list) -> list:
        """The jobs, checked, then launched round by round; a write into the sweep directory that fails for lack
        of space (Hydra's own files of a job included) stops the sweep in one line."""
        with stop_when_unwritable(self.config.hydra.sweep.dir):
            return self._sweep(arguments)

    def _sweep(self, arguments: list) -> list:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        for key, allowed in (("rounds", "a single positive int"), ("round", "a single positive int"),
                             ("dry_run", "true or false")):
            if any(o.key_or_group == key for o in overrides if o.is_sweep_override()):
                bad_input(f"{key}: one value for the whole sweep (allowed: {allowed})")
        jobs = [list(job) for batch in self.split_arguments(overrides, None) for job in batch]
        checked = self.check_before_launch(jobs)
        if self.config.get("dry_run"):
            from analysis.history import history_path  # pandas: only where a dry run needs the history

            print_plan(checked, history_path())
            return []
        rounds = int(self.config.get("rounds", 1))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        seed = int(read_sweep(sweep_dir).get("round_seed", 0))
        together = not bool(self.config.get("isolate", True))
        if self.config.get("warmup_process", False):
            self.warm_up(jobs, checked, together, seed)
        if rounds == 1:
            return super().sweep(arguments)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns = []
        for k in range(1, rounds + 1):
            for number, job in round_order(jobs, together, seed, k):
                batch = [job + [f"round={k}"]]
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=number)
                for r in results:
                    _ = r.return_value  # a job that raised fails the sweep, as in the basic sweeper
                returns.append(results)
        return returns

    def warm_up(self, jobs: list, checked: list, together: bool, seed: int) -> None:
        """Run the job that round 1 starts with in a worker process of its own (`round=0`, in the sweep's
        WARMUP_DIR, where its log and attempt stay): it writes no result.json, so its figures are never a
        result. Skipped when every job is done (a resume with nothing left to measure: the dry run's states)."""
        if all(job_state(job_dir, config)[0] == "done" for config, job_dir in checked):
            return
        number, job = round_order(jobs, together, seed, 1)[0]
        batch = [job + ["round=0", f"hydra.sweep.subdir={WARMUP_DIR}"]]
        self.validate_batch_is_legal(batch)
        for r in self.launcher.launch(batch, initial_job_idx=number):
            _ = r.return_value

    def check_before_launch(self, jobs: list) -> list:
        """Every job's config, composed as its launch will compose it, checked before the first launch:
        an unknown key (a `+key` typo), an input the sweep cannot start with, or a SLURM request no node of the
        cluster could meet ends the runner in one line (exit 2), with nothing launched. Returns each job's
        (resolved config, job directory)."""
        checked = []
        for number, overrides in enumerate(jobs):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            problem = unknown_key(cfg)
            if not problem:
                config = resolve(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
                problem = preflight_reason(config, visible_gpus()) or cluster_refusal(cfg, config)
            if problem:
                bad_input(problem)
            with open_dict(cfg):
                cfg.hydra.job.num = number  # as the launcher numbers it: the job directory's name
            checked.append((config, Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)))
        return checked
