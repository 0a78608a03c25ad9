"""The ``ray`` sweep backend: every cell is one Ray task, on this machine or a cluster.

``mcel sweep GRID.yaml --backend ray [--address ADDR] [--jobs N]``

* Without ``--address`` (and no ``RAY_ADDRESS``) a private Ray instance is started on
  this machine with ``N`` CPUs and stopped afterwards; with one, the sweep joins that
  cluster (``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the
  others) and at most ``N`` cells are in flight at once.
* A cell asks for ``num_cpus=1``, plus ``num_gpus=1`` when its device is ``cuda`` /
  ``cuda:N`` or ``auto`` on a cluster that has GPUs; Ray then shows the task exactly one
  GPU, so ``cuda:N`` is run as ``cuda`` (the device is not part of the run id).
* Tasks run `mcel.experiments.cell.try_cell`, the very function of the local backend,
  and return its `CellResult`, or a `CellFailure` when the cell raised (the sweep goes
  on with the others); the parent alone writes the results database, through
  the same code path as the local backend. Numbers are identical whichever backend
  ran a cell (fixed torch thread count per cell).

Workers need ``mcel`` importable and the datasets at the same paths; run folders are
written by the worker that trains the cell, so on a multi-node cluster ``--out``
should be on a shared file system for interrupted cells to resume where they stopped
(the database is always complete: finished cells are never lost).

Ray is an optional dependency: ``pip install 'mcel[ray]'``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from mcel.errors import MCELError
from mcel.experiments.cell import CellFailure, CellJob, CellResult, try_cell

INSTALL_HINT = "the ray backend needs Ray: pip install 'mcel[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MCELError(INSTALL_HINT) from None
    return ray


def prepare(address: str | None = None) -> None:
    """Checks before the sweep creates anything: Ray is installed, the address is text."""
    import_ray()
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise MCELError(f"--address must be a Ray address like 'auto' or 'HOST:6379', "
                        f"got {address!r}")


def wants_gpu(device: str, cluster_gpus: float) -> bool:
    """Does a cell with this ``device`` setting need one GPU of the cluster?

    >>> wants_gpu("cuda:1", 0), wants_gpu("auto", 2), wants_gpu("auto", 0), wants_gpu("cpu", 8)
    (True, True, False, False)
    """
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def _task_job(job: CellJob, gpu: bool) -> CellJob:
    """The job as the worker must see it: one visible GPU is always ``cuda``."""
    cfg = job.cell.config
    if gpu and cfg.device.startswith("cuda:"):
        cell = dataclasses.replace(job.cell, config=dataclasses.replace(cfg, device="cuda"))
        return dataclasses.replace(job, cell=cell)
    return job


def _unwrap(err: Exception) -> BaseException:
    """A user mistake raised inside a task comes back as the MCELError it was (`try_cell`
    turns a cell's own errors into a `CellFailure`; this is for the rest)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, MCELError):
        return MCELError(str(cause))
    return err


def ray_executor(jobs: Sequence[CellJob], n: int, *,
                 address: str | None = None) -> Iterator[CellResult | CellFailure]:
    """Run ``jobs`` as Ray tasks, at most ``n`` in flight; yield results as they finish."""
    ray = import_ray()

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(address=address, include_dashboard=False,
                                      log_to_driver=False, logging_level=logging.WARNING,
                                      configure_logging=False)
        if address is None:  # a private instance on this machine, n CPUs
            kwargs["num_cpus"] = n
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise MCELError(f"cannot reach the Ray cluster at {address}: {e}") from None
        started = True
    pending: dict[Any, Any] = {}
    ok = False
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        remote = ray.remote(try_cell)
        queue = []
        for job in jobs:
            gpu = wants_gpu(job.cell.config.device, gpus)
            if gpu and gpus < 1:
                raise MCELError(f"cell {job.cell.run_id} asks for device "
                                f"'{job.cell.config.device}' but the Ray cluster has no GPU")
            queue.append((_task_job(job, gpu), gpu))
        queue.reverse()  # pop() from the end keeps grid order
        while queue or pending:
            while queue and len(pending) < n:
                job, gpu = queue.pop()
                ref = remote.options(num_cpus=1, num_gpus=1 if gpu else 0,
                                     max_retries=0).remote(job)
                pending[ref] = job
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise _unwrap(e) from None
                yield result
        ok = True
    finally:
        if not ok:
            # Interrupted, or a task died: stop the others. Their run folders resume
            # and the database never saw a partial cell.
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone: nothing to stop
                    pass
        if started:
            ray.shutdown()


__all__ = ["INSTALL_HINT", "import_ray", "prepare", "ray_executor", "wants_gpu"]
