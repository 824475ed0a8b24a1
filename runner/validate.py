"""Which jobs cannot run, and why: each check returns a one-line reason that names the key."""
from pathlib import Path

import psutil

from backends import lookup
from backends.spec import Stack
from backends.synthetic import SYNTHETIC_ARCHS, cache_root, checkpoint_ready, synthetic_params
from core.jobdir import write_error
from runner.config import did_you_mean, group_options
from runner.multinode import nodes_reason
from runner.stack import gpu_memory_gib, interpreter, probe
from runner.storage import unwritable


def batch_size_type_error(value: object) -> str | None:
    """batch_size is an int or `max` (a wrong type stops the sweep; a size < 1 is the job's `invalid`)."""
    if value != "max" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"batch_size={value}: allowed: a positive int or max"
    return None


def batch_size_error(config: dict) -> str | None:
    """batch_size is a positive int or `max` (the largest that fits, found by search up to max_batch_cap)."""
    value = config["batch_size"]
    if value == "max":
        if config["max_batch_cap"] < 1:
            return f"max_batch_cap={config['max_batch_cap']}: must be >= 1"
        if _world_size(config) > 1:
            return ("batch_size=max: the search runs in one process (an out-of-memory on one rank of several "
                    "cannot be retried; allowed with one GPU or cpu_ranks=1, or a one-process backend)")
        return None
    return batch_size_type_error(value)


def _world_size(config: dict) -> int:
    try:
        return lookup(config["backend"]["name"]).world_size(config)
    except ValueError:  # an unknown backend: _backend names it
        return 1


def _positive(config: dict) -> str | None:
    reason = batch_size_error(config)
    if reason:
        return reason
    for key in ("batch_size", "new_tokens", "prompt_tokens", "repeats", "timeout_s"):
        if config[key] == "max":
            continue
        if config[key] <= 0:
            return f"{key}={config[key]}: must be > 0"
    if config["host_mem_limit_gib"] is not None and config["host_mem_limit_gib"] <= 0:
        return f"host_mem_limit_gib={config['host_mem_limit_gib']}: must be > 0 or null"
    return None


def _gpus(config: dict, gpus: tuple) -> str | None:
    n = config["num_gpus"]
    if n < 0 or n > len(gpus):
        return f"num_gpus={n}: {len(gpus)} GPU(s) visible (allowed: 0..{len(gpus)}; 0 runs on the CPU)"
    return None


def _backend(config: dict, stack: Stack) -> str | None:
    """What the job's backend needs of the stack and the config, as its spec says."""
    name = config["backend"]["name"]
    try:
        spec = lookup(name)
    except ValueError as e:
        return str(e)
    for library in spec.requires:
        if not stack.has(library):
            return f"backend={name}: {library} is not installed in stack {stack.python}"
    if config["cpu_ranks"] < 1:
        return f"cpu_ranks={config['cpu_ranks']}: must be >= 1"
    if not spec.multi_rank and config["num_gpus"] == 0 and config["cpu_ranks"] != 1:
        return f"cpu_ranks={config['cpu_ranks']}: backend={name} runs one process (allowed: cpu_ranks=1)"
    return spec.validate(config, stack)


def _offload(config: dict) -> str | None:
    offload = config["offload"]
    if offload["name"] == "nvme":
        path = offload["path"]
        allowed = "(allowed: an existing writable directory)"
        if not path:
            return f"offload=nvme: offload.path is not set {allowed}"
        if not Path(path).exists():
            return f"offload.path={path}: no such directory {allowed}"
        if not Path(path).is_dir():
            return f"offload.path={path}: not a directory {allowed}"
        error = write_error(Path(path))
        if error:
            return f"offload.path={path}: not writable ({error.strerror or type(error).__name__}) {allowed}"
    return None


def _model(config: dict) -> str | None:
    model = config["model"]
    if model["source"] not in ("synthetic", "pretrained"):
        return f"model.source={model['source']}: allowed: synthetic, pretrained"
    if model["source"] == "synthetic":
        if model["arch"] not in SYNTHETIC_ARCHS:
            return f"model.arch={model['arch']}: allowed: {', '.join(SYNTHETIC_ARCHS)}"
        if model["arch"] == "llama" and not model["intermediate_size"]:
            return "model.intermediate_size is not set (allowed: a positive int; model.arch=llama needs it)"
        kv = model["n_kv_head"] or model["n_head"]
        if model["n_head"] % kv:
            return f"model.n_kv_head={kv}: must divide model.n_head={model['n_head']}"
    if model["source"] == "pretrained":
        path = model["path"]
        if not path:
            return "model.path is not set (allowed: a local checkpoint directory or a hub name)"
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1
        if looks_local and not Path(path).expanduser().is_dir():
            return f"model.path={path}: no such directory (allowed: a local checkpoint directory or a hub name)"
    return None


WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}


def _device_memory(config: dict, gpus: tuple) -> tuple | None:
    """(GiB, which) of the memory that holds a job's model: the machine's RAM on the CPU, else its GPUs'
    over its nodes; None where a GPU's size is unknown."""
    n = config["num_gpus"]
    if n == 0:
        return psutil.virtual_memory().total / 2**30, "this machine's RAM (num_gpus=0)"
    sizes = [gpu_memory_gib().get(gpu) for gpu in gpus[:n]]
    if not sizes or None in sizes:
        return None
    return sum(sizes) * config["num_nodes"], f"{n} GPU(s) x {config['num_nodes']} node(s)"


