"""The report of one or many sweeps: the seed's tables (text, CSV, Markdown), charts (PNG, SVG), report.md and
one self-contained HTML page with the tables and the PNG charts embedded.

The page's sections come in the order a reader asks: what was run (the command, what varied and what stayed
fixed, the hardware, versions and measured ceilings, each row's colour), then the best row per batch size
(fastest, cheapest, most energy-efficient), latency (with the TTFT and inter-token percentiles), throughput
(with the Pareto front of throughput per device against latency), cost, power and clocks, load time, memory,
the roofline, and the jobs that did not end ok. Power and clocks comes right after cost: its energy per token
is the other running cost of a point, and its clocks, throttle reasons and the host's other processes say
whether the throughput and latency above were measured at full speed on a quiet machine (a power-capped
clock at the largest batch, a busy host on a shared CPU). Every number shown is read from the results."""
import base64
import html
import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from analysis import charts, efficiency
from analysis.compare import CONTENDED_SHARE
from analysis.overhead import overhead_line, phases_table
from analysis.results import attempts_table, sweep_summary
from analysis.tables import (
    groups,
    latency_table,
    load_stats,
    load_table,
    max_batch_table,
    no_gpu_telemetry,
    roofline_table,
    row_labels,
    seed_table,
    telemetry_table,
)
from core.jobdir import (
    ATTEMPTS_DIR,
    CORRUPT,
    LIBRARIES,
    LOG_FILE,
    RESULT_FILE,
    SWEEP_FILE,
    CorruptResult,
    option_text,
    read_sweep,
)

SECTIONS = ("What was run", "Best point per batch size", "Latency: ms per token",
            "Throughput: tokens per second", "Cost: USD per million tokens", "Power and clocks", "Load time",
            "Memory", "Roofline", "Jobs that did not end ok", "Attempts")
CORNER = "backend dtype \\ batch size"

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222;
       line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2.2em; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.6em; }
