"""The cluster path against a real SLURM cluster: slurmctld, two slurmd nodes, slurmdbd accounting (what sacct,
and so submitit, reads), as `bash scripts/slurm-local.sh start` runs them on this machine. Skipped, with the
reason, where no such cluster answers.

Faults are SLURM's own (scancel, scontrol requeue, the time limit, a node set down, a partition's time limit
lowered), dealt to a job while its launcher hangs: the job's `stack` is an interpreter whose launcher process waits while a file named after the
job exists, after writing `hanging` (the job's SLURM id) into the job directory: the test waits for that
file, never for a guessed time.

Every test is a method of TestCluster: the cluster is state they share (a node set down would end another
test's job, a lowered partition limit hold it), and tests/conftest.py runs the tests of one class on one pytest-xdist worker, in order.
"""
import itertools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import history_of, results, run_runner

from runner.unschedulable import still_queued

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

LOCAL_CONF = Path(os.environ.get("SLURM_LOCAL_DIR", "/var/tmp/infersweep-slurm")) / "etc" / "slurm.conf"
SLURM_CONF = os.environ.get("SLURM_CONF") or (str(LOCAL_CONF) if LOCAL_CONF.exists() else "")
# isolate=true: the faults are dealt to a job's own launcher, found by its job directory (a SLURM job runs
# one point either way: its shared worker would serve that one job)
SMALL = ["num_gpus=0", "new_tokens=4", "repeats=1", "prompt_tokens=4", "timeout_s=300", "isolate=true"]


def slurm(*args: str, check: bool = True) -> str:
    env = {**os.environ, "SLURM_CONF": SLURM_CONF} if SLURM_CONF else None
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30, env=env).stdout


def cluster_nodes() -> list:
    """The nodes of the cluster that answers, [] where none does."""
    try:
        return slurm("sinfo", "-h", "-N", "-o", "%N").split()
    except (OSError, subprocess.SubprocessError):
        return []


NODES = cluster_nodes()
pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(len(NODES) < 2, reason="no SLURM cluster of 2 nodes answers sinfo "
                                 "(bash scripts/slurm-local.sh start; SLURM_CONF)")]


def slurm_env() -> dict:
    return {"SLURM_CONF": SLURM_CONF, "INFERSWEEP_SLURM_REFRESH_S": "1"}


def hang_stack(tmp_path: Path, name: str) -> tuple:
    """(a `stack` interpreter whose launcher hangs while a file named as its job's directory (the job's index)
    exists in the returned directory, that directory)."""
    gates, inject = tmp_path / f"{name}.hang", tmp_path / f"inject-{name}"
    gates.mkdir()
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "argv = getattr(sys, 'orig_argv', [])\n"
        "if '--module' in argv:  # the launcher (accelerate's or DeepSpeed's), not the worker it starts\n"
        f"    gate = os.path.join({str(gates)!r}, os.path.basename(argv[-1]))\n"
        "    if os.path.exists(gate):\n"
        "        task, job = os.environ.get('SLURM_ARRAY_TASK_ID'), os.environ['SLURM_JOB_ID']\n"
        "        slurm_id = f\"{os.environ['SLURM_ARRAY_JOB_ID']}_{task}\" if task else job\n"
        "        path = os.path.join(argv[-1], 'hanging')\n"
        "        open(path + '.tmp', 'w').write(slurm_id)\n"
        "        os.replace(path + '.tmp', path)\n"
        "    while os.path.exists(gate):\n"
        "        time.sleep(0.2)\n")
    stack = tmp_path / f"python-{name}"
    stack.write_text(f"#!/bin/sh\nPYTHONPATH={inject}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} \"$@\"\n")
    stack.chmod(0o755)
    return stack, gates


