"""Accelerate's big-model inference: layers spread over the job's GPUs (naive pipeline parallelism),
optionally offloaded to CPU RAM or disk, optionally int8 through bitsandbytes."""
import os
import shutil
from collections import Counter

import psutil
import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from backends.hf import TORCH_DTYPE, dtype_kwargs, greedy_generate


class AccelerateBackend:
    streams = 1
    tp_size = 1

    def __init__(self, config: dict, checkpoint: str):
        self.config, self.checkpoint = config, checkpoint
        self.model = None
        self.info: dict = {}
        self.offload_dir = None

    def max_memory(self) -> dict | None:
        """Weight budgets when offloading: `resident_gib` on the execution device, the rest on CPU or disk."""
        n, offload = self.config["num_gpus"], self.config["offload"]["name"]
        if offload == "none":
            return None  # accelerate's own budget: every GPU's free memory
        resident = int(self.config["backend"]["resident_gib"] * 2**30)
        if n == 0:
            return {"cpu": resident}
        return {0: resident, "cpu": psutil.virtual_memory().available if offload == "cpu" else 0}

    def load(self) -> None:
        cfg = self.config
        dtype = TORCH_DTYPE[cfg["dtype"]["name"]]
        kwargs = dtype_kwargs(dtype)
        if cfg["backend"]["attn_implementation"]:
            kwargs["attn_implementation"] = cfg["backend"]["attn_implementation"]
        if cfg["dtype"]["name"] == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=True, llm_int8_threshold=cfg["dtype"]["llm_int8_threshold"])
        if cfg["num_gpus"] == 0 and cfg["offload"]["name"] == "none":
            kwargs["device_map"] = {"": "cpu"}
        else:
            kwargs["device_map"] = cfg["backend"]["device_map"] if cfg["offload"]["name"] == "none" else "auto"
            kwargs["max_memory"] = self.max_memory()
        if cfg["offload"]["name"] == "nvme":
            self.offload_dir = os.path.join(cfg["offload"]["path"], f"infersweep-offload-{os.getpid()}")
            kwargs["offload_folder"] = self.offload_dir
        self.model = AutoModelForCausalLM.from_pretrained(self.checkpoint, **kwargs).eval()
        # transformers sets hf_device_map only when accelerate dispatched the model over several devices.
        device_map = getattr(self.model, "hf_device_map", None) or {"": next(self.model.parameters()).device}
        placement = Counter(str(d) for d in device_map.values())
        self.info = {"device_map": dict(placement), "dtype": str(dtype)}
        if cfg["dtype"]["name"] == "int8":
            self.info["llm_int8_threshold"] = cfg["dtype"]["llm_int8_threshold"]
        self.info["attn_implementation"] = self.model.config._attn_implementation  # what runs, not what was asked
        self.info["compile"] = bool(cfg["backend"]["compile"])
        if cfg["backend"]["compile"]:
            self.use_static_cache()
        spilled = {d for d in placement if d in ("cpu", "disk")}
        if cfg["offload"]["name"] == "none" and cfg["num_gpus"] > 0 and spilled:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory: weights do not fit on {cfg['num_gpus']} GPU(s) without offload "
                f"(device_map spilled to {sorted(spilled)})")

    def use_static_cache(self) -> None:
        """generate() with a static KV cache, which transformers compiles (torch.compile of the forward,
        its default mode reduce-overhead: CUDA graphs where they can be captured). Not torch.compile of the
        forward by hand: with the static cache its CUDA graphs are overwritten between calls. On the CPU
        transformers compiles only when told to (_compile_all_devices)."""
        from transformers.generation.configuration_utils import CompileConfig

        self.model.generation_config.cache_implementation = "static"
        compile_config = CompileConfig()
        compile_config._compile_all_devices = True
        self.model.generation_config.compile_config = compile_config
        self.info.update(cache_implementation="static", compile_mode=compile_config.mode)

    def input_device(self) -> torch.device:
        return torch.device("cuda:0") if self.config["num_gpus"] > 0 else torch.device("cpu")

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 streamer=None) -> torch.Tensor:
        out = greedy_generate(self.model, input_ids, attention_mask, new_tokens, streamer)
        if self.config["backend"]["compile"]:
            # whether generate() compiled (its criteria: a compilable cache, no offload, no bnb int8)
            self.info["compiled"] = getattr(self.model, "_compiled_call", None) is not None
        return out

    def close(self) -> None:
        if self.offload_dir:
            shutil.rmtree(self.offload_dir, ignore_errors=True)
