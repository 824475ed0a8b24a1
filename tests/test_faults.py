"""Faults injected for real (docs/reliability.md): workers killed, crashed and hung, the runner interrupted
and resumed, corrupt result files, bad input, two sweeps appending to the history at once.

Every wait polls for a file or a process under a deadline; nothing sleeps for a guessed time.
"""
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import psutil
import pytest
from conftest import ROOT, history_of, results, run_runner

from runner.failure import failure_reason, signal_death

WORKER = "backends.worker"
SMALL = ["new_tokens=8", "repeats=2", "prompt_tokens=4"]


def runner_env(cache: Path) -> dict:
    """What conftest.run_runner gives the runner, for a runner that the test signals while it runs."""
    return {**os.environ, "INFERSWEEP_CACHE": str(cache), "INFERSWEEP_HISTORY": str(history_of(cache)),
            "CUDA_VISIBLE_DEVICES": ""}


class Runner:
    """`python -m runner ARGS` in the background, its output in files (a pipe that nobody reads would
    block it). Leaving the block stops it the way a user would (SIGTERM), if it still runs."""

    def __init__(self, args: list, cache: Path, out_dir: Path, env_extra: dict | None = None):
        self.err_path = out_dir / "runner.err"
        with open(out_dir / "runner.out", "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT,
                                         env={**runner_env(cache), **(env_extra or {})}, stdout=out, stderr=err)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"runner still running {timeout} s later:\n{self.stderr[-3000:]}")

    def wait_for(self, what: str, predicate, deadline_s: float = 240):
        """Poll `predicate` until it returns something truthy; fail when the deadline passes or when the
        runner ended first."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"runner ended (rc {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {what} within {deadline_s} s:\n{self.stderr[-3000:]}")


def processes_of(directory: Path) -> list:
    """Live processes whose command line names `directory` (launchers, workers, ranks of its jobs)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(directory) in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def worker_of(job_dir: Path):
    """The worker process (`python -m backends.worker JOB_DIR`) of a job, once it runs."""
    for p in processes_of(job_dir):
        try:
            cmd = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        # not the launcher, whose command line says `--module backends.worker`
        if cmd[-1] == str(job_dir) and any(a == "-m" and b == WORKER for a, b in itertools.pairwise(cmd)):
            return p
    return None


def worker_in_phase(job_dir: Path, phase: str):
    """The job's worker, once its phases file shows `phase` (e.g. "repeat": mid-generate)."""
    phases = job_dir / "phases"
    if phases.exists() and phase in phases.read_text():
        return worker_of(job_dir)
    return None


