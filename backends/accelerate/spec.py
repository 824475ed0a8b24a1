"""backend=accelerate: its options, its rules, its launcher. Torch-free."""
from dataclasses import dataclass

from backends.launchers import accelerate_launch
from backends.spec import BackendSpec, Stack
from backends.synthetic import model_type

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


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


def validate(config: dict, stack: Stack) -> str | None:
    backend, dtype, offload = config["backend"], config["dtype"]["name"], config["offload"]["name"]
    if backend["device_map"] not in DEVICE_MAPS:
        return f"backend.device_map={backend['device_map']}: allowed: {', '.join(DEVICE_MAPS)}"
    if backend["device_map"] == "balanced_low_0" and config["num_gpus"] < 2:
        return "backend.device_map=balanced_low_0: keeping GPU 0 free of weights needs num_gpus >= 2"
    if backend["attn_implementation"] not in (None, "eager") and model_type(config) == "bloom":
        return (f"backend.attn_implementation={backend['attn_implementation']}: transformers has "
                "only eager attention for BLOOM (allowed for BLOOM: eager or null)")
    if offload == "cpu" and config["num_gpus"] == 0:
        return "offload=cpu: needs a GPU to offload from (num_gpus=0 already runs on the CPU)"
    if dtype == "int8":
        if not stack.has("bitsandbytes"):
            return f"dtype=int8: bitsandbytes is not installed in stack {stack.python}"
        if config["num_gpus"] == 0:
            return "dtype=int8: bitsandbytes LLM.int8() needs a CUDA GPU (num_gpus=0)"
        if offload != "none":
            return f"dtype=int8: not combined with offload={offload} (allowed: offload=none)"
    return None


SPEC = BackendSpec(
    name="accelerate",
    config=AccelerateConfig,
    command=accelerate_launch,
    backend="backends.accelerate.backend:AccelerateBackend",
    validate=validate,
    result_fields={
        "device_map": "how many modules each device holds",
        "dtype": "the torch dtype of the weights",
        "llm_int8_threshold": "int8: the LLM.int8() outlier threshold",
        "attn_implementation": "the attention that ran",
        "compile": "backend.compile as asked",
        "compiled": "whether generate() did compile (not with bitsandbytes int8 or offload)",
    },
)
