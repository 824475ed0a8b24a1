"""batch_size=max: the largest batch that fits, found by search in the loaded model's process.

Doubling from 1 until a batch runs out of memory (or the cap is reached), then bisection between the
largest batch that fitted and the smallest that did not, until they are within 1/RESOLUTION of the first
(exact below RESOLUTION: a try at a large batch takes seconds, and an exact bisection's last steps would
cost minutes to move the answer by a few percent). A try is one full generate of `new_tokens`
tokens from `prompt_tokens`-token prompts (what the measurement then runs); memory is released between
tries. Every try is recorded: the search is part of the result.
"""
import gc
import time
from collections.abc import Callable

import torch

RESOLUTION = 32


def release_memory() -> None:
    """Free what a failed try left behind: the exception's frames hold its tensors until collected."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def search(fits: Callable[[int], None], cap: int, is_oom: Callable[[BaseException], bool], tried: list,
           on_try: Callable[[dict], None] = lambda t: None) -> int:
    """The largest batch size that fits (to the resolution above), or 0 where not even 1 does; each try is
    appended to `tried` ({batch_size, status ok|oom, s}) and passed to `on_try` as it ends.

    `fits(b)` runs batch size `b` and returns, or raises; an out-of-memory error (by `is_oom`) means it
    does not fit, any other error ends the search."""

    def attempt(b: int) -> bool:
        start, ok = time.perf_counter(), True
        try:
            fits(b)
        except Exception as exc:
            if not is_oom(exc):
                raise
            ok = False
        release_memory()
        tried.append({"batch_size": b, "status": "ok" if ok else "oom", "s": round(time.perf_counter() - start, 3)})
        on_try(tried[-1])
        return ok

    largest_ok, smallest_oom, b = 0, None, 1
    while smallest_oom is None:
        if not attempt(b):
            smallest_oom = b
        else:
            largest_ok = b
            if b >= cap:
                return largest_ok
            b = min(2 * b, cap)
    while smallest_oom - largest_ok > max(1, largest_ok // RESOLUTION):
        mid = (largest_ok + smallest_oom) // 2
        if attempt(mid):
            largest_ok = mid
        else:
            smallest_oom = mid
    return largest_ok


def measure_largest(measure_at: Callable[[int], dict], found: int, is_oom: Callable[[BaseException], bool],
                    tried: list, steps: int = 3) -> tuple:
    """(the batch size measured, its measurement): `found`, or, where measuring it runs out of memory (the
    allocator after the search is not a fresh process's: fragmentation, caches), a step down (7/8 of it,
    at least 1 less), at most `steps` times; each step is appended to `tried` with phase measure."""
    size = found
    for step in range(steps + 1):
        try:
            return size, measure_at(size)
        except Exception as exc:
            if not is_oom(exc) or step == steps or size == 1:
                raise
        release_memory()
        tried.append({"batch_size": size, "status": "oom", "phase": "measure"})
        size = min(size - 1, size * 7 // 8) if size > 8 else size - 1
    raise AssertionError("unreachable")
