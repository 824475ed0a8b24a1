"""DeepSpeed ZeRO-3 inference, as in the BLOOM study: the weights partitioned over the ranks (optionally
offloaded to CPU RAM or NVMe) and gathered layer by layer at every forward.

Every rank generates its own stream (its own prompts, `stream=rank` in the worker) with
synced_gpus=True, so `streams` = world size: ms_per_token is the aggregate over ranks, the per-stream
figure is kept beside it.
"""
import os
import shutil

import deepspeed  # at import time: before the worker caps host memory (host_mem_limit_gib)
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from backends.ds_common import device, init_distributed, world_size
from backends.hf import TORCH_DTYPE, dtype_kwargs, greedy_generate


def hidden_size(hf_config) -> int:
    for key in ("hidden_size", "n_embd", "d_model"):
        if getattr(hf_config, key, None):
            return int(getattr(hf_config, key))
    raise ValueError(f"cannot tell the hidden size of model_type={hf_config.model_type}")


def largest_parameter(hf_config) -> int:
    """Elements of the model's largest tensor (NVMe swap buffers must hold it), from a meta-built model."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return max(p.numel() for p in model.parameters())


def zero3_config(config: dict, hf_config, world: int, nvme_dir: str | None = None) -> dict:
    """The BLOOM study's ZeRO-3 inference config; bucket sizes as ints (DeepSpeed's validator rejects floats)."""
    h = hidden_size(hf_config)
    name, offload = config["dtype"]["name"], config["offload"]["name"]
    zero = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": int(config["backend"]["reduce_bucket"] * h * h),
        "stage3_prefetch_bucket_size": int(config["backend"]["prefetch_bucket"] * h * h),
        "stage3_param_persistence_threshold": 0,
    }
    pin = config["num_gpus"] > 0  # pinned host buffers only mean something with a GPU to copy to
    if offload == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    elif offload == "nvme":
        zero["offload_param"] = {"device": "nvme", "pin_memory": pin, "nvme_path": nvme_dir,
                                 "buffer_count": int(config["backend"]["nvme_buffer_count"]),
                                 "buffer_size": int(largest_parameter(hf_config))}
    return {
        "fp16": {"enabled": name == "fp16"},
        "bf16": {"enabled": name == "bf16"},
        "zero_optimization": zero,
        "steps_per_print": 2000,
        "train_batch_size": world,
        "train_micro_batch_size_per_gpu": 1,
        "wall_clock_breakdown": False,
    }


class DSZeroBackend:
    def __init__(self, config: dict, checkpoint: str):
        self.config, self.checkpoint = config, checkpoint
        self.world = world_size()
        self.streams = self.world  # one distinct stream per rank
        self.tp_size = 1  # every rank holds (gathers) the whole model
        self.dtype = TORCH_DTYPE[config["dtype"]["name"]]
        self.model = None
        self.engine = None
        self.hf_ds_config = None  # must outlive from_pretrained: transformers holds it by weak reference
        self.hf_config = None
        self.nvme_dir = None
        self.ds_config: dict = {}
        self.info: dict = {}

    def prepare(self) -> None:
        """Untimed: join the process group, write the ZeRO config, check NVMe offload can run here."""
        init_distributed(self.config)
        self.hf_config = AutoConfig.from_pretrained(self.checkpoint)
        if self.config["offload"]["name"] == "nvme":
            from deepspeed.accelerator import get_accelerator

            builder = get_accelerator().create_op_builder("AsyncIOBuilder")
            if builder is None or not builder.is_compatible(verbose=False):
                raise RuntimeError("offload=nvme: DeepSpeed's async_io op cannot be built on this machine "
                                   "(it needs libaio: apt-get install libaio-dev)")
            builder.load()  # JIT-built here, not inside load_s
            # One directory per job (the launcher's port is unique to it), shared by its ranks.
            self.nvme_dir = os.path.join(self.config["offload"]["path"],
                                         f"infersweep-zero-{os.environ.get('MASTER_PORT', os.getppid())}")
        self.ds_config = zero3_config(self.config, self.hf_config, self.world, self.nvme_dir)
        zero = self.ds_config["zero_optimization"]
        self.info = {"zero_stage": 3, "world_size": self.world, "streams": self.streams, "dtype": str(self.dtype),
                     "device": str(device(self.config)),
                     "offload_param": zero.get("offload_param", {}).get("device", "none"),
                     "reduce_bucket_size": zero["reduce_bucket_size"],
                     "stage3_prefetch_bucket_size": zero["stage3_prefetch_bucket_size"]}
        if self.nvme_dir:
            self.info["nvme_buffer_size"] = zero["offload_param"]["buffer_size"]

    def load(self) -> None:
        from transformers.integrations import HfDeepSpeedConfig

        # Before the model is built: from_pretrained then partitions every weight as it loads (zero.Init).
        self.hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        model = AutoModelForCausalLM.from_pretrained(self.checkpoint, **dtype_kwargs(self.dtype)).eval()
        self.engine = deepspeed.initialize(model=model, config_params=self.ds_config)[0]
        self.engine.module.eval()
        self.model = self.engine.module

    def input_device(self) -> torch.device:
        return device(self.config)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 streamer=None) -> torch.Tensor:
        # synced_gpus: a rank that has finished keeps stepping so that the others' all-gathers complete.
        return greedy_generate(self.model, input_ids, attention_mask, new_tokens, streamer, synced_gpus=self.world > 1)

    def close(self) -> None:
        if self.nvme_dir:
            shutil.rmtree(self.nvme_dir, ignore_errors=True)
