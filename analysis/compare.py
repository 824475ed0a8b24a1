"""A candidate sweep against a baseline, point by point: ratios, a noise-aware verdict, a Markdown table.

Jobs match on their measurement key (core.jobdir: the config less the keys that do not change what is
measured, and less keys that only one side's config has) and their hardware. The unit of evidence is a
round: one worker process's median ms/token. Between processes the figure moves far more than between
the repeats inside one process, so repeats never enter the verdict. A result without `rounds` (written
before rounds existed) is one round, its ms_per_token.

The noise of a point (sigma: the standard deviation of the log of one round's figure) comes from

- the two sweeps' own rounds, where both sides have at least MIN_ROUNDS (Welch's interval on the log
  round figures);
- else the history: the spread of the point's figure over at least MIN_HISTORY earlier sweeps on the same
  hardware and software (the baseline's library versions, CUDA and driver), a MAD, robust to outliers;
- else none: the point is inconclusive unless the change is at least NO_NOISE_FACTOR-fold.

A point regressed when its ratio (median candidate rounds / median baseline rounds) is at least
1 + min_effect and the interval of the ratio lies above 1 (so the threshold is at least min_effect and
grows with the noise); improved, the mirror image. The intervals' confidence holds over all the points of
the compare judged on their noise together (Bonferroni), since the exit status is one decision over all of
them. Otherwise a point is unchanged where it could have seen a change of max_detectable (by default twice
min_effect) in 4 comparisons out of 5, and inconclusive where it could not; an inconclusive point says how
many rounds a side would decide it. A job that was `ok` and no longer is regressed; the reverse improved.
Load time is one sample per job: shown, never decides. docs/analysis.md gives the reasons and the numbers.
"""
import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from analysis.history import load_sweep, previous_sweep, sweep_results, sweeps
from analysis.results import frame, sweep_summary
from analysis.tables import row_labels
from core.jobdir import LIBRARIES, CorruptResult, measurement_key, read_result_file, result_files

VERDICTS = ("regressed", "improved", "unchanged", "inconclusive", "new", "missing")
MATCHED = VERDICTS[:4]

MIN_ROUNDS = 3         # rounds a side for the sweeps' own rounds to give the noise
MIN_HISTORY = 4        # earlier sweeps of a point for the history to give its noise
HISTORY_SWEEPS = 20    # the newest earlier sweeps on the hardware that the history noise is taken from
SIGMA_FLOOR = 0.01     # no timing is steadier than 1% between processes; keeps identical figures finite
# A MAD of n values is worth about 0.4 (n - 1) degrees of freedom of a standard deviation: with this a 95%
# history-based interval of an A/A pair covers 1 in 94.8-97.7% of draws for 4 to 40 sweeps (simulated on
# normal noise; n - 1 degrees of freedom would cover it in 87-94%).
MAD_DF_PER_SWEEP = 0.4
MAD_SIGMA = 1.4826     # MAD x this = sigma, for normal noise
POWER = 0.8            # "could have seen": would be flagged in 4 comparisons out of 5
NO_NOISE_FACTOR = 3.0  # with no noise estimate, only a change of 3x or more is taken as real
MAX_ROUNDS = 100       # beyond this many rounds a side, an inconclusive point is called undecidable
# What a job ran with, besides the hardware, that can change its noise: only sweeps that ran the same are
# the history of a point.
SOFTWARE = tuple(f"env.{name}" for name in (*LIBRARIES, "cuda", "driver"))


class BadInput(Exception):
    """An input compare or trend cannot use: an unknown sweep or run_id, an unreadable or invalid result
    file or history. The message names it in one line."""


# ---------------------------------------------------------------------------------------------------
# Points


def measured_columns(df: pd.DataFrame) -> list[str]:
    """The config columns that are part of the measurement key (core.jobdir.measurement_key)."""
    tops = {c.split(".")[1] for c in df if c.startswith("config.")}
    measured = measurement_key(dict.fromkeys(tops))
    return [c for c in df if c.startswith("config.") and c.split(".")[1] in measured]


def shared_config(frames: list[pd.DataFrame]) -> list[str]:
    """The measured config columns every one of the sweeps has: a key added to the config later is not compared."""
    have = [{c for c in measured_columns(df) if df[c].notna().any()} for df in frames]
    return sorted(set.intersection(*have))


