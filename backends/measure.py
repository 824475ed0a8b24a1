"""The measurement loop every backend shares: seeded prompts, one warm-up, `repeats` timed generates.

Metric definitions (docs/architecture.md):
  ms_per_token       wall time of one generate / (batch_size * new_tokens), median over repeats
  ttft_ms            one forward over the prompt batch giving the first token (a generate of 1 token)
  decode_ms_per_step (generate time - ttft) / (new_tokens - 1): one step for the whole batch
  tokens_per_s       generated tokens per second, over all streams (ranks) that generate at once
"""
import resource
import statistics
import time
from collections.abc import Callable
from typing import Protocol

import torch


class Backend(Protocol):
    info: dict  # what actually ran (placement, kernels...), recorded in the result
    streams: int  # independent generate streams running at once (ZeRO: one per rank)
    tp_size: int  # ranks one copy of the model is split over (the roofline counts one rank's weights)

    def load(self) -> None: ...

    def input_device(self) -> torch.device: ...

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor: ...


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


def measure(backend: Backend, config: dict, vocab_size: int, stream: int, phase: Callable[[str], None]) -> dict:
    bs, new_tokens, repeats = config["batch_size"], config["new_tokens"], config["repeats"]
    ids, mask = prompts(config, vocab_size, stream, backend.input_device())
    reset_peak_memory()

    phase("warm-up")
    warmup_s, out = timed(lambda: backend.generate(ids, mask, new_tokens))
    if out.shape != (bs, ids.shape[1] + new_tokens):
        raise RuntimeError(f"generate returned shape {tuple(out.shape)}, expected {(bs, ids.shape[1] + new_tokens)}")

    generate_s = []
    for k in range(repeats):
        phase(f"repeat {k + 1}/{repeats}")
        generate_s.append(timed(lambda: backend.generate(ids, mask, new_tokens))[0])
    phase("prefill")
    ttft_s = statistics.median(timed(lambda: backend.generate(ids, mask, 1))[0] for _ in range(repeats))

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
    }
