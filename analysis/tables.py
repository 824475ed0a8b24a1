"""The seed's tables: rows backend+dtype, columns batch size, the status word where there is no number."""
from collections.abc import Iterator

import pandas as pd

# Identity columns that, where they vary within the results, become part of a row's label.
LABEL_KEYS = ("config.model.name", "config.num_gpus", "config.backend.name", "config.dtype.name",
              "config.offload.name", "config.new_tokens", "config.prompt_tokens", "config.stack")
SHORT = {"config.model.name": "", "config.num_gpus": "gpus=", "config.offload.name": "offload=",
         "config.new_tokens": "new=", "config.prompt_tokens": "prompt=", "config.stack": "stack="}


def row_labels(df: pd.DataFrame) -> pd.Series:
    """backend+dtype, with model, num_gpus, offload, token counts and stack added where they vary."""
    varying = [k for k in LABEL_KEYS if k in df and df[k].astype(str).nunique() > 1]
    keys = [k for k in LABEL_KEYS if k in ("config.backend.name", "config.dtype.name") or k in varying]
    return df[keys].astype(str).apply(lambda r: " ".join(SHORT.get(k, "") + r[k] for k in keys), axis=1)


def seed_table(df: pd.DataFrame, metric: str = "ms_per_token", digits: int = 2) -> pd.DataFrame:
    """A metric by row label and batch size; a cell whose job did not end `ok` holds its status."""
    if df.empty:
        return pd.DataFrame()
    values = df.get(metric, pd.Series(index=df.index))
    cells = df.assign(label=row_labels(df),
                      cell=[f"{v:.{digits}f}" if s == "ok" else s for v, s in zip(values, df["status"])])
    table = cells.pivot_table(index="label", columns="config.batch_size", values="cell", aggfunc="last")
    table.columns.name = "batch_size"
    table.index.name = None
    return table.reindex(sorted(table.columns), axis=1).fillna("")


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
