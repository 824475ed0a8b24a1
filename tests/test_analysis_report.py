"""`python -m analysis report` and `history` on a real sweep of bloom-tiny (CPU, run once per session)."""
import base64
import csv
import os
import re
import statistics
import subprocess
import sys

import pytest
from conftest import ROOT, results


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


class TestAccelerateSweep:
    """Every test here checks the sweep that tests/test_runner.py::TestAccelerateSweep checks: one class
    name, so that one xdist worker runs both classes, and the sweep once (tests/conftest.py)."""

    def test_report_writes_every_table_and_chart(self, report):
        out, proc = report
        tables = [f"{name}.{ext}" for name in ("load_time", "ms_per_token_bloom-tiny-cpu") for ext in ("txt", "csv", "md")]
        charts = [f"{name}.{ext}" for name in ("load_time", "throughput_bloom-tiny-cpu") for ext in ("png", "svg")]
        for name in [*tables, *charts, "report.md", "report.html"]:
            assert (out / name).stat().st_size > 0, name
        assert not list(out.glob("speedup_*")), "one row with numbers: nothing to compare against"
        md = (out / "report.md").read_text()  # a Markdown page with its charts: publishable as it is
        assert "![load time](load_time.png)" in md and "![throughput_bloom-tiny-cpu](throughput_bloom-tiny-cpu.png)" in md
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
        images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">', page)
        assert [name for name, _ in images] == ["load_time", "throughput_bloom-tiny-cpu"]
        for name, data in images:
            assert base64.b64decode(data) == (out / f"{name}.png").read_bytes()
        assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
        assert '<td class="failed">invalid</td>' in page

    def test_finished_sweep_is_in_the_history(self, sweep):
        sweep_dir, history = sweep
        run_id = results(sweep_dir)[0]["run_id"]
        proc = analysis("history", history=history)
        assert proc.returncode == 0, proc.stderr
        line = next(line for line in proc.stdout.splitlines() if run_id in line)
        assert "cpu@" in line and "4 " in line and "2 ok, 2 invalid" in line


