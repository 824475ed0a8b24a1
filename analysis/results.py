"""Every result.json under some directories, as one flat pandas DataFrame (one row per job)."""
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from runner.result import RESULT_FILE, read_result


def load_results(dirs: Iterable[Path]) -> pd.DataFrame:
    """One row per result; nested keys flattened with dots (config.backend.name, env.gpu_name, ...).

    A corrupt result file is reported on stderr by name and left out.
    """
    rows = []
    for d in dirs:
        for path in sorted(Path(d).rglob(RESULT_FILE)):
            try:
                result = read_result(path.parent)
            except ValueError as e:
                print(f"skipping {e}", file=sys.stderr)
                continue
            rows.append(result)
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize(rows)
