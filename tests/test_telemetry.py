"""Telemetry (backends/telemetry.py) and the latency percentiles (backends/measure.py) in real results on
the CPU, and what compare and trend say when the conditions of two measurements differ."""
import copy
import json

import numpy as np
import pytest
from conftest import run_runner
from test_analysis_verdict import analysis_main, make_result, make_sweep, table_rows, write_sweep

from backends.telemetry import gpu_stats, job_gpu_stats, reason_names
from core.jobdir import CorruptResult, validate_result, write_json
from runner.stack import visible_gpus

GPU = ("power_w_mean", "power_w_max", "sm_clock_mhz_mean", "sm_clock_mhz_min", "mem_clock_mhz_mean",
       "temperature_c_max", "utilization_pct_mean")
HOST = ("cpu_time_s", "involuntary_ctx_switches", "cpu_freq_mhz_mean", "load_avg_1m", "other_cpu_share")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def gpu_telemetry(sm: float, reasons: list, other_cpu: float = 0.02) -> dict:
    """A result's `telemetry` as NVML fills it on one GPU (its clocks, throttle reasons), and the host's."""
    gpu = {"power_w_mean": 420.0, "power_w_max": 690.0, "sm_clock_mhz_mean": sm, "sm_clock_mhz_min": sm - 30,
           "mem_clock_mhz_mean": 3201.0, "temperature_c_max": 61, "utilization_pct_mean": 97.0,
           "throttle_reasons": reasons}
    per_gpu = [{"index": 0, "name": "NVIDIA H200", **gpu, "samples": 150, "energy_j_per_token": 0.05}]
    return {"gpu": {"reason": None, "unsupported": {}, "interval_s": 0.02, "per_gpu": per_gpu,
                    "energy_j_per_token_per_gpu": [0.05], **gpu},
            "host": {"cpu_time_s": 1.0, "involuntary_ctx_switches": 3, "cpu_freq_mhz_mean": 3000.0,
                     "load_avg_1m": 1.0, "other_cpu_share": other_cpu}}


class TestAccelerateSweep:
    """conftest's accelerate_sweep (bf16 at batch sizes 1 and 4, 16 new tokens, 3 repeats, on the CPU): a
    class of this name runs on the xdist worker that runs the sweep."""

    @pytest.fixture(scope="class")
    def ok(self, accelerate_sweep) -> list:
        found = [r for r in accelerate_sweep["results"] if r["status"] == "ok"]
        assert len(found) == 2
        return found

    def test_telemetry_without_a_gpu_says_why_and_keeps_the_host(self, ok):
        for r in ok:
            assert r["energy_j_per_token"] is None
            gpu, host = r["telemetry"]["gpu"], r["telemetry"]["host"]
            assert isinstance(gpu["reason"], str) and gpu["reason"]
            assert {k: gpu[k] for k in GPU} == dict.fromkeys(GPU)
            assert gpu["per_gpu"] == gpu["energy_j_per_token_per_gpu"] == gpu["throttle_reasons"] == []
            assert all(_number(host[k]) for k in HOST), host
            assert host["cpu_time_s"] > 0 and 0 <= host["other_cpu_share"] <= 1
            assert len(r["telemetry"]["repeats"]) == 3
            assert host["cpu_time_s"] == np.median([t["cpu_time_s"] for t in r["telemetry"]["repeats"]])

    def test_latency_percentiles_from_every_step(self, ok):
        for r in ok:
            lat = r["latency"]
            assert lat["samples"] == {"ttft": 3, "itl": 3 * 15}  # 3 passes of 16 tokens
            for part in ("ttft_ms", "itl_ms"):
                assert 0 < lat[part]["p50"] <= lat[part]["p90"] <= lat[part]["p99"]
            assert lat["tokens_per_s"] == pytest.approx(r["tokens_per_s"])
            assert lat["tokens_per_s_per_stream"] == pytest.approx(r["tokens_per_s"] / r["config"]["batch_size"])

    def test_compare_names_the_conditions_that_differ(self, ok, tmp_path):
        base = copy.deepcopy(ok)
        cand = copy.deepcopy(ok)
        for r in cand:
            r["run_id"] = "candidate"
        base[0]["telemetry"] = gpu_telemetry(1980, ["GpuIdle"], other_cpu=0.02)
        cand[0]["telemetry"] = gpu_telemetry(1755, ["GpuIdle", "SwPowerCap"], other_cpu=0.41)
        base[1]["telemetry"] = cand[1]["telemetry"] = gpu_telemetry(1980, ["HwSlowdown"])
        code, out, err = analysis_main("compare", write_sweep(tmp_path, base), write_sweep(tmp_path, cand),
                                       history=tmp_path / "h.sqlite")
        assert code in (0, 1), err
        conditions = [line for line in out.split("**Conditions that differ**")[1].splitlines() if line.startswith("- ")]
        label = f"accelerate bf16 bs={ok[0]['config']['batch_size']}"
        assert conditions == [(f"- {label}: SM clock 1980 -> 1755 MHz; throttle: SwPowerCap in candidate; "
                               "other CPU share 0.02 -> 0.41")]


