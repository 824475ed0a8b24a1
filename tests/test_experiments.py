"""conf/experiment/: the seed's studies as sweeps of their own, narrowed from the command line."""
import json

import pytest
from conftest import ROOT, results, run_runner

from runner.callbacks import sweep_size

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def test_an_experiment_sweeps_its_params_and_the_command_line_narrows_them(tmp_path, cache_dir):
    """seed-h100-accelerate sweeps model x dtype x batch_size; the command line replaces model and
    batch_size and keeps its dtype list (bf16 ok, int8 invalid on a CPU), and the progress total counts
    the jobs that ran."""
    sweep_dir = tmp_path / "sweep"
    proc = run_runner(["-m", "+experiment=seed-h100-accelerate", "model=bloom-tiny", "batch_size=1,2",
                       "new_tokens=4", "repeats=1", f"hydra.sweep.dir={sweep_dir}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    res = results(sweep_dir)
    points = [(r["config"]["dtype"]["name"], r["config"]["batch_size"], r["status"]) for r in res]
    assert points == [("bf16", 1, "ok"), ("bf16", 2, "ok"), ("int8", 1, "invalid"), ("int8", 2, "invalid")]
    assert all(r["config"]["isolate"] is False and r["config"]["model"]["name"] == "bloom-tiny" for r in res)
    assert json.loads((sweep_dir / "sweep.json").read_text())["total"] == 4
    assert "[4/4 elapsed" in proc.stderr and "/5 " not in proc.stderr


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path, cache_dir):
    """Each experiment's full sweep composes (Hydra's --cfg job composes one point of it)."""
    proc = run_runner(["+experiment=" + name, "--cfg", "job"], cache_dir, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "isolate: false" in proc.stdout


def test_sweep_size_counts_an_experiments_params_under_the_command_line():
    params = {"model": "bloom-560m,bloom-1b7,bloom-7b1", "dtype": "bf16,int8", "batch_size": "1,8,64"}
    assert sweep_size([], params) == 18
    assert sweep_size(["batch_size=1", "model=bloom-tiny"], params) == 2
