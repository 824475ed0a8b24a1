"""Where a sweep's time went: the phases of every worker run behind its results (core/phases.py), added up,
and the share outside load, warmup and measure (the overhead share)."""
import pandas as pd

from core.phases import PHASES, WORK, overhead_share, total


def job_runs(df: pd.DataFrame) -> list[dict]:
    """The phases_s of every job run behind the results `df`: each round's where a result has rounds
    (every round is a run of its own), else the result's own. Results from before phases were recorded
    add none."""
    runs = []
    for _, row in df.iterrows():
        rounds = row.get("rounds")
        per_round = [r["phases_s"] for r in rounds if r.get("phases_s")] if isinstance(rounds, list) else []
        own = {p: row[f"phases_s.{p}"] for p in PHASES if pd.notna(row.get(f"phases_s.{p}"))}
        runs += per_round or ([own] if own else [])
    return runs


def overhead_line(df: pd.DataFrame) -> str | None:
    """One line: the overhead share of the job runs' wall time and the seconds of each phase; None when no
    result records phases."""
    runs = job_runs(df)
    if not runs:
        return None
    phases = total(runs)
    share = overhead_share(phases)
    parts = ", ".join(f"{p} {s:.1f}" for p, s in phases.items())
    return (f"overhead: {share:.0%} of the {len(runs)} job run(s)' {sum(phases.values()):.1f} s outside "
            f"{', '.join(WORK)} (s: {parts})")


def phases_table(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds per phase over the job runs, with each phase's share of their wall time and whether it is
    work (load, warmup, measure) or overhead; empty when no result records phases."""
    phases = total(job_runs(df))
    wall = sum(phases.values())
    if not phases or wall <= 0:
        return pd.DataFrame()
    return pd.DataFrame({"phase": list(phases), "kind": ["work" if p in WORK else "overhead" for p in phases],
                         "seconds": [f"{s:.2f}" for s in phases.values()],
                         "share": [f"{s / wall:.1%}" for s in phases.values()]})
