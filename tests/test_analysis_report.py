"""`python -m analysis report` and `history` on a real sweep of bloom-tiny (CPU, run once per session), on
committed result files (tests/fixtures/report), and the report's charts on small made-up frames."""
import base64
import csv
import html
import json
import os
import re
import statistics
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT, results

from analysis import charts, efficiency
from analysis.report import SECTIONS, best_table, usd_text, write_report
from analysis.results import load_results
from core.jobdir import RESULT_FILE


@pytest.fixture(scope="session")
def sweep(accelerate_sweep):
    """bf16 at batch sizes 1 and 4, plus int8 (invalid on a CPU); the end of the sweep appended it to a
    history of its own (conftest's accelerate_sweep)."""
    return accelerate_sweep["dir"], accelerate_sweep["history"]


def analysis(*args, history) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=ROOT, check=False, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "INFERSWEEP_HISTORY": str(history)})


@pytest.fixture(scope="session")
def report(sweep):
    sweep_dir, history = sweep
    proc = analysis("report", sweep_dir, history=history)
    assert proc.returncode == 0, proc.stderr
    return sweep_dir / "report", proc


@pytest.fixture(scope="session")
def page(sweep, tmp_path_factory) -> str:
    """report.html of the sweep, written in this process with the sweep directory named (for its command)."""
    sweep_dir, _ = sweep
    return write_report(load_results([sweep_dir]), tmp_path_factory.mktemp("report"), sweep_dirs=[sweep_dir]).read_text()


def sections(page: str) -> dict[str, str]:
    """The page's sections by title, in page order."""
    return dict(re.findall(r"<section id='[^']*'><h2>(.*?)</h2>(.*?)</section>", page, re.DOTALL))


def figures(page: str) -> list[dict]:
    """Each embedded chart: its stem, the colours it drew each row in, its alt text, PNG and caption."""
    found = re.findall(r"<figure data-chart='([^']+)' data-colors='([^']*)'><img alt='([^']*)' "
                       r"src='data:image/png;base64,([^']+)'><figcaption>(.*?)</figcaption></figure>", page)
    return [{"stem": stem, "colors": json.loads(html.unescape(colors)), "alt": html.unescape(alt), "png": png,
             "caption": html.unescape(re.sub("<[^>]+>", "", caption))} for stem, colors, alt, png, caption in found]


def swatches(page: str) -> list[tuple[str, str]]:
    """(label, colour) of every row label shown with its colour, in tables and the colour key."""
    return [(html.unescape(label), color) for color, label in
            re.findall(r"<span class='swatch' style='background:(#[0-9a-f]{6})'></span>([^<]+)</t[hd]>", page)]


def axis(text: str) -> str:
    return " ".join(text.split())


