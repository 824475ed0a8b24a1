"""infersweep's submitit launchers: hydra/launcher=submitit_slurm and submitit_local pick them
(conf/hydra/launcher/ overrides the plugin's configs of those names).

They are the hydra-submitit-launcher plugin's SlurmLauncher and LocalLauncher (same executors, same
pickled Hydra job, same `.submitit/` folder under the sweep dir) with four changes:

* resources per job: Hydra resolves `hydra.launcher` once, against the sweep's base config, so a sweep
  over num_gpus=1,8 would get one GPU count for all. Here every job's launcher config is resolved
  against that job's own config (its overrides applied), through the `infersweep.*` resolvers of
  runner/slurm.py; jobs that need the same resources go to SLURM as one array.
* one job at a time by default (`cluster.array_parallelism`, 1): an array's `%1`, and the arrays of a
  sweep chained with `--dependency=afterany:` so that no two of its jobs run at once. The local
  executor starts every job at once; here at most array_parallelism run together.
* a job that ends without a result (SLURM's time limit, a node failure, a crash outside the runner's
  own handling) becomes a `timeout` or `error` result in its job dir instead of aborting the sweep, and
  the submitting process prints a line per finished job: the jobs run in other processes, where the
  runner's own progress goes to submitit's log files.
* a SLURM job that no node could ever run: refused before anything is submitted (`cluster_refusal`, which
  the sweeper asks of every job: exit 2); one that sbatch refuses, or that SLURM keeps pending for a reason
  no wait ends (runner/unschedulable.py; then cancelled), becomes an `invalid` result, so that the sweep
  neither stops nor waits for it forever.
"""
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

import runner.slurm  # noqa: F401 -- the infersweep.* resolvers, the warning filter
from runner.failure import exception_lines
from runner.unschedulable import never_running, request_problem, still_queued

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    from submitit.core.utils import FailedJobError
except ImportError:  # the `slurm` extra is not installed: no launchers here, and nothing to complain about
    BaseSubmititLauncher = None

log = logging.getLogger(__name__)

