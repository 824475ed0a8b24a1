"""isolate=false: the shared worker after a job that did not end ok."""
from conftest import results, run_runner


def test_a_job_after_an_oom_in_the_shared_worker_gets_a_fresh_worker(tmp_path, cache_dir):
    """The worker ends after a job that is not ok (its allocator, CUDA state or peers cannot be trusted):
    the next job of the same model must start a new one and be measured, not inherit the dying worker's
    exit code as its own `error`."""
    proc = run_runner(["-m", "batch_size=8192,1", "isolate=false", "prompt_tokens=64", "new_tokens=4",
                       "repeats=1", "host_mem_limit_gib=0.5", f"hydra.sweep.dir={tmp_path}"], cache_dir)
    assert proc.returncode == 0, proc.stderr
    oom, ok = results(tmp_path)
    assert oom["status"] == "oom" and "allocate" in oom["reason"]
    assert ok["status"] == "ok", ok["reason"]
    assert (oom["model_loaded_by_job"], ok["model_loaded_by_job"]) == (0, 1)
    assert ok["log"] == str(tmp_path / "1" / "session" / "0001" / "worker.log")
