"""backend=ds-inference and backend=ds-zero on the CPU: the real deepspeed launcher, gloo, 1 and 2 ranks.

End-to-end tests go through `python -m runner` with the tiny synthetic BLOOM (fp32, so that backends
that compute the same function agree to rounding); units cover the launcher command, the validation
rules and the ZeRO config.
"""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, results, run_runner
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runner.config import register_configs
from runner.launch import launcher_command
from runner.stack import Stack
from runner.validate import invalid_reason

register_configs()
MAIN = Stack(python="/usr/bin/python3", python_version="3.11",
             versions={"deepspeed": "0.19.8", "transformers": "5.24.0", "bitsandbytes": None})
LEGACY = Stack(python="/usr/bin/python3", python_version="3.11",
               versions={"deepspeed": "0.19.8", "transformers": "4.43.4", "bitsandbytes": None})
# DeepSpeed before its int8 gate (0.15.2): the rules for int8 kernels themselves
OLD_DS = Stack(python="/usr/bin/python3", python_version="3.11",
               versions={"deepspeed": "0.15.1", "transformers": "5.24.0", "bitsandbytes": None})
OLD_DS_LEGACY = Stack(python="/usr/bin/python3", python_version="3.11",
                      versions={"deepspeed": "0.15.1", "transformers": "4.43.4", "bitsandbytes": None})
NO_DS = Stack(python="/usr/bin/python3", python_version="3.11", versions={"deepspeed": None, "transformers": "5.24.0"})
QUICK = ["dtype=fp32", "batch_size=2", "new_tokens=4", "prompt_tokens=6", "repeats=1", "timeout_s=240"]
CORES = len(os.sched_getaffinity(0))


def config(*overrides: str, num_gpus: int = 0) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    cfg["num_gpus"] = num_gpus if cfg["num_gpus"] is None else cfg["num_gpus"]
    return cfg


# -- units -----------------------------------------------------------------------------------------

def test_launcher_command_cpu_ranks():
    cmd = launcher_command(config("backend=ds-zero", "cpu_ranks=2"), "/py", Path("/jobs/7"), ())
    assert cmd[:4] == ["env", f"OMP_NUM_THREADS={max(1, CORES // 2)}", "LOCAL_SIZE=2", "DS_ACCELERATOR=cpu"]
    assert cmd[4:8] == ["/py", "-u", "-m", "deepspeed.launcher.launch"]
    # CPU "devices" 0 and 1, in the launcher's own decoding
    assert json.loads(base64.urlsafe_b64decode(cmd[cmd.index("--world_info") + 1])) == {"localhost": [0, 1]}
    assert cmd[-4:] == ["--module", "--no_local_rank", "backends.worker", "/jobs/7"]
    port = int(cmd[cmd.index("--master_port") + 1])
    assert 0 < port < 65536


def test_launcher_command_gpus():
    """On one node the `deepspeed` CLI is skipped: the launcher gets the --world_info that the CLI would have
    encoded for `--num_gpus 2` (the first two GPUs) or for `--include localhost:2,3` (others, by id)."""
    runner = pytest.importorskip("deepspeed.launcher.runner")
    first = launcher_command(config("backend=ds-inference", num_gpus=2), "/py", Path("/j"), ("0", "1", "2"))
    cli = runner.apply_num_nodes_and_gpus(runner.parse_inclusion_exclusion({"localhost": 3}, "", ""), -1, 2)
    assert first[first.index("--world_info") + 1] == runner.encode_world_info(cli)
    assert "LOCAL_SIZE=2" not in first and f"OMP_NUM_THREADS={max(1, CORES // 2)}" in first
    other = launcher_command(config("backend=ds-inference", num_gpus=2), "/py", Path("/j"), ("2", "3"))
    cli = runner.parse_inclusion_exclusion({"localhost": 4}, "localhost:2,3", "")
    assert other[other.index("--world_info") + 1] == runner.encode_world_info(cli)


