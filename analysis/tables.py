"""The seed's tables: rows backend+dtype, columns batch size, the status word where there is no number."""
import pandas as pd

# Identity columns that, where they vary within the results, become part of a row's label.
LABEL_KEYS = ("config.model.name", "config.num_gpus", "config.backend.name", "config.dtype.name",
              "config.offload.name", "config.stack")


def row_labels(df: pd.DataFrame) -> pd.Series:
    """backend+dtype, with model, num_gpus, offload and stack added where they vary."""
    varying = [k for k in LABEL_KEYS if k in df and df[k].astype(str).nunique() > 1]
    keys = [k for k in LABEL_KEYS if k in ("config.backend.name", "config.dtype.name") or k in varying]
    short = {"config.model.name": "", "config.num_gpus": "gpus=", "config.offload.name": "offload=",
             "config.stack": "stack="}
    return df[keys].astype(str).apply(
        lambda r: " ".join(short.get(k, "") + r[k] for k in keys), axis=1)


def seed_table(df: pd.DataFrame, metric: str = "ms_per_token", digits: int = 2) -> pd.DataFrame:
    """A metric by row label and batch size; a cell whose job did not end `ok` holds its status."""
    if df.empty:
        return pd.DataFrame()
    cells = df.assign(
        label=row_labels(df),
        cell=[f"{v:.{digits}f}" if s == "ok" else s for v, s in zip(df.get(metric, pd.Series(index=df.index)),
                                                                    df["status"])],
    )
    table = cells.pivot_table(index="label", columns="config.batch_size", values="cell", aggfunc="last")
    table.columns.name = "batch_size"
    table.index.name = None
    return table.reindex(sorted(table.columns), axis=1).fillna("")
