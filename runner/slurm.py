"""SLURM: the `cluster.*` keys, and the `infersweep.*` resolvers that conf/hydra/launcher/submitit_{slurm,local}.yaml
use to derive each job's nodes, GPUs, CPUs, memory and time limit from that job's own config (the submitit
launchers live in hydra_plugins/infersweep_launcher and call in here). Torch-free and submitit-free.
"""
import math
import warnings
from dataclasses import dataclass

from omegaconf import OmegaConf


@dataclass
class ClusterConfig:
    # sbatch's --partition, --account, --qos (null: the cluster's defaults).
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # CPUs per task (one task per node): null derives cpus_per_rank x ranks per node.
    cpus: int | None = None
    cpus_per_rank: int = 8
    # Host memory per node in GB: null asks for the whole node's (--mem=0) when exclusive, else sets none.
    mem_gb: int | None = None
    # SLURM time limit = timeout_s + this margin (interpreter start, probe, synthetic checkpoint build).
    time_margin_min: int = 10
    # Jobs of the sweep that run at the same time. 1 (default): one after another, since concurrent jobs on
    # one node corrupt each other's timings; raise it for CPU-only or functional sweeps.
    array_parallelism: int = 1
    # --exclusive: nobody else's job on the nodes while one of ours measures.
    exclusive: bool = True
    # Multi-node DeepSpeed: an MPI-style hostfile ("host slots=N" per line); null: SLURM's node list.
    hostfile: str | None = None
    # null: the first host; master_port null: derived from SLURM_JOB_ID (same on every node), else 29500.
    master_addr: str | None = None
    master_port: int | None = None
    # auto | per_node | pdsh (see the module docstring).
    multinode: str = "auto"


# ---------------------------------------------------------------------------------------------------
# Resources: the resolvers of the launcher configs


def gpus_per_node(num_gpus: int | None) -> int | None:
    """GPUs to ask SLURM for. num_gpus=null (resolved on the node) asks for none: set it on a cluster."""
    return num_gpus or None


def cpus_per_task(cpus: int | None, cpus_per_rank: int, num_gpus: int | None, cpu_ranks: int) -> int:
    return cpus or cpus_per_rank * max(1, num_gpus or cpu_ranks)


def mem_gb(mem: int | None, exclusive: bool) -> int | None:
    if mem is not None:
        return mem
    return 0 if exclusive else None


def timeout_min(timeout_s: float, margin_min: int) -> int:
    return math.ceil(float(timeout_s) / 60) + int(margin_min)


def register_resolvers() -> None:
    for name, fn in (("gpus_per_node", gpus_per_node), ("cpus", cpus_per_task), ("mem_gb", mem_gb),
                     ("timeout_min", timeout_min)):
        OmegaConf.register_new_resolver(f"infersweep.{name}", fn, replace=True)


register_resolvers()

# conf/hydra/launcher/submitit_{slurm,local}.yaml carry the plugin's own names, so that
# `hydra/launcher=submitit_slurm` is ours; Hydra merges them onto the plugin's schema of the same name and
# warns that such matching is deprecated. It is how Hydra 1.3 works (pyproject pins hydra-core 1.3.*).
warnings.filterwarnings("ignore", category=UserWarning,
                        message=r"\s*'hydra/launcher/submitit_(slurm|local)' is validated against ConfigStore")
