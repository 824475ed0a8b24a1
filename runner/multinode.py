"""DeepSpeed over several nodes: the hostfile (from SLURM's node list, or the user's `cluster.hostfile`),
master address and port, and the arguments of `deepspeed.launcher.runner` (the `deepspeed` CLI, which a one-node
job skips: backends/launchers.py) for a launch over `num_nodes` nodes, world size num_nodes x ranks per node.

Two ways to start the ranks of a multi-node job (`cluster.multinode`):

* per_node: one runner per node, as `hydra/launcher=submitit_slurm` starts them (srun, one task per node). Every
  node's runner starts its own node's ranks with `deepspeed --hostfile H --no_ssh --node_rank K`; the
  first node's runner owns the job (validates, writes job.json, builds the synthetic checkpoint, writes
  result.json), the others wait for its go-ahead and only run their ranks (`follow`).
* pdsh: one runner (on the first host, or anywhere that can ssh to the hosts) starts every node's ranks
  through DeepSpeed's default multi-node launcher (pdsh + passwordless ssh).

`auto` picks per_node inside an srun step that spans exactly num_nodes nodes, pdsh otherwise (an salloc
shell, or a user hostfile outside SLURM).
"""
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from backends import lookup, specs
from core.jobdir import atomic_write, write_json

HOSTFILE = "hostfile"
MULTINODE_MODES = ("auto", "per_node", "pdsh")
DS_DEFAULT_PORT = 29500


# ---------------------------------------------------------------------------------------------------
# Nodes


def expand_nodelist(nodelist: str) -> list:
    """SLURM's compressed node list (`gpu[01-03,07],login1`) as host names, in order."""
    hosts = []
    groups, depth, start = [], 0, 0  # split on the commas outside brackets
    for i, c in enumerate(nodelist):
        depth += c == "["
        depth -= c == "]"
        if c == "," and depth == 0:
            groups.append(nodelist[start:i])
            start = i + 1
    groups.append(nodelist[start:])
    for group in filter(None, (g.strip() for g in groups)):
        m = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", group)
        if not m:
            hosts.append(group)
            continue
        prefix, ranges, rest = m.groups()
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                for tail in expand_nodelist(rest) if rest else [""]:
                    hosts.append(f"{prefix}{n:0{len(lo)}d}{tail}")
    return hosts


def slurm_hosts() -> list:
    """The hosts of the current SLURM step (or job): `scontrol show hostnames` where it exists."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or ""
    if not nodelist:
        return []
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=False)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()
    return expand_nodelist(nodelist)


def read_hostfile(path: str) -> list:
    """[(host, slots)] of an MPI-style hostfile, as DeepSpeed reads it (comments and blank lines skipped)."""
    hosts = []
    for line in Path(path).expanduser().read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)
        if not m:
            raise ValueError(f"cluster.hostfile={path}: bad line {line!r} (expected 'host slots=N')")
        hosts.append((m.group(1), int(m.group(2))))
    return hosts


@dataclass(frozen=True)
class Nodes:
    """Where a multi-node job's ranks run, and how they are started."""
    hosts: tuple          # (host, slots) of the first num_nodes hosts
    hostfile: str | None  # the user's; None: written into the job dir from `hosts`
    mode: str             # per_node | pdsh
    node_rank: int        # this runner's node (per_node); 0 for pdsh
    master_addr: str
    master_port: int


def _ranks(config: dict) -> int:
    return lookup(config["backend"]["name"]).ranks_per_node(config)


def _mode(config: dict) -> str:
    mode = config["cluster"]["multinode"]
    if mode != "auto":
        return mode
    step_nodes = int(os.environ.get("SLURM_STEP_NUM_NODES") or 0)
    return "per_node" if step_nodes == config["num_nodes"] and "SLURM_NODEID" in os.environ else "pdsh"