@pytest.mark.parametrize("overrides, gpus, stack, expected", [
    (["backend=ds-inference"], (), MAIN, None),
    (["backend=ds-zero", "cpu_ranks=2"], (), MAIN, None),
    (["backend=ds-zero", "offload=cpu"], (), MAIN, None),  # ZeRO's param offload is its own code path
    (["backend=ds-zero"], (), NO_DS, "backend=ds-zero: deepspeed is not installed in stack /usr/bin/python3"),
    (["backend=ds-zero", "cpu_ranks=0"], (), MAIN, "cpu_ranks=0: must be >= 1"),
    (["backend=accelerate", "cpu_ranks=2"], (), MAIN,
     "cpu_ranks=2: backend=accelerate runs one process (allowed: cpu_ranks=1)"),
    (["backend=ds-zero", "dtype=int8"], ("0",), MAIN,
     "dtype=int8: ZeRO-3 inference has no int8 weights (allowed: fp32, bf16, fp16)"),
    (["backend=ds-inference", "offload=cpu"], ("0",), MAIN,
     ("offload=cpu: DeepSpeed-Inference keeps all weights on the GPUs (tensor parallel), no offload "
     "(allowed: offload=none; offload is ds-zero's or accelerate's)")),
    (["backend=ds-inference", "backend.kernel_inject=maybe"], ("0",), MAIN,
     "backend.kernel_inject=maybe: allowed: auto, true, false"),
    (["backend=ds-inference", "backend.kernel_inject=true"], (), MAIN,
     "backend.kernel_inject=true: DeepSpeed's fused inference kernels need a CUDA GPU (num_gpus=0)"),
    (["backend=ds-inference", "backend.kernel_inject=true"], ("0",), MAIN,
     ("backend.kernel_inject=true: DeepSpeed refuses BLOOM kernel injection on transformers 5.24.0 "
     "(> 4.43.4; use a stack with transformers 4.43.4, see README)")),
    (["backend=ds-inference", "backend.kernel_inject=true"], ("0",), LEGACY, None),
    (["backend=ds-inference", "dtype=int8"], ("0",), LEGACY,
     ("dtype=int8: DeepSpeed 0.19.8 rejects int8 in init_inference on every accelerator "
      "(deepspeedai/DeepSpeed#8577, since 0.15.2; allowed: fp16, bf16, fp32)")),
    (["backend=ds-inference", "dtype=int8"], (), OLD_DS_LEGACY,
     "dtype=int8: DeepSpeed-Inference int8 needs its fused CUDA kernels (num_gpus=0)"),
    (["backend=ds-inference", "dtype=int8"], ("0",), OLD_DS,
     ("dtype=int8: DeepSpeed-Inference int8 needs kernel injection, and DeepSpeed refuses BLOOM kernel "
     "injection on transformers 5.24.0 (> 4.43.4; use a stack with transformers 4.43.4, see README)")),
    (["backend=ds-inference", "dtype=int8", "backend.kernel_inject=false"], ("0",), OLD_DS_LEGACY,
     "dtype=int8: DeepSpeed-Inference int8 needs kernel injection; AutoTP has no int8 (kernel_inject=false)"),
    (["backend=ds-inference", "dtype=int8"], ("0",), OLD_DS_LEGACY, None),
    (["backend=ds-inference", "backend.cuda_graph=true"], ("0",), LEGACY,
     "backend.cuda_graph=true: DeepSpeed refuses enable_cuda_graph with BLOOM kernel injection"),
    (["backend=ds-inference", "backend.cuda_graph=true"], ("0",), MAIN,
     ("backend.cuda_graph=true: DeepSpeed captures graphs only in kernel-injected layers "
     "(kernel_inject=false, or auto resolving to AutoTP here)")),
    (["backend=ds-inference", "backend.cuda_graph=true", "num_gpus=2"], ("0", "1"), LEGACY,
     "backend.cuda_graph=true: DeepSpeed does not support CUDA graphs with tensor parallelism (num_gpus > 1)"),
])
def test_invalid_reason(overrides, gpus, stack, expected):
    assert invalid_reason(config(*overrides, num_gpus=len(gpus[:1])), stack, gpus) == expected


