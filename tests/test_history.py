"""The history's schema version and migrations (analysis/history.py), on the committed fixture
tests/fixtures/history-8ff5182.sqlite: written by the code of 8ff5182 (schema version 0), 2 sweeps, 6 results.

Migration is in place: every test opens a copy of the fixture, never the fixture itself."""
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import history
from analysis.history import append_sweep, check_history, connect, sweep_results, sweeps
from analysis.results import frame

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "history-8ff5182.sqlite"


@pytest.fixture
def old_history(tmp_path) -> Path:
    """A copy of the fixture: schema version 0."""
    path = tmp_path / "history.sqlite"
    shutil.copyfile(FIXTURE, path)
    return path


def read(path: Path, sql: str) -> list[tuple]:
    """Rows of a query, read with sqlite3 directly (no migration)."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def user_version(path: Path) -> int:
    return read(path, "PRAGMA user_version")[0][0]


def columns(path: Path, table: str) -> list[str]:
    return [name for _, name, *_ in read(path, f"PRAGMA table_info({table})")]


RESULTS = "SELECT sweep, job, status, ms_per_token, load_s, result FROM results ORDER BY sweep, job"


def fake_sweep(path: Path, sweep_dir: Path, run_id: str, **env: str) -> Path:
    """A sweep directory of one job: the result of the history's first row, as a new run `run_id` started
    after the fixture's sweeps, its env updated with `env`."""
    result = json.loads(read(path, "SELECT result FROM results ORDER BY sweep, job LIMIT 1")[0][0])
    result.update(run_id=run_id, timestamp="2026-12-03T00:00:00+00:00")
    result["env"].update(env)
    (sweep_dir / "0").mkdir(parents=True)
    (sweep_dir / "0" / "result.json").write_text(json.dumps(result))
    return sweep_dir


def test_the_fixture_is_the_first_schema(old_history):
    assert user_version(old_history) == 0
    assert {"torch", "bitsandbytes"} <= set(columns(old_history, "sweeps"))
    assert read(old_history, "SELECT COUNT(*) FROM sweeps") == [(2,)]
    assert read(old_history, "SELECT COUNT(*) FROM results") == [(6,)]


def test_an_old_history_migrates_keeping_every_row(old_history):
    old_sweeps = read(old_history, "SELECT id, run_id, started, hardware, torch, transformers, jobs, statuses"
                                   " FROM sweeps ORDER BY id")
    old_results = read(old_history, RESULTS)
    expected = {run_id: frame([json.loads(r[5]) for r in old_results if r[0] == sweep_id])
                for sweep_id, run_id, *_ in old_sweeps}

    runs = sweeps(old_history)  # migrates

    assert user_version(old_history) == history.SCHEMA_VERSION == 1
    assert "versions" in columns(old_history, "sweeps") and "torch" not in columns(old_history, "sweeps")
    assert read(old_history, "PRAGMA integrity_check") == [("ok",)]
    assert read(old_history, RESULTS) == old_results  # every result row, its JSON byte for byte
    assert [tuple(r) for r in runs[["id", "run_id", "started", "hardware", "torch", "transformers", "jobs",
                                    "statuses"]].itertuples(index=False)] == old_sweeps
    assert list(runs["torch"]) == ["2.13.0+cpu"] * 2 and list(runs["bitsandbytes"]) == [None, None]
    assert json.loads(read(old_history, "SELECT versions FROM sweeps WHERE id = 1")[0][0]) == {
        "torch": "2.13.0+cpu", "transformers": "5.24.0", "accelerate": "1.16.0", "deepspeed": "0.19.8",
        "bitsandbytes": None}
    for run_id, df in expected.items():
        pd.testing.assert_frame_equal(sweep_results(old_history, run_id), df)
    assert len(sweep_results(old_history, old_sweeps[0][1])) == 4


def test_a_migrated_history_has_the_schema_of_a_new_one(old_history, tmp_path):
    new = tmp_path / "new" / "history.sqlite"
    connect(old_history).close()
    connect(new).close()
    assert user_version(new) == user_version(old_history) == history.SCHEMA_VERSION
    for table in ("sweeps", "results"):
        assert read(new, f"PRAGMA table_info({table})") == read(old_history, f"PRAGMA table_info({table})")
    objects = "SELECT type, name, tbl_name FROM sqlite_master ORDER BY type, name"
    assert read(new, objects) == read(old_history, objects)


