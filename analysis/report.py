"""The report of one or many sweeps: the seed's tables (text, CSV, Markdown), charts (PNG, SVG) and one
self-contained HTML page with the tables and the PNG charts embedded."""
import base64
import html
import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import charts
from analysis.results import VERSIONS, sweep_summary
from analysis.tables import groups, load_table, max_batch_table, roofline_table, row_labels, seed_table

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; white-space: nowrap; }
td.failed { color: #b00; font-weight: 600; } table.text td, table.text th { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
p.note { color: #555; }
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _html_table(table: pd.DataFrame, index: bool = True, text: bool = False) -> str:
    """A table as HTML, where a cell holding a status word (no number) is shown as a failure; numbers are
    right-aligned unless the table is `text`."""
    out = table.to_html(index=index, border=0, na_rep="", classes="text" if text else None)
    return re.sub(r"<td>(oom|error|timeout|invalid)</td>", r'<td class="failed">\1</td>', out)


def _png(fig: Figure, stem: Path) -> str:
    """Save the figure as PNG and SVG; return the PNG as an <img> with the image inlined."""
    png, _ = charts.save(fig, stem)
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<img alt="{html.escape(stem.name)}" src="data:image/png;base64,{data}">'


def _write_table(table: pd.DataFrame, stem: Path, corner: str) -> tuple[str, str]:
    """The table as stem.csv (as computed), stem.txt and stem.md (`corner` naming the rows); returns the
    Markdown and the HTML."""
    table.to_csv(stem.with_suffix(".csv"))
    shown = table.rename_axis(index=None, columns=corner)  # the corner above the row labels
    stem.with_suffix(".txt").write_text(shown.to_string() + "\n")
    md = table.rename_axis(index=corner, columns=None).to_markdown(disable_numparse=True)
    stem.with_suffix(".md").write_text(md + "\n")
    return md, _html_table(shown)


def _sweeps_table(df: pd.DataFrame) -> pd.DataFrame:
    """Which sweeps the report covers: id, start, hardware, library versions, jobs and their statuses."""
    summary = sweep_summary(df)
    versions = summary[list(VERSIONS)].apply(lambda r: ", ".join(f"{k} {v}" for k, v in r.items() if v), axis=1)
    return pd.DataFrame({"run_id": summary["run_id"],
                         "started": pd.to_datetime(summary["started"]).dt.strftime("%Y-%m-%d %H:%M"),
                         "hardware": summary["hardware"], "versions": versions, "jobs": summary["jobs"],
                         "statuses": summary["statuses"]})


def write_report(df: pd.DataFrame, out: Path, reference: str | None = None) -> Path:
    """Write every table, chart and report.md / report.html of the results `df` into `out`; returns the HTML."""
    out.mkdir(parents=True, exist_ok=True)
    sweeps = _sweeps_table(df)
    note = f"{len(df)} jobs in {len(sweeps)} sweep(s)."
    df = df.sort_values("timestamp", kind="stable")
    repeated = df.assign(label=row_labels(df)).duplicated(["label", "config.batch_size"], keep="last")
    if repeated.any():
        note += f" {repeated.sum()} point(s) measured more than once: the tables and charts show the latest."
        df = df[~repeated]
    md = ["# infersweep report", "", note, "", sweeps.to_markdown(index=False, disable_numparse=True)]
    body = [f"<h1>infersweep report</h1><p class='note'>{html.escape(note)}</p>",
            _html_table(sweeps, index=False, text=True)]

    load_md, load_html = _write_table(load_table(df), out / "load_time", "backend dtype")
    md += ["", "## Load time (s)", "", load_md]
    body += ["<h2>Load time</h2>",
             ("<p class='note'>Seconds from launch to ready to generate: median, min and max over the jobs "
              "of each row that ended ok.</p>"),
             load_html, _png(charts.load_chart(df), out / "load_time")]
    md += ["", "![load time](load_time.png)"]

    for title, part in groups(df):
        slug = _slug(title)
        table_md, table_html = _write_table(seed_table(part), out / f"ms_per_token_{slug}",
                                            "backend dtype \\ batch size")
        md += ["", f"## ms per token: {title}", "", table_md]
        body += [f"<h2>Throughput: {html.escape(title)}</h2>",
                 ("<p class='note'>ms per generated token (median over repeats; lower is better): rows "
                  "backend+dtype, columns batch size; a job that did not end ok shows its status.</p>"),
                 table_html]
        roofline = roofline_table(part)
        if not roofline.empty:
            roof_md, roof_html = _write_table(roofline, out / f"roofline_{slug}", "backend dtype \\ batch size")
            md += ["", f"## Fraction of the roofline floor: {title}", "", roof_md]
            body += [f"<h2>Fraction of the roofline floor: {html.escape(title)}</h2>",
                     ("<p class='note'>The floor of one decode step (weights and KV cache read at the measured copy "
                      "bandwidth, or 2 FLOP per parameter per token at the measured matmul rate, whichever is "
                      "larger: the bound named) over the measured decode step; 1.00 is the hardware limit. "
                      "Ceilings: env.ceilings of the results.</p>"), roof_html]
        ref = charts.reference_label(part, reference)
        for fig, stem in ((charts.throughput_chart(part, title), f"throughput_{slug}"),
                          (charts.speedup_chart(part, title, ref) if ref else None, f"speedup_{slug}")):
            if fig is not None:
                body.append(_png(fig, out / stem))
                md += ["", f"![{stem}]({stem}.png)"]

    largest = max_batch_table(df)
    if not largest.empty:
        largest_md = largest.to_markdown(disable_numparse=True)
        (out / "max_batch.md").write_text(largest_md + "\n")
        md += ["", "## Largest batch that fits (batch_size=max)", "", largest_md]
        body += ["<h2>Largest batch that fits (batch_size=max)</h2>", _html_table(largest, text=True)]

    failed = df[df["status"] != "ok"]
    if len(failed):
        jobs = pd.DataFrame({"job": row_labels(df)[failed.index] + " bs=" + failed["config.batch_size"].astype(str),
                             "status": failed["status"], "reason": failed["reason"]})
        md += ["", "## Jobs that did not end ok", "", jobs.to_markdown(index=False)]
        body += ["<h2>Jobs that did not end ok</h2>",
                 _html_table(jobs, index=False, text=True)]

    (out / "report.md").write_text("\n".join(md) + "\n")
    page = out / "report.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>infersweep report</title>"
                    f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    return page
