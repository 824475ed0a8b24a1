"""python -m runner [-m] key=value ...: one benchmark job per point of the sweep."""
import sys

import hydra
from omegaconf import DictConfig

from runner.config import register_configs
from runner.job import run_job
from runner.launch import install_signal_handlers
from runner.session import close_session

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


def interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C, SIGTERM or SIGHUP: the running job's processes are already ended (runner/launch.py); end a
    shared worker too, say how to resume, exit 128 + signal."""
    close_session(kill=True)
    signum = getattr(exc, "signum", 2)
    sys.stderr.write(f"\ninterrupted ({exc or 'SIGINT'}): the running job was stopped and left no result; "
                     "finished jobs are kept: run the same command again (same hydra.sweep.dir) to resume\n")
    return 128 + signum


if __name__ == "__main__":
    install_signal_handlers()
    try:
        main()
    except KeyboardInterrupt as e:
        sys.exit(interrupted(e))
