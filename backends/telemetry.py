"""GPU and host telemetry of the timed repeats: result fields `telemetry` and `energy_j_per_token`.

GPU, through NVML (nvidia-ml-py, imported as pynvml), for the GPUs the worker uses:

- energy: the driver's energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded),
  read just before and just after each timed repeat, so that nothing between two samples is missed;
  divided by the tokens the repeat generated (every stream's) it is J per token, per GPU and summed;
- power, SM and memory clock, temperature, utilisation and the clock-event (throttle) reasons, sampled
  every INTERVAL_S by a background thread that makes NVML calls only (no torch, nothing on the GPU), plus
  one sample at each end of a repeat.

Host, through psutil, per repeat: the worker's CPU time and involuntary context switches, the CPU
frequency (mean of the readings at both ends), the 1-minute load average at its end, and the CPU share of
other processes: the machine's busy CPU time less that of the job's ranks, over all its CPU time.

A figure of the job is the median over its repeats (the pooled samples for the GPU's means, minima and
maxima). Without NVML, a GPU or a counter, the field is null and `gpu.reason` (or `gpu.unsupported`) says why.
"""
import os
import statistics
import threading
import time

import psutil

INTERVAL_S = 0.02

# NVML's clock-event (throttle) reason bits (nvml.h, nvmlClocksEventReason*), by the names NVML gives them.
REASONS = ((0x1, "GpuIdle"), (0x2, "ApplicationsClocksSetting"), (0x4, "SwPowerCap"), (0x8, "HwSlowdown"),
           (0x10, "SyncBoost"), (0x20, "SwThermalSlowdown"), (0x40, "HwThermalSlowdown"),
           (0x80, "HwPowerBrakeSlowdown"), (0x100, "DisplayClockSetting"), (0x200, "BoardLimit"),
           (0x400, "Reliability"))
# What one sample holds per GPU, in this order (power in W, clocks in MHz, temperature in C, utilisation in %).
SAMPLED = ("power_w", "sm_clock_mhz", "mem_clock_mhz", "temperature_c", "utilization_pct", "reasons")


def reason_names(mask: int) -> list:
    """The names of the reason bits set in `mask`, in NVML's order; an unknown bit as hex."""
    known = [name for bit, name in REASONS if mask & bit]
    rest = mask & ~sum(bit for bit, _ in REASONS)
    return known + ([hex(rest)] if rest else [])


def _readers(nvml) -> dict:
    """One NVML call per sampled quantity, each a function of a device handle."""
    events = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return {
        "power_w": lambda h: nvml.nvmlDeviceGetPowerUsage(h) / 1000,
        "sm_clock_mhz": lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda h: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
        "temperature_c": lambda h: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
        "utilization_pct": lambda h: nvml.nvmlDeviceGetUtilizationRates(h).gpu,
        "reasons": events,
    }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # bytes from nvidia-ml-py before 11.5


def _mean(values: list) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ordered(names: set) -> list:
    """Reason names in NVML's bit order, unknown bits (hex) last."""
    return [name for _, name in REASONS if name in names] + sorted(n for n in names if n.startswith("0x"))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def gpu_stats(samples: list) -> dict:
    """Means, minima and maxima of one GPU's samples (dicts keyed by SAMPLED; a quantity the GPU does not
    report is None in every sample)."""
    def column(name: str) -> list:
        return [s[name] for s in samples if s[name] is not None]

    power, sm = column("power_w"), column("sm_clock_mhz")
    reasons = {name for mask in column("reasons") for name in reason_names(mask)}
    return {"power_w_mean": _rounded(_mean(power)), "power_w_max": _rounded(max(power, default=None)),
            "sm_clock_mhz_mean": _rounded(_mean(sm)), "sm_clock_mhz_min": min(sm, default=None),
            "mem_clock_mhz_mean": _rounded(_mean(column("mem_clock_mhz"))),
            "temperature_c_max": max(column("temperature_c"), default=None),
            "utilization_pct_mean": _rounded(_mean(column("utilization_pct"))),
            "throttle_reasons": _ordered(reasons), "samples": len(samples)}


