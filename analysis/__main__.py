"""python -m analysis report | history | compare | trend: see docs/analysis.md.

The history is $INFERSWEEP_HISTORY, else outputs/history.sqlite under the current directory.
"""
import argparse
import sys
from pathlib import Path

from analysis.compare import compare, markdown
from analysis.history import append_sweep, history_path, load_sweep, previous_sweep, sweeps
from analysis.report import write_report
from analysis.results import load_results
from analysis.trend import write_trend
from core.jobdir import RESULT_FILE


def report(args: argparse.Namespace) -> int:
    df = load_results(args.sweep_dirs)
    if df.empty:
        raise ValueError(f"no {RESULT_FILE} under {', '.join(map(str, args.sweep_dirs))}")
    page = write_report(df, args.out or args.sweep_dirs[0] / "report", args.reference)
    print(page.with_name("report.md").read_text())
    print(f"report: {page}")
    return 0


def history(args: argparse.Namespace) -> int:
    path = history_path()
    for sweep_dir in args.add:
        print(f"appended {', '.join(append_sweep(path, sweep_dir)) or 'nothing'} from {sweep_dir} to {path}")
    if not args.add:
        runs = sweeps(path).drop(columns=["id", "appended_at", "sweep_dir"]).tail(args.last)
        print(runs.to_string(index=False) if len(runs) else f"no sweep in {path}")
    return 0


def compare_cmd(args: argparse.Namespace) -> int:
    path = history_path()
    *base_ref, cand_ref = args.sweeps
    candidate = load_sweep(path, cand_ref)
    base_id = base_ref[0] if base_ref else previous_sweep(path, candidate)
    if base_id is None:
        raise ValueError(f"no earlier sweep on the same hardware in the history {path}; name a baseline")
    baseline = load_sweep(path, base_id)
    verdicts = compare(baseline, candidate, args.min_effect, args.confidence)
    text = markdown(verdicts, baseline, candidate, args.min_effect, args.confidence)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if (verdicts["verdict"] == "regressed").any() else 0


def trend(args: argparse.Namespace) -> int:
    for path in write_trend(history_path(), args.out, args.hardware, args.metric, args.min_effect, args.confidence):
        print(f"trend: {path}")
    return 0


def _verdict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-effect", type=float, default=0.05,
                   help="smallest relative change of median ms/token that counts (default 0.05)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="confidence level of the interval of the ratio (default 0.95)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)

    r = sub.add_parser("report", help="tables, charts and an HTML page of one or many sweeps")
    r.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    r.add_argument("--out", type=Path, help="where to write (default: FIRST_SWEEP_DIR/report)")
    r.add_argument("--reference", help="row label or backend the speedup chart is over (default: the first row)")
    r.set_defaults(func=report)

    h = sub.add_parser("history", help="list the sweeps in the history, or append sweeps to it")
    h.add_argument("--add", nargs="+", type=Path, default=[], metavar="SWEEP_DIR", help="append these sweeps")
    h.add_argument("--last", type=int, default=50, help="list only the newest N sweeps (default 50)")
    h.set_defaults(func=history)

    c = sub.add_parser("compare", help="regression verdict of a candidate sweep; exit 1 if any point regressed")
    c.add_argument("sweeps", nargs="+", metavar="[BASELINE] CANDIDATE",
                   help="sweep directories or run_ids; no BASELINE: the latest earlier sweep on the same "
                        "hardware in the history")
    c.add_argument("--out", type=Path, help="also write the Markdown verdict to this file")
    _verdict_options(c)
    c.set_defaults(func=compare_cmd)

    t = sub.add_parser("trend", help="chart a metric over the history, regressions marked")
    t.add_argument("--metric", default="ms_per_token", help="result field to chart (default ms_per_token)")
    t.add_argument("--hardware", help="hardware as `history` lists it (default: the newest sweep's)")
    t.add_argument("--out", type=Path, default=Path("outputs"), help="directory of the chart (default outputs)")
    _verdict_options(t)
    t.set_defaults(func=trend)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func is compare_cmd and len(args.sweeps) > 2:
        parser().error("compare takes at most two sweeps: [BASELINE] CANDIDATE")
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
