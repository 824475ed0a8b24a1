"""The roofline of a decode step: how far a measured point is from what the device's memory bandwidth
and matmul rate allow.

Ceilings (measured once per sweep on the job's device and cached in the sweep directory, so that every
job of the sweep is judged against the same numbers; stored in each result's `env.ceilings`):
  copy_gbps      a large device-to-device copy, bytes read + bytes written per second (GB/s)
  matmul_tflops  a large square matmul in bf16 on a GPU (fp32 on the CPU), TFLOP/s

Floors of one decode step (`roofline` in the result), for the weights this rank holds:
  weight_bytes   sum of numel * element_size over the parameters a step reads in full: all but embedding
                 tables that are not also the output projection (int8 counts 1 byte; ZeRO-3's
                 partitioned parameters count whole: every rank gathers and reads all of them per step)
  kv_bytes       the KV cache read per step at the mean context:
                 2 * n_layer * kv_width * bytes * batch * (prompt_tokens + new_tokens / 2) / tp
  decode_floor_ms_per_step    (weight_bytes + kv_bytes) / copy bandwidth
  compute_floor_ms_per_token  2 * params / matmul rate; x batch for a step
  bound          memory or compute: whichever floor of a step is larger
  fraction_of_floor   that floor / the measured decode_ms_per_step (1.0 = at the hardware limit)
"""
import json
import re
import time
from pathlib import Path

import torch

from core.jobdir import write_json

CEILINGS_FILE = "ceilings-{device}.json"
ACT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 2}  # bytes per KV element (int8 keeps fp16 activations)


def _device_key(device: torch.device) -> str:
    """What a ceiling depends on: the GPU model, or the CPU with the thread count torch uses."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{torch.get_num_threads()}threads"
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, device: torch.device, iters: int, trials: int = 3) -> float:
    """Seconds per call of `fn`: the best of `trials` runs of `iters` calls, after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def _copy_seconds(device: torch.device, nbytes: int, iters: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return _best_time(lambda: dst.copy_(src), device, iters)


def _matmul_seconds(device: torch.device, n: int, dtype: torch.dtype, iters: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return _best_time(lambda: torch.mm(a, b), device, iters)


def measure_ceilings(device: torch.device) -> dict:
    """A large copy's bandwidth and a large matmul's rate on `device` (well under a second on a CPU)."""
    gpu = device.type == "cuda"
    copy_bytes = 2**30 if gpu else 2**26
    copy_s = _copy_seconds(device, copy_bytes, iters=10 if gpu else 3)
    n, dtype = (8192, torch.bfloat16) if gpu else (512, torch.float32)
    matmul_s = _matmul_seconds(device, n, dtype, iters=20 if gpu else 3)
    if gpu:
        torch.cuda.empty_cache()
    return {"device": _device_key(device), "copy_gbps": round(2 * copy_bytes / copy_s / 1e9, 2),
            "copy_bytes": copy_bytes, "matmul_tflops": round(2 * n**3 / matmul_s / 1e12, 4),
            "matmul_n": n, "matmul_dtype": str(dtype).removeprefix("torch.")}


def sweep_ceilings(sweep_dir: Path, device: torch.device, job: int, write: bool = True) -> dict:
    """The sweep's ceilings for `device`: read from the sweep directory, or measured now and (where
    `write`) cached there atomically; a concurrent writer's copy is as good as ours."""
    path = Path(sweep_dir) / CEILINGS_FILE.format(device=_device_key(device))
    try:
        return {**json.loads(path.read_text()), "file": str(path)}
    except (OSError, ValueError):
        pass
    ceilings = {**measure_ceilings(device), "measured_by_job": job,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if write:
        write_json(path, ceilings)
    return {**ceilings, "file": str(path)}


def _count(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # ds_numel: a ZeRO-3 parameter's full size


def weights(model: torch.nn.Module) -> tuple:
    """(parameters, bytes) of the weights a decode step reads in full, as they are held (each shared tensor
    counted once). An embedding table is only looked up (a few rows a step): it counts where it is also the
    output projection (tied, BLOOM's lm_head), not where it is a copy of its own (DeepSpeed's injected
    BLOOM unties it: 2 GB more that no step reads)."""
    looked_up = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    elsewhere = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Embedding)
                 for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if id(p) not in looked_up - elsewhere]
    return sum(_count(p) for p in params), sum(_count(p) * p.element_size() for p in params)


def kv_width(hf_config) -> int:
    """Elements of K (or V) per token per layer: hidden_size, or fewer heads' worth for grouped-query attention."""
    hidden = getattr(hf_config, "hidden_size", None) or hf_config.n_embd
    heads = getattr(hf_config, "num_attention_heads", None) or getattr(hf_config, "n_head", None)
    kv_heads = getattr(hf_config, "num_key_value_heads", None)
    return hidden * kv_heads // heads if heads and kv_heads else hidden


def n_layers(hf_config) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(hf_config, key, None):
            return int(getattr(hf_config, key))
    raise ValueError(f"cannot tell the layer count of model_type={hf_config.model_type}")


def roofline(model: torch.nn.Module, config: dict, batch_size: int, decode_ms_per_step: float | None,
             ceilings: dict, tp: int = 1) -> dict:
    """The floors of one decode step for this rank (`tp`: ranks the KV cache is split over) and the fraction
    of the binding floor that `decode_ms_per_step` achieved."""
    params, weight_bytes = weights(model)
    context = config["prompt_tokens"] + config["new_tokens"] / 2
    kv_bytes = (2 * n_layers(model.config) * kv_width(model.config) * ACT_BYTES[config["dtype"]["name"]]
                * batch_size * context / tp)
    memory_ms = (weight_bytes + kv_bytes) / (ceilings["copy_gbps"] * 1e9) * 1e3
    compute_ms_token = 2 * params / (ceilings["matmul_tflops"] * 1e12) * 1e3
    compute_ms = compute_ms_token * batch_size
    bound = "memory" if memory_ms >= compute_ms else "compute"
    floor = max(memory_ms, compute_ms)
    return {
        "params": params,
        "weight_bytes": weight_bytes,
        "kv_bytes": round(kv_bytes),
        "decode_floor_ms_per_step": memory_ms,
        "compute_floor_ms_per_token": compute_ms_token,
        "compute_floor_ms_per_step": compute_ms,
        "bound": bound,
        "floor_ms_per_step": floor,
        # None where there is no decode step to judge (new_tokens=1) or noise swamped it (<= 0)
        "fraction_of_floor": floor / decode_ms_per_step if decode_ms_per_step and decode_ms_per_step > 0 else None,
    }