def job_gpu_stats(per_gpu: list) -> dict:
    """The job's figures from its GPUs' own (gpu_stats): means over the GPUs, the lowest minimum, the
    highest maximum, every throttle reason any GPU reported."""
    def values(key: str) -> list:
        return [g[key] for g in per_gpu if g[key] is not None]

    return {"power_w_mean": _rounded(_mean(values("power_w_mean"))), "power_w_max": max(values("power_w_max"), default=None),
            "sm_clock_mhz_mean": _rounded(_mean(values("sm_clock_mhz_mean"))),
            "sm_clock_mhz_min": min(values("sm_clock_mhz_min"), default=None),
            "mem_clock_mhz_mean": _rounded(_mean(values("mem_clock_mhz_mean"))),
            "temperature_c_max": max(values("temperature_c_max"), default=None),
            "utilization_pct_mean": _rounded(_mean(values("utilization_pct_mean"))),
            "throttle_reasons": _ordered({name for g in per_gpu for name in g["throttle_reasons"]})}


class GpuMonitor:
    """NVML on the GPUs named by `uuids` (NVML's "GPU-..." ids): a sampler thread, and the energy counters
    read at each end of a repeat. `reason` says why there is no GPU telemetry (None when there is)."""

    def __init__(self, uuids: list):
        self.handles, self.readers, self.unsupported, self.reason = [], {}, {}, None
        self.names: list = []
        self._current: list | None = None  # the running repeat's samples; None between repeats
        self._stop = threading.Event()
        self._thread = None
        if not uuids:
            self.reason = "no GPU in use (the worker sees none)"
            return
        try:
            import pynvml as nvml

            nvml.nvmlInit()
        except ImportError:
            self.reason = "pynvml (nvidia-ml-py) is not installed"
            return
        except Exception as e:  # noqa: BLE001 -- pynvml's NVMLError_* of a missing library or driver
            self.reason = f"NVML unavailable: {e}"
            return
        self.nvml = nvml
        try:
            self.handles = [nvml.nvmlDeviceGetHandleByUUID(u) for u in uuids]
            self.names = [_text(nvml.nvmlDeviceGetName(h)) for h in self.handles]
        except nvml.NVMLError as e:
            self.reason, self.handles = f"NVML does not know the GPUs {uuids}: {e}", []
            nvml.nvmlShutdown()
            return
        self._pooled: list = [[] for _ in self.handles]  # every repeat's samples, per GPU
        self.readers = {"energy_mj": nvml.nvmlDeviceGetTotalEnergyConsumption, **_readers(nvml)}
        for name, read in list(self.readers.items()):
            try:
                for h in self.handles:
                    read(h)
            except nvml.NVMLError as e:
                self.unsupported[name] = str(e)
                del self.readers[name]
        self._energy = self.readers.pop("energy_mj", None)
        self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
        self._thread.start()

    def _sample(self) -> list:
        return [{name: (self.readers[name](h) if name in self.readers else None) for name in SAMPLED}
                for h in self.handles]

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            samples = self._current
            if samples is not None:
                try:
                    samples.append(self._sample())
                except self.nvml.NVMLError:  # a transient failure: the sample is missed, not the repeat
                    pass

    def _energy_mj(self) -> list:
        return [self._energy(h) for h in self.handles] if self._energy else [None] * len(self.handles)

    def begin(self) -> None:
        if self.handles:
            self._start_mj = self._energy_mj()
            self._current = [self._sample()]

    def end(self, tokens: int) -> dict | None:
        """The repeat's figures per GPU (gpu_stats plus energy_j and energy_j_per_token), or None."""
        if not self.handles:
            return None
        samples, self._current = self._current, None
        samples = [*samples, self._sample()]
        for i, pooled in enumerate(self._pooled):
            pooled.extend(s[i] for s in samples)
        joules = [None if a is None else (b - a) / 1000 for a, b in zip(self._start_mj, self._energy_mj())]
        return {"per_gpu": [{**gpu_stats([s[i] for s in samples]), "energy_j": j,
                             "energy_j_per_token": None if j is None else j / tokens}
                            for i, j in enumerate(joules)]}

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.nvml.nvmlShutdown()
            self._thread = None

    def summary(self, repeats: list) -> dict:
        """The job's `telemetry.gpu` from its repeats' end() figures: each GPU's stats over every repeat's
        samples pooled, its J per token the median over the repeats, and the job's figures over its GPUs."""
        if self.reason:
            return {"reason": self.reason, "per_gpu": [], "energy_j_per_token_per_gpu": [], **job_gpu_stats([])}
        per_gpu = [{"index": i, "name": name, **gpu_stats(self._pooled[i]),
                    "energy_j_per_token": _median([r["per_gpu"][i]["energy_j_per_token"] for r in repeats])}
                   for i, name in enumerate(self.names)]
        return {"reason": None, "unsupported": self.unsupported, "interval_s": INTERVAL_S, "per_gpu": per_gpu,
                "energy_j_per_token_per_gpu": [g["energy_j_per_token"] for g in per_gpu], **job_gpu_stats(per_gpu)}


