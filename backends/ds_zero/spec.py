"""backend=ds-zero: its options, its rules, its launcher. Torch-free."""
from dataclasses import dataclass

from backends.launchers import deepspeed_launch
from backends.spec import BackendSpec, Stack


@dataclass
class DSZeroConfig:
    name: str = "ds-zero"
    # The seed's ZeRO-3 buckets, in elements, as multiples of hidden_size**2 (made ints: DeepSpeed's
    # config validator rejects floats).
    reduce_bucket: float = 1.0
    prefetch_bucket: float = 0.9
    # offload=nvme: how many swap buffers, each sized to the largest parameter.
    nvme_buffer_count: int = 5


def validate(config: dict, stack: Stack) -> str | None:
    # offload=cpu is allowed on the CPU too: ZeRO's parameter offload is its own code path (partitioned
    # params swapped in per layer), exercised there rather than measured.
    if config["dtype"]["name"] == "int8":
        return "dtype=int8: ZeRO-3 inference has no int8 weights (allowed: fp32, bf16, fp16)"
    return None


SPEC = BackendSpec(
    name="ds-zero",
    config=DSZeroConfig,
    command=deepspeed_launch,
    backend="backends.ds_zero.backend:DSZeroBackend",
    requires=("deepspeed",),
    multi_rank=True,
    multinode=True,
    validate=validate,
    result_fields={
        "zero_stage": "3",
        "world_size": "ranks, each generating its own stream",
        "streams": "generate streams at once (ms_per_token is their aggregate)",
        "offload_param": "none, cpu or nvme",
        "reduce_bucket_size": "elements",
        "stage3_prefetch_bucket_size": "elements",
        "nvme_buffer_size": "offload=nvme: elements per swap buffer",
    },
)
