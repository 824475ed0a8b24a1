"""A metric over the history, per point, on one hardware: its step changes (change points), and a chart.

A point's series is its figure in every sweep on the hardware that measured it ok, oldest first. Steps
are found on the log figures by PELT (ruptures: the segmentation that minimises the squared deviations
from each segment's mean plus a penalty per change point), with

- a penalty of PENALTY x sigma^2 x ln(n), sigma the noise of the series from the differences of
  successive sweeps, the largest fifth left out (series_sigma). Simulated on 12 sweeps: a change point
  in fewer than 1 series in 100 of normal noise and in about 1 in 30 of the H200's recorded one-process
  figures drawn at random (heavy-tailed; 1 in 25 at 8 sweeps, 1 in 70 at 20); a 25% step in 5% noise
  found at the right sweep in 4 cases out of 5 in the middle, 1 out of 2 when held by the last 2
  sweeps; a 30% step in 2% noise always, a lone 2.5x outlier elsewhere in the series or not;
- no level of one sweep: the search runs on the series' running median of 3 (each figure with its two
  neighbours), which removes a lone outlier and keeps every level that holds for MIN_LEVEL sweeps or
  more, and PELT's segments are at least MIN_LEVEL sweeps long;
- only steps of at least min_effect (median of the level after / median of the level before).

So a step is confirmed by the second sweep at the new level: `trend` exits 1 when the newest sweep is in a
step to slower, one sweep after `compare` could first have flagged it.
"""
import itertools
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import ruptures
from scipy import special

from analysis import charts
from analysis.compare import SIGMA_FLOOR, BadInput, condition_changes, point_keys, point_labels, shared_config
from analysis.history import sweep_results, sweeps
from analysis.tables import row_labels
from core.jobdir import LIBRARIES

PENALTY = 9.0  # per change point, in sigma^2 ln(n): see the module's docstring for what it buys
TRIM = 0.2     # the fraction of the largest successive differences left out of the noise estimate
MIN_LEVEL = 2  # sweeps a level must hold to count
# What a results' env records that can explain a step: the project's revision, libraries, driver, GPU.
ENV_FIELDS = ("git_rev", *LIBRARIES, "cuda", "driver", "gpu_name")
HIGHER_IS_BETTER = ("tokens_per_s",)  # every other metric is a time: higher is slower


def trend_points(path: Path, hardware: str) -> pd.DataFrame:
    """Every job of every sweep on `hardware`, oldest sweep first, with its sweep number (0, 1, ...),
    sweep_label, key, row label and point label."""
    runs = sweeps(path)
    runs = runs[runs["hardware"] == hardware].reset_index(drop=True)
    frames = [sweep_results(path, run_id) for run_id in runs["run_id"]]
    labels = pd.to_datetime(runs["started"]).dt.strftime("%m-%d %H:%M") + "\n" + runs["run_id"].str[-6:]
    points = pd.concat([f.assign(sweep=i, sweep_label=labels[i]) for i, f in enumerate(frames) if not f.empty],
                       ignore_index=True)
    return points.assign(key=point_keys(points, shared_config(frames)), label=row_labels(points),
                         point=point_labels(points))


def running_median(x: np.ndarray) -> np.ndarray:
    """Each value replaced by the median of it and its two neighbours, and an end value (one neighbour) by
    that neighbour: a lone outlier goes, a level of 2 or more stays."""
    padded = np.pad(x, 1, mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 3), axis=1)


def _normal_pdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def series_sigma(logs: np.ndarray) -> float:
    """Noise of a log series from the absolute differences of successive values: their mean less the largest
    TRIM of them (a lone outlier makes two large differences, a step one), over what that trimmed mean is
    for normal noise of sigma 1 (the differences of which are normal of sigma sqrt 2); floored at
    SIGMA_FLOOR. Untrimmed, one outlier would hide a step; a median, blind to the rare far-off sweep that
    GPU noise has, would call that sweep's neighbours a step."""
    diffs = np.sort(np.abs(np.diff(logs)))
    keep = len(diffs) - int(TRIM * len(diffs))
    kept = keep / len(diffs)
    z = float(special.ndtri((1 + kept) / 2))  # |N(0, 1)| < z with probability `kept`
    normal = math.sqrt(2) * 2 * (_normal_pdf(0) - _normal_pdf(z)) / kept
    return max(float(diffs[:keep].mean()) / normal, SIGMA_FLOOR)


def level_ratios(values: np.ndarray, starts: list[int]) -> list[float]:
    """For each start of a level, the median of that level / the median of the level before it."""
    bounds = [0, *starts, len(values)]
    medians = [float(np.median(values[a:b])) for a, b in itertools.pairwise(bounds)]
    return [after / before for before, after in itertools.pairwise(medians)]


def _big_enough(values: np.ndarray, starts: list[int], min_effect: float) -> list[int]:
    """`starts` less the steps smaller than min_effect: the smallest is dropped first (its two levels merge),
    then the ratios are taken again."""
    while starts:
        sizes = [abs(math.log(r)) for r in level_ratios(values, starts)]
        smallest = int(np.argmin(sizes))
        if math.exp(sizes[smallest]) - 1 >= min_effect:
            break
        starts = starts[:smallest] + starts[smallest + 1:]
    return starts


def step_starts(values: np.ndarray, min_effect: float) -> list[int]:
    """Indices of the first value after each step change of a series of positive figures, oldest first."""
    if len(values) < 2 * MIN_LEVEL:
        return []
    logs = np.log(values)
    penalty = PENALTY * series_sigma(logs) ** 2 * math.log(len(logs))
    search = ruptures.Pelt(model="l2", min_size=MIN_LEVEL, jump=1).fit(running_median(logs).reshape(-1, 1))
    return _big_enough(values, search.predict(pen=penalty)[:-1], min_effect)


