"""Where extraction runs: the :class:`ExtractionBackend` seam and the local backend.

``glocal extract`` splits the images into shards (:mod:`glocal.extract.shards`) and hands a backend one
:class:`ShardTask` per unfinished shard. A task carries only plain data (the method's name and options as
a mapping, the shard's files, the features folder), so a backend may run it anywhere the folder is
reachable: :class:`LocalBackend` runs them here, one after the other, with threads inside each shard;
:class:`glocal.extract.ray_backend.RayBackend` (``glocal extract --ray``) runs them on Ray workers, retrying
failed shards. Either way a worker writes its shard with :func:`run_shard` (atomically), and the driver (the
caller of :func:`extract_to_shards`) alone records finished shards, so workers never write the manifest.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from glocal import methods
from glocal.extract.batch import ExtractionFailure
from glocal.extract.shards import PARTIAL, FeatureShards, ShardJob, plan_shards
from glocal.extract.stage import create_extractors, extract_into, skip_repeated
from glocal.io.sources import SourceLog
from glocal.methods.spec import MethodOptions, MethodSpec
from glocal.progress import Progress, no_progress


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to extract one shard (plain data: it can be sent to another process)."""

    job: ShardJob
    features: Path
    method: str
    options: dict[str, Any]
    threads: int = 2


@dataclass(frozen=True)
class ShardResult:
    """A shard written by a worker: how many images it holds, the files that failed, each image's file."""

    job: ShardJob
    count: int
    failures: tuple[ExtractionFailure, ...] = ()
    sources: tuple[tuple[str, str], ...] = ()
    crc: int | None = None  # CRC-32 of the shard file's bytes


class ExtractionBackend(Protocol):
    """Runs shard tasks and yields their results as they finish (any order)."""

    def run(self, tasks: Sequence[ShardTask], on_image: Callable[[int], None]) -> Iterator[ShardResult]: ...


_EXTRACTORS: dict[str, Any] = {}


def _database_extractor(method: str, options: dict[str, Any]) -> Any:
    """The database extractor of a task, made once per process and options (a model loads once)."""
    key = json.dumps([method, options], sort_keys=True)
    if key not in _EXTRACTORS:
        spec = methods.get(method)
        _EXTRACTORS.clear()  # one model at a time
        _EXTRACTORS[key] = create_extractors(spec, spec.options_from_dict(options, "shard task"))[1]
    return _EXTRACTORS[key]


def run_shard(task: ShardTask, on_image: Callable[[int], None] | None = None) -> ShardResult:
    """Extract one shard into ``features/shard-NNNNN.glf``, atomically: the file is written under a unique
    temporary name and renamed when closed, so the shard's name only ever holds a whole shard (an earlier
    file of that name, half-written or damaged, is replaced). Bad images are reported, the shard goes on."""
    import os
    import uuid

    from glocal.io.atomic import crc32_file, fsync_dir
    from glocal.io.feature_file import FeatureFile

    extractor = _database_extractor(task.method, task.options)
    path = task.features / task.job.filename
    tmp = path.with_name(f"{path.name}{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    shard = FeatureFile(tmp, writable=True)
    sources: list[tuple[str, str]] = []

    def sink(batch: list, origin: list) -> None:
        shard.append(batch, shadow=False)
        sources.extend((n, str(p)) for n, p in origin)

    def progress(_: str, __: int) -> Callable[[int], None]:
        return on_image or (lambda n: None)

    try:
        try:
            failures = extract_into(sink, extractor, task.job.paths, task.job.names, progress, "extracting",
                                    task.threads)
            count = len(shard)
        finally:
            shard.close()
        crc = crc32_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ShardResult(task.job, count, tuple(failures), tuple(sources), crc)


@dataclass
class LocalBackend:
    """Runs every shard in this process, one after the other (threads inside a shard)."""

    def run(self, tasks: Sequence[ShardTask], on_image: Callable[[int], None]) -> Iterator[ShardResult]:
        for task in tasks:
            yield run_shard(task, on_image)


@dataclass
class ExtractionReport:
    """What :func:`extract_to_shards` did."""

    features: Path
    extracted: int = 0
    kept_shards: int = 0
    written_shards: int = 0
    failures: list[ExtractionFailure] = field(default_factory=list)
    #: (shard file, why) of each failed attempt that was run again (distributed backends)
    retried: list[tuple[str, str]] = field(default_factory=list)


def extract_to_shards(paths: Sequence[Path], names: Sequence[str], out: Path, spec: MethodSpec,
                      options: MethodOptions, backend: ExtractionBackend | None = None, shard_size: int = 1000,
                      threads: int = 2, progress: Progress = no_progress) -> ExtractionReport:
    """Extract images into the features folder ``out`` in shards; complete shards of an earlier run of the
    same command are kept (resume). Repeated names are skipped and reported."""
    shards = FeatureShards.create_or_resume(out, spec, options)
    report = ExtractionReport(Path(out))
    unique_paths, unique_names, repeated = skip_repeated(paths, names, None, "repeated name (skipped)")
    report.failures.extend(repeated)
    jobs = plan_shards(unique_paths, unique_names, shard_size)
    pending = [j for j in jobs if not shards.is_done(j)]
    report.kept_shards = len(jobs) - len(pending)
    shards.remove_partial()
    tasks = [ShardTask(j, Path(out), spec.name, options.to_dict(), threads) for j in pending]
    advance = progress("extracting", sum(len(j.paths) for j in pending))
    sources = SourceLog(out)
    backend = backend or LocalBackend()
    for result in backend.run(tasks, advance):
        shards.mark_done(result.job, result.count, result.crc)
        sources.append((n, Path(p)) for n, p in result.sources)
        report.extracted += result.count
        report.written_shards += 1
        report.failures.extend(result.failures)
    report.retried = list(getattr(backend, "retried", ()))
    return report
