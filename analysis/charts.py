"""Charts of a sweep and of the history. Figures are built without pyplot, so no display is ever needed.

The charts of a sweep take results with a `label` column (the row label, analysis.tables.row_labels,
computed once over every result of a report) and `colors` (label -> colour, from `colors`), so that a row
has the same colour in every chart and in the report's colour key. Each says what it plots and what its
figures include: the Chart records below hold the titles and axis labels they draw."""
import math
import textwrap
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

FAILED = ("oom", "error", "timeout")  # measured and failed; `invalid` jobs never ran and are not drawn

WIDTH = 8  # inches: 960 px at the 120 dpi `save` writes, the width of the report's column
CHAR_IN = 0.08  # width of a digit of a 10 pt tick label, in inches: how close two tick labels may sit
LEGEND_WRAP = 42  # characters of a row label per legend line
TICK_WRAP = 30  # characters of a row label per line on the load chart's y axis


@dataclass(frozen=True)
class Chart:
    """What a chart plots: its title (the report adds the group, "bloom-tiny, CPU"), its value axis (as drawn,
    broken into lines), and a caption saying what the figures include and exclude."""
    title: str
    axis: str
    caption: str


BATCH_AXIS = "batch size (log scale)"
MS_PER_TOKEN = Chart(
    "Latency: ms per generated token",
    "ms per token, log scale, lower is better\n(median of repeats; load, warm-up excluded)",
    "One generate's wall time (prefill of the batch and every decode step) / (batch size x new tokens), "
    "the median over the timed repeats (ZeRO: divided by the ranks, each of which generates its own batch). "
    "Excludes the model load (load_s) and the warm-up generate (warmup_s).")
TOKENS_PER_S = Chart(
    "Throughput: generated tokens per second",
    "tokens/s, log scale, higher is better\n(median of repeats; load, warm-up excluded)",
    "batch size x new tokens x streams / the median wall time of one timed generate (prefill included); "
    "excludes the model load (load_s) and the warm-up generate (warmup_s).")
GPU_MEMORY = Chart(
    "Peak GPU memory per device, GiB",
    "GiB allocated by torch\n(peak of the busiest GPU)",
    "The most memory torch allocated on any one GPU of the job (weights, KV cache and activations) during "
    "its warm-up, timed and prefill generates.")
HOST_MEMORY = Chart(
    "Peak host memory of the worker process, GiB",
    "GiB resident\n(peak of the worker process)",
    "The worker process's peak resident set (ru_maxrss), load included; it cannot be reset, so jobs that "
    "share a worker (isolate=false) show the peak of that worker's jobs so far.")
LOAD = Chart(
    "Model load time (load_s), seconds",
    "load_s, seconds: weights loaded, placed, engine initialised\n"
    "(bar: median, whisker: min to max; launch, imports, warm-up excluded)",
    "load_s: the model made ready to generate (weights loaded, placed on the devices, engine initialised). "
    "Excludes the launcher start, the imports, one-off checkpoint preparation and the warm-up generate "
    "(warmup_s). Median over the row's jobs that ended ok; jobs that share a worker (isolate=false) share its "
    "one load.")
SPEEDUP = Chart(
    "Speedup over the reference row",
    "speedup, higher is better\n(reference ms per token / the row's)",
    "The reference row's ms per token / each other row's, at the same batch size (ms per token as in the "
    "latency chart: load and warm-up excluded).")

COST = Chart(
    "Cost: USD per million generated tokens",
    "USD per million tokens, log scale, lower is better\n(price per device-hour; load, warm-up excluded)",
    "The price of one device-hour (a GPU; on the CPU a node) / 3600 x the devices the job held / its "
    "tokens/s x 1e6: what a million generated tokens cost at the measured throughput (tokens/s as in the "
    "throughput chart: load and warm-up excluded). Jobs without a price are left out.")
PARETO = Chart(
    "Throughput per {device} against latency",
    "tokens/s per {device}, log scale, higher is better",
    "Every point that ended ok: its tokens/s / the {device}s it held (y) against the ms between two tokens of "
    "one sequence, the generate's wall time / new tokens (x); load and warm-up excluded. The Pareto front "
    "(no other point is both faster per token and higher in throughput per {device}) is the black line, "
    "its points ringed and labelled with their batch size; the table under the chart lists them.")
