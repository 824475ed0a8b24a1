"""A candidate sweep against a baseline, point by point: ratios, a noise-aware verdict, a Markdown table.

Jobs match on their config (less the keys that do not change what is measured, and keys that only one
side's config has) and their hardware. A matched pair of `ok` jobs is decided over the per-repeat
ms/token: a regression needs the ratio of the medians (candidate / baseline) to be at least
1 + min_effect and the 95% confidence interval of the ratio (Welch's t-test on the log times) to lie
above 1; an improvement, at most 1 - min_effect with the interval below 1. Welch's interval stays
honest with the default 3 repeats, where a bootstrap interval is the range of the repeats (too narrow)
and Mann-Whitney U over 3 and 3 can never reach p < 0.05. A job that was `ok` and no longer is is a
regression; the reverse an improvement. Load time is one sample per job: its ratio is shown, never decides.
"""
import json

import numpy as np
import pandas as pd
from scipy import stats

from analysis.tables import row_labels

IGNORED = ("config.timeout_s", "config.cache_dir", "config.repeats")
IGNORED_GROUPS = ("config.cluster.",)  # where a job ran (partition, account, hostfile, ...), not what it measured
VERDICTS = ("regressed", "improved", "unchanged", "new", "missing")


def shared_config(frames: list[pd.DataFrame]) -> list[str]:
    """The config columns every one of the sweeps has: a key added to the config later is not compared."""
    have = [{c for c in df if c.startswith("config.") and c not in IGNORED
             and not c.startswith(IGNORED_GROUPS) and df[c].notna().any()} for df in frames]
    return sorted(set.intersection(*have))


