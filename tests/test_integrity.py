"""Results that survive, injected for real: one runner per sweep directory, the orphans of a runner killed
with kill -9, an unusable history, and rounds (interleaved, resumed round by round)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import ROOT, history_of, results, run_runner
from test_faults import SMALL, fault_stack


def runner_env(cache) -> dict:
    return {**os.environ, "INFERSWEEP_CACHE": str(cache), "INFERSWEEP_HISTORY": str(history_of(cache)),
            "CUDA_VISIBLE_DEVICES": ""}


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _group(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return None


def test_a_second_runner_exits_2_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    first = subprocess.Popen([sys.executable, "-m", "runner", "-m", f"stack={fault_stack(tmp_path, 'sleep')}",
                              "timeout_s=300", *SMALL, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                             env=runner_env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_for(lambda: (sweep / "0" / "lease.json").exists())
        second = run_runner(["-m", *SMALL, f"hydra.sweep.dir={sweep}"], cache_dir)
        assert second.returncode == 2
        assert f"is in use by another runner (host {os.uname().nodename}, pid {first.pid}," in second.stderr
        assert not (sweep / "0" / "result.json").exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the runner and what it launched
        first.wait()
    third = run_runner(["-m", "dtype=int8", "rerun=all", f"hydra.sweep.dir={sweep}"], cache_dir)  # another config
    assert "took over the lock of a runner that is no longer running" in third.stderr
    assert f"pid {first.pid}" in third.stderr and third.returncode == 3  # int8 is invalid on the CPU


def test_kill_9_of_the_runner_leaves_no_orphan_writing_the_result(tmp_path, cache_dir):
    """The runner is killed with kill -9 while its worker runs: the launcher and worker live on in their own
    process group. The next run ends that group before measuring again, and only the attempt that holds
    the lease becomes the result."""
    sweep = tmp_path / "sweep"
    first = subprocess.Popen([sys.executable, "-m", "runner", "-m", f"stack={fault_stack(tmp_path, 'sleep')}",
                              "timeout_s=300", *SMALL, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                             env=runner_env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lease_path = sweep / "0" / "lease.json"
    wait_for(lambda: lease_path.exists() and json.loads(lease_path.read_text())["pgid"])
    lease = json.loads(lease_path.read_text())
    orphans = [p for p in psutil.process_iter() if _group(p) == lease["pgid"]]
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert orphans and all(p.is_running() for p in orphans)  # left running by the dead runner

    # rerun=all: the stack that sleeps is replaced by the runner's own (a change the resume must be told of)
    proc = run_runner(["-m", *SMALL, "rerun=all", f"hydra.sweep.dir={sweep}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"of attempt 1 left running by runner pid {first.pid} (process group {lease['pgid']}" in proc.stderr
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in orphans)
    result = results(sweep)[0]
    assert result["status"] == "ok" and json.loads(lease_path.read_text())["attempt"] == 2
    assert sorted(p.name for p in (sweep / "0" / "attempts").iterdir()) == ["0002.json"]


def test_an_unusable_history_stops_the_sweep_before_any_job(tmp_path, cache_dir):
    proc = run_runner(["-m", *SMALL, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cache_dir, history=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: INFERSWEEP_HISTORY={tmp_path}: is a directory, not a file"
    assert not list((tmp_path / "sweep").rglob("job.json"))


def test_rounds_interleave_over_the_sweep_and_resume_runs_only_the_rounds_missing(tmp_path, cache_dir):
    """With isolate=false a round is one worker process over the batch sizes, a new one each round."""
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=1,2", "new_tokens=4", "repeats=1", "prompt_tokens=4", "isolate=false",
            f"hydra.sweep.dir={sweep}"]
    proc = run_runner([*args, "rounds=2"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = results(sweep)
    for r in done:
        assert [x["round"] for x in r["rounds"]] == [1, 2] and all(x["status"] == "ok" for x in r["rounds"])
        assert r["ms_per_token"] == sum(x["ms_per_token"] for x in r["rounds"]) / 2  # the median of two rounds
    # interleaved: both jobs' round 1 ended before either job's round 2 started
    assert max(r["rounds"][0]["ended"] for r in done) <= min(r["rounds"][1]["started"] for r in done)
    workers = [[json.loads(a.read_text())["log"] for a in sorted((sweep / str(i) / "attempts").iterdir())]
               for i in (0, 1)]
    assert workers[0] == workers[1] and workers[0][0] != workers[0][1], workers  # one worker a round, shared
    assert "round_seed" in json.loads((sweep / "sweep.json").read_text())

    proc = run_runner([*args, "rounds=3"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = results(sweep)
    for before, after in zip(done, again, strict=True):
        assert after["rounds"][:2] == before["rounds"] and after["rounds"][2]["round"] == 3
    assert proc.stderr.count("[kept from an earlier run]") == 4  # rounds 1 and 2 of both jobs


def test_a_warmup_process_runs_first_in_a_process_of_its_own_and_is_never_a_result(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=1,2", "new_tokens=4", "repeats=1", "prompt_tokens=4", "isolate=false",
            "warmup_process=true", f"hydra.sweep.dir={sweep}"]
    proc = run_runner(args, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = results(sweep)
    assert len(done) == 2 and all(r["status"] == "ok" for r in done)
    warmup = json.loads((sweep / "warmup" / "attempts" / "0001.json").read_text())
    assert warmup["status"] == "ok" and warmup["config"]["round"] == 0
    assert not list((sweep / "warmup").glob("result.json"))  # never read as a result
    # it ran before round 1, in another worker than the one the two jobs shared
    assert warmup["timestamp"] <= min(r["rounds"][0]["started"] for r in done)
    assert warmup["log"] != done[0]["log"] == done[1]["log"]
    assert "warm-up process (discarded) ok" in proc.stderr

    proc = run_runner(args, cache_dir)  # nothing left to measure: no warm-up either
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm-up process" not in proc.stderr
    assert proc.stderr.count("[kept from an earlier run]") == 2


def test_a_misspelt_key_added_with_plus_is_refused_with_a_did_you_mean(tmp_path, cache_dir):
    """Hydra adds `+key=value` to the config whatever the key: a typo would be accepted and ignored."""
    for args, line in ((["-m", "+batchsize=3", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                        "error: batchsize=3: unknown key (did you mean batch_size?)"),
                       (["+backend.compil=true", f"hydra.run.dir={tmp_path / 'run'}"],
                        "error: backend.compil=True: unknown key (did you mean backend.compile?)")):
        proc = run_runner(args, cache_dir)
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith(line)
    assert not list(tmp_path.rglob("job.json"))


def test_inputs_the_sweep_cannot_start_with_stop_it_in_one_line_before_any_launch(tmp_path, cache_dir):
    """Checked for every job before the first launch (a multirun) or before the job (a single run): exit 2,
    one line naming the key, the value and what is allowed, no job directory made."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    cases = [
        (["stack=/bin/false"], "error: stack=/bin/false: does not run as Python (exit code 1: no output)"),
        ([f"stack={tmp_path}/missing/python"], f"error: stack={tmp_path}/missing/python: no such Python interpreter"),
        (["model=checkpoint", f"model.path={tmp_path}/empty"],
         f"error: model.path={tmp_path}/empty: holds no checkpoint (no config.json)"),
        (["model=checkpoint", f"model.path={tmp_path}/missing"], f"error: model.path={tmp_path}/missing: no such directory"),
        ([f"cache_dir={tmp_path}/file"], f"error: cache_dir={tmp_path}/file: is a file"),
        (["batch_size=1,100000000"], "error: batch_size=100000000: its weights and KV cache alone need"),
    ]
    for n, (overrides, line) in enumerate(cases):
        runs = [["-m", *overrides, f"hydra.sweep.dir={tmp_path / f'sweep{n}'}"]]
        if "," not in " ".join(overrides):
            runs.append([*overrides, f"hydra.run.dir={tmp_path / f'run{n}'}"])
        for args in runs:
            proc = run_runner(args, cache_dir)
            assert proc.returncode == 2, (overrides, proc.stderr[-2000:])
            assert proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr[-2000:]
    assert not list(tmp_path.rglob("job.json")) and not list(tmp_path.rglob("result.json"))


