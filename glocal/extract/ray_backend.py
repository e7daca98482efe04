"""Distributed extraction on Ray: ``glocal extract --ray ADDRESS`` (the ``distributed`` extra).

:class:`RayBackend` is an :class:`~glocal.extract.backends.ExtractionBackend`: each unfinished shard becomes
one Ray task that runs :func:`~glocal.extract.backends.run_shard` on a worker (one CPU each; one GPU, or a
share of one, when the extractor's ``device`` names CUDA: :func:`gpus_per_worker`), which writes the shard
file into the features folder itself (atomically); only the shard's count, bad files and sources travel back. At most ``workers`` shards run
at once. A shard whose task fails (an exception, a worker process that died) is submitted again, at most
``retries`` times; a :class:`~glocal.errors.GlocalError` raised by the extraction (a missing extra, a bad
checkpoint) is the user's to fix and is raised at once. Shards finished before a failure stay recorded, so
running the command again resumes.

``ray`` is imported only when a backend runs; without it, ``--ray`` is one line naming the extra. With a
cluster address every node must have glocal installed and see the images and the features folder at the
same paths (a shared file system); ``local`` starts a Ray instance on this machine with ``workers`` CPUs.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from glocal.errors import BadOptionError, GlocalError, require
from glocal.extract.backends import ShardResult, ShardTask, run_shard

#: attempts of a shard after its first failure
RETRIES = 2
#: object store of a local Ray instance (results are small: counts, names, paths)
LOCAL_OBJECT_STORE = 256 * 1024 * 1024


class ShardFailedError(GlocalError):
    """A shard's extraction failed on every attempt (the shards finished meanwhile are kept)."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`~glocal.errors.MissingDependencyError` naming the extra."""
    require("ray", "distributed", "--ray")
    import ray

    return ray


def _ray_shard(run: Callable[[ShardTask], ShardResult], task: ShardTask, cwd: str) -> ShardResult:
    """What a Ray worker runs: ``run(task)`` from the driver's folder when this node has it (relative image
    paths then mean the same files)."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return run(task)


def needs_gpu(task: ShardTask) -> bool:
    """Whether the task's extractor runs on a CUDA device (``--set device=cuda``)."""
    return str(task.options.get("extractor", {}).get("device", "cpu")).startswith("cuda")


def gpus_per_worker(cluster_gpus: float, workers: int) -> float:
    """The GPUs a CUDA worker asks Ray for: one, or an equal share of one when there are fewer GPUs than
    workers (then several workers run on one GPU at once); 0 without GPUs."""
    if cluster_gpus < 1:
        return 0
    return 1.0 if cluster_gpus >= workers else round(int(cluster_gpus) / workers, 4)


@dataclass
class RayBackend:
    """Runs shard tasks on Ray (module docstring). ``run_task`` is what a worker runs on a task."""

    address: str = "local"
    workers: int = 2
    retries: int = RETRIES
    run_task: Callable[[ShardTask], ShardResult] = run_shard
    #: (shard file, why) of each failed attempt that was submitted again
    retried: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise BadOptionError(f"--workers must be >= 1 with --ray, got {self.workers}")
        if self.retries < 0:
            raise BadOptionError(f"--retries must be >= 0, got {self.retries}")

    def run(self, tasks: Sequence[ShardTask], on_image: Callable[[int], None]) -> Iterator[ShardResult]:
        ray = import_ray()
        if not tasks:  # every shard finished earlier: no Ray to start
            return
        started = self._connect(ray)
        try:
            yield from self._run(ray, list(tasks), on_image)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join a running Ray (this process's, or the cluster at ``address``) or start a local one; True when
        this call started it (then :meth:`run` shuts it down)."""
        if ray.is_initialized():
            return False
        try:
            if self.address == "local":
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=LOCAL_OBJECT_STORE, logging_level="warning")
            else:
                ray.init(address=self.address, log_to_driver=False, logging_level="warning")
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise BadOptionError(f"--ray {self.address}: cannot start or reach Ray ({_first_line(exc)})") from None
        return True

    def _run(self, ray: Any, pending: list[ShardTask], on_image: Callable[[int], None]) -> Iterator[ShardResult]:
        gpus = gpus_per_worker(ray.cluster_resources().get("GPU", 0), self.workers) if needs_gpu(pending[0]) else 0
        if needs_gpu(pending[0]) and not gpus:
            raise BadOptionError(f"--ray {self.address}: the extractor runs on CUDA but the Ray cluster has no GPU")
        remote = ray.remote(_ray_shard).options(num_cpus=1, num_gpus=gpus, max_retries=0)
        run_task = ray.put(self.run_task)
        cwd = os.getcwd()
        attempts: dict[int, int] = {}
        running: dict[Any, ShardTask] = {}
        failed: list[tuple[str, str]] = []
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    task = pending.pop(0)
                    attempts[task.job.number] = attempts.get(task.job.number, 0) + 1
                    running[remote.remote(run_task, task, cwd)] = task
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    task = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, GlocalError):  # the user's to fix: another attempt fails alike
                            raise cause from None
                        why = _reason(exc, cause)
                        if attempts[task.job.number] <= self.retries:
                            self.retried.append((task.job.filename, why))
                            pending.append(task)
                        else:
                            failed.append((task.job.filename, why))
                        continue
                    on_image(len(task.job.paths))
                    yield result
        finally:
            for ref in running:  # an exception above, or the driver interrupted: stop what still runs
                ray.cancel(ref, force=True)
        if failed:
            shown = "; ".join(f"{name}: {why}" for name, why in failed[:3])
            raise ShardFailedError(f"{len(failed)} shards failed {self.retries + 1} times ({shown}); the finished "
                                   "shards are kept: run the same command again to resume")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reason(exc: BaseException, cause: BaseException | None) -> str:
    """One line saying why a task failed: the worker's exception, or that the worker died."""
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"
