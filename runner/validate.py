"""Which jobs cannot run, and why: each check returns a one-line reason that names the key."""
import json
import os
import tempfile
from pathlib import Path

import psutil

from backends.synthetic import SYNTHETIC_ARCHS, synthetic_params
from runner.cluster import nodes_reason
from runner.stack import Stack, gpu_memory_gib

IMPLEMENTED_BACKENDS = ("accelerate", "ds-inference", "ds-zero")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def batch_size_error(config: dict) -> str | None:
    """batch_size is a positive int or `max` (the largest that fits, found by search up to max_batch_cap)."""
    value = config["batch_size"]
    if value == "max":
        if config["max_batch_cap"] < 1:
            return f"max_batch_cap={config['max_batch_cap']}: must be >= 1"
        if config["backend"]["name"] != "accelerate" and (config["num_gpus"] or config["cpu_ranks"]) > 1:
            return ("batch_size=max: the search runs in one process (an out-of-memory on one rank of several "
                    "cannot be retried; allowed with one GPU or cpu_ranks=1, or backend=accelerate)")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"batch_size={value}: allowed: a positive int or max"
    return None


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
    name = config["backend"]["name"]
    if name not in IMPLEMENTED_BACKENDS:
        return f"backend={name}: not implemented yet (implemented: {', '.join(IMPLEMENTED_BACKENDS)})"
    if name in ("ds-inference", "ds-zero"):
        return _deepspeed(config, stack)
    if config["num_gpus"] == 0 and config["cpu_ranks"] != 1:
        return f"cpu_ranks={config['cpu_ranks']}: backend={name} runs one process (allowed: cpu_ranks=1)"
    if name == "accelerate":
        device_map = config["backend"]["device_map"]
        if device_map not in DEVICE_MAPS:
            return f"backend.device_map={device_map}: allowed: {', '.join(DEVICE_MAPS)}"
        if device_map == "balanced_low_0" and config["num_gpus"] < 2:
            return "backend.device_map=balanced_low_0: keeping GPU 0 free of weights needs num_gpus >= 2"
        if config["backend"]["attn_implementation"] not in (None, "eager") and model_type(config) == "bloom":
            return (f"backend.attn_implementation={config['backend']['attn_implementation']}: transformers has "
                    "only eager attention for BLOOM (allowed for BLOOM: eager or null)")
    return None


# Newest transformers whose BLOOM modelling code DeepSpeed's fused-kernel container accepts
# (deepspeed/module_inject/containers/bloom.py refuses anything newer).
DS_BLOOM_MAX_TRANSFORMERS = (4, 43)
KERNEL_INJECT = ("auto", "true", "false")


def model_type(config: dict) -> str | None:
    """The architecture the job loads: bloom for the synthetic shapes, config.json's for a local dir."""
    model = config["model"]
    if model["source"] == "synthetic":
        return model["arch"]
    path = Path(model["path"] or "").expanduser() / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None  # a hub name: decided in the worker


def kernel_inject_mode(config: dict) -> str:
    """backend.kernel_inject as auto|true|false (Hydra turns a typed true into the string "True")."""
    return str(config["backend"]["kernel_inject"]).strip().lower()


def _version_tuple(version: str | None, length: int = 2) -> tuple:
    """(major, minor), or `length` leading numbers, of a version string; (0,) when it is missing."""
    parts = []
    for part in (version or "0").split(".")[:length]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# DeepSpeed PR #6528 made init_inference accept only the accelerator's supported_dtypes(), which lists no
# int8 on any accelerator: "Data type torch.int8 is not supported". First in 0.15.2 (inference/engine.py
# of the 0.15.1 and 0.15.2 sdists compared); 0.19.8 refused it on the H100.
DS_INT8_GATE_FROM = (0, 15, 2)


def bloom_kernels_refused(stack: Stack) -> bool:
    return _version_tuple(stack.versions.get("transformers")) > DS_BLOOM_MAX_TRANSFORMERS


