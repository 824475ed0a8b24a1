"""Issue 7 on the CPU: the roofline of every ok point, batch_size=max, and the compiled (static cache) path.

End to end through `python -m runner` with bloom-tiny, plus units of the search, the floors and the tables.
"""
import json
import time

import pytest
import torch
from conftest import ROOT, results, run_runner
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analysis.report import write_report
from analysis.results import frame, load_results
from analysis.tables import max_batch_table, roofline_table
from backends import maxbatch
from backends.roofline import measure_ceilings, roofline, sweep_ceilings, weights
from runner.config import register_configs
from runner.stack import Stack
from runner.validate import invalid_reason

register_configs()
STACK = Stack(python="/usr/bin/python3", python_version="3.11", versions={"deepspeed": "0.19.8"})


# ---- batch_size=max: the search ------------------------------------------------------------------------

def fits_below(limit: int, seen: list):
    def fits(b: int) -> None:
        seen.append(b)
        if b > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return fits


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


@pytest.mark.parametrize("limit, cap, found, sizes", [
    (37, 1024, 37, [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]),  # doubling, then bisection
    (64, 1024, 64, [1, 2, 4, 8, 16, 32, 64, 128, 96, 80, 72, 68, 66]),  # 64..66: within 1/32 of 64
    # a 7B model on one GPU: stops within 3%, 5 bisection tries instead of 10
    (1200, 2048, 1184, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 1536, 1280, 1152, 1216, 1184]),
    (5000, 100, 100, [1, 2, 4, 8, 16, 32, 64, 100]),  # everything fits: stops at the cap
    (0, 1024, 0, [1]),  # not even 1
])
def test_search_doubles_then_bisects(limit, cap, found, sizes, monkeypatch):
    monkeypatch.setattr(maxbatch, "release_memory", lambda: None)  # a full gc per try: slow, and nothing to free
    seen, tried = [], []
    assert maxbatch.search(fits_below(limit, seen), cap, is_oom, tried) == found
    assert seen == sizes == [t["batch_size"] for t in tried]
    assert [t["status"] for t in tried] == ["ok" if b <= limit else "oom" for b in sizes]


def test_search_stops_at_an_error_that_is_not_oom():
    def fits(b: int) -> None:
        if b == 4:
            raise ValueError("shape mismatch")

    tried = []
    with pytest.raises(ValueError, match="shape mismatch"):
        maxbatch.search(fits, 1024, is_oom, tried)
    assert [t["batch_size"] for t in tried] == [1, 2]


def test_measurement_steps_down_where_the_found_size_runs_out_of_memory():
    tried, asked = [], []

    def measure_at(b: int) -> dict:
        asked.append(b)
        if b > 50:
            raise torch.OutOfMemoryError("out of memory")
        return {"ms_per_token": 1.0}

    assert maxbatch.measure_largest(measure_at, 64, is_oom, tried) == (49, {"ms_per_token": 1.0})
    assert asked == [64, 56, 49]  # 7/8 steps
    assert [(t["batch_size"], t["phase"]) for t in tried] == [(b, "measure") for b in asked[:-1]]
    with pytest.raises(torch.OutOfMemoryError):
        maxbatch.measure_largest(measure_at, 200, is_oom, [], steps=2)  # 200 -> 175 -> 153: gives up


# ---- roofline units ------------------------------------------------------------------------------------

