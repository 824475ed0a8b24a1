"""The backend registry: a throwaway backend from tests/plugins/, added the way backends/__init__.py says
(no change to runner/ or analysis/), runs a sweep end to end on the CPU and lands in the report."""
import os
import subprocess
import sys

from conftest import ROOT, results, run_runner

PLUGINS = ROOT / "tests" / "plugins"


def test_a_registered_backend_runs_a_sweep(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("INFERSWEEP_BACKENDS", "toy=toy_backend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    sweep = tmp_path / "sweep"
    proc = run_runner(["-m", "backend=toy", "dtype=fp32", "batch_size=1,2", "backend.tokens_per_step=1,0",
                       "new_tokens=4", "repeats=2", "prompt_tokens=4", f"hydra.sweep.dir={sweep}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    by_option = {}
    for r in results(sweep):
        assert r["config"]["backend"]["name"] == "toy"
        by_option.setdefault(r["config"]["backend"]["tokens_per_step"], []).append(r)
    assert [r["status"] for r in by_option[1]] == ["ok", "ok"]
    for r in by_option[1]:
        assert r["backend_info"]["loop"] == "hand-written greedy" and r["ms_per_token"] > 0
        assert len(r["output_tail_ids"]) == 4 and r["prompt_logits_top5"]["ids"]
    assert [r["reason"] for r in by_option[0]] == ["backend.tokens_per_step=0: must be >= 1"] * 2
    # the progress lines and the sweep's table name the backend and the option that differs from its default
    assert "toy fp32 gpus=0 bs=2 tokens_per_step=0 invalid" in proc.stderr
    table = (sweep / "seed_table.csv").read_text()
    assert "toy fp32 tokens_per_step=1" in table and "toy fp32 tokens_per_step=0" in table

    report = subprocess.run([sys.executable, "-m", "analysis", "report", str(sweep)], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    assert "toy fp32 tokens_per_step=1" in (sweep / "report" / "report.md").read_text()


def test_an_unknown_backend_is_refused_before_launch(tmp_path, cache_dir):
    proc = run_runner(["backend=nope", f"hydra.run.dir={tmp_path}"], cache_dir)
    assert proc.returncode != 0 and "nope" in proc.stderr
    assert not list(tmp_path.rglob("result.json"))
