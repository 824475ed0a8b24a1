"""The tables of the results: the seed's (rows backend+dtype, columns batch size, the status word where
there is no number), and per-point tables (a row per job that ended ok: its label, batch size, figures)."""
from collections.abc import Iterator

import pandas as pd

from backends import lookup
from backends.spec import BackendSpec
from core.jobdir import NOT_MEASURED, option_text

# A row's label: backend and dtype, then every measured config key (core/jobdir.py: the one definition of
# "the same measurement") that varies among the results, so that two rows of one table are never the same
# label; batch size is the tables' columns. Known keys first, in this order and with these short names;
# any other measured key that varies follows as name=value (seed=1, isolate=false, max_batch_cap=64...).
# A backend option shows only where it takes effect (its spec's `needs`, backends/spec.py): the spec is
# the one place that knows which option depends on which, and analysis may import the torch-free specs.
ALWAYS = ("config.backend.name", "config.dtype.name")
ORDER = ("config.model.name", "config.num_gpus", "config.cpu_ranks", "config.num_nodes", *ALWAYS,
         "config.offload.name", "config.new_tokens", "config.prompt_tokens", "config.stack")
SHORT = {"config.model.name": "", "config.num_gpus": "gpus=", "config.cpu_ranks": "ranks=", "config.num_nodes": "nodes=",
         "config.offload.name": "offload=", "config.new_tokens": "new=", "config.prompt_tokens": "prompt=",
         "config.stack": "stack=", "config.backend.name": "", "config.dtype.name": "",
         "config.backend.attn_implementation": "attn=", "config.dtype.llm_int8_threshold": "threshold="}
COLUMNS = ("config.batch_size",)


def _text(value) -> str:
    """A label part; null (stack=null: the runner's own environment) reads "default"."""
    return "default" if pd.isna(value) else option_text(value)


def _measured_columns(df: pd.DataFrame) -> list:
    return [c for c in df if c.startswith("config.") and c.split(".")[1] not in NOT_MEASURED and c not in COLUMNS]


def _varies(df: pd.DataFrame, key: str) -> bool:
    """Whether `key` tells results apart: it varies among the results that have it (a backend option is no
    difference to another backend's jobs), and a model's shape is no difference beside the model's name."""
    values = df[key].dropna().map(_text)
    if values.nunique() <= 1:
        return False
    if key.startswith("config.model.") and key != "config.model.name" and "config.model.name" in df:
        return bool((df.groupby("config.model.name")[key].nunique(dropna=False) > 1).any())
    return True


def _spec(name: str) -> BackendSpec | None:
    """The registered spec of a backend; None for one not registered here (a plugin's results read without
    its INFERSWEEP_BACKENDS entry), whose options then all count as taking effect."""
    try:
        return lookup(name)
    except (ValueError, ImportError):
        return None


