"""A metric over the history, per job config, on one hardware; each sweep judged against the one before."""
import itertools
from pathlib import Path

import pandas as pd

from analysis import charts
from analysis.compare import compare, point_keys, point_labels, shared_config
from analysis.history import sweep_results, sweeps
from analysis.tables import row_labels


def trend_points(path: Path, hardware: str, min_effect: float, confidence: float) -> pd.DataFrame:
    """Every job of every sweep on `hardware`, oldest sweep first, with its sweep number (0, 1, ...),
    sweep_label, row label, point label and `regressed` (its verdict against the sweep before it)."""
    runs = sweeps(path)
    runs = runs[runs["hardware"] == hardware].reset_index(drop=True)
    frames = [sweep_results(path, run_id) for run_id in runs["run_id"]]
    regressed = [set()] + [set(v.loc[v["verdict"] == "regressed", "key"]) for v in
                           (compare(a, b, min_effect, confidence) for a, b in itertools.pairwise(frames))]
    labels = pd.to_datetime(runs["started"]).dt.strftime("%m-%d %H:%M") + "\n" + runs["run_id"].str[-6:]
    points = pd.concat([f.assign(sweep=i, sweep_label=labels[i]) for i, f in enumerate(frames)], ignore_index=True)
    points = points.assign(key=point_keys(points, shared_config(frames)), label=row_labels(points),
                           point=point_labels(points))
    return points.assign(regressed=[k in regressed[s] for k, s in zip(points["key"], points["sweep"])])


def write_trend(path: Path, out: Path, hardware: str | None = None, metric: str = "ms_per_token",
                min_effect: float = 0.05, confidence: float = 0.95) -> list[Path]:
    """Chart `metric` over the history on `hardware` (default: that of the newest sweep) as PNG and SVG."""
    runs = sweeps(path)
    if runs.empty:
        raise ValueError(f"the history {path} holds no sweep")
    hardware = hardware or runs["hardware"].iloc[-1]
    points = trend_points(path, hardware, min_effect, confidence)
    if points.empty:
        raise ValueError(f"the history {path} holds no sweep on {hardware}")
    out.mkdir(parents=True, exist_ok=True)
    return charts.save(charts.trend_chart(points, metric, hardware), out / f"trend_{metric}")