def stamp(path: Path) -> tuple:
    """What changes when a file is written again (write_result replaces it: a new inode)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def fault_stack(tmp_path: Path, fault: str) -> Path:
    """A `stack` interpreter (the README's PYTHONPATH wrapper) whose sitecustomize injects `fault` into the
    worker process alone, where it imports backends.env: `raise` an exception, `sleep` for an hour, or
    `linger`: run normally, then sleep for an hour on its way out (at exit)."""
    inject = tmp_path / f"inject-{fault}"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import sys, time\n"
        "class InjectFault:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'backends.env':\n"
        f"            if {fault!r} == 'linger':\n"
        "                import atexit; atexit.register(time.sleep, 3600)\n"
        "                return None\n"
        f"            if {fault!r} == 'sleep':\n"
        "                time.sleep(3600)\n"
        "            raise RuntimeError('injected fault: the worker cannot import backends.env')\n"
        f"if {WORKER!r} in getattr(sys, 'orig_argv', []):\n"
        "    sys.meta_path.insert(0, InjectFault())\n")
    stack = tmp_path / f"python-{fault}"
    stack.write_text(f"#!/bin/sh\nPYTHONPATH={inject}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} \"$@\"\n")
    stack.chmod(0o755)
    return stack


# -- crashes and hangs ----------------------------------------------------------------------------------

def test_killed_and_segfaulted_workers_are_errors_and_the_sweep_goes_on(tmp_path, cache_dir):
    """Job 0's worker gets kill -9 mid-generate, job 1's a SIGSEGV mid-generate; job 2 then runs as if
    nothing happened, and nothing of the dead jobs is left running."""
    sweep = tmp_path / "sweep"
    # repeats is the swept key, so that the jobs differ; the faulted ones would run for many minutes.
    with Runner(["-m", "repeats=100000,100001,2", "new_tokens=8", "prompt_tokens=4", "isolate=true",
                 f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path) as runner:
        for job, sig in ((0, signal.SIGKILL), (1, signal.SIGSEGV)):
            victim = runner.wait_for(f"job {job}'s worker mid-generate",
                                     lambda j=job: worker_in_phase(sweep / str(j), "repeat"))
            victim.send_signal(sig)
        assert runner.wait(timeout=240) == 0, runner.stderr[-3000:]
    killed, segfault, ok = results(sweep)
    assert (killed["status"], killed["reason"]) == ("error", "killed by SIGKILL")
    assert (segfault["status"], segfault["reason"]) == ("error", "killed by SIGSEGV (Segmentation fault)")
    assert ok["status"] == "ok" and len(ok["generate_s"]) == 2
    for r in (killed, segfault):
        assert r["log"] == str(sweep / str(r["job"]) / "job.log")
        assert f"log: {r['log']}" in runner.stderr  # the progress line says where to look
    assert "Segmentation fault" in (sweep / "1" / "job.log").read_text()  # and faulthandler's stack is there
    assert (sweep / "seed_table.csv").exists()
    assert processes_of(sweep) == []


def test_worker_sleeping_past_its_timeout_is_timeout(tmp_path, cache_dir):
    start = time.monotonic()
    proc = run_runner([f"stack={fault_stack(tmp_path, 'sleep')}", "timeout_s=5", *SMALL,
                       f"hydra.run.dir={tmp_path / 'job'}"], cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "timeout"
    assert result["reason"] == "no result within timeout_s=5.0 (the worker reported no phase: it was starting or importing)"
    assert time.monotonic() - start < 60
    assert processes_of(tmp_path) == []  # the sleeping worker and its launcher were ended


def test_a_worker_that_lingers_after_its_ok_result_is_ended_and_the_job_is_ok(tmp_path, cache_dir):
    """Once an `ok` result is written the runner ends the job's processes instead of waiting for the
    launchers' own shutdown (seconds per DeepSpeed job; here an hour)."""
    start = time.monotonic()
    proc = run_runner([f"stack={fault_stack(tmp_path, 'linger')}", "timeout_s=120", *SMALL,
                       f"hydra.run.dir={tmp_path / 'job'}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "ok", result["reason"]
    assert time.monotonic() - start < 90  # not the timeout, let alone the hour
    assert processes_of(tmp_path) == []


def test_uncaught_exception_in_the_worker_is_error_with_its_last_line(tmp_path, cache_dir):
    """A worker that raises before it can report is `error` with its exception's last line, not with the
    launcher's report of the exit."""
    proc = run_runner([f"stack={fault_stack(tmp_path, 'raise')}", "isolate=true", *SMALL, f"hydra.run.dir={tmp_path / 'job'}"],
                      cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "error"
    assert result["reason"] == "RuntimeError: injected fault: the worker cannot import backends.env"
    assert "CalledProcessError" in (tmp_path / "job" / "job.log").read_text()  # what the reason skipped


ACCELERATE_KILLED = """Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/accelerate/commands/launch.py", line 999, in simple_launcher
    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)
subprocess.CalledProcessError: Command '['/venv/bin/python', '-m', 'backends.worker', '/s/0']' died with <Signals.SIGKILL: 9>.
"""
DEEPSPEED_RANK_KILLED = """RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:46726: Connection reset by peer.
worker rank 0: error RuntimeError: Connection reset by peer
[launch.py:253:sigkill_handler] Killing subprocess 32573
[launch.py:259:sigkill_handler] ['/venv/bin/python', '-u', '-m', 'backends.worker', '/s/0'] exits with return code = -9
"""


def test_failure_reasons_from_launcher_output():
    """What the reason says for each way a launcher reports a death (the logs of the real faults above and
    of tests/test_deepspeed.py::test_dead_rank_ends_the_job_without_hanging)."""
    assert failure_reason(ACCELERATE_KILLED, 1) == "killed by SIGKILL"
    assert failure_reason(DEEPSPEED_RANK_KILLED, 247) == "killed by SIGKILL"
    assert signal_death(DEEPSPEED_RANK_KILLED.replace("= -9", "= 1")) is None  # a rank that raised: its own line
    assert failure_reason("Fatal Python error: Aborted\n" + ACCELERATE_KILLED.replace("SIGKILL: 9", "SIGABRT: 6"), 1) \
        == "killed by SIGABRT (Aborted)"
    assert failure_reason("Traceback (most recent call last):\n  File \"x\", line 1\nImportError: no module x\n"
                          + ACCELERATE_KILLED.replace("died with <Signals.SIGKILL: 9>", "returned non-zero exit status 1"),
                          1) == "ImportError: no module x"
    assert failure_reason("", -9) == "launcher killed by SIGKILL"
    assert failure_reason("some output\nlast words\n", 3) == "exit code 3: last words"


# -- interrupted sweeps and resume ----------------------------------------------------------------------

def test_ctrl_c_mid_sweep_then_resume_runs_only_the_rest(tmp_path, cache_dir):
    """SIGINT while job 1 runs: the runner ends its process tree within seconds and exits 130, job 1 leaves
    no result; the same command again keeps job 0 as it was and runs job 1 only."""
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=1,2", "isolate=true", *SMALL, f"hydra.sweep.dir={sweep}"]
    with Runner(args, cache_dir, tmp_path) as runner:
        runner.wait_for("job 0's result", lambda: (sweep / "0" / "result.json").exists())
        runner.wait_for("job 1's worker", lambda: worker_of(sweep / "1"))
        runner.proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        assert runner.wait(timeout=30) == 128 + signal.SIGINT
        stopped_in = time.monotonic() - start
    assert stopped_in < 15, stopped_in
    assert processes_of(sweep) == []
    assert "interrupted (SIGINT)" in runner.stderr and "to resume" in runner.stderr
    assert not (sweep / "1" / "result.json").exists()
    assert "interrupted (SIGINT)" in (sweep / "1" / "job.log").read_text()
    first = stamp(sweep / "0" / "result.json")

    proc = run_runner(args, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stamp(sweep / "0" / "result.json") == first  # kept, not measured again
    assert "bs=1 ok" in proc.stderr and "[kept from an earlier run]" in proc.stderr
    assert proc.stderr.count("launching") == 1  # job 1 only
    job0, job1 = results(sweep)
    assert job0["status"] == job1["status"] == "ok"
    assert job0["run_id"] == job1["run_id"]  # one sweep, resumed
    assert job1["timestamp"] >= job0["timestamp"]


def test_sigterm_ends_a_shared_worker_and_the_sweep(tmp_path, cache_dir):
    """isolate=false: SIGTERM while the shared session worker measures ends it and its launcher; the
    runner exits 143."""
    sweep = tmp_path / "sweep"
    with Runner(["-m", "batch_size=1,2", "isolate=false", "new_tokens=8", "repeats=100000", "prompt_tokens=4",
                 f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path) as runner:
        phases = sweep / "0" / "phases"  # written by the shared worker, whose command line names the session
        runner.wait_for("the shared worker mid-generate", lambda: phases.exists() and "repeat" in phases.read_text()
                        and worker_of(sweep / "0" / "session" / "0001"))
        assert processes_of(sweep)
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    assert processes_of(sweep) == []
    assert not (sweep / "0" / "result.json").exists() and not (sweep / "1").exists()


def invalid_and_timeout(sweep: Path, *extra: str) -> list:
    """A cheap sweep whose results are real but need no model: job 0 times out at once, job 1 is invalid."""
    return ["-m", "dtype=bf16,int8", "timeout_s=0.5", *extra, f"hydra.sweep.dir={sweep}"]


def test_resume_keeps_by_status_and_rerun_forces(tmp_path, cache_dir):
    """rerun=failed (default) runs error/timeout again, checks invalid again and keeps ok/oom; rerun=none
    keeps all; rerun=all runs all."""
    sweep = tmp_path / "sweep"
    proc = run_runner(invalid_and_timeout(sweep), cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert [r["status"] for r in results(sweep)] == ["timeout", "invalid"]
    paths = [sweep / "0" / "result.json", sweep / "1" / "result.json"]

    def rerun(*extra: str) -> list:
        before = [stamp(p) for p in paths]
        proc = run_runner(invalid_and_timeout(sweep, *extra), cache_dir)
        measured = any(r["status"] == "ok" for r in results(sweep))
        assert proc.returncode == (0 if measured else 3), proc.stderr[-3000:]
        return [stamp(p) != b for p, b in zip(paths, before, strict=True)]

    assert rerun() == [True, True]
    assert [r["status"] for r in results(sweep)] == ["timeout", "invalid"]
    assert rerun("rerun=none") == [False, False]
    assert rerun("rerun=failed") == [True, True]
    # Job 0 as a run that measured it would have left it (a real ok needs a model load: see the Ctrl-C test).
    # (without `rounds`: a result written before rounds existed counts as its round 1)
    earlier = {k: v for k, v in json.loads(paths[0].read_text()).items() if k != "rounds"}
    ok = {**earlier, "status": "ok", "reason": "", "ms_per_token": 1.0, "generate_s": [0.1], "load_s": 1.0}
    paths[0].write_text(json.dumps(ok))
    assert rerun() == [False, True]
    assert rerun("rerun=all") == [True, True]
    assert [r["status"] for r in results(sweep)] == ["timeout", "invalid"]


def test_corrupt_result_is_named_set_aside_and_run_again(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_runner(invalid_and_timeout(sweep), cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    corrupt = sweep / "1" / "result.json"
    truncated = corrupt.read_bytes()[:40]
    corrupt.write_bytes(truncated)  # what a full disk or a crashed copy leaves
    from analysis.results import read_results

    assert [r["job"] for r in read_results([sweep])] == [0]  # never read as a result

    proc = run_runner(invalid_and_timeout(sweep, "rerun=none"), cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]  # nothing measured
    assert f"corrupt result file {corrupt}" in proc.stderr
    assert (sweep / "1" / "result.json.corrupt").read_bytes() == truncated
    assert [r["status"] for r in results(sweep)] == ["timeout", "invalid"]


def test_another_sweep_into_the_same_directory_runs_again(tmp_path, cache_dir):
    """Hydra numbers jobs by position: job 0 of another command line is another job. Its result is kept
    aside, not mistaken for this one's. A changed value that is no axis of the sweep stops the resume."""
    sweep = tmp_path / "sweep"
    assert run_runner(invalid_and_timeout(sweep, "batch_size=1"), cache_dir).returncode == 3
    proc = run_runner(invalid_and_timeout(sweep, "batch_size=2"), cache_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {sweep} was started with batch_size=1 (now 2), not an axis of the sweep: resuming would mix "
        "two configs (allowed: the same values, rerun=all, or a new hydra.sweep.dir)")
    assert [r["config"]["batch_size"] for r in results(sweep)] == [1, 1]  # nothing touched

    proc = run_runner(["-m", "batch_size=2,1", "dtype=int8", f"hydra.sweep.dir={sweep}"], cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "is the result of another config (batch_size, dtype.name differ)" in proc.stderr
    assert [(r["config"]["batch_size"], r["config"]["dtype"]["name"]) for r in results(sweep)] == [(2, "int8"), (1, "int8")]
    assert json.loads((sweep / "0" / "result.json.previous").read_text())["config"]["dtype"]["name"] == "bf16"


# -- bad input: one line naming the key and what is allowed, before any model is loaded ----------------
# (unknown keys, wrong types and unknown group options: tests/test_runner.py::test_bad_config_fails_before_any_job;
# the same rules as units: tests/test_validate.py::test_invalid_reason)

@pytest.mark.parametrize("overrides, reason", [
    (["batch_size=0"], "batch_size=0: must be > 0"),
    (["new_tokens=0"], "new_tokens=0: must be > 0"),
    (["num_gpus=1"], "num_gpus=1: 0 GPU(s) visible (allowed: 0..0; 0 runs on the CPU)"),
    (["offload=nvme", "offload.path={tmp}/missing"],
     "offload.path={tmp}/missing: no such directory (allowed: an existing writable directory)"),
    (["offload=nvme", "offload.path={tmp}/file"],
     "offload.path={tmp}/file: not a directory (allowed: an existing writable directory)"),
])
def test_bad_input_is_one_line_before_any_model_loads(tmp_path, cache_dir, overrides, reason):
    (tmp_path / "file").write_text("")
    reason = reason.format(tmp=tmp_path)
    proc = run_runner([o.format(tmp=tmp_path) for o in overrides] + [f"hydra.run.dir={tmp_path / 'job'}"], cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert (result["status"], result["reason"]) == ("invalid", reason)
    assert reason in proc.stderr and "\n" not in reason
    assert not (tmp_path / "job" / "job.json").exists() and not (tmp_path / "job" / "job.log").exists()


def test_nvme_offload_path_on_a_read_only_file_system(tmp_path, cache_dir):
    """Root passes every permission bit, so `not writable` is tried on a read-only tmpfs, mounted in a
    mount namespace of the runner's own (nothing outside it sees the mount)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mount = f"mount -t tmpfs -o ro tmpfs {ro}"
    try:
        can = subprocess.run(["unshare", "--mount", "sh", "-c", mount], check=False, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no unshare(1)")
    if can.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {can.stderr.strip()}")
    cmd = ["unshare", "--mount", "sh", "-c", f'{mount} && exec "$@"', "sh", sys.executable, "-m", "runner",
           "offload=nvme", f"offload.path={ro}", f"hydra.run.dir={tmp_path / 'job'}"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=runner_env(cache_dir), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-3000:]
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    assert result["status"] == "invalid"
    assert result["reason"] == (f"offload.path={ro}: not writable (Read-only file system) "
                                "(allowed: an existing writable directory)")


def test_unknown_rerun_mode_fails_before_any_job(tmp_path, cache_dir):
    proc = run_runner(["-m", "batch_size=1,2", "rerun=sometimes", f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: rerun=sometimes: allowed: none, failed, all"
    assert not list(tmp_path.glob("*/result.json"))


# -- the history (analysis/history.py) --------------------------------------------------------------------

APPEND = """
import sys, time
from pathlib import Path
from analysis.history import append_sweep
history, go, n, sweeps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
while not go.exists():
    time.sleep(0.01)
for i in range(n):
    append_sweep(history, Path(sweeps[i % len(sweeps)]))
"""

CRASH_MID_APPEND = """
import os, signal, sys, types
from pathlib import Path
import analysis.history as h
# SIGKILL the process between the sweep's first INSERT and its COMMIT (json.dumps runs in between).
h.json = types.SimpleNamespace(dumps=lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
h.append_sweep(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _history_rows(history: Path) -> tuple:
    db = sqlite3.connect(history)
    try:
        sweeps = db.execute("SELECT run_id, jobs FROM sweeps").fetchall()
        per_sweep = db.execute("SELECT s.jobs, COUNT(r.job) FROM sweeps s LEFT JOIN results r ON r.sweep = s.id"
                               " GROUP BY s.id").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    return sweeps, per_sweep


def test_two_sweeps_append_to_the_history_at_once(tmp_path, cache_dir):
    """Two real sweeps finishing together both land; then four processes append 15 times each, all at
    once; finally a process killed in the middle of an append leaves the history as it was."""
    history = tmp_path / "history.sqlite"
    env = {**runner_env(cache_dir), "INFERSWEEP_HISTORY": str(history)}
    dirs = [tmp_path / "a", tmp_path / "b"]
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "-m", "dtype=int8", "batch_size=1,2,3",
                               f"hydra.sweep.dir={d}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for d in dirs]
    for p in procs:
        assert p.wait(timeout=120) == 3, p.stderr.read()  # every job invalid: finished, nothing measured
    run_ids = {json.loads((d / "sweep.json").read_text())["run_id"] for d in dirs}
    sweeps, per_sweep = _history_rows(history)
    assert {run_id for run_id, _ in sweeps} == run_ids and len(sweeps) == 2

    go = tmp_path / "go"
    env = {**runner_env(cache_dir), "PYTHONPATH": str(ROOT)}
    appenders = [subprocess.Popen([sys.executable, "-c", APPEND, str(history), str(go), "15", *map(str, dirs)],
                                  cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    go.write_text("")
    for p in appenders:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    sweeps, per_sweep = _history_rows(history)
    assert len(sweeps) == 2 + 4 * 15
    assert all(jobs == rows == 3 for jobs, rows in per_sweep)  # no entry without its results

    crash = subprocess.run([sys.executable, "-c", CRASH_MID_APPEND, str(history), str(dirs[0])], check=False, cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    assert _history_rows(history) == (sweeps, per_sweep)  # the half-appended sweep is not there
    from analysis.history import append_sweep

    append_sweep(history, dirs[1])  # and the database is not left locked
    assert len(_history_rows(history)[0]) == len(sweeps) + 1


def test_a_multi_line_exception_is_named_by_its_first_line():
    """A CUDA error's message gives the cause first and advice after it; the reason keeps the cause."""
    from backends.worker import exception_reason

    cuda = RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                        "asynchronously reported\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
    assert exception_reason(cuda) == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert exception_reason(ValueError("Data type torch.int8 is not supported")) == \
        "ValueError: Data type torch.int8 is not supported"
    assert exception_reason(KeyboardInterrupt()) == "KeyboardInterrupt"
