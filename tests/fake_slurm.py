"""A stand-in for SLURM's sbatch, srun, sacct and scancel, enough for submitit: it runs the real sbatch
scripts that hydra/launcher=submitit_slurm writes, on this machine.

    python tests/fake_slurm.py install BIN_DIR STATE_DIR   # wrapper scripts sbatch, srun, sacct, scancel

sbatch records the script, answers "Submitted batch job N" and runs the job in the background: the
array's tasks one after another, every job of every array after the previous one (SLURM with
`%1` and `--dependency=afterany`), each with SLURM's environment for a job of `--nodes` nodes whose
node list is FAKE_SLURM_NODELIST (default localhost,127.0.0.1,...). srun starts one task per node with
the step's environment (SLURM_NODEID, SLURM_PROCID, SLURM_STEP_NUM_NODES, ...). sacct reports the
states. FAKE_SLURM_FAIL=N_T makes array task T of job N end as NODE_FAIL without running.
"""
import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ.get("FAKE_SLURM_STATE", "/nonexistent"))


def _set_state(job: str, state: str) -> None:
    path = STATE / "states" / job
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state)
    os.replace(tmp, path)


def _options(script: str) -> dict:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S*))?$", script, re.MULTILINE))


def sbatch(args: list) -> int:
    script_path = Path(args[-1])
    script = script_path.read_text()
    opts = _options(script)
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = STATE / "next_id"
        job_id = int(counter.read_text()) if counter.exists() else 1000
        counter.write_text(str(job_id + 1))
    (STATE / "scripts").mkdir(exist_ok=True)
    (STATE / "scripts" / f"{job_id}.sh").write_text(script)
    tasks = [None]
    if "array" in opts:
        lo, hi = opts["array"].split("%")[0].split("-")
        tasks = list(range(int(lo), int(hi) + 1))
    for t in tasks:
        _set_state(f"{job_id}_{t}" if t is not None else str(job_id), "PENDING")
    with open(STATE / "submissions.jsonl", "a") as f:
        f.write(json.dumps({"job_id": job_id, "options": opts}) + "\n")
    subprocess.Popen([sys.executable, __file__, "_run", str(job_id), str(script_path), json.dumps(tasks)],
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env=dict(os.environ))
    print(f"Submitted batch job {job_id}")
    return 0


def _run(job_id: str, script_path: str, tasks: str) -> int:
    """One job after another (the whole fake cluster runs one job at a time)."""
    script = Path(STATE / "scripts" / f"{job_id}.sh")
    opts = _options(script.read_text())
    nodes = int(opts.get("nodes", 1))
    nodelist = os.environ.get("FAKE_SLURM_NODELIST") or ",".join(
        ["localhost", "127.0.0.1", *[f"127.0.0.{i}" for i in range(2, 9)]][:nodes])
    with open(STATE / "run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for n, t in enumerate(json.loads(tasks)):
            name = f"{job_id}_{t}" if t is not None else job_id
            if os.environ.get("FAKE_SLURM_FAIL") == name:
                _set_state(name, "NODE_FAIL")
                continue
            _set_state(name, "RUNNING")
            unique = job_id if t is None else str(int(job_id) * 100 + n)  # an array task has its own id
            env = {**os.environ, "SLURM_JOB_ID": unique, "SLURM_JOB_NUM_NODES": str(nodes),
                   "SLURM_JOB_NODELIST": nodelist, "SLURM_NNODES": str(nodes)}
            if t is not None:
                env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=str(t))
            rc = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, check=False).returncode
            _set_state(name, "COMPLETED" if rc == 0 else "FAILED")
    return 0


def _expand(path: str, env: dict, task: int) -> str:
    job = env.get("SLURM_ARRAY_JOB_ID") or env["SLURM_JOB_ID"]
    return (path.replace("%A", job).replace("%a", env.get("SLURM_ARRAY_TASK_ID", "0"))
            .replace("%j", env["SLURM_JOB_ID"]).replace("%t", str(task)))


def srun(args: list) -> int:
    out = err = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("--output", "--error"):
            out, err = (args[i + 1], err) if args[i] == "--output" else (out, args[i + 1])
            i += 2
        else:
            i += 1
    command = args[i:]
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
    procs = []
    for k in range(nodes):
        env = {**os.environ, "SLURM_NODEID": str(k), "SLURM_PROCID": str(k), "SLURM_LOCALID": "0",
               "SLURM_NTASKS": str(nodes), "SLURM_STEP_NUM_NODES": str(nodes), "SLURM_STEP_ID": "0",
               "SLURM_STEP_NODELIST": os.environ["SLURM_JOB_NODELIST"]}
        stdout = open(_expand(out, env, k), "a") if out else None  # noqa: SIM115 -- the task's, until it ends
        stderr = open(_expand(err, env, k), "a") if err else None  # noqa: SIM115
        procs.append(subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr))
    return max(p.wait() for p in procs)


def sacct(args: list) -> int:
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    states = STATE / "states"
    for path in sorted(states.iterdir()) if states.exists() else []:
        if path.suffix != ".tmp" and path.name.split("_")[0] in ids:
            print(f"{path.name}|{path.read_text()}|localhost")
    return 0


def install(bin_dir: str, state_dir: str) -> None:
    for name in ("sbatch", "srun", "sacct", "scancel"):
        path = Path(bin_dir) / name
        path.write_text(f"#!/bin/sh\nFAKE_SLURM_STATE={state_dir} exec {sys.executable} {__file__} {name} \"$@\"\n")
        path.chmod(0o755)


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "install":
        install(*rest)
        sys.exit(0)
    if command == "_run":
        sys.exit(_run(*rest))
    sys.exit({"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": lambda a: 0}[command](rest))