def test_the_same_conditions_are_not_noted(tmp_path):
    rng = np.random.default_rng(0)
    base, cand = make_sweep("base", rng), make_sweep("cand", rng)
    for r in base + cand:
        r["telemetry"] = gpu_telemetry(1980, ["SwPowerCap"], other_cpu=0.05)
    cand[2]["telemetry"] = gpu_telemetry(1990, ["SwPowerCap", "GpuIdle"], other_cpu=0.1)  # within the noise
    code, out, err = analysis_main("compare", write_sweep(tmp_path, base), write_sweep(tmp_path, cand),
                                   history=tmp_path / "h.sqlite")
    assert code == 0, err
    assert "Conditions that differ" not in out
    cand[1]["telemetry"] = gpu_telemetry(1980, [], other_cpu=0.05)
    code, out, err = analysis_main("compare", write_sweep(tmp_path / "2", base), write_sweep(tmp_path / "2", cand),
                                   history=tmp_path / "h.sqlite")
    assert "- accelerate bf16 bs=8: throttle: SwPowerCap in baseline only" in out.splitlines()


def test_trend_names_the_conditions_at_a_step(tmp_path):
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(12):
        sweep = make_sweep(f"s{i:02d}", rng, ms=10.0 if i < 7 else 13.0, noise=0.02, rounds=1,
                           started=f"2026-01-{i + 1:02d}T00:00:00+00:00")
        for r in sweep:
            r["telemetry"] = gpu_telemetry(1980 if i < 7 else 1755, [] if i < 7 else ["HwSlowdown"])
        dirs.append(write_sweep(tmp_path, sweep))
    history = tmp_path / "h.sqlite"
    assert analysis_main("history", "--add", *dirs, history=history)[0] == 0
    code, out, err = analysis_main("trend", "--out", tmp_path / "charts", history=history)
    assert code == 1, err
    rows = table_rows(out)
    assert len(rows) == 3
    assert {r["conditions"] for r in rows} == {"SM clock 1980 -> 1755 MHz; throttle: HwSlowdown in after"}


def test_telemetry_off_runs_none_of_it(tmp_path, cache_dir):
    proc = run_runner(["telemetry=false", "new_tokens=4", "repeats=2", "prompt_tokens=4",
                       f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "ok", r["reason"]
    assert r["telemetry"] is None and r["energy_j_per_token"] is None
    assert r["latency"]["samples"] == {"ttft": 2, "itl": 2 * 3}


@pytest.mark.gpu
@pytest.mark.skipif(not visible_gpus(), reason="needs a CUDA GPU")
def test_gpu_telemetry_on_a_gpu(tmp_path, cache_dir):
    """On a GPU machine: NVML's figures of the job's GPU and its energy per token."""
    proc = run_runner(["num_gpus=1", "new_tokens=64", "repeats=3", "prompt_tokens=8", f"hydra.run.dir={tmp_path}"],
                      cache_dir, env_extra={"CUDA_VISIBLE_DEVICES": ",".join(visible_gpus())})
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["status"] == "ok", r["reason"]
    gpu = r["telemetry"]["gpu"]
    assert gpu["reason"] is None, gpu["reason"]
    assert len(gpu["per_gpu"]) == 1 and gpu["per_gpu"][0]["samples"] >= 2 * 3
    assert gpu["sm_clock_mhz_mean"] > 0 and gpu["sm_clock_mhz_min"] <= gpu["sm_clock_mhz_mean"]
    assert 0 < gpu["power_w_mean"] <= gpu["power_w_max"] and gpu["temperature_c_max"] > 0
    assert isinstance(gpu["throttle_reasons"], list)
    if "energy_mj" not in gpu["unsupported"]:
        assert r["energy_j_per_token"] > 0 and gpu["energy_j_per_token_per_gpu"] == [r["energy_j_per_token"]]
    assert r["latency"]["samples"] == {"ttft": 3, "itl": 3 * 63}


def test_gpu_samples_make_the_means_extremes_and_reasons():
    def sample(power, sm, reasons):
        return {"power_w": power, "sm_clock_mhz": sm, "mem_clock_mhz": 3201, "temperature_c": 60,
                "utilization_pct": 100, "reasons": reasons}

    a = gpu_stats([sample(400.0, 1980, 0), sample(600.0, 1755, 0x4), sample(500.0, 1980, 0x1 | 0x4)])
    assert (a["power_w_mean"], a["power_w_max"], a["sm_clock_mhz_min"], a["samples"]) == (500.0, 600.0, 1755, 3)
    assert a["sm_clock_mhz_mean"] == pytest.approx((1980 * 2 + 1755) / 3, abs=0.05)
    assert a["throttle_reasons"] == ["GpuIdle", "SwPowerCap"]
    b = gpu_stats([{**sample(None, 1410, 0x40), "power_w": None}])  # a GPU that reports no power
    assert b["power_w_mean"] is None and b["throttle_reasons"] == ["HwThermalSlowdown"]
    job = job_gpu_stats([a, b])
    assert job["sm_clock_mhz_min"] == 1410 and job["power_w_mean"] == 500.0
    assert job["throttle_reasons"] == ["GpuIdle", "SwPowerCap", "HwThermalSlowdown"]
    assert reason_names(0x8 | 0x10000) == ["HwSlowdown", "0x10000"]


def test_a_latency_that_is_no_percentiles_is_corrupt(tmp_path):
    percentiles = {"p50": 2.0, "p90": 2.5, "p99": 4.0}
    r = {**make_result("run", 0, 1, [10.0]), "latency": {"ttft_ms": percentiles, "itl_ms": percentiles}}
    validate_result(r, "ok.json")
    write_json(tmp_path / "result.json", {**r, "latency": {"ttft_ms": percentiles, "itl_ms": {"p50": "fast"}}})
    with pytest.raises(CorruptResult, match="latency.itl_ms="):
        validate_result(json.loads((tmp_path / "result.json").read_text()), "result.json")