def test_zero3_config_is_what_deepspeed_accepts():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from transformers import BloomConfig

    from backends.ds_zero.backend import zero3_config

    hf = BloomConfig(hidden_size=64, n_layer=2, n_head=4, vocab_size=1024)
    cfg = zero3_config(config("backend=ds-zero", "offload=nvme", "offload.path=/tmp", "dtype=bf16"), hf, 2, "/tmp/x")
    zero = cfg["zero_optimization"]
    assert zero["reduce_bucket_size"] == 64 * 64 and zero["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
    assert zero["offload_param"]["buffer_size"] == 1024 * 64  # the largest tensor: the embedding
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"] and cfg["train_batch_size"] == 2
    DeepSpeedZeroConfig(**zero)  # the validator that rejects float bucket sizes accepts these
    with pytest.raises(ValueError):
        DeepSpeedZeroConfig(**{**zero, "stage3_prefetch_bucket_size": 0.9 * 64 * 64 + 0.5})


# -- end to end --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir) -> dict:
    """One sweep: accelerate / ds-inference / ds-zero x 1 and 2 CPU ranks x offload none and cpu."""
    out = tmp_path_factory.mktemp("ds-sweep")
    proc = run_runner(["-m", "backend=accelerate,ds-inference,ds-zero", "cpu_ranks=1,2", "offload=none,cpu",
                       *QUICK, f"hydra.sweep.dir={out}"], cache_dir, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for r in results(out):
        c = r["config"]
        jobs[(c["backend"]["name"], c["cpu_ranks"], c["offload"]["name"])] = r
    return jobs


class TestSweep:
    """The checks of the module-scoped `sweep`: one class, so that one xdist worker runs them all, and the
    sweep once (tests/conftest.py)."""

    def test_sweep_statuses(self, sweep):
        assert sweep[("accelerate", 2, "none")]["status"] == "invalid"
        assert sweep[("ds-inference", 1, "cpu")]["status"] == "invalid"
        assert sweep[("accelerate", 1, "cpu")]["status"] == "invalid"
        ran = {k: r for k, r in sweep.items() if r["status"] != "invalid"}
        assert set(ran) == {("accelerate", 1, "none"), ("ds-inference", 1, "none"), ("ds-inference", 2, "none"),
                            ("ds-zero", 1, "none"), ("ds-zero", 2, "none"), ("ds-zero", 1, "cpu"),
                            ("ds-zero", 2, "cpu")}
        for key, r in ran.items():
            assert r["status"] == "ok", (key, r["reason"])
            assert r["load_s"] > 0 and r["ms_per_token"] > 0 and len(r["generate_s"]) == 1

    def test_telemetry_and_latency_of_every_backend(self, sweep):
        """Rank 0's telemetry (no GPU here: the reason) and the step-timed latency pass (1 repeat, 4 tokens)."""
        for key, r in sweep.items():
            if r["status"] != "ok":
                continue
            assert r["telemetry"]["gpu"]["reason"] and r["telemetry"]["host"]["cpu_time_s"] >= 0, key
            assert r["latency"]["samples"] == {"ttft": 1, "itl": 3}, key
            assert 0 < r["latency"]["itl_ms"]["p50"] <= r["latency"]["itl_ms"]["p99"], key

    def test_shared_memory_buffers_released(self, sweep):
        """DeepSpeed's CPU ranks leave their allreduce buffers in /dev/shm; the runner removes them."""
        ports = {re.search(r"--master_port (\d+)", Path(r["log"]).read_text()).group(1)
                 for key, r in sweep.items() if key[0] != "accelerate" and r["status"] == "ok"}
        assert ports
        left = [p.name for p in Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")
                if p.name.split("_")[-2] in ports]
        assert left == []

    def test_launched_by_deepspeed_with_threads_per_rank(self, sweep):
        log = Path(sweep[("ds-zero", 2, "none")]["log"]).read_text()
        assert f"env OMP_NUM_THREADS={max(1, CORES // 2)} LOCAL_SIZE=2 DS_ACCELERATOR=cpu " in log
        assert "-m deepspeed.launcher.launch --world_info " in log and "--module --no_local_rank" in log
        assert "dist_world_size=2" in log  # the launcher's own account of the ranks it started

    def test_tensor_parallel_over_ranks(self, sweep):
        for ranks in (1, 2):
            info = sweep[("ds-inference", ranks, "none")]["backend_info"]
            assert info["tp_size"] == ranks and info["path"] == "autotp"
            assert info["path_reason"].startswith("auto: no GPU")
        r = sweep[("ds-inference", 2, "none")]
        assert r["streams"] == 1 and r["ms_per_token"] == r["ms_per_token_per_stream"]
        # Tensor parallel ranks compute one batch together: both saw the same prompts.
        a, b = (p["prompt_logits_top5"] for p in r["per_rank"])
        assert a == b

    def test_zero_streams_per_rank(self, sweep):
        for offload in ("none", "cpu"):
            r = sweep[("ds-zero", 2, offload)]
            assert r["streams"] == 2 and r["backend_info"]["offload_param"] == offload
            assert r["ms_per_token"] == pytest.approx(r["ms_per_token_per_stream"] / 2)
            assert r["tokens_per_s"] == pytest.approx(2 * 4 * 2 / r["generate_s"][0])
            ranks = r["per_rank"]
            assert [p["rank"] for p in ranks] == [0, 1]
            assert r["peak_mem_gib_per_device"] == [p["peak_mem_gib"] for p in ranks]
            assert r["peak_mem_gib"] == max(p["peak_mem_gib"] for p in ranks) > 0
            # Every rank generated its own stream: different prompts, different next-token logits.
            assert ranks[0]["prompt_logits_top5"] != ranks[1]["prompt_logits_top5"]
        info = sweep[("ds-zero", 1, "none")]["backend_info"]
        assert info["zero_stage"] == 3 and info["reduce_bucket_size"] == 64 * 64
        assert info["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)

    def test_same_function_as_accelerate(self, sweep):
        """Same seeded fp32 model and prompt (stream 0 on rank 0): the same next-token logits and ids."""
        ref = sweep[("accelerate", 1, "none")]
        for key, r in sweep.items():
            if r["status"] != "ok" or key[0] == "accelerate":
                continue
            assert r["prompt_logits_top5"]["ids"] == ref["prompt_logits_top5"]["ids"], key
            assert r["prompt_logits_top5"]["logits"] == pytest.approx(ref["prompt_logits_top5"]["logits"],
                                                                      abs=1e-4), key
            assert r["output_tail_ids"] == ref["output_tail_ids"], key


def test_pre_sharded_written_once_then_reloaded(tmp_path, cache_dir):
    out = tmp_path / "sweep"
    proc = run_runner(["-m", "backend=ds-inference", "backend.pre_sharded=true,true", "cpu_ranks=2", "isolate=true", *QUICK,
                       f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={out}"], cache_dir, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = results(out)
    assert first["status"] == second["status"] == "ok", (first["reason"], second["reason"])
    assert first["backend_info"]["shards_written_by_this_job"] is True
    assert second["backend_info"]["shards_written_by_this_job"] is False
    assert second["backend_info"]["loaded_from"] == "autotp pre-sharded checkpoint"
    shards = Path(second["backend_info"]["shard_dir"])
    assert sorted(p.name for p in shards.glob("rank*.pt")) == ["rank000.pt", "rank001.pt"]
    assert second["load_s"] > 0
    # Reloaded shards compute what the sharded original computed.
    assert second["prompt_logits_top5"] == first["prompt_logits_top5"]


def test_out_of_memory_on_ranks_is_oom(tmp_path, cache_dir):
    """Loading fits the host-memory cap, generating a huge batch does not: the ranks' OOM (inside ZeRO's
    synced generate) is the job's `oom`, not a hang and not an `error`."""
    proc = run_runner(["backend=ds-zero", "cpu_ranks=2", "dtype=fp32", "batch_size=8192", "prompt_tokens=64",
                       "new_tokens=4", "repeats=1", "host_mem_limit_gib=1.5", "timeout_s=240",
                       f"hydra.run.dir={tmp_path}"],
                      cache_dir, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "oom", result["reason"]
    assert result["load_s"] > 0
    assert not list(tmp_path.glob(".result.rank*"))  # the ranks' temp files are gone


def _workers(job_dir: Path) -> list:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "backends.worker" in cmd and str(job_dir) in cmd:
            found.append(p)
    return found


def test_dead_rank_ends_the_job_without_hanging(tmp_path, cache_dir):
    """SIGKILL rank 1 mid-generation: the job is `error` long before its timeout, and no rank, nor any of
    the ranks' shared-memory segments, is left.
    (Short generates, so that the warm-up is quick, and more repeats than the timeout allows.)"""
    env = {**os.environ, "INFERSWEEP_CACHE": str(cache_dir), "CUDA_VISIBLE_DEVICES": ""}
    args = ["backend=ds-zero", "cpu_ranks=2", "dtype=fp32", "new_tokens=16", "repeats=100000", "timeout_s=200", "isolate=true",
            f"hydra.run.dir={tmp_path}"]
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        while victim is None and time.monotonic() - start < 120 and proc.poll() is None:
            phases = tmp_path / "phases"
            if phases.exists() and "repeat" in phases.read_text():
                victim = next((p for p in _workers(tmp_path) if p.environ().get("RANK") == "1"), None)
            time.sleep(0.05)
        assert victim is not None, "rank 1 never reached the timed repeats"
        port = json.loads((tmp_path / "lease.json").read_text())["master_port"]
        assert len(_segments(port)) == 2  # each rank's allreduce buffer
        victim.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - start
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "error", result["reason"]
    assert elapsed < 150  # ended by the launcher, not by the 200 s timeout
    gone_by = time.monotonic() + 1  # no rank left a second after the runner ended (polled, not slept)
    while _workers(tmp_path) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert _workers(tmp_path) == []
    assert _segments(port) == []  # removed however the job ended


def _segments(port: int) -> list:
    return list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def test_nvme_offload(tmp_path, cache_dir):
    """ZeRO-3 NVMe offload runs where DeepSpeed's async_io op can build (libaio); elsewhere the job says
    why instead of failing obscurely."""
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    proc = run_runner(["backend=ds-zero", "offload=nvme", f"offload.path={nvme}", *QUICK,
                       f"hydra.run.dir={tmp_path / 'job'}"], cache_dir, timeout=300)
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    if result["status"] == "ok":
        assert result["backend_info"]["offload_param"] == "nvme"
        assert list(nvme.iterdir()) == []  # the job's swap directory is removed afterwards
    else:
        assert result["status"] == "error" and "async_io" in result["reason"] and "libaio" in result["reason"]


# -- the kernel path's preparation (the path itself needs CUDA: see README) --------------------------

def _tiny_checkpoint(root: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(BloomConfig(hidden_size=32, n_layer=2, n_head=4, vocab_size=256))
    model.save_pretrained(root / "ckpt", safe_serialization=True)
    return root / "ckpt"


def test_kernel_path_checkpoint_json(tmp_path):
    """What the seed's kernel-injection loading gets: torch-pickled copies of a safetensors checkpoint
    (DeepSpeed torch.load()s each file) and a checkpoint json that DeepSpeed's loader accepts."""
    import torch
    from deepspeed.runtime.state_dict_factory import SDLoaderFactory
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from backends.ds_inference.backend import DSInferenceBackend

    ckpt = _tiny_checkpoint(tmp_path)
    backend = DSInferenceBackend(config("backend=ds-inference", f"cache_dir={tmp_path / 'cache'}"), str(ckpt))
    backend.hf_config = AutoConfig.from_pretrained(ckpt)
    base, files = backend._torch_checkpoint()
    assert files == ["model.pt"] and base != ckpt and (base / ".done").exists()
    original, copy = load_file(str(ckpt / "model.safetensors")), torch.load(base / "model.pt", weights_only=True)
    assert original.keys() == copy.keys() and all(torch.equal(original[k], copy[k]) for k in original)
    described = SDLoaderFactory.get_sd_loader_json(str(backend._checkpoint_json(base, files)), None)
    assert described == {"type": "BLOOM", "checkpoints": ["model.pt"], "version": 1.0}


def test_kernel_path_choice(tmp_path):
    from transformers import AutoConfig, MistralConfig

    from backends.ds_inference.backend import DSInferenceBackend, kernel_policy_matches

    ckpt = _tiny_checkpoint(tmp_path)
    backend = DSInferenceBackend(config("backend=ds-inference", num_gpus=1), str(ckpt))
    backend.hf_config = AutoConfig.from_pretrained(ckpt)
    assert kernel_policy_matches(backend._meta_model())  # DeepSpeed has a BLOOM kernel policy...
    kernels, why = backend._choose_path()  # ...but refuses it on this transformers (5.x)
    assert not kernels and why.startswith("auto: DeepSpeed refuses BLOOM kernel injection on transformers 5.")
    backend.config["num_gpus"] = 0
    assert backend._choose_path() == (False, "auto: no GPU (DeepSpeed's fused kernels are CUDA only)")
    backend.config["backend"]["kernel_inject"] = "false"
    assert backend._choose_path() == (False, "kernel_inject=false")
    backend.hf_config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    assert not kernel_policy_matches(backend._meta_model())  # no DeepSpeed kernels for Mistral


def test_stale_build_lock_is_cleared(tmp_path, monkeypatch):
    """A torch-extension lock left by a killed rank would hang every later DeepSpeed job in `preparing`;
    a lock a live build holds open is waited for, however old."""
    from backends.ds_common import clear_stale_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "transformer_inference" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.touch()
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
    # a builder that holds its lock open, then releases it (close, unlink) 2 s later
    builder = subprocess.Popen([sys.executable, "-c", f"""
import os, time
fd = os.open({str(live)!r}, os.O_RDONLY)
print("held", flush=True)
time.sleep(2)
os.close(fd)
os.remove({str(live)!r})
"""], stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline() == "held\n"
    start = time.monotonic()
    assert clear_stale_build_locks() == [str(stale)] and not stale.exists()
    assert time.monotonic() - start > 1.0  # it waited for the live build instead of removing its lock
    assert builder.wait(timeout=10) == 0  # the builder removed its own lock: nobody took it away


def test_pre_sharded_reload_recasts_deepspeed_fp32_head():
    """DeepSpeed rebuilds BLOOM's tied output head from its own pre-sharded checkpoint with
    LinearLayer.from_weights, which ignores the dtype it is given; the fp32 head then failed every
    fp16 generate on the H100 ("expected mat1 and mat2 to have the same dtype")."""
    import torch
    from deepspeed.module_inject.layers import LinearLayer

    from backends.ds_inference.backend import DSInferenceBackend

    head = LinearLayer.from_weights(weight_shape=(8, 4), dtype=torch.float16)
    assert head.weight.dtype == torch.float32  # DeepSpeed's behaviour: if this fails, it was fixed upstream
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 4, dtype=torch.float16), "lm_head": head})
    backend = DSInferenceBackend(config("backend=ds-inference", "dtype=fp16"), "unused")
    assert backend._recast_params(model) == ["lm_head.weight"]
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert backend._recast_params(model) == []


def test_pre_sharded_head_slices_joined(tmp_path):
    """At tp 2 DeepSpeed wrote rank 0's slice of the output head into non-tp.pt and its reload refused
    it on 2 H200s; the joined head is one that DeepSpeed's reload copies whole."""
    import torch
    from deepspeed.module_inject.auto_tp import ReplaceWithTensorSlicing

    from backends.ds_inference.backend import join_head_slices

    head = torch.arange(48, dtype=torch.float16).reshape(6, 8)
    slices = head[:, :4], head[:, 4:]  # LmHeadLinearAllreduce's cut of the input columns over 2 ranks
    torch.save({"lm_head.weight": slices[0].clone(), "ln_f.weight": torch.ones(8)}, tmp_path / "non-tp.pt")
    for rank, part in enumerate(slices):
        torch.save(part.clone(), tmp_path / f"lm_head.weight.rank{rank:03d}.pt")
    reload = ReplaceWithTensorSlicing(mp_size=2)  # how DeepSpeed copies a non-tp weight into the model
    with pytest.raises(AssertionError, match="Merging tensors is not allowed"):
        reload.copy(torch.empty(6, 8, dtype=torch.float16), slices[0])
    join_head_slices(tmp_path, ["lm_head.weight"], world=2)
    saved = torch.load(tmp_path / "non-tp.pt", weights_only=True)
    assert torch.equal(saved["lm_head.weight"], head) and torch.equal(saved["ln_f.weight"], torch.ones(8))
    assert torch.equal(reload.copy(torch.empty(6, 8, dtype=torch.float16), saved["lm_head.weight"]), head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["non-tp.pt"]