def tiny_bloom(vocab: int = 1024):
    from transformers import AutoModelForCausalLM

    from backends.synthetic import synthetic_config

    torch.manual_seed(0)
    cfg = synthetic_config({"arch": "bloom", "hidden_size": 64, "n_layer": 2, "n_head": 4, "vocab_size": vocab})
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def test_floors_from_weights_kv_cache_and_ceilings():
    model = tiny_bloom()
    params = sum(p.numel() for p in model.parameters())  # the tied lm_head counted once
    config = {"prompt_tokens": 8, "new_tokens": 100, "dtype": {"name": "bf16"}}
    ceilings = {"copy_gbps": 1.0, "matmul_tflops": 1e-3}  # 1 GB/s, 1 GFLOP/s
    r = roofline(model, config, batch_size=4, decode_ms_per_step=10.0, ceilings=ceilings)
    kv = 2 * 2 * 64 * 2 * 4 * (8 + 50)
    assert (r["params"], r["weight_bytes"], r["kv_bytes"]) == (params, 2 * params, kv)
    assert r["decode_floor_ms_per_step"] == pytest.approx((2 * params + kv) / 1e9 * 1e3)
    assert r["compute_floor_ms_per_token"] == pytest.approx(2 * params / 1e9 * 1e3)
    assert r["bound"] == "compute" and r["floor_ms_per_step"] == pytest.approx(4 * r["compute_floor_ms_per_token"])
    assert r["fraction_of_floor"] == pytest.approx(r["floor_ms_per_step"] / 10.0)
    assert roofline(model, config, 4, -0.1, ceilings)["fraction_of_floor"] is None  # noise swamped the step
    fast_math = roofline(model, config, 4, 10.0, {"copy_gbps": 1.0, "matmul_tflops": 1.0})
    assert fast_math["bound"] == "memory"
    assert fast_math["fraction_of_floor"] == pytest.approx(fast_math["decode_floor_ms_per_step"] / 10.0)
    # tensor parallelism splits the KV cache over the ranks
    assert roofline(model, config, 4, 10.0, ceilings, tp=2)["kv_bytes"] == kv // 2


def test_an_untied_embedding_table_is_not_read_by_a_step():
    """BLOOM ties its embedding to lm_head (counted once, as the projection); a model holding its own copy
    of the table (DeepSpeed's injected BLOOM) must not count the copy, nor position embeddings."""
    model = tiny_bloom()
    tied = weights(model)
    table = model.transformer.word_embeddings.weight
    model.lm_head.weight = torch.nn.Parameter(table.detach().clone())  # untie: a copy of its own
    assert weights(model) == tied
    model.transformer.extra = torch.nn.Embedding(7, 64, dtype=torch.bfloat16)  # a lookup-only table
    assert weights(model) == tied


def test_int8_weights_count_one_byte():
    model = tiny_bloom()
    first = model.transformer.h[0].mlp.dense_h_to_4h
    before = weights(model)[1]
    first.weight = torch.nn.Parameter(first.weight.data.to(torch.int8), requires_grad=False)
    assert weights(model)[1] == before - first.weight.numel()


def test_ceilings_are_measured_fast_on_cpu_and_cached_per_sweep(tmp_path):
    start = time.perf_counter()
    first = sweep_ceilings(tmp_path, torch.device("cpu"), job=0)
    assert time.perf_counter() - start < 2
    assert first["copy_gbps"] > 0 and first["matmul_tflops"] > 0 and first["matmul_dtype"] == "float32"
    assert first["measured_by_job"] == 0
    path = tmp_path / json.loads(json.dumps(first))["file"].split("/")[-1]
    path.write_text(json.dumps({**json.loads(path.read_text()), "copy_gbps": 12345.0}))
    assert sweep_ceilings(tmp_path, torch.device("cpu"), job=1)["copy_gbps"] == 12345.0  # read, not measured
    assert measure_ceilings(torch.device("cpu"))["device"] == first["device"]


# ---- validation ----------------------------------------------------------------------------------------

def config(*overrides: str) -> dict:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True, enum_to_str=True)
    cfg["num_gpus"] = 0 if cfg["num_gpus"] is None else cfg["num_gpus"]
    return cfg