def nodes(config: dict) -> Nodes | None:
    """The multi-node plan of a job, None for a one-node job. Raises ValueError naming what is missing."""
    num_nodes = config.get("num_nodes", 1)
    if num_nodes == 1:
        return None
    cluster = config["cluster"]
    if cluster["hostfile"]:
        hosts = read_hostfile(cluster["hostfile"])
    else:
        hosts = [(h, _ranks(config)) for h in slurm_hosts()]
        if not hosts:
            raise ValueError(f"num_nodes={num_nodes}: no hosts: not inside a SLURM allocation "
                             "(SLURM_JOB_NODELIST) and no cluster.hostfile")
    if len(hosts) < num_nodes:
        raise ValueError(f"num_nodes={num_nodes}: only {len(hosts)} host(s) "
                         f"({cluster['hostfile'] or 'SLURM node list'}: {', '.join(h for h, _ in hosts)})")
    hosts = hosts[:num_nodes]
    short = [h for h, slots in hosts if slots < _ranks(config)]
    if short:
        raise ValueError(f"num_gpus={config['num_gpus']}: host(s) {', '.join(short)} have fewer slots "
                         f"than the {_ranks(config)} ranks per node (cluster.hostfile={cluster['hostfile']})")
    mode = _mode(config)
    if mode not in ("per_node", "pdsh"):
        raise ValueError(f"cluster.multinode={mode}: allowed: {', '.join(MULTINODE_MODES)}")
    node_rank = int(os.environ.get("SLURM_NODEID", "0")) if mode == "per_node" else 0
    port = cluster["master_port"]
    if port is None:
        job_id = os.environ.get("SLURM_JOB_ID", "")
        port = 20000 + int(job_id) % 20000 if job_id.isdigit() else DS_DEFAULT_PORT
    hostfile = str(Path(cluster["hostfile"]).expanduser().resolve()) if cluster["hostfile"] else None
    return Nodes(hosts=tuple(hosts), hostfile=hostfile, mode=mode, node_rank=node_rank,
                 master_addr=cluster["master_addr"] or hosts[0][0], master_port=int(port))


def write_hostfile(job_dir: Path, hosts: tuple) -> Path:
    """job_dir/hostfile, written atomically (every node's runner writes the same content)."""
    path = Path(job_dir) / HOSTFILE
    atomic_write(path, "".join(f"{host} slots={slots}\n" for host, slots in hosts))
    return path


def deepspeed_args(config: dict, job_dir: Path) -> list | None:
    """The runner arguments that place a multi-node job (instead of --num_gpus/--include and
    --master_port), or None for a one-node job. DeepSpeed takes the first --num_nodes hosts of the
    hostfile and GPUs 0..num_gpus-1 on each: world size num_nodes x ranks per node."""
    plan = nodes(config)
    if plan is None:
        return None
    hostfile = plan.hostfile or str(write_hostfile(job_dir, plan.hosts))
    args = ["--hostfile", hostfile, "--num_nodes", str(config["num_nodes"]), "--num_gpus", str(_ranks(config)),
            "--master_addr", plan.master_addr, "--master_port", str(plan.master_port)]
    if plan.mode == "per_node":
        args += ["--no_ssh", "--node_rank", str(plan.node_rank)]
    else:
        args += ["--launcher", "pdsh"]
    return args


# ---------------------------------------------------------------------------------------------------
# Validation


def nodes_reason(config: dict) -> str | None:
    """Multi-node combinations that cannot run, as a one-line reason naming the key."""
    num_nodes = config.get("num_nodes", 1)
    if num_nodes < 1:
        return f"num_nodes={num_nodes}: must be >= 1"
    if config["cluster"]["array_parallelism"] < 1:
        return f"cluster.array_parallelism={config['cluster']['array_parallelism']}: must be >= 1"
    if num_nodes == 1:
        return None
    backend = config["backend"]["name"]
    if not lookup(backend).multinode:
        allowed = ", ".join(s.name for s in specs() if s.multinode)
        return (f"num_nodes={num_nodes}: backend={backend} runs on one machine "
                f"(multi-node needs backend={allowed or 'one that supports it'})")
    try:
        nodes(config)
    except (OSError, ValueError) as e:
        return str(e)
    return None


def is_multinode(config: dict) -> bool:
    return config.get("num_nodes", 1) > 1


# ---------------------------------------------------------------------------------------------------
# per_node: the first node's runner releases the others


def _ready_file(job_dir: Path) -> Path:
    return Path(job_dir) / f".nodes-ready-{os.environ.get('SLURM_JOB_ID', 'local')}"


def follower(config: dict) -> bool:
    """True on a node other than the first of a per_node multi-node launch: this runner only starts its
    node's ranks, the first node's runner owns the job."""
    return (is_multinode(config) and _mode(config) == "per_node"
            and int(os.environ.get("SLURM_NODEID") or 0) > 0)


def release(config: dict, job_dir: Path, launch: bool) -> None:
    """First node: tell the other nodes' runners to start their ranks (launch) or to give up (the job was
    invalid or failed before launching). The first call wins; later calls change nothing."""
    if not is_multinode(config):
        return
    write_json(_ready_file(job_dir), {"launch": launch}, exclusive=True)


def wait_for_release(job_dir: Path, timeout_s: float, poll_s: float = 0.5) -> bool:
    """Follower: wait for the first node's go-ahead; False if told to give up or nothing came in time."""
    path, deadline = _ready_file(job_dir), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return bool(json.loads(path.read_text())["launch"])
            except (ValueError, KeyError):
                pass  # being written: os.link makes it whole, but a shared file system may lag
        time.sleep(poll_s)
    return False