class TestAccelerateSweep:
    """Every test here checks the sweep that tests/test_runner.py::TestAccelerateSweep checks: one class
    name, so that one xdist worker runs both classes, and the sweep once (tests/conftest.py)."""

    def test_report_writes_every_table_and_chart(self, report):
        out, proc = report
        tables = [f"{name}.{ext}" for name in ("load_time", "ms_per_token_bloom-tiny-cpu") for ext in ("txt", "csv", "md")]
        images = [f"{name}.{ext}" for name in ("load_time", "throughput_bloom-tiny-cpu") for ext in ("png", "svg")]
        for name in [*tables, *images, "report.md", "report.html"]:
            assert (out / name).stat().st_size > 0, name
        assert not list(out.glob("speedup_*")), "one row with numbers: nothing to compare against"
        md = (out / "report.md").read_text()  # a Markdown page with its charts: publishable as it is
        assert f"![{charts.LOAD.title}](load_time.png)" in md
        assert f"![{charts.TOKENS_PER_S.title}: bloom-tiny, CPU](throughput_bloom-tiny-cpu.png)" in md
        assert f"report: {out / 'report.html'}" in proc.stdout

    def test_ms_per_token_table_has_the_seed_shape_and_values(self, sweep, report):
        out, proc = report
        with open(out / "ms_per_token_bloom-tiny-cpu.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["", "1", "4"]
        table = {row[0]: row[1:] for row in rows[1:]}
        assert table["accelerate int8"] == ["invalid", "invalid"]
        measured = {r["config"]["batch_size"]: r["ms_per_token"] for r in results(sweep[0]) if r["status"] == "ok"}
        assert table["accelerate bf16"] == [f"{measured[1]:.2f}", f"{measured[4]:.2f}"]

        md = (out / "ms_per_token_bloom-tiny-cpu.md").read_text().splitlines()
        assert re.fullmatch(r"\| backend dtype \\ batch size +\| 1 +\| 4 +\|", md[0])
        assert re.fullmatch(rf"\| accelerate bf16 +\| {measured[1]:.2f} +\| {measured[4]:.2f} +\|", md[2])
        assert "\n".join(md) in proc.stdout

    def test_load_table_has_one_row_per_backend_and_dtype(self, sweep, report):
        out, _ = report
        with open(out / "load_time.csv") as f:
            rows = list(csv.reader(f))
        loads = [r["load_s"] for r in results(sweep[0]) if r["status"] == "ok"]
        assert rows[0] == ["", "median s", "min s", "max s"]
        assert rows[1] == ["accelerate bf16", f"{statistics.median(loads):.1f}",
                           f"{min(loads):.1f}", f"{max(loads):.1f}"]
        assert rows[2] == ["accelerate int8", "invalid", "", ""]

    def test_html_is_self_contained_with_its_charts_embedded(self, report):
        out, _ = report
        page = (out / "report.html").read_text()
        images = figures(page)
        assert [f["stem"] for f in images] == ["ms_per_token_bloom-tiny-cpu", "throughput_bloom-tiny-cpu",
                                               "pareto_bloom-tiny-cpu", "usd_per_mtok_bloom-tiny-cpu",
                                               "load_time", "peak_mem_bloom-tiny-cpu"]
        for image in images:
            assert base64.b64decode(image["png"]) == (out / f"{image['stem']}.png").read_bytes()
        assert len(re.findall("<img ", page)) == len(images)
        assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
        assert '<td class="failed">invalid</td>' in page

    def test_sections_come_in_the_order_a_reader_asks(self, page):
        assert list(sections(page)) == ["What was run", "Best point per batch size", "Latency: ms per token",
                                        "Throughput: tokens per second", "Cost: USD per million tokens",
                                        "Power and clocks", "Load time", "Memory", "Roofline",
                                        "Jobs that did not end ok", "Attempts"] == list(SECTIONS)

    def test_header_names_the_command_what_varied_the_hardware_versions_and_ceilings(self, sweep, page):
        header = html.unescape(sections(page)["What was run"])
        assert (f"python -m runner -m dtype=bf16,int8 batch_size=1,4 new_tokens=16 repeats=3 prompt_tokens=4 isolate=true "
                f"price_per_cpu_node_hour=0.5 hydra.sweep.dir={sweep[0]}") in header
        assert re.search(r"<td>dtype.name</td>\s*<td>bf16, int8</td>", header)
        assert re.search(r"<td>batch_size</td>\s*<td>1, 4</td>", header)
        assert "<code>new_tokens=16</code>" in header and "<code>backend.name=accelerate</code>" in header
        env = next(r for r in results(sweep[0]) if r["status"] == "ok")["env"]
        for key in ("hostname", "python", "torch", "transformers", "accelerate", "git_rev"):
            if env.get(key):
                assert f"<td>{env[key]}</td>" in header, key
        assert f"{env['ceilings']['copy_gbps']:g} GB/s" in header
        assert f"{env['ceilings']['matmul_tflops']:g} TFLOP/s" in header

    def test_each_chart_says_what_it_plots_with_units_and_what_it_includes(self, page):
        pareto = charts.Chart(*(text.format(device="node") for text in (charts.PARETO.title, charts.PARETO.axis,
                                                                           charts.PARETO.caption)))
        expected = {"ms_per_token": charts.MS_PER_TOKEN, "throughput": charts.TOKENS_PER_S,
                    "peak_mem": charts.HOST_MEMORY, "load_time": charts.LOAD,  # a CPU sweep: host memory
                    "usd_per_mtok": charts.COST, "pareto": pareto}
        for figure in figures(page):
            chart = next(c for stem, c in expected.items() if figure["stem"].startswith(stem))
            if chart is pareto:
                assert f"x: {axis(charts.PARETO_X)}; y: {axis(pareto.axis)}" in figure["caption"]
                assert figure["alt"].startswith(pareto.title) and figure["caption"].endswith(pareto.caption)
                continue
            assert figure["alt"].startswith(chart.title), figure["stem"]
            value_axis, other = ("x", "y") if chart is charts.LOAD else ("y", "x")
            assert f"{value_axis}: {axis(chart.axis)}" in figure["caption"], figure["stem"]
            if chart is not charts.LOAD:
                assert f"{other}: {charts.BATCH_AXIS}" in figure["caption"]
            assert figure["caption"].endswith(chart.caption)
        for chart in (charts.MS_PER_TOKEN, charts.TOKENS_PER_S, charts.LOAD):
            assert "warm-up excluded" in chart.axis and "warmup_s" in chart.caption and "load_s" in chart.caption
        assert "launch, imports, warm-up excluded" in axis(charts.LOAD.axis)
        assert "ttft_ms" in sections(page)["Latency: ms per token"]

    def test_a_row_has_one_colour_in_every_chart_and_table(self, page):
        key = dict(swatches(sections(page)["What was run"]))
        assert set(key) == {"accelerate bf16", "accelerate int8"}
        assert all(key[label] == color for label, color in swatches(page))
        drawn = [f["colors"] for f in figures(page)]
        assert sum("accelerate bf16" in colors for colors in drawn) == 6  # latency, throughput, Pareto, cost, load,
        # memory
        for colors in drawn:
            assert all(found == [key[label]] for label, found in colors.items()), colors

    def test_failures_give_each_reason_and_log(self, sweep, page):
        failures = html.unescape(sections(page)["Jobs that did not end ok"])
        failed = [r for r in results(sweep[0]) if r["status"] != "ok"]
        assert failed
        for r in failed:
            assert re.search(rf"<td>{r['job']}</td>.*?<td>{re.escape(r['reason'])}</td>\s*<td>{re.escape(r['log'])}</td>",
                             failures, re.DOTALL), r["job"]

    def test_every_table_scrolls_sideways_where_it_is_wider_than_the_page(self, page):
        assert page.count("<table") == page.count("<div class='scroll'><table") > 10
        assert re.search(r"\.scroll \{ overflow-x: auto;", page)

    def test_finished_sweep_is_in_the_history(self, sweep):
        sweep_dir, history = sweep
        run_id = results(sweep_dir)[0]["run_id"]
        proc = analysis("history", history=history)
        assert proc.returncode == 0, proc.stderr
        line = next(line for line in proc.stdout.splitlines() if run_id in line)
        assert "cpu@" in line and "4 " in line and "2 ok, 2 invalid" in line


    def test_cost_per_million_tokens_from_the_price_the_sweep_recorded(self, sweep, report):
        out, proc = report
        res = results(sweep[0])
        assert all(r["config"]["price_per_cpu_node_hour"] == 0.5 and r["config"]["price_per_gpu_hour"] is None
                   for r in res)
        table = csv_table(out / "usd_per_mtok_bloom-tiny-cpu.csv")
        usd = {r["config"]["batch_size"]: 0.5 / 3600 * 1 / r["tokens_per_s"] * 1e6 for r in res if r["status"] == "ok"}
        assert table["accelerate bf16"] == [usd_text(usd[1]), usd_text(usd[4])]
        assert table["accelerate int8"] == ["invalid", "invalid"]
        assert "CPU node: 0.5 USD per hour" in proc.stdout

    def test_a_price_given_to_the_report_overrides_the_recorded_one(self, sweep, tmp_path):
        proc = analysis("report", sweep[0], "--out", tmp_path, "--price-per-cpu-node-hour", "3.5", history=sweep[1])
        assert proc.returncode == 0, proc.stderr
        usd = {r["config"]["batch_size"]: 3.5 / 3600 / r["tokens_per_s"] * 1e6 for r in results(sweep[0])
               if r["status"] == "ok"}
        assert csv_table(tmp_path / "usd_per_mtok_bloom-tiny-cpu.csv")["accelerate bf16"] == [
            usd_text(usd[1]), usd_text(usd[4])]
        bad = analysis("report", sweep[0], "--out", tmp_path, "--price-per-gpu-hour", "-1", history=sweep[1])
        assert bad.returncode == 2
        assert bad.stderr.strip() == "error: --price-per-gpu-hour -1: allowed: USD per hour >= 0"

    def test_best_point_per_batch_size_names_fastest_cheapest_and_most_efficient(self, sweep, report):
        out, _ = report
        with open(out / "best_bloom-tiny-cpu.csv") as f:
            rows = list(csv.DictReader(f))
        ok = {r["config"]["batch_size"]: r for r in results(sweep[0]) if r["status"] == "ok"}
        assert [row[""] for row in rows] == ["1", "4"]
        for row in rows:
            measured = ok[int(row[""])]
            assert row["fastest"] == row["cheapest"] == "accelerate bf16"
            assert row["ms/token"] == f"{measured['ms_per_token']:.2f}"
            assert row["USD/Mtok"] == usd_text(0.5 / 3600 / measured["tokens_per_s"] * 1e6)
            assert row["least energy"] == "not measured" and row["J/token"] == ""

    def test_latency_table_holds_each_results_percentiles(self, sweep, report):
        out, _ = report
        ok = [r for r in results(sweep[0]) if r["status"] == "ok"]
        with open(out / "latency_bloom-tiny-cpu.csv") as f:
            rows = [(row.pop(""), row) for row in csv.DictReader(f)]
        assert rows == [("accelerate bf16", latency_cells(r)) for r in ok]  # batch sizes 1, 4; int8 never ran

    def test_power_and_clocks_give_the_reason_once_where_there_is_no_gpu(self, sweep, report):
        out, _ = report
        ok = [r for r in results(sweep[0]) if r["status"] == "ok"]
        md = (out / "report.md").read_text()
        power = md[md.index("## Power and clocks"):md.index("## Load time")]
        assert power.count("No GPU figures") == 1
        assert f"No GPU figures: {ok[0]['telemetry']['gpu']['reason']}: 2 jobs." in power
        with open(out / "telemetry_bloom-tiny-cpu.csv") as f:  # the host's figure only: no empty GPU columns
            assert list(csv.reader(f)) == [["", "batch size", "other-process CPU share"]] + [
                ["accelerate bf16", str(r["config"]["batch_size"]),
                 f"{r['telemetry']['host']['other_cpu_share']:.2f}"] for r in ok]

    def test_pareto_front_of_throughput_per_node_against_latency(self, sweep, page):
        ok = [r for r in results(sweep[0]) if r["status"] == "ok"]
        points = [(r["ms_per_token_per_stream"] * r["config"]["batch_size"], r["tokens_per_s"],
                   r["config"]["batch_size"]) for r in ok]
        front = [p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)]
        throughput = html.unescape(sections(page)["Throughput: tokens per second"])
        listed = re.findall(r"<tr>\s*<td>(?:<span[^>]*></span>)?accelerate bf16</td>\s*<td>(\d+)</td>\s*<td>1</td>"
                            r"\s*<td>([\d.]+)</td>\s*<td>([\d.]+)</td>", throughput)
        assert listed == [(str(bs), f"{ms:.2f}", f"{tps:.1f}") for ms, tps, bs in sorted(front)]
        assert "Throughput per node against latency: bloom-tiny, CPU" in throughput


