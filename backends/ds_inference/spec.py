"""backend=ds-inference: its options, its rules, its launcher, and the one choice between DeepSpeed's fused
kernels and AutoTP (made here for validation and in the worker alike). Torch-free."""
from collections.abc import Callable
from dataclasses import dataclass

from backends.launchers import deepspeed_launch
from backends.spec import BackendSpec, Stack, version_tuple
from backends.synthetic import model_type

KERNEL_INJECT = ("auto", "true", "false")
# Newest transformers whose BLOOM modelling code DeepSpeed's fused-kernel container accepts
# (deepspeed/module_inject/containers/bloom.py refuses anything newer).
BLOOM_KERNEL_MAX_TRANSFORMERS = (4, 43)
# DeepSpeed PR #6528 made init_inference accept only the accelerator's supported_dtypes(), which lists no
# int8 on any accelerator: "Data type torch.int8 is not supported". First in 0.15.2.
INT8_REFUSED_FROM = (0, 15, 2)


@dataclass
class DSInferenceConfig:
    name: str = "ds-inference"
    # auto: DeepSpeed's fused kernels where it supports the architecture and the transformers version
    # (and there is a GPU), AutoTP otherwise; true: kernels or `invalid`; false: AutoTP always.
    kernel_inject: str = "auto"
    # enable_cuda_graph: only where the kernel path supports it (DeepSpeed refuses it for BLOOM).
    cuda_graph: bool = False
    # Load a TP-pre-sharded checkpoint (one file set per rank), written once per (model, dtype,
    # world size, path) under cache_dir the first time, outside load_s; false: load the original.
    pre_sharded: bool = False


def kernel_inject_mode(config: dict) -> str:
    """backend.kernel_inject as auto|true|false (Hydra turns a typed true into the string "True")."""
    return str(config["backend"]["kernel_inject"]).strip().lower()


def bloom_kernels_refused(transformers: str | None) -> bool:
    return version_tuple(transformers) > BLOOM_KERNEL_MAX_TRANSFORMERS


def kernel_path(config: dict, arch: str | None, transformers: str | None,
                policy_matches: Callable[[], bool] | None = None) -> tuple:
    """(use DeepSpeed's fused kernels?, why). `policy_matches()`: whether a DeepSpeed kernel policy knows a
    layer of the model (the worker asks, last, as it builds a model to tell); None before launch."""
    mode = kernel_inject_mode(config)
    if mode == "false":
        return False, "kernel_inject=false"
    if mode == "true":
        return True, "kernel_inject=true"
    if config["num_gpus"] == 0:
        return False, "auto: no GPU (DeepSpeed's fused kernels are CUDA only)"
    if arch == "bloom" and bloom_kernels_refused(transformers):
        return False, f"auto: DeepSpeed refuses BLOOM kernel injection on transformers {transformers} (> 4.43.4)"
    if version_tuple(transformers) >= (5, 0):
        return False, f"auto: DeepSpeed's kernel containers target transformers 4.x modelling code ({transformers})"
    if policy_matches is not None and not policy_matches():
        return False, f"auto: no DeepSpeed kernel policy for model_type={arch}"
    return True, f"auto: DeepSpeed kernel policy for model_type={arch}"


def validate(config: dict, stack: Stack) -> str | None:
    """What DeepSpeed-Inference (on this stack) cannot do, named."""
    dtype, offload, backend = config["dtype"]["name"], config["offload"]["name"], config["backend"]
    if offload != "none":
        return (f"offload={offload}: DeepSpeed-Inference keeps all weights on the GPUs (tensor parallel), "
                "no offload (allowed: offload=none; offload is ds-zero's or accelerate's)")
    mode = kernel_inject_mode(config)
    if mode not in KERNEL_INJECT:
        return f"backend.kernel_inject={backend['kernel_inject']}: allowed: {', '.join(KERNEL_INJECT)}"
    gpu, arch, transformers = config["num_gpus"] > 0, model_type(config), stack.versions.get("transformers")
    refused = arch == "bloom" and bloom_kernels_refused(transformers)
    refusal = (f"DeepSpeed refuses BLOOM kernel injection on transformers {transformers} "
               "(> 4.43.4; use a stack with transformers 4.43.4, see README)")
    kernels, _ = kernel_path(config, arch, transformers)
    if mode == "true" and not gpu:
        return "backend.kernel_inject=true: DeepSpeed's fused inference kernels need a CUDA GPU (num_gpus=0)"
    if mode == "true" and refused:
        return f"backend.kernel_inject=true: {refusal}"
    if dtype == "int8":
        if version_tuple(stack.versions.get("deepspeed"), 3) >= INT8_REFUSED_FROM:
            return (f"dtype=int8: DeepSpeed {stack.versions['deepspeed']} rejects int8 in init_inference on every "
                    "accelerator (deepspeedai/DeepSpeed#8577, since 0.15.2; allowed: fp16, bf16, fp32)")
        if not gpu:
            return "dtype=int8: DeepSpeed-Inference int8 needs its fused CUDA kernels (num_gpus=0)"
        if refused:
            return f"dtype=int8: DeepSpeed-Inference int8 needs kernel injection, and {refusal}"
        if not kernels:
            return "dtype=int8: DeepSpeed-Inference int8 needs kernel injection; AutoTP has no int8 (kernel_inject=false)"
    if backend["pre_sharded"] and dtype == "int8":
        return "backend.pre_sharded=true: not with dtype=int8 (the runner writes fp16/bf16 shards only)"
    if backend["cuda_graph"]:
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


SPEC = BackendSpec(
    name="ds-inference",
    config=DSInferenceConfig,
    command=deepspeed_launch,
    backend="backends.ds_inference.backend:DSInferenceBackend",
    requires=("deepspeed",),
    multi_rank=True,
    multinode=True,
    validate=validate,
    result_fields={
        "path": "kernel_inject (DeepSpeed's fused kernels) or autotp",
        "path_reason": "why that path",
        "tp_size": "tensor-parallel degree (the world size)",
        "pre_sharded": "loaded from a TP-pre-sharded checkpoint",
        "shards_written_by_this_job": "pre_sharded: this job wrote the shards (outside load_s)",
        "loaded_from": "what the weights were read from",
        "kernel_op_load_s": "seconds to build or load the fused-kernel op (outside load_s)",
        "lm_head": "the output head's class: cut over the ranks or whole",
    },
)