PARETO_X = "ms per token of one sequence, log scale, lower is better\n(generate wall time / new tokens)"


def colors(labels: Iterable[str]) -> dict[str, str]:
    """One colour per row label, in sorted order: matplotlib's ten standard colours, then their ten lighter
    tints; past twenty rows the colours repeat."""
    tab20 = colormaps["tab20"].colors
    palette = [to_hex(c) for c in (*tab20[0::2], *tab20[1::2])]
    return {label: palette[i % len(palette)] for i, label in enumerate(sorted(set(labels)))}


def drawn_colors(fig: Figure) -> dict[str, list[str]]:
    """label -> the colours the figure drew it in (lines, markers, bars), read back from its artists."""
    drawn: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                drawn.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
        for bars in ax.containers:
            if isinstance(bars, BarContainer) and not bars.get_label().startswith("_"):
                drawn.setdefault(bars.get_label(), set()).add(to_hex(bars.patches[0].get_facecolor()))
    return {label: sorted(c) for label, c in drawn.items()}


def chart_text(fig: Figure) -> dict[str, str]:
    """The title and the axis labels ("x", "y") the figure shows (the main axes: the last), each on one line;
    an axis without a label is left out."""
    ax = fig.axes[-1]
    texts = {"title": fig.get_suptitle(), "x": ax.get_xlabel(), "y": ax.get_ylabel()}
    return {k: " ".join(v.split()) for k, v in texts.items() if v}


def _figure(width: float = WIDTH, height: float = 5) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _collides(a: float, b: float, span: tuple[float, float], width_in: float) -> bool:
    """Whether tick labels at a and b (log axis over `span`, `width_in` inches long) would overlap."""
    distance = abs(math.log10(a / b)) / math.log10(span[1] / span[0]) * width_in
    return distance < CHAR_IN * (len(f"{a:g}") + len(f"{b:g}")) / 2 + 0.15


def _batch_axis(ax: Axes, sizes, width_in: float = WIDTH - 1.5) -> None:
    """A log x axis over the batch sizes measured, ticked and labelled at each of them and at every decade
    between (a decade's label is left out where it would overlap a batch size's; its tick and grid line
    stay)."""
    sizes = sorted({float(s) for s in sizes})
    span = (sizes[0] / 1.6, sizes[-1] * 1.6)
    decades = [10.0 ** e for e in range(math.ceil(math.log10(span[0])), math.floor(math.log10(span[1])) + 1)]
    ticks = sorted(set(sizes) | set(decades))
    labels = [f"{t:g}" if t in sizes or not any(_collides(t, s, span, width_in) for s in sizes) else ""
              for t in ticks]
    ax.set_xscale("log")
    ax.set_xlim(*span)
    ax.set_xticks(ticks, labels)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(BATCH_AXIS)


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis from lo to hi: every decade, plus 2 and 5 (then every multiple) of each decade
    where that is needed for at least four ticks; over less than a decade, round numbers in between."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in decades for m in subs if lo <= m * 10.0 ** e <= hi]
        if len(ticks) >= 4:
            return ticks
    linear = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
    return sorted(set(ticks) | {float(f"{t:.6g}") for t in linear if lo <= t <= hi})


def _figure_with_strip(failed: pd.DataFrame, width: float = WIDTH,
                       height: float = 5) -> tuple[Figure, Axes, Axes]:
    """A figure for a log-log chart, with a thin strip above it for the jobs that failed where there are any
    (the strip is None where there are none)."""
    if failed.empty:
        fig, ax = _figure(width, height)
        return fig, ax, None
    fig = Figure(figsize=(width, height), layout="constrained")
    strip, ax = fig.subplots(2, 1, sharex=True, height_ratios=[1, 7])
    return fig, ax, strip


