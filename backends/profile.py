"""profile=true: one more generate after the measured ones, under torch.profiler, to see where a step's
time goes. Each rank writes its trace (open it in Perfetto or chrome://tracing) and its table of the
ops and kernels that took the most time into the job directory; the result keeps rank 0's total and
its top kernels (on a CPU: ops). The measured numbers never include the profiler's overhead."""
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from backends.measure import Backend, synchronize

TOP = 15  # rows kept in the result; the table file has 50


def profile_generate(backend: Backend, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, job_dir: Path,
                     rank: int) -> dict:
    on_gpu = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        backend.generate(ids, mask, new_tokens)
        synchronize()
    trace, table = job_dir / f"profile-rank{rank:03d}.json", job_dir / f"profile-rank{rank:03d}.txt"
    prof.export_chrome_trace(str(trace))
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"  # microseconds
    events = prof.key_averages()
    table.write_text(events.table(sort_by=key, row_limit=50))
    # On a GPU the kernels alone: an op's own device time repeats its kernels' (as torch's table total).
    counted = [e for e in events if not on_gpu or (e.device_type == DeviceType.CUDA and not e.is_user_annotation)]
    top = sorted(counted, key=lambda e: getattr(e, key), reverse=True)[:TOP]
    return {
        "trace": str(trace),
        "table": str(table),
        "sorted_by": key,
        "total_ms": round(sum(getattr(e, key) for e in counted) / 1000, 3),
        "top": [{"name": e.key, "calls": e.count, "ms": round(getattr(e, key) / 1000, 3)} for e in top],
    }
