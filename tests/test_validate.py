"""Units: which combinations are invalid and why, and the launcher command each job gets."""

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runner.callbacks import sweep_size
from runner.config import register_configs
from runner.launch import launcher_command
from runner.stack import Stack
from runner.validate import invalid_reason

register_configs()
STACK = Stack(python="/usr/bin/python3", python_version="3.11", versions={"bitsandbytes": "0.50.2"})
NO_BNB = Stack(python="/usr/bin/python3", python_version="3.11", versions={"bitsandbytes": None})


def config(*overrides: str, num_gpus: int = 1) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    cfg["num_gpus"] = num_gpus if cfg["num_gpus"] is None else cfg["num_gpus"]
    return cfg


@pytest.mark.parametrize("overrides, gpus, stack, expected", [
    ([], ("0",), STACK, None),
    (["batch_size=0"], ("0",), STACK, "batch_size=0: must be > 0"),
    (["new_tokens=-1"], ("0",), STACK, "new_tokens=-1: must be > 0"),
    (["num_gpus=2"], ("0",), STACK, "num_gpus=2: 1 GPU(s) visible (allowed: 0..1; 0 runs on the CPU)"),
    (["dtype=int8"], ("0",), NO_BNB, "dtype=int8: bitsandbytes is not installed in stack /usr/bin/python3"),
    (["dtype=int8", "num_gpus=0"], ("0",), STACK, "dtype=int8: bitsandbytes LLM.int8() needs a CUDA GPU (num_gpus=0)"),
    (["dtype=int8", "offload=cpu"], ("0",), STACK, "dtype=int8: not combined with offload=cpu (allowed: offload=none)"),
    (["offload=cpu", "num_gpus=0"], (), STACK, "offload=cpu: needs a GPU to offload from (num_gpus=0 already runs on the CPU)"),
    (["offload=nvme"], ("0",), STACK, "offload=nvme: offload.path is not set (allowed: an existing writable directory)"),
    (["offload=nvme", "offload.path=/no/such/dir"], ("0",), STACK, "offload.path=/no/such/dir: no such directory (allowed: an existing writable directory)"),
    (["model=checkpoint"], ("0",), STACK, "model.path is not set (allowed: a local checkpoint directory or a hub name)"),
    (["model=checkpoint", "model.path=/no/such/model"], ("0",), STACK, "model.path=/no/such/model: no such directory (allowed: a local checkpoint directory or a hub name)"),
    (["model=checkpoint", "model.path=bigscience/bloom-560m"], ("0",), STACK, None),
    (["backend.device_map=balanced_low_0"], ("0",), STACK,
     "backend.device_map=balanced_low_0: keeping GPU 0 free of weights needs num_gpus >= 2"),
    (["backend.device_map=balanced_low_0", "num_gpus=2"], ("0", "1"), STACK, None),
    (["backend.device_map=round_robin"], ("0",), STACK,
     "backend.device_map=round_robin: allowed: auto, balanced, balanced_low_0, sequential"),
    (["model.arch=gpt2"], ("0",), STACK, "model.arch=gpt2: allowed: bloom, llama"),
    (["model=llama-tiny", "model.intermediate_size=null"], ("0",), STACK,
     "model.intermediate_size is not set (allowed: a positive int; model.arch=llama needs it)"),
    (["model=llama-tiny", "model.n_kv_head=3"], ("0",), STACK, "model.n_kv_head=3: must divide model.n_head=4"),
    (["model=llama-tiny", "backend.attn_implementation=sdpa"], ("0",), STACK, None),
    (["backend.attn_implementation=sdpa"], ("0",), STACK,
     "backend.attn_implementation=sdpa: transformers has only eager attention for BLOOM (allowed for BLOOM: eager or null)"),
])
def test_invalid_reason(overrides, gpus, stack, expected):
    assert invalid_reason(config(*overrides), stack, gpus) == expected


def test_nvme_offload_to_an_existing_directory_is_valid(tmp_path):
    assert invalid_reason(config("offload=nvme", f"offload.path={tmp_path}"), STACK, ("0",)) is None