def _mark_failures(strip: Axes, xs, texts, colors, labels=None) -> None:
    """A cross in the strip where a job ran out of memory (or failed, or timed out), with a text such as
    its status; the crosses of several jobs at one x are stacked. `labels`: the row label of each cross."""
    stacked = Counter()
    labels = [f"_{text}" for text in texts] if labels is None else labels
    for x, text, color, label in zip(xs, texts, colors, labels):
        strip.plot(x, stacked[x], "X", color=color, markersize=9, label=label)
        strip.annotate(text, (x, stacked[x]), xytext=(7, 0), textcoords="offset points", va="center",
                       fontsize=8, color=color)
        stacked[x] += 1
    strip.set_ylim(-0.7, max(stacked.values()) - 0.3)
    strip.set_yticks([])
    strip.set_ylabel("failed", rotation=0, ha="right", va="center")


def _log_y(ax: Axes, label: str) -> None:
    """A log y axis over the values drawn, ticked by `log_ticks` and written as plain numbers."""
    drawn = (pd.to_numeric(pd.Series(line.get_ydata()), errors="coerce") for line in ax.get_lines())
    values = [y for ys in drawn for y in ys if y > 0 and math.isfinite(y)]
    ax.set_yscale("log")
    if values:
        lo, hi = min(values), max(values)
        pad = max((hi / lo) ** 0.06, 1.15)
        ax.set_ylim(lo / pad, hi * pad)
        ticks = log_ticks(lo / pad, hi * pad)
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)


