"""Figures derived from each point's result: the devices it held, its cost per million generated tokens, its
throughput per device against the latency one sequence sees per token, and the Pareto front of those two
(docs/analysis.md gives the definitions)."""
import pandas as pd

PRICE_KEYS = {True: "price_per_cpu_node_hour", False: "price_per_gpu_hour"}  # by "ran on the CPU"


def on_cpu(df: pd.DataFrame) -> pd.Series:
    """Whether each job ran on the CPU (num_gpus=0)."""
    return df["config.num_gpus"].fillna(0).eq(0)


def devices(df: pd.DataFrame) -> pd.Series:
    """What each job held: its GPUs (num_gpus on each of num_nodes), or on the CPU its nodes."""
    nodes = df.get("config.num_nodes", pd.Series(1, index=df.index)).fillna(1)
    return df["config.num_gpus"].fillna(0).where(~on_cpu(df), 1) * nodes


def with_cost(df: pd.DataFrame, price_per_gpu_hour: float | None = None,
              price_per_cpu_node_hour: float | None = None) -> pd.DataFrame:
    """`df` with each job's `price_per_hour` (USD per hour of one device: the price given here, else the one
    its config recorded), `usd_per_mtok` (USD per million generated tokens: price_per_hour / 3600 x devices /
    tokens_per_s x 1e6) and `usd_per_mtok_reason`: why usd_per_mtok is null where a job that ended ok has
    none ("" where it has one, and for jobs that did not end ok, whose status says why)."""
    cpu = on_cpu(df)
    given = {True: price_per_cpu_node_hour, False: price_per_gpu_hour}
    none = pd.Series(None, index=df.index, dtype=float)
    recorded = {on: df.get(f"config.{key}", none) for on, key in PRICE_KEYS.items()}
    price = pd.Series([given[c] if given[c] is not None else recorded[c][i] for i, c in zip(df.index, cpu)],
                      index=df.index, dtype=float)
    tokens = pd.to_numeric(df.get("tokens_per_s", pd.Series(None, index=df.index)), errors="coerce")
    ok = df["status"].eq("ok")
    usd = (price / 3600 * devices(df) / tokens * 1e6).where(ok & tokens.gt(0))
    reasons = [("" if not o or pd.notna(u) else
                f"no price: set {PRICE_KEYS[c]} (runner) or --{PRICE_KEYS[c].replace('_', '-')} (report)"
                if pd.isna(p) else "no tokens_per_s in the result")
               for o, u, p, c in zip(ok, usd, price, cpu)]
    return df.assign(price_per_hour=price, usd_per_mtok=usd, usd_per_mtok_reason=reasons)


def with_latency(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with `tokens_per_s_per_device` (tokens_per_s / devices) and `stream_ms_per_token`: the ms between
    two tokens of one sequence, the generate's wall time / new tokens (ms_per_token_per_stream x batch size;
    ms_per_token x batch size for a result without the per-stream figure)."""
    none = pd.Series(None, index=df.index, dtype=float)
    per_stream = df.get("ms_per_token_per_stream", none).fillna(df.get("ms_per_token", none))
    size = pd.to_numeric(df["config.batch_size"], errors="coerce")
    return df.assign(tokens_per_s_per_device=df.get("tokens_per_s", none) / devices(df),
                     stream_ms_per_token=per_stream * size)


def pareto_front(points: pd.DataFrame, lower: str, higher: str) -> pd.Series:
    """Which points no other point beats: none has a `lower` as low or lower and a `higher` as high or higher,
    one of them strictly."""
    ranked = points.sort_values([lower, higher], ascending=[True, False])
    front, best = [], float("-inf")
    for i, value in ranked[higher].items():
        if value > best:
            front.append(i)
            best = value
    return points.index.isin(front)
