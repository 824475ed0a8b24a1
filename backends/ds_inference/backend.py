"""DeepSpeed-Inference: tensor parallelism over every rank of the job (tp_size = world size), with
DeepSpeed's fused kernels (kernel injection) or its automatic tensor parallelism (AutoTP).

Paths, and how each loads (`backend_info.path` records the one that ran, `path_reason` why):

- kernel_inject: the BLOOM study's way. The model is built on the meta device and DeepSpeed streams the
  weights from a checkpoint description (json listing torch-pickled files; a safetensors-only
  checkpoint is converted once, outside load_s). BLOOM needs transformers <= 4.43.4 (DeepSpeed's
  BLOOM container refuses anything newer), hence the `stack` key; CUDA only.
- autotp: the model is loaded on the host and DeepSpeed shards its linear layers over the ranks and
  moves them to the device. Works on transformers 5 and on DeepSpeed's CPU accelerator.

pre_sharded=true reloads a TP-pre-sharded checkpoint (one file set per rank): on the kernel path
DeepSpeed's own format (save_mp_checkpoint_path, as microsoft/bloom-deepspeed-inference-fp16), on
AutoTP this runner's (each rank's state dict after sharding, reloaded into a meta-built, AutoTP-
sharded model). The first job that needs one writes it in `prepare()`, outside load_s.
"""
import gc
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import deepspeed  # at import time: before the worker caps host memory (host_mem_limit_gib)
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from backends.ds_common import barrier, device, global_rank, init_distributed, world_size
from backends.ds_inference.spec import kernel_path
from backends.hf import TORCH_DTYPE, dtype_kwargs, greedy_generate
from backends.synthetic import cache_root, check_free_space
from core.jobdir import write_json


def kernel_policy_matches(model: torch.nn.Module) -> bool:
    """Whether one of DeepSpeed's kernel-injection policies knows a layer class of `model`."""
    from deepspeed.module_inject.replace_policy import replace_policies

    classes = set()
    for policy in replace_policies:
        try:
            policy(None)  # DeepSpeed's own trick: a throw-away instance fills _orig_layer_class
        except Exception:  # noqa: BLE001, S112 -- a policy whose transformers class is gone does not match
            continue
        orig = policy._orig_layer_class
        classes.update(orig if isinstance(orig, list) else [orig] if orig is not None else [])
    return any(type(m) in classes for m in model.modules())


def _fill_attention_mask(module, args, kwargs):
    """BLOOM under AutoTP: transformers 5's generate() drops an all-ones mask, and BloomModel then builds
    the ALiBi tensor for all heads itself instead of through DeepSpeed's head-sharded
    build_alibi_tensor, which breaks every unpadded batch. An explicit all-ones mask (the same maths)
    keeps DeepSpeed's path."""
    if kwargs.get("attention_mask") is not None:
        return None
    ids = args[0] if args else kwargs.get("input_ids")
    if ids is None:
        ids = kwargs["inputs_embeds"]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    kwargs["attention_mask"] = torch.ones(ids.shape[0], past + ids.shape[1], dtype=torch.long, device=ids.device)
    return args, kwargs


def join_head_slices(shards: Path, names: list, world: int) -> None:
    """In DeepSpeed's non-tp.pt, replaces each named head weight (rank 0's slice) by every rank's slice
    joined in rank order along the input columns, the whole head that the reload expects; removes the
    slice files."""
    if not names:
        return
    non_tp = torch.load(shards / "non-tp.pt", map_location="cpu", weights_only=True)
    for name in names:
        parts = [shards / f"{name}.rank{rank:03d}.pt" for rank in range(world)]
        non_tp[name] = torch.cat([torch.load(p, map_location="cpu", weights_only=True) for p in parts], dim=-1)
        for p in parts:
            p.unlink()
    torch.save(non_tp, shards / "non-tp.pt")


