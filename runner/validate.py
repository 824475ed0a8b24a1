"""Which jobs cannot run, and why: each check returns a one-line reason that names the key."""
import os
from pathlib import Path

from runner.stack import Stack

IMPLEMENTED_BACKENDS = ("accelerate",)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _positive(config: dict) -> str | None:
    for key in ("batch_size", "new_tokens", "prompt_tokens", "repeats", "timeout_s"):
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


def _backend(config: dict) -> str | None:
    name = config["backend"]["name"]
    if name not in IMPLEMENTED_BACKENDS:
        return f"backend={name}: not implemented yet (implemented: {', '.join(IMPLEMENTED_BACKENDS)})"
    if name == "accelerate":
        device_map = config["backend"]["device_map"]
        if device_map not in DEVICE_MAPS:
            return f"backend.device_map={device_map}: allowed: {', '.join(DEVICE_MAPS)}"
        if device_map == "balanced_low_0" and config["num_gpus"] < 2:
            return "backend.device_map=balanced_low_0: keeping GPU 0 free of weights needs num_gpus >= 2"
    return None


def _dtype(config: dict, stack: Stack) -> str | None:
    if config["dtype"]["name"] != "int8":
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
    if offload["name"] == "cpu" and config["num_gpus"] == 0:
        return "offload=cpu: needs a GPU to offload from (num_gpus=0 already runs on the CPU)"
    if offload["name"] == "nvme":
        path = offload["path"]
        if not path:
            return "offload=nvme: offload.path is not set (allowed: an existing writable directory)"
        if not Path(path).is_dir():
            return f"offload.path={path}: no such directory"
        if not os.access(path, os.W_OK):
            return f"offload.path={path}: not writable"
    return None


def _model(config: dict) -> str | None:
    model = config["model"]
    if model["source"] not in ("synthetic", "pretrained"):
        return f"model.source={model['source']}: allowed: synthetic, pretrained"
    if model["source"] == "pretrained":
        path = model["path"]
        if not path:
            return "model.path is not set (allowed: a local checkpoint directory or a hub name)"
        looks_local = path.startswith(("/", ".", "~")) or path.count("/") > 1
        if looks_local and not Path(path).expanduser().is_dir():
            return f"model.path={path}: no such directory"
    return None


def invalid_reason(config: dict, stack: Stack, gpus: tuple) -> str | None:
    """Why the job described by the resolved `config` cannot run on `stack` and `gpus`, or None."""
    return (_positive(config) or _gpus(config, gpus) or _backend(config) or _dtype(config, stack)
            or _offload(config) or _model(config))
