"""backend=graph: our own BLOOM and Llama code computes what transformers' does (prefill and every decode
step against the cache), generates exactly what transformers' greedy generate does, and runs through the
runner like any backend (on the CPU its decode step runs eagerly: no CUDA graph)."""
import pytest
import torch
from conftest import ROOT, results, run_runner
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from backends.graph.decode import StaticDecoder
from backends.graph.model import KVCache, load
from backends.hf import TORCH_DTYPE, dtype_kwargs
from backends.synthetic import build_checkpoint
from runner.config import register_configs

# Logits of the tiny random models are below 1.5; bf16 differed from transformers by at most 4e-3 (llama-tiny).
TOLERANCE = {"fp32": 1e-4, "bf16": 1e-2}


def checkpoint(model: str, dtype: str, cache_dir) -> str:
    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        config = compose("config", overrides=[f"model={model}", f"dtype={dtype}", f"cache_dir={cache_dir}"])
    return str(build_checkpoint(OmegaConf.to_container(config, resolve=True)))


def both(model: str, dtype: str, cache_dir) -> tuple:
    path, torch_dtype = checkpoint(model, dtype, cache_dir), TORCH_DTYPE[dtype]
    hf = AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs(torch_dtype)).eval()
    return load(path, torch_dtype, torch.device("cpu")), hf


def ids(shape: tuple, seed: int) -> torch.Tensor:
    return torch.randint(4, 1024, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["bloom-tiny", "llama-tiny"])
def test_prefill_and_decode_steps_match_transformers(model, dtype, cache_dir):
    """Prefill over the prompt, then decode steps fed other tokens (so that each step's cache position
    and position encoding matter), against transformers' forward over the whole sequence: the logits
    within the dtype's tolerance at every position, and the same top-1 token wherever transformers' own
    top two are further apart than that tolerance (in fp32 nearly every position)."""
    ours, hf = both(model, dtype, cache_dir)
    prompt, fed = ids((2, 5), 0), ids((2, 4), 1)
    tol = TOLERANCE[dtype]
    with torch.no_grad():
        expected = hf(input_ids=torch.cat([prompt, fed], dim=1)).logits.float()
        cache = KVCache(ours.layers, 2, ours.kv_heads, 9, ours.head_dim, TORCH_DTYPE[dtype], torch.device("cpu"))
        got = [ours(prompt).logits.float()[:, :-1], ours.prefill(prompt, cache).float()[:, None]]
        for k in range(fed.shape[1] - 1):
            got.append(ours.decode(fed[:, k], torch.tensor([5 + k]), cache).float()[:, None])
    got = torch.cat(got, dim=1)
    assert got.shape == expected[:, :-1].shape
    assert (got - expected[:, :-1]).abs().max().item() < tol
    top2 = expected[:, :-1].topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > tol
    assert clear.float().mean() > 0.5  # the comparison below is about most positions
    assert torch.equal(got.argmax(-1)[clear], expected[:, :-1].argmax(-1)[clear])


@pytest.mark.parametrize("span_step", [0, 3])
@pytest.mark.parametrize("model", ["bloom-tiny", "llama-tiny"])
def test_generate_is_transformers_greedy_generate(model, span_step, cache_dir):
    """fp32: the same tokens as transformers' greedy generate (min_new_tokens = new_tokens), shape
    [batch, prompt + new_tokens], whether a step attends over the whole cache or over growing spans of
    it; one decoder over changing batch shapes and a prefill-only generate."""
    ours, hf = both(model, "fp32", cache_dir)
    decoder = StaticDecoder(ours, use_graph=False, compile_mode=None, span_step=span_step)
    for batch, prompt, new in [(2, 5, 7), (3, 4, 5), (2, 5, 7), (2, 5, 1)]:
        x = ids((batch, prompt), batch)
        with torch.no_grad():
            out = decoder.generate(x, new)
            expected = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                   max_new_tokens=new, min_new_tokens=new, pad_token_id=hf.config.pad_token_id)
        assert out.shape == (batch, prompt + new)
        assert torch.equal(out, expected)


