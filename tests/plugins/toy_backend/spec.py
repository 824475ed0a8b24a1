"""backend=toy: a hand-written greedy decoding loop over a Hugging Face model on the CPU, started as a plain
Python process (a launcher command of its own)."""
from dataclasses import dataclass

from backends.launchers import WORKER, Launch
from backends.spec import BackendSpec, Stack


@dataclass
class ToyConfig:
    name: str = "toy"
    # Tokens the decoding loop appends between two checks of the output's length (>= 1).
    tokens_per_step: int = 1


def command(config: dict, launch: Launch) -> list:
    return [launch.python, "-m", WORKER, str(launch.job_dir)]


def validate(config: dict, stack: Stack) -> str | None:
    if config["num_gpus"] != 0:
        return f"num_gpus={config['num_gpus']}: backend=toy runs on the CPU only (allowed: 0)"
    if config["backend"]["tokens_per_step"] < 1:
        return f"backend.tokens_per_step={config['backend']['tokens_per_step']}: must be >= 1"
    return None


SPEC = BackendSpec(name="toy", config=ToyConfig, command=command, backend="toy_backend.backend:ToyBackend",
                   validate=validate, result_fields={"loop": "the decoding loop that ran"})
