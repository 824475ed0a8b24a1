"""Change points over the history: `python -m analysis trend` on histories built to known series."""
from pathlib import Path

import numpy as np
from test_analysis_verdict import analysis_main, make_sweep, table_rows, write_sweep
from test_verdict_rules import RECORDED, h200_sweep

from analysis.trend import step_starts

GIT_REVS = ("8ff5182", "1a2b3c4")


def history_with(tmp_path: Path, levels: list, noise: float = 0.02, envs: list | None = None, seed: int = 0) -> Path:
    """A history of one-round sweeps s00, s01, ... whose bs 1, 8 and 64 points sit at `levels[i]` ms/token
    times `noise` between sweeps; envs[i] is added to sweep i's env."""
    rng = np.random.default_rng(seed)
    dirs = [write_sweep(tmp_path, make_sweep(f"s{i:02d}", rng, ms=level, noise=noise, rounds=1,
                                             started=f"2026-01-{i + 1:02d}T00:00:00+00:00",
                                             env=envs[i] if envs else None))
            for i, level in enumerate(levels)]
    history = tmp_path / "h.sqlite"
    assert analysis_main("history", "--add", *dirs, history=history)[0] == 0
    return history


def trend(tmp_path: Path, history: Path) -> tuple[int, list[dict], str]:
    """Exit status, change-point rows and output of `python -m analysis trend` on `history`."""
    code, out, err = analysis_main("trend", "--out", tmp_path / "charts", history=history)
    assert code in (0, 1), err
    assert (tmp_path / "charts" / "trend_ms_per_token.png").read_bytes().startswith(b"\x89PNG")
    return code, table_rows(out), out


def test_a_planted_step_in_12_sweeps_is_found_at_the_right_sweep(tmp_path):
    # 30% slower from sweep s07 on, where torch and the project's revision changed.
    envs = [{"torch": "2.13.0" if i < 7 else "2.14.0", "git_rev": GIT_REVS[i >= 7]} for i in range(12)]
    history = history_with(tmp_path, [10.0] * 7 + [13.0] * 5, envs=envs)
    code, rows, out = trend(tmp_path, history)
    assert code == 1, out
    assert [(r["first sweep after"], r["sweep before"], r["step"]) for r in rows] == \
        [("`s07`", "`s06`", "**slower**, holds now")] * 3
    assert all(1.25 < float(r["ratio after/before"]) < 1.35 for r in rows)
    assert {r["what changed"] for r in rows} == {"git_rev 8ff5182 -> 1a2b3c4; torch 2.13.0 -> 2.14.0"}


def test_a_step_is_found_past_an_outlier_sweep(tmp_path):
    levels = [10.0] * 7 + [13.0] * 5
    levels[3] = 25.0
    code, rows, out = trend(tmp_path, history_with(tmp_path, levels))
    assert code == 1 and {r["first sweep after"] for r in rows} == {"`s07`"}, out


def test_a_single_outlier_sweep_is_not_a_change_point(tmp_path):
    # One sweep 3x slower amid 11 at one level, and the newest sweep 2x slower alone: neither is a level.
    levels = [10.0] * 12
    levels[5], levels[11] = 30.0, 20.0
    code, rows, out = trend(tmp_path, history_with(tmp_path, levels))
    assert code == 0 and rows == [] and "No change point." in out


def test_a_step_held_for_two_sweeps_counts_and_a_step_back_ends_the_regression(tmp_path):
    code, rows, _ = trend(tmp_path / "two", history_with(tmp_path / "two", [10.0] * 10 + [13.0] * 2))
    assert code == 1 and {r["first sweep after"] for r in rows} == {"`s10`"}

    code, rows, _ = trend(tmp_path / "back", history_with(tmp_path / "back", [10.0] * 4 + [13.0] * 4 + [10.0] * 4))
    assert code == 0
    assert sorted({(r["first sweep after"], r["step"]) for r in rows}) == [("`s04`", "**slower**"),
                                                                          ("`s08`", "faster, holds now")]


def test_h200_noise_shows_a_change_point_in_at_most_one_series_in_20():
    # 12-sweep series of the recorded H200 one-process figures (drawn with replacement): pure noise.
    rng = np.random.default_rng(0)
    series = [rng.choice(RECORDED[:, i % 3], 12) for i in range(300)]
    assert sum(bool(step_starts(s, 0.05)) for s in series) / len(series) <= 0.05


def test_h200_aa_history_exits_0(tmp_path):
    # The five recorded one-process figures of each batch size, in turn, as a history of 12 sweeps.
    dirs = [write_sweep(tmp_path, h200_sweep(f"s{i:02d}", [[v] for v in RECORDED[i % 5]],
                                             f"2026-01-{i + 1:02d}T00:00:00+00:00")) for i in range(12)]
    history = tmp_path / "h.sqlite"
    assert analysis_main("history", "--add", *dirs, history=history)[0] == 0
    assert trend(tmp_path, history)[0] == 0


def test_trend_of_unknown_hardware_or_no_history_is_bad_input(tmp_path):
    history = history_with(tmp_path, [10.0] * 4)
    code, _, err = analysis_main("trend", "--hardware", "8x B200", "--out", tmp_path, history=history)
    assert code == 2 and err.count("\n") == 1 and "'8x B200'" in err and "cpu@ci" in err
    code, _, err = analysis_main("trend", "--out", tmp_path, history=tmp_path / "none.sqlite")
    assert code == 2 and "no history" in err and not (tmp_path / "none.sqlite").exists()
