"""The sweep directory on a small file system of its own (a 2 MiB tmpfs, mounted by the test, which runs as
root), filled for real: a disk that fills mid-sweep, a full or read-only one before the first launch. The
synthetic-checkpoint cache stays elsewhere."""
import errno
import os
import subprocess
from pathlib import Path

import pytest
from conftest import results, run_runner
from test_faults import Runner, processes_of, stamp

QUICK = ["new_tokens=4", "repeats=1", "prompt_tokens=4"]


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


def test_a_full_or_read_only_sweep_directory_stops_the_sweep_before_any_launch(tmp_path, small_disk, cache_dir):
    sweep = small_disk / "sweep"
    args = ["-m", "batch_size=1,2", *QUICK, f"hydra.sweep.dir={sweep}"]
    allowed = "(allowed: a writable directory with free space)"
    filler = fill(small_disk)
    proc = run_runner(args, cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: hydra.sweep.dir={sweep}: not writable (No space left on device) {allowed}")

    filler.unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = run_runner(args, cache_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: hydra.sweep.dir={sweep}: not writable (Read-only file system) {allowed}")
    assert not list(small_disk.rglob("job.json")) and leftovers(sweep) == []
