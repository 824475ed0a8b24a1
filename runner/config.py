"""The sweep's config schema: one small dataclass per group, registered in Hydra's ConfigStore; each backend's
own (its spec's) is the option `backend=<name>`.

The yaml files under conf/ pick these schemas as defaults, so a typo'd key, a wrong type or an
unknown option fails at compose time, before any job runs.
"""
import difflib
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from backends import lookup, names, specs
from runner.slurm import ClusterConfig
from runner.stack import visible_gpus


@dataclass
class DtypeConfig:
    name: str = MISSING
    # bitsandbytes LLM.int8() outlier threshold; only read when name=int8 (the seed ran 6.0).
    llm_int8_threshold: float = 6.0


@dataclass
class OffloadConfig:
    name: str = "none"
    path: str | None = None


@dataclass
class ModelConfig:
    name: str = MISSING
    # synthetic: a config of `arch` with random weights (fixed seed), saved once as safetensors.
    # pretrained: `path` is a local checkpoint directory or a hub name.
    source: str = "synthetic"
    path: str | None = None
    # bloom (ALiBi, fused QKV, tied embedding: the seed's model) | llama (RoPE, grouped-query attention,
    # gated MLP, untied lm_head: today's common decoder, with SDPA and flash attention in transformers)
    arch: str = "bloom"
    hidden_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    vocab_size: int = 250880
    # llama only: key/value heads (grouped-query attention; null: n_head) and the MLP's inner width
    n_kv_head: int | None = None
    intermediate_size: int | None = None


class Rerun(Enum):
    """Which finished jobs a sweep run again in the same directory measures again (docs/reliability.md)."""
    none = "none"  # keep every finished result, whatever its status
    failed = "failed"  # re-run error and timeout (accidents of the run), re-check invalid; keep ok, oom
    all = "all"  # re-run every job


@dataclass
class SweepConfig:
    backend: Any = MISSING
    dtype: DtypeConfig = MISSING
    offload: OffloadConfig = MISSING
    model: ModelConfig = MISSING
    # null: 1 when a GPU is visible, else 0 (run on the CPU).
    num_gpus: int | None = None
    # Processes the DeepSpeed backends start when num_gpus=0 (tensor parallelism or ZeRO over CPU
    # ranks, gloo); on GPUs the world size is num_gpus. Accelerate always runs one process.
    cpu_ranks: int = 1
    # Nodes a DeepSpeed job spans (world size num_nodes x ranks per node); see runner/multinode.py.
    num_nodes: int = 1
    # A positive int, or max: the largest batch that fits, found by search (doubling, then bisection to
    # within 3%, up to max_batch_cap) in the loaded worker, then measured; checked in runner/validate.py.
    batch_size: Any = 1
    max_batch_cap: int = 1024
    new_tokens: int = 100
    prompt_tokens: int = 8
    repeats: int = 3
    # Separate worker processes that measure each job, in interleaved rounds over the whole sweep
    # (hydra_plugins/infersweep_sweeper); the job's figure is the median over its rounds (core/rounds.py).
    rounds: int = 1
    # The round a job is launched for (set by the sweeper; 1 outside a rounds sweep).
    round: int = 1
    timeout_s: float = 600.0
    # true: after the measurement, one more generate under torch.profiler (backends/profile.py).
    profile: bool = False
    # true: GPU (NVML) and host (psutil) telemetry during the timed repeats, energy per token
    # (backends/telemetry.py); false: none of it runs (its cost: benchmarks/telemetry_overhead.py).
    telemetry: bool = True
    # false: consecutive jobs that differ only in batch_size, new_tokens, prompt_tokens, repeats,
    # timeout_s or profile share one launched worker that loads the model once (load_s is that one load).
    isolate: bool = True
    # A sweep run again with the same hydra.sweep.dir (a resume) keeps each job whose directory holds a
    # finished result.json of the same config; `rerun` picks which finished jobs run again anyway.
    rerun: Rerun = Rerun.failed
    # Python interpreter the job's launcher runs under; null: the runner's own.
    stack: str | None = None
    seed: int = 0
    # GiB the worker may map beyond what it holds after imports (RLIMIT_AS); what cannot fit is `oom`.
    host_mem_limit_gib: float | None = None
    # Where synthetic checkpoints are cached; null: $INFERSWEEP_CACHE or ~/.cache/infersweep.
    cache_dir: str | None = None
    # SLURM resources and multi-node placement (runner/slurm.py, runner/multinode.py, docs/cluster.md).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def register_configs() -> None:
    """Every registered backend's config is an option of the `backend` group; the other schemas live in
    their own group, picked by the yaml files of conf/."""
    cs = ConfigStore.instance()
    for spec in specs():
        cs.store(group="backend", name=spec.name, node=spec.config)
    cs.store(group="schema", name="sweep", node=SweepConfig)
    cs.store(group="schema", name="dtype", node=DtypeConfig)
    cs.store(group="schema", name="offload", node=OffloadConfig)
    cs.store(group="schema", name="model", node=ModelConfig)


GROUP_SCHEMAS = {"dtype": DtypeConfig, "offload": OffloadConfig, "model": ModelConfig, "cluster": ClusterConfig}


def unknown_key(cfg: DictConfig) -> str | None:
    """A key the schema does not know (a `+key=value` typo, which Hydra adds instead of refusing), as one
    line naming it, its value and the nearest known key; None when every key is known."""
    def check(node: DictConfig, schema: type, prefix: str) -> str | None:
        known = [f.name for f in fields(schema)]
        for key in node:
            if key not in known and not (prefix == "" and key == "hydra"):
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
                return (f"{prefix}{key}={OmegaConf.to_container(node, resolve=False)[key]}: unknown key{hint}; "
                        "`python -m runner --cfg job` lists the keys")
        return None

    sections = [(cfg, SweepConfig, "")] + [(cfg[g], s, f"{g}.") for g, s in GROUP_SCHEMAS.items() if g in cfg]
    if "backend" in cfg and cfg.backend.get("name") in names():
        sections.append((cfg.backend, lookup(cfg.backend.name).config, "backend."))
    for node, schema, prefix in sections:
        problem = check(node, schema, prefix)
        if problem:
            return problem
    return None


def resolve(cfg: DictConfig) -> dict:
    """A job's full config as plain data, with `num_gpus: null` resolved to what this machine has."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if config["num_gpus"] is None:
        config["num_gpus"] = 1 if visible_gpus() else 0
    return config