def point_keys(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """What identifies a point across sweeps: its config `columns` (those it lacks left out) and hardware."""
    return df[columns + ["hardware"]].apply(
        lambda r: json.dumps({k: v for k, v in r.items() if pd.notna(v)}, default=str), axis=1)


def point_labels(df: pd.DataFrame) -> pd.Series:
    """The seed table's row label plus the batch size: "accelerate bf16 bs=8"."""
    return row_labels(df) + " bs=" + df["config.batch_size"].astype(str)


def repeat_ms(job: pd.Series) -> np.ndarray:
    """ms per token of each timed repeat (the median of these is the job's ms_per_token)."""
    streams = job.get("streams", 1)
    streams = 1 if pd.isna(streams) else streams
    tokens = job["config.batch_size"] * job["config.new_tokens"] * streams
    return np.asarray(job["generate_s"], dtype=float) * 1000 / tokens


def ratio_ci(base: np.ndarray, cand: np.ndarray, confidence: float) -> tuple[float, float]:
    """Confidence interval of the ratio cand / base from Welch's t-test on the log times (timings are
    skewed; their logs are close to normal): that of the ratio of geometric means. NaN with fewer than
    2 repeats a side."""
    if min(len(base), len(cand)) < 2:
        return np.nan, np.nan
    test = stats.ttest_ind(np.log(cand), np.log(base), equal_var=False)
    low, high = np.exp(test.confidence_interval(confidence))
    return low, high


def _shown(job: pd.Series) -> object:
    """What a table shows for a job: its median ms/token if it ran, else its status."""
    return float(np.median(repeat_ms(job))) if job["status"] == "ok" else job["status"]


def _decide(b: pd.Series, c: pd.Series, min_effect: float, confidence: float) -> dict:
    row = {"baseline": _shown(b), "candidate": _shown(c), "ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "load_ratio": np.nan}
    if b["status"] != "ok" or c["status"] != "ok":
        verdict = ("regressed" if b["status"] == "ok" else "improved" if c["status"] == "ok" else "unchanged")
        return {**row, "verdict": verdict}
    base, cand = repeat_ms(b), repeat_ms(c)
    low, high = ratio_ci(base, cand, confidence)
    ratio = row["candidate"] / row["baseline"]
    verdict = ("regressed" if low > 1 and ratio >= 1 + min_effect else
               "improved" if high < 1 and ratio <= 1 - min_effect else "unchanged")
    return {**row, "ratio": ratio, "ci_low": low, "ci_high": high, "load_ratio": c["load_s"] / b["load_s"],
            "verdict": verdict}


def compare(baseline: pd.DataFrame, candidate: pd.DataFrame, min_effect: float = 0.05,
            confidence: float = 0.95) -> pd.DataFrame:
    """One row per point of either sweep: key, point, baseline and candidate median ms/token (or status),
    ratio with its confidence interval, load_s ratio, and the verdict (one of VERDICTS)."""
    both = pd.concat([baseline.assign(side="baseline"), candidate.assign(side="candidate")], ignore_index=True)
    both = both.assign(key=point_keys(both, shared_config([baseline, candidate])), point=point_labels(both))
    sides = {side: jobs.drop_duplicates("key", keep="last").set_index("key")
             for side, jobs in both.groupby("side")}
    base, cand = sides.get("baseline", pd.DataFrame()), sides.get("candidate", pd.DataFrame())
    rows = []
    for key, point in both.drop_duplicates("key").set_index("key")["point"].items():
        if key not in base.index:
            row = {"candidate": _shown(cand.loc[key]), "verdict": "new"}
        elif key not in cand.index:
            row = {"baseline": _shown(base.loc[key]), "verdict": "missing"}
        else:
            row = _decide(base.loc[key], cand.loc[key], min_effect, confidence)
        rows.append({"key": key, "point": point, **row})
    columns = ["key", "point", "baseline", "candidate", "ratio", "ci_low", "ci_high", "load_ratio", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _cell(value: object, digits: int) -> str:
    if isinstance(value, str):
        return value
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def sweep_line(df: pd.DataFrame) -> str:
    """`run_id` (start time, hardware) of a sweep's results."""
    started = pd.to_datetime(df["timestamp"]).min().strftime("%Y-%m-%d %H:%M")
    return f"`{', '.join(df['run_id'].unique())}` ({started}, {', '.join(df['hardware'].dropna().unique())})"


def markdown(verdicts: pd.DataFrame, baseline: pd.DataFrame, candidate: pd.DataFrame, min_effect: float,
             confidence: float) -> str:
    """The verdict as Markdown, fit for a CI comment: a summary, the matched points, new and missing points."""
    counts = verdicts["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
    matched = verdicts[verdicts["verdict"].isin(VERDICTS[:3])]
    table = pd.DataFrame({
        "point": matched["point"],
        "baseline ms/token": matched["baseline"].map(lambda v: _cell(v, 3)),
        "candidate ms/token": matched["candidate"].map(lambda v: _cell(v, 3)),
        "ratio": matched["ratio"].map(lambda v: _cell(v, 3)),
        f"{confidence:.0%} CI": [f"{lo:.3f} to {hi:.3f}" if pd.notna(lo) else ""
                                 for lo, hi in zip(matched["ci_low"], matched["ci_high"])],
        "load_s ratio": matched["load_ratio"].map(lambda v: _cell(v, 2)),
        "verdict": matched["verdict"].map(lambda v: f"**{v}**" if v == "regressed" else v),
    })
    lines = [
        f"### Benchmark comparison: {'REGRESSION' if counts.get('regressed', 0) else 'no regression'}",
        "",
        f"candidate {sweep_line(candidate)} vs baseline {sweep_line(baseline)}",
        "",
        (f"{summary}. A point regressed when its median ms/token grew by at least {min_effect:.0%} and the "
         f"{confidence:.0%} confidence interval of the ratio (Welch's t-test over the per-repeat times) lies "
         "above 1, or when it was ok and no longer is."),
        "",
        table.to_markdown(index=False, disable_numparse=True) if len(table) else "No point in common.",
    ]
    for verdict, side, what in (("new", "candidate", "no baseline"), ("missing", "baseline", "not in candidate")):
        listed = verdicts[verdicts["verdict"] == verdict]
        if len(listed):
            lines += ["", f"**{verdict.capitalize()} points** ({what}):", ""]
            lines += [f"- {p}: {_cell(v, 3)}" for p, v in zip(listed["point"], listed[side])]
    return "\n".join(lines) + "\n"