def test_sweeps_lists_the_library_columns_in_place(old_history):
    runs = sweeps(old_history)
    assert list(runs.columns) == ["id", "run_id", "appended_at", "started", "sweep_dir", "hardware", "host", "gpu",
                                  *history.VERSIONS, "jobs", "statuses"]


def test_a_migrated_history_takes_an_append_and_a_new_library(old_history, tmp_path, monkeypatch):
    """sweep_summary reports the libraries of analysis.results.VERSIONS: one added there later (vllm) lands
    in the versions JSON and becomes a column of sweeps(), None for the sweeps from before."""
    import analysis.results

    monkeypatch.setattr(analysis.results, "VERSIONS", (*analysis.results.VERSIONS, "vllm"))
    sweep_dir = fake_sweep(old_history, tmp_path / "sweep3", "20261203-000000-abcdef", vllm="0.9")
    sweeps(old_history)  # migrated first, then appended to
    assert append_sweep(old_history, sweep_dir) == ["20261203-000000-abcdef"]

    runs = sweeps(old_history).set_index("run_id")
    assert list(runs["id"]) == [1, 2, 3]
    assert runs.loc["20261203-000000-abcdef", "vllm"] == "0.9"
    assert runs.loc["20261203-000000-abcdef", "torch"] == "2.13.0+cpu"
    assert list(runs["vllm"].iloc[:2]) == [None, None]
    assert list(sweeps(old_history).columns[-3:]) == ["vllm", "jobs", "statuses"]
    stored = json.loads(read(old_history, "SELECT versions FROM sweeps WHERE id = 3")[0][0])
    assert stored["vllm"] == "0.9" and stored["torch"] == "2.13.0+cpu"
    assert list(sweep_results(old_history, "20261203-000000-abcdef")["env.vllm"]) == ["0.9"]
    assert read(old_history, "SELECT COUNT(*) FROM results") == [(7,)]


def test_an_old_history_appended_to_directly_migrates_first(old_history, tmp_path):
    sweep_dir = fake_sweep(old_history, tmp_path / "sweep3", "20261203-000000-abcdef")
    assert append_sweep(old_history, sweep_dir) == ["20261203-000000-abcdef"]
    assert user_version(old_history) == history.SCHEMA_VERSION
    assert list(sweeps(old_history)["id"]) == [1, 2, 3]


OPEN = """
import sys, time
from pathlib import Path
from analysis.history import connect
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.write_text("")
while not go.exists():
    time.sleep(0.01)
db = connect(Path(sys.argv[1]))
print(db.execute("PRAGMA user_version").fetchone()[0], db.execute("SELECT COUNT(*) FROM sweeps").fetchone()[0])
db.close()
"""


def test_two_processes_opening_an_old_history_at_once(old_history, tmp_path):
    """Both processes start on version 0 while the test holds the write lock; released, one migrates and
    the other waits for it, then finds the newest version. Both succeed, every row is there."""
    old_results = read(old_history, RESULTS)
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(old_history), str(ready), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ready in readies]
    lock = sqlite3.connect(old_history, isolation_level=None)
    try:
        while not all(r.exists() for r in readies):
            time.sleep(0.01)
        lock.execute("BEGIN EXCLUSIVE")
        go.write_text("")
        time.sleep(0.5)  # both reach their own BEGIN EXCLUSIVE and wait on this one
        lock.execute("ROLLBACK")
    finally:
        lock.close()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    assert [out.split() for out, _ in outputs] == [[str(history.SCHEMA_VERSION), "2"]] * 2
    assert user_version(old_history) == history.SCHEMA_VERSION
    assert read(old_history, "PRAGMA integrity_check") == [("ok",)]
    assert read(old_history, "SELECT id FROM sweeps ORDER BY id") == [(1,), (2,)]
    assert read(old_history, RESULTS) == old_results
    assert read(old_history, "SELECT name FROM sqlite_master WHERE name LIKE 'sweeps_v%'") == []