class Sweep:
    """`python -m runner -m hydra/launcher=submitit_slurm ARGS` in the background, its output in files."""

    def __init__(self, args: list, tmp_path: Path, cache: Path, name: str = "run"):
        self.err = tmp_path / f"{name}.err"
        env = {**os.environ, "INFERSWEEP_CACHE": str(cache), "INFERSWEEP_HISTORY": str(history_of(cache)),
               "CUDA_VISIBLE_DEVICES": "", **slurm_env()}
        with open(tmp_path / f"{name}.out", "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "runner", "-m", "hydra/launcher=submitit_slurm",
                                          *args], cwd=Path(__file__).resolve().parents[1], env=env,
                                         stdout=out, stderr=err)

    def hanging(self, job_dir: Path, deadline_s: float = 120) -> str:
        """The SLURM id of the job once its launcher hangs."""
        path, what = job_dir / "hanging", f"job {job_dir.name} hanging"
        end = time.monotonic() + deadline_s
        while not path.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"runner ended (rc {self.proc.returncode}) before {what}:\n{self.err.read_text()[-3000:]}")
            if time.monotonic() > end:
                pytest.fail(f"no {what} within {deadline_s} s:\n{self.err.read_text()[-3000:]}")
            time.sleep(0.1)
        return path.read_text()

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            pytest.fail(f"runner still running {timeout} s later:\n{self.err.read_text()[-3000:]}")

    @property
    def stderr(self) -> str:
        return self.err.read_text()


def accounting(job_id: str) -> dict:
    """sacct's fields of a job (its last run)."""
    fields = ("JobID", "State", "ReqCPUS", "TimelimitRaw", "NodeList", "Start", "End")
    out = slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", ",".join(fields))
    return dict(zip(fields, out.splitlines()[-1].split("|")))


def release_requeued(job_id: str) -> None:
    """Start a job requeued with `scontrol requeuehold` at once, once its first run has ended (it is PENDING
    then), rather than in about 2 minutes, as SLURM would. Not in the second its first run ended: the requeue
    revoked that run's credential on its node, and slurmd refuses a new one created in the same second of the
    clock as the revocation ("Killing non-startable batch job: Job credential revoked": the second run FAILED).
    (A begin time in the future would wait for SLURM's next scheduling pass, up to a minute.)"""
    while slurm("squeue", "-h", "-j", job_id, "-o", "%T").strip() != "PENDING":
        time.sleep(0.2)
    time.sleep(math.floor(time.time()) + 2 - time.time())  # the clock's second after next
    slurm("scontrol", "update", f"jobid={job_id}", "starttime=now")
    slurm("scontrol", "release", job_id)


@pytest.fixture(scope="module")
def fault_sweep(tmp_path_factory, cache_dir) -> dict:
    """One sweep of four jobs, two resource sets (cluster.cpus=1,2 x batch_size=1,2: two arrays of two,
    chained), a fault of SLURM's dealt to each of the first three while its launcher hangs: job 0 scancel,
    job 1 scontrol requeuehold, released once its first run ended (its second run does not hang), job 2 past
    its time limit (scontrol lowers it to 0 minutes: SLURM ends the job, TIMEOUT, at its next time-limit
    check, one every 30 s, rather than a minute later, SLURM's least limit); job 3 runs as it is."""
    root = tmp_path_factory.mktemp("fault-sweep")
    stack, gates = hang_stack(root, "hang")
    for job in (0, 1, 2):
        (gates / str(job)).touch()
    sweep_dir = root / "sweep"
    sweep = Sweep(["cluster.cpus=1,2", "batch_size=1,2", f"stack={stack}", *SMALL, f"hydra.sweep.dir={sweep_dir}"],
                  root, cache_dir)
    slurm("scancel", sweep.hanging(sweep_dir / "0"))
    requeued = sweep.hanging(sweep_dir / "1")
    # requeuehold: the second run waits until the gate is gone and the first run has ended (a plain requeue
    # could start it while either was not yet so, and it failed in the same second: release_requeued)
    slurm("scontrol", "requeuehold", requeued)
    (gates / "1").unlink()  # the next run of the job does not hang
    release_requeued(requeued)
    slurm("scontrol", "update", f"jobid={sweep.hanging(sweep_dir / '2')}", "timelimit=0")
    return {"dir": sweep_dir, "rc": sweep.wait(), "stderr": sweep.stderr, "results": results(sweep_dir)}


