"""Every result.json under some directories, as one flat pandas DataFrame (one row per job)."""
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from core.jobdir import (
    CORRUPT,
    LEASE_FILE,
    LIBRARIES,
    CorruptResult,
    next_attempt,
    read_attempt,
    read_result,
    read_result_file,
    result_files,
)


def read_results(dirs: Iterable[Path], corrupt: list | None = None) -> list[dict]:
    """Every result under `dirs`, as stored. A corrupt result file is left out: its CorruptResult (naming the
    file and the problem) is added to `corrupt` where one is given (the report shows it as a row), else
    reported on stderr."""
    results = []
    for path in result_files(list(dirs)):
        try:
            results.append(read_result_file(path).to_dict())
        except CorruptResult as e:
            if corrupt is None:
                print(f"skipping {e}", file=sys.stderr)
            else:
                corrupt.append(e)
    return results


def attempts_table(dirs: Sequence[Path]) -> pd.DataFrame:
    """Every attempt of every job under `dirs` that was launched (it took a lease), oldest first: the job
    (its directory, under its sweep's name where there are several sweeps), the attempt's number, status,
    reason and when it ended, and `current`: the attempt whose figures the job's result.json holds. An attempt
    that left no file had its runner stopped or killed during it (Ctrl-C, kill -9, a full disk)."""
    rows = []
    for sweep_dir in map(Path, dirs):
        leases = sorted(sweep_dir.rglob(LEASE_FILE),
                        key=lambda p: [int(x) if x.isdigit() else x for x in p.parent.relative_to(sweep_dir).parts])
        for lease in leases:
            job_dir = lease.parent
            job = str(job_dir.relative_to(sweep_dir))
            try:
                result = read_result(job_dir)
            except CorruptResult:
                result = None
            current = result.get("attempt") if result is not None else None
            for number in range(1, next_attempt(job_dir)):
                try:
                    attempt = read_attempt(job_dir, number)
                    status, reason, ended = (attempt.status, attempt.reason, attempt.timestamp) if attempt else (
                        "no result", "its runner was stopped or killed during it", "")
                except CorruptResult as e:
                    status, reason, ended = CORRUPT, str(e), ""
                rows.append({"job": f"{sweep_dir.name}/{job}" if len(dirs) > 1 else job, "attempt": number,
                             "status": status, "reason": reason, "ended": ended,
                             "current": "current" if number == current else ""})
    return pd.DataFrame(rows, columns=["job", "attempt", "status", "reason", "ended", "current"])


def frame(results: list[dict]) -> pd.DataFrame:
    """One row per result; nested keys flattened with dots (config.backend.name, env.gpu_name, ...),
    plus `hardware` (see `hardware`)."""
    if not results:
        return pd.DataFrame()
    df = pd.json_normalize(results)
    return searched_batch_sizes(df).assign(hardware=hardware(df))


def searched_batch_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """batch_size=max jobs take the batch size they measured (max_batch_size) as config.batch_size, so
    that they sit in the tables and charts beside the fixed sizes; `batch_search` marks them. A search that
    found nothing keeps "max"."""
    if "config.batch_size" not in df:
        return df
    searched = df["config.batch_size"].eq("max")
    df = df.assign(batch_search=searched)
    if "max_batch_size" in df:
        found = searched & df["max_batch_size"].fillna(0).gt(0)
        df["config.batch_size"] = df["config.batch_size"].astype(object)
        df.loc[found, "config.batch_size"] = df.loc[found, "max_batch_size"].astype(int)
    return df


def load_results(dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per result under `dirs` (see `frame`)."""
    return frame(read_results(dirs))


def hardware(df: pd.DataFrame) -> pd.Series:
    """What a job ran on: "<count>x <GPU name>" where it had a GPU, else "cpu@<hostname>".

    A job that never launched (invalid) has no env; it takes the hardware of the other jobs of its run.
    """
    none = pd.Series(None, index=df.index, dtype=object)
    gpus, counts, hosts = (df.get(f"env.{k}", none) for k in ("gpu_name", "gpu_count", "hostname"))
    hw = pd.Series([f"{int(n)}x {g}" if pd.notna(g) else f"cpu@{h}" if pd.notna(h) else None
                    for g, n, h in zip(gpus, counts, hosts)], index=df.index, dtype=object)
    return hw.fillna(df["run_id"].map(hw.dropna().groupby(df["run_id"]).first()))


VERSIONS = tuple(lib for lib in LIBRARIES if lib != "safetensors")


def sweep_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: run_id, started (earliest job timestamp), hardware (each kind its jobs ran on: a
    num_gpus=1,2 sweep reads "1x H100, 2x H100"), host, gpu, library versions, job count and statuses
    ("3 ok, 1 oom")."""
    def first(jobs: pd.DataFrame, col: str) -> object:
        values = jobs[col].dropna() if col in jobs else []
        return values.iloc[0] if len(values) else None

    return pd.DataFrame([
        {"run_id": run_id, "started": jobs["timestamp"].min(),
         "hardware": ", ".join(sorted(jobs["hardware"].dropna().unique())) or None,
         "host": first(jobs, "env.hostname"), "gpu": first(jobs, "env.gpu_name"),
         **{lib: first(jobs, f"env.{lib}") for lib in VERSIONS}, "jobs": len(jobs),
         "statuses": ", ".join(f"{n} {s}" for s, n in jobs["status"].value_counts().items())}
        for run_id, jobs in df.groupby("run_id", sort=False)])
