"""Independent units of work spread over every CPU of a Ray cluster, or run in this process:
the one way the task-parallel stages (ingest, tvl1_flows) reach Ray.

    run_tasks(encode_shard, jobs, num_tasks=None, on_done=lambda job, result: ...)

`num_tasks` 0 runs `fn(job)` for each job in this process, in order, without Ray (tests, a
laptop, a debugger). Otherwise each job is one Ray task of one CPU: Ray places them on every
node's CPUs, at most `num_tasks` in flight (None: twice the CPUs the cluster has, so a CPU
never waits for the driver to hand out the next job). The driver takes results as tasks end,
in completion order. A task whose process dies (a decoder crash, the OOM killer, a lost node)
is retried by Ray `max_retries` times, then handed to `on_crash`; an exception of `fn` itself
or of a callback cancels the tasks in flight and propagates.

`ensure_ray` connects to a cluster ($RAY_ADDRESS or an address), handing its workers this
process's S3 endpoint and MLflow server (ray_env.py), or starts a local Ray; the launcher
uses it for Ray Train and Tune too. Imports nothing heavy: `h2s ingest` uses this
without torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def ensure_ray(address: str | None = None) -> None:
    """Connect to `address` (or $RAY_ADDRESS), else start an embedded local Ray."""
    import ray

    if ray.is_initialized():
        return
    from h2s_dist.ray_auth import default_auth_mode

    default_auth_mode()  # token when a token is given, else disabled (embedded Ray)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        from h2s_dist.ray_env import connect_runtime_env

        # The cluster's workers were not started from this process: the S3 endpoint and the
        # MLflow server it uses reach them only through the job's runtime_env (ray_env.py).
        ray.init(address=address, log_to_driver=True, runtime_env=connect_runtime_env())
    else:
        # The dashboard (on 127.0.0.1 only) serves Ray's State API, which Ray Train's placement
        # group cleaner polls: without it every training stage prints "Failed to query Ray Train
        # Controller actor state" every few seconds. It costs ~1 s of start-up.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)


def is_process_death(error: BaseException) -> bool:
    """Whether a Ray task failed because its process or node went away (not because `fn` raised)."""
    import ray.exceptions as rex

    return isinstance(error, (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError,
                              rex.LocalRayletDiedError))


def run_tasks(
    fn: Callable[[J], R],
    jobs: Sequence[J],
    num_tasks: int | None,
    on_done: Callable[[J, R], None],
    *,
    on_crash: Callable[[J, BaseException], None] | None = None,
    max_retries: int = 1,
    name: Callable[[J], str] | None = None,
    address: str | None = None,
    num_gpus: float = 0.0,
) -> None:
    """`fn(job)` for every job, `on_done(job, result)` in this process as each ends (see the
    module doc). on_crash(job, error): a job whose task process died after `max_retries`
    retries (None: raise the error). name(job): the task's name in Ray's dashboard and logs.
    address: the cluster to connect to when Ray is not initialised yet (None: $RAY_ADDRESS,
    else a local Ray). num_gpus: GPUs each task reserves (a network inside `fn`). fn must be importable by the workers (a module-level function)."""
    if num_tasks is not None and num_tasks < 0:
        raise ValueError(f"num_tasks must be >= 0 (0 = in this process) or None (every CPU), got {num_tasks}")
    if num_tasks == 0:
        for job in jobs:
            on_done(job, fn(job))
        return
    import ray

    ensure_ray(address)
    limit = num_tasks or max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=max_retries)(fn)
    pending: dict[Any, J] = {}
    todo = list(jobs)[::-1]
    try:
        while todo or pending:
            while todo and len(pending) < limit:
                job = todo.pop()
                options = {"name": name(job)} if name else {}
                pending[remote.options(**options).remote(job)] = job
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            try:
                result = ray.get(ready)
            except Exception as error:  # noqa: BLE001 - classified right below
                if on_crash is None or not is_process_death(error):
                    raise
                on_crash(job, error)
                continue
            on_done(job, result)
    finally:  # an error here or in a callback (or Ctrl-C): leave no task running for nobody
        for ref in pending:
            ray.cancel(ref, force=True)