def _deepspeed(config: dict, stack: Stack) -> str | None:
    """ds-inference and ds-zero: what DeepSpeed (on this stack) cannot do, named."""
    name, dtype, offload = config["backend"]["name"], config["dtype"]["name"], config["offload"]["name"]
    if not stack.has("deepspeed"):
        return f"backend={name}: deepspeed is not installed in stack {stack.python}"
    if config["cpu_ranks"] < 1:
        return f"cpu_ranks={config['cpu_ranks']}: must be >= 1"
    if name == "ds-zero":
        if dtype == "int8":
            return "dtype=int8: ZeRO-3 inference has no int8 weights (allowed: fp32, bf16, fp16)"
        return None
    # ds-inference
    if offload != "none":
        return (f"offload={offload}: DeepSpeed-Inference keeps all weights on the GPUs (tensor parallel), "
                "no offload (allowed: offload=none; offload is ds-zero's or accelerate's)")
    mode = kernel_inject_mode(config)
    if mode not in KERNEL_INJECT:
        return f"backend.kernel_inject={config['backend']['kernel_inject']}: allowed: {', '.join(KERNEL_INJECT)}"
    gpu = config["num_gpus"] > 0
    arch = model_type(config)
    refused = arch == "bloom" and bloom_kernels_refused(stack)
    refusal = (f"DeepSpeed refuses BLOOM kernel injection on transformers {stack.versions.get('transformers')} "
               "(> 4.43.4; use a stack with transformers 4.43.4, see README)")
    kernels = mode == "true" or (mode == "auto" and gpu and not refused)
    if mode == "true" and not gpu:
        return "backend.kernel_inject=true: DeepSpeed's fused inference kernels need a CUDA GPU (num_gpus=0)"
    if mode == "true" and refused:
        return f"backend.kernel_inject=true: {refusal}"
    if dtype == "int8":
        if _version_tuple(stack.versions.get("deepspeed"), 3) >= DS_INT8_GATE_FROM:
            return (f"dtype=int8: DeepSpeed {stack.versions['deepspeed']} rejects int8 in init_inference on every "
                    "accelerator (deepspeedai/DeepSpeed#8577, since 0.15.2; allowed: fp16, bf16, fp32)")
        if not gpu:
            return "dtype=int8: DeepSpeed-Inference int8 needs its fused CUDA kernels (num_gpus=0)"
        if refused:
            return f"dtype=int8: DeepSpeed-Inference int8 needs kernel injection, and {refusal}"
        if not kernels:
            return "dtype=int8: DeepSpeed-Inference int8 needs kernel injection; AutoTP has no int8 (kernel_inject=false)"
    if config["backend"]["pre_sharded"] and dtype == "int8":
        return "backend.pre_sharded=true: not with dtype=int8 (the runner writes fp16/bf16 shards only)"
    if config["backend"]["cuda_graph"]:
        if not gpu:
            return "backend.cuda_graph=true: CUDA graphs need a GPU (num_gpus=0)"
        if config["num_gpus"] > 1:
            return "backend.cuda_graph=true: DeepSpeed does not support CUDA graphs with tensor parallelism (num_gpus > 1)"
        if not kernels:
            return ("backend.cuda_graph=true: DeepSpeed captures graphs only in kernel-injected layers "
                    "(kernel_inject=false, or auto resolving to AutoTP here)")
        if arch == "bloom":
            return "backend.cuda_graph=true: DeepSpeed refuses enable_cuda_graph with BLOOM kernel injection"
    return None


def _dtype(config: dict, stack: Stack) -> str | None:
    if config["dtype"]["name"] != "int8" or config["backend"]["name"] != "accelerate":  # ds: _deepspeed
        return None
    if not stack.has("bitsandbytes"):
        return f"dtype=int8: bitsandbytes is not installed in stack {stack.python}"
    if config["num_gpus"] == 0:
        return "dtype=int8: bitsandbytes LLM.int8() needs a CUDA GPU (num_gpus=0)"
    if config["offload"]["name"] != "none":
        return f"dtype=int8: not combined with offload={config['offload']['name']} (allowed: offload=none)"
    return None


def _offload(config: dict) -> str | None:
    offload = config["offload"]
    # ZeRO's parameter offload is its own code path (partitioned params swapped in per layer): allowed
    # on the CPU too, where it is a functional test of that path rather than a meaningful measurement.
    if offload["name"] == "cpu" and config["num_gpus"] == 0 and config["backend"]["name"] != "ds-zero":
        return "offload=cpu: needs a GPU to offload from (num_gpus=0 already runs on the CPU)"
    if offload["name"] == "nvme":
        path = offload["path"]
        allowed = "(allowed: an existing writable directory)"
        if not path:
            return f"offload=nvme: offload.path is not set {allowed}"
        if not Path(path).exists():
            return f"offload.path={path}: no such directory {allowed}"
        if not Path(path).is_dir():
            return f"offload.path={path}: not a directory {allowed}"
        why = _not_writable(Path(path))
        if why:
            return f"offload.path={path}: not writable ({why}) {allowed}"
    return None


def _not_writable(directory: Path) -> str | None:
    """Why no file can be created in `directory`, found by creating one (root passes every permission
    check of os.access, but not a read-only file system); None if one can."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".infersweep-write-test-")
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(tmp)
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


def _fits(config: dict, gpus: tuple) -> str | None:
    """A synthetic model whose weights alone exceed the memory of the devices that must hold them (no
    offload) is refused before its checkpoint is built: BLOOM-176B is 328 GiB of bf16 to write, then to
    fail to load on one GPU. Pretrained checkpoints, and GPUs whose size is unknown, are left to the load."""
    model, dtype, n = config["model"], config["dtype"]["name"], config["num_gpus"]
    if model["source"] != "synthetic" or config["offload"]["name"] != "none":
        return None
    need = synthetic_params(model) * WEIGHT_BYTES[dtype] / 2**30
    if n == 0:
        have, where = psutil.virtual_memory().total / 2**30, "this machine's RAM (num_gpus=0)"
    else:
        sizes = [gpu_memory_gib().get(gpu) for gpu in gpus[:n]]
        if not sizes or None in sizes:
            return None
        have, where = sum(sizes) * config["num_nodes"], f"{n} GPU(s) x {config['num_nodes']} node(s)"
    if need <= have:
        return None
    return (f"model={model['name']}: its {need:.0f} GiB of {dtype} weights exceed the {have:.0f} GiB of {where} "
            "(allowed: more num_gpus or num_nodes, a smaller dtype, or offload=cpu|nvme)")


def invalid_reason(config: dict, stack: Stack, gpus: tuple) -> str | None:
    """Why the job described by the resolved `config` cannot run on `stack` and `gpus`, or None."""
    return (_positive(config) or nodes_reason(config) or _gpus(config, gpus) or _backend(config, stack)
            or _dtype(config, stack) or _offload(config) or _model(config) or _fits(config, gpus))
