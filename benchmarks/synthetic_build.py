"""Time and host memory of building a synthetic checkpoint (backends/synthetic.py), per shape and per
source tree, each build in a fresh process and a fresh cache. Prints a table; run from the repository
root, e.g. against the tree before a change:

    git worktree add /tmp/before <commit>
    python benchmarks/synthetic_build.py --trees /tmp/before,. --models bloom-560m,bloom-7b1
"""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the tree: build the model's checkpoint in bf16, print seconds and peak RSS (KiB).
BUILD = """
import resource, sys, time
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from backends.synthetic import build_checkpoint
from runner.config import register_configs
register_configs()
with initialize_config_dir(sys.argv[1], version_base="1.3"):
    config = OmegaConf.to_container(compose("config", overrides=sys.argv[2:]), resolve=True)
start = time.perf_counter()
build_checkpoint(config)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def build(tree: Path, model: str, cache: Path) -> tuple:
    out = subprocess.run([sys.executable, "-c", BUILD, str(tree / "conf"), f"model={model}", "dtype=bf16",
                          f"cache_dir={cache}"], cwd=tree, check=True, capture_output=True, text=True)
    seconds, rss_kib = out.stdout.split()[-2:]
    return float(seconds), int(rss_kib) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=".", help="comma-separated source trees to compare")
    parser.add_argument("--models", default="bloom-560m", help="comma-separated model configs")
    args = parser.parse_args()
    print("| tree | model | build s | peak host memory GiB |\n|:--|:--|--:|--:|")
    for model in args.models.split(","):
        for tree in args.trees.split(","):
            with tempfile.TemporaryDirectory() as cache:
                seconds, gib = build((ROOT / tree).resolve(), model, Path(cache))
            print(f"| {tree} | {model} | {seconds:.1f} | {gib:.2f} |", flush=True)


if __name__ == "__main__":
    main()
