"""A CPU load at a fixed duty cycle on given cores: one busy process per core, busy for `duty` of every
period and asleep for the rest. The verdict campaign (scripts/verdict-campaign.sh) runs a sweep pinned to
the same cores beside it, to slow host-bound points for real by a known means.

    python benchmarks/cpu_hog.py --cores 4-7 --duty 0.3 --seconds 600
"""
import argparse
import ctypes
import os
import signal
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def cores(text: str) -> list:
    """"4-7" or "4,5,6" as a list of core ids."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def die_with(parent: int) -> None:
    """End this process when `parent` ends, however it ends (the campaign stops the load with `kill` of the
    parent alone: without this, the busy children went on loading the cores under every later sweep)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the request was made
        os._exit(0)


def hog(core: int, duty: float, period_s: float, until: float) -> None:
    os.sched_setaffinity(0, {core})
    while time.monotonic() < until:
        start = time.monotonic()
        while time.monotonic() - start < duty * period_s:
            pass
        time.sleep(max(0.0, period_s * (1 - duty)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", required=True, help="cores to load, e.g. 4-7")
    p.add_argument("--duty", type=float, required=True, help="busy share of each period, 0..1")
    p.add_argument("--period-ms", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = p.parse_args()
    until = time.monotonic() + args.seconds
    children, parent = [], os.getpid()
    for core in cores(args.cores):
        pid = os.fork()
        if pid == 0:
            die_with(parent)
            hog(core, args.duty, args.period_ms / 1000, until)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
