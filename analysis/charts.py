"""Charts of a sweep and of the history. Figures are built without pyplot, so no display is ever needed."""
from collections import Counter
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from analysis.tables import load_stats, row_labels

FAILED = ("oom", "error", "timeout")  # measured and failed; `invalid` jobs never ran and are not drawn
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def _figure(width: float = 8, height: float = 5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _batch_axis(ax: Axes, sizes) -> None:
    """A log x axis ticked at exactly the batch sizes measured, written as plain numbers."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(sizes))))
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch size")


def _figure_with_strip(failed: pd.DataFrame, width: float = 8, height: float = 5) -> tuple[Figure, Axes, Axes]:
    """A figure for a log-log chart, with a thin strip above it for the jobs that failed where there are any
    (the strip is None where there are none)."""
    if failed.empty:
        fig, ax = _figure(width, height)
        return fig, ax, None
    fig = Figure(figsize=(width, height), layout="constrained")
    strip, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 7])
    return fig, ax, strip


def _mark_failures(strip: Axes, xs, texts, colors) -> None:
    """A cross in the strip where a job ran out of memory (or failed, or timed out), with a text such as
    its status; the crosses of several jobs at one x are stacked."""
    stacked = Counter()
    for x, text, color in zip(xs, texts, colors):
        strip.plot(x, stacked[x], "X", color=color, markersize=9)
        strip.annotate(text, (x, stacked[x]), xytext=(7, 0), textcoords="offset points", va="center",
                       fontsize=8, color=color)
        stacked[x] += 1
    strip.set_ylim(-0.7, max(stacked.values()) - 0.3)
    strip.set_yticks([])
    strip.set_ylabel("failed", rotation=0, ha="right", va="center")


def _log_y(ax: Axes, label: str) -> None:
    """A log y axis ticked at 1, 2 and 5 times the powers of ten, written as plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)


def throughput_chart(df: pd.DataFrame, title: str) -> Figure | None:
    """ms per token against batch size, log-log, one line per backend+dtype; failed jobs marked above.
    None where no job ran (all invalid)."""
    if not df["status"].isin(("ok", *FAILED)).any():
        return None
    df = df.assign(label=row_labels(df))
    colors = {label: f"C{i % 10}" for i, label in enumerate(sorted(df["label"].unique()))}
    df = df[pd.to_numeric(df["config.batch_size"], errors="coerce").notna()]  # not a max search that found none
    failed = df[df["status"].isin(FAILED)]
    fig, ax, strip = _figure_with_strip(failed)
    for label, jobs in df[df["status"] == "ok"].sort_values("config.batch_size").groupby("label", sort=True):
        ax.plot(jobs["config.batch_size"], jobs["ms_per_token"], "o-", color=colors[label], label=label)
    if strip is not None:
        _mark_failures(strip, failed["config.batch_size"], failed["status"], failed["label"].map(colors))
    _batch_axis(ax, df["config.batch_size"])
    ax.margins(x=0.1)
    _log_y(ax, "ms per token (lower is better)")
    (strip or ax).set_title(f"Throughput: {title}")
    if ax.get_lines():
        ax.legend(title="backend dtype", fontsize=9)
    return fig


def load_chart(df: pd.DataFrame) -> Figure:
    """Horizontal bars of the median load time per backend+dtype, whiskers from min to max."""
    stats = load_stats(df).iloc[::-1]  # the first row on top
    fig, ax = _figure(8, 1.2 + 0.45 * len(stats))
    for y, row in enumerate(stats.itertuples()):
        if pd.isna(row.median):
            ax.text(0, y, f" {row.status}", va="center", color="C3")
            continue
        ax.barh(y, row.median, xerr=[[row.median - row.min], [row.max - row.median]], color="C0", capsize=3)
        ax.text(row.max, y, f"  {row.median:.1f} s", va="center", fontsize=9)
    ax.set_yticks(range(len(stats)), stats.index)
    ax.set_xlabel("seconds from launch to ready to generate (median, whiskers min to max)")
    ax.set_title("Model load time")
    ax.margins(x=0.15)
    return fig


def reference_label(df: pd.DataFrame, reference: str | None) -> str | None:
    """The row label a speedup is measured against: `reference` itself, or the first label of that
    backend ("accelerate" -> "accelerate bf16"); by default the first label in sorted order."""
    labels = sorted(row_labels(df).unique())
    if reference is None:
        return labels[0] if labels else None
    return next((lab for lab in labels if lab == reference or lab.startswith(reference + " ")), None)


def speedup_chart(df: pd.DataFrame, title: str, reference: str) -> Figure | None:
    """Reference ms per token / each other row's, per batch size; None where there is nothing to compare."""
    df = df.assign(label=row_labels(df))
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return None
    table = ok.pivot_table(index="config.batch_size", columns="label", values="ms_per_token", aggfunc="last")
    if reference not in table or len(table.columns) < 2:
        return None
    fig, ax = _figure()
    for i, label in enumerate(sorted(table.columns)):
        if label != reference:
            speedup = (table[reference] / table[label]).dropna()
            ax.plot(speedup.index, speedup.values, "o-", color=f"C{i}", label=label)
    ax.axhline(1, color="grey", linestyle="--", label=f"{reference} (reference)")
    _batch_axis(ax, table.index)
    ax.set_ylabel(f"speedup over {reference} (higher is better)")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_ylim(bottom=0)
    ax.set_title(f"Speedup: {title}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def trend_chart(points: pd.DataFrame, metric: str, hardware: str) -> Figure:
    """A metric over the sweeps of the history, one line per job config; regressions ringed in red.

    `points`: one row per job and sweep, with columns sweep (0, 1, ... in time order), sweep_label,
    label (the row label), point (label and batch size), status, regressed and the metric."""
    points = points.sort_values(["label", "config.batch_size", "sweep"])
    colors = {point: f"C{i % 10}" for i, point in enumerate(points["point"].unique())}
    failed = points[points["status"].isin(FAILED)]
    fig, ax, strip = _figure_with_strip(failed, 10, 5.5)
    for point, rows in points[points["status"] == "ok"].groupby("point", sort=False):
        ax.plot(rows["sweep"], rows[metric], "o-", color=colors[point], label=point)
    bad = points[points["regressed"] & (points["status"] == "ok")]
    ax.plot(bad["sweep"], bad[metric], "o", markersize=14, markerfacecolor="none", markeredgecolor="red",
            markeredgewidth=2, label="regressed vs previous sweep")
    if strip is not None:
        _mark_failures(strip, failed["sweep"], failed["status"] + " " + failed["point"], failed["point"].map(colors))
    sweeps = points.drop_duplicates("sweep").sort_values("sweep")
    ax.set_xticks(sweeps["sweep"], sweeps["sweep_label"], fontsize=8)
    ax.margins(x=0.08)
    _log_y(ax, metric)
    ax.set_xlabel("sweep (oldest first)")
    (strip or ax).set_title(f"{metric} over the history on {hardware}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def save(fig: Figure, stem: Path) -> list[Path]:
    """The figure as stem.png and stem.svg."""
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    return paths