def test_graph_sweep_next_to_accelerate(tmp_path, cache_dir):
    """backend=graph through the runner on the CPU: every job ok, the decode step recorded as eager (no
    GPU), the roofline judged, and the same top-5 next tokens after the prompt as accelerate's
    transformers model (logits within bf16 rounding)."""
    proc = run_runner(["-m", "backend=graph,accelerate", "batch_size=1,3", "new_tokens=4", "repeats=1",
                       "prompt_tokens=4", "isolate=false", f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = results(tmp_path)
    assert [(r["config"]["backend"]["name"], r["status"]) for r in jobs] == [
        ("graph", "ok"), ("graph", "ok"), ("accelerate", "ok"), ("accelerate", "ok")], [r["reason"] for r in jobs]
    graph, accelerate = jobs[0], jobs[2]
    assert graph["backend_info"]["arch"] == "bloom" and graph["backend_info"]["cuda_graph"] is False
    assert [r["model_loaded_by_job"] for r in jobs[:2]] == [0, 0]  # one load, two batch shapes
    assert jobs[1]["backend_info"]["graph_shape"] == [3, 8]
    assert graph["roofline"]["weight_bytes"] == accelerate["roofline"]["weight_bytes"]
    assert graph["roofline"]["fraction_of_floor"] > 0
    assert graph["prompt_logits_top5"]["ids"] == accelerate["prompt_logits_top5"]["ids"]
    assert graph["prompt_logits_top5"]["logits"] == pytest.approx(accelerate["prompt_logits_top5"]["logits"], rel=2e-2)


def test_what_graph_does_not_run_is_invalid(tmp_path, cache_dir):
    """int8 and offload are `invalid` with one line naming the key and value; nothing is launched."""
    proc = run_runner(["-m", "backend=graph", "dtype=int8,fp16", "offload=cpu", f"hydra.sweep.dir={tmp_path}"],
                      cache_dir)
    assert proc.returncode == 3, proc.stderr[-2000:]
    reasons = [(r["status"], r["reason"].split(":")[0]) for r in results(tmp_path)]
    assert reasons == [("invalid", "dtype=int8"), ("invalid", "offload=cpu")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("model", ["bloom-tiny", "llama-tiny"])
def test_cuda_graph_replays_generate_what_the_uncaptured_step_does(model, dtype, cache_dir):
    """On a GPU: the captured steps (a graph per span) choose exactly the tokens of the same step run op
    by op, over changing batch shapes and back (each shape captured afresh), and in fp32 the tokens of
    transformers' greedy generate."""
    path, torch_dtype, gpu = checkpoint(model, dtype, cache_dir), TORCH_DTYPE[dtype], torch.device("cuda:0")
    ours = load(path, torch_dtype, gpu)
    graphed = StaticDecoder(ours, use_graph=True, compile_mode=None, span_step=3)
    eager = StaticDecoder(ours, use_graph=False, compile_mode=None, span_step=3)
    hf = AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs(torch_dtype)).eval().to(gpu)
    for batch, prompt, new in [(2, 5, 9), (3, 4, 6), (2, 5, 9)]:
        x = ids((batch, prompt), batch).to(gpu)
        with torch.no_grad():
            out = graphed.generate(x, new)
            assert graphed.timings["graphs"] == len(range(3, prompt + new, 3)) + 1
            assert graphed.timings["graph_check"] == "replays identical to the uncaptured step"
            assert torch.equal(out, graphed.generate(x, new))  # a second generate replays the same graphs
            assert torch.equal(out, eager.generate(x, new))
            if dtype == "fp32":
                expected = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                                       max_new_tokens=new, min_new_tokens=new, pad_token_id=hf.config.pad_token_id)
                assert torch.equal(out, expected)
