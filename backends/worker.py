"""The process the launcher starts: `python -m backends.worker JOB_DIR`.

Reads the job (core/jobdir.py), loads the model with the job's backend, runs the shared measurement loop
and writes the result of its attempt (rank 0; the runner makes it the job's result). Every failure it can
catch becomes a result: out of memory is `oom`, anything else `error` with the exception's last line.
Its result records when each of its phases began (core/phases.py: imports, setup, load, warmup, measure,
write); the runner adds its own and turns them into phases_s.
"""
import time

STARTED = time.time()  # before the imports below: the start of the worker's `imports` phase

import os
import resource
import sys
import traceback
from pathlib import Path

import torch

from backends import load_backend_class, lookup, maxbatch
from backends.env import collect_env
from backends.hf import import_model_code
from backends.measure import measure, prompts, synchronize
from backends.profile import profile_generate
from backends.roofline import roofline, sweep_ceilings
from backends.synthetic import checkpoint_dir
from core.jobdir import (
    PHASE_FILE,
    SESSION_MARKER,
    STOP_FILE,
    SWEEP_FILE,
    Job,
    Result,
    new_result,
    read_job,
    session_job_file,
    write_attempt,
)

OOM_MESSAGES = ("out of memory", "can't allocate memory", "cublas_status_alloc_failed", "cannot allocate memory",
                "failed to allocate", "workspace can't be allocated")


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def exception_reason(exc: BaseException) -> str:
    """`Type: the message's first line`: a CUDA error's message puts the cause first and advice after
    it ("CUDA error: an illegal memory access ..." before "Compile with `TORCH_USE_CUDA_DSA` ...")."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[0]


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def limit_host_memory(gib: float) -> None:
    """Cap the address space at `gib` GiB above what the process already maps (RLIMIT_AS)."""
    import psutil

    mapped = psutil.Process().memory_info().vms
    limit = mapped + int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def make_backend(config: dict):
    cls = load_backend_class(lookup(config["backend"]["name"]))
    return cls(config, str(checkpoint_dir(config)))


def logits_probe(backend, config: dict, vocab: int, stream: int) -> dict:
    """Top-5 next-token logits after the first prompt of the stream: what two backends must agree on
    when they compute the same function (greedy ids from random weights degenerate and prove little)."""
    ids, mask = prompts(config, vocab, stream, backend.input_device())
    with torch.no_grad():
        logits = backend.model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1].float().cpu()
    top = torch.topk(logits, 5)
    return {"ids": top.indices.tolist(), "logits": [round(v, 5) for v in top.values.tolist()]}


def gather_ranks(fields: dict) -> dict:
    """Multi-rank jobs: every rank's own figures, gathered to rank 0. It is also the point where rank 0
    knows that every rank finished: a rank that failed never gets here, and the launcher kills the rest.

    Each rank allocates on its own device only (its GPU, or on the CPU its own process), and rank 0's
    allocator sees the other GPUs as empty: the peak per device is each rank's own, the job's their maximum."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {}
    mine = {"rank": rank(), "ms_per_token_per_stream": fields["ms_per_token_per_stream"],
            "peak_mem_gib": fields["peak_mem_gib"], "load_s": fields["load_s"],
            "prompt_logits_top5": fields["prompt_logits_top5"]}
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    per_device = [r["peak_mem_gib"] for r in ranks]
    return {"per_rank": ranks, "peak_mem_gib": max(per_device), "peak_mem_gib_per_device": per_device}


def job_ceilings(job: Job, job_dir: Path, device: torch.device) -> dict:
    """The device's bandwidth and matmul ceilings, measured once per sweep (backends/roofline.py): cached in
    the sweep directory (job.json's sweep_dir; a multirun job's parent holds sweep.json), else the job's."""
    sweep_dir = job.sweep_dir or (job_dir.parent if (job_dir.parent / SWEEP_FILE).exists() else job_dir)
    return sweep_ceilings(Path(sweep_dir), device, job.job, write=rank() == 0)


def search_max_batch(backend, config: dict, vocab: int, stream: int, fields: dict, phase) -> int:
    """batch_size=max: the largest batch that fits (backends/maxbatch.py), measured; the search, the size
    found and the size measured (max_batch_size) are recorded in `fields` with the measurement."""
    def fits(b: int) -> None:
        ids, mask = prompts({**config, "batch_size": b}, vocab, stream, backend.input_device())
        for _ in range(2):  # as in measure(): a generate starts before the previous one's memory is freed
            backend.generate(ids, mask, config["new_tokens"])
        synchronize()

    def measure_at(b: int) -> dict:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)  # peak_mem_gib: the measurement at the size found
        return measure(backend, {**config, "batch_size": b}, vocab, stream=stream, phase=phase,
                       telemetry=config["telemetry"] and rank() == 0)

    fields["max_batch_search"] = []  # filled try by try: a search that fails midway still shows its tries
    def on_try(t: dict) -> None:
        phase(f"searching the largest batch that fits: bs={t['batch_size']} {t['status']} ({t['s']:.1f} s)")

    found = maxbatch.search(fits, config["max_batch_cap"], is_oom, fields["max_batch_search"], on_try)
    fields.update(max_batch_found=found, max_batch_size=found)
    if found == 0:
        raise MemoryError("batch_size=max: not even batch size 1 fits (out of memory)")
    size, measured = maxbatch.measure_largest(measure_at, found, is_oom, fields["max_batch_search"])
    fields.update(measured, max_batch_size=size)
    return size