def test_resuming_with_a_changed_value_that_is_no_axis_stops_and_rerun_all_goes_on(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"

    def run(*extra: str):
        return run_runner(["-m", "dtype=int8", *extra, f"hydra.sweep.dir={sweep}"], cache_dir)

    assert run("batch_size=1,2", "new_tokens=4").returncode == 3
    before = [r["timestamp"] for r in results(sweep)]
    proc = run("batch_size=1,2", "new_tokens=8")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: {sweep} was started with new_tokens=4 (now 8), not an axis of the sweep")
    assert [r["timestamp"] for r in results(sweep)] == before
    assert run("batch_size=1,2,4", "new_tokens=4").returncode == 3  # an axis may change
    proc = run("batch_size=1,2", "new_tokens=8", "rerun=all")
    assert proc.returncode == 3 and [r["config"]["new_tokens"] for r in results(sweep)][:2] == [8, 8]


DS_QUICK = ["backend=ds-zero", "cpu_ranks=2", "dtype=fp32", "batch_size=2", "new_tokens=4", "prompt_tokens=6",
            "repeats=1", "timeout_s=240"]


def segments(port) -> list:
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def test_kill_9_of_the_runner_mid_deepspeed_job_then_resume_removes_its_shared_memory_and_only_that(tmp_path, cache_dir):
    """DeepSpeed's CPU ranks never unlink their /dev/shm allreduce buffers; a runner killed with kill -9
    cannot. The lease names the attempt's master port, and the resume removes that port's segments once
    the orphans are ended, leaving another port's segment and one a live process still maps."""
    sweep = tmp_path / "sweep"
    first = subprocess.Popen([sys.executable, "-m", "runner", "-m", *DS_QUICK, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                             env=runner_env(cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lease_path = sweep / "0" / "lease.json"
    wait_for(lambda: lease_path.exists() and json.loads(lease_path.read_text())["master_port"], timeout=240)
    port = json.loads(lease_path.read_text())["master_port"]
    wait_for(lambda: len(segments(port)) == 2, timeout=240)  # one per rank, once they joined
    first.send_signal(signal.SIGKILL)
    first.wait()
    ranks = segments(port)
    other = Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_1_0")  # another port's
    mapped = Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_9")  # in use
    holder = None
    try:
        for path in (other, mapped):
            path.write_bytes(b"\0" * 4096)
        hold = (f"import mmap, time\nf = open({str(mapped)!r}, 'r+b')\nm = mmap.mmap(f.fileno(), 4096)\n"
                "print('mapped', flush=True)\ntime.sleep(600)")
        holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "mapped\n"
        proc = run_runner(["-m", *DS_QUICK, f"hydra.sweep.dir={sweep}"], cache_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"; removed its 2 shared-memory segment(s) (/dev/shm, master port {port})" in proc.stderr
        assert not any(path.exists() for path in ranks)
        assert other.exists() and mapped.exists()
        again = json.loads(lease_path.read_text())
        assert again["attempt"] == 2 and segments(again["master_port"]) == []  # the resumed job's own, at its end
        assert results(sweep)[0]["status"] == "ok"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        other.unlink(missing_ok=True)
        mapped.unlink(missing_ok=True)
