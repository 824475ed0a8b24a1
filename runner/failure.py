"""Why a job's processes ended without a result, read from what they wrote to the job's log."""
import re
import signal

SIGNAL_DEATHS = (
    re.compile(r"died with <Signals\.(SIG[A-Z0-9]+): \d+>"),  # accelerate launch (CalledProcessError)
    re.compile(r"exits with return code = -(\d+)"),  # the deepspeed launcher, for the first rank that failed
)
FATAL_ERROR = re.compile(r"^Fatal Python error: (.+)$", re.MULTILINE)  # faulthandler (PYTHONFAULTHANDLER=1)
LAUNCHER_EXCEPTIONS = ("subprocess.CalledProcessError",)


def _signal_name(number: str) -> str:
    try:
        return signal.Signals(int(number)).name
    except ValueError:
        return f"signal {number}"


def exception_lines(text: str) -> list:
    """The final line of every Python traceback in `text` (the exception, as Python prints it last)."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last):"):
            i += 1
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
                i += 1
            if i < len(lines):
                found.append(lines[i].strip())
        i += 1
    return found


def signal_death(text: str) -> str | None:
    """`killed by SIGKILL` when a launcher's output says that a worker or rank died of a signal (with
    faulthandler's words for a fatal one: `killed by SIGSEGV (Segmentation fault)`), else None."""
    for pattern in SIGNAL_DEATHS:
        match = pattern.search(text)
        if match:
            name = match.group(1) if match.group(1).startswith("SIG") else _signal_name(match.group(1))
            fatal = FATAL_ERROR.search(text)
            return f"killed by {name}" + (f" ({fatal.group(1).strip()})" if fatal else "")
    return None


def failure_reason(text: str, rc: int) -> str:
    """Why a job's processes ended without a result, from what this attempt wrote to its log: the signal
    that killed a worker or rank, else the last line of the worker's own exception (not the launcher's
    report of its exit), else the exit code and the last line."""
    death = signal_death(text)
    if death:
        return death
    if rc < 0:
        return f"launcher killed by {_signal_name(str(-rc))}"
    exceptions = [line for line in exception_lines(text) if not line.startswith(LAUNCHER_EXCEPTIONS)]
    if exceptions:
        return exceptions[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"exit code {rc}: {lines[-1] if lines else 'no output'}"
