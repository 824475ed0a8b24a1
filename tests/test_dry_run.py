"""`python -m runner -m ... dry_run=true`: each job's state and the sweep's estimated time, nothing launched,
nothing written."""
import shutil
from datetime import datetime
from pathlib import Path

from conftest import results, run_runner

# the settings of conftest's accelerate_sweep, which the dry runs plan again
FIXTURE = ["new_tokens=16", "repeats=3", "prompt_tokens=4", "price_per_cpu_node_hour=0.5", "isolate=true"]


def files(*roots: Path) -> dict:
    """Every file under `roots` (the roots themselves where they are files) with its size and mtime."""
    found = {}
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file():
                found[path] = (path.stat().st_size, path.stat().st_mtime_ns)
    return found


def round_seconds(result: dict) -> float:
    return sum((datetime.fromisoformat(r["ended"]) - datetime.fromisoformat(r["started"])).total_seconds()
               for r in result["rounds"])


class TestAccelerateSweep:
    """Dry runs over conftest's accelerate_sweep (bf16 ok and int8 invalid at batch sizes 1 and 4), in a
    class of this name so that the sweep runs once (tests/conftest.py)."""

    def test_dry_run_of_a_sweep_in_progress_says_each_jobs_state_and_the_time_it_knows(self, accelerate_sweep,
                                                                                      cache_dir):
        sweep_dir, history = accelerate_sweep["dir"], accelerate_sweep["history"]
        before = files(sweep_dir, history.parent)
        proc = run_runner(["-m", "dtype=bf16,int8,fp32", "batch_size=1,4", *FIXTURE, "rounds=2", "dry_run=true",
                           f"hydra.sweep.dir={sweep_dir}"], cache_dir, history=history)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[:6] == ["#0 accelerate bf16 gpus=0 bs=1: resumable (1 of 2 rounds measured)",
                             "#1 accelerate bf16 gpus=0 bs=4: resumable (1 of 2 rounds measured)",
                             f"#2 accelerate int8 gpus=0 bs=1: invalid ({accelerate_sweep['results'][2]['reason']})",
                             f"#3 accelerate int8 gpus=0 bs=4: invalid ({accelerate_sweep['results'][3]['reason']})",
                             "#4 accelerate fp32 gpus=0 bs=1: new", "#5 accelerate fp32 gpus=0 bs=4: new"]
        assert lines[6] == "plan: 2 new, 0 done, 2 resumable, 2 invalid; nothing launched"
        known = sum(round_seconds(r) for r in results(sweep_dir) if r["status"] == "ok")  # one more round each
        assert lines[7].startswith(f"estimate: 2 of 4 jobs known from history, ~{known:.0f} s")
        assert lines[7].endswith("; 2 unknown")
        assert files(sweep_dir, history.parent) == before
        assert "Launching" not in proc.stderr + proc.stdout

    def test_dry_run_of_the_finished_sweep_has_nothing_to_run(self, accelerate_sweep, cache_dir):
        sweep_dir, history = accelerate_sweep["dir"], accelerate_sweep["history"]
        proc = run_runner(["-m", "dtype=bf16,int8", "batch_size=1,4", *FIXTURE, "dry_run=true",
                           f"hydra.sweep.dir={sweep_dir}"], cache_dir, history=history)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "#0 accelerate bf16 gpus=0 bs=1: done (ok, kept)"
        assert proc.stdout.splitlines()[-2:] == ["plan: 0 new, 2 done, 0 resumable, 2 invalid; nothing launched",
                                                 "estimate: nothing to run"]

    def test_an_interrupted_job_is_resumable_and_a_corrupt_result_stays_where_it_is(self, accelerate_sweep,
                                                                                   cache_dir, tmp_path):
        copy = tmp_path / "sweep"
        shutil.copytree(accelerate_sweep["dir"], copy)
        (copy / "0" / "result.json").unlink()  # as a runner killed mid-job leaves it: attempts, no result
        (copy / "1" / "result.json").write_text("{not json")
        before = files(copy)
        proc = run_runner(["-m", "dtype=bf16,int8", "batch_size=1,4", *FIXTURE, "dry_run=true",
                           f"hydra.sweep.dir={copy}"], cache_dir, history=accelerate_sweep["history"])
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == ("#0 accelerate bf16 gpus=0 bs=1: resumable (an earlier attempt ended before its "
                            "result: it runs again)")
        assert lines[1].startswith(f"#1 accelerate bf16 gpus=0 bs=4: new (corrupt result file {copy / '1' / 'result.json'}")
        assert lines[1].endswith("; to be moved to result.json.corrupt, the job runs again)")
        assert lines[5].startswith("estimate: 2 of 2 jobs known from history, ~")
        assert files(copy) == before


def test_dry_run_of_a_new_sweep_creates_no_directory_history_or_checkpoint(tmp_path):
    sweep_dir, history, cache = tmp_path / "sweep", tmp_path / "history.sqlite", tmp_path / "cache"
    proc = run_runner(["-m", "batch_size=1,2", "new_tokens=4", "dry_run=true", f"hydra.sweep.dir={sweep_dir}"],
                      cache, history=history)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["#0 accelerate bf16 gpus=0 bs=1: new", "#1 accelerate bf16 gpus=0 bs=2: new",
                                        "plan: 2 new, 0 done, 0 resumable, 0 invalid; nothing launched",
                                        "estimate: 0 of 2 jobs known from history; 2 unknown"]
    assert list(tmp_path.iterdir()) == []


def test_dry_run_refuses_bad_input_in_one_line(tmp_path):
    sweep = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    for args, line in ((["-m", "price_per_gpu_hour=-1", "dry_run=true", sweep],
                        "price_per_gpu_hour=-1.0: allowed: USD per hour >= 0, or null (no cost)"),
                       # not a dry run: the sweep's directory is taken before its jobs are composed
                       (["-m", "dry_run=true,false", f"hydra.sweep.dir={tmp_path / 'swept'}"],
                        "dry_run: one value for the whole sweep (allowed: true or false)"),
                       (["dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"],
                        "dry_run=true: a dry run plans a sweep (allowed with -m)")):
        proc = run_runner(args, tmp_path / "cache", history=tmp_path / "history.sqlite")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == f"error: {line}"
    not_a_history = tmp_path / "notes.txt"
    not_a_history.write_text("not a database\n")
    proc = run_runner(["-m", "dry_run=true", sweep], tmp_path / "cache", history=not_a_history)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: the history {not_a_history}: cannot be read: file is not a database"
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()