def test_accelerate_command_uses_the_real_cli_on_the_jobs_gpus():
    cfg = config("num_gpus=2")
    cmd = launcher_command(cfg, "/env/bin/python", "/sweep/0", ("4", "5", "6"))
    assert cmd[:3] == ["/env/bin/python", "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--gpu_ids") + 1] == "4,5"
    assert cmd[cmd.index("--num_processes") + 1] == "1"
    assert cmd[-3:] == ["--module", "backends.worker", "/sweep/0"]
    cpu = launcher_command(config(num_gpus=0), "/env/bin/python", "/sweep/0", ())
    assert "--cpu" in cpu and "--gpu_ids" not in cpu


def test_sweep_size_counts_the_cartesian_product():
    assert sweep_size(["backend=accelerate,ds-inference", "batch_size=1,8,64", "dtype=bf16"]) == 6
    assert sweep_size(["new_tokens=10"]) == 1


@pytest.mark.parametrize("name, params", [("bloom-7b1", 7_069_016_064), ("llama-8b", 8_030_261_248)])
def test_synthetic_params_match_the_built_model(name, params):
    """The formula the size check uses, against the model transformers builds (tiny shapes), and the known
    totals of the large ones (bloom-7b1: the H100 results' params; Llama-3-8B: 8.03 B)."""
    from transformers import AutoModelForCausalLM

    from backends.synthetic import synthetic_config, synthetic_params

    for tiny in ("bloom-tiny", "llama-tiny"):
        shape = config(f"model={tiny}")["model"]
        model = AutoModelForCausalLM.from_config(synthetic_config(shape))
        assert synthetic_params(shape) == sum(p.numel() for p in model.parameters()), tiny
    assert synthetic_params(config(f"model={name}")["model"]) == params


def test_weights_larger_than_the_devices_are_refused_before_the_checkpoint_is_built(monkeypatch):
    import runner.validate

    monkeypatch.setattr(runner.validate, "gpu_memory_gib", lambda: {"0": 79.6, "1": 79.6})
    one_gpu = invalid_reason(config("model=bloom-176b"), STACK, ("0", "1"))
    assert one_gpu == ("model=bloom-176b: its 328 GiB of bf16 weights exceed the 80 GiB of 1 GPU(s) x 1 node(s) "
                       "(allowed: more num_gpus or num_nodes, a smaller dtype, or offload=cpu|nvme)")
    assert invalid_reason(config("model=bloom-176b", "offload=cpu"), STACK, ("0", "1")) is None
    assert invalid_reason(config("model=bloom-7b1", "num_gpus=2"), STACK, ("0", "1")) is None
    assert "of this machine's RAM (num_gpus=0)" in invalid_reason(config("model=bloom-176b", num_gpus=0), STACK, ())
    monkeypatch.setattr(runner.validate, "gpu_memory_gib", dict)  # no nvidia-smi: left to the load
    assert invalid_reason(config("model=bloom-176b"), STACK, ("0",)) is None


def test_synthetic_build_refuses_a_disk_too_small_and_leaves_no_partial_copy(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    from pathlib import Path

    import safetensors.torch

    from backends import synthetic

    config = {"cache_dir": str(tmp_path), "seed": 0, "dtype": {"name": "bf16"},
              "model": {"name": "bloom-tiny", "source": "synthetic", "arch": "bloom", "hidden_size": 64,
                        "n_layer": 2, "n_head": 4, "vocab_size": 1000, "n_kv_head": None, "intermediate_size": None}}
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 1000, 1000))
    with pytest.raises(OSError, match=r"cache_dir=.*: 0\.0 GiB free, bloom-tiny \(bfloat16\) needs 0\.0 GiB "
                                      r"\(allowed: free space there, or another cache_dir"):
        synthetic.build_checkpoint(config)
    monkeypatch.undo()  # the disk has room again

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        synthetic.build_checkpoint(config)
    assert list((tmp_path / "models").iterdir()) == [] and not synthetic.checkpoint_ready(config)


