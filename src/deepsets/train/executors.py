"""Grids of runs as one job each: in this process (the default), or through ``submitit`` on this machine
(``--executor local``) or on a SLURM cluster (``--executor slurm``).

:func:`run_jobs` calls ``fn(*args)`` for each job and yields ``(index, result)`` as jobs finish; a job's own
results are cached by ``fn`` (a table cell's ``results.json``, a fold's ``result.json``), so running the same
command again submits only what is not done yet. SLURM jobs get these ``sbatch`` parameters (from
:class:`SlurmOptions`): ``--partition``, ``--gpus-per-node``, ``--cpus-per-task``, ``--time`` (minutes),
``--nodes=1``, ``--ntasks-per-node=1``, ``--job-name``, and submitit's ``--output``/``--error`` in
``OUT/jobs/`` and ``--signal=USR2@90`` (a preempted job is requeued by submitit).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

EXECUTORS = ("local", "slurm")


@dataclass
class SlurmOptions:
    """What each SLURM job asks for (``deepsets reproduce --executor slurm ...`` flags)."""

    partition: str | None = None  # --slurm-partition
    gpus_per_job: int = 0  # --gpus-per-job
    cpus_per_job: int = 4  # --cpus-per-job
    time_min: int = 240  # --time-limit (minutes)
    job_name: str = "deepsets"

    def parameters(self) -> dict:
        """submitit's parameter names for these options."""
        p = {"timeout_min": int(self.time_min), "nodes": 1, "tasks_per_node": 1, "cpus_per_task": int(self.cpus_per_job),
             "gpus_per_node": int(self.gpus_per_job), "name": self.job_name}
        if self.partition:
            p["slurm_partition"] = self.partition
        return p


def make_executor(kind: str, folder: str | Path, slurm: SlurmOptions | None = None):
    """A submitit executor writing its job files (logs, pickles) to ``folder``."""
    try:
        import submitit
    except ImportError as e:
        raise ImportError(f"--executor {kind} needs submitit: pip install 'deepsets[cluster]'") from e
    if kind not in EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; valid choices: {', '.join(EXECUTORS)}")
    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=(slurm or SlurmOptions()).time_min)
        return executor
    try:
        executor = submitit.SlurmExecutor(folder=str(folder))
    except RuntimeError as e:  # submitit looks for srun
        raise RuntimeError(f"--executor slurm: this machine is not a SLURM node ({e}); run the command on the "
                           f"cluster's login node, or use --executor local") from None
    p = (slurm or SlurmOptions()).parameters()
    executor.update_parameters(time=p["timeout_min"], nodes=1, ntasks_per_node=1, cpus_per_task=p["cpus_per_task"],
                               gpus_per_node=p["gpus_per_node"] or None, job_name=p["name"],
                               **({"partition": p["slurm_partition"]} if "slurm_partition" in p else {}))
    return executor


def run_jobs(fn, jobs: list[tuple], executor: str | None = None, folder: str | Path = "jobs", parallel: int = 2,
             slurm: SlurmOptions | None = None, poll_s: float = 1.0, cached=None):
    """Yield ``(index, fn(*jobs[index]))`` for every job, as each finishes.

    ``cached(*job)``: the job's result if it is already done (then nothing is submitted for it), else ``None``.

    ``executor=None`` runs them here, one after another, in order. ``"local"`` / ``"slurm"`` submits each as a
    submitit job, at most ``parallel`` at a time (local; for SLURM, the jobs in the queue); a failed job raises
    ``RuntimeError`` naming it and its log once the others are done.
    """
    waiting = []
    for i, args in enumerate(jobs):
        result = cached(*args) if cached is not None else None
        if result is not None:
            yield i, result
        else:
            waiting.append((i, args))
    if executor is None:
        for i, args in waiting:
            yield i, fn(*args)
        return
    if not waiting:
        return
    ex = make_executor(executor, folder, slurm)
    running, failed = {}, []
    while waiting or running:
        while waiting and len(running) < max(1, parallel):
            i, args = waiting.pop(0)
            running[i] = ex.submit(fn, *args)
        finished = [i for i, job in running.items() if job.done()]
        if not finished:
            time.sleep(poll_s)
            continue
        for i in finished:
            job = running.pop(i)
            try:
                result = job.result()
            except Exception as e:  # noqa: BLE001 - submitit re-raises the job's error with its log
                first = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
                failed.append(f"job {i} ({job.job_id}): {first}; log: {job.paths.stderr}")
                continue
            yield i, result
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} job(s) failed (the others' results are kept; run the "
                           f"command again to retry): " + " | ".join(failed))
