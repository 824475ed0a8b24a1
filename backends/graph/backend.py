"""Our own decode (backends/graph/model.py, decode.py): weights read from the checkpoint's safetensors onto
one device, a static KV cache, and on a GPU one CUDA graph replay per decode step."""
import torch

from backends.graph.decode import StaticDecoder
from backends.graph.model import load
from backends.hf import TORCH_DTYPE


class GraphBackend:
    streams = 1
    tp_size = 1

    def __init__(self, config: dict, checkpoint: str):
        self.config, self.checkpoint = config, checkpoint
        self.model = None
        self.decoder: StaticDecoder | None = None
        self.info: dict = {}

    def input_device(self) -> torch.device:
        return torch.device("cuda:0") if self.config["num_gpus"] > 0 else torch.device("cpu")

    def load(self) -> None:
        backend, device = self.config["backend"], self.input_device()
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"num_gpus={self.config['num_gpus']}: backend=graph found no CUDA device "
                               f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES as launched)")
        dtype = TORCH_DTYPE[self.config["dtype"]["name"]]
        self.model = load(self.checkpoint, dtype, device).requires_grad_(False)
        use_graph = device.type == "cuda" and backend["cuda_graph"]
        compile_mode = backend["compile_mode"] if backend["compile_step"] else None
        self.decoder = StaticDecoder(self.model, use_graph, compile_mode, backend["span_step"])
        self.info = {"arch": self.model.config.model_type, "dtype": str(dtype), "device": str(device),
                     "cuda_graph": use_graph, "compile_step": bool(backend["compile_step"]),
                     "compile_mode": compile_mode, "span_step": self.decoder.span_step}

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 streamer=None) -> torch.Tensor:
        if not bool(attention_mask.all()):
            raise ValueError("backend=graph: prompts with padding (attention_mask zeros) are not supported "
                             "(allowed: every prompt of the batch the same length)")
        with torch.no_grad():
            out = self.decoder.generate(input_ids, new_tokens, streamer)
        self.info.update(self.decoder.timings, graph_shape=list(self.decoder.shape or ()))
        return out
