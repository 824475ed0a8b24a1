"""python -m runner [-m] key=value ...: one benchmark job per point of the sweep."""
import hydra
from omegaconf import DictConfig

from runner.config import register_configs
from runner.job import run_job

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    main()
