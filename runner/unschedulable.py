"""SLURM jobs that no node of the cluster can ever run, which would otherwise stay PENDING and hold the sweep
forever. Before anything is submitted, a job's request (its resolved `hydra.launcher` parameters: nodes, CPUs,
memory and GPUs per node, time limit) is held against the nodes of its partition as sinfo lists them, whatever
their state (a node down or drained now may come back): a request that none of them could meet is one line
naming the key (`request_problem`). After submission, a job that SLURM keeps pending for a reason no wait
ends is named with that reason (`never_running`), for the launcher to cancel. Torch-free and submitit-free.
"""
import functools
import math
import subprocess
from dataclasses import dataclass

from runner.slurm import cpus_per_task, gpus_per_node, mem_gb, timeout_min

# squeue's pending reasons (squeue(1), JOB REASON CODES) that only a change of the job's request or of the
# partition's configuration ends. Not Resources (nodes busy), nor ReqNodeNotAvail (nodes down, drained or
# reserved, which come back): a request beyond every node is refused before submission instead.
NEVER_RUNS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints")


@dataclass(frozen=True)
class Node:
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    nodes: tuple
    max_nodes: int | None  # per job; None: no limit
    max_time_min: int | None


def _run(*cmd: str) -> str | None:
    """A SLURM client's output, None where it is missing or fails (no cluster answers)."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_count(gres: str) -> int:
    """GPUs in a node's Gres as sinfo prints it: `(null)`, `gpu:8`, `gpu:a100:4(S:0-1),gpu:v100:2`."""
    total = 0
    for item in gres.split(","):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def limit_minutes(limit: str) -> int | None:
    """Minutes of a time limit as sinfo prints it ([days-]hours:minutes:seconds, minutes:seconds, or
    `infinite`), rounded up; None for no limit."""
    if not limit[:1].isdigit():
        return None
    days, _, clock = limit.rpartition("-")
    h, m, s = ([0, 0, 0] + [int(part) for part in clock.split(":")])[-3:]
    return (int(days or 0) * 24 + h) * 60 + m + math.ceil(s / 60)


def _max_nodes(size: str) -> int | None:
    """The largest job of a partition in nodes, from sinfo's `min-max` job size (`1-infinite`, `1-4`)."""
    largest = size.rpartition("-")[2]
    return int(largest) if largest.isdigit() else None


@functools.cache
def partitions() -> dict | None:
    """{name: Partition} of the cluster, as sinfo lists its nodes (every state), read once per process;
    None where no cluster answers."""
    node_lines, partition_lines = _run("sinfo", "-h", "-N", "-o", "%R|%c|%m|%G"), _run("sinfo", "-h", "-o", "%P|%l|%s")
    if node_lines is None or partition_lines is None:
        return None
    members: dict = {}
    for line in node_lines.splitlines():
        part, cpus, mem, gres = line.split("|")
        members.setdefault(part, []).append(Node(int(cpus.rstrip("+")), int(mem.rstrip("+")), gpu_count(gres)))
    found = {}
    for line in partition_lines.splitlines():
        marked, time_limit, size = line.split("|")
        name = marked.rstrip("*")
        found[name] = Partition(name, marked.endswith("*"), tuple(members.get(name, ())), _max_nodes(size),
                                limit_minutes(time_limit))
    return found


def _key(param: str, value: object, config: dict) -> str:
    """The key that set launcher parameter `param` to `value`: the config key it is derived from
    (conf/hydra/launcher/submitit_slurm.yaml), or `hydra.launcher.<param>` where that was set itself."""
    cluster = config["cluster"]
    ranks = max(1, config["num_gpus"] or config["cpu_ranks"])
    derived = {
        "nodes": (config["num_nodes"], f"num_nodes={config['num_nodes']}"),
        "gpus_per_node": (gpus_per_node(config["num_gpus"]), f"num_gpus={config['num_gpus']}"),
        "cpus_per_task": (cpus_per_task(cluster["cpus"], cluster["cpus_per_rank"], config["num_gpus"],
                                        config["cpu_ranks"]),
                          f"cluster.cpus={cluster['cpus']}" if cluster["cpus"]
                          else f"cluster.cpus_per_rank={cluster['cpus_per_rank']} x {ranks} rank(s)"),
        "mem_gb": (mem_gb(cluster["mem_gb"], cluster["exclusive"]), f"cluster.mem_gb={cluster['mem_gb']}"),
        "timeout_min": (timeout_min(config["timeout_s"], cluster["time_margin_min"]),
                        f"timeout_s={config['timeout_s']:g} + cluster.time_margin_min={cluster['time_margin_min']}"),
        "partition": (cluster["partition"], f"cluster.partition={cluster['partition']}"),
    }[param]
    return derived[1] if derived[0] == value else f"hydra.launcher.{param}={value}"


