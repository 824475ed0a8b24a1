"""The sweep's config schema: one small dataclass per group, registered in Hydra's ConfigStore.

The yaml files under conf/ pick these schemas as defaults, so a typo'd key, a wrong type or an
unknown option fails at compose time, before any job runs.
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from runner.cluster import ClusterConfig


@dataclass
class AccelerateConfig:
    name: str = "accelerate"
    # Accelerate's placement of the layers over the GPUs: auto | balanced | balanced_low_0 | sequential.
    # balanced_low_0 keeps GPU 0 nearly free of weights for activations and the KV cache (the seed's
    # trick for int8 on 4 GPUs).
    device_map: str = "auto"
    # GiB of weights kept on the execution device (GPU 0, or the CPU when num_gpus=0) when
    # offload=cpu|nvme; the rest is streamed from CPU RAM or disk at every forward.
    resident_gib: float = 1.0
    # null: transformers' default (sdpa where the model supports it) | sdpa | eager; backend_info
    # records the one that ran (model.config._attn_implementation).
    attn_implementation: str | None = None
    # true: generate() with a static KV cache (generation_config.cache_implementation = "static"),
    # which transformers compiles with torch.compile (the first generate pays the compilation).
    compile: bool = False


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


@dataclass
class DSZeroConfig:
    name: str = "ds-zero"
    # The seed's ZeRO-3 buckets, in elements, as multiples of hidden_size**2 (made ints: DeepSpeed's
    # config validator rejects floats).
    reduce_bucket: float = 1.0
    prefetch_bucket: float = 0.9
    # offload=nvme: how many swap buffers, each sized to the largest parameter.
    nvme_buffer_count: int = 5


BACKEND_SCHEMAS = {"accelerate": AccelerateConfig, "ds-inference": DSInferenceConfig, "ds-zero": DSZeroConfig}


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
    # Nodes a DeepSpeed job spans (world size num_nodes x ranks per node); see runner/cluster.py.
    num_nodes: int = 1
    # A positive int, or max: the largest batch that fits, found by search (doubling, then bisection to
    # within 3%, up to max_batch_cap) in the loaded worker, then measured; checked in runner/validate.py.
    batch_size: Any = 1
    max_batch_cap: int = 1024
    new_tokens: int = 100
    prompt_tokens: int = 8
    repeats: int = 3
    timeout_s: float = 600.0
    # true: after the measurement, one more generate under torch.profiler (backends/profile.py).
    profile: bool = False
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
    # SLURM resources and multi-node placement (runner/cluster.py, docs/cluster.md).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def register_configs() -> None:
    """Schemas live in their own group so that `backend=...` lists only the real options."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="sweep", node=SweepConfig)
    cs.store(group="schema", name="accelerate", node=AccelerateConfig)
    cs.store(group="schema", name="ds_inference", node=DSInferenceConfig)
    cs.store(group="schema", name="ds_zero", node=DSZeroConfig)
    cs.store(group="schema", name="dtype", node=DtypeConfig)
    cs.store(group="schema", name="offload", node=OffloadConfig)
    cs.store(group="schema", name="model", node=ModelConfig)
