"""Verdicts over committed sweeps: every ordered pair of the A/A sweeps (the false-alarm rate) and every
slowed sweep against every A/A sweep (the detection rate), through `analysis.compare` as
`python -m analysis compare BASELINE CANDIDATE` runs it. Prints a Markdown table.

    python benchmarks/verdict_rates.py docs/benchmarks/verdicts-h200 --aa aa1 aa2 aa3 --slow slow0.15-a slow0.3-a

With --history (the campaign's history.sqlite), each candidate's noise comes from the sweeps of that history
that started before it, as `python -m analysis compare` takes it from INFERSWEEP_HISTORY. With --clean-history
that noise comes from the earlier A/A sweeps only, as in a history of sweeps that held no slowed one.
"""
import argparse
import itertools
from pathlib import Path

import pandas as pd

from analysis.compare import compare, earlier_results, read_sweep_dir


def noise_history(history: Path | None, candidate: pd.DataFrame, only: set | None) -> pd.DataFrame | None:
    """The earlier results the candidate's noise comes from; with `only`, those of these run_ids alone."""
    if history is None:
        return None
    earlier = earlier_results(history, candidate)
    return earlier if only is None or earlier.empty else earlier[earlier["run_id"].isin(only)]


def tally(pairs: list, name: str, history: Path | None, only: set | None) -> dict:
    verdicts = pd.concat([compare(b, c, history=noise_history(history, c, only))
                          [["point", "ratio", "verdict"]] for b, c in pairs], ignore_index=True)
    counts = verdicts["verdict"].value_counts()
    return {"comparison": name, "pairs": len(pairs), "points": len(verdicts),
            **{v: int(counts.get(v, 0)) for v in ("regressed", "improved", "unchanged", "inconclusive")},
            "median ratio": round(float(verdicts["ratio"].median()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--aa", nargs="+", required=True)
    p.add_argument("--slow", nargs="*", default=[])
    p.add_argument("--history", type=Path, help="the history the noise of one-round sweeps comes from")
    p.add_argument("--clean-history", action="store_true", help="take that noise from the earlier A/A sweeps only")
    args = p.parse_args()
    sweeps = {name: read_sweep_dir(args.root / name) for name in args.aa + args.slow}
    only = set().union(*(set(sweeps[a]["run_id"]) for a in args.aa)) if args.clean_history else None
    rows = [tally([(sweeps[a], sweeps[b]) for a, b in itertools.permutations(args.aa, 2)], "A/A, every ordered pair",
                  args.history, only)]
    rows += [tally([(sweeps[a], sweeps[s]) for a in args.aa], f"{s} against each A/A", args.history, only)
             for s in args.slow]
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
