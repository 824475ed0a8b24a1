"""The layering the code must keep, checked on its source: no import cycle, lower layers never import
higher ones, runner/ and analysis/ never name a backend, the job files are spelled in one module, and the
runner's own process never imports torch."""
import ast
import re
from pathlib import Path

from conftest import ROOT, run_runner

from backends import BUILTIN

PACKAGES = ("core", "backends", "analysis", "runner", "hydra_plugins")
# Each layer may import itself and the layers before it.
LAYERS = ("core", "backends", "analysis", "runner", "hydra_plugins")


def project_modules() -> dict:
    """{dotted module name: path} of every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(path: Path, modules: dict) -> set:
    """The project modules `path` imports, at any depth of its code (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict:
    modules = project_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_cycle():
    graph = import_graph()
    state, cycles = {}, []

    def visit(node: str, trail: list) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones():
    wrong = [f"{a} imports {b}" for a, deps in import_graph().items() for b in deps
             if LAYERS.index(b.split(".")[0]) > LAYERS.index(a.split(".")[0])]
    assert not wrong, wrong


def string_literals(path: Path) -> list:
    """The string constants of a module's code, docstrings left out (they may explain, code may not name)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_runner_and_analysis_never_name_a_backend():
    names = "|".join(re.escape(name) for name in BUILTIN)
    pattern = re.compile(rf"^({names})$|backend=({names})\b|\bds-(inference|zero)\b|\bds_(inference|zero)\b")
    named = [f"{path.relative_to(ROOT)}: {text!r}" for name, path in project_modules().items()
             if name.split(".")[0] in ("runner", "analysis") for text in string_literals(path) if pattern.search(text)]
    assert not named, named


def test_job_file_names_are_spelled_in_one_module():
    spelled = [f"{path.relative_to(ROOT)}: {text!r}" for name, path in project_modules().items()
               if name != "core.jobdir" for text in string_literals(path)
               if re.search(r"\b(result|job|sweep)\.json\b|\bjob\.log\b", text)]
    assert not spelled, spelled


def test_the_runner_process_imports_no_torch(tmp_path, cache_dir):
    """A whole sweep (launch, collect, the sweep's table, the history) with the runner's imports logged:
    torch is imported by the launched workers only, never by the runner itself."""
    proc = run_runner(["-m", "batch_size=1", "new_tokens=2", "repeats=1", f"hydra.sweep.dir={tmp_path}"],
                      cache_dir, env_extra={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "runner.job" in imported and "pandas" in imported  # the log is there, and it is the runner's
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
