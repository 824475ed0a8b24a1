"""Clusters: a job's SLURM resources, and DeepSpeed over several nodes.

Two halves, both torch-free and submitit-free (the submitit launchers live in
hydra_plugins/infersweep_launcher and call in here):

* resources: the `infersweep.*` resolvers that conf/hydra/launcher/{slurm,local}.yaml use to derive
  each job's nodes, GPUs, CPUs, memory and time limit from that job's own config;
* multi-node: the hostfile (from SLURM's node list, or the user's `cluster.hostfile`), master address and
  port, and the arguments that turn `deepspeed.launcher.runner --num_gpus N` into a launch over
  `num_nodes` nodes, world size num_nodes x ranks per node.

Two ways to start the ranks of a multi-node job (`cluster.multinode`):

* per_node: one runner per node, as `hydra/launcher=slurm` starts them (srun, one task per node). Every
  node's runner starts its own node's ranks with `deepspeed --hostfile H --no_ssh --node_rank K`; the
  first node's runner owns the job (validates, writes job.json, builds the synthetic checkpoint, writes
  result.json), the others wait for its go-ahead and only run their ranks (`follow`).
* pdsh: one runner (on the first host, or anywhere that can ssh to the hosts) starts every node's ranks
  through DeepSpeed's default multi-node launcher (pdsh + passwordless ssh).

`auto` picks per_node inside an srun step that spans exactly num_nodes nodes, pdsh otherwise (an salloc
shell, or a user hostfile outside SLURM).
"""
import functools
import json
import math
import os
import re
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

HOSTFILE = "hostfile"
MULTINODE_MODES = ("auto", "per_node", "pdsh")
DS_DEFAULT_PORT = 29500


@dataclass
class ClusterConfig:
    # sbatch's --partition, --account, --qos (null: the cluster's defaults).
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    # CPUs per task (one task per node): null derives cpus_per_rank x ranks per node.
    cpus: int | None = None
    cpus_per_rank: int = 8
    # Host memory per node in GB: null asks for the whole node's (--mem=0) when exclusive, else sets none.
    mem_gb: int | None = None
    # SLURM time limit = timeout_s + this margin (interpreter start, probe, synthetic checkpoint build).
    time_margin_min: int = 10
    # Jobs of the sweep that run at the same time. 1 (default): one after another, since concurrent jobs on
    # one node corrupt each other's timings; raise it for CPU-only or functional sweeps.
    array_parallelism: int = 1
    # --exclusive: nobody else's job on the nodes while one of ours measures.
    exclusive: bool = True
    # Multi-node DeepSpeed: an MPI-style hostfile ("host slots=N" per line); null: SLURM's node list.
    hostfile: str | None = None
    # null: the first host; master_port null: derived from SLURM_JOB_ID (same on every node), else 29500.
    master_addr: str | None = None
    master_port: int | None = None
    # auto | per_node | pdsh (see the module docstring).
    multinode: str = "auto"


# ---------------------------------------------------------------------------------------------------
# Resources: resolvers for the launcher configs


def ranks_per_node(num_gpus: int | None, cpu_ranks: int, backend: str) -> int:
    """Processes a job starts on each node: one per GPU for DeepSpeed, cpu_ranks on the CPU; Accelerate
    runs one process whatever the GPU count."""
    if backend == "accelerate":
        return 1
    return num_gpus or cpu_ranks


def gpus_per_node(num_gpus: int | None) -> int | None:
    """GPUs to ask SLURM for. num_gpus=null (resolved on the node) asks for none: set it on a cluster."""
    return num_gpus or None


def cpus_per_task(cpus: int | None, cpus_per_rank: int, num_gpus: int | None, cpu_ranks: int) -> int:
    return cpus or cpus_per_rank * max(1, num_gpus or cpu_ranks)


def mem_gb(mem: int | None, exclusive: bool) -> int | None:
    if mem is not None:
        return mem
    return 0 if exclusive else None


