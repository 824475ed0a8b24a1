"""Synthetic checkpoints (BLOOM or Llama shapes): a config with random weights (fixed seed), saved once as
safetensors.

Loading it then measures real loading from disk, exactly as for a user's checkpoint.
`python -m backends.synthetic JOB_DIR` builds the job's checkpoint; the runner calls it before
launching, so that build time is never counted as load time and ranks never race to build it.
"""
import json
import os
import shutil
import sys
from pathlib import Path

from core.jobdir import read_job

# The dtype a checkpoint is stored in: int8 is quantised from fp16 at load time.
STORAGE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "float16"}


def cache_root(config: dict) -> Path:
    root = config["cache_dir"] or os.environ.get("INFERSWEEP_CACHE") or "~/.cache/infersweep"
    return Path(root).expanduser()


def checkpoint_dir(config: dict) -> Path:
    """Where the job's model is read from: the synthetic cache entry, or the user's path/hub name."""
    model = config["model"]
    if model["source"] == "pretrained":
        return Path(model["path"])
    dtype = STORAGE_DTYPE[config["dtype"]["name"]]
    shape = f"h{model['hidden_size']}-l{model['n_layer']}-a{model['n_head']}-v{model['vocab_size']}"
    if model["arch"] != "bloom":
        shape = f"{model['arch']}-{shape}-kv{model['n_kv_head']}-i{model['intermediate_size']}"
    return cache_root(config) / "models" / f"{model['name']}-{shape}-{dtype}-seed{config['seed']}"


def checkpoint_ready(config: dict) -> bool:
    return (checkpoint_dir(config) / "config.json").exists()


def model_type(config: dict) -> str | None:
    """The architecture a job loads: model.arch for a synthetic shape, config.json's model_type for a local
    checkpoint, None for a hub name (decided in the worker)."""
    model = config["model"]
    if model["source"] == "synthetic":
        return model["arch"]
    path = Path(model["path"] or "").expanduser() / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


SYNTHETIC_ARCHS = ("bloom", "llama")


def synthetic_config(model: dict):
    """The transformers config of a synthetic shape (model.arch: bloom | llama)."""
    from transformers import BloomConfig, LlamaConfig

    tokens = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    if model["arch"] == "llama":
        return LlamaConfig(hidden_size=model["hidden_size"], num_hidden_layers=model["n_layer"],
                           num_attention_heads=model["n_head"],
                           num_key_value_heads=model["n_kv_head"] or model["n_head"],
                           intermediate_size=model["intermediate_size"], vocab_size=model["vocab_size"], **tokens)
    return BloomConfig(hidden_size=model["hidden_size"], n_layer=model["n_layer"], n_head=model["n_head"],
                       vocab_size=model["vocab_size"], **tokens)


def synthetic_params(model: dict) -> int:
    """Parameters of a synthetic shape. BLOOM: the (tied) embedding, 4h of outer layer norms, and per layer
    12h^2 + 13h (QKV, output, the 4h MLP, their biases, two layer norms). Llama: embedding and lm_head
    (untied), a final norm, and per layer Q and O (h^2 each), K and V (h x kv width each), the gated MLP
    (3 x h x intermediate) and two norms; no biases."""
    h, n, vocab = model["hidden_size"], model["n_layer"], model["vocab_size"]
    if model["arch"] == "llama":
        kv = h * (model["n_kv_head"] or model["n_head"]) // model["n_head"]
        return 2 * vocab * h + h + n * (2 * h * h + 2 * h * kv + 3 * h * model["intermediate_size"] + 2 * h)
    return vocab * h + 4 * h + n * (12 * h * h + 13 * h)


def check_free_space(config: dict, nbytes: int) -> None:
    """Refuse to start writing `nbytes` into the cache (a synthetic checkpoint, DeepSpeed's torch-pickled
    copy of one) where the disk cannot hold them: a full disk otherwise fails the write half-way, after
    minutes."""
    root = cache_root(config)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < nbytes:
        raise OSError(f"cache_dir={root}: {free / 2**30:.1f} GiB free, {config['model']['name']} "
                      f"({STORAGE_DTYPE[config['dtype']['name']]}) needs {nbytes / 2**30:.1f} GiB "
                      "(allowed: free space there, or another cache_dir / $INFERSWEEP_CACHE)")


# Bytes of tensors one file holds: the builder keeps one file's worth in memory, whatever the model's size
# (bloom-176b's 352 GB fit no GPU and few hosts' RAM).
SHARD_BYTES = 4 * 2**30


def _shard_plan(params: list, dtype_bytes: int) -> list:
    """Parameter names grouped into consecutive files of at most SHARD_BYTES (one tensor may exceed it)."""
    shards, size = [[]], 0
    for name, p in params:
        nbytes = p.numel() * dtype_bytes
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _random_tensor(name: str, shape: tuple, dtype, std: float, generator, device: str):
    """transformers' own initialisation for these architectures: biases 0, norm weights 1, every matrix
    (linear layers, embeddings) normal(0, initializer_range)."""
    import torch

    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator)


def build_checkpoint(config: dict) -> Path:
    """Build and save the checkpoint tensor by tensor (drawn on a GPU when there is one), one file of at
    most SHARD_BYTES in memory at a time; more than one file gets transformers' index json."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from backends.hf import dtype_kwargs

    target = checkpoint_dir(config)
    if checkpoint_ready(config):
        return target
    dtype = getattr(torch, STORAGE_DTYPE[config["dtype"]["name"]])
    check_free_space(config, synthetic_params(config["model"]) * dtype.itemsize)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(synthetic_config(config["model"]), **dtype_kwargs(dtype))
    params = dict(skeleton.named_parameters())  # a tied output head appears once, as the embedding
    plan = _shard_plan(list(params.items()), dtype.itemsize)
    files = (["model.safetensors"] if len(plan) == 1
             else [f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors" for k in range(len(plan))])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device).manual_seed(config["seed"])
    std = skeleton.config.initializer_range
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True)
        for names, file in zip(plan, files, strict=True):
            tensors = {n: _random_tensor(n, tuple(params[n].shape), dtype, std, generator, device).cpu() for n in names}
            save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        if len(plan) > 1:
            index = {"metadata": {"total_size": sum(p.numel() for p in params.values()) * dtype.itemsize},
                     "weight_map": {n: file for names, file in zip(plan, files, strict=True) for n in names}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        skeleton.generation_config.save_pretrained(tmp)
        skeleton.config.save_pretrained(tmp)  # last: config.json is what checkpoint_ready() looks for
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy would hold the disk it ran out of
        raise
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)  # atomic: a concurrent builder that won leaves its copy in place
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(f"synthetic checkpoint: {build_checkpoint(read_job(Path(sys.argv[1])).config)}", flush=True)
