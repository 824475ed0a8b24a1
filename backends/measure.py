"""The measurement loop every backend shares: seeded prompts, one warm-up, `repeats` timed generates
(with telemetry, backends/telemetry.py), `repeats` prefills, then `repeats` latency passes.

Metric definitions (docs/architecture.md):
  ms_per_token       wall time of one generate / (batch_size * new_tokens), median over repeats
  ttft_ms            one forward over the prompt batch giving the first token (a generate of 1 token)
  decode_ms_per_step (generate time - ttft) / (new_tokens - 1): one step for the whole batch
  tokens_per_s       generated tokens per second, over all streams (ranks) that generate at once
  energy_j_per_token GPU energy of a timed repeat (every GPU of the job, summed) / the tokens it generated
                     (every stream's), median over repeats; null without NVML (telemetry.gpu.reason says why)
  latency            from the latency passes, separate generates after the timed ones in which a streamer
                     synchronises the GPUs and reads the clock at every step (the timed repeats never
                     synchronise inside a generate): ttft_ms.p50/p90/p99 from the call to the first new
                     token, itl_ms.p50/p90/p99 between successive tokens (one step of the whole batch),
                     over every pass; tokens_per_s_per_stream (one sequence: new_tokens / generate time) and
                     tokens_per_s from the timed repeats' median; samples: how many of each
"""
import itertools
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import closing
from typing import Protocol

import numpy as np
import torch

from backends.telemetry import Telemetry


class Backend(Protocol):
    info: dict  # what actually ran (placement, kernels...), recorded in the result
    streams: int  # independent generate streams running at once (ZeRO: one per rank)
    tp_size: int  # ranks one copy of the model is split over (the roofline counts one rank's weights)

    def load(self) -> None: ...

    def input_device(self) -> torch.device: ...

    # streamer: None, or an object whose put(ids) is called with the prompt and then with each step's
    # new tokens, and end() once at the end (transformers' streamer protocol, as HF generate calls it)
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                 streamer=None) -> torch.Tensor: ...


def synchronize() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def prompts(config: dict, vocab_size: int, stream: int, device: torch.device) -> tuple:
    """Seeded random prompt ids (batch_size x prompt_tokens) and their attention mask; one stream each."""
    g = torch.Generator().manual_seed(config["seed"] * 1000 + stream)
    ids = torch.randint(4, vocab_size, (config["batch_size"], config["prompt_tokens"]), generator=g)
    return ids.to(device), torch.ones_like(ids).to(device)


def timed(fn: Callable) -> tuple:
    synchronize()
    start = time.perf_counter()
    out = fn()
    synchronize()
    return time.perf_counter() - start, out


class StepClock:
    """A streamer that synchronises the GPUs and reads the clock at every put(): the first put is the
    prompt, each later one a step's new tokens."""

    def __init__(self):
        self.times: list = []

    def put(self, value: torch.Tensor) -> None:
        synchronize()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def percentiles(values: list) -> dict:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def latency_passes(backend: Backend, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, passes: int) -> dict:
    """TTFT and inter-token latency (ms) of `passes` generates timed step by step (StepClock)."""
    ttft, itl = [], []
    for _ in range(passes):
        clock = StepClock()
        synchronize()
        start = time.perf_counter()
        backend.generate(ids, mask, new_tokens, streamer=clock)
        steps = clock.times[1:]  # the first put is the prompt
        if len(steps) != new_tokens:
            raise RuntimeError(f"the streamer saw {len(steps)} steps of a generate of {new_tokens} tokens")
        ttft.append((steps[0] - start) * 1000)
        itl += [(b - a) * 1000 for a, b in itertools.pairwise(steps)]
    return {"ttft_ms": percentiles(ttft), "itl_ms": percentiles(itl) if itl else None,
            "samples": {"ttft": len(ttft), "itl": len(itl)}}


def gpu_uuids() -> list:
    """NVML's ids of the GPUs this process uses: all that torch sees (the launcher narrowed them to the job's)."""
    if not torch.cuda.is_available():
        return []
    uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]
    return [u if u.startswith(("GPU-", "MIG-")) else f"GPU-{u}" for u in uuids]


def reset_peak_memory() -> None:
    """Start this job's GPU peak afresh (a shared worker has measured other batch sizes before)."""
    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)


def peak_memory_gib() -> list:
    """Peak memory per GPU since reset_peak_memory() (the resident weights included); without a GPU, the
    process's peak resident set, which cannot be reset (in a shared worker: the peak of all its jobs)."""
    if torch.cuda.is_available():
        return [round(torch.cuda.max_memory_allocated(i) / 2**30, 3) for i in range(torch.cuda.device_count())]
    return [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)]


def measure(backend: Backend, config: dict, vocab_size: int, stream: int, phase: Callable[[str], None],
            telemetry: bool = False) -> dict:
    """The job's figures (see the module docstring). telemetry: sample the GPUs and the host during the
    timed repeats (one rank of a job does; the others' fields are null)."""
    bs, new_tokens, repeats = config["batch_size"], config["new_tokens"], config["repeats"]
    ids, mask = prompts(config, vocab_size, stream, backend.input_device())
    reset_peak_memory()

    phase("warm-up")
    warmup_s, out = timed(lambda: backend.generate(ids, mask, new_tokens))
    if out.shape != (bs, ids.shape[1] + new_tokens):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(bs, ids.shape[1] + new_tokens)}")

    generate_s = []
    with closing(Telemetry(gpu_uuids() if telemetry else [], enabled=telemetry)) as monitor:
        for k in range(repeats):
            phase(f"repeat {k + 1}/{repeats}")
            monitor.begin()
            generate_s.append(timed(lambda: backend.generate(ids, mask, new_tokens))[0])
            monitor.end(tokens=bs * new_tokens * backend.streams)
    phase("prefill")
    ttft_s = statistics.median(timed(lambda: backend.generate(ids, mask, 1))[0] for _ in range(repeats))
    phase("latency")
    latency = latency_passes(backend, ids, mask, new_tokens, repeats)

    per_token = [s * 1000 / (bs * new_tokens) for s in generate_s]
    median_s = statistics.median(generate_s)
    stream_ms = statistics.median(per_token)
    peak = peak_memory_gib()
    return {
        "warmup_s": warmup_s,
        "generate_s": generate_s,
        "ms_per_token": stream_ms / backend.streams,
        "ms_per_token_min": min(per_token) / backend.streams,
        "ms_per_token_max": max(per_token) / backend.streams,
        "ms_per_token_per_stream": stream_ms,
        "streams": backend.streams,
        "tokens_per_s": bs * new_tokens * backend.streams / median_s,
        "ttft_ms": ttft_s * 1000,
        "decode_ms_per_step": (median_s - ttft_s) * 1000 / (new_tokens - 1) if new_tokens > 1 else None,
        "peak_mem_gib": max(peak),
        "peak_mem_gib_per_device": peak,
        "output_tail_ids": out[0, -min(new_tokens, 8):].tolist(),
        **monitor.fields(),
        "latency": {**latency, "tokens_per_s_per_stream": new_tokens / median_s,
                    "tokens_per_s": bs * new_tokens * backend.streams / median_s},
    }
