"""python -m analysis report | history | compare | trend: see docs/analysis.md.

The history is $INFERSWEEP_HISTORY, else outputs/history.sqlite under the current directory.
"""
import argparse
import sys
import traceback
from pathlib import Path

from analysis import trend as trends
from analysis.compare import BadInput, baseline_of, compare, earlier_results, markdown, read_sweep
from analysis.history import append_sweep, history_path, sweeps
from analysis.report import write_report
from analysis.results import frame, read_results
from core.jobdir import RESULT_FILE

# Exit statuses of compare and trend (report and history: 0, 2 and 70 alike).
OK, REGRESSION, BAD_INPUT = 0, 1, 2
CRASH = 70  # EX_SOFTWARE (sysexits.h): an unexpected error; never 1, which a CI reads as a regression

EXIT_CODES = f"""exit status:
  {OK}   no regression (inconclusive points alone included, unless --strict)
  {REGRESSION}   regression: a point regressed (compare), or the newest sweep is in a step to slower (trend);
      compare --strict: also when a point is inconclusive ("not shown to be fine")
  {BAD_INPUT}   bad input, nothing judged: an unknown sweep or run_id, an unreadable or invalid result file
      or history (one line on stderr naming it), or a usage error
  {CRASH}  an unexpected error in the analysis itself (traceback on stderr)"""


def report(args: argparse.Namespace) -> int:
    corrupt: list = []
    df = frame(read_results(args.sweep_dirs, corrupt))
    if df.empty:
        raise ValueError(f"no readable {RESULT_FILE} under {', '.join(map(str, args.sweep_dirs))}"
                         + "".join(f"; {e}" for e in corrupt))
    for key in ("price_per_gpu_hour", "price_per_cpu_node_hour"):
        price = getattr(args, key)
        if price is not None and price < 0:
            raise ValueError(f"--{key.replace('_', '-')} {price:g}: allowed: USD per hour >= 0")
    page = write_report(df, args.out or args.sweep_dirs[0] / "report", args.reference, args.sweep_dirs, corrupt,
                        args.price_per_gpu_hour, args.price_per_cpu_node_hour)
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
    candidate = read_sweep(path, cand_ref)
    baseline = read_sweep(path, base_ref[0] if base_ref else baseline_of(path, candidate))
    max_detectable = args.max_detectable if args.max_detectable is not None else 2 * args.min_effect
    if max_detectable < args.min_effect:
        raise BadInput(f"--max-detectable {max_detectable:g} is below --min-effect {args.min_effect:g}")
    verdicts = compare(baseline, candidate, args.min_effect, args.confidence, earlier_results(path, candidate),
                       max_detectable)
    text = markdown(verdicts, baseline, candidate, args.min_effect, args.confidence, max_detectable)
    print(text)
    if args.out:
        args.out.write_text(text)
    failing = ("regressed", "inconclusive") if args.strict else ("regressed",)
    return REGRESSION if verdicts["verdict"].isin(failing).any() else OK


def trend(args: argparse.Namespace) -> int:
    found = trends.write_trend(history_path(), args.out, args.hardware, args.metric, args.min_effect)
    print(trends.markdown(found))
    for path in found.charts:
        print(f"trend: {path}")
    return REGRESSION if found.regression_now else OK


def _min_effect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-effect", type=float, default=0.05,
                   help="smallest relative change of median ms/token that counts (default 0.05)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(required=True)

    r = sub.add_parser("report", help="tables, charts and an HTML page of one or many sweeps")
    r.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR")
    r.add_argument("--out", type=Path, help="where to write (default: FIRST_SWEEP_DIR/report)")
    r.add_argument("--reference", help="row label or backend the speedup chart is over (default: the first row)")
    r.add_argument("--price-per-gpu-hour", type=float, metavar="USD",
                   help="USD per GPU-hour for the cost per million tokens (default: the results' price_per_gpu_hour)")
    r.add_argument("--price-per-cpu-node-hour", type=float, metavar="USD",
                   help="USD per hour of a node, for CPU jobs (default: the results' price_per_cpu_node_hour)")
    r.set_defaults(func=report, input_errors=ValueError)

    h = sub.add_parser("history", help="list the sweeps in the history, or append sweeps to it")
    h.add_argument("--add", nargs="+", type=Path, default=[], metavar="SWEEP_DIR", help="append these sweeps")
    h.add_argument("--last", type=int, default=50, help="list only the newest N sweeps (default 50)")
    h.set_defaults(func=history, input_errors=ValueError)

    c = sub.add_parser("compare", help="regression verdict of a candidate sweep; exit 1 if any point regressed",
                       description="Each point regressed, improved, unchanged or inconclusive, judged on its\n"
                                   "rounds (worker processes) or, with too few, on its noise in the history\n"
                                   "(docs/analysis.md).",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("sweeps", nargs="+", metavar="[BASELINE] CANDIDATE",
                   help="sweep directories or run_ids; no BASELINE: the latest earlier sweep on the same "
                        "hardware in the history")
    c.add_argument("--out", type=Path, help="also write the Markdown verdict to this file")
    _min_effect(c)
    c.add_argument("--confidence", type=float, default=0.95,
                   help="confidence level of the intervals of the ratios, over all points together (default 0.95)")
    c.add_argument("--max-detectable", type=float,
                   help="a point that could not have seen a change this large is inconclusive, not unchanged "
                        "(default: twice --min-effect)")
    c.add_argument("--strict", action="store_true", help="exit 1 also when a point is inconclusive")
    c.set_defaults(func=compare_cmd, input_errors=BadInput)

    t = sub.add_parser("trend", help="change points of a metric over the history, and a chart",
                       description="Step changes of each point's series over the history on one hardware\n"
                                   "(ruptures PELT on the log figures; docs/analysis.md), as a Markdown table\n"
                                   "and marked on a chart.",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--metric", default="ms_per_token", help="result field to chart (default ms_per_token)")
    t.add_argument("--hardware", help="hardware as `history` lists it (default: the newest sweep's)")
    t.add_argument("--out", type=Path, default=Path("outputs"), help="directory of the chart (default outputs)")
    _min_effect(t)
    t.set_defaults(func=trend, input_errors=BadInput)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.func is compare_cmd and len(args.sweeps) > 2:
        parser().error("compare takes at most two sweeps: [BASELINE] CANDIDATE")
    try:
        return args.func(args)
    except args.input_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    except Exception:  # noqa: BLE001 - a bug, not a verdict: its traceback, and a status no CI reads as a regression
        traceback.print_exc()
        print(f"error: internal error in python -m analysis (exit {CRASH})", file=sys.stderr)
        return CRASH


if __name__ == "__main__":
    sys.exit(main())