def _in_effect(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with each backend option null on the results where it takes no effect (BackendSpec.needs)."""
    df = df.copy()
    backend = {c.removeprefix("config.backend."): c for c in df if c.startswith("config.backend.")}
    for name, jobs in df.groupby("config.backend.name") if "config.backend.name" in df else ():
        spec = _spec(name)
        for option in (spec.needs if spec else ()):
            if option not in backend:
                continue
            idle = [i for i, job in jobs.iterrows()
                    if not spec.takes_effect(option, {key: job[column] for key, column in backend.items()})]
            df[backend[option]] = df[backend[option]].astype(object)  # ints stay ints beside the nulls
            df.loc[idle, backend[option]] = None
    return df


def row_labels(df: pd.DataFrame) -> pd.Series:
    """backend+dtype, plus every measured config key that varies (model, num_gpus, offload, token counts,
    stack, a backend or dtype option, ...), each only on the results that have it and, for a backend
    option, only where it takes effect (a compilation mode that varied shows on the compiled rows only)."""
    varying = [k for k in _measured_columns(df) if k in ALWAYS or _varies(df, k)]
    df = _in_effect(df)
    keys = [k for k in ORDER if k in varying] + sorted(k for k in varying if k not in ORDER)

    def part(key: str, value) -> str:
        return SHORT.get(key, key.rsplit(".", 1)[1] + "=") + _text(value)

    def label(row: pd.Series) -> str:
        present = [k for k in keys if k in ALWAYS or k in ORDER[:4] or pd.notna(row[k])]
        return " ".join(part(k, row[k]) for k in present)

    return df.apply(label, axis=1) if len(df) else pd.Series(dtype=object)


def seed_table(df: pd.DataFrame, metric: str = "ms_per_token", digits: int = 2) -> pd.DataFrame:
    """A metric by row label and batch size; a cell whose job did not end `ok` holds its status."""
    if df.empty:
        return pd.DataFrame()
    values = df.get(metric, pd.Series(index=df.index))
    cells = df.assign(label=row_labels(df),
                      cell=[(v if isinstance(v, str) else f"{v:.{digits}f}") if s == "ok" else s
                            for v, s in zip(values, df["status"])])
    table = cells.pivot_table(index="label", columns="config.batch_size", values="cell", aggfunc="last")
    table.columns.name = "batch_size"
    table.index.name = None
    # numbers in order, then any word (batch_size=max where the search found nothing)
    order = sorted(table.columns, key=lambda c: (isinstance(c, str), c if not isinstance(c, str) else 0, str(c)))
    return table.reindex(order, axis=1).fillna("")


def roofline_table(df: pd.DataFrame) -> pd.DataFrame:
    """The fraction of the roofline floor reached (backends/roofline.py: floor / measured decode step, 1 = at
    the hardware limit) by row label and batch size, with the bound that applies ("0.42 memory"); the
    status word where a job did not end `ok`."""
    if "roofline.fraction_of_floor" not in df or df["roofline.fraction_of_floor"].isna().all():
        return pd.DataFrame()
    cells = [f"{f:.2g} {b}" if pd.notna(f) else ""
             for f, b in zip(df["roofline.fraction_of_floor"], df["roofline.bound"])]
    return seed_table(df.assign(roofline_cell=cells), "roofline_cell")


def load_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Seconds from launch to ready-to-generate per row label: median, min and max over its `ok` jobs
    (NaN where none ended ok), and the status of its last job."""
    df = df.assign(label=row_labels(df))
    ok = df[df["status"] == "ok"].groupby("label")
    stats = ok["load_s"].agg(["median", "min", "max"]) if "load_s" in df else pd.DataFrame(columns=["median", "min", "max"])
    last = df.groupby("label")["status"].last()
    return stats.reindex(last.index).assign(status=last)


def load_table(df: pd.DataFrame, digits: int = 1) -> pd.DataFrame:
    """load_stats as the seed shows it: seconds, or the status word of a row where no job ended `ok`."""
    stats = load_stats(df)
    table = stats[["median", "min", "max"]].map(lambda v: f"{v:.{digits}f}", na_action="ignore").fillna("")
    table.loc[stats["median"].isna(), "median"] = stats["status"]
    return table.rename(columns=lambda c: f"{c} s").rename_axis(None)


def groups(df: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """The results split by model and GPU count (the seed has one throughput table per GPU count),
    each with a title such as "bloom-tiny, 8 GPUs" or "bloom-tiny, CPU"."""
    for (model, gpus), part in df.groupby(["config.model.name", "config.num_gpus"], sort=True):
        where = f"{int(gpus)} GPU{'s' if gpus > 1 else ''}" if gpus else "CPU"
        yield f"{model}, {where}", part


def max_batch_table(df: pd.DataFrame) -> pd.DataFrame:
    """batch_size=max jobs: the largest batch the search found, the one measured (smaller where measuring
    the found size ran out of memory) and the sizes tried, by row label."""
    if "batch_search" not in df or not df["batch_search"].any():
        return pd.DataFrame()
    jobs = df[df["batch_search"]]
    labels = row_labels(df)
    found = [f"{v:.0f}" if pd.notna(v) else "" for v in jobs.get("max_batch_found", pd.Series(index=jobs.index))]
    rows = [{"": labels[i], "found": f, "measured": job["config.batch_size"],
             "status": job["status"],
             "tried": ", ".join(f"{t['batch_size']} {t['status']}" + (f" ({t['phase']})" if "phase" in t else "")
                               for t in job.get("max_batch_search") or [])}
            for f, (i, job) in zip(found, jobs.iterrows())]
    return pd.DataFrame(rows).set_index("").rename_axis(None)


def _points(df: pd.DataFrame) -> pd.DataFrame:
    """The jobs that ended ok, with their row label, by label and then batch size (numbers in order, then
    a word: batch_size=max where the search found nothing)."""
    ok = df.assign(label=row_labels(df))[df["status"] == "ok"]
    size = ok["config.batch_size"]
    order = pd.DataFrame({"label": ok["label"], "word": size.map(lambda s: isinstance(s, str)),
                          "size": pd.to_numeric(size, errors="coerce")})
    return ok.loc[order.sort_values(["label", "word", "size"], kind="stable").index]


def _field(points: pd.DataFrame, field: str) -> pd.Series:
    return points.get(field, pd.Series(None, index=points.index, dtype=object))


def _point_table(points: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """A row per job of `points` (index: its row label) with its batch size, then a column per {header:
    (result field, its text)}; an empty cell where a result lacks the field or holds null."""
    table = {"batch size": points["config.batch_size"].astype(str)}
    for header, (field, text) in columns.items():
        values = _field(points, field)
        table[header] = ["" if not isinstance(v, list) and pd.isna(v) else text(v) for v in values]
    return pd.DataFrame(table).set_axis(points["label"].tolist())


LATENCY = {f"{name} {p} ms": (f"latency.{field}.{p}", "{:.2f}".format)
           for name, field in (("TTFT", "ttft_ms"), ("inter-token", "itl_ms")) for p in ("p50", "p90", "p99")}


def latency_table(df: pd.DataFrame) -> pd.DataFrame:
    """The latency distribution (the result's `latency`, backends/measure.py) per row label and batch size,
    over the jobs that ended ok: p50, p90 and p99 of the time to the first new token and between two
    tokens, ms; a job whose result predates them is left out."""
    points = _points(df)
    return _point_table(points[_field(points, "latency.itl_ms.p50").notna()], LATENCY)


TELEMETRY = {
    "J/token": ("energy_j_per_token", "{:.3f}".format),
    "power mean W": ("telemetry.gpu.power_w_mean", "{:.0f}".format),
    "power max W": ("telemetry.gpu.power_w_max", "{:.0f}".format),
    "SM clock mean MHz": ("telemetry.gpu.sm_clock_mhz_mean", "{:.0f}".format),
    "throttle reasons": ("telemetry.gpu.throttle_reasons", lambda names: ", ".join(names) or "none"),
    "max temp °C": ("telemetry.gpu.temperature_c_max", "{:.0f}".format),
    "other-process CPU share": ("telemetry.host.other_cpu_share", "{:.2f}".format),
}


def telemetry_table(df: pd.DataFrame) -> pd.DataFrame:
    """The conditions of each job that ended ok (the result's `telemetry` and `energy_j_per_token`,
    backends/telemetry.py) per row label and batch size: J per generated token over every GPU, the GPUs'
    mean and highest power, mean SM clock, the clock-event (throttle) reasons NVML reported ("none"), the
    highest temperature, and the CPU share of the host's other processes. A GPU figure is an empty cell where
    the job has none (no_gpu_telemetry says why)."""
    points = _points(df)
    table = _point_table(points, TELEMETRY)
    table.loc[_field(points, "telemetry.gpu.power_w_mean").isna().to_numpy(), "throttle reasons"] = ""
    return table


def no_gpu_telemetry(df: pd.DataFrame) -> list[str]:
    """Why jobs that ended ok have no GPU figures, each reason once with its count ("no GPU in use (the
    worker sees none): 2 jobs"): the result's telemetry.gpu.reason, telemetry=false, or a result that
    holds no telemetry (written before it was recorded)."""
    points = _points(df)
    missing = points[_field(points, "telemetry.gpu.power_w_mean").isna()]
    reasons = [r if isinstance(r, str) else "telemetry=false" if pd.notna(on) and not on else
               "no telemetry in the result (written before it was recorded)"
               for r, on in zip(_field(missing, "telemetry.gpu.reason"), _field(missing, "config.telemetry"))]
    counts = pd.Series(reasons, dtype=object).value_counts()
    return [f"{r}: {n} job{'s' if n > 1 else ''}" for r, n in counts.items()]