FIXTURES = ROOT / "tests" / "fixtures" / "report"
UNCOMPILED = "graph bf16 compile_step=false"
COMPILED = "graph bf16 compile_mode=default compile_step=true"


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory) -> tuple:
    """The report of two committed results of docs/benchmarks/graph-h200/run2 (graph/3: bloom-7b1 bs 256
    captured, NVML reporting SwPowerCap; graph-compile-step/0: bs 1 compiled with compile_mode=default), and
    the results by their row label."""
    out = tmp_path_factory.mktemp("gpu-report")
    write_report(load_results([FIXTURES]), out, sweep_dirs=[FIXTURES])
    found = [json.loads(p.read_text()) for p in sorted(FIXTURES.rglob(RESULT_FILE))]
    return out, {COMPILED if r["config"]["backend"]["compile_step"] else UNCOMPILED: r for r in found}


def rows_of(path) -> dict:
    """A per-point CSV table (row label, batch size, figures) as {row label: {header: cell}}; a label
    heads one row per batch size, so where it has several the last is kept."""
    with open(path) as f:
        return {row.pop(""): row for row in csv.DictReader(f)}


def latency_cells(result: dict) -> dict:
    """The latency table's cells of a result: its batch size and latency percentiles."""
    latency = result["latency"]
    return {"batch size": str(result["config"]["batch_size"]),
            **{f"{name} {p} ms": f"{latency[key][p]:.2f}"
               for name, key in (("TTFT", "ttft_ms"), ("inter-token", "itl_ms")) for p in ("p50", "p90", "p99")}}