def env_changes(before: pd.Series, after: pd.Series) -> str:
    """What the env of two jobs says changed between them: "git_rev 8ff5182 -> 1a2b3c4; torch 2.4.0 -> 2.5.1"."""
    def value(job: pd.Series, name: str) -> str:
        v = job.get(f"env.{name}")
        return "none" if v is None or pd.isna(v) else str(v)

    changed = [f"{name} {value(before, name)} -> {value(after, name)}" for name in ENV_FIELDS
               if value(before, name) != value(after, name)]
    return "; ".join(changed) or "nothing recorded"


CHANGE_COLUMNS = ["key", "point", "sweep", "run_id", "before_run_id", "ratio", "slower", "changed", "conditions",
                  "current"]


def change_points(points: pd.DataFrame, metric: str, min_effect: float) -> pd.DataFrame:
    """One row per step of a point's series (CHANGE_COLUMNS): the first sweep after it (number and run_id),
    the sweep before, the ratio of the levels (after / before), whether it is to slower, what changed in the
    env, how the conditions differ (GPU clocks, throttling, host load: analysis.compare.condition_changes), and `current`: it is the point's last step and the point was measured in the newest sweep."""
    newest = points["sweep"].max()
    ok = points[(points["status"] == "ok") & (pd.to_numeric(points[metric], errors="coerce") > 0)]
    rows = []
    for key, series in ok.drop_duplicates(["sweep", "key"], keep="last").groupby("key", sort=False):
        series = series.sort_values("sweep").reset_index(drop=True)
        values = series[metric].to_numpy(float)
        starts = step_starts(values, min_effect)
        for n, (start, ratio) in enumerate(zip(starts, level_ratios(values, starts))):
            before, after = series.iloc[start - 1], series.iloc[start]
            rows.append({"key": key, "point": after["point"], "sweep": after["sweep"], "run_id": after["run_id"],
                         "before_run_id": before["run_id"], "ratio": ratio,
                         "slower": ratio < 1 if metric in HIGHER_IS_BETTER else ratio > 1,
                         "changed": env_changes(before, after),
                         "conditions": "; ".join(condition_changes(before, after, ("before", "after"))),
                         "current": n == len(starts) - 1 and series["sweep"].iloc[-1] == newest})
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


@dataclass
class Trend:
    """The change points of a metric over the history on one hardware, and the chart drawn of it."""
    hardware: str
    metric: str
    newest: str            # run_id of the newest sweep on the hardware
    changes: pd.DataFrame  # change_points
    charts: list[Path]

    @property
    def regression_now(self) -> bool:
        """Whether the newest sweep is in a step to slower of some point (its last step, still holding)."""
        return bool((self.changes["current"] & self.changes["slower"]).any())


def markdown(trend: Trend) -> str:
    """The change points as Markdown: a headline, then one row per step."""
    verdict = "REGRESSION" if trend.regression_now else "no regression"
    lines = [f"### Change points of {trend.metric} on {trend.hardware}: {verdict} (newest sweep `{trend.newest}`)",
             ""]
    if trend.changes.empty:
        return "\n".join(lines + ["No change point."]) + "\n"
    c = trend.changes
    table = pd.DataFrame({
        "point": c["point"],
        "first sweep after": "`" + c["run_id"] + "`",
        "sweep before": "`" + c["before_run_id"] + "`",
        "ratio after/before": c["ratio"].map(lambda r: f"{r:.3f}"),
        "step": [("**slower**" if s else "faster") + (", holds now" if now else "")
                 for s, now in zip(c["slower"], c["current"])],
        "what changed": c["changed"],
        "conditions": c["conditions"],
    })
    return "\n".join(lines + [table.to_markdown(index=False, disable_numparse=True)]) + "\n"


def write_trend(path: Path, out: Path, hardware: str | None = None, metric: str = "ms_per_token",
                min_effect: float = 0.05) -> Trend:
    """The change points of `metric` over the history on `hardware` (default: that of the newest sweep), and
    its chart (first sweep after each step marked) as PNG and SVG in `out`. BadInput where the history
    cannot be read or holds nothing to chart."""
    if not path.exists():
        raise BadInput(f"there is no history at {path}")
    try:
        runs = sweeps(path)
        if runs.empty:
            raise BadInput(f"the history {path} holds no sweep")
        hardware = hardware or runs["hardware"].iloc[-1]
        if hardware not in set(runs["hardware"]):
            raise BadInput(f"the history {path} holds no sweep on {hardware!r} "
                           f"(it has: {', '.join(map(str, runs['hardware'].dropna().unique()))})")
        points = trend_points(path, hardware)
    except sqlite3.Error as e:
        raise BadInput(f"history {path}: {e}") from e
    if metric not in points:
        raise BadInput(f"no result in the history {path} has a field {metric!r}")
    changes = change_points(points, metric, min_effect)
    first_after = dict(zip(zip(changes["key"], changes["sweep"]), np.where(changes["slower"], "slower", "faster")))
    points = points.assign(step=[first_after.get((k, s), "") for k, s in zip(points["key"], points["sweep"])])
    out.mkdir(parents=True, exist_ok=True)
    paths = charts.save(charts.trend_chart(points, metric, hardware), out / f"trend_{metric}")
    newest = runs.loc[runs["hardware"] == hardware, "run_id"].iloc[-1]
    return Trend(hardware, metric, newest, changes, paths)