@pytest.mark.parametrize("overrides, expected", [
    (["batch_size=max"], None),
    (["batch_size=abc"], "batch_size=abc: allowed: a positive int or max"),
    (["batch_size=1.5"], "batch_size=1.5: allowed: a positive int or max"),
    (["batch_size=true"], "batch_size=True: allowed: a positive int or max"),
    (["batch_size=0"], "batch_size=0: must be > 0"),
    (["batch_size=max", "max_batch_cap=0"], "max_batch_cap=0: must be >= 1"),
    (["batch_size=max", "new_tokens=0"], "new_tokens=0: must be > 0"),
    (["batch_size=max", "backend=ds-inference", "cpu_ranks=2", "dtype=fp32"],
     ("batch_size=max: the search runs in one process (an out-of-memory on one rank of several cannot be "
      "retried; allowed with one GPU or cpu_ranks=1, or a one-process backend)")),
])
def test_batch_size_is_a_positive_int_or_max(overrides, expected):
    assert invalid_reason(config(*overrides), STACK, ()) == expected


def test_sdpa_is_invalid_for_bloom(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert invalid_reason(config("backend.attn_implementation=sdpa"), STACK, ()) == (
        "backend.attn_implementation=sdpa: transformers has only eager attention for BLOOM "
        "(allowed for BLOOM: eager or null)")
    llama = config("backend.attn_implementation=sdpa", "model=checkpoint", f"model.path={tmp_path}")
    assert invalid_reason(llama, STACK, ()) is None


def test_a_batch_size_that_is_not_a_number_stops_the_runner_in_one_line(tmp_path, cache_dir):
    """A type error, as for every other key: exit 2, nothing run (a size below 1 is the job's `invalid`)."""
    proc = run_runner(["batch_size=abc", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: batch_size=abc: allowed: a positive int or max\n"
    assert not (tmp_path / "result.json").exists()


# ---- analysis ------------------------------------------------------------------------------------------

def fake(bs, status="ok", fraction=0.5, bound="memory", **extra) -> dict:
    r = {"run_id": "r", "job": 0, "timestamp": "2026-11-25T00:00:00+00:00", "status": status, "reason": "",
         "log": "", "config": {"batch_size": bs, "new_tokens": 4, "prompt_tokens": 4, "num_gpus": 1, "stack": None,
                              "backend": {"name": "accelerate"}, "dtype": {"name": "bf16"},
                              "offload": {"name": "none"}, "model": {"name": "m"}},
         "env": {"gpu_name": "H100", "gpu_count": 1, "hostname": "h"}, **extra}
    if status == "ok":
        r.update(ms_per_token=1.0, roofline={"fraction_of_floor": fraction, "bound": bound})
    return r


def test_roofline_and_max_batch_tables():
    df = frame([fake(1, fraction=0.2134), fake(8, fraction=0.61, bound="compute"), fake(64, status="oom"),
                fake("max", fraction=0.9, bound="compute", max_batch_size=40, max_batch_found=42,
                     max_batch_search=[{"batch_size": 42, "status": "ok"}, {"batch_size": 43, "status": "oom"},
                                       {"batch_size": 42, "status": "oom", "phase": "measure"}])])
    table = roofline_table(df)
    assert list(table.columns) == [1, 8, 40, 64]  # the searched job sits at the size it measured
    assert table.loc["accelerate bf16"].tolist() == ["0.21 memory", "0.61 compute", "0.9 compute", "oom"]
    largest = max_batch_table(df)
    assert largest.loc["accelerate bf16"].tolist() == ["42", 40, "ok", "42 ok, 43 oom, 42 oom (measure)"]


# ---- end to end ----------------------------------------------------------------------------------------

def test_max_batch_search_hits_real_oom_and_measures_the_largest(tmp_path, cache_dir):
    """A real CPU allocator OOM under host_mem_limit_gib (the eager attention scores of 256-token prompts)."""
    proc = run_runner(["batch_size=max", "dtype=fp32", "prompt_tokens=256", "new_tokens=2", "repeats=1",
                       "host_mem_limit_gib=0.5", "max_batch_cap=4096", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "ok", r["reason"]
    assert r["config"]["batch_size"] == "max"
    found, tried = r["max_batch_found"], r["max_batch_search"]
    search = [(t["batch_size"], t["status"]) for t in tried if "phase" not in t]
    doubling = [b for b, _ in search][: search.index(next(t for t in search if t[1] == "oom")) + 1]
    assert doubling == [2**k for k in range(len(doubling))]  # 1, 2, 4, ... up to the first oom
    assert (found, "ok") in search and (found + 1, "oom") in search  # bisection pinned it down exactly
    assert 4 <= found < 512  # 0.5 GiB: the search really ran out of memory, far below the cap
    assert 1 <= r["max_batch_size"] <= found  # measured at the found size, or a step or more below
    assert len(r["generate_s"]) == 1 and r["ms_per_token"] > 0 and r["peak_mem_gib"] > 0
    assert r["roofline"]["kv_bytes"] == 2 * 2 * 64 * 4 * r["max_batch_size"] * (256 + 1)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, cache_dir):
    """compile=false,true on the same seeded model (fp32), one sweep; torch.compile through inductor takes
    30-50 s on this VM the first time (C++ kernels), hence a small batch, few tokens and two repeats."""
    sweep_dir = tmp_path_factory.mktemp("compile")
    proc = run_runner(["-m", "backend.compile=false,true", "dtype=fp32", "batch_size=2", "new_tokens=16",
                       "prompt_tokens=4", "repeats=2", f"hydra.sweep.dir={sweep_dir}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    return sweep_dir, results(sweep_dir)


class TestCompiledSweep:
    """The checks of the module-scoped `compiled` sweep: one class, so that one xdist worker runs them all,
    and the sweep once (tests/conftest.py)."""

    def test_compiled_static_cache_generates_the_same_tokens(self, compiled):
        _, (eager, comp) = compiled
        assert (eager["status"], comp["status"]) == ("ok", "ok"), (eager["reason"], comp["reason"])
        assert eager["backend_info"]["compile"] is False and "compiled" not in eager["backend_info"]
        info = comp["backend_info"]
        assert info["compile"] is True and info["compiled"] is True and info["cache_implementation"] == "static"
        assert eager["backend_info"]["attn_implementation"] == info["attn_implementation"] == "eager"  # BLOOM: no SDPA
        assert comp["output_tail_ids"] == eager["output_tail_ids"] and len(eager["output_tail_ids"]) == 8
        assert comp["prompt_logits_top5"] == eager["prompt_logits_top5"]

    def test_every_ok_point_has_its_roofline_against_one_set_of_ceilings(self, compiled):
        sweep_dir, res = compiled
        ceilings = [r["env"]["ceilings"] for r in res]
        assert ceilings[0] == ceilings[1] and ceilings[0]["measured_by_job"] == 0  # measured once per sweep
        assert ceilings[0]["file"].startswith(str(sweep_dir)) and ceilings[0]["copy_gbps"] > 0
        for r in res:
            roof = r["roofline"]
            assert roof["weight_bytes"] == 4 * roof["params"] > 0  # fp32
            assert roof["bound"] in ("memory", "compute")
            assert roof["floor_ms_per_step"] == max(roof["decode_floor_ms_per_step"], roof["compute_floor_ms_per_step"])
            assert roof["fraction_of_floor"] == pytest.approx(roof["floor_ms_per_step"] / r["decode_ms_per_step"])
            assert r["decode_ms_per_step"] > 0 and 0 < roof["fraction_of_floor"] < 1

    def test_report_shows_the_fraction_of_the_floor(self, compiled, tmp_path):
        sweep_dir, res = compiled
        write_report(load_results([sweep_dir]), tmp_path)
        table = (tmp_path / "roofline_bloom-tiny-cpu.md").read_text()
        rows = {"compile=false": res[0], "compile=true": res[1]}
        for option, r in rows.items():
            cell = f"{r['roofline']['fraction_of_floor']:.2g} {r['roofline']['bound']}"
            assert any(option in line and cell in line for line in table.splitlines()), (option, cell, table)
        assert "Fraction of the roofline floor" in (tmp_path / "report.md").read_text()


