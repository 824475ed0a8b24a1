"""The results history: every finished sweep, appended to one SQLite database (outputs/history.sqlite).

Append-only: rows are inserted, never updated or deleted. A sweep appended again (resumed in the same
directory, or added by hand) becomes a newer entry of the same run_id, and readers see the newest.
Each sweep goes in one transaction (WAL journal): two sweeps finishing at once both land, one after
the other, and a crash mid-append leaves the database as it was before that sweep.

Queryable with any SQLite client; `result` holds the result.json as stored, e.g.
    SELECT s.run_id, json_extract(r.result, '$.config.batch_size'), r.ms_per_token
    FROM results r JOIN latest s ON s.id = r.sweep WHERE r.status = 'ok';
"""
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis.results import frame, load_results, read_results, sweep_summary
from runner.result import RESULT_FILE

DEFAULT_PATH = "outputs/history.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    appended_at TEXT NOT NULL,
    started TEXT NOT NULL,      -- the earliest job timestamp: orders sweeps in time
    sweep_dir TEXT NOT NULL,
    hardware TEXT,              -- "<n>x <GPU name>", or "cpu@<host>" (analysis.results.hardware)
    host TEXT,
    gpu TEXT,
    torch TEXT,
    transformers TEXT,
    accelerate TEXT,
    deepspeed TEXT,
    bitsandbytes TEXT,
    jobs INTEGER NOT NULL,
    statuses TEXT NOT NULL      -- "3 ok, 1 oom"
);
CREATE TABLE IF NOT EXISTS results (
    sweep INTEGER NOT NULL REFERENCES sweeps(id),
    job INTEGER NOT NULL,
    status TEXT NOT NULL,
    ms_per_token REAL,
    load_s REAL,
    result TEXT NOT NULL        -- result.json, as stored
);
CREATE INDEX IF NOT EXISTS sweeps_run_id ON sweeps(run_id);
CREATE INDEX IF NOT EXISTS results_sweep ON results(sweep);
CREATE VIEW IF NOT EXISTS latest AS
    SELECT * FROM sweeps WHERE id IN (SELECT MAX(id) FROM sweeps GROUP BY run_id);
"""


def history_path() -> Path:
    """$INFERSWEEP_HISTORY, else outputs/history.sqlite under the current directory (next to Hydra's runs)."""
    return Path(os.environ.get("INFERSWEEP_HISTORY", DEFAULT_PATH))


def connect(path: Path) -> sqlite3.Connection:
    """The history database, created where there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)  # transactions are explicit below
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def append_sweep(path: Path, sweep_dir: Path) -> list[str]:
    """Append every run found under `sweep_dir` (normally one) to the history; returns their run_ids."""
    results = read_results([sweep_dir])
    summaries = sweep_summary(frame(results)).to_dict("records") if results else []
    appended_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    db = connect(path)
    try:
        for summary in summaries:
            row = {**summary, "appended_at": appended_at, "sweep_dir": str(Path(sweep_dir).resolve())}
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(f"INSERT INTO sweeps ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             list(row.values()))
            db.executemany(
                "INSERT INTO results (sweep, job, status, ms_per_token, load_s, result) VALUES (?, ?, ?, ?, ?, ?)",
                [(cur.lastrowid, r["job"], r["status"], r.get("ms_per_token"), r.get("load_s"), json.dumps(r))
                 for r in results if r["run_id"] == summary["run_id"]])
            db.execute("COMMIT")
    finally:
        db.close()
    return [s["run_id"] for s in summaries]


def sweeps(path: Path) -> pd.DataFrame:
    """The newest entry of every sweep in the history, oldest sweep first."""
    db = connect(path)
    try:
        return pd.read_sql_query("SELECT * FROM latest ORDER BY started, id", db)
    finally:
        db.close()


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