def _wrapped(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text


def _legend_layout(texts: list[str]) -> tuple[int, int]:
    """Columns and rows of a legend of `texts` (wrapped labels) set below a chart of WIDTH inches."""
    longest = max(len(line) for text in texts for line in text.split("\n"))
    ncols = max(1, min(len(texts), int(WIDTH // (0.6 + 0.075 * longest))))
    return ncols, math.ceil(len(texts) / ncols)


def _handle(label: str, color: str, **style) -> Line2D:
    """A legend entry for a row label (wrapped), drawn as a marked line unless `style` says otherwise."""
    return Line2D([], [], color=color, label=_wrapped(label, LEGEND_WRAP), **{"marker": "o", **style})


def _legend(fig: Figure, handles: list[Line2D]) -> None:
    """The legend below the axes, off the data."""
    ncols, _ = _legend_layout([h.get_label() for h in handles])
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)


def _height(labels: list[str]) -> float:
    """A chart's height in inches: 5 for the axes, and room for a legend of `labels` below them."""
    texts = [_wrapped(label, LEGEND_WRAP) for label in labels]
    _, rows = _legend_layout(texts)
    lines = max(text.count("\n") + 1 for text in texts)
    return 5 + 0.2 * rows * lines


def _measured(df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The jobs that ended ok with a value of `metric`, and those that ran and failed; jobs of a max search
    that found no batch size are left out (no x)."""
    df = df[pd.to_numeric(df["config.batch_size"], errors="coerce").notna()]
    ok = df[(df["status"] == "ok") & df.get(metric, pd.Series(index=df.index)).notna()]
    return ok, df[df["status"].isin(FAILED)]


def _batch_chart(df: pd.DataFrame, metric: str, chart: Chart, title: str, colors: dict[str, str],
                 log_y: bool = True) -> Figure | None:
    """`metric` against batch size, one line per row label; failed jobs crossed in a strip above. None where
    no job has the metric."""
    ok, failed = _measured(df, metric)
    if ok.empty:
        return None
    labels = sorted(set(ok["label"]) | set(failed["label"]))
    fig, ax, strip = _figure_with_strip(failed, height=_height(labels))
    for label, jobs in ok.sort_values("config.batch_size").groupby("label", sort=True):
        ax.plot(jobs["config.batch_size"].astype(float), jobs[metric], "o-", color=colors[label], label=label)
    if strip is not None:
        _mark_failures(strip, failed["config.batch_size"].astype(float), failed["status"],
                       failed["label"].map(colors), failed["label"])
    _batch_axis(ax, pd.concat([ok, failed])["config.batch_size"])
    if log_y:
        _log_y(ax, chart.axis)
    else:
        ax.set_ylim(0, ok[metric].max() * 1.12)
        ax.set_ylabel(chart.axis)
        ax.grid(True, alpha=0.4)
    fig.suptitle(f"{chart.title}: {title}")
    _legend(fig, [_handle(label, colors[label]) for label in labels])
    return fig


def ms_per_token_chart(df: pd.DataFrame, title: str, colors: dict[str, str]) -> Figure | None:
    """ms per token against batch size, log-log, one line per row; failed jobs marked above."""
    return _batch_chart(df, "ms_per_token", MS_PER_TOKEN, title, colors)


def tokens_per_s_chart(df: pd.DataFrame, title: str, colors: dict[str, str]) -> Figure | None:
    """Generated tokens per second against batch size, log-log, one line per row; failed jobs marked above."""
    return _batch_chart(df, "tokens_per_s", TOKENS_PER_S, title, colors)


def cost_chart(df: pd.DataFrame, title: str, colors: dict[str, str]) -> Figure | None:
    """USD per million generated tokens against batch size, log-log, one line per row; failed jobs marked
    above. None where no job has a cost (no price)."""
    return _batch_chart(df, "usd_per_mtok", COST, title, colors)


def pareto_chart(points: pd.DataFrame, title: str, device: str, colors: dict[str, str]) -> Figure | None:
    """tokens_per_s_per_device against stream_ms_per_token (analysis.efficiency), log-log, a marker per
    point in its row's colour; the points of the Pareto front (`front`: a bool column) joined by a black
    line, ringed and labelled "bs N". None where there is no point."""
    if points.empty:
        return None
    labels = sorted(set(points["label"]))
    fig, ax = _figure(WIDTH, _height(labels))
    for label, rows in points.groupby("label", sort=True):
        ax.plot(rows["stream_ms_per_token"], rows["tokens_per_s_per_device"], "o", color=colors[label],
                label=label, markersize=7)
    front = points[points["front"]].sort_values("stream_ms_per_token")
    ax.plot(front["stream_ms_per_token"], front["tokens_per_s_per_device"], "-", color="black", linewidth=1.2,
            label="_front", zorder=1)
    ax.plot(front["stream_ms_per_token"], front["tokens_per_s_per_device"], "o", markersize=13,
            markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.5, label="_front points")
    for _, point in front.iterrows():
        ax.annotate(f"bs {_text_size(point['config.batch_size'])}", (point["stream_ms_per_token"],
                    point["tokens_per_s_per_device"]), xytext=(10, 0), textcoords="offset points", fontsize=9,
                    va="center", color=colors[point["label"]], fontweight="bold")
    _log_x(ax, points["stream_ms_per_token"], PARETO_X)
    _log_y(ax, PARETO.axis.format(device=device))
    fig.suptitle(f"{PARETO.title.format(device=device)}: {title}")
    _legend(fig, [_handle(label, colors[label], linestyle="") for label in labels]
            + [Line2D([], [], color="black", marker="o", markersize=9, markerfacecolor="none",
                      label="Pareto front")])
    return fig


def _text_size(size) -> str:
    return f"{size:g}" if isinstance(size, float) else str(size)


def _log_x(ax: Axes, values: pd.Series, label: str) -> None:
    """A log x axis over `values`, ticked by `log_ticks` and written as plain numbers."""
    lo, hi = values.min(), values.max()
    pad = max((hi / lo) ** 0.08, 1.25)
    ax.set_xscale("log")
    ax.set_xlim(lo / pad, hi * pad)
    ticks = log_ticks(lo / pad, hi * pad)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def memory_kind(df: pd.DataFrame) -> Chart:
    """What peak_mem_gib is for these results: GPU memory where the jobs had a GPU, else host memory."""
    return GPU_MEMORY if df.get("env.gpu_name", pd.Series(index=df.index)).notna().any() else HOST_MEMORY


def memory_chart(df: pd.DataFrame, title: str, colors: dict[str, str]) -> Figure | None:
    """Peak memory (memory_kind) against batch size, linear from 0, one line per row; failed jobs marked
    above."""
    return _batch_chart(df, "peak_mem_gib", memory_kind(df), title, colors, log_y=False)


def load_chart(stats: pd.DataFrame, colors: dict[str, str]) -> Figure:
    """Horizontal bars of the median load time per row label (`stats`: analysis.tables.load_stats), whiskers
    from min to max, each bar in its row's colour; a row with no ok job shows its status."""
    stats = stats.iloc[::-1]  # the first row on top
    ticks = [_wrapped(label, TICK_WRAP) for label in stats.index]
    lines = sum(tick.count("\n") + 1 for tick in ticks)
    fig, ax = _figure(WIDTH, 1.6 + 0.28 * lines + 0.12 * len(stats))
    for y, (label, row) in enumerate(stats.iterrows()):
        if pd.isna(row["median"]):
            ax.text(0, y, f" {row['status']}", va="center", color="#b00")
            continue
        ax.barh(y, row["median"], xerr=[[row["median"] - row["min"]], [row["max"] - row["median"]]],
                color=colors[label], capsize=3, label=label)
        ax.text(row["max"], y, f"  {row['median']:.3g} s", va="center", fontsize=9)
    ax.set_yticks(range(len(stats)), ticks, fontsize=9)
    ax.set_ylim(-0.6, len(stats) - 0.4)
    longest = stats["max"].max()
    ax.set_xlim(0, longest * 1.25 if longest > 0 else 1)  # room for the median's text right of each whisker
    ax.set_xlabel(LOAD.axis)
    fig.suptitle(LOAD.title)
    ax.grid(True, axis="x", alpha=0.4)
    return fig


def reference_label(df: pd.DataFrame, reference: str | None) -> str | None:
    """The row label a speedup is measured against: `reference` itself, or the first label of that
    backend ("accelerate" -> "accelerate bf16"); by default the first label in sorted order."""
    labels = sorted(df["label"].unique())
    if reference is None:
        return labels[0] if labels else None
    return next((lab for lab in labels if lab == reference or lab.startswith(reference + " ")), None)


def speedup_chart(df: pd.DataFrame, title: str, reference: str, colors: dict[str, str]) -> Figure | None:
    """Reference ms per token / each other row's, per batch size, the reference a dashed line at 1 in its
    own colour; None where there is nothing to compare."""
    ok, _ = _measured(df, "ms_per_token")
    if ok.empty:
        return None
    table = ok.pivot_table(index="config.batch_size", columns="label", values="ms_per_token", aggfunc="last")
    if reference not in table or len(table.columns) < 2:
        return None
    others = [label for label in sorted(table.columns) if label != reference]
    fig, ax = _figure(WIDTH, _height([reference, *others]))
    for label in others:
        speedup = (table[reference] / table[label]).dropna()
        ax.plot(speedup.index.astype(float), speedup.values, "o-", color=colors[label], label=label)
    ax.axhline(1, color=colors[reference], linestyle="--", label=reference)
    _batch_axis(ax, table.index)
    ax.set_ylabel(SPEEDUP.axis)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"{SPEEDUP.title} ({reference}): {title}")
    _legend(fig, [_handle(f"{reference} (reference, 1x)", colors[reference], marker="", linestyle="--"),
                  *(_handle(label, colors[label]) for label in others)])
    return fig


def trend_chart(points: pd.DataFrame, metric: str, hardware: str) -> Figure:
    """A metric over the sweeps of the history, one line per job config; the first sweep after each step
    change ringed (red: to slower, green: to faster).

    `points`: one row per job and sweep, with columns sweep (0, 1, ... in time order), sweep_label,
    label (the row label), point (label and batch size), status, step ("slower", "faster" or "") and the metric."""
    points = points.sort_values(["label", "config.batch_size", "sweep"])
    colors = {point: f"C{i % 10}" for i, point in enumerate(points["point"].unique())}
    failed = points[points["status"].isin(FAILED)]
    fig, ax, strip = _figure_with_strip(failed, 10, 5.5)
    for point, rows in points[points["status"] == "ok"].groupby("point", sort=False):
        ax.plot(rows["sweep"], rows[metric], "o-", color=colors[point], label=point)
    for step, color in (("slower", "red"), ("faster", "green")):
        first = points[(points["step"] == step) & (points["status"] == "ok")]
        if len(first):
            ax.plot(first["sweep"], first[metric], "o", markersize=14, markerfacecolor="none",
                    markeredgecolor=color, markeredgewidth=2, label=f"first sweep after a step to {step}")
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
