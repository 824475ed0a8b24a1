"""A point measured in rounds (`rounds=R`): one worker process per round, each round's figures kept in the
result's `rounds` list, the point's ms_per_token the median over its rounds.

Between processes minutes apart a GPU machine drifts far more than between the repeats inside one
process, so the round (a process) is the unit a verdict counts (analysis/compare.py). Every other
measured field of the result (ttft, decode step, roofline, memory, env, ...) is that of the round whose
ms_per_token is nearest the median: a consistent set from one process.
"""
import statistics
from datetime import datetime, timezone

from core.jobdir import Result

# The per-round figures a round entry keeps (beside round, status, started, ended, host).
ROUND_FIELDS = ("ms_per_token", "ms_per_token_min", "ms_per_token_max", "generate_s", "load_s", "warmup_s",
                "ttft_ms", "decode_ms_per_step", "tokens_per_s", "peak_mem_gib", "energy_j_per_token", "phases_s",
                "overhead_share")


def round_entry(result: Result, number: int, started: float) -> dict:
    """What one round adds to the point: its status, when it ran and its own figures."""
    return {"round": number, "status": result.status, "reason": result.reason,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "ended": result.timestamp, "host": (result.get("env") or {}).get("hostname"),
            **{k: result.get(k) for k in ROUND_FIELDS}}


def rounds_of(result: Result | None) -> list:
    """The point's rounds so far; a result measured before rounds existed (no `rounds`) is its round 1."""
    if result is None:
        return []
    if "rounds" in result.fields:
        return list(result.get("rounds"))
    return [{"round": 1, "status": result.status, "reason": result.reason, "started": result.timestamp,
             "ended": result.timestamp, "host": (result.get("env") or {}).get("hostname"),
             **{k: result.get(k) for k in ROUND_FIELDS}}]


def rounds_done(result: Result | None) -> int:
    """Rounds of the point that measured it (status ok)."""
    return sum(1 for r in rounds_of(result) if r["status"] == "ok")


def add_round(previous: Result | None, new: Result, number: int, started: float) -> Result:
    """The point's result once round `number` (its outcome `new`) is added to the rounds before it.

    A first round, or one after rounds that measured nothing, is the point's result as it stands. A round
    that fails after rounds that measured the point is kept in `rounds` with its status and reason, and the
    point stays as those rounds measured it (one flaky process does not erase them; resume runs the round
    again under rerun=failed)."""
    entry = round_entry(new, number, started)
    earlier = [r for r in rounds_of(previous) if r["round"] != number]
    if previous is None or previous.status != "ok" or rounds_done(previous) == 0:
        new.fields["rounds"] = earlier + [entry]
        return new
    if new.status != "ok":
        previous.fields["rounds"] = earlier + [entry]
        return previous
    rounds = sorted(earlier + [entry], key=lambda r: r["round"])
    measured = [r for r in rounds if r["status"] == "ok"]
    median = statistics.median(r["ms_per_token"] for r in measured)
    nearest = min(measured, key=lambda r: (abs(r["ms_per_token"] - median), r["round"]))
    point = new if nearest is entry else previous
    point.fields.update(rounds=rounds, ms_per_token=median,
                        generate_s=[s for r in measured for s in r["generate_s"]],
                        ms_per_token_min=min(r["ms_per_token_min"] for r in measured),
                        ms_per_token_max=max(r["ms_per_token_max"] for r in measured),
                        round_of_fields=nearest["round"])
    point.timestamp, point.config = new.timestamp, new.config
    return point