def test_a_failed_migration_leaves_the_history_as_it_was(old_history, monkeypatch):
    def fails_at_the_end(db):
        history.v0_to_v1(db)
        raise RuntimeError("disk on fire")

    before = read(old_history, "SELECT * FROM sweeps ORDER BY id"), read(old_history, RESULTS)
    monkeypatch.setattr(history, "MIGRATIONS", [fails_at_the_end])
    with pytest.raises(RuntimeError, match="disk on fire"):
        connect(old_history)
    assert user_version(old_history) == 0
    assert (read(old_history, "SELECT * FROM sweeps ORDER BY id"), read(old_history, RESULTS)) == before
    monkeypatch.undo()
    assert list(sweeps(old_history)["id"]) == [1, 2]  # and it migrates on the next open


def test_a_newer_history_is_refused_in_one_line(old_history, monkeypatch):
    connect(old_history).close()
    db = sqlite3.connect(old_history)
    db.execute("PRAGMA user_version = 99")
    db.close()
    for read_it in (connect, sweeps):
        with pytest.raises(ValueError) as e:
            read_it(old_history)
        message = str(e.value)
        assert "\n" not in message
        assert str(old_history) in message and "99" in message and str(history.SCHEMA_VERSION) in message
        assert "upgrade infersweep" in message
    assert user_version(old_history) == 99  # not touched

    monkeypatch.setenv("INFERSWEEP_HISTORY", str(old_history))
    line = check_history(old_history)
    assert line is not None and line.startswith(f"INFERSWEEP_HISTORY={old_history}: ") and "99" in line


def test_a_new_history_is_created_at_the_newest_version(tmp_path):
    path = tmp_path / "a" / "b" / "history.sqlite"
    assert sweeps(path).empty
    assert user_version(path) == history.SCHEMA_VERSION
    assert "versions" in columns(path, "sweeps")


def test_check_history_passes_a_fresh_path_and_creates_it(tmp_path, monkeypatch):
    path = tmp_path / "new" / "history.sqlite"
    monkeypatch.setenv("INFERSWEEP_HISTORY", str(path))
    assert check_history(path) is None
    assert user_version(path) == history.SCHEMA_VERSION
    assert check_history(path) is None  # and again, on the history it created


def test_check_history_migrates_an_old_history(old_history):
    assert check_history(old_history) is None
    assert user_version(old_history) == history.SCHEMA_VERSION


@pytest.mark.parametrize("case", ["directory", "not sqlite", "under a file", "under a file, deeper"])
def test_check_history_names_what_is_wrong(tmp_path, monkeypatch, case):
    """Cases that fail as root too (the tests run as root: permission bits stop no write)."""
    garbage = b"not a database, just bytes\n" * 200
    if case == "directory":
        path = tmp_path / "history.sqlite"
        path.mkdir()
        why = "is a directory"
    elif case == "not sqlite":
        path = tmp_path / "history.sqlite"
        path.write_bytes(garbage)
        why = "file is not a database"
    else:
        (tmp_path / "somefile").write_text("")
        path = tmp_path / "somefile" / ("history.sqlite" if case == "under a file" else "sub/history.sqlite")
        why = f"{tmp_path / 'somefile'} is a file, not a directory"
    before = sorted(tmp_path.rglob("*"))

    monkeypatch.setenv("INFERSWEEP_HISTORY", str(path))
    line = check_history(path)
    assert line is not None and "\n" not in line
    assert line.startswith(f"INFERSWEEP_HISTORY={path}: ") and why in line
    assert sorted(tmp_path.rglob("*")) == before  # nothing created
    if case == "not sqlite":
        assert path.read_bytes() == garbage

    monkeypatch.delenv("INFERSWEEP_HISTORY")
    line = check_history(path)
    assert line is not None and str(path) in line and "INFERSWEEP_HISTORY" in line and why in line


def test_check_history_removes_a_file_it_created_when_failing(tmp_path, monkeypatch):
    path = tmp_path / "history.sqlite"
    monkeypatch.setattr(history, "SCHEMA", (*history.SCHEMA, "CREATE TABLE sweeps (id)"))  # fails: exists
    line = check_history(path)
    assert line is not None and "already exists" in line
    assert list(tmp_path.iterdir()) == []