def test_a_backend_option_shows_in_the_label_only_where_it_takes_effect(gpu_report):
    """compile_mode varies between the two graph results, but only the compiled step uses it."""
    out, by_label = gpu_report
    assert set(rows_of(out / "latency_bloom-7b1-1-gpu.csv")) == {UNCOMPILED, COMPILED}
    assert by_label[UNCOMPILED]["config"]["backend"]["compile_mode"] == "max-autotune-no-cudagraphs"  # not shown


def test_latency_table_holds_each_results_percentiles(gpu_report):
    out, by_label = gpu_report
    rows = rows_of(out / "latency_bloom-7b1-1-gpu.csv")
    assert rows == {label: latency_cells(result) for label, result in by_label.items()}
    md = (out / "report.md").read_text()
    latency = md[md.index("## Latency"):md.index("## Throughput")]
    assert (out / "latency_bloom-7b1-1-gpu.md").read_text().strip() in latency


def test_power_and_clocks_show_each_gpu_results_telemetry(gpu_report):
    out, by_label = gpu_report
    rows = rows_of(out / "telemetry_bloom-7b1-1-gpu.csv")
    for label, result in by_label.items():
        gpu, host = result["telemetry"]["gpu"], result["telemetry"]["host"]
        assert rows[label] == {"batch size": str(result["config"]["batch_size"]),
                               "J/token": f"{result['energy_j_per_token']:.3f}",
                               "power mean W": f"{gpu['power_w_mean']:.0f}",
                               "power max W": f"{gpu['power_w_max']:.0f}",
                               "SM clock mean MHz": f"{gpu['sm_clock_mhz_mean']:.0f}",
                               "throttle reasons": ", ".join(gpu["throttle_reasons"]) or "none",
                               "max temp °C": f"{gpu['temperature_c_max']:.0f}",
                               "other-process CPU share": f"{host['other_cpu_share']:.2f}"}, label
    assert (rows[UNCOMPILED]["throttle reasons"], rows[COMPILED]["throttle reasons"]) == ("SwPowerCap", "none")
    md = (out / "report.md").read_text()
    power = md[md.index("## Power and clocks"):md.index("## Load time")]
    assert (out / "telemetry_bloom-7b1-1-gpu.md").read_text().strip() in power
    assert "No GPU figures" not in power