def request_problem(params: dict, config: dict) -> str | None:
    """Why no node of the job's partition could ever run the job that the launcher parameters `params` ask for
    (the job's resolved config: `config`), as one line naming the key, what it asks and what the cluster
    allows; None when some could, or where no cluster answers (sbatch then says what is wrong)."""
    cluster = partitions()
    if not cluster:
        return None
    name = params.get("partition") or next((p.name for p in cluster.values() if p.default), None)
    if name not in cluster:
        if params.get("partition"):
            return (f"{_key('partition', name, config)}: no such SLURM partition "
                    f"(allowed: {', '.join(cluster)}; sinfo)")
        return None  # no default partition: sbatch asks for one
    part = cluster[name]
    if not part.nodes:
        return None
    # what a node must have, GPUs first (the CPUs derive from them); --mem=0 (the whole node) and no --mem fit any
    want = {"gpus_per_node": params.get("gpus_per_node") or 0, "cpus_per_task": params.get("cpus_per_task") or 1,
            "mem_gb": params.get("mem_gb") or 0}
    has = {"cpus_per_task": lambda n: n.cpus, "mem_gb": lambda n: n.mem_mb / 1024, "gpus_per_node": lambda n: n.gpus}
    units = {"cpus_per_task": "CPU(s)", "mem_gb": "GB", "gpus_per_node": "GPU(s)"}
    for param, amount in want.items():
        most = max(has[param](n) for n in part.nodes)
        if amount > most:
            return (f"{_key(param, params.get(param), config)}: {amount} {units[param]} per node, more than any node "
                    f"of SLURM partition {name} has (allowed: at most {most:.3g} {units[param]}; sinfo)")
    fit = sum(all(amount <= has[param](n) for param, amount in want.items()) for n in part.nodes)
    nodes = params.get("nodes") or 1
    allowed = min(fit, part.max_nodes or fit)
    if nodes > allowed:
        each = ", ".join(f"{amount} {units[param]}" for param, amount in want.items() if amount)
        return (f"{_key('nodes', params.get('nodes'), config)}: {nodes} nodes of {each} each, more than SLURM "
                f"partition {name} has or allows (allowed: at most {allowed}; sinfo)")
    limit = params.get("timeout_min")
    if limit and part.max_time_min is not None and limit > part.max_time_min:
        return (f"{_key('timeout_min', limit, config)}: a time limit of {limit} min, more than SLURM partition "
                f"{name} allows (allowed: at most {part.max_time_min} min; sinfo)")
    return None


# squeue's states (%T: a flag such as REQUEUED, COMPLETING or REQUEUE_HOLD is printed in place of the base
# state) of a job that SLURM has finished with. Any other state, SPECIAL_EXIT and STOPPED among them, may run
# again: a requeued run is COMPLETING, then REQUEUED or REQUEUE_HOLD, then PENDING.
FINISHED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "TIMEOUT"}


# squeue's own wait for a controller that does not answer is MessageTimeout (10 s by default) per attempt;
# the launcher asks again at its next poll, so one question need not wait longer
SQUEUE_TIMEOUT_S = 10


def still_queued(job_id: str) -> bool:
    """Whether SLURM may still run the job (`<job>_<task>` for an array task): squeue lists it in a state that
    is not final. Right after `scontrol requeue`, sacct shows the ended run's state (FAILED) while the job is
    to run again. A squeue that does not answer (a busy slurmctld times out) counts as queued, so that the
    caller asks again rather than writes the job off; a job squeue no longer knows (purged MinJobAge after it
    ended), or no squeue at all, as not queued."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%T"], check=False,
                              capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except OSError:
        return False
    except subprocess.TimeoutExpired:
        return True
    if proc.returncode != 0:
        return "Invalid job id" not in proc.stderr
    return any(state not in FINISHED for state in proc.stdout.split())


def never_running(job_ids: list) -> dict:
    """{job id: squeue's reason} of those of our pending jobs (`<job>_<task>` for array tasks) that SLURM
    keeps pending for a reason in NEVER_RUNS; {} where squeue does not answer."""
    out = _run("squeue", "-h", "--me", "-r", "-t", "PENDING", "-o", "%i|%r")
    found = {}
    for line in (out or "").splitlines():
        job_id, _, reason = line.partition("|")
        reason = reason.split(",")[0].strip()
        if job_id in job_ids and reason in NEVER_RUNS:
            found[job_id] = reason
    return found
