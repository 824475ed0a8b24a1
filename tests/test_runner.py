"""The runner end to end on CPU with bloom-tiny: real launcher, real worker, real result files."""
import csv
import json
import subprocess
import sys
import time

import psutil
import pytest
from conftest import ROOT, results, run_runner

FAST = ["new_tokens=16", "repeats=3", "prompt_tokens=4"]


@pytest.fixture(scope="module")
def sweep(accelerate_sweep):
    """bf16 at two batch sizes (1, 4; FAST's tokens and repeats), plus int8 (invalid on a CPU) in the same
    sweep: conftest's accelerate_sweep, which tests/test_analysis_report.py checks too."""
    return accelerate_sweep["dir"], accelerate_sweep["proc"], accelerate_sweep["results"]


class TestAccelerateSweep:
    """The checks of conftest's accelerate_sweep. tests/test_analysis_report.py checks the same sweep in a
    class of the same name: tests/conftest.py runs every class of that name on one xdist worker, which runs
    the sweep once."""

    def test_every_point_measured(self, sweep):
        _, _, res = sweep
        ok = [r for r in res if r["config"]["dtype"]["name"] == "bf16"]
        assert [r["status"] for r in ok] == ["ok", "ok"]
        assert sorted(r["config"]["batch_size"] for r in ok) == [1, 4]
        for r in ok:
            assert len(r["generate_s"]) == 3
            assert r["ms_per_token"] > 0 and r["ms_per_token_min"] <= r["ms_per_token"] <= r["ms_per_token_max"]
            expected = r["generate_s"]
            assert r["ms_per_token_min"] == pytest.approx(min(expected) * 1000 / (r["config"]["batch_size"] * 16))
            assert r["ttft_ms"] > 0
            assert r["decode_ms_per_step"] > 0
            assert r["tokens_per_s"] == pytest.approx(r["config"]["batch_size"] * 16 / sorted(expected)[1])
            assert r["load_s"] > 0 and r["warmup_s"] > 0 and r["peak_mem_gib"] > 0
            assert r["env"]["torch"] and r["env"]["transformers"] and r["env"]["hostname"]
            assert r["config"]["num_gpus"] == 0
            assert r["run_id"] == res[0]["run_id"] and r["log"].endswith("job.log")

    def test_invalid_combination_is_a_result(self, sweep):
        _, _, res = sweep
        int8 = [r for r in res if r["config"]["dtype"]["name"] == "int8"]
        assert [r["status"] for r in int8] == ["invalid", "invalid"]
        assert all("dtype=int8" in r["reason"] for r in int8)

    def test_end_of_sweep_table_has_the_seed_shape(self, sweep):
        sweep_dir, proc, _ = sweep
        with open(sweep_dir / "seed_table.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["", "1", "4"]
        labels = {row[0]: row[1:] for row in rows[1:]}
        assert labels["accelerate int8"] == ["invalid", "invalid"]
        assert all(float(v) > 0 for v in labels["accelerate bf16"])
        assert "accelerate bf16" in proc.stdout

    def test_progress_shows_jobs_and_phases(self, sweep):
        _, proc, _ = sweep
        assert "[1/4" in proc.stderr and "[4/4" in proc.stderr
        assert "loading" in proc.stderr and "repeat 3/3" in proc.stderr
        assert "accelerate bf16 gpus=0 bs=4 ok" in proc.stderr and "ms/token" in proc.stderr


def test_out_of_memory_is_a_result(tmp_path, cache_dir):
    proc = run_runner(["batch_size=8192", "prompt_tokens=64", "new_tokens=4", "repeats=1",
                       "host_mem_limit_gib=0.5", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 3, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "oom", result["reason"]
    assert "allocate" in result["reason"]
    assert result["load_s"] > 0


def test_timeout_kills_the_whole_tree(tmp_path, cache_dir):
    start = time.monotonic()
    proc = run_runner(["timeout_s=2", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 3, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "timeout"
    assert "timeout_s=2" in result["reason"]
    assert time.monotonic() - start < 60
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert left == []


@pytest.mark.parametrize("override, names", [
    ("batchsize=3", ["batchsize"]),
    ("new_tokens=abc", ["new_tokens", "abc"]),
    ("backend=foo", ["backend=foo", "accelerate", "ds-inference", "ds-zero"]),
    ("dtype=int4", ["dtype=int4", "bf16", "fp16", "fp32", "int8"]),
])
def test_bad_config_fails_before_any_job(tmp_path, cache_dir, override, names):
    proc = run_runner(["-m", "batch_size=1,2", override, f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 2
    assert all(n in proc.stderr for n in names), proc.stderr
    assert not list(tmp_path.glob("*/job.log"))


@pytest.mark.parametrize("isolate", ["true", "false"])  # false: the shared worker cleans up as its session ends
def test_nvme_offload_streams_weights_from_disk(tmp_path, cache_dir, isolate):
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    proc = run_runner(["offload=nvme", f"offload.path={nvme}", "backend.resident_gib=0.0001", f"isolate={isolate}", *FAST,
                       f"hydra.run.dir={tmp_path / 'job'}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "ok", result["reason"]
    assert "disk" in result["backend_info"]["device_map"]
    assert list(nvme.iterdir()) == []  # the offload folder is cleaned up after the job


def test_shared_worker_loads_the_model_once(tmp_path, cache_dir):
    proc = run_runner(["-m", "batch_size=1,2,3", "isolate=false", *FAST, f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    res = results(tmp_path)
    assert [r["status"] for r in res] == ["ok", "ok", "ok"]
    assert {r["model_loaded_by_job"] for r in res} == {0}
    assert len({r["load_s"] for r in res}) == 1
    assert {r["log"] for r in res} == {str(tmp_path / "0" / "session" / "0001" / "worker.log")}
    assert "measured in the shared worker" in (tmp_path / "1" / "job.log").read_text()
    left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert left == []


def test_model_code_imported_before_the_timed_load(tmp_path):
    """What the worker calls before load_s starts: the process's first import of the modelling code took
    1.1 s on a CPU, as long as loading a small model."""
    from transformers import BloomConfig

    BloomConfig(hidden_size=32, n_layer=1, n_head=4, vocab_size=256).save_pretrained(tmp_path)
    module = "transformers.models.bloom.modeling_bloom"
    code = (f"import sys; from backends.hf import import_model_code; before = {module!r} in sys.modules; "
            f"import_model_code({str(tmp_path)!r}); print(before, {module!r} in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_profile_writes_trace_and_table(tmp_path, cache_dir):
    proc = run_runner(["profile=true", *FAST, f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok" and result["ms_per_token"] > 0
    prof = result["profile"]
    assert prof["sorted_by"] == "self_cpu_time_total" and prof["total_ms"] > 0
    assert len(prof["top"]) == 15 and all(row["ms"] >= 0 and row["calls"] >= 1 for row in prof["top"])
    assert [row["ms"] for row in prof["top"]] == sorted((row["ms"] for row in prof["top"]), reverse=True)
    assert any(row["name"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm") for row in prof["top"])
    trace = json.loads((tmp_path / "profile-rank000.json").read_text())
    assert any(e.get("name") == "aten::mm" or e.get("name") == "aten::addmm" for e in trace["traceEvents"])
    table = (tmp_path / "profile-rank000.txt").read_text()
    assert f"Self CPU time total: {prof['total_ms']:.3f}ms" in table  # the total as torch's own table gives it
    assert prof["trace"] == str(tmp_path / "profile-rank000.json")
