"""The sweep's config schema: one small dataclass per group, registered in Hydra's ConfigStore; each backend's
own (its spec's) is the option `backend=<name>`.

The yaml files under conf/ pick these schemas as defaults, so a typo'd key, a wrong type or an
unknown option fails at compose time, before any job runs.
"""
import difflib
import re
import types
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

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
    # The round a job is launched for (set by the sweeper; 1 outside a rounds sweep; 0 the warm-up process).
    round: int = 1
    # true: before the first round, one more worker process runs the sweep's first job and its figures are
    # thrown away (hydra_plugins/infersweep_sweeper; docs/benchmarks/noise-at-source.md).
    warmup_process: bool = False
    timeout_s: float = 600.0
    # true: after the measurement, one more generate under torch.profiler (backends/profile.py).
    profile: bool = False
    # true: GPU (NVML) and host (psutil) telemetry during the timed repeats, energy per token
    # (backends/telemetry.py); false: none of it runs (its cost: benchmarks/telemetry_overhead.py).
    telemetry: bool = True
    # false (default): consecutive jobs that differ only in batch_size, new_tokens, prompt_tokens, repeats,
    # timeout_s or profile share one launched worker that loads the model once (load_s is that one load);
    # a job that is not ok ends that worker and the next job starts a fresh one. On one H200 the two modes
    # measured the same ms/token within the spread between processes, and the shared worker took 21.9 s of
    # wall time where a launcher per job took 48.1 s (docs/benchmarks/runner-overhead.md).
    # true: a launcher per job, each point in a process tree of its own. A multi-node job always launches
    # its own ranks.
    isolate: bool = False
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
    # USD per hour of one GPU, and of one node for a CPU job (num_gpus=0): the analysis gives each point's USD
    # per million generated tokens from them (docs/analysis.md); null: no cost.
    price_per_gpu_hour: float | None = None
    price_per_cpu_node_hour: float | None = None
    # true: print each job's label and state (new, done, resumable, invalid) and the sweep's estimated time
    # from the history; launch nothing, write nothing (runner/dryrun.py).
    dry_run: bool = False
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


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean X?)` for the choice nearest a mistyped `word`, or "" where none is near."""
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {near[0]}?)" if near else ""


def unknown_key_line(key: str, value: Any, known: Any) -> str:
    """The one line for a key the schema does not know: the dotted `key`, its `value`, the nearest of the
    `known` keys of its section."""
    prefix, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, [str(k) for k in known], n=1)
    hint = f" (did you mean {prefix + '.' if prefix else ''}{near[0]}?)" if near else ""
    return f"{key}={value}: unknown key{hint}; `python -m runner --cfg job` lists the keys"


def unknown_key(cfg: DictConfig) -> str | None:
    """A key the schema does not know (a `+key=value` typo, which Hydra adds instead of refusing), as one
    line naming it, its value and the nearest known key; None when every key is known."""
    def check(node: DictConfig, schema: type, prefix: str) -> str | None:
        known = [f.name for f in fields(schema)]
        for key in node:
            if key not in known and not (prefix == "" and key == "hydra"):
                return unknown_key_line(f"{prefix}{key}", OmegaConf.to_container(node, resolve=False)[key], known)
        return None

    sections = [(cfg, SweepConfig, "")] + [(cfg[g], s, f"{g}.") for g, s in GROUP_SCHEMAS.items() if g in cfg]
    if "backend" in cfg and cfg.backend.get("name") in names():
        sections.append((cfg.backend, lookup(cfg.backend.name).config, "backend."))
    for node, schema, prefix in sections:
        problem = check(node, schema, prefix)
        if problem:
            return problem
    return None


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def group_options(group: str) -> list:
    """The options of a config group (conf/<group>/*.yaml; the backends' from the registry)."""
    return list(names()) if group == "backend" else sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _allowed(kind: Any) -> tuple:
    """(what a schema type allows, in words; its values, where it has a few) for the error lines."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        text, values = _allowed(args[0]) if len(args) == 1 else ("a value", [])
        return f"{text} or null", values
    if isinstance(kind, type) and issubclass(kind, Enum):
        values = [m.name for m in kind]
        return ", ".join(values), values
    if kind is bool:
        return "true or false", ["true", "false"]
    return {int: "an int", float: "a number", str: "text"}.get(kind, getattr(kind, "__name__", str(kind))), []


def _override_of(exc: ConfigCompositionException) -> tuple:
    """(key, value) of the override a ConfigCompositionException is about, from Hydra's words."""
    message = str(exc)
    match = re.search(r"use \+(\S+?)=(.*)$", message) or re.search(r"override (\S+?)=(.*)$", message.splitlines()[0])
    return (match.group(1), match.group(2)) if match else (None, None)


def config_error(exc: BaseException) -> str | None:
    """The one line for an error Hydra raised composing the config from the command line: the key, the
    value, what is allowed and the nearest allowed value; None for any other exception."""
    if isinstance(exc, OverrideParseException):
        return malformed_override(exc.override, exc.message.splitlines())
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = sorted(exc.options)
        return f"{group}={option}: no such option (allowed: {', '.join(options)}){did_you_mean(option, options)}"
    if not isinstance(exc, ConfigCompositionException):
        return None
    key, value = _override_of(exc)
    cause = exc.__cause__
    if key is None or cause is None:
        return None
    schema = getattr(cause, "object_type", None)
    known = {f.name: f.type for f in fields(schema)} if isinstance(schema, type) and hasattr(schema, "__dataclass_fields__") else {}
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return unknown_key_line(key, value, known)
    if isinstance(cause, ValidationError):
        leaf = key.rpartition(".")[2]
        if leaf not in known:
            return f"{key}={value}: {str(cause).splitlines()[0]}"
        text, values = _allowed(known[leaf])
        return f"{key}={value}: allowed: {text}{did_you_mean(value, values)}"
    return None


def override_problem(overrides: list) -> str | None:
    """The one line for the first command-line override Hydra cannot parse or that names no key, else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parsed = parser.parse_overrides([override])
        except OverrideParseException as e:
            return config_error(e)
        if not parsed[0].key_or_group:
            return malformed_override(override, ["no key before ="])
    return None


def malformed_override(override: str, why: list) -> str:
    """The one line for an override Hydra cannot parse (`why`: its parser's words, the first one kept)."""
    said = next((w for w in why if w.strip() and not w.startswith(("Error parsing", "See https"))), "")
    return (f"{override}: not an override ({said.strip() or 'malformed'}); allowed: key=value, key=a,b,c with -m, "
            "+key=value to add a key, ~key to remove one")


def resolve(cfg: DictConfig) -> dict:
    """A job's full config as plain data, with `num_gpus: null` resolved to what this machine has."""
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if config["num_gpus"] is None:
        config["num_gpus"] = 1 if visible_gpus() else 0
    return config
