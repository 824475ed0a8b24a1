"""backend=graph: its options, its rules, its launcher. Torch-free."""
from dataclasses import dataclass

from backends.launchers import accelerate_launch
from backends.spec import BackendSpec, Stack
from backends.synthetic import model_type

ARCHS = ("bloom", "llama")  # the model_types backends/graph/model.py has code for
DTYPES = ("fp32", "bf16", "fp16")
# inductor modes that leave CUDA graphs to us (reduce-overhead and max-autotune capture their own)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


@dataclass
class GraphConfig:
    name: str = "graph"
    # true: on a GPU each decode step is replayed from a CUDA graph captured once per batch shape;
    # false: the same step launched op by op (the host-bound baseline). On the CPU the step always runs eagerly.
    cuda_graph: bool = True
    # true: torch.compile the decode step (inductor, `compile_mode`) before it is captured; the first
    # generate of each batch shape pays the compilation (backend_info compile_s).
    compile_step: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"
    # A decode step at position t attends over the cache's first multiple of span_step above t (a graph
    # per span), so it reads about the keys and values it needs; 0: the whole preallocated cache every
    # step. A compiled step always reads the whole cache (one compilation per batch shape).
    span_step: int = 32


def validate(config: dict, stack: Stack) -> str | None:
    backend, dtype, offload = config["backend"], config["dtype"]["name"], config["offload"]["name"]
    if dtype not in DTYPES:
        return f"dtype={dtype}: backend=graph runs unquantised weights (allowed: {', '.join(DTYPES)})"
    if offload != "none":
        return f"offload={offload}: backend=graph keeps every weight on its one device (allowed: offload=none)"
    if config["num_gpus"] > 1:
        return f"num_gpus={config['num_gpus']}: backend=graph runs on one GPU (allowed: num_gpus=0 or 1)"
    arch = model_type(config)
    if arch is not None and arch not in ARCHS:
        return f"model_type={arch}: backend=graph has model code for {', '.join(ARCHS)} only"
    if backend["span_step"] < 0:
        return f"backend.span_step={backend['span_step']}: allowed: 0 (the whole cache) or a positive int"
    if backend["compile_mode"] not in COMPILE_MODES:
        return f"backend.compile_mode={backend['compile_mode']}: allowed: {', '.join(COMPILE_MODES)}"
    return None


SPEC = BackendSpec(
    name="graph",
    config=GraphConfig,
    command=accelerate_launch,
    backend="backends.graph.backend:GraphBackend",
    requires=("safetensors",),
    validate=validate,
    # backends/graph/backend.py: a mode only for a compiled step, which always reads the whole cache
    needs={"compile_mode": {"compile_step": True}, "span_step": {"compile_step": False}},
    result_fields={
        "arch": "the model code that ran (bloom or llama)",
        "dtype": "the torch dtype of the weights",
        "device": "where the weights and the KV cache are",
        "cuda_graph": "whether each decode step was a CUDA graph replay",
        "compile_step": "backend.compile_step as asked",
        "compile_mode": "the inductor mode of a compiled step",
        "compile_s": "seconds of the compiled step's warm-up (its compilation), per batch shape",
        "capture_s": "seconds to capture the decode step's CUDA graphs (one per span), per batch shape",
        "graphs": "CUDA graphs captured for the batch shape (one per attention span)",
        "span_step": "the attention span's granularity in positions (0: the whole cache)",
        "warmup_steps_s": "seconds of the decode steps run before capture",
        "graph_check": "whether the first generate's graph replays chose the same tokens as the uncaptured "
                       "step (that second decode is part of warmup_s)",
        "graph_shape": "(batch, prompt + new tokens) of the state and graph last used",
    },
)