class DSInferenceBackend:
    streams = 1  # every rank computes a shard of the same batch

    def __init__(self, config: dict, checkpoint: str):
        self.config, self.checkpoint = config, checkpoint
        self.model = None
        self.engine = None
        self.hf_config = None
        self.world = world_size()
        self.tp_size = self.world  # the roofline counts the weights one rank holds
        self.dtype = TORCH_DTYPE[config["dtype"]["name"]]
        self.ds_dtype = torch.int8 if config["dtype"]["name"] == "int8" else self.dtype
        self.kernels = False
        self.info: dict = {}

    # -- which path ------------------------------------------------------------------------------

    def _meta_model(self):
        # Not deepspeed.OnDevice: it patches torch.Tensor.__new__, and torch 2.13's dynamo, first imported
        # inside it by transformers 4.x's weight init, refuses the patched signature.
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(self.hf_config, **dtype_kwargs(self.dtype))

    def _choose_path(self) -> tuple:
        """(use kernel injection?, why), decided by backends/ds_inference/spec.py as at validation."""
        return kernel_path(self.config, self.hf_config.model_type, transformers.__version__,
                           policy_matches=lambda: kernel_policy_matches(self._meta_model()))

    # -- files written once ----------------------------------------------------------------------

    def _cache_key(self) -> str:
        path = Path(self.checkpoint).expanduser()
        digest = hashlib.sha1(str(path.resolve() if path.exists() else path).encode()).hexdigest()[:8]
        return f"{path.name}-{digest}"

    def _shard_dir(self) -> Path:
        kind = "ds" if self.kernels else "autotp"
        return (cache_root(self.config) / "ds-inference" / "pre-sharded"
                / f"{self._cache_key()}-{kind}-tp{self.world}-{self.config['dtype']['name']}")

    def _local_checkpoint(self) -> Path:
        path = Path(self.checkpoint).expanduser()
        if path.is_dir():
            return path
        from huggingface_hub import snapshot_download  # a hub name: its files in the local hub cache

        return Path(snapshot_download(self.checkpoint))

    def _torch_checkpoint(self) -> tuple:
        """(base_dir, file names) of torch-pickled weights: DeepSpeed's kernel path torch.load()s them."""
        src = self._local_checkpoint()
        pickled = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt") and "training_args" not in p.name)
        if pickled:
            return src, pickled
        target = cache_root(self.config) / "ds-inference" / "pt" / self._cache_key()
        names = sorted(p.with_suffix(".pt").name for p in src.glob("*.safetensors"))
        if not names:
            raise FileNotFoundError(f"no weights (*.bin, *.pt, *.safetensors) in {src}")
        if global_rank() == 0 and not (target / ".done").exists():
            from safetensors.torch import load_file

            check_free_space(self.config, sum(f.stat().st_size for f in src.glob("*.safetensors")))
            target.mkdir(parents=True, exist_ok=True)
            for f in sorted(src.glob("*.safetensors")):
                torch.save(load_file(str(f)), target / f.with_suffix(".pt").name)
            (target / ".done").touch()
        barrier()
        return target, names

    def _checkpoint_json(self, base: Path, files: list) -> Path:
        kind = "BLOOM" if self.hf_config.model_type == "bloom" else "ds_model"
        path = cache_root(self.config) / "ds-inference" / f"{self._cache_key()}-checkpoints.json"
        if global_rank() == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"type": kind, "checkpoints": files, "version": 1.0})
        barrier()
        return path

    def _finish_shards(self, tmp: Path, final: Path, heads: list) -> None:
        """All ranks have written into tmp: rank 0 joins the head slices and moves tmp into place
        (atomically) for every later job."""
        barrier()
        if global_rank() == 0:
            join_head_slices(tmp, heads, self.world)
            config_file = tmp / "ds_inference_config.json"
            if config_file.exists():  # DeepSpeed's format records its directory: point it at the final one
                meta = json.loads(config_file.read_text())
                meta["base_dir"] = str(final)
                config_file.write_text(json.dumps(meta))
            (tmp / ".done").touch()
            if final.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.rename(tmp, final)
        barrier()

    def _write_shards(self, final: Path) -> None:
        tmp = final.with_name(f".{final.name}.{os.environ.get('MASTER_PORT', os.getpid())}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        heads = []
        if self.kernels:
            base, files = self._torch_checkpoint()
            engine = self._init_kernels(self._meta_model(), self._checkpoint_json(base, files), base,
                                        save_to=tmp, cuda_graph=False)
            heads = self._save_head_slices(engine.module, tmp)
            engine.destroy()  # frees the fused kernels' workspace and resets their layer count for the reload
        else:
            engine = self._init_autotp(self._load_full())
            self._save_autotp_shard(engine.module, tmp)
        del engine  # the last reference: the model written from is freed before the timed load
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._finish_shards(tmp, final, heads)

    def _save_head_slices(self, model, tmp: Path) -> list:
        """DeepSpeed (0.19.8) writes non-tp.pt from rank 0's state dict alone, but at tp > 1 it has by
        then cut the output head's input columns over the ranks (LmHeadLinearAllreduce): the file holds
        rank 0's slice, and the reload refuses it ("Merging tensors is not allowed here!"). Each rank
        saves its slice of every such head; returns their state-dict names."""
        from deepspeed.module_inject.layers import LmHeadLinearAllreduce

        names = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, LmHeadLinearAllreduce)]
        for name in names:
            torch.save(model.get_parameter(name).detach().cpu(), tmp / f"{name}.rank{global_rank():03d}.pt")
        return names

    def _save_autotp_shard(self, model, tmp: Path) -> None:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        buffers = {k: v.detach().cpu() for k, v in model.named_buffers(remove_duplicate=False) if k not in state}
        torch.save({"state": state, "buffers": buffers}, tmp / f"rank{global_rank():03d}.pt")
        if global_rank() == 0:
            write_json(tmp / "meta.json", {"tp_size": self.world, "dtype": str(self.dtype)})

    # -- DeepSpeed ---------------------------------------------------------------------------------

    def _init_kernels(self, model, checkpoint_json: Path, base_dir: Path, save_to: Path | None = None,
                      cuda_graph: bool | None = None):
        kwargs = {}
        if save_to is not None:
            kwargs["save_mp_checkpoint_path"] = str(save_to)
        graph = self.config["backend"]["cuda_graph"] if cuda_graph is None else cuda_graph
        return deepspeed.init_inference(model.eval(), tensor_parallel={"tp_size": self.world}, dtype=self.ds_dtype,
                                        replace_with_kernel_inject=True, enable_cuda_graph=bool(graph),
                                        base_dir=str(base_dir), checkpoint=str(checkpoint_json), **kwargs)

    def _init_autotp(self, model):
        if self.config["backend"]["cuda_graph"]:
            raise ValueError("backend.cuda_graph=true: DeepSpeed captures CUDA graphs only in kernel-injected layers "
                             f"({self.info.get('path_reason')})")
        return deepspeed.init_inference(model.eval(), tensor_parallel={"tp_size": self.world}, dtype=self.dtype,
                                        replace_with_kernel_inject=False)

    def _load_full(self):
        return AutoModelForCausalLM.from_pretrained(self.checkpoint, **dtype_kwargs(self.dtype))

    # -- the backend protocol -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Untimed: join the process group, choose the path, write what is written once."""
        init_distributed(self.config)
        self.hf_config = AutoConfig.from_pretrained(self.checkpoint)
        self.kernels, reason = self._choose_path()
        self.info = {"path": "kernel_inject" if self.kernels else "autotp", "path_reason": reason,
                     "tp_size": self.world, "dtype": str(self.ds_dtype), "device": str(device(self.config)),
                     "cuda_graph": bool(self.config["backend"]["cuda_graph"]) and self.kernels,
                     "pre_sharded": bool(self.config["backend"]["pre_sharded"])}
        if self.kernels:  # JIT-build (first time on a machine, about a minute) or load the fused kernels
            from deepspeed.ops.op_builder import InferenceBuilder  # what DeepSpeed's kernel layers load

            start = time.perf_counter()
            InferenceBuilder().load()
            self.info["kernel_op_load_s"] = round(time.perf_counter() - start, 3)
        if self.config["backend"]["pre_sharded"]:
            shards = self._shard_dir()
            self.info["shard_dir"] = str(shards)
            self.info["shards_written_by_this_job"] = not (shards / ".done").exists()
            if self.info["shards_written_by_this_job"]:
                self._write_shards(shards)
        elif self.kernels:
            self._torch_checkpoint()  # convert a safetensors checkpoint once, outside load_s
        if torch.cuda.is_available():  # peak_mem_gib is the measured model's, not the shard writer's
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)

    def load(self) -> None:
        if self.kernels:
            if self.config["backend"]["pre_sharded"]:
                shards = self._shard_dir()
                self.info["loaded_from"] = "ds pre-sharded checkpoint"
                self.engine = self._init_kernels(self._meta_model(), shards / "ds_inference_config.json", shards)
                self.info["recast_params"] = self._recast_params(self.engine.module)
            else:
                base, files = self._torch_checkpoint()
                self.info["loaded_from"] = "meta model + checkpoint json"
                self.engine = self._init_kernels(self._meta_model(), self._checkpoint_json(base, files), base)
        elif self.config["backend"]["pre_sharded"]:
            self.info["loaded_from"] = "autotp pre-sharded checkpoint"
            self.engine = self._load_autotp_shards()
        else:
            self.info["loaded_from"] = "full model on host, sharded by AutoTP"
            self.engine = self._init_autotp(self._load_full())
        self.model = self.engine.module.eval()
        if self.kernels and hasattr(self.model, "lm_head"):  # cut over the ranks (LmHeadLinearAllreduce) or whole
            self.info["lm_head"] = type(self.model.lm_head).__name__
        if not self.kernels and self.world > 1 and self.hf_config.model_type == "bloom":
            self.model.transformer.register_forward_pre_hook(_fill_attention_mask, with_kwargs=True)
            self.info["bloom_explicit_mask"] = True

    def _recast_params(self, model: torch.nn.Module) -> list:
        """DeepSpeed's reload of its own pre-sharded checkpoint rebuilds a linear layer that the non-tp
        file holds (BLOOM's tied output head) through LinearLayer.from_weights, which ignores the dtype it
        is given (deepspeed/module_inject/layers.py, 0.19.8): an fp32 head that the fp16 hidden states
        cannot multiply. Casts such parameters to the run's dtype on the device; returns their names."""
        recast = []
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.dtype != self.dtype:
                p.data = p.data.to(device(self.config), self.dtype)
                recast.append(name)
        return recast

    def _load_autotp_shards(self):
        shards = self._shard_dir()
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.hf_config, **dtype_kwargs(self.dtype))
        engine = self._init_autotp(model)  # shards the meta model, then allocates it on the device (empty)
        model = engine.module
        # mmap'd on the host, copied tensor by tensor into the device-allocated model (no 2x device peak)
        saved = torch.load(shards / f"rank{global_rank():03d}.pt", map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(saved["state"], strict=True)
        for name, value in saved["buffers"].items():
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = value.to(device(self.config))
        if self.world == 1 and getattr(self.hf_config, "tie_word_embeddings", False):
            out, inp = model.get_output_embeddings(), model.get_input_embeddings()
            if out is not None and out.weight.shape == inp.weight.shape:
                out.weight = inp.weight  # to_empty() gave the tied head its own storage
        return engine

    def input_device(self) -> torch.device:
        return device(self.config)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 streamer=None) -> torch.Tensor:
        return greedy_generate(self.model, input_ids, attention_mask, new_tokens, streamer)
