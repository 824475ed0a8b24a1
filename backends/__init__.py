"""Backends: one folder each, `backends/<name>/`, and the registry that maps a backend's name to it.

The runner and the analysis never name a backend; they ask this registry for its BackendSpec
(backends/spec.py). Nothing here imports torch: the runner's process imports the specs, and only the
launched worker imports a backend's own code.

Adding a backend
----------------
1. Make a package `mybackend/` (in this folder, or anywhere importable) with two modules:
   - `spec.py`, torch-free: a dataclass for its options (`name: str = "my-backend"` first, then each
     option with its default), a `validate(config, versions) -> str | None` giving a one-line reason
     that names the key, the value and what is allowed, and `SPEC = BackendSpec(...)` naming them, the
     launcher command (`backends.launchers.accelerate_launch`, `deepspeed_launch`, or a function of your
     own: (config, Launch) -> argv), the libraries it requires, whether it runs one process per GPU
     (`multi_rank`) and over several nodes (`multinode`), the backend_info fields it records, the
     options that take effect only with others set (`needs`: row labels and progress lines leave them out
     elsewhere), and its worker class as "package.backend:Class".
   - `backend.py`: that class. `Class(config, checkpoint)` with `info` (dict, what ran), `streams`
     (generate streams running at once), `tp_size` (ranks one model is split over, for the roofline),
     `load()`, `input_device()`, `generate(input_ids, attention_mask, new_tokens)`, optionally
     `prepare()` (untimed, before load) and `close()` (backends/measure.py: the Backend protocol).
2. Register it: a built-in backend gets a line in BUILTIN below; any other is named in the environment,
   `INFERSWEEP_BACKENDS="my-backend=mypackage"` (comma-separated name=package pairs), its package on
   PYTHONPATH. Then `python -m runner -m backend=my-backend ...` runs it: its options are the `backend.*`
   keys, validated before launch, and the worker measures it like any other.
tests/test_registry.py does exactly this with a throwaway backend from tests/plugins/.
"""
import functools
import importlib
import os

from backends.spec import BackendSpec

BUILTIN = {
    "accelerate": "backends.accelerate",
    "ds-inference": "backends.ds_inference",
    "ds-zero": "backends.ds_zero",
    "graph": "backends.graph",
}
ENV_VAR = "INFERSWEEP_BACKENDS"


def packages() -> dict:
    """{name: package} of every registered backend: the built-in ones, then $INFERSWEEP_BACKENDS."""
    extra = {}
    for entry in filter(None, (e.strip() for e in os.environ.get(ENV_VAR, "").split(","))):
        name, sep, package = entry.partition("=")
        if not sep or not name.strip() or not package.strip():
            raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]}: bad entry {entry!r} (allowed: name=package,...)")
        extra[name.strip()] = package.strip()
    return {**BUILTIN, **extra}


def names() -> tuple:
    return tuple(packages())


@functools.cache
def _load(name: str, package: str) -> BackendSpec:
    spec = importlib.import_module(f"{package}.spec").SPEC
    if spec.name != name:
        raise ValueError(f"{ENV_VAR}: {package}.spec names its backend {spec.name!r}, registered as {name!r}")
    return spec


def lookup(name: str) -> BackendSpec:
    """The spec of backend `name`; ValueError naming the key and the registered names."""
    registered = packages()
    if name not in registered:
        raise ValueError(f"backend={name}: allowed: {', '.join(registered)}")
    return _load(name, registered[name])


def specs() -> list:
    return [lookup(name) for name in names()]


def load_backend_class(spec: BackendSpec) -> type:
    """The worker-side class of a backend (imports torch and the backend's libraries)."""
    module, _, cls = spec.backend.partition(":")
    return getattr(importlib.import_module(module), cls)