def timeout_min(timeout_s: float, margin_min: int) -> int:
    return math.ceil(float(timeout_s) / 60) + int(margin_min)


def register_resolvers() -> None:
    for name, fn in (("gpus_per_node", gpus_per_node), ("cpus", cpus_per_task), ("mem_gb", mem_gb),
                     ("timeout_min", timeout_min)):
        OmegaConf.register_new_resolver(f"infersweep.{name}", fn, replace=True)


register_resolvers()

# conf/hydra/launcher/submitit_{slurm,local}.yaml carry the plugin's own names, so that
# `hydra/launcher=submitit_slurm` is ours; Hydra merges them onto the plugin's schema of the same name and
# warns that such matching is deprecated. It is how Hydra 1.3 works (pyproject pins hydra-core 1.3.*).
warnings.filterwarnings("ignore", category=UserWarning,
                        message=r"\s*'hydra/launcher/submitit_(slurm|local)' is validated against ConfigStore")


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
    return ranks_per_node(config["num_gpus"], config["cpu_ranks"], config["backend"]["name"])


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
    tmp = path.with_name(f".{HOSTFILE}.{os.getpid()}")
    tmp.write_text("".join(f"{host} slots={slots}\n" for host, slots in hosts))
    os.replace(tmp, path)
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


def world_size(config: dict) -> int:
    return config.get("num_nodes", 1) * _ranks(config)


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
    if backend not in ("ds-inference", "ds-zero"):
        return (f"num_nodes={num_nodes}: backend={backend} runs one process on one machine "
                "(multi-node needs backend=ds-inference or ds-zero)")
    if not config["isolate"]:
        return f"isolate=false: a shared worker runs on one node (num_nodes={num_nodes} needs isolate=true)"
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
    path = _ready_file(job_dir)
    tmp = path.with_name(path.name + f".{os.getpid()}")
    tmp.write_text(json.dumps({"launch": launch}))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


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


def multinode_job(run_job):
    """Decorates runner.job.run_job. On a follower node: start this node's ranks instead of running the
    job. On the first node: whatever way the job ends (invalid, kept from an earlier run, failed before
    launching, or done), release the followers so that none waits in vain."""
    @functools.wraps(run_job)
    def wrapper(cfg):
        from hydra.core.hydra_config import HydraConfig

        from runner.job import resolve

        config = resolve(cfg)
        if not is_multinode(config):
            return run_job(cfg)
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        if follower(config):
            job_dir.mkdir(parents=True, exist_ok=True)
            return follow(config, job_dir)
        try:
            return run_job(cfg)
        finally:
            release(config, job_dir, launch=False)
    return wrapper


def follow(config: dict, job_dir: Path) -> dict:
    """A follower node's runner: once the first node says go, start this node's ranks under the job's
    timeout, their output in job.node<K>.log. Writes no result: a rank that fails here claims result.json
    itself (backends/worker.py), and the first node's runner reports everything else."""
    from backends.synthetic import checkpoint_ready
    from runner.launch import launcher_command, run_process
    from runner.stack import interpreter, visible_gpus

    node_rank = int(os.environ.get("SLURM_NODEID") or 0)
    log_path = Path(job_dir) / f"job.node{node_rank}.log"
    # the first node may build the synthetic checkpoint (up to timeout_s) before it launches
    if not wait_for_release(job_dir, 2 * config["timeout_s"] + 300):
        with open(log_path, "a") as log:
            log.write("the first node did not launch the job (invalid, failed before launch, or no word)\n")
        return {"status": "skipped", "node_rank": node_rank}
    python = interpreter(config["stack"])
    if config["model"]["source"] == "synthetic" and not checkpoint_ready(config):  # a node-local cache_dir
        run_process([python, "-m", "backends.synthetic", str(job_dir)], log_path, config["timeout_s"])
    rc = run_process(launcher_command(config, python, Path(job_dir), visible_gpus()), log_path,
                     config["timeout_s"])
    return {"status": "launched", "node_rank": node_rank, "exit_code": rc}
