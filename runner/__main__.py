"""python -m runner [-m] key=value ...: one benchmark job per point of the sweep.

Exit status: 0 the sweep finished with at least one measured point; 2 bad input, nothing launched (a
config error, a sweep directory another runner holds, a sweep or run directory, cache or history that
cannot be written, an unusable history); 3 finished but nothing measured (every job invalid, oom, error or
timeout); 74 a write to the sweep directory, the cache or the history failed mid-sweep (disk full,
read-only: runner/storage.py); 128 + signal when interrupted (130 for Ctrl-C).
"""
import os
import sys

import hydra
from hydra._internal.utils import get_args_parser
from omegaconf import DictConfig

from runner.callbacks import OUTCOME, bad_input
from runner.config import config_error, override_problem, register_configs
from runner.job import run_job
from runner.launch import install_signal_handlers
from runner.session import close_session

register_configs()


NOTHING_MEASURED = 3


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_job(cfg)
    OUTCOME.setdefault("single", result)


def exit_status() -> int:
    """0 when the sweep (or the single job) measured at least one point, else NOTHING_MEASURED."""
    if "measured" in OUTCOME:
        return 0 if OUTCOME["measured"] else NOTHING_MEASURED
    single = OUTCOME.get("single")
    return 0 if getattr(single, "status", "ok") == "ok" else NOTHING_MEASURED


def interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C, SIGTERM or SIGHUP: the running job's processes are already ended (runner/launch.py); end a
    shared worker too, say how to resume, exit 128 + signal."""
    close_session(kill=True)
    signum = getattr(exc, "signum", 2)
    sys.stderr.write(f"\ninterrupted ({exc or 'SIGINT'}): the running job was stopped and its earlier result, "
                     "if any, kept; finished jobs are kept: run the same command again (same hydra.sweep.dir) "
                     "to resume\n")
    return 128 + signum


def start() -> None:
    """main(), with a config error (a wrong group option, an unknown key, a value of the wrong type, a
    malformed override) as one line and exit 2 instead of Hydra's report: Hydra is made to raise it
    (HYDRA_FULL_ERROR), unless the user asked for its full trace that way."""
    problem = override_problem(get_args_parser().parse_known_args()[0].overrides)
    if problem:
        bad_input(problem)
    traced = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as e:
        line = None if traced else config_error(e)
        if line is None:
            raise
        bad_input(line)


if __name__ == "__main__":
    install_signal_handlers()
    try:
        start()
    except KeyboardInterrupt as e:
        sys.exit(interrupted(e))
    sys.exit(exit_status())
