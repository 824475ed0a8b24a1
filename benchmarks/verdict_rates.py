"""Verdicts over committed sweeps: every ordered pair of the A/A sweeps (the false-alarm rate) and every
slowed sweep against every A/A sweep (the detection rate), through `analysis.compare` as
`python -m analysis compare BASELINE CANDIDATE` runs it. Prints a Markdown table.

    python benchmarks/verdict_rates.py docs/benchmarks/verdicts-h200 --aa aa1 aa2 aa3 --slow slow0.15-a slow0.3-a

With --history (the campaign's history.sqlite), each candidate's noise comes from the sweeps of that history
that started before it, as `python -m analysis compare` takes it from INFERSWEEP_HISTORY.
"""
import argparse
import itertools
from pathlib import Path

import pandas as pd

from analysis.compare import compare, earlier_results, read_sweep_dir


def tally(pairs: list, name: str, history: Path | None) -> dict:
    verdicts = pd.concat([compare(b, c, history=earlier_results(history, c) if history else None)
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
    args = p.parse_args()
    sweeps = {name: read_sweep_dir(args.root / name) for name in args.aa + args.slow}
    rows = [tally([(sweeps[a], sweeps[b]) for a, b in itertools.permutations(args.aa, 2)], "A/A, every ordered pair",
                  args.history)]
    rows += [tally([(sweeps[a], sweeps[s]) for a in args.aa], f"{s} against each A/A", args.history)
             for s in args.slow]
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