# The loaded backend and its load time; kept across jobs only when serving a session.
_loaded: dict = {}


def run(job: Job, job_dir: Path, serving: bool = False, picked_up: float | None = None) -> Result:
    """Measure `job`. Its phases begin with the worker's imports (STARTED) where it loads the model, else
    with the serving worker's pick-up of the job (picked_up)."""
    config = job.config

    def phase(text: str) -> None:
        if rank() == 0:
            with open(job_dir / PHASE_FILE, "a") as f:
                f.write(text + "\n")

    backend = _loaded.get("backend")
    loaded = backend is not None
    starts = {"setup": picked_up} if loaded else {"imports": STARTED}
    fields = {"phase_starts": starts}
    try:
        if not loaded:
            backend = make_backend(config)
            import_model_code(backend.checkpoint)
            starts["setup"] = time.time()
        fields["env"] = collect_env()
        if not loaded:
            fields["env"]["ceilings"] = job_ceilings(job, job_dir, backend.input_device())
            if config["host_mem_limit_gib"] is not None:
                limit_host_memory(config["host_mem_limit_gib"])
            if hasattr(backend, "prepare"):  # untimed: process group, files written once per checkpoint
                phase("preparing")
                backend.prepare()
            phase("loading")
            starts["load"] = time.time()
            start = time.perf_counter()
            backend.load()
            synchronize()
            _loaded.update(load_s=time.perf_counter() - start, first_job=job.job)
            if serving:
                _loaded["backend"] = backend
        fields["load_s"] = _loaded["load_s"]
        fields["model_loaded_by_job"] = _loaded["first_job"]
        fields["backend_info"] = backend.info
        vocab = backend.model.config.vocab_size
        # Distinct prompts per rank only where ranks generate distinct streams (ZeRO); tensor-parallel
        # ranks must all see the same batch.
        stream = rank() if backend.streams > 1 else 0
        if "ceilings" not in fields["env"]:  # serving: the model was loaded for an earlier job
            fields["env"]["ceilings"] = job_ceilings(job, job_dir, backend.input_device())
        starts["warmup"] = time.time()
        if config["batch_size"] == "max":
            phase("searching the largest batch that fits")
            config = {**config, "batch_size": search_max_batch(backend, config, vocab, stream, fields, phase)}
        else:
            fields.update(measure(backend, config, vocab, stream=stream, phase=phase,
                                  telemetry=config["telemetry"] and rank() == 0))
        if config["profile"]:
            phase("profiling")
            ids, mask = prompts(config, vocab, stream, backend.input_device())
            fields["profile"] = profile_generate(backend, ids, mask, config["new_tokens"], job_dir, rank())
        fields["roofline"] = roofline(backend.model, config, config["batch_size"], fields["decode_ms_per_step"],
                                      fields["env"]["ceilings"], backend.tp_size)
        fields["prompt_logits_top5"] = logits_probe(backend, config, vocab, stream)
        fields.update(gather_ranks(fields))
        starts["measure"] = starts["warmup"] + fields["warmup_s"]
        starts["write"] = time.time()
        return new_result(job, "ok", **fields)
    except BaseException as exc:  # noqa: BLE001 -- every failure must become a result
        starts["write"] = time.time()
        traceback.print_exc()
        fields["backend_info"] = backend.info if backend is not None else {}
        return new_result(job, "oom" if is_oom(exc) else "error", exception_reason(exc), **fields)
    finally:
        if backend is not None and not serving and hasattr(backend, "close"):
            backend.close()


def main(job_dir: Path, serving: bool = False, picked_up: float | None = None) -> int:
    """Measure the job of `job_dir`. With several ranks, rank 0 writes an `ok` result once every rank
    reported in (gather_ranks); a failed rank writes its own, unless another rank already did, so that the
    first rank to fail reports the job (OOM on rank 3 is the job's `oom`), not a peer that only saw it die."""
    job = read_job(job_dir)
    result = run(job, job_dir, serving, picked_up)
    if rank() == 0 or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and result.status != "ok"):
        write_attempt(job_dir, job.attempt, result)
    print(f"worker rank {rank()}: {result.status} {result.reason}", flush=True)
    return 0 if result.status == "ok" else 1


def serve(session_dir: Path) -> int:
    """Measure the jobs the runner hands over one by one (runner/session.py), the model loaded once.
    A job that does not end `ok` ends the session: its CUDA state, or its peers, cannot be trusted."""
    n = 0
    try:
        while True:
            path = session_job_file(session_dir, n)
            while not path.exists():
                if (session_dir / STOP_FILE).exists():
                    return 0
                time.sleep(0.05)
            code = main(Path(path.read_text()), serving=True, picked_up=time.time())
            if code != 0:
                return code
            n += 1
    finally:  # the shared model's own files (an offload folder) go with the session, as a job's go with it
        backend = _loaded.pop("backend", None)
        if backend is not None and hasattr(backend, "close"):
            backend.close()


if __name__ == "__main__":
    target = Path(sys.argv[-1])
    sys.exit(serve(target) if (target / SESSION_MARKER).exists() else main(target))