def csv_table(path) -> dict:
    """A seed-shaped CSV table as {row label: cells}."""
    with open(path) as f:
        return {row[0]: row[1:] for row in list(csv.reader(f))[1:]}


def test_cost_without_a_price_is_null_with_the_reason():
    df = pd.DataFrame({"status": ["ok", "ok", "ok", "oom"], "config.num_gpus": [2, 2, 0, 1],
                       "config.num_nodes": [1, 2, 1, 1], "tokens_per_s": [1000.0, 1000.0, 50.0, None],
                       "config.price_per_gpu_hour": [None, 3.5, None, None]})
    cost = efficiency.with_cost(df)
    assert cost["usd_per_mtok"].isna().tolist() == [True, False, True, True]
    assert cost["usd_per_mtok"][1] == pytest.approx(3.5 / 3600 * 4 / 1000 * 1e6)  # 2 GPUs on each of 2 nodes
    assert cost["usd_per_mtok_reason"].tolist() == [
        "no price: set price_per_gpu_hour (runner) or --price-per-gpu-hour (report)", "",
        "no price: set price_per_cpu_node_hour (runner) or --price-per-cpu-node-hour (report)", ""]
    given = efficiency.with_cost(df, price_per_gpu_hour=2.0, price_per_cpu_node_hour=0.1)
    assert given["usd_per_mtok"].tolist()[:3] == pytest.approx([2 / 3600 * 2 / 1000 * 1e6, 2 / 3600 * 4 / 1000 * 1e6,
                                                                0.1 / 3600 / 50 * 1e6])


