"""Where a job's time goes (its phases, the overhead share) and how bad input and failed workers are worded,
through `python -m runner`."""
import itertools
import sys
import time

import pytest
from conftest import results, run_runner

from backends import names
from core.phases import PHASES, WORK

FAST = ["new_tokens=4", "repeats=1", "prompt_tokens=4"]


def check_phases(result: dict, expected: list) -> None:
    """The result's phases are `expected` (and build, where the job built its checkpoint), in PHASES order,
    non-negative, their starts in that order, and their sum the span from the first start to the end; the
    worker's load and warm-up are its own figures."""
    phases, starts = result["phases_s"], result["phase_starts"]
    if "build" in phases:
        expected = [expected[0], "build", *expected[1:]]
    assert list(phases) == expected and list(starts) == expected
    assert expected == [p for p in PHASES if p in expected]
    assert all(s >= 0 for s in phases.values()), phases
    assert [starts[p] for p in expected] == sorted(starts[p] for p in expected)
    wall = sum(phases.values())
    assert sum(phases[p] for p in expected[:-1]) == pytest.approx(starts[expected[-1]] - starts[expected[0]], abs=1e-3)
    assert result["overhead_share"] == pytest.approx(1 - sum(phases.get(p, 0) for p in WORK) / wall, abs=1e-3)
    if "load" in phases:
        assert phases["load"] >= result["load_s"] - 1e-3  # the load, and its synchronize
    if "warmup" in phases:
        assert phases["warmup"] == pytest.approx(result["warmup_s"], abs=1e-3)


class TestAccelerateSweep:
    """conftest's accelerate_sweep (isolate=true; bf16 at batch sizes 1 and 4, int8 invalid), checked in a
    class of that name: one xdist worker runs the sweep once for every such class."""

    def test_every_job_records_its_phases(self, accelerate_sweep):
        res = accelerate_sweep["results"]
        for r in res:
            if r["status"] == "invalid":
                check_phases(r, ["queued"])
                assert r["overhead_share"] == 1
            else:
                check_phases(r, ["queued", "launch", "imports", "setup", "load", "warmup", "measure", "write"])
                assert 0 < r["overhead_share"] < 1
            assert r["rounds"][0]["phases_s"] == r["phases_s"]
        for before, after in itertools.pairwise(res):  # one job after the other, each taking over where the last ended
            assert after["phase_starts"]["queued"] >= before["phase_starts"][list(before["phases_s"])[-1]]

    def test_the_summary_shows_the_overhead_share(self, accelerate_sweep):
        out = accelerate_sweep["proc"].stdout
        line = next(line for line in out.splitlines() if line.startswith("overhead: "))
        assert "of the 4 job run(s)'" in line and "launch" in line and "imports" in line
        share = int(line.split()[1].rstrip("%"))
        runs = [r["phases_s"] for r in accelerate_sweep["results"]]
        work = sum(r.get(p, 0) for r in runs for p in WORK)
        assert abs(share - 100 * (1 - work / sum(sum(r.values()) for r in runs))) <= 1


def test_a_shared_worker_s_later_jobs_pay_no_imports_and_no_load(tmp_path, cache_dir):
    began = time.time()
    proc = run_runner(["-m", "batch_size=1,2", "isolate=false", *FAST, f"hydra.sweep.dir={tmp_path}"], cache_dir)
    took = time.time() - began
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = results(tmp_path)
    check_phases(first, ["queued", "launch", "imports", "setup", "load", "warmup", "measure", "write"])
    check_phases(second, ["queued", "launch", "setup", "warmup", "measure", "write"])
    assert second["phase_starts"]["queued"] >= first["phase_starts"]["write"]  # one after the other
    assert sum(first["phases_s"].values()) + sum(second["phases_s"].values()) <= took
    assert "overhead: " in proc.stdout


# -- bad input: one line, exit 2, nothing launched -------------------------------------------------------

KEYS = "; `python -m runner --cfg job` lists the keys"
OVERRIDES = "allowed: key=value, key=a,b,c with -m, +key=value to add a key, ~key to remove one"
BACKENDS, DTYPES = ", ".join(sorted(names())), "bf16, fp16, fp32, int8"


@pytest.mark.parametrize("args, line", [
    (["backend=acelerate"], f"backend=acelerate: no such option (allowed: {BACKENDS}) (did you mean accelerate?)"),
    (["-m", "batch_size=1,2", "dtype=bf17"], f"dtype=bf17: no such option (allowed: {DTYPES}) (did you mean bf16?)"),
    (["batchsize=4"], f"batchsize=4: unknown key (did you mean batch_size?){KEYS}"),
    (["backend.device_mapp=auto"], f"backend.device_mapp=auto: unknown key (did you mean backend.device_map?){KEYS}"),
    (["-m", "batch_size=1,abc"], "batch_size=abc: allowed: a positive int or max"),
    (["new_tokens=abc"], "new_tokens=abc: allowed: an int"),
    (["num_gpus=two"], "num_gpus=two: allowed: an int or null"),
    (["rerun=faild"], "rerun=faild: allowed: none, failed, all (did you mean failed?)"),
    (["isolate=maybe"], "isolate=maybe: allowed: true or false"),
    (["dtype.name=bf17"], f"dtype.name=bf17: allowed: {DTYPES} (did you mean bf16?)"),
    (["batch_size=[1"], f"batch_size=[1: not an override (no viable alternative at input '[1'); {OVERRIDES}"),
    (["=3"], f"=3: not an override (no key before =); {OVERRIDES}"),
])
def test_a_config_error_is_one_line_and_launches_nothing(tmp_path, cache_dir, args, line):
    proc = run_runner([*args, f"hydra.run.dir={tmp_path / 'job'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                      cache_dir, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [f"error: {line}"]
    assert not list(tmp_path.rglob("job.json")) and not list(tmp_path.rglob("result.json"))


def test_hydra_full_error_still_gives_the_trace(tmp_path, cache_dir):
    proc = run_runner(["dtype=bf17", f"hydra.run.dir={tmp_path}"], cache_dir, timeout=60,
                      env_extra={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "MissingConfigException" in proc.stderr


# -- a failed worker's reason is its own exception ---------------------------------------------------------

def broken_transformers_stack(tmp_path) -> str:
    """A `stack` whose transformers cannot be imported (a broken install) in the launcher's processes: the
    worker fails at its imports (accelerate's launch command imports no transformers); the synthetic
    checkpoint, where one is built first, is built with the real one."""
    fake = tmp_path / "broken" / "transformers"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libcudart.so.12: cannot open shared object file')\n")
    stack = tmp_path / "python-broken"
    stack.write_text(f"#!/bin/sh\ncase \"$*\" in *backends.worker*) export PYTHONPATH={fake.parent}${{PYTHONPATH:+:$PYTHONPATH}};; "
                     f"esac\nexec {sys.executable} \"$@\"\n")
    stack.chmod(0o755)
    return str(stack)


def test_a_worker_that_cannot_import_fails_with_its_import_error(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_runner(["-m", "batch_size=1", "isolate=true", f"stack={broken_transformers_stack(tmp_path)}", *FAST,
                       f"hydra.sweep.dir={sweep}"], cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    (result,) = results(sweep)
    reason = "ImportError: libcudart.so.12: cannot open shared object file"
    assert (result["status"], result["reason"]) == ("error", reason)
    log = str(sweep / "0" / "job.log")
    assert f"({reason}) log: {log}" in proc.stderr  # the progress line
    assert f"job 0 error: {reason} -- log: {log}" in proc.stdout  # the end of the sweep
    check_phases(result, ["queued", "launch"])  # the worker wrote nothing: it never reported
