"""Executor backends of a sweep: where its cells run.

A backend is a function ``(jobs, n, **options) -> iterator of CellResult | CellFailure``
(each the return of `mcel.experiments.cell.try_cell`, run where the cell runs: a cell
that raises comes back as a `CellFailure`, as text, and the others go on), optionally
with a ``prepare(**options)`` attribute that checks, before anything is created, that
the backend can run (a missing package, a bad option). ``local`` runs cells in this
process (``n = 1``) or in a spawn process pool; ``ray`` (`mcel.experiments.ray_backend`,
``pip install 'mcel[ray]'``) runs each cell as a Ray task on this machine or a cluster.
A new backend is one function registered in ``EXECUTORS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from mcel.errors import MCELError
from mcel.experiments.cell import CellFailure, CellJob, CellResult, try_cell
from mcel.registry import Registry

Executor = Callable[..., Iterator[CellResult | CellFailure]]  # (jobs, n, **options)
EXECUTORS: Registry[Executor] = Registry("sweep backend")


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # n workers share the cores; run_cell pins its own count


@EXECUTORS.register("local")
def local_executor(jobs: Sequence[CellJob], n: int) -> Iterator[CellResult | CellFailure]:
    """This process for ``n == 1``, else a pool of ``n`` spawned processes.

    Results come back as cells finish (not in grid order).
    """
    if n <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield try_cell(job)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(max_workers=min(n, len(jobs)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    ok = False
    try:
        pending = {pool.submit(try_cell, job) for job in jobs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    raise MCELError("a worker process died (killed, or out of memory); "
                                    "rerun the same command to resume") from None
                yield result
        ok = True
    finally:
        if ok:
            pool.shutdown(wait=True)
        else:
            # Interrupted, or the pool broke: stop now. Killing a worker mid-cell is safe,
            # its run folder resumes and the database never saw a partial cell.
            procs = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()


def _ray_executor(jobs: Sequence[CellJob], n: int,
                  **options: Any) -> Iterator[CellResult | CellFailure]:
    """Each cell a Ray task (see `mcel.experiments.ray_backend`; Ray is imported lazily,
    so the backend is listed, and explains how to install Ray, even without it)."""
    from mcel.experiments.ray_backend import ray_executor

    return ray_executor(jobs, n, **options)


def _ray_prepare(**options: Any) -> None:
    from mcel.experiments.ray_backend import prepare

    prepare(**options)


_ray_executor.prepare = _ray_prepare  # type: ignore[attr-defined]
EXECUTORS.add("ray", _ray_executor)


def list_backends() -> list[str]:
    return EXECUTORS.names()


def prepare_backend(backend: str, options: dict[str, Any]) -> Executor:
    executor = EXECUTORS.get(backend)
    prepare = getattr(executor, "prepare", None)
    if prepare is not None:
        prepare(**options)
    elif options:
        raise MCELError(f"backend '{backend}' takes no options ({', '.join(sorted(options))}); "
                        "--address is for --backend ray")
    return executor


__all__ = ["EXECUTORS", "Executor", "list_backends", "local_executor", "prepare_backend"]
