"""Runs in turn or at once: the pool the benchmark hands its (seed, policy) runs to."""

import os

import pytest

from label_studio_ale.bench.runs import RunPool, cpu_cores, default_jobs


def _threads_and_pid():
    import torch

    return torch.get_num_threads(), os.getpid()


def _fails(message):
    raise ValueError(message)


def test_one_job_runs_in_this_process_and_hands_errors_to_the_result():
    with RunPool(1) as pool:
        assert pool.submit(_threads_and_pid).result()[1] == os.getpid()
        failed = pool.submit(_fails, "no such class")
        with pytest.raises(ValueError, match="no such class"):
            failed.result()


def test_several_jobs_run_in_worker_processes_with_a_share_of_the_threads():
    with RunPool(2) as pool:
        futures = [pool.submit(_threads_and_pid) for _ in range(4)]
        answers = [f.result() for f in pool.as_completed(futures)]
        failed = pool.submit(_fails, "bad box")
        with pytest.raises(ValueError, match="bad box"):
            failed.result()
    assert {threads for threads, _ in answers} == {max(1, cpu_cores() // 2)}
    assert os.getpid() not in {pid for _, pid in answers}


def test_the_default_is_a_run_per_core_on_the_cpu_and_one_on_an_accelerator():
    assert default_jobs("cpu") == cpu_cores() >= 1
    assert default_jobs("0") == 1 and default_jobs("cuda:0") == 1
    assert RunPool(None, "0").jobs == 1


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True])
def test_a_bad_number_of_jobs_is_named(jobs):
    with pytest.raises(ValueError, match="jobs must be a positive integer"):
        RunPool(jobs)