def _fits(config: dict, gpus: tuple) -> str | None:
    """A synthetic model whose weights alone exceed the memory of the devices that must hold them (no
    offload) is refused before its checkpoint is built: BLOOM-176B is 328 GiB of bf16 to write, then to
    fail to load on one GPU. Pretrained checkpoints, and GPUs whose size is unknown, are left to the load."""
    model, dtype = config["model"], config["dtype"]["name"]
    if model["source"] != "synthetic" or config["offload"]["name"] != "none":
        return None
    need, memory = synthetic_params(model) * WEIGHT_BYTES[dtype] / 2**30, _device_memory(config, gpus)
    if memory is None or need <= memory[0]:
        return None
    have, where = memory
    return (f"model={model['name']}: its {need:.0f} GiB of {dtype} weights exceed the {have:.0f} GiB of {where} "
            "(allowed: more num_gpus or num_nodes, a smaller dtype, or offload=cpu|nvme)")


def invalid_reason(config: dict, stack: Stack, gpus: tuple) -> str | None:
    """Why the job described by the resolved `config` cannot run on `stack` and `gpus`, or None."""
    return (_positive(config) or nodes_reason(config) or _gpus(config, gpus) or _backend(config, stack)
            or _offload(config) or _model(config) or _fits(config, gpus))


# -- before any job: the inputs a whole sweep depends on, as one line each (runner exits 2) ----------------


def _kv_cache_gib(config: dict) -> float:
    """GiB of the KV cache a generate of the job holds at its end (a synthetic shape): keys and values of
    every layer for every token of every sequence."""
    model = config["model"]
    kv_width = model["hidden_size"] * (model["n_kv_head"] or model["n_head"]) // model["n_head"]
    tokens = config["batch_size"] * (config["prompt_tokens"] + config["new_tokens"])
    return 2 * model["n_layer"] * kv_width * WEIGHT_BYTES[config["dtype"]["name"]] * tokens / 2**30


def _memory_guard(config: dict, gpus: tuple) -> str | None:
    """A batch size whose weights and KV cache alone exceed all the memory of the devices that hold them:
    it could only end in an out-of-memory, after a launch and a load (synthetic shapes; a checkpoint's
    size is known only once loaded)."""
    model = config["model"]
    if model["source"] != "synthetic" or config["offload"]["name"] != "none" or config["batch_size"] == "max":
        return None
    if _positive(config):
        return None  # sizes that are no positive ints are the job's `invalid` result (_positive)
    need = synthetic_params(model) * WEIGHT_BYTES[config["dtype"]["name"]] / 2**30 + _kv_cache_gib(config)
    memory = _device_memory(config, gpus)
    if memory is None or need <= memory[0]:
        return None
    have, where = memory
    return (f"batch_size={config['batch_size']}: its weights and KV cache alone need {need:.0f} GiB, more than "
            f"the {have:.0f} GiB of {where} (allowed: a smaller batch_size, fewer tokens, or batch_size=max)")


def _group_names(config: dict) -> str | None:
    """backend.name, dtype.name and offload.name set directly must name an option of their group."""
    for group in ("backend", "dtype", "offload"):
        name, options = config[group]["name"], group_options(group)
        if name not in options:
            return f"{group}.name={name}: allowed: {', '.join(options)}{did_you_mean(name, options)}"
    return None


def preflight_reason(config: dict, gpus: tuple) -> str | None:
    """Why the sweep cannot start at all, found before anything is launched: a group's name that is none of
    its options, a batch size of the wrong type, a stack interpreter that does not run, a model directory with
    no checkpoint, a cache_dir that is a file or cannot be written where a checkpoint is to be built, a batch
    size that cannot fit."""
    problem = _group_names(config) or batch_size_type_error(config["batch_size"])
    if problem:
        return problem
    try:
        probe(interpreter(config["stack"]))
    except ValueError as e:
        return str(e)
    model = config["model"]
    if model["source"] == "pretrained" and model["path"]:
        path = Path(model["path"]).expanduser()
        if path.is_dir() and not (path / "config.json").is_file():
            return (f"model.path={model['path']}: holds no checkpoint (no config.json) "
                    "(allowed: a checkpoint directory or a hub name)")
        reason = _model(config)
        if reason:
            return reason
    for key in ("price_per_gpu_hour", "price_per_cpu_node_hour"):
        price = config[key]
        if price is not None and price < 0:
            return f"{key}={price}: allowed: USD per hour >= 0, or null (no cost)"
    cache = cache_root(config)
    key = "cache_dir" if config["cache_dir"] else "INFERSWEEP_CACHE"
    if cache.exists() and not cache.is_dir():
        return f"{key}={cache}: is a file (allowed: a directory, created where missing)"
    # The runner builds a synthetic checkpoint there before the launch: a cache that cannot take a byte (a full
    # disk, a read-only file system) stops the sweep now, not job after job. A dry run writes nothing.
    if model["source"] == "synthetic" and not checkpoint_ready(config) and not config["dry_run"]:
        problem = unwritable(cache, key)
        if problem:
            return problem
    return _memory_guard(config, gpus)
