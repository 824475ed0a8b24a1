"""The seed's tables: rows backend+dtype, columns batch size, the status word where there is no number."""
from collections.abc import Iterator

import pandas as pd

from runner.progress import option_text

# Identity columns that, where they vary within the results, become part of a row's label.
LABEL_KEYS = ("config.model.name", "config.num_gpus", "config.cpu_ranks", "config.num_nodes", "config.backend.name",
              "config.dtype.name", "config.offload.name", "config.new_tokens", "config.prompt_tokens", "config.stack")
SHORT = {"config.model.name": "", "config.num_gpus": "gpus=", "config.cpu_ranks": "ranks=", "config.num_nodes": "nodes=",
         "config.offload.name": "offload=", "config.new_tokens": "new=", "config.prompt_tokens": "prompt=",
         "config.stack": "stack="}


# Backend and dtype options (every config.backend.* and config.dtype.* key but the name) join the label where
# they vary among the jobs that have them, and only on those jobs (an option of another backend is no
# difference): compile, attention, int8 threshold, kernel injection, pre-sharding, device map...
SHORT_OPTIONS = {"attn_implementation": "attn", "llm_int8_threshold": "threshold"}


def _text(value) -> str:
    """A label part; null (stack=null: the runner's own environment) reads "default"."""
    return "default" if pd.isna(value) else option_text(value)


def _option_keys(df: pd.DataFrame) -> list:
    return [k for k in df if k.startswith(("config.backend.", "config.dtype.")) and not k.endswith(".name")]


def row_labels(df: pd.DataFrame) -> pd.Series:
    """backend+dtype, with model, num_gpus, offload, token counts and stack added where they vary, and each
    backend/dtype option where it varies (compile, attention, int8 threshold, pre_sharded...)."""
    varying = [k for k in LABEL_KEYS if k in df and df[k].map(_text).nunique() > 1]
    keys = [k for k in LABEL_KEYS if k in ("config.backend.name", "config.dtype.name") or k in varying]
    labels = df[keys].map(_text).apply(lambda r: " ".join(SHORT.get(k, "") + r[k] for k in keys), axis=1)
    for key in _option_keys(df):
        if df[key].dropna().map(_text).nunique() > 1:
            name = key.rsplit(".", 1)[1]
            short = SHORT_OPTIONS.get(name, name)
            labels = labels + [f" {short}={_text(v)}" if pd.notna(v) else "" for v in df[key]]
    return labels


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