# ---------------------------------------------------------------------------------------------------
# Host


def _job_processes() -> list:
    """This worker and the other ranks of its job: its launcher's children that run the same command."""
    me = psutil.Process()
    try:
        parent = me.parent()
        ranks = [p for p in parent.children() if p.pid != me.pid and p.cmdline() == me.cmdline()] if parent else []
    except psutil.Error:
        ranks = []
    return [me, *ranks]


def _cpu_s(processes: list) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # a rank that ended: its time is not counted as ours
            pass
    return total


def _machine_cpu_s() -> tuple:
    """(busy, total) CPU seconds of the machine since boot, every CPU (guest time is inside user time)."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0) - getattr(t, "guest_nice", 0)
    return total - t.idle - getattr(t, "iowait", 0), total


def _cpu_freq_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError):
        return None
    return freq.current if freq and freq.current else None


class HostMonitor:
    """psutil readings at each end of a repeat (nothing runs during it)."""

    def __init__(self):
        self.me = psutil.Process()
        self.job = _job_processes()

    def _read(self) -> dict:
        mine = self.me.cpu_times()
        return {"cpu_s": mine.user + mine.system, "invol": self.me.num_ctx_switches().involuntary,
                "job_cpu_s": _cpu_s(self.job), "machine": _machine_cpu_s(), "freq": _cpu_freq_mhz()}

    def begin(self) -> None:
        self._start = self._read()

    def end(self) -> dict:
        a, b = self._start, self._read()
        busy, total = (y - x for x, y in zip(a["machine"], b["machine"]))
        other = max(0.0, busy - (b["job_cpu_s"] - a["job_cpu_s"])) / total if total > 0 else None
        freqs = [f for f in (a["freq"], b["freq"]) if f is not None]
        return {"cpu_time_s": round(b["cpu_s"] - a["cpu_s"], 4), "involuntary_ctx_switches": b["invol"] - a["invol"],
                "cpu_freq_mhz_mean": round(statistics.fmean(freqs), 1) if freqs else None,
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "other_cpu_share": None if other is None else round(min(other, 1.0), 4)}


# ---------------------------------------------------------------------------------------------------
# The measurement's view


class Telemetry:
    """`t.begin()` / `t.end(tokens)` around each timed repeat, outside its timing, `t.close()` after the
    last (it ends the sampler thread); `t.fields()` gives the result fields. Disabled (enabled=False):
    nothing is read, the fields are null."""

    def __init__(self, uuids: list, enabled: bool = True):
        self.enabled = enabled
        self.repeats: list = []
        self.gpu = GpuMonitor(uuids) if enabled else None
        self.host = HostMonitor() if enabled else None
        self._started = 0.0

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()

    def begin(self) -> None:
        if self.enabled:
            self.host.begin()
            self.gpu.begin()
            self._started = time.perf_counter()

    def end(self, tokens: int) -> None:
        if self.enabled:
            wall = time.perf_counter() - self._started
            gpu = self.gpu.end(tokens)
            self.repeats.append({"wall_s": round(wall, 6), "host": self.host.end(), "gpu": gpu})

    def fields(self) -> dict:
        """energy_j_per_token (summed over the GPUs, median over the repeats) and telemetry (None if disabled)."""
        if not self.enabled:
            return {"energy_j_per_token": None, "telemetry": None}
        gpu = self.gpu.summary([r["gpu"] for r in self.repeats])
        host = {key: _median([r["host"][key] for r in self.repeats]) for key in self.repeats[0]["host"]}
        per_repeat = [{"wall_s": r["wall_s"], **r["host"], **_repeat_gpu(r["gpu"])} for r in self.repeats]
        summed = _median([r["energy_j_per_token"] for r in per_repeat])
        return {"energy_j_per_token": summed, "telemetry": {"gpu": gpu, "host": host, "repeats": per_repeat}}


def _repeat_gpu(gpu: dict | None) -> dict:
    """A repeat's GPU figures kept in telemetry.repeats: energy summed over the GPUs, the job's stats."""
    if gpu is None:
        return {"energy_j_per_token": None}
    energy = [g["energy_j_per_token"] for g in gpu["per_gpu"]]
    stats = job_gpu_stats(gpu["per_gpu"])
    return {"energy_j_per_token": None if None in energy else sum(energy),
            **{k: stats[k] for k in ("power_w_mean", "sm_clock_mhz_mean", "sm_clock_mhz_min", "throttle_reasons")}}
