"""SLURM through Hydra's submitit launcher, and multi-node DeepSpeed (runner/slurm.py, runner/multinode.py,
hydra_plugins/infersweep_launcher), without a cluster: submitit's local executor runs the same path end to
end; the sbatch script and the multi-node deepspeed command lines of GPU jobs are generated and checked.
tests/test_slurm.py runs the path on a real SLURM cluster."""
import base64
import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT, results, run_runner
from omegaconf import open_dict

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from hydra import compose, initialize_config_dir

from backends import lookup
from hydra_plugins.infersweep_launcher.launcher import cluster_refusal, job_launch_params, sbatch_script
from runner import multinode, unschedulable
from runner.config import register_configs
from runner.launch import launcher_command

register_configs()
SLURM_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES", "SLURM_NODEID")


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    """Whatever machine runs the tests, each test sees exactly the SLURM environment it sets."""
    for key in SLURM_ENV:
        monkeypatch.delenv(key, raising=False)


def compose_job(overrides: list, sweep_dir: Path, num: int = 0):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="runner"):
        cfg = compose(config_name="config", overrides=[*overrides, f"hydra.sweep.dir={sweep_dir}"],
                      return_hydra_config=True)
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = num
    return cfg


def job_config(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True,
                                  enum_to_str=True)


# --- submitit_local: the whole path on this machine -------------------------------------------------