def _json_key(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each row's values of `columns` (those it lacks left out) as one canonical string."""
    records = df.reindex(columns=columns).to_dict("records")
    return pd.Series([json.dumps({k: v for k, v in r.items() if pd.notna(v)}, default=str) for r in records],
                     index=df.index, dtype=object)


def point_keys(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """What identifies a point across sweeps: its config `columns` (those it lacks left out) and hardware."""
    return _json_key(df, columns + ["hardware"])


def point_labels(df: pd.DataFrame) -> pd.Series:
    """The seed table's row label plus the batch size: "accelerate bf16 bs=8"."""
    return row_labels(df) + " bs=" + df["config.batch_size"].astype(str)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def round_figures(job: Mapping) -> np.ndarray:
    """ms/token of each round of an ok job (a result or a row of a results frame). A result without a
    `rounds` list is one round, its ms_per_token. Raises ValueError for a malformed `rounds`."""
    rounds = job.get("rounds")
    if not isinstance(rounds, list):
        return np.array([float(job["ms_per_token"])])
    figures = [r.get("ms_per_token") if isinstance(r, dict) else None for r in rounds]
    if not figures or not all(_positive(f) for f in figures):
        raise ValueError(f"rounds={rounds!r} (expected a list of rounds, each with a positive ms_per_token)")
    return np.array(figures, dtype=float)


# ---------------------------------------------------------------------------------------------------
# Reading the sweeps (every problem is BadInput)


def read_sweep_dir(sweep_dir: Path) -> pd.DataFrame:
    """Every result under a sweep directory, validated: the first corrupt file is BadInput naming it."""
    results = []
    for path in result_files([sweep_dir]):
        try:
            data = read_result_file(path).to_dict()
            if data["status"] == "ok":
                round_figures(data)
        except CorruptResult as e:
            raise BadInput(str(e)) from e
        except ValueError as e:
            raise BadInput(f"corrupt result {path}: {e}") from e
        results.append(data)
    if not results:
        raise BadInput(f"no result file under {sweep_dir}")
    return frame(results)


def _check_history_rounds(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """`df` (results read from the history), after checking the rounds of its ok jobs."""
    if df.empty:
        return df
    for _, job in df[df["status"] == "ok"].iterrows():
        try:
            round_figures(job)
        except ValueError as e:
            raise BadInput(f"corrupt result of sweep {job['run_id']} job {job['job']} in {where}: {e}") from e
    return df


def read_sweep(history: Path, ref: str) -> pd.DataFrame:
    """A sweep's results by directory, or by run_id (or a unique start of one) from the history."""
    if Path(ref).is_dir():
        return read_sweep_dir(Path(ref))
    if not history.exists():
        raise BadInput(f"{ref!r} is no directory, and there is no history at {history}")
    try:
        return _check_history_rounds(load_sweep(history, ref), f"the history {history}")
    except ValueError as e:  # an unknown or ambiguous run_id
        raise BadInput(str(e)) from e
    except sqlite3.Error as e:
        raise BadInput(f"history {history}: {e}") from e


def baseline_of(history: Path, candidate: pd.DataFrame) -> str:
    """The run_id of the latest sweep in the history that started before `candidate` on its hardware."""
    try:
        found = previous_sweep(history, candidate) if history.exists() else None
    except sqlite3.Error as e:
        raise BadInput(f"history {history}: {e}") from e
    if found is None:
        raise BadInput(f"no earlier sweep on the same hardware in the history {history}; name a baseline")
    return found


def earlier_results(history: Path, candidate: pd.DataFrame) -> pd.DataFrame:
    """The results of the newest HISTORY_SWEEPS sweeps in the history that started before `candidate` on its
    hardware (not the candidate itself): where the noise of points with too few rounds comes from."""
    if not history.exists():
        return pd.DataFrame()
    me = sweep_summary(candidate).iloc[-1]
    try:
        runs = sweeps(history)
        earlier = runs[(runs["hardware"] == me["hardware"]) & (runs["started"] < me["started"])
                       & ~runs["run_id"].isin(candidate["run_id"])].tail(HISTORY_SWEEPS)
        frames = [sweep_results(history, run_id) for run_id in earlier["run_id"]]
    except sqlite3.Error as e:
        raise BadInput(f"history {history}: {e}") from e
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    return _check_history_rounds(pd.concat(frames, ignore_index=True), f"the history {history}")


# ---------------------------------------------------------------------------------------------------
# Noise and the verdict of one point


@dataclass
class Evidence:
    """What a matched pair of ok jobs tells: the log ratio of the geometric means of their rounds, its
    standard error and degrees of freedom, the noise of one round, where that came from, and the rounds of
    the side with fewer."""
    log_ratio: float
    se: float
    df: float
    sigma: float
    source: str
    fewest: int


def from_rounds(base: np.ndarray, cand: np.ndarray) -> Evidence | None:
    """Welch's t on the log round figures (variances floored at SIGMA_FLOOR); None with fewer than
    MIN_ROUNDS a side."""
    if min(len(base), len(cand)) < MIN_ROUNDS:
        return None
    lb, lc = np.log(base), np.log(cand)
    vb, vc = (max(np.var(x, ddof=1), SIGMA_FLOOR ** 2) for x in (lb, lc))
    wb, wc = vb / len(lb), vc / len(lc)
    df = (wb + wc) ** 2 / (wb ** 2 / (len(lb) - 1) + wc ** 2 / (len(lc) - 1))
    return Evidence(lc.mean() - lb.mean(), math.sqrt(wb + wc), df, math.sqrt((vb + vc) / 2),
                    f"rounds (n={len(base)}+{len(cand)})", min(len(base), len(cand)))


def history_sigma(figures: np.ndarray, rounds: np.ndarray) -> float:
    """Noise of one round from earlier sweeps' figures (each the median of `rounds` rounds): the MAD of the
    log figures as a sigma, floored, scaled up by sqrt(rounds) as if all the noise were between processes
    (the rest, shared by a sweep's rounds, is then overstated: conservative)."""
    logs = np.log(figures)
    sigma = MAD_SIGMA * np.median(np.abs(logs - np.median(logs)))
    return max(float(sigma), SIGMA_FLOOR) * math.sqrt(float(np.median(rounds)))


def from_history(base: np.ndarray, cand: np.ndarray, figures: np.ndarray, rounds: np.ndarray) -> Evidence | None:
    """The pair judged with the noise of earlier sweeps; None with fewer than MIN_HISTORY of them."""
    if len(figures) < MIN_HISTORY:
        return None
    sigma = history_sigma(figures, rounds)
    return Evidence(np.log(cand).mean() - np.log(base).mean(), sigma * math.sqrt(1 / len(base) + 1 / len(cand)),
                    MAD_DF_PER_SWEEP * (len(figures) - 1), sigma, f"history ({len(figures)} sweeps)",
                    min(len(base), len(cand)))


def _quantile(confidence: float, df: float | np.ndarray) -> float | np.ndarray:
    """The two-sided `confidence` quantile of Student's t with `df` degrees of freedom."""
    return special.stdtrit(df, (1 + confidence) / 2)


def detectable(se: float | np.ndarray, df: float | np.ndarray, confidence: float,
               min_effect: float) -> float | np.ndarray:
    """The smallest relative change the verdict flags with probability POWER, given the standard error of the
    log ratio: it needs the interval off 1 (z of the power added to the interval's quantile) and min_effect."""
    return np.maximum(min_effect, np.exp(se * (_quantile(confidence, df) + special.ndtri(POWER))) - 1)


def rounds_to_decide(sigma: float, confidence: float, min_effect: float, max_detectable: float,
                     more_than: int = 0) -> int | None:
    """Rounds a side (at least MIN_ROUNDS, and more than `more_than`, the rounds that did not decide it) with
    which a point of noise `sigma` could see max_detectable, judged on its own rounds (equal spread on both
    sides assumed); None where MAX_ROUNDS would not do."""
    n = np.arange(max(MIN_ROUNDS, more_than + 1), MAX_ROUNDS + 1)
    enough = n[detectable(sigma * np.sqrt(2 / n), 2 * n - 2, confidence, min_effect) <= max_detectable]
    return int(enough[0]) if len(enough) else None


def _judge(ratio: float, ev: Evidence | None, min_effect: float, confidence: float, max_detectable: float) -> dict:
    """The verdict of a matched ok pair from its ratio of medians and its evidence."""
    if ev is None:
        verdict = ("regressed" if ratio >= NO_NOISE_FACTOR else "improved" if ratio <= 1 / NO_NOISE_FACTOR
                   else "inconclusive")
        return {"verdict": verdict, "noise_source": "none", "detectable": NO_NOISE_FACTOR - 1}
    q = float(_quantile(confidence, ev.df))
    low, high = math.exp(ev.log_ratio - q * ev.se), math.exp(ev.log_ratio + q * ev.se)
    seen = float(detectable(ev.se, ev.df, confidence, min_effect))
    verdict = ("regressed" if low > 1 and ratio >= 1 + min_effect else
               "improved" if high < 1 and ratio <= 1 - min_effect else
               "unchanged" if seen <= max_detectable else "inconclusive")
    needed = (rounds_to_decide(ev.sigma, confidence, min_effect, max_detectable, ev.fewest)
              if verdict == "inconclusive" else None)
    return {"verdict": verdict, "ci_low": low, "ci_high": high, "noise": ev.sigma, "noise_source": ev.source,
            "detectable": seen, "rounds_needed": needed}


# ---------------------------------------------------------------------------------------------------
# The conditions a job ran under (its telemetry): differences that can explain a change of its figure

# (field, what, unit, relative change that is noted): a mean over the timed repeats.
CLOCKS = (("telemetry.gpu.sm_clock_mhz_mean", "SM clock", "MHz", 0.03),
          ("telemetry.gpu.mem_clock_mhz_mean", "memory clock", "MHz", 0.03),
          ("telemetry.host.cpu_freq_mhz_mean", "CPU clock", "MHz", 0.10))
OTHER_CPU_CHANGE = 0.10  # other processes' share of the machine's CPU, this far apart (0.02 -> 0.12)
NOT_THROTTLING = {"GpuIdle"}  # what NVML reports of a GPU waiting for work, not a limit on a busy one


def _value(job: Mapping, key: str) -> object:
    """A job's field (a results frame row's column, or a result's dotted key); None where it has none."""
    value = job.get(key)
    if isinstance(value, list):
        return value
    return None if value is None or pd.isna(value) else value


def condition_changes(before: Mapping, after: Mapping, sides: tuple = ("baseline", "candidate")) -> list[str]:
    """How the conditions of two jobs (results frame rows) differ: a GPU or CPU clock ("SM clock 1980 ->
    1755 MHz"), a throttle reason one side saw ("throttle: SwPowerCap in candidate"), the CPU share of
    other processes ("other CPU share 0.02 -> 0.41"). Empty where neither recorded telemetry."""
    notes = []
    for key, what, unit, change in CLOCKS:
        a, b = _value(before, key), _value(after, key)
        if a and b and abs(b / a - 1) >= change:
            notes.append(f"{what} {a:.0f} -> {b:.0f} {unit}")
    a, b = (set(_value(job, "telemetry.gpu.throttle_reasons") or []) - NOT_THROTTLING for job in (before, after))
    if b - a:
        notes.append(f"throttle: {', '.join(sorted(b - a))} in {sides[1]}")
    if a - b:
        notes.append(f"throttle: {', '.join(sorted(a - b))} in {sides[0]} only")
    a, b = (_value(job, "telemetry.host.other_cpu_share") for job in (before, after))
    if a is not None and b is not None and abs(b - a) >= OTHER_CPU_CHANGE:
        notes.append(f"other CPU share {a:.2f} -> {b:.2f}")
    return notes


def _shown(job: pd.Series) -> object:
    """What a table shows for a job: its median ms/token over rounds if it ran, else its status."""
    return float(np.median(round_figures(job))) if job["status"] == "ok" else job["status"]


def _pair(b: pd.Series, c: pd.Series, history: pd.DataFrame) -> tuple[dict, Evidence | None]:
    """A matched pair's table fields and, where both ran ok, its evidence (None where there is no noise
    estimate). A status change is decided here: ok to not ok regressed, the reverse improved."""
    row = {"baseline": _shown(b), "candidate": _shown(c), "conditions": "; ".join(condition_changes(b, c))}
    if b["status"] != "ok" or c["status"] != "ok":
        verdict = ("regressed" if b["status"] == "ok" else "improved" if c["status"] == "ok" else "unchanged")
        return {**row, "verdict": verdict}, None
    base, cand = round_figures(b), round_figures(c)
    ev = from_rounds(base, cand)
    if ev is None and len(history):
        ev = from_history(base, cand, history["figure"].to_numpy(float), history["rounds_done"].to_numpy(float))
    return {**row, "ratio": row["candidate"] / row["baseline"], "load_ratio": c["load_s"] / b["load_s"]}, ev


def each_confidence(confidence: float, judged: int) -> float:
    """The confidence of each of `judged` points' intervals such that, over all of them, a same-distribution
    compare flags none with probability at least `confidence` (Bonferroni): the exit status of a compare is one
    decision over all its points, and at 95% each, a sweep of 50 points would exit 1 on most A/A pairs."""
    return 1 - (1 - confidence) / max(judged, 1)


def _history_of_points(history: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The ok jobs of earlier sweeps with their point key, software, figure (median over rounds) and number of
    rounds, one per sweep and key."""
    if history.empty:
        return pd.DataFrame(columns=["key", "software", "figure", "rounds_done"])
    ok = history[history["status"] == "ok"]
    rounds = [round_figures(job) for _, job in ok.iterrows()]
    ok = ok.assign(key=point_keys(ok, columns), software=_json_key(ok, list(SOFTWARE)),
                   figure=[float(np.median(r)) for r in rounds], rounds_done=[len(r) for r in rounds])
    return ok.drop_duplicates(["run_id", "key"], keep="last")


COLUMNS = ["key", "point", "baseline", "candidate", "ratio", "ci_low", "ci_high", "noise", "noise_source",
           "detectable", "rounds_needed", "load_ratio", "verdict", "conditions"]


def compare(baseline: pd.DataFrame, candidate: pd.DataFrame, min_effect: float = 0.05, confidence: float = 0.95,
            history: pd.DataFrame | None = None, max_detectable: float | None = None) -> pd.DataFrame:
    """One row per point of either sweep (COLUMNS): key, point, baseline and candidate median ms/token over
    rounds (or status), ratio with its interval, noise (sigma of the log of one round) and its source,
    the smallest change it could have seen, rounds a side that would decide an inconclusive point, load_s
    ratio, the verdict (one of VERDICTS), and how the conditions of a matched pair differ (condition_changes). `history`: results of earlier sweeps (earlier_results), where
    the noise of points with too few rounds comes from. `confidence` holds over all the points judged with a
    noise estimate together (each_confidence). max_detectable: default twice min_effect."""
    max_detectable = 2 * min_effect if max_detectable is None else max_detectable
    columns = shared_config([baseline, candidate])
    both = pd.concat([baseline.assign(side="baseline"), candidate.assign(side="candidate")], ignore_index=True)
    both = both.assign(key=point_keys(both, columns), point=point_labels(both), software=_json_key(both, list(SOFTWARE)))
    sides = {side: jobs.drop_duplicates("key", keep="last").set_index("key") for side, jobs in both.groupby("side")}
    base, cand = sides.get("baseline", pd.DataFrame()), sides.get("candidate", pd.DataFrame())
    earlier = _history_of_points(history if history is not None else pd.DataFrame(), columns)
    rows, evidence = [], []
    for key, point in both.drop_duplicates("key").set_index("key")["point"].items():
        ev = None
        if key not in base.index:
            row = {"candidate": _shown(cand.loc[key]), "verdict": "new"}
        elif key not in cand.index:
            row = {"baseline": _shown(base.loc[key]), "verdict": "missing"}
        else:
            same = earlier[(earlier["key"] == key) & (earlier["software"] == base.loc[key, "software"])]
            row, ev = _pair(base.loc[key], cand.loc[key], same)
        rows.append({"key": key, "point": point, **row})
        evidence.append(ev)
    each = each_confidence(confidence, sum(ev is not None for ev in evidence))
    for row, ev in zip(rows, evidence):
        if "verdict" not in row:
            row.update(_judge(row["ratio"], ev, min_effect, each, max_detectable))
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------------------------------------------
# Markdown


def _cell(value: object, digits: int) -> str:
    if isinstance(value, str):
        return value
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def _noise_cell(row: pd.Series) -> str:
    """"12% rounds (n=3+3)", "9% history (7 sweeps)", "none"; blank for a status change."""
    if pd.isna(row["noise_source"]):
        return ""
    return row["noise_source"] if pd.isna(row["noise"]) else f"{row['noise']:.0%} {row['noise_source']}"


def _verdict_cell(row: pd.Series) -> str:
    """The verdict with what it could see: "unchanged; would have seen 12% or more"."""
    verdict, seen = row["verdict"], row["detectable"]
    if verdict == "regressed":
        return "**regressed**"
    if verdict == "improved" or pd.isna(seen):
        return verdict
    if verdict == "unchanged":
        return f"unchanged; would have seen {seen:.0%} or more"
    if row["noise_source"] == "none":
        return (f"inconclusive; no noise estimate, so only a {NO_NOISE_FACTOR:g}x change counts; "
                f"{MIN_ROUNDS} rounds a side (or {MIN_HISTORY} earlier sweeps in the history) would measure it")
    needed = row["rounds_needed"]
    decide = (f"{int(needed)} rounds a side would decide it" if pd.notna(needed)
              else f"more than {MAX_ROUNDS} rounds a side would be needed")
    return f"inconclusive; would see {seen:.0%} or more; {decide}"


def sweep_line(df: pd.DataFrame) -> str:
    """`run_id` (start time, hardware) of a sweep's results."""
    started = pd.to_datetime(df["timestamp"]).min().strftime("%Y-%m-%d %H:%M")
    return f"`{', '.join(df['run_id'].unique())}` ({started}, {', '.join(df['hardware'].dropna().unique())})"


def markdown(verdicts: pd.DataFrame, baseline: pd.DataFrame, candidate: pd.DataFrame, min_effect: float,
             confidence: float, max_detectable: float | None = None) -> str:
    """The verdict as Markdown, fit for a CI comment: a summary, the matched points, new and missing points."""
    max_detectable = 2 * min_effect if max_detectable is None else max_detectable
    counts = verdicts["verdict"].value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
    matched = verdicts[verdicts["verdict"].isin(MATCHED)]
    judged = int(verdicts["noise"].notna().sum())
    each = each_confidence(confidence, judged)
    table = pd.DataFrame({
        "point": matched["point"],
        "baseline ms/token": matched["baseline"].map(lambda v: _cell(v, 3)),
        "candidate ms/token": matched["candidate"].map(lambda v: _cell(v, 3)),
        "ratio": matched["ratio"].map(lambda v: _cell(v, 3)),
        f"CI ({each:.2%} each)": [f"{lo:.3f} to {hi:.3f}" if pd.notna(lo) else ""
                                 for lo, hi in zip(matched["ci_low"], matched["ci_high"])],
        "noise (one round)": [_noise_cell(r) for _, r in matched.iterrows()],
        "verdict": [_verdict_cell(r) for _, r in matched.iterrows()],
        "load_s ratio": matched["load_ratio"].map(lambda v: _cell(v, 2)),
    })
    lines = [
        f"### Benchmark comparison: {'REGRESSION' if counts.get('regressed', 0) else 'no regression'}",
        "",
        f"candidate {sweep_line(candidate)} vs baseline {sweep_line(baseline)}",
        "",
        (f"{summary}. A point regressed when its median ms/token over rounds grew by at least {min_effect:.0%} "
         f"and the interval of the ratio lies above 1 ({each:.2%} each, so that {confidence:.0%} holds over "
         f"the {judged} points judged on their noise together), or when it was ok and no longer is. The noise "
         f"is that of the rounds (one worker process each) where both sides have {MIN_ROUNDS} or more, else "
         f"the point's spread over {MIN_HISTORY}+ earlier sweeps with the same hardware and software. "
         f"Unchanged means it would have seen a change of {max_detectable:.0%}; inconclusive, that it could not."),
        "",
        table.to_markdown(index=False, disable_numparse=True) if len(table) else "No point in common.",
    ]
    differ = matched[matched["conditions"].fillna("") != ""]
    if len(differ):
        lines += ["", "**Conditions that differ** (GPU clocks, throttling, host load: they can explain a change):", ""]
        lines += [f"- {p}: {c}" for p, c in zip(differ["point"], differ["conditions"])]
    for verdict, side, what in (("new", "candidate", "no baseline"), ("missing", "baseline", "not in candidate")):
        listed = verdicts[verdicts["verdict"] == verdict]
        if len(listed):
            lines += ["", f"**{verdict.capitalize()} points** ({what}):", ""]
            lines += [f"- {p}: {_cell(v, 3)}" for p, v in zip(listed["point"], listed[side])]
    return "\n".join(lines) + "\n"