def test_best_point_takes_the_lowest_energy_per_token_where_results_have_it():
    df = pd.DataFrame({"label": ["a", "b", "c"], "status": "ok", "config.batch_size": 8,
                       "ms_per_token": [1.0, 2.0, 3.0], "tokens_per_s": [800.0, 400.0, 300.0],
                       "usd_per_mtok": [0.5, 0.2, None], "energy_j_per_token": [0.3, None, 0.1]})
    best = best_table(df).loc[8]
    assert (best["fastest"], best["cheapest"], best["least energy"]) == ("a", "b", "c")
    assert best["USD/Mtok"] == "0.200" and best["J/token"] == "0.100" and best["ms/token"] == "1.00"


def test_pareto_front_keeps_the_points_no_other_beats():
    points = pd.DataFrame({"ms": [10, 20, 30, 15, 30, 5], "tps": [100, 300, 250, 90, 400, 10]})
    assert efficiency.pareto_front(points, "ms", "tps").tolist() == [True, True, False, False, True, True]



def made_up(labels: list[str], sizes: list[int], ms: list[float]) -> pd.DataFrame:
    """Results as the report's charts take them: one ok job per label and batch size, ms per token from `ms`
    (scaled per label), plus one oom at the largest size."""
    rows = [{"label": label, "status": "ok", "config.batch_size": size, "ms_per_token": value * (1 + i),
             "tokens_per_s": 1000 / (value * (1 + i)), "peak_mem_gib": size / 10}
            for i, label in enumerate(labels) for size, value in zip(sizes, ms)]
    rows.append({"label": labels[0], "status": "oom", "config.batch_size": sizes[-1] * 2})
    return pd.DataFrame(rows)


def test_log_axes_tick_every_decade_and_every_batch_size():
    df = made_up(["accelerate bf16", "ds-inference fp16"], [1, 8, 64, 512], [20, 2.6, 0.4, 0.06])
    ax = charts.ms_per_token_chart(df, "made up", charts.colors(df["label"])).axes[-1]
    x = dict(zip(ax.get_xticks(), (t.get_text() for t in ax.get_xticklabels())))
    assert all(x[size] == str(size) for size in (1, 8, 64, 512, 1024))  # the oom's size is on the axis too
    assert {10, 100} <= set(x)  # a decade between batch sizes keeps its tick and grid line
    y = dict(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels())))
    low, high = ax.get_ylim()
    assert all(y[10.0 ** e] == f"{10.0 ** e:g}" for e in range(-2, 3) if low <= 10.0 ** e <= high)
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"


@pytest.mark.parametrize("low, high", [(12, 18), (0.31, 0.36), (3, 40), (0.02, 900)])
def test_log_ticks_are_readable_over_any_range(low, high):
    ticks = charts.log_ticks(low, high)
    assert len(ticks) >= 4 and all(low <= t <= high for t in ticks)
    assert len({f"{t:g}" for t in ticks}) == len(ticks)  # no two read the same
    assert {10.0 ** e for e in range(-3, 4) if low <= 10.0 ** e <= high} <= set(ticks)


def test_long_row_labels_stay_inside_the_figure_and_the_legend_off_the_data():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    labels = [f"llama-8b gpus={n} ds-inference fp16 offload=none new=100 prompt=8 stack=/opt/venvs/tf443-{n}"
              for n in range(1, 7)]
    df = made_up(labels, [1, 8, 64], [12, 14, 18])
    df = df.assign(load_s=2.0)
    colors = charts.colors(labels)
    stats = pd.DataFrame({"median": 2.0, "min": 1.5, "max": 2.5, "status": "ok"}, index=labels)
    for fig in (charts.ms_per_token_chart(df, "made up", colors), charts.load_chart(stats, colors)):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        drawn = fig.get_tightbbox(canvas.get_renderer())  # every text and artist drawn, in inches
        assert fig.bbox_inches.padded(0.01).contains(drawn.x0, drawn.y0)
        assert fig.bbox_inches.padded(0.01).contains(drawn.x1, drawn.y1)
        for legend in fig.legends:
            assert not legend.get_window_extent().overlaps(fig.axes[-1].get_window_extent())