nav a { margin-right: 1em; white-space: nowrap; }
.scroll { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; } td:first-child { white-space: nowrap; }
td.failed { color: #b00; font-weight: 600; } table:not(.text) td { white-space: nowrap; }
table.text td, table.text th, td:has(.swatch) { text-align: left; }
/* headers and row labels wrap where a table is wider than the page, a short label on one line */
table th:has(.swatch), table td:has(.swatch) { white-space: normal; min-width: 10em; }
figure { margin: 1em 0 2.2em; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
p.keys code { white-space: nowrap; margin-right: 0.9em; line-height: 1.9; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; margin-right: 0.45em;
          vertical-align: -0.1em; }
p.note { color: #555; }
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class Page:
    """report.md and report.html as they are built, section by section, with every table and chart also
    written as files under `out`."""

    def __init__(self, out: Path, colors: dict[str, str]):
        self.out, self.colors = out, colors
        self.md: list[str] = ["# infersweep report"]
        self.html: list[str] = []

    def section(self, title: str) -> None:
        if self.html:
            self.html.append("</section>")
        self.md += ["", f"## {title}"]
        self.html.append(f"<section id='{_slug(title)}'><h2>{html.escape(title)}</h2>")

    def heading(self, text: str) -> None:
        self.md += ["", f"### {text}"]
        self.html.append(f"<h3>{html.escape(text)}</h3>")

    def note(self, text: str) -> None:
        self.md += ["", text]
        self.html.append(f"<p class='note'>{html.escape(text)}</p>")

    def raw(self, md: str, page: str) -> None:
        self.md += ["", md]
        self.html.append(page)

    def table(self, table: pd.DataFrame, index: bool = True, text: bool = False) -> None:
        """A table on the page only (no files)."""
        self.md += ["", table.to_markdown(index=index, disable_numparse=True)]
        self.html.append(self._html_table(table, index, text))

    def seed_table(self, table: pd.DataFrame, stem: str, corner: str = CORNER) -> None:
        """A table as stem.csv (as computed), stem.txt and stem.md (`corner` naming the rows), and on the
        page."""
        path = self.out / stem
        table.to_csv(path.with_suffix(".csv"))
        shown = table.rename_axis(index=None, columns=corner)  # the corner above the row labels
        path.with_suffix(".txt").write_text(shown.to_string() + "\n")
        md = table.rename_axis(index=corner, columns=None).to_markdown(disable_numparse=True)
        path.with_suffix(".md").write_text(md + "\n")
        self.md += ["", md]
        self.html.append(self._html_table(shown))

    def figure(self, fig: Figure | None, stem: str, caption: str) -> None:
        """A chart as stem.png and stem.svg, embedded with its title, axes and `caption` as text, and the
        colour it drew each row in (data-colors)."""
        if fig is None:
            return
        png, _ = charts.save(fig, self.out / stem)
        text = charts.chart_text(fig)
        data = base64.b64encode(png.read_bytes()).decode()
        axes = "; ".join(f"{axis}: {text[axis]}" for axis in ("x", "y") if axis in text) + "."
        self.md += ["", f"![{text['title']}]({stem}.png)", "", f"*{axes}* {caption}"]
        self.html.append(
            f"<figure data-chart='{stem}' data-colors='{html.escape(json.dumps(charts.drawn_colors(fig)))}'>"
            f"<img alt='{html.escape(text['title'])}' src='data:image/png;base64,{data}'>"
            f"<figcaption><b>{html.escape(text['title'])}.</b> {html.escape(axes)} {html.escape(caption)}"
            f"</figcaption></figure>")

    def _html_table(self, table: pd.DataFrame, index: bool = True, text: bool = False) -> str:
        """A table as HTML in a horizontally scrolling box: a cell holding a status word (no number) is shown
        as a failure, a row label carries its colour; numbers are right-aligned unless the table is `text`."""
        out = table.to_html(index=index, border=0, na_rep="", classes="text" if text else None)
        out = re.sub(r"<td>(oom|error|timeout|invalid)</td>", r'<td class="failed">\1</td>', out)
        for label, color in self.colors.items():
            swatch = f"<span class='swatch' style='background:{color}'></span>"
            cell = re.escape(html.escape(label, quote=False))
            out = re.sub(rf"<(th|td)>({cell})</\1>", rf"<\1>{swatch}\2</\1>", out)
        return f"<div class='scroll'>{out}</div>"

    def write(self, out: Path) -> Path:
        (out / "report.md").write_text("\n".join(self.md) + "\n")
        nav = " ".join(f"<a href='#{_slug(t)}'>{html.escape(t)}</a>" for t in SECTIONS)
        page = out / "report.html"
        page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
                        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                        f"<title>infersweep report</title><style>{STYLE}</style></head><body>"
                        f"<h1>infersweep report</h1><nav>{nav}</nav>{''.join(self.html)}</section>"
                        f"</body></html>\n")
        return page


# ---------------------------------------------------------------------------------------------------
# What was run


def _overrides(multirun: Path) -> list[str] | None:
    """The command-line overrides of a multirun (Hydra's multirun.yaml): the task's, then Hydra's own but
    the multirun mode that -m stands for; None where the file is missing or unreadable."""
    try:
        overrides = yaml.safe_load(multirun.read_text())["hydra"]["overrides"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    hydra = [o for o in overrides.get("hydra", []) if o != "hydra.mode=MULTIRUN"]
    return [*overrides.get("task", []), *hydra]


def sweep_commands(dirs: Sequence[Path]) -> dict[str, str]:
    """run_id -> the command that ran it, for every sweep directory (a folder holding sweep.json) under `dirs`
    whose multirun.yaml is there."""
    commands = {}
    for info in sorted(p for d in dirs for p in Path(d).rglob(SWEEP_FILE)):
        run_id, overrides = read_sweep(info.parent).get("run_id"), _overrides(info.parent / "multirun.yaml")
        if run_id and overrides is not None:
            commands[run_id] = "python -m runner -m " + " ".join(map(shlex.quote, overrides))
    return commands


def _sorted(values) -> list:
    """Numbers in numeric order, then words (batch_size=max where the search found nothing)."""
    return sorted(values, key=lambda v: (isinstance(v, str), 0 if isinstance(v, str) else v, str(v)))


def _text(value) -> str:
    """A value as labels show it; a whole number stored as a float (a column with gaps) without ".0"."""
    return f"{value:g}" if isinstance(value, float) and value.is_integer() else option_text(value)


def _values(column: pd.Series) -> list[str]:
    """The distinct values of a config column as labels show them (True and "true" alike), numbers in numeric
    order."""
    return list(dict.fromkeys(_text(v) for v in _sorted(column.dropna().unique())))


def config_spread(df: pd.DataFrame) -> tuple[dict[str, list[str]], dict[str, str], list[str]]:
    """The config keys (without "config.") that varied among the results, with their values; those that
    stayed fixed, with the value ("auto (in 9 of 18 jobs)" for a key only some jobs have, such as a backend's
    option); and those that were null in every result."""
    varied, fixed, unset = {}, {}, []
    for column in (c for c in df if c.startswith("config.")):
        key, values, present = column.removeprefix("config."), _values(df[column]), df[column].notna().sum()
        if len(values) > 1:
            varied[key] = values
        elif values:
            fixed[key] = values[0] + ("" if present == len(df) else f" (in {present} of {len(df)} jobs)")
        else:
            unset.append(key)
    return varied, fixed, unset


def _bytes(n: float) -> str:
    return f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def ceilings_text(row: pd.Series) -> dict[str, str]:
    """A result's measured ceilings (env.ceilings) in words; {} where it has none."""
    if pd.isna(row.get("env.ceilings.copy_gbps")):
        return {}
    c = {k.removeprefix("env.ceilings."): v for k, v in row.items() if k.startswith("env.ceilings.")}
    return {"copy bandwidth (measured)": f"{c['copy_gbps']:g} GB/s: a {_bytes(c['copy_bytes'])} copy on "
                                         f"{c['device']}, read + write",
            "matmul rate (measured)": f"{c['matmul_tflops']:g} TFLOP/s: a {c['matmul_n']:g}² "
                                      f"{c['matmul_dtype']} matmul",
            "ceilings measured": f"{c['measured_at']} by job {c['measured_by_job']:g}"}


ENV_ROWS = {"hardware": "hardware", "GPU memory (GiB)": "env.gpu_mem_gib", "driver": "env.driver",
            "CUDA": "env.cuda", "CPU": "env.cpu", "CPU cores": "env.cpu_count", "host": "env.hostname",
            "python": "env.python", **{lib: f"env.{lib}" for lib in LIBRARIES}, "git rev": "env.git_rev"}
CEILINGS = ("copy bandwidth (measured)", "matmul rate (measured)", "ceilings measured")


def environment_table(df: pd.DataFrame) -> pd.DataFrame:
    """Hardware, driver, library versions, git rev and measured ceilings, one column per sweep: the distinct
    values its jobs recorded (a sweep over stacks has several); rows no job recorded are left out."""
    def cell(values: pd.Series) -> str:
        return ", ".join(dict.fromkeys(_text(v) for v in values.dropna()))

    columns = {}
    for run_id, jobs in df.groupby("run_id", sort=False):
        column = {name: cell(jobs[key]) if key in jobs else "" for name, key in ENV_ROWS.items()}
        ceilings = [ceilings_text(row) for _, row in jobs.iterrows()]
        for name in CEILINGS:
            column[name] = cell(pd.Series([c.get(name) for c in ceilings], dtype=object))
        columns[run_id] = column
    table = pd.DataFrame(columns)
    return table[(table != "").any(axis=1)]


def _what_was_run(page: Page, df: pd.DataFrame, note: str, sweep_dirs: Sequence[Path]) -> None:
    page.section(SECTIONS[0])
    page.note(note)
    commands = sweep_commands(sweep_dirs)
    missing = "(not recorded: no multirun.yaml in its sweep directory)" if sweep_dirs else \
        "(not known: the report was given no sweep directory)"
    summary = sweep_summary(df)
    page.table(pd.DataFrame({"run_id": summary["run_id"],
                             "started": pd.to_datetime(summary["started"]).dt.strftime("%Y-%m-%d %H:%M"),
                             "command": [commands.get(run_id, missing) for run_id in summary["run_id"]],
                             "hardware": summary["hardware"], "jobs": summary["jobs"],
                             "statuses": summary["statuses"]}), index=False, text=True)

    varied, fixed, unset = config_spread(df)
    page.heading("What varied")
    page.table(pd.DataFrame({"key": list(varied), "values": [", ".join(v) for v in varied.values()]}),
               index=False, text=True)
    page.heading("What stayed fixed")
    items = [f"{k}={v}" for k, v in fixed.items()]
    page.raw(" ".join(f"`{i}`" for i in items),
             "<p class='keys'>" + " ".join(f"<code>{html.escape(i)}</code>" for i in items) + "</p>")
    if unset:
        page.note(f"null in every job: {', '.join(unset)}")

    page.heading("Hardware, versions and measured ceilings")
    environment = environment_table(df)
    if environment.empty:
        page.note("No job recorded its environment (none was launched).")
    else:
        page.table(environment, text=True)
    if environment.index.isin(CEILINGS).any():
        page.note("The ceilings are measured once per sweep (env.ceilings): the roofline's floor is the "
                  "bytes a decode step reads over the copy bandwidth, or its FLOPs over the matmul rate.")

    page.heading("Rows and their colours")
    page.note("A row is backend and dtype plus every measured key that varies (a backend option only where it "
              "takes effect); it keeps its colour in every chart and table below.")
    rows = df.groupby("label")["status"].agg(
        jobs="size", statuses=lambda s: ", ".join(f"{n} {st}" for st, n in s.value_counts().items()))
    page.table(rows.rename_axis(None), text=True)


# ---------------------------------------------------------------------------------------------------
# The measured sections


def _group_rows(table: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    """The rows of a table of all results that belong to one group (a label may head several rows), without
    its columns empty there."""
    rows = table[table.index.isin(set(part["label"]))]
    return rows.loc[:, (rows != "").any()]


def _number(job: pd.Series | None, key: str, digits: int) -> str:
    return "" if job is None or pd.isna(job[key]) else f"{job[key]:.{digits}f}"


def _best(measured: pd.DataFrame, key: str) -> pd.Series | None:
    """The job with the lowest `key` among `measured` (None where none has one)."""
    ranked = measured[measured[key].notna()].sort_values(key, kind="stable")
    return ranked.iloc[0] if len(ranked) else None


def usd_text(value: float) -> str:
    """USD per million tokens with three significant digits (1.10, 0.318), whole dollars from 100 on."""
    return f"{value:.0f}" if value >= 100 else f"{value:#.3g}" if value >= 0.001 else f"{value:.2e}"


def best_table(part: pd.DataFrame) -> pd.DataFrame:
    """Per batch size, among the jobs that ended ok: the fastest row (lowest ms per token), the cheapest
    (lowest USD per million tokens: "no price set" where no job has a cost) and the one that uses the least
    energy (lowest energy_j_per_token: "not measured" where no job has it); "none ended ok" with the
    statuses where no job did."""
    none = pd.Series(index=part.index, dtype=float)
    measured = part.assign(ms=part.get("ms_per_token", none), usd=part.get("usd_per_mtok", none),
                           energy=pd.to_numeric(part.get("energy_j_per_token", none), errors="coerce"))
    measured = measured[(part["status"] == "ok") & measured["ms"].notna()]
    rows = []
    for size in _sorted(part["config.batch_size"].unique()):
        jobs = measured[measured["config.batch_size"] == size]
        fastest, cheapest, frugal = _best(jobs, "ms"), _best(jobs, "usd"), _best(jobs, "energy")
        statuses = ", ".join(sorted(set(part.loc[part["config.batch_size"] == size, "status"])))
        ran = fastest is not None
        rows.append({"batch size": size,
                     "fastest": fastest["label"] if ran else f"none ended ok ({statuses})",
                     "ms/token": _number(fastest, "ms", 2),
                     "cheapest": cheapest["label"] if cheapest is not None else "no price set" if ran else "",
                     "USD/Mtok": "" if cheapest is None else usd_text(cheapest["usd"]),
                     "least energy": frugal["label"] if frugal is not None else "not measured" if ran else "",
                     "J/token": _number(frugal, "energy", 3)})
    return pd.DataFrame(rows).set_index("batch size").rename_axis(None)


def _best_points(page: Page, grouped: list) -> None:
    page.section(SECTIONS[1])
    page.note("Per batch size, among the jobs that ended ok: the fastest row (lowest ms per generated token, "
              "load and warm-up excluded), the cheapest (lowest USD per million generated tokens, under Cost) "
              "and the most energy-efficient (lowest energy_j_per_token, joules per generated token, where the "
              "results have it).")
    for title, part in grouped:
        page.heading(title)
        page.seed_table(best_table(part), f"best_{_slug(title)}", corner="batch size")


def _latency(page: Page, grouped: list, df: pd.DataFrame) -> None:
    page.section(SECTIONS[2])
    page.note("ms per generated token, lower is better: the median over the timed repeats, load and warm-up "
              "excluded (each chart's caption says how it is computed). Rows: backend and dtype (and what "
              "varies); columns: batch size; a job that did not end ok shows its status.")
    ms, ttft, latency = seed_table(df, "ms_per_token", 2), seed_table(df, "ttft_ms", 2), latency_table(df)
    for title, part in grouped:
        slug = _slug(title)
        page.heading(title)
        page.seed_table(_group_rows(ms, part), f"ms_per_token_{slug}")
        page.figure(charts.ms_per_token_chart(part, title, page.colors), f"ms_per_token_{slug}",
                    charts.MS_PER_TOKEN.caption)
        page.note("Time to first token (ttft_ms), ms: the prefill of the whole batch, a generate of one new "
                  "token over the prompts, median over the repeats; the warm-up excluded.")
        page.seed_table(_group_rows(ttft, part), f"ttft_{slug}")
        rows = _group_rows(latency, part)
        if rows.empty:
            page.note("No latency distribution: no job here ended ok with one (the results may predate it).")
            continue
        page.note("Latency distribution (latency), ms, of the jobs that ended ok: from separate latency passes "
                  "after the timed repeats, whose clock is read at every step. TTFT: from the call to the first "
                  "new token; inter-token: between two successive tokens (one decode step of the whole batch). "
                  "p50, p90 and p99 over every pass of the job: repeats first tokens and repeats x (new_tokens "
                  "- 1) steps (latency.samples), so a p99 of 3 first tokens is about their largest.")
        page.seed_table(rows, f"latency_{slug}", corner="row")


def _throughput(page: Page, grouped: list, df: pd.DataFrame, reference: str | None) -> None:
    page.section(SECTIONS[3])
    page.note("Generated tokens per second, higher is better: the median over the timed repeats, prefill "
              "included, load and warm-up excluded.")
    table = seed_table(df, "tokens_per_s", 1)
    for title, part in grouped:
        slug, ref = _slug(title), charts.reference_label(part, reference)
        page.heading(title)
        page.seed_table(_group_rows(table, part), f"throughput_{slug}")
        page.figure(charts.tokens_per_s_chart(part, title, page.colors), f"throughput_{slug}",
                    charts.TOKENS_PER_S.caption)
        page.figure(charts.speedup_chart(part, title, ref, page.colors) if ref else None, f"speedup_{slug}",
                    charts.SPEEDUP.caption)
    for title, device, points in pareto_groups(df):
        page.heading(f"Throughput per {device} against latency: {title}")
        page.figure(charts.pareto_chart(points, title, device, page.colors), f"pareto_{_slug(title)}",
                    charts.PARETO.caption.format(device=device))
        page.table(pareto_table(points, device), index=False)


def pareto_groups(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, device, points) per model and kind of device (GPU, or a node on the CPU): every job that ended
    ok with a throughput, whatever its GPU count, `front` marking the Pareto front of throughput per device
    (higher is better) against the ms per token of one sequence (lower is better)."""
    ok = df[(df["status"] == "ok") & df["tokens_per_s_per_device"].notna() & df["stream_ms_per_token"].gt(0)]
    found = []
    for (model, cpu), points in ok.groupby([ok["config.model.name"], efficiency.on_cpu(ok)], sort=True):
        front = efficiency.pareto_front(points, "stream_ms_per_token", "tokens_per_s_per_device")
        found.append((f"{model}, {'CPU' if cpu else 'GPUs'}", "node" if cpu else "GPU", points.assign(front=front)))
    return found


def pareto_table(points: pd.DataFrame, device: str) -> pd.DataFrame:
    """The points of the Pareto front, fastest sequence first: row, batch size, devices, ms per token of one
    sequence and tokens/s per device."""
    front = points[points["front"]].sort_values("stream_ms_per_token")
    return pd.DataFrame({"Pareto front: row": front["label"], "batch size": front["config.batch_size"].astype(str),
                         f"{device}s": efficiency.devices(front).map(lambda n: f"{n:g}"),
                         "ms per token of a sequence": front["stream_ms_per_token"].map(lambda v: f"{v:.2f}"),
                         f"tokens/s per {device}": front["tokens_per_s_per_device"].map(lambda v: f"{v:.1f}")})


def _cost(page: Page, grouped: list, df: pd.DataFrame) -> None:
    page.section(SECTIONS[4])
    page.note("USD per million generated tokens, lower is better: the price of one device-hour (a GPU, or a "
              "node for a CPU job; price_per_gpu_hour and price_per_cpu_node_hour in the sweep's config, or "
              "--price-per-gpu-hour and --price-per-cpu-node-hour of the report, which override it) / 3600 x "
              "the devices the job held / its tokens/s x 1e6.")
    priced = df[df["price_per_hour"].notna()]
    for price, jobs in priced.groupby("price_per_hour"):
        kinds = sorted({"CPU node" if c else "GPU" for c in efficiency.on_cpu(jobs)})
        page.note(f"{', '.join(kinds)}: {price:g} USD per hour ({len(jobs)} job(s)).")
    reasons = sorted(set(df["usd_per_mtok_reason"]) - {""})
    if reasons:
        page.note("No cost where a job ended ok but has none: " + "; ".join(reasons) + ".")
    cells = [usd_text(v) if pd.notna(v) else "no price" for v in df["usd_per_mtok"]]
    table = seed_table(df.assign(usd_cell=cells), "usd_cell")
    for title, part in grouped:
        slug = _slug(title)
        page.heading(title)
        page.seed_table(_group_rows(table, part), f"usd_per_mtok_{slug}")
        page.figure(charts.cost_chart(part, title, page.colors), f"usd_per_mtok_{slug}", charts.COST.caption)


def _power(page: Page, grouped: list, df: pd.DataFrame) -> None:
    page.section(SECTIONS[5])
    page.note("The conditions each job that ended ok was measured under, over its timed repeats (telemetry): "
              "J/token, the energy its GPUs drew (NVML's counter) per generated token, median over the "
              "repeats; the GPUs' power, SM clock and temperature, sampled every 20 ms; the clock-event "
              "(throttle) reasons NVML reported in any sample (SwPowerCap: clocks lowered to stay within the "
              "power limit; GpuIdle: the GPU waited for work); the CPU share of the host's other processes "
              f"({CONTENDED_SHARE:g} or more: compare calls the point inconclusive).")
    table = telemetry_table(df)
    for title, part in grouped:
        page.heading(title)
        reasons, rows = no_gpu_telemetry(part), _group_rows(table, part)
        if rows.empty:
            page.note("No job here ended ok.")
        if reasons:
            page.note("No GPU figures: " + "; ".join(reasons) + ".")
        if len(rows.columns) > 1:  # a figure besides the batch size
            page.seed_table(rows, f"telemetry_{_slug(title)}", corner="row")


def _load(page: Page, grouped: list, df: pd.DataFrame) -> None:
    page.section(SECTIONS[6])
    page.note("load_s, seconds: the model made ready to generate (weights loaded, placed, engine "
              "initialised); not the launcher start, the imports or the warm-up generate. Median, min and "
              "max over the jobs of each row that ended ok.")
    page.seed_table(load_table(df), "load_time", "backend dtype")
    page.figure(charts.load_chart(load_stats(df), page.colors), "load_time", charts.LOAD.caption)
    table = seed_table(df, "warmup_s", 2)
    for title, part in grouped:
        page.heading(f"Warm-up (warmup_s), seconds: {title}")
        page.note("Each job's first generate, which pays kernel JIT, graph capture and compilation; excluded "
                  "from load_s, ms per token and tokens/s.")
        page.seed_table(_group_rows(table, part), f"warmup_{_slug(title)}")


def _overhead(page: Page, df: pd.DataFrame) -> None:
    """Where the jobs' time went (analysis/overhead.py): a heading of the load-time section."""
    table = phases_table(df)
    if table.empty:
        return
    page.heading("Where the jobs' time went")
    page.note(overhead_line(df) + ". Each job run's wall time, from its hand-over to the runner to its result "
              "written, split into phases (docs/architecture.md, Metrics); the overhead share is the part outside "
              "load, warmup and measure.")
    page.table(table, index=False)


def _memory(page: Page, grouped: list, df: pd.DataFrame) -> None:
    page.section(SECTIONS[7])
    table = seed_table(df, "peak_mem_gib", 2)
    for title, part in grouped:
        slug, kind = _slug(title), charts.memory_kind(part)
        page.heading(title)
        page.note(f"{kind.title}, by batch size.")
        page.seed_table(_group_rows(table, part), f"peak_mem_{slug}")
        page.figure(charts.memory_chart(part, title, page.colors), f"peak_mem_{slug}", kind.caption)
    largest = max_batch_table(df)
    if not largest.empty:
        (page.out / "max_batch.md").write_text(largest.to_markdown(disable_numparse=True) + "\n")
        page.heading("Largest batch that fits (batch_size=max)")
        page.table(largest, text=True)


def _roofline(page: Page, grouped: list, df: pd.DataFrame) -> None:
    page.section(SECTIONS[8])
    table = roofline_table(df)
    if table.empty:
        page.note("No result holds a roofline (no job ended ok, or the results predate it).")
        return
    page.note("Fraction of the roofline floor: the floor of one decode step (the weights a rank holds and "
              "the KV cache read at the measured copy bandwidth, or 2 FLOP per parameter per token at the "
              "measured matmul rate, whichever is larger: the bound named) / the measured decode step "
              "(decode_ms_per_step: the generate less its prefill, per step); 1.00 is the hardware limit. "
              "The ceilings are under What was run.")
    for title, part in grouped:
        rows = _group_rows(table, part)
        if len(rows.columns):
            page.heading(f"Fraction of the roofline floor: {title}")
            page.seed_table(rows, f"roofline_{_slug(title)}")


def failures_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every job that did not end ok: its number (run_id/job where the report covers several sweeps), row,
    batch size, status, reason and log."""
    failed = df[df["status"] != "ok"].sort_values(["run_id", "job"])
    several = df["run_id"].nunique() > 1
    jobs = [f"{r}/{j}" if several else str(j) for r, j in zip(failed["run_id"], failed["job"])]
    return pd.DataFrame({"job": jobs, "row": failed["label"],
                         "batch size": failed["config.batch_size"].astype(str),
                         "status": failed["status"], "reason": failed["reason"], "log": failed["log"]})


def corrupt_table(corrupt: Sequence[CorruptResult]) -> pd.DataFrame:
    """A row per result file that could not be read (its job directory's name as the job, status `corrupt`,
    the reason naming the file and the problem, the job's log where it has one): in the table of the jobs
    that did not end ok, so that a broken file is seen instead of a job that silently went missing."""
    return pd.DataFrame({"job": [e.path.parent.name for e in corrupt], "row": "", "batch size": "",
                         "status": CORRUPT, "reason": [str(e) for e in corrupt],
                         "log": [str(e.path.with_name(LOG_FILE)) if e.path.with_name(LOG_FILE).exists() else ""
                                 for e in corrupt]})


def _failures(page: Page, df: pd.DataFrame, corrupt: Sequence[CorruptResult] = ()) -> None:
    page.section(SECTIONS[9])
    failed = failures_table(df)
    if corrupt:
        failed = pd.concat([failed, corrupt_table(corrupt)], ignore_index=True)
    if failed.empty:
        page.note("Every job ended ok.")
        return
    page.note("oom: ran out of memory; error: failed; timeout: ran past timeout_s; invalid: refused before "
              "launch (never ran); corrupt: a result file that does not read as a result (a resume runs the "
              "job again). The reason is the one the result records; the log is where the job wrote "
              "its output.")
    page.table(failed, index=False, text=True)


def _attempts(page: Page, sweep_dirs: Sequence[Path]) -> None:
    """The attempts of every job that ran more than once (a resume, a rerun, rounds), one row each."""
    page.section(SECTIONS[10])
    table = attempts_table(sweep_dirs)
    once = table.groupby("job")["attempt"].transform("count").eq(1)
    shown = table[~once]
    single = table.loc[once, "job"].nunique()
    if shown.empty:
        page.note(f"Every job that was launched ran in one attempt ({single} job(s))." if single else
                  "No job of these sweeps was launched." if sweep_dirs else "No sweep directory was given.")
        return
    page.note(f"Each attempt is one launch of the job (its outcome in {ATTEMPTS_DIR}/NNNN.json); current: the "
              f"attempt whose figures the job's {RESULT_FILE} holds."
              + (f" {single} other job(s) ran in one attempt." if single else ""))
    page.table(shown, index=False, text=True)


def write_report(df: pd.DataFrame, out: Path, reference: str | None = None, sweep_dirs: Sequence[Path] = (),
                 corrupt: Sequence[CorruptResult] = (), price_per_gpu_hour: float | None = None,
                 price_per_cpu_node_hour: float | None = None) -> Path:
    """Write every table, chart and report.md / report.html of the results `df` into `out`; returns the HTML.
    `sweep_dirs`: where the results were read, for the commands that ran them (Hydra's multirun.yaml);
    `corrupt`: the result files there that could not be read, each a row among the jobs that did not end ok.
    The prices (USD per hour of a GPU, of a CPU node) override those the results' configs recorded."""
    out.mkdir(parents=True, exist_ok=True)
    df = efficiency.with_latency(efficiency.with_cost(df, price_per_gpu_hour, price_per_cpu_node_hour))
    note = f"{len(df)} jobs in {df['run_id'].nunique()} sweep(s)."
    if corrupt:
        note += f" {len(corrupt)} result file(s) corrupt: listed among the jobs that did not end ok."
    df = df.sort_values("timestamp", kind="stable")
    repeated = df.assign(label=row_labels(df)).duplicated(["label", "config.batch_size"], keep="last")
    if repeated.any():
        note += f" {repeated.sum()} point(s) measured more than once: the tables and charts show the latest."
        df = df[~repeated]
    df = df.assign(label=row_labels(df))
    page = Page(out, charts.colors(df["label"]))
    grouped = list(groups(df))
    _what_was_run(page, df, note, sweep_dirs)
    _best_points(page, grouped)
    _latency(page, grouped, df)
    _throughput(page, grouped, df, reference)
    _cost(page, grouped, df)
    _power(page, grouped, df)
    _load(page, grouped, df)
    _overhead(page, df)
    _memory(page, grouped, df)
    _roofline(page, grouped, df)
    _failures(page, df, corrupt)
    _attempts(page, sweep_dirs)
    return page.write(out)
