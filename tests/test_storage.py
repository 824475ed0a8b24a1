"""What a sweep writes on a small file system of its own (a 2 MiB tmpfs, mounted by the test, which runs as
root), filled for real: a disk that fills mid-sweep, a full or read-only one before the first launch. The
sweep or run directory, the synthetic-checkpoint cache and the history each in turn; the others elsewhere."""
import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import results, run_runner
from test_faults import Runner, processes_of, stamp

from analysis.history import connect

QUICK = ["new_tokens=4", "repeats=1", "prompt_tokens=4"]
ALLOWED = "(allowed: a writable directory with free space)"
STOPPED = (": No space left on device (ENOSPC): the sweep stopped; finished results are kept; free space (or make "
           "it writable) and run the same command again to resume")


@pytest.fixture
def small_disk(tmp_path: Path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=False,
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the file system has no byte left (a real ENOSPC); returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (b"\0" * 65536, b"\0"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


def leftovers(sweep: Path) -> list:
    """Temp files of a write (core/jobdir.atomic_write) or of a writability test left in the sweep."""
    return [*sweep.rglob("*.tmp"), *sweep.rglob(".infersweep-write-test-*")]


def test_a_disk_that_fills_mid_sweep_stops_it_in_one_line_and_resume_carries_on(tmp_path, small_disk, cache_dir):
    sweep = small_disk / "sweep"
    args = ["-m", "batch_size=1,2", *QUICK, f"hydra.sweep.dir={sweep}"]
    first = sweep / "0" / "result.json"
    with Runner(args, cache_dir, tmp_path) as runner:
        runner.wait_for("job 0's result", first.exists)
        kept = stamp(first)
        filler = fill(small_disk)  # while job 1 starts
        rc = runner.wait(120)
        stderr = runner.stderr
    assert rc == 74, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and last.endswith(
        ": No space left on device (ENOSPC): the sweep stopped; finished results are kept; free space (or make it "
        "writable) and run the same command again to resume"), stderr[-3000:]
    assert "Traceback" not in stderr
    assert stamp(first) == kept and not (sweep / "1" / "result.json").exists()
    assert leftovers(sweep) == [] and processes_of(sweep) == []

    filler.unlink()
    proc = run_runner(args, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[kept from an earlier run]") == 1
    assert stamp(first) == kept
    assert [r["status"] for r in results(sweep)] == ["ok", "ok"]
    assert leftovers(sweep) == []


def refused(args: list, cache: Path, what: str, why: str, **kwargs) -> None:
    """The runner exits 2 before any launch, its last line naming `what` (key=path) and why it cannot write."""
    proc = run_runner(args, cache, **kwargs)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {what}: not writable ({why}) {ALLOWED}"


def remount_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)


def test_a_full_or_read_only_sweep_directory_stops_the_sweep_before_any_launch(tmp_path, small_disk, cache_dir):
    sweep = small_disk / "sweep"
    args = ["-m", "batch_size=1,2", *QUICK, f"hydra.sweep.dir={sweep}"]
    filler = fill(small_disk)
    refused(args, cache_dir, f"hydra.sweep.dir={sweep}", "No space left on device")

    filler.unlink()
    remount_read_only(small_disk)
    refused(args, cache_dir, f"hydra.sweep.dir={sweep}", "Read-only file system")
    assert not list(small_disk.rglob("job.json")) and leftovers(sweep) == []


def test_a_single_run_into_a_full_or_read_only_directory_stops_before_any_launch(tmp_path, small_disk, cache_dir):
    """Without -m, Hydra's own first write into hydra.run.dir came first and ended in its traceback (exit 1)."""
    run_dir = small_disk / "run"
    filler = fill(small_disk)
    refused([*QUICK, f"hydra.run.dir={run_dir}"], cache_dir, f"hydra.run.dir={run_dir}", "No space left on device")

    filler.unlink()
    remount_read_only(small_disk)
    other = small_disk / "other"
    refused([*QUICK, f"hydra.run.dir={other}"], cache_dir, f"hydra.run.dir={other}", "Read-only file system")
    assert not list(small_disk.rglob("job.json")) and leftovers(small_disk) == []


def test_a_full_or_read_only_cache_stops_the_sweep_before_any_launch(tmp_path, small_disk):
    """The cache (INFERSWEEP_CACHE) has no checkpoint yet: the runner would build one there before the launch."""
    sweep = tmp_path / "sweep"
    args = ["-m", "batch_size=1,2", *QUICK, f"hydra.sweep.dir={sweep}"]
    history = tmp_path / "history.sqlite"
    filler = fill(small_disk)
    refused(args, small_disk, f"INFERSWEEP_CACHE={small_disk}", "No space left on device", history=history)

    filler.unlink()
    remount_read_only(small_disk)
    refused(args, small_disk, f"INFERSWEEP_CACHE={small_disk}", "Read-only file system", history=history)
    assert not list(sweep.rglob("job.json")) and list(small_disk.iterdir()) == []


def test_a_cache_that_fills_mid_sweep_stops_it_in_one_line_and_resume_carries_on(tmp_path, small_disk):
    """Each seed is a checkpoint of its own: job 1's build meets the disk that filled after job 0 measured."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", *QUICK, f"hydra.sweep.dir={sweep}"]
    history = {"INFERSWEEP_HISTORY": str(tmp_path / "history.sqlite")}
    first = sweep / "0" / "result.json"
    with Runner(args, small_disk, tmp_path, env_extra=history) as runner:
        runner.wait_for("job 0's result", first.exists)
        kept = stamp(first)
        filler = fill(small_disk)  # while job 1 starts
        rc = runner.wait(120)
        stderr = runner.stderr
    assert rc == 74, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {small_disk / 'models'}/bloom-tiny-") and last.endswith(
        f"-seed1{STOPPED}"), stderr[-3000:]
    assert "Traceback" not in stderr
    assert stamp(first) == kept and not (sweep / "1" / "result.json").exists()
    # job 0's checkpoint alone: the builder removed its partial copy of job 1's, the write test its file
    built = [p.name for p in (small_disk / "models").iterdir()]
    assert len(built) == 1 and built[0].endswith("-seed0"), built
    assert leftovers(sweep) == leftovers(small_disk) == [] and processes_of(sweep) == []

    filler.unlink()
    proc = run_runner(args, small_disk, env_extra=history)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[kept from an earlier run]") == 1
    assert stamp(first) == kept
    assert [r["status"] for r in results(sweep)] == ["ok", "ok"]


def test_a_history_that_fills_mid_sweep_stops_it_in_one_line_and_resume_appends_it(tmp_path, small_disk, cache_dir):
    """The history (INFERSWEEP_HISTORY) is written once, when the sweep ends: SQLite's `disk I/O error` was a
    warning of Hydra's, and the runner exited 0 with the sweep missing from the history."""
    sweep, history = tmp_path / "sweep", small_disk / "history.sqlite"
    args = ["-m", "batch_size=1", *QUICK, f"hydra.sweep.dir={sweep}"]
    env = {"INFERSWEEP_HISTORY": str(history)}
    result = sweep / "0" / "result.json"
    with Runner(args, cache_dir, tmp_path, env_extra=env) as runner:
        runner.wait_for("job 0's worker", (sweep / "0" / "phases").exists)  # the history was checked before it
        filler = fill(small_disk)
        rc = runner.wait(120)
        stderr = runner.stderr
    assert rc == 74, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == f"error: cannot write {history}{STOPPED}", stderr[-3000:]
    assert "Traceback" not in stderr and "UserWarning" not in stderr
    kept = stamp(result)
    assert results(sweep)[0]["status"] == "ok"

    filler.unlink()
    proc = run_runner(args, cache_dir, history=history)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[kept from an earlier run]") == 1 and stamp(result) == kept
    with sqlite3.connect(history) as db:
        assert db.execute("SELECT run_id, statuses FROM sweeps").fetchall() == [(results(sweep)[0]["run_id"], "1 ok")]


def test_a_full_history_that_another_process_holds_open_stops_the_sweep_before_any_launch(tmp_path, small_disk,
                                                                                           cache_dir):
    """Held open (its WAL there), the history took SQLite's rolled-back test write on a full disk: the sweep
    ran, and its append at the end failed."""
    history = small_disk / "history.sqlite"
    reader = connect(history)
    try:
        reader.execute("SELECT COUNT(*) FROM sweeps").fetchone()
        fill(small_disk)
        proc = run_runner(["-m", "batch_size=1", *QUICK, f"hydra.sweep.dir={tmp_path / 'sweep'}"], cache_dir,
                          history=history)
    finally:
        reader.close()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: INFERSWEEP_HISTORY={history}: not writable (No space left on device)")
    assert not list((tmp_path / "sweep").rglob("job.json"))
