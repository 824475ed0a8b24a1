"""A GPU load at a fixed duty cycle: bf16 matmuls on GPU 0 for `duty` of every period, idle for the rest.
The verdict campaign (scripts/verdict-campaign.sh, sweeps named gpu<DUTY>-<label>) runs a sweep beside it,
to slow every point for real by a known means: while the load's kernels run, the sweep's kernels wait
for their turn on the GPU.

    python benchmarks/gpu_hog.py --duty 0.1 --seconds 600
"""
import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duty", type=float, required=True, help="busy share of each period, 0..1")
    p.add_argument("--period-ms", type=float, default=20.0)
    p.add_argument("--size", type=int, default=4096, help="matmul size (4096: about 0.2 ms on an H200)")
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = p.parse_args()
    a = torch.randn(args.size, args.size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    period = args.period_ms / 1000
    until = time.monotonic() + args.seconds
    while time.monotonic() < until:
        start = time.monotonic()
        while time.monotonic() - start < args.duty * period:
            torch.mm(a, b)
            torch.cuda.synchronize()
        time.sleep(max(0.0, period - (time.monotonic() - start)))


if __name__ == "__main__":
    main()
