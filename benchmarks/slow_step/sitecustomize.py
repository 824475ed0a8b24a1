"""A real, fixed slowdown of every captured decode step, for the verdict campaign's slowed sweeps
(scripts/verdict-campaign.sh, sweeps named step<US>-<label>). With this directory first on PYTHONPATH and
INFERSWEEP_SLOW_STEP_US set, every CUDA graph replay is followed, on the same stream, by a GPU kernel that
spins for that many microseconds (torch.cuda._sleep, cycles at INFERSWEEP_SLOW_STEP_MHZ, the SM clock under
load), as a software change that adds work to each step would. Python imports this file at start-up in
every process of the sweep; it imports nothing heavy and patches torch.cuda.graphs only when torch loads it.
"""
import importlib.abc
import importlib.util
import os
import sys

SLOW_US = float(os.environ.get("INFERSWEEP_SLOW_STEP_US", "0"))
CLOCK_MHZ = float(os.environ.get("INFERSWEEP_SLOW_STEP_MHZ", "1980"))


class SlowReplay(importlib.abc.MetaPathFinder):
    """Finds torch.cuda.graphs the usual way and wraps CUDAGraph.replay once the module has run."""

    def find_spec(self, fullname: str, path, target=None):
        if fullname != "torch.cuda.graphs":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        run_module = spec.loader.exec_module
        cycles = int(SLOW_US * CLOCK_MHZ)

        def run_and_patch(module) -> None:
            run_module(module)
            replay = module.CUDAGraph.replay

            def slow_replay(graph) -> None:
                replay(graph)
                sys.modules["torch"].cuda._sleep(cycles)

            module.CUDAGraph.replay = slow_replay

        spec.loader.exec_module = run_and_patch
        return spec


if SLOW_US > 0:
    sys.meta_path.insert(0, SlowReplay())