@pytest.mark.parametrize("overrides, expected", [
    ([], "accelerate bf16 gpus=1 bs=1"),
    (["backend.compile=true", "backend.attn_implementation=eager"],
     "accelerate bf16 gpus=1 bs=1 attn_implementation=eager compile=true"),
    (["backend=ds-inference", "backend.pre_sharded=true", "backend.kernel_inject=true", "stack=/tmp/tf443"],
     "ds-inference bf16 gpus=1 bs=1 kernel_inject=true pre_sharded=true stack=/tmp/tf443"),
    (["dtype=int8", "dtype.llm_int8_threshold=0.0"], "accelerate int8 gpus=1 bs=1 llm_int8_threshold=0.0"),
    (["dtype=int8"], "accelerate int8 gpus=1 bs=1"),
    (["backend=ds-zero", "offload=cpu"], "ds-zero bf16 gpus=1 bs=1 offload=cpu"),
    (["backend=graph", "backend.compile_mode=default"], "graph bf16 gpus=1 bs=1"),  # no compiled step: no mode
    (["backend=graph", "backend.compile_step=true", "backend.compile_mode=default"],
     "graph bf16 gpus=1 bs=1 compile_step=true compile_mode=default"),
])
def test_progress_label_names_what_differs_from_the_defaults(overrides, expected):
    """The progress line's job label: two jobs of one backend and dtype must read apart."""
    from runner.progress import job_label

    assert job_label(config(*overrides)) == expected


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_synthetic_checkpoint_streamed_in_shards_loads_whole(tmp_path, monkeypatch, arch):
    """The builder holds one file of tensors at a time (bloom-176b fits no build device whole): split into
    files, the checkpoint is the same tensors, and transformers loads it with no key missing or left over."""
    import torch
    from transformers import AutoModelForCausalLM

    from backends import synthetic

    def build(cache: str) -> dict:
        config = {"cache_dir": str(tmp_path / cache), "seed": 0, "dtype": {"name": "bf16"},
                  "model": {"name": f"{arch}-tiny", "source": "synthetic", "arch": arch, "hidden_size": 64,
                            "n_layer": 2, "n_head": 4, "vocab_size": 1000, "n_kv_head": 2 if arch == "llama" else None,
                            "intermediate_size": 128 if arch == "llama" else None}}
        path = synthetic.build_checkpoint(config)
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        return path, dict(model.named_parameters())

    whole, params = build("whole")
    monkeypatch.setattr(synthetic, "SHARD_BYTES", 100_000)
    split, split_params = build("split")
    assert [p.name for p in whole.glob("*.safetensors")] == ["model.safetensors"]
    files = sorted(p.name for p in split.glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert (split / "model.safetensors.index.json").exists()
    assert params.keys() == split_params.keys() and all(torch.equal(params[k], split_params[k]) for k in params)
    norms = [p for k, p in params.items() if "norm" in k and k.endswith("weight")]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)
    matrices = [p.float() for p in params.values() if p.dim() == 2]
    assert all(abs(p.std().item() - 0.02) < 0.004 for p in matrices)


def test_progress_eta_takes_the_median_job(tmp_path, monkeypatch, capsys):
    """A shared worker's first job also pays the worker start and the load: the ETA must not charge that
    to every job left, nor count a result kept from an earlier run as a job that took no time."""
    from types import SimpleNamespace

    from core.jobdir import Result
    from runner import progress

    clock = [1000.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(progress, "_job_seconds", [])
    result = Result(run_id="r", job=0, timestamp="", config=config(), status="ok", reason="", log="")
    for index, seconds in enumerate([60, 5, 5]):  # worker start + load + measure, then two batch sizes
        job = progress.Progress(index, 10, 1000.0, tmp_path, "job")
        clock[0] += seconds
        job.done(result)
    progress.Progress(3, 10, 1000.0, tmp_path, "job").done(result, earlier=True)
    capsys.readouterr()
    progress.Progress(4, 10, 1000.0, tmp_path, "job").phase("loading")
    assert "[5/10 elapsed 0:01:10 eta 0:00:30] job: loading" in capsys.readouterr().err  # 6 left x 5 s
