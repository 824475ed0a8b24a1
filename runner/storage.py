"""The storage a sweep writes (its sweep or run directory, the synthetic-checkpoint cache, the history):
checked before the first launch, and a write to it that fails mid-sweep (a full disk, a quota, a file system
gone read-only) stops the sweep in one line.

Every job file is written through core/jobdir.py's atomic_write, which removes its temp file when a write
fails, so a failed write leaves the file before it (or none) and nothing partial. The running job's
processes are ended on the way out (runner/launch.py::run_process ends its tree on any exception), the
job gets no result.json, and a resume, once there is space, runs it again.
"""
import contextlib
import errno
import sys
from collections.abc import Iterator
from pathlib import Path

from core.jobdir import STORAGE_ERRNOS, write_error

# EX_IOERR (sysexits.h): the sweep stopped mid-way because its storage could not be written.
STORAGE_FAILED = 74


def unwritable(directory: Path, key: str) -> str | None:
    """One line naming `key`=`directory` when no file can be written there (it cannot be created, it is on
    a read-only file system, or its disk is full), else None."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        error = write_error(Path(directory))
    except OSError as e:
        error = e
    if error is None:
        return None
    why = error.strerror or type(error).__name__
    return f"{key}={directory}: not writable ({why}) (allowed: a writable directory with free space)"


@contextlib.contextmanager
def stop_when_unwritable(sweep_dir: Path | str | None) -> Iterator[None]:
    """Turn a write that fails for lack of space or a read-only file system into one line on stderr and exit
    STORAGE_FAILED (a SystemExit passes through Hydra, which would record an Exception as a failed job and go
    on to the next one, failing the same way)."""
    try:
        yield
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        where = e.filename or sweep_dir
        sys.stderr.write(f"\nerror: cannot write {where}: {e.strerror} ({errno.errorcode[e.errno]}): the sweep "
                         "stopped; finished results are kept; free space (or make it writable) and run the same "
                         "command again to resume\n")
        raise SystemExit(STORAGE_FAILED) from None
