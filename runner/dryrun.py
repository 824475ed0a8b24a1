"""dry_run=true: what a sweep would do, read from its job directories and the history, with nothing launched
and nothing written (no sweep directory, lock, sweep.json, checkpoint or history entry).

Each job is one of
    done       its directory holds a finished result that the run keeps (`rerun`), every round measured
    resumable  its directory holds work of this measurement that the run takes up: rounds measured, fewer
               than `rounds`; an earlier run's result that `rerun` runs again (error, timeout); or an
               attempt that ended before its result (an interrupted runner)
    new        nothing of this measurement is there (a corrupt result, or another config's, is set aside
               when the job runs)
    invalid    refused before launch, with the reason (runner/validate.py)
and the time of the jobs that would run is estimated from the history: the median seconds of a round of the
same measurement (analysis.history.round_seconds), times the rounds each job lacks.
"""
from pathlib import Path

from core.jobdir import attempts, read_lease
from core.rounds import rounds_done
from runner.callbacks import bad_input
from runner.job import earlier_result, finished_result
from runner.progress import clock, job_label
from runner.stack import interpreter, probe, visible_gpus
from runner.validate import invalid_reason

STATES = ("new", "done", "resumable", "invalid")


def job_state(job_dir: Path, config: dict) -> tuple[str, str, int]:
    """(state, why, how many rounds the run would launch) of one job (the states: the module's docstring)."""
    rounds = config["rounds"]
    kept, _, _ = finished_result(job_dir, config, None, move=False)
    if kept is not None:
        measured = rounds_done(kept)
        if kept.status != "ok" or measured >= rounds:
            return "done", f"{kept.status}, kept", 0
        return "resumable", f"{measured} of {rounds} rounds measured", rounds - measured
    reason = invalid_reason(config, probe(interpreter(config["stack"])), visible_gpus())
    if reason:
        return "invalid", reason, 0
    found, why = earlier_result(job_dir, config, move=False)
    if found is not None:
        return "resumable", f"earlier result was {found.status}: rerun={config['rerun']} runs it again", rounds
    if why:
        return "new", why, rounds
    if attempts(job_dir) or read_lease(job_dir):
        return "resumable", "an earlier attempt ended before its result: it runs again", rounds
    return "new", "", rounds


def print_plan(jobs: list[tuple[dict, Path]], history: Path) -> None:
    """One line per job (its number, label and state), the count of each state, and the estimate. A history
    that cannot be read is bad input (exit 2), as it is for a real run."""
    from analysis.history import round_seconds

    states = [job_state(job_dir, config) for config, job_dir in jobs]
    running = [(config, rounds) for (config, _), (_, _, rounds) in zip(jobs, states) if rounds]
    try:
        seconds = round_seconds(history, [config for config, _ in running])
    except ValueError as e:
        bad_input(str(e))
    for number, ((config, _), (state, why, _)) in enumerate(zip(jobs, states)):
        print(f"#{number} {job_label({**config, 'rounds': 1})}: {state}" + (f" ({why})" if why else ""))
    counts = [sum(s == state for s, _, _ in states) for state in STATES]
    print("plan: " + ", ".join(f"{n} {state}" for n, state in zip(counts, STATES)) + "; nothing launched")
    if not running:
        print("estimate: nothing to run")
        return
    known = [s * rounds for (_, rounds), s in zip(running, seconds) if s is not None]
    total = sum(known)
    line = f"estimate: {len(known)} of {len(running)} jobs known from history"
    if known:
        line += f", ~{total:.0f} s" + (f" ({clock(total)})" if total >= 60 else "")
    print(line + (f"; {len(running) - len(known)} unknown" if len(known) < len(running) else ""))