class TestCluster:
    def test_sweep_of_arrays_with_each_jobs_resources_read_back(self, fault_sweep, cache_dir):
        """The fault sweep as SLURM ran it: two arrays, each job's own CPUs and time limit, one job at a time;
        every job's result read back with its SLURM ids and nodes, the sweep's table and history entry."""
        sweep_dir, res = fault_sweep["dir"], fault_sweep["results"]
        assert fault_sweep["rc"] == 0, fault_sweep["stderr"]
        assert [(r["status"], r["config"]["cluster"]["cpus"], r["config"]["batch_size"]) for r in res] == [
            ("error", 1, 1), ("ok", 1, 2), ("timeout", 2, 1), ("ok", 2, 2)], [r["reason"] for r in res]
        scheds = [r["env"]["scheduler"] for r in res]
        assert [(s["name"], s["array_task_id"]) for s in scheds] == [("slurm", 0), ("slurm", 1)] * 2
        assert scheds[0]["job_id"] == scheds[1]["job_id"] != scheds[2]["job_id"] == scheds[3]["job_id"]
        acct = [accounting(f"{s['job_id']}_{s['array_task_id']}") for s in scheds]
        assert [a["State"].split()[0] for a in acct] == ["CANCELLED", "COMPLETED", "TIMEOUT", "COMPLETED"], acct
        assert [int(a["ReqCPUS"]) for a in acct] == [1, 1, 2, 2]  # each job's own cluster.cpus
        # timeout_s=300 in minutes + time_margin_min; job 2's limit was lowered to 0, which sacct shows as none
        assert [a["TimelimitRaw"] for a in acct] == [str(5 + 10), str(5 + 10), "", str(5 + 10)]
        assert [s["nodelist"] for s in scheds] == [a["NodeList"] for a in acct]
        assert {a["NodeList"] for a in acct} <= set(NODES)
        # one job of the sweep at a time (array_parallelism=1): each started after the one before it ended
        assert all(later["Start"] >= earlier["End"] for earlier, later in itertools.pairwise(acct)), acct
        assert "[4/4 done]" in fault_sweep["stderr"]
        assert (sweep_dir / "seed_table.csv").exists()
        run_id = json.loads((sweep_dir / "sweep.json").read_text())["run_id"]
        db = sqlite3.connect(history_of(cache_dir))
        assert db.execute("SELECT COUNT(*) FROM results JOIN sweeps ON results.sweep = sweeps.id "
                          "WHERE sweeps.run_id = ?", (run_id,)).fetchone()[0] == 4

    def test_cancelled_job_is_a_row_naming_slurms_state_and_the_sweep_goes_on(self, fault_sweep):
        cancelled, *rest = fault_sweep["results"]
        assert cancelled["status"] == "error", cancelled["reason"]
        assert cancelled["reason"].startswith("slurm job ") and "CANCELLED" in cancelled["reason"], cancelled["reason"]
        assert [r["status"] for r in rest] == ["ok", "timeout", "ok"]  # the jobs after it ran

    def test_requeued_job_runs_again_and_writes_one_result(self, fault_sweep):
        """scontrol requeue of a running job: SLURM ends that run and starts the job again (its restart count
        1); the ended run writes nothing, the second writes the job's one result, the sweep counts it once."""
        res = fault_sweep["results"][1]
        assert res["status"] == "ok", res["reason"]
        assert res["env"]["scheduler"]["restart_count"] == 1
        assert len(list((fault_sweep["dir"] / "1" / "attempts").iterdir())) == 1  # the ended run left none
        assert fault_sweep["stderr"].count("done] job 1 ") == 1

    def test_job_past_its_slurm_time_limit_is_timeout(self, fault_sweep):
        """SLURM ends the job at its time limit (TIMEOUT), well before the runner's own timeout_s, and the
        row says so."""
        res = fault_sweep["results"][2]
        assert res["status"] == "timeout" and "time limit" in res["reason"], res["reason"]

    def test_node_set_down_mid_job_is_a_row_and_resume_runs_it_again(self, tmp_path, cache_dir):
        """A node set down under a running job that may not be requeued (sbatch --no-requeue): SLURM's
        NODE_FAIL is the job's row, the sweep ends; the same command again runs the job, now on the other node."""
        stack, gates = hang_stack(tmp_path, "down")
        (gates / "0").touch()
        sweep_dir = tmp_path / "sweep"
        args = [f"stack={stack}", "+hydra.launcher.additional_parameters.no-requeue=true", "cluster.cpus=1", *SMALL,
                f"hydra.sweep.dir={sweep_dir}"]
        sweep = Sweep(args, tmp_path, cache_dir)
        node = accounting(sweep.hanging(sweep_dir / "0"))["NodeList"]
        try:
            slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=infersweep test")
            assert sweep.wait() == 3, sweep.stderr
            [res] = results(sweep_dir)
            assert res["status"] == "error" and "NODE_FAIL" in res["reason"], res["reason"]
            assert res["env"]["scheduler"]["nodelist"] == node
            (gates / "0").unlink()
            again = Sweep(args, tmp_path, cache_dir, name="resume")
            assert again.wait() == 0, again.stderr
        finally:
            slurm("scontrol", "update", f"nodename={node}", "state=resume", check=False)
        [res] = results(sweep_dir)
        assert res["status"] == "ok", res["reason"]
        assert res["env"]["scheduler"]["nodelist"] != node

    def test_two_node_deepspeed_zero3_job_through_srun(self, tmp_path, cache_dir):
        """ZeRO-3 over the two nodes (one CPU rank each): sbatch --nodes=2, srun starts one runner per node,
        each starts its node's rank through `deepspeed --hostfile --no_ssh --node_rank`; one result, world
        size 2, the hostfile from SLURM's node list."""
        sweep_dir = tmp_path / "sweep"
        proc = run_runner(["-m", "hydra/launcher=submitit_slurm", "backend=ds-zero", "dtype=fp32", "num_nodes=2",
                           "cluster.cpus=1", *SMALL, f"hydra.sweep.dir={sweep_dir}"], cache_dir, timeout=300,
                          env_extra=slurm_env())
        assert proc.returncode == 0, proc.stderr
        [res] = results(sweep_dir)
        assert res["status"] == "ok", res["reason"]
        assert res["backend_info"]["world_size"] == 2 and sorted(r["rank"] for r in res["per_rank"]) == [0, 1]
        sched = res["env"]["scheduler"]
        assert sorted(slurm("scontrol", "show", "hostnames", sched["nodelist"]).split()) == sorted(NODES[:2])
        assert (sweep_dir / "0" / "hostfile").read_text() == "".join(f"{n} slots=1\n" for n in NODES[:2])
        assert "--no_ssh --node_rank 1" in (sweep_dir / "0" / "job.node1.log").read_text()
        assert accounting(sched["job_id"])["State"] == "COMPLETED"

    @pytest.mark.parametrize("key", ["cluster.cpus_per_rank", "cluster.mem_gb", "num_gpus"])
    def test_request_that_no_node_has_is_refused_before_anything_is_submitted(self, key, tmp_path, cache_dir):
        """More CPUs, memory or GPUs per node than any node has: SLURM would keep the job PENDING for ever (the
        CPUs, PartitionConfig) or sbatch refuse it mid-sweep; the runner refuses the sweep first, exit 2, in one
        line naming the key, its value and the most any node has as sinfo lists it, and submits nothing."""
        sizes = [line.split() for line in slurm("sinfo", "-h", "-N", "-o", "%c %m").splitlines()]
        cpus, mem_gb = max(int(c) for c, _ in sizes), max(int(m) for _, m in sizes) / 1024
        ask, allowed = {"cluster.cpus_per_rank": (cpus + 1, f"at most {cpus} CPU(s)"),
                        "cluster.mem_gb": (int(mem_gb) + 1, f"at most {mem_gb:.3g} GB"),
                        "num_gpus": (1, "at most 0 GPU(s)")}[key]  # the local cluster's nodes have no GPU
        cpus_set = {} if key == "cluster.cpus_per_rank" else {"cluster.cpus": 1}  # cluster.cpus would override it
        args = {**dict(a.split("=") for a in SMALL), **cpus_set, key: ask}
        sweep_dir = tmp_path / "sweep"
        proc = run_runner(["-m", "hydra/launcher=submitit_slurm", *(f"{k}={v}" for k, v in args.items()),
                           f"hydra.sweep.dir={sweep_dir}"], cache_dir, timeout=120, env_extra=slurm_env())
        assert proc.returncode == 2, proc.stderr
        [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert line.startswith(f"error: {key}={ask}") and allowed in line and "SLURM partition" in line, line
        assert not (sweep_dir / ".submitit").exists() and not results(sweep_dir)  # nothing was submitted

    def test_job_that_slurm_keeps_pending_for_good_is_cancelled_as_an_invalid_row(self, tmp_path, cache_dir):
        """What SLURM reveals only after submission: the partition's time limit is lowered below the jobs' own
        while the first of two runs (an administrator's change), so the second stays PENDING with the reason
        PartitionTimeLimit, which no wait ends. The runner cancels it and writes an `invalid` row naming the
        reason and the request; the first job's result stays, the sweep ends."""
        stack, gates = hang_stack(tmp_path, "limit")
        (gates / "0").touch()
        sweep_dir = tmp_path / "sweep"
        sweep = Sweep(["batch_size=1,2", f"stack={stack}", "cluster.cpus=1", *SMALL, f"hydra.sweep.dir={sweep_dir}"],
                      tmp_path, cache_dir)
        partition = next(p for p in slurm("sinfo", "-h", "-o", "%P").split() if p.endswith("*")).rstrip("*")
        before = slurm("scontrol", "show", "partition", partition).split("MaxTime=")[1].split()[0]
        try:
            running = sweep.hanging(sweep_dir / "0")
            slurm("scontrol", "update", f"partitionname={partition}", "maxtime=10")  # the jobs ask for 5 + 10 min
            (gates / "0").unlink()
            assert sweep.wait() == 0, sweep.stderr
        finally:
            (gates / "0").unlink(missing_ok=True)  # a failed test leaves no job hanging
            slurm("scontrol", "update", f"partitionname={partition}", f"maxtime={before}", check=False)
        first, second = results(sweep_dir)
        assert first["status"] == "ok", first["reason"]
        assert second["status"] == "invalid", second["reason"]
        assert "pending (PartitionTimeLimit)" in second["reason"] and "timeout_min=15" in second["reason"]
        sched = second["env"]["scheduler"]
        assert f"{sched['job_id']}_{sched['array_task_id']}" == running.replace("_0", "_1")
        # the controller's own word (sacct's record of a job may come seconds later)
        assert slurm("squeue", "-h", "-t", "all", "-j", running.replace("_0", "_1"), "-o", "%T").strip() == "CANCELLED"
        # before or after job 0 ended, as soon as SLURM's scheduler gave the reason
        assert "done] job 1 (slurm " in sweep.stderr and "[2/2 done]" in sweep.stderr
        assert (sweep_dir / "seed_table.csv").exists()

    def test_job_that_sbatch_refuses_is_an_invalid_row(self, tmp_path, cache_dir):
        """An sbatch option the check before the sweep does not read (here --mincpus beyond every node, through
        additional_parameters): sbatch refuses the array at submission; its job is an `invalid` row with
        sbatch's own words instead of a traceback, and the sweep ends as any other."""
        cpus = max(int(c) for c in slurm("sinfo", "-h", "-N", "-o", "%c").split())
        sweep_dir = tmp_path / "sweep"
        proc = run_runner(["-m", "hydra/launcher=submitit_slurm", "cluster.cpus=1", *SMALL,
                           f"+hydra.launcher.additional_parameters.mincpus={cpus + 1}", f"hydra.sweep.dir={sweep_dir}"],
                          cache_dir, timeout=120, env_extra=slurm_env())
        assert proc.returncode == 3, proc.stderr  # nothing measured
        [res] = results(sweep_dir)
        assert res["status"] == "invalid" and res["reason"].startswith("sbatch refused the job: sbatch: error:"), res
        assert "Requested node configuration is not available" in res["reason"], res["reason"]
        assert "[1/1 done] job 0 (not submitted)" in proc.stderr and "Traceback" not in proc.stderr

    def test_job_stays_queued_until_slurm_has_finished_with_it(self, monkeypatch):
        """The launcher writes a job off only once SLURM has finished with it: a held job is queued, also
        while slurmctld does not answer (frozen: squeue times out, where a busy controller on a loaded CI
        machine once made a requeued job count as ended); a cancelled one, or one squeue does not know, is not."""
        ctld_pid = LOCAL_CONF.parents[1] / "run" / "slurmctld.pid"
        if not ctld_pid.exists():
            pytest.skip("the cluster is not scripts/slurm-local.sh's: its slurmctld is not ours to freeze")
        monkeypatch.setenv("SLURM_CONF", SLURM_CONF)
        job = slurm("sbatch", "--parsable", "--hold", "--wrap", "true").strip()
        try:
            assert still_queued(job)
            ctld = int(ctld_pid.read_text())
            os.kill(ctld, signal.SIGSTOP)
            try:
                assert still_queued(job)
            finally:
                os.kill(ctld, signal.SIGCONT)
        finally:
            slurm("scancel", job)
        assert not still_queued(job)
        assert not still_queued(str(int(job) + 100000))
