"""What the report says of a job's attempts and of a result file that does not read, on a real sweep that
timed out, was resumed, and then had a result file truncated."""
import os
import subprocess
import sys

from conftest import ROOT, history_of, results, run_runner

QUICK = ["batch_size=1,2", "new_tokens=4", "repeats=1", "prompt_tokens=4"]


def analysis(*args, cache) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=ROOT, check=False, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "INFERSWEEP_HISTORY": str(history_of(cache))})


def markdown_rows(text: str, section: str) -> list:
    """The cells of each row of the table under `## section` of report.md."""
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith("|")][2:]  # past the header and its rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_report_lists_each_jobs_attempts_and_a_truncated_result_as_a_corrupt_row(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    assert run_runner(["-m", *QUICK, "timeout_s=0.5", f"hydra.sweep.dir={sweep}"], cache_dir).returncode == 3
    proc = run_runner(["-m", *QUICK, "timeout_s=240", f"hydra.sweep.dir={sweep}"], cache_dir)  # resume: runs both
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(r["status"], r["attempt"]) for r in results(sweep)] == [("ok", 2), ("ok", 2)]
    broken = sweep / "1" / "result.json"
    broken.write_bytes(broken.read_bytes()[:60])  # what a crashed copy or a full disk leaves

    report = analysis("report", sweep, "--out", tmp_path / "report", cache=cache_dir)
    assert report.returncode == 0, report.stderr[-3000:]
    md = (tmp_path / "report" / "report.md").read_text()
    failed = markdown_rows(md, "Jobs that did not end ok")
    assert [(row[0], row[3]) for row in failed] == [("1", "corrupt")]
    assert failed[0][4].startswith(f"corrupt result file {broken}: ")
    assert "1 result file(s) corrupt" in md
    attempts = markdown_rows(md, "Attempts")
    assert [(row[0], row[1], row[2], row[5]) for row in attempts] == [
        ("0", "1", "timeout", ""), ("0", "2", "ok", "current"), ("1", "1", "timeout", ""), ("1", "2", "ok", "")]
    assert attempts[0][3].startswith("no result within timeout_s=0.5") and all(row[4] for row in attempts)  # when it ended

    compare = analysis("compare", sweep, sweep, cache=cache_dir)
    assert compare.returncode == 2
    assert compare.stderr.strip().splitlines()[-1].startswith(f"error: corrupt result file {broken}: ")