INIT_KEYS = ("submitit_folder", "max_num_timeout")
REFRESH_S = float(os.environ.get("INFERSWEEP_SLURM_REFRESH_S", "30"))  # sacct at most this often
# SLURM states of a job that SLURM itself ended (scancel, the time limit, a node failure, preemption): its
# process was stopped before it could write submitit's result file, so submitit's wait for that file (15 s,
# for shared file systems that show a new file late) would only hold up the sweep's next results.
ENDED_BY_SLURM = ("CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "DEADLINE", "BOOT_FAIL")
# The launcher parameters that a row of a job SLURM never runs names (with its additional_parameters).
REQUEST_KEYS = ("partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "constraint")


def job_launch_params(sweep_config) -> dict:
    """The launcher parameters of one job: its `hydra.launcher`, resolved against its own config."""
    params = OmegaConf.to_container(sweep_config.hydra.launcher, resolve=True)
    params.pop("_target_", None)
    cluster = sweep_config.get("cluster")
    if cluster is not None and "partition" in params and cluster.exclusive:  # SLURM only
        params.setdefault("additional_parameters", {})["exclusive"] = True
    return params


def cluster_refusal(cfg, config: dict) -> str | None:
    """Why SLURM could never run the job of `cfg` (its composed config, hydra node included; `config`: the
    same resolved, without it): its request exceeds every node of its partition. None for other launchers."""
    if cfg.hydra.launcher.get("_target_") != f"{__name__}.SlurmLauncher":
        return None
    return request_problem(job_launch_params(cfg), config)


def make_executor(kind: str, params: dict, dry_run: bool = False):
    """A submitit executor for `params`, as the plugin builds it (keys outside the base schema get the
    executor's prefix). dry_run: a SLURM executor that works where there is no srun (to write scripts)."""
    import submitit

    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params["max_num_timeout"]
    if dry_run:  # SlurmExecutor refuses to exist where there is no srun
        from unittest import mock

        from submitit.slurm.slurm import SlurmExecutor

        with mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
            executor = submitit.AutoExecutor(cluster=kind, **init)
    else:
        executor = submitit.AutoExecutor(cluster=kind, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{kind}_{k}": v for k, v in params.items()
                                  if k not in INIT_KEYS})
    return executor


def sbatch_script(params: dict, jobs: int = 1) -> str:
    """The sbatch script submitit would submit for an array of `jobs` jobs with `params`, without
    submitting anything (works on a machine without SLURM)."""
    executor = make_executor("slurm", params, dry_run=True)._executor
    if jobs > 1:
        executor.parameters["map_count"] = jobs
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


if BaseSubmititLauncher is not None:
    class _PerJobLauncher(BaseSubmititLauncher):
        def __call__(self, *args, **kwargs) -> JobReturn:
            """The job, in its own process. SLURM ends a job with SIGTERM (scancel, scontrol requeue, a node set
            down, preemption, the time limit), which submitit only logs: here it stops the runner as Ctrl-C
            does (the job's processes ended, no result written), so that a requeued job runs again from
            scratch and a killed one is named by SLURM's state. submitit's SIGUSR2 (sent before the time
            limit, for its own checkpoint-and-requeue) would raise in the middle of a measurement: ignored."""
            from runner.launch import install_signal_handlers

            install_signal_handlers()
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            return super().__call__(*args, **kwargs)

        def _jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
            """(index, overrides, launcher params, job dir, job config) for every job of the batch."""
            jobs = []
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(cfg.hydra.job):
                    cfg.hydra.job.num = idx
                job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
                config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                                resolve=True, enum_to_str=True)
                jobs.append((idx, list(overrides), job_launch_params(cfg), job_dir, config))
            return jobs

        def _job_args(self, idx: int, overrides: list) -> tuple:
            return (overrides, "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
            jobs = self._jobs(job_overrides, initial_job_idx)
            for idx, overrides, _, _, _ in jobs:
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            returns = self._submit_and_wait(jobs, sweep_dir)
            return [returns[job[0]] for job in jobs]

        def _submit_and_wait(self, jobs: list, sweep_dir: Path) -> dict:
            """Submit the jobs, wait for all; {index: JobReturn}."""
            raise NotImplementedError

        def _finish(self, job: tuple, handle, sweep_dir: Path, done: int, total: int) -> JobReturn:
            """A job that is done: its JobReturn, reported."""
            ret = self._job_return(job, handle, sweep_dir)
            return self._report(job, f"{self._EXECUTOR} {handle.job_id}", ret, done, total)

        def _report(self, job: tuple, where: str, ret: JobReturn, done: int, total: int) -> JobReturn:
            """A line for a job that is done (`where`: its scheduler's id) on the submitting process's stderr
            (the jobs run in other processes, whose own progress lines go to submitit's log files)."""
            from core.jobdir import CorruptResult, read_result
            from runner.progress import result_line

            try:
                result = read_result(job[3])
            except CorruptResult as e:
                result, line = None, str(e)
            if ret.status != JobStatus.COMPLETED:
                line = f"failed: {ret._return_value!r}"
            elif result is not None:
                line = result_line(result)
            else:
                line = "no result"
            sys.stderr.write(f"[{done}/{total} done] job {job[0]} ({where}): {line}\n")
            sys.stderr.flush()
            return ret

        def _job_return(self, job: tuple, handle, sweep_dir: Path) -> JobReturn:
            """The job's own JobReturn when its process ended normally; else a result written for it."""
            params = job[2]
            if str(getattr(handle, "state", "")).split(" ")[0] in ENDED_BY_SLURM:
                handle._results_timeout_s = 0  # submitit's wait for the result file, per job (its own tests set it so)
            try:
                return handle.results()[0]
            except Exception as e:  # noqa: BLE001 -- the sweep goes on, the job's failure is its result
                error = e
            state = getattr(handle, "state", "UNKNOWN")
            # submitit's error carries the tail of the job's stderr: the runner's own exception, where it
            # raised one, names the cause better than srun's report of the exit code that follows it
            last = (exception_lines(str(error)) or str(error).strip().splitlines() or [repr(error)])[-1]
            if "TIMEOUT" in str(state).upper():
                status, reason = "timeout", (
                    f"SLURM ended job {handle.job_id} at its time limit (timeout_min={params.get('timeout_min')}) "
                    "before the runner's own timeout_s: raise cluster.time_margin_min")
            else:
                status, reason = "error", f"{self._EXECUTOR} job {handle.job_id} ended without a result ({state}): {last}"
            return self._row(job, sweep_dir, status, reason, handle)

        def _row(self, job: tuple, sweep_dir: Path, status: str, reason: str, handle=None) -> JobReturn:
            """The JobReturn of a job whose own process wrote no result: the job dir's result where it has
            one (an earlier run's, kept), else one written here with `status` and `reason` (and where the
            scheduler had it, from `handle`; None: never submitted)."""
            from core.jobdir import CorruptResult, Job, new_result, read_result, read_sweep, write_result

            idx, overrides, _, job_dir, config = job
            try:
                result = read_result(job_dir)
            except CorruptResult:
                result = None
            if result is None:
                job_dir.mkdir(parents=True, exist_ok=True)
                record = Job(run_id=read_sweep(sweep_dir).get("run_id", ""), job=idx, config=config,
                             log=str(handle.paths.stderr) if handle else "", job_dir=str(job_dir),
                             sweep_dir=str(sweep_dir))
                result = new_result(record, status, reason,
                                    env={"scheduler": self._scheduler(handle) if handle else None})
                write_result(job_dir, result)
            return JobReturn(overrides=overrides, working_dir=str(job_dir), task_name="runner",
                             status=JobStatus.COMPLETED, _return_value=result)

        def _scheduler(self, handle) -> dict | None:
            """env.scheduler of a result written here: the job as SLURM knew it (None for local jobs)."""
            from core.jobdir import scheduler

            if self._EXECUTOR != "slurm":
                return None
            job_id, _, task = str(handle.job_id).partition("_")
            nodelist = (handle.get_info() or {}).get("NodeList")
            return scheduler({"SLURM_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": task,
                              "SLURM_JOB_NODELIST": nodelist if nodelist not in (None, "None assigned") else None})

    class SlurmLauncher(_PerJobLauncher):
        """Jobs with equal resources share an array; with array_parallelism 1 the arrays are chained."""
        _EXECUTOR = "slurm"

        def _submit_and_wait(self, jobs: list, sweep_dir: Path) -> dict:
            groups: dict = {}
            for job in jobs:
                groups.setdefault(json.dumps(job[2], sort_keys=True, default=str), []).append(job)
            handles, refused, previous = {}, {}, None
            for key, group in groups.items():
                params = json.loads(key)
                if params.get("array_parallelism", 1) == 1 and previous is not None:
                    params["dependency"] = f"afterany:{previous}"
                executor = make_executor(self._EXECUTOR, params)
                try:
                    submitted = executor.map_array(self, *zip(*(self._job_args(j[0], j[1]) for j in group)))
                except FailedJobError as e:
                    # sbatch refused the array outright, for what the check before the sweep cannot see (an
                    # option of additional_parameters, an account, a constraint): its jobs are rows, the rest run
                    why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
                    for j in group:
                        ret = self._row(j, sweep_dir, "invalid", f"sbatch refused the job: {why}")
                        refused[j[0]] = self._report(j, "not submitted", ret, len(refused) + 1, len(jobs))
                    continue
                previous = submitted[0].job_id.split("_")[0]
                log.info(f"submitted {len(group)} job(s) as SLURM job {previous}: nodes={params.get('nodes')} "
                         f"gpus_per_node={params.get('gpus_per_node')} cpus_per_task={params.get('cpus_per_task')} "
                         f"timeout_min={params.get('timeout_min')}")
                handles.update({j[0]: h for j, h in zip(group, submitted)})
            return self._wait(handles, jobs, sweep_dir, refused)

        def _done(self, handle) -> bool:
            """Done when SLURM says so. submitit's done() is true once the job's process left its result file,
            but SLURM may run the job again after that (scontrol requeue, a node failure): the run that was
            ended leaves one, the job is REQUEUED or PENDING, and the next run writes the job's result. sacct
            can report the ended run (FAILED) before that: the job is done once squeue no longer lists it."""
            if not handle.done():
                return False
            watcher = getattr(handle, "watcher", None)
            if watcher is None:
                return True
            ended = watcher.is_done(handle.job_id, mode="force")
            return ended and not (self._EXECUTOR == "slurm" and still_queued(handle.job_id))

        def _cancel(self, job: tuple, handle, reason: str, sweep_dir: Path) -> JobReturn:
            """End a job that SLURM keeps pending for `reason`, which no wait ends: scancel it, and make it an
            `invalid` row that names the reason and what the job asked for."""
            handle.cancel(check=False)  # a job that ended meanwhile leaves nothing to cancel
            params = job[2]
            asked = {k: params[k] for k in REQUEST_KEYS if params.get(k) is not None}
            asked.update(params.get("additional_parameters") or {})
            request = " ".join(f"{k}={v}" for k, v in asked.items())
            return self._row(job, sweep_dir, "invalid",
                             f"slurm job {handle.job_id} cancelled: SLURM kept it pending ({reason}), which no wait "
                             f"ends; it asked for {request}", handle)

        def _wait(self, handles: dict, jobs: list, sweep_dir: Path, returns: dict) -> dict:
            """Wait for the submitted jobs (`handles`), adding each to `returns` (those already done) as it ends."""
            by_idx = {job[0]: job for job in jobs}
            pending, refreshed = dict(handles), time.monotonic()
            while pending:
                if time.monotonic() - refreshed > REFRESH_S:
                    # submitit's watcher backs off to one sacct call per 10 minutes; ask every REFRESH_S
                    watcher = getattr(next(iter(pending.values())), "watcher", None)
                    if watcher is not None:
                        watcher.update()
                    stuck = never_running([h.job_id for h in pending.values()])
                    for idx in [i for i, h in pending.items() if h.job_id in stuck]:
                        handle = pending.pop(idx)
                        ret = self._cancel(by_idx[idx], handle, stuck[handle.job_id], sweep_dir)
                        returns[idx] = self._report(by_idx[idx], f"{self._EXECUTOR} {handle.job_id}", ret,
                                                    len(returns) + 1, len(jobs))
                    refreshed = time.monotonic()
                for idx in [i for i, h in pending.items() if self._done(h)]:
                    returns[idx] = self._finish(by_idx[idx], pending.pop(idx), sweep_dir, len(returns) + 1,
                                                len(jobs))
                if pending:
                    time.sleep(1.0)
            return returns

    class LocalLauncher(_PerJobLauncher):
        """submitit's local executor, at most cluster.array_parallelism jobs at a time (default 1)."""
        _EXECUTOR = "local"

        def _submit_and_wait(self, jobs: list, sweep_dir: Path) -> dict:
            returns, running, queue = {}, {}, list(jobs)
            while queue or running:
                while queue and len(running) < max(1, queue[0][4]["cluster"]["array_parallelism"]):
                    job = queue.pop(0)
                    executor = make_executor(self._EXECUTOR, job[2])
                    running[job[0]] = (job, executor.submit(self, *self._job_args(job[0], job[1])))
                for idx in [i for i, (_, h) in running.items() if h.done()]:
                    job, handle = running.pop(idx)
                    returns[idx] = self._finish(job, handle, sweep_dir, len(returns) + 1, len(jobs))
                if running:
                    time.sleep(0.5)
            return returns
