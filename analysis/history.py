"""The results history: every finished sweep, appended to one SQLite database (outputs/history.sqlite).

Append-only: rows are inserted, never updated or deleted. A sweep appended again (resumed in the same
directory, or added by hand) becomes a newer entry of the same run_id, and readers see the newest.
Each sweep goes in one transaction (WAL journal): two sweeps finishing at once both land, one after
the other, and a crash mid-append leaves the database as it was before that sweep.

The schema has a version, SQLite's `PRAGMA user_version`: 0 is the first schema (one column per library
version on `sweeps`), 1 keeps the library versions as one JSON object, `sweeps.versions`. `connect`
migrates an older history in place (MIGRATIONS) and refuses a newer one.

Queryable with any SQLite client; `result` holds the result.json as stored, e.g.
    SELECT s.run_id, json_extract(s.versions, '$.torch'), json_extract(r.result, '$.config.batch_size'),
           r.ms_per_token
    FROM results r JOIN latest s ON s.id = r.sweep WHERE r.status = 'ok';
"""
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis.results import VERSIONS, frame, load_results, read_results, sweep_summary
from core.jobdir import RESULT_FILE, flat_key, storage_error, write_error

DEFAULT_PATH = "outputs/history.sqlite"

# The sweeps table of schema version 1. {name}: a migration builds it beside the old table, then renames it.
SWEEPS_V1 = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    appended_at TEXT NOT NULL,
    started TEXT NOT NULL,      -- the earliest job timestamp: orders sweeps in time
    sweep_dir TEXT NOT NULL,
    hardware TEXT,              -- "<n>x <GPU name>", or "cpu@<host>" (analysis.results.hardware)
    host TEXT,
    gpu TEXT,
    versions TEXT NOT NULL,     -- JSON object: library -> version, null where not installed
    jobs INTEGER NOT NULL,
    statuses TEXT NOT NULL      -- "3 ok, 1 oom"
)"""
RESULTS_V0 = """
CREATE TABLE results (
    sweep INTEGER NOT NULL REFERENCES sweeps(id),
    job INTEGER NOT NULL,
    status TEXT NOT NULL,
    ms_per_token REAL,
    load_s REAL,
    result TEXT NOT NULL        -- the result file, as stored
)"""
SWEEPS_INDEX_V0 = "CREATE INDEX sweeps_run_id ON sweeps(run_id)"
RESULTS_INDEX_V0 = "CREATE INDEX results_sweep ON results(sweep)"
LATEST_V0 = """
CREATE VIEW latest AS
    SELECT * FROM sweeps WHERE id IN (SELECT MAX(id) FROM sweeps GROUP BY run_id)"""

# The newest schema: what a new history is created with.
SCHEMA = (SWEEPS_V1.format(name="sweeps"), RESULTS_V0, SWEEPS_INDEX_V0, RESULTS_INDEX_V0, LATEST_V0)

# The fields of sweep_summary that are columns of sweeps; every other field it returns is a library version.
SWEEP_FIELDS = ("run_id", "started", "hardware", "host", "gpu", "jobs", "statuses")


def v0_to_v1(db: sqlite3.Connection) -> None:
    """Library versions: from one column each (torch, transformers, accelerate, deepspeed, bitsandbytes) to
    one JSON object. SQLite drops no column portably: build the new table, copy, drop the old, rename; the
    index and the view on sweeps go with the old table and are made again. Ids are copied: results.sweep
    still points to its sweep."""
    db.execute(SWEEPS_V1.format(name="sweeps_v1"))
    db.execute("""
        INSERT INTO sweeps_v1 (id, run_id, appended_at, started, sweep_dir, hardware, host, gpu, versions, jobs,
                               statuses)
        SELECT id, run_id, appended_at, started, sweep_dir, hardware, host, gpu,
               json_object('torch', torch, 'transformers', transformers, 'accelerate', accelerate,
                           'deepspeed', deepspeed, 'bitsandbytes', bitsandbytes),
               jobs, statuses
        FROM sweeps""")
    db.execute("DROP VIEW latest")
    db.execute("DROP TABLE sweeps")
    db.execute("ALTER TABLE sweeps_v1 RENAME TO sweeps")
    db.execute(SWEEPS_INDEX_V0)
    db.execute(LATEST_V0)


# MIGRATIONS[n] takes a history from schema version n to n + 1. A migration builds the schema of its own
# version (the *_V<n> definitions), not SCHEMA, so that the ones after it find what they expect.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [v0_to_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def history_path() -> Path:
    """$INFERSWEEP_HISTORY, else outputs/history.sqlite under the current directory (next to Hydra's runs)."""
    return Path(os.environ.get("INFERSWEEP_HISTORY", DEFAULT_PATH))


def connect(path: Path) -> sqlite3.Connection:
    """The history database at the newest schema version: created where there is none yet, migrated in
    place where it is older. A history newer than this code raises ValueError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)  # transactions are explicit below
    db.row_factory = sqlite3.Row
    try:
        db.execute("PRAGMA journal_mode=WAL")
        if schema_version(db) != SCHEMA_VERSION:
            upgrade(db, path)
    except BaseException:
        db.close()
        raise
    return db


def schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Create the schema in a new database, or migrate an old one, in one BEGIN EXCLUSIVE transaction. That
    is the lock: of processes opening the same old history at once, one migrates and the others wait, then
    read the newest version and do nothing. A failed migration rolls back to the history as it was."""
    db.execute("BEGIN EXCLUSIVE")
    try:
        version = schema_version(db)  # read again under the lock: another process may have migrated it
        if version > SCHEMA_VERSION:
            raise ValueError(f"the history {path} has schema version {version}, newer than {SCHEMA_VERSION}, the "
                             f"newest this infersweep knows: upgrade infersweep to use it")
        # version 0 is a new database, or one of the first schema, which has sweeps
        if version == 0 and not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sweeps'"
                                           ).fetchone():
            for statement in SCHEMA:
                db.execute(statement)
        else:
            for migrate in MIGRATIONS[version:]:
                migrate(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled it back itself (a full disk, an I/O error)
            db.execute("ROLLBACK")
        raise


def check_history(path: Path) -> str | None:
    """Pre-flight check before a sweep launches any job: None if the history at `path` can be opened
    (created, with its directory, where absent; migrated where old) and written, else one line naming
    the path and why not. A history file it created is removed again when the check fails."""
    env = os.environ.get("INFERSWEEP_HISTORY")
    name = (f"INFERSWEEP_HISTORY={path}" if env is not None and Path(env) == path
            else f"the history {path} (set INFERSWEEP_HISTORY to use another)")
    if path.is_dir():
        return f"{name}: is a directory, not a file"
    ancestor = next(p for p in path.parents if p.exists())  # Path(".") or "/" at the latest
    if not ancestor.is_dir():
        return f"{name}: {ancestor} is a file, not a directory"
    # A real write beside it: SQLite's own rolled-back write below reaches no disk where another process
    # holds the history open (its WAL already there), so a full disk would pass and fail the append at the end.
    error = write_error(ancestor)
    if error:
        return f"{name}: not writable ({error.strerror or type(error).__name__})"
    created = not path.exists()
    try:
        db = connect(path)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # a write, rolled back: the file is writable
            db.execute("ROLLBACK")
        finally:
            db.close()
    except ValueError as e:
        return f"{name}: {e}"
    except (OSError, sqlite3.Error) as e:
        if created:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                # best effort: a read-only file system refuses even the unlink of a missing file
                with contextlib.suppress(OSError):
                    leftover.unlink()
        return f"{name}: cannot be opened and written: {e}"
    return None


def append_sweep(path: Path, sweep_dir: Path) -> list[str]:
    """Append every run found under `sweep_dir` (normally one) to the history; returns their run_ids. Where
    the disk refused the write (full, a quota, read-only), raises that as an OSError naming the history
    (SQLite's errors carry no errno), so that the runner stops in one line; the append is then not made."""
    results = read_results([sweep_dir])
    summaries = sweep_summary(frame(results)).to_dict("records") if results else []
    try:
        _append(path, sweep_dir, summaries, results)
    except sqlite3.Error as e:
        refused = storage_error(path)
        if refused is None:
            raise
        raise refused from e
    return [s["run_id"] for s in summaries]


def _append(path: Path, sweep_dir: Path, summaries: list, results: list) -> None:
    """Each summary's sweep and its results, in one transaction each."""
    appended_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    db = connect(path)
    try:
        for summary in summaries:
            row = {**{k: summary[k] for k in SWEEP_FIELDS}, "appended_at": appended_at,
                   "sweep_dir": str(Path(sweep_dir).resolve())}
            # versions: SQLite's json_object over the (library, version) pairs of the other fields
            pairs = [x for library, version in summary.items() if library not in SWEEP_FIELDS
                     for x in (library, version)]
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(f"INSERT INTO sweeps ({', '.join(row)}, versions)"
                             f" VALUES ({', '.join('?' * len(row))}, json_object({', '.join('?' * len(pairs))}))",
                             [*row.values(), *pairs])
            db.executemany(
                "INSERT INTO results (sweep, job, status, ms_per_token, load_s, result) VALUES (?, ?, ?, ?, ?, ?)",
                [(cur.lastrowid, r["job"], r["status"], r.get("ms_per_token"), r.get("load_s"), json.dumps(r))
                 for r in results if r["run_id"] == summary["run_id"]])
            db.execute("COMMIT")
    finally:
        db.close()


def round_seconds(path: Path, configs: list[dict]) -> list[float | None]:
    """The median seconds one round of each config's measurement took in the history (a round's started to
    ended: the job's stack check, checkpoint, launch, load and generates; rounds refused as invalid, which
    launched nothing, left out), over the newest entry of every sweep, on any host; None where the history
    holds no round of it. Configs match as compare matches them (core.jobdir.flat_key, on the keys both have).
    Reads only: a missing history is an empty one, and the file is opened immutable (no lock, no journal
    files), so nothing is created, migrated or written. A history that cannot be read raises ValueError."""
    if not path.is_file():
        return [None] * len(configs)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    try:
        rows = db.execute("SELECT r.result FROM results r JOIN latest s ON s.id = r.sweep").fetchall()
    except sqlite3.Error as e:
        raise ValueError(f"the history {path}: cannot be read: {e}") from None
    finally:
        db.close()
    known: dict = {}  # (backend, dtype, batch size) -> [(flat measurement key, [seconds of each round])]
    for (text,) in rows:
        result = json.loads(text)
        seconds = [(datetime.fromisoformat(r["ended"]) - datetime.fromisoformat(r["started"])).total_seconds()
                   for r in result.get("rounds") or []
                   if r.get("status") != "invalid" and r.get("started") and r.get("ended")]
        if seconds:
            key = flat_key(result["config"])
            known.setdefault(_coarse(key), []).append((key, seconds))

    def median(config: dict) -> float | None:
        key = flat_key(config)
        found = [s for other, seconds in known.get(_coarse(key), [])
                 if all(key[k] == other[k] for k in set(key) & set(other)) for s in seconds]
        return float(pd.Series(found).median()) if found else None

    return [median(config) for config in configs]


def _coarse(key: dict) -> tuple:
    return tuple(str(key.get(k)) for k in ("backend.name", "dtype.name", "batch_size", "model.name"))


def sweeps(path: Path) -> pd.DataFrame:
    """The newest entry of every sweep in the history, oldest sweep first. The versions JSON becomes one
    column per library, in its place: analysis.results.VERSIONS first, then any other library found; None
    where a sweep has no version of it."""
    db = connect(path)
    try:
        runs = pd.read_sql_query("SELECT * FROM latest ORDER BY started, id", db)
    finally:
        db.close()
    versions = pd.DataFrame([json.loads(v) for v in runs["versions"]], index=runs.index)
    libraries = list(dict.fromkeys([*VERSIONS, *versions.columns]))
    versions = versions.reindex(columns=libraries).astype(object)
    columns = list(runs.columns)
    at = columns.index("versions")
    return runs.join(versions.where(versions.notna(), None))[columns[:at] + libraries + columns[at + 1:]]


def sweep_results(path: Path, run_id: str) -> pd.DataFrame:
    """The results of the newest entry of a sweep, as a DataFrame (see analysis.results.frame)."""
    db = connect(path)
    try:
        rows = db.execute("SELECT r.result FROM results r JOIN latest s ON s.id = r.sweep WHERE s.run_id = ?"
                          " ORDER BY r.job", (run_id,)).fetchall()
    finally:
        db.close()
    return frame([json.loads(row["result"]) for row in rows])


def load_sweep(path: Path, ref: str) -> pd.DataFrame:
    """A sweep's results by directory, or by run_id (or a unique start of one) from the history."""
    if Path(ref).is_dir():
        df = load_results([ref])
        if df.empty:
            raise ValueError(f"no {RESULT_FILE} under {ref}")
        return df
    ids = [run_id for run_id in sweeps(path)["run_id"] if run_id.startswith(ref)]
    if len(ids) != 1:
        raise ValueError(f"{ref!r} is no directory and matches {len(ids)} sweeps in the history {path}")
    return sweep_results(path, ids[0])


def previous_sweep(path: Path, candidate: pd.DataFrame) -> str | None:
    """The run_id of the latest sweep in the history that started before `candidate`, on its hardware."""
    me = sweep_summary(candidate).iloc[-1]
    runs = sweeps(path)
    earlier = runs[(runs["hardware"] == me["hardware"]) & (runs["started"] < me["started"])
                   & (runs["run_id"] != me["run_id"])]
    return earlier["run_id"].iloc[-1] if len(earlier) else None
