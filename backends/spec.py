"""What the runner knows of a backend before anything is launched: its BackendSpec. Torch-free.

A spec names the backend's config (a dataclass, the `backend` group of the sweep's config), the rules
that make a job `invalid` (one-line reasons naming the key), the launcher command that starts the
worker, the libraries the job's stack must have, the result fields the backend adds, and the class the
worker loads (imported only inside the worker).
"""
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields


def version_tuple(version: str | None, length: int = 2) -> tuple:
    """(major, minor), or `length` leading numbers, of a version string; (0,) when it is missing."""
    parts = []
    for part in (version or "0").split(".")[:length]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


@dataclass(frozen=True)
class Stack:
    """The Python environment a job runs under (runner/stack.py probes it without importing torch)."""
    python: str
    python_version: str
    versions: dict  # library -> version, None where it is not installed

    def has(self, library: str) -> bool:
        return self.versions.get(library) is not None


def no_rules(config: dict, stack: Stack) -> str | None:
    return None


@dataclass(frozen=True)
class BackendSpec:
    name: str
    # The dataclass of `backend.*` (its first field is `name`), registered as the option `backend=<name>`.
    config: type
    # The launcher command of a job: (config, backends.launchers.Launch) -> argv.
    command: Callable
    # "module:Class" of the worker-side backend (load, generate, info), imported in the launched process.
    backend: str
    # Libraries the job's stack must have installed (by distribution name).
    requires: tuple = ()
    # True: one process per GPU (or cpu_ranks on the CPU); False: one process whatever the GPU count.
    multi_rank: bool = False
    # Whether a job may span several nodes (num_nodes > 1; needs multi_rank).
    multinode: bool = False
    # (resolved config, the job's Stack) -> why the job cannot run, or None.
    validate: Callable[[dict, Stack], str | None] = no_rules
    # The result's backend_info keys this backend records, and what each means.
    result_fields: dict = field(default_factory=dict)
    # option -> {another option: the value it must have}: an option that takes effect only where others are
    # set so (a compilation mode only where the step is compiled). The row labels and the progress line
    # leave it out elsewhere, where it changes nothing that runs.
    needs: dict = field(default_factory=dict)

    def takes_effect(self, option: str, options: Mapping) -> bool:
        """Whether backend option `option` changes what runs, given the job's backend options."""
        return all(options.get(other) == value for other, value in self.needs.get(option, {}).items())

    def ranks_per_node(self, config: dict) -> int:
        """Processes a job starts on each node."""
        return (config["num_gpus"] or config["cpu_ranks"]) if self.multi_rank else 1

    def world_size(self, config: dict) -> int:
        return config.get("num_nodes", 1) * self.ranks_per_node(config)

    def changed_options(self, config: dict) -> list:
        """(name, value) of the backend options that differ from their defaults and take effect."""
        options = config["backend"]
        return [(f.name, options[f.name]) for f in fields(self.config)
                if f.name != "name" and f.name in options and options[f.name] != f.default
                and self.takes_effect(f.name, options)]
