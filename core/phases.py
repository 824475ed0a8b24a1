"""Where a job's wall time went: its phases, each recorded by when it began (unix seconds) and lasting until
the next one begins; the last ends when the runner writes the result.

    queued   the job handed to the runner (the previous job's end, the sweep's start for the first job, the
             runner process's start for a single job or one on a cluster node) to its launch: resume check,
             validation, the stack probe
    build    building a missing synthetic checkpoint (only when one was built)
    launch   the runner spawning the launcher (or handing the job to a shared worker) to the worker process
             starting: the launcher's own imports and start-up
    imports  the worker's imports: torch, transformers, the backend and the model's modelling code (only
             in a worker's first job)
    setup    the environment record, the device ceilings, the backend's prepare
    load     the model load (load_s; only in the job that loaded it)
    warmup   the first generate (warmup_s)
    measure  the timed generates, the prefill, the latency passes, a batch_size=max search, profiling, the
             probes: until the worker's result is complete
    write    the worker writing its result, the launcher ending, the runner writing result.json

A job that failed stops at the phase it failed in (then write); one never launched has only queued.
The overhead share of a job is the share of its wall time (the sum of its phases) outside load, warmup
and measure.
"""

PHASES = ("queued", "build", "launch", "imports", "setup", "load", "warmup", "measure", "write")
WORK = ("load", "warmup", "measure")


def durations(starts: dict, end: float) -> dict:
    """{phase: seconds}, in PHASES order, from {phase: start time} and the end of the last phase."""
    names = [p for p in PHASES if p in starts]
    bounds = [starts[p] for p in names] + [end]
    return {p: round(bounds[i + 1] - bounds[i], 4) for i, p in enumerate(names)}


def overhead_share(phases_s: dict) -> float | None:
    """The share of the wall time `phases_s` adds up to that is not load, warmup or measure; None for none."""
    wall = sum(phases_s.values())
    if wall <= 0:
        return None
    return round(1 - sum(phases_s.get(p, 0.0) for p in WORK) / wall, 4)


def total(runs: list) -> dict:
    """The seconds of each phase over several job runs' phases_s, in PHASES order."""
    sums = {p: sum(r.get(p, 0.0) for r in runs) for p in PHASES}
    return {p: s for p, s in sums.items() if any(p in r for r in runs)}
