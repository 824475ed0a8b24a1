"""The toy backend's worker side: the model on the CPU, greedy decoding one forward per token with the
KV cache."""
import torch
from transformers import AutoModelForCausalLM


class ToyBackend:
    streams = 1
    tp_size = 1

    def __init__(self, config: dict, checkpoint: str):
        self.config, self.checkpoint = config, checkpoint
        self.model = None
        self.info: dict = {}

    def load(self) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=torch.float32).eval()
        self.info = {"loop": "hand-written greedy", "tokens_per_step": self.config["backend"]["tokens_per_step"]}

    def input_device(self) -> torch.device:
        return torch.device("cpu")

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 streamer=None) -> torch.Tensor:
        out, past = input_ids, None
        if streamer is not None:
            streamer.put(input_ids)
        with torch.no_grad():
            step = input_ids
            for _ in range(new_tokens):
                logits = self.model(input_ids=step, past_key_values=past, use_cache=True)
                past = logits.past_key_values
                step = logits.logits[:, -1:].argmax(-1)
                out = torch.cat([out, step], dim=1)
                if streamer is not None:
                    streamer.put(step)
        if streamer is not None:
            streamer.end()
        return out