def test_submitit_local_sweep_end_to_end(tmp_path, cache_dir):
    """Two bloom-tiny jobs, each in its own submitit process, one after the other; results read back."""
    sweep_dir = tmp_path / "sweep"
    proc = run_runner(["-m", "hydra/launcher=submitit_local", "batch_size=1,2", "new_tokens=8", "repeats=2",
                       "prompt_tokens=4", f"hydra.sweep.dir={sweep_dir}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    res = results(sweep_dir)
    assert [r["status"] for r in res] == ["ok", "ok"], [r["reason"] for r in res]
    assert [r["config"]["batch_size"] for r in res] == [1, 2]
    assert all(len(r["generate_s"]) == 2 and r["ms_per_token"] > 0 for r in res)
    # the callback's sweep.json (written by the submitting process) reached the job processes
    run_id = json.loads((sweep_dir / "sweep.json").read_text())["run_id"]
    assert {r["run_id"] for r in res} == {run_id}
    # two submitit jobs, two processes, one after the other (array_parallelism 1)
    assert len([p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]) == 2
    assert res[0]["env"]["hostname"]
    assert (sweep_dir / "1" / "job.json").stat().st_mtime >= (sweep_dir / "0" / "result.json").stat().st_mtime
    # the submitting process shows each job as it finishes, and the end-of-sweep table
    assert "[1/2 done] job 0 (local" in proc.stderr and "[2/2 done] job 1" in proc.stderr
    assert "accelerate bf16 gpus=0 bs=2 ok" in proc.stderr
    assert (sweep_dir / "seed_table.csv").exists() and "accelerate bf16" in proc.stdout


# --- SLURM: resources per job, and the sbatch script -------------------------------------------------


def test_slurm_resources_come_from_each_jobs_config(tmp_path):
    cfg = compose_job(["hydra/launcher=submitit_slurm", "backend=ds-inference", "num_nodes=2", "num_gpus=8",
                       "timeout_s=1800", "cluster.partition=gpu", "cluster.account=proj", "cluster.qos=high"],
                      tmp_path)
    params = job_launch_params(cfg)
    assert params["nodes"] == 2 and params["tasks_per_node"] == 1 and params["gpus_per_node"] == 8
    assert params["cpus_per_task"] == 8 * 8  # cpus_per_rank x ranks per node
    assert params["timeout_min"] == 30 + 10  # timeout_s + time_margin_min
    assert params["mem_gb"] == 0  # exclusive: the whole node's memory
    assert (params["partition"], params["account"], params["qos"]) == ("gpu", "proj", "high")
    assert params["array_parallelism"] == 1 and params["additional_parameters"] == {"exclusive": True}
    assert params["submitit_folder"] == f"{tmp_path}/.submitit/%j"

    cpu = job_launch_params(compose_job(["hydra/launcher=submitit_slurm", "num_gpus=0", "cluster.exclusive=false",
                                         "cluster.cpus=4", "cluster.array_parallelism=8"], tmp_path))
    assert cpu["gpus_per_node"] is None and cpu["cpus_per_task"] == 4 and cpu["mem_gb"] is None
    assert cpu["array_parallelism"] == 8 and cpu["additional_parameters"] == {}


def test_sbatch_script_for_a_two_node_job(tmp_path):
    cfg = compose_job(["hydra/launcher=submitit_slurm", "backend=ds-inference", "num_nodes=2", "num_gpus=8",
                       "dtype=fp16", "cluster.partition=gpu", "cluster.account=proj", "cluster.qos=high"], tmp_path)
    script = sbatch_script(job_launch_params(cfg), jobs=3)
    lines = set(script.splitlines())
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=64", "--time=20",
                 "--partition=gpu", "--account=proj", "--qos=high", "--exclusive", "--mem=0GB",
                 "--array=0-2%1", "--job-name=infersweep"):
        assert f"#SBATCH {flag}" in lines, (flag, script)
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and "-m submitit.core._submit" in srun[0] and str(tmp_path / ".submitit") in srun[0]


# --- multi-node DeepSpeed command lines ----------------------------------------------------------------


def _runner_args(cmd: list) -> list:
    return cmd[cmd.index("deepspeed.launcher.runner") + 1:]


def _flag(args: list, name: str) -> str:
    return args[args.index(name) + 1]


def _deepspeed_world(args: list) -> dict:
    """The ranks DeepSpeed's own runner would place for these arguments: {host: [slots]}."""
    runner = pytest.importorskip("deepspeed.launcher.runner")
    parsed = runner.parse_args(args)
    pool = runner.fetch_hostfile(parsed.hostfile)
    active = runner.parse_inclusion_exclusion(pool, parsed.include, parsed.exclude)
    return dict(runner.apply_num_nodes_and_gpus(active, parsed.num_nodes, parsed.num_gpus))


def _slurm_step(monkeypatch, tmp_path, node: int, nodelist: str = "gpu-a[07-08]", job_id: str = "81234"):
    """The environment srun gives one task per node of a 2-node step."""
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    monkeypatch.setenv("SLURM_STEP_NODELIST", nodelist)
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_NODEID", str(node))


@pytest.mark.parametrize("backend", ["ds-inference", "ds-zero"])
def test_two_nodes_of_eight_gpus_under_slurm(monkeypatch, tmp_path, backend):
    """2 nodes x 8 GPUs = world size 16, for tensor parallelism and for ZeRO: the hostfile from SLURM's
    node list, the same master address and port on both nodes, each node's runner with its node rank."""
    config = job_config(compose_job([f"backend={backend}", "num_nodes=2", "num_gpus=8", "dtype=fp16"], tmp_path))
    cmds = {}
    for node in (0, 1):
        _slurm_step(monkeypatch, tmp_path, node)
        job_dir = tmp_path / f"node{node}"
        job_dir.mkdir()
        cmds[node] = _runner_args(launcher_command(config, sys.executable, job_dir, tuple(map(str, range(8)))))
        assert (job_dir / "hostfile").read_text() == "gpu-a07 slots=8\ngpu-a08 slots=8\n"
        assert multinode.nodes_reason(config) is None
    for node, args in cmds.items():
        assert _flag(args, "--hostfile") == str(tmp_path / f"node{node}" / "hostfile")
        assert (_flag(args, "--num_nodes"), _flag(args, "--num_gpus")) == ("2", "8")
        assert _flag(args, "--master_addr") == "gpu-a07"
        assert _flag(args, "--master_port") == str(20000 + 81234 % 20000)
        assert "--no_ssh" in args and _flag(args, "--node_rank") == str(node)
        assert "--include" not in args and args[-2:] == ["backends.worker", str(tmp_path / f"node{node}")]
        world = _deepspeed_world(args)
        assert world == {"gpu-a07": list(range(8)), "gpu-a08": list(range(8))}
        assert sum(map(len, world.values())) == 16 == lookup(config["backend"]["name"]).world_size(config)


def test_user_hostfile_outside_slurm_launches_through_pdsh(tmp_path):
    """16-GPU ZeRO from a hostfile the user wrote: DeepSpeed's own multi-node launcher (pdsh), first host
    as master, the first num_nodes hosts of a longer file, 8 of the 16 slots on each."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# our boxes\nbox1 slots=16\nbox2 slots=16\nbox3 slots=16\n")
    config = job_config(compose_job(["backend=ds-zero", "num_nodes=2", "num_gpus=8", "dtype=bf16",
                                     f"cluster.hostfile={hostfile}", "cluster.master_port=29600"], tmp_path))
    args = _runner_args(launcher_command(config, sys.executable, tmp_path, tuple(map(str, range(8)))))
    assert _flag(args, "--hostfile") == str(hostfile) and not (tmp_path / "hostfile").exists()
    assert (_flag(args, "--master_addr"), _flag(args, "--master_port")) == ("box1", "29600")
    assert _flag(args, "--launcher") == "pdsh" and "--no_ssh" not in args
    world = _deepspeed_world(args)
    assert world == {"box1": list(range(8)), "box2": list(range(8))}
    assert lookup(config["backend"]["name"]).world_size(config) == 16


def test_one_node_command_is_unchanged(tmp_path, monkeypatch):
    _slurm_step(monkeypatch, tmp_path, 0)
    config = job_config(compose_job(["backend=ds-inference", "num_gpus=8"], tmp_path))
    cmd = launcher_command(config, sys.executable, tmp_path, tuple(map(str, range(8))))
    # DeepSpeed's per-node launcher itself, all 8 GPUs of this node, no hostfile
    assert "deepspeed.launcher.launch" in cmd and "deepspeed.launcher.runner" not in cmd and "--hostfile" not in cmd
    world = json.loads(base64.urlsafe_b64decode(_flag(cmd, "--world_info")))
    assert world == {"localhost": list(range(8))}


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu-a[07-08]", ["gpu-a07", "gpu-a08"]),
    ("n[1-3,10],login2", ["n1", "n2", "n3", "n10", "login2"]),
    ("rack[1-2]-gpu[01-02]", ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02"]),
    ("single", ["single"]),
])
def test_slurm_nodelist_expansion(nodelist, hosts):
    assert multinode.expand_nodelist(nodelist) == hosts
    from submitit.slurm.slurm import _parse_node_list  # submitit's own parser agrees

    assert _parse_node_list(nodelist) == hosts


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1),gpu:v100:2", 6),
                                        ("gpu:h200:8(S:0,1)", 8), ("shard:16,gpu:2", 2)])
def test_gpus_of_a_nodes_gres_as_sinfo_prints_it(gres, gpus):
    assert unschedulable.gpu_count(gres) == gpus


@pytest.mark.parametrize("limit, minutes", [("infinite", None), ("30:00", 30), ("2:00:00", 120),
                                            ("1-00:00:00", 1440), ("1-12:30:30", 2191)])
def test_partition_time_limit_as_sinfo_prints_it(limit, minutes):
    assert unschedulable.limit_minutes(limit) == minutes


@pytest.mark.parametrize("overrides, line", [
    (["num_gpus=8"],
     "num_gpus=8: 8 GPU(s) per node, more than any node of SLURM partition gpu has (allowed: at most 4 GPU(s)"),
    (["num_gpus=4", "num_nodes=3", "backend=ds-zero"],
     "num_nodes=3: 3 nodes of 4 GPU(s), 32 CPU(s) each, more than SLURM partition gpu has or allows (allowed: at most 2"),
    (["num_gpus=4", "timeout_s=7200"],
     "timeout_s=7200 + cluster.time_margin_min=10: a time limit of 130 min, more than"),
    (["num_gpus=4", "hydra.launcher.cpus_per_task=64"], "hydra.launcher.cpus_per_task=64: 64 CPU(s) per node"),
    (["num_gpus=4", "cluster.partition=gpu2"], "cluster.partition=gpu2: no such SLURM partition (allowed: gpu, cpu"),
])
def test_request_beyond_every_node_of_a_gpu_partition(monkeypatch, tmp_path, overrides, line):
    """What the local cluster (CPU nodes) cannot show: GPUs, a node of another size, a partition's limits."""
    big, small = unschedulable.Node(48, 512 * 1024, 4), unschedulable.Node(16, 256 * 1024, 4)
    monkeypatch.setattr(unschedulable, "partitions", lambda: {
        "gpu": unschedulable.Partition("gpu", True, (big, big, small), max_nodes=None, max_time_min=120),
        "cpu": unschedulable.Partition("cpu", False, (), max_nodes=None, max_time_min=None)})
    cfg = compose_job(["hydra/launcher=submitit_slurm", *overrides], tmp_path)
    assert line in str(cluster_refusal(cfg, job_config(cfg)))
    fits = compose_job(["hydra/launcher=submitit_slurm", "num_gpus=4", "num_nodes=2", "backend=ds-zero"], tmp_path)
    assert cluster_refusal(fits, job_config(fits)) is None


@pytest.mark.parametrize("overrides, words", [
    (["backend=accelerate", "num_nodes=2", "num_gpus=8"], ["num_nodes=2", "backend=accelerate", "one machine"]),
    (["backend=ds-zero", "num_nodes=2", "num_gpus=8", "isolate=false"], ["num_nodes=2", "no hosts"]),  # launched per job anyway
    (["backend=ds-zero", "num_nodes=2", "num_gpus=8"], ["num_nodes=2", "no hosts", "cluster.hostfile"]),
    (["backend=ds-zero", "num_nodes=0"], ["num_nodes=0"]),
    (["backend=ds-zero", "num_nodes=3", "num_gpus=8", "cluster.hostfile=HOSTS"], ["num_nodes=3", "only 2 host"]),
    (["backend=ds-zero", "num_nodes=2", "num_gpus=32", "cluster.hostfile=HOSTS"], ["num_gpus=32", "fewer slots"]),
    (["backend=ds-zero", "num_nodes=2", "num_gpus=8", "cluster.hostfile=HOSTS", "cluster.multinode=ssh"],
     ["cluster.multinode=ssh"]),
])
def test_multinode_validation(tmp_path, overrides, words):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=8\nb slots=16\n")
    overrides = [o.replace("HOSTS", str(hostfile)) for o in overrides]
    reason = multinode.nodes_reason(job_config(compose_job(overrides, tmp_path)))
    assert reason and all(w in reason for w in words), reason
