"""Building and growing a collection from image files: extraction stage -> feature file -> first stage.

:func:`build_index` makes a new index folder (features of every image, the codebook of an ASMK method
trained on them, on other images, or reused from another index, then the first stage); :func:`add_images`
extracts more images into an open, writable collection. A failed build leaves no half-built folder: the
index is built in a sibling folder ``<out>.building-<pid>`` and renamed to ``<out>`` when complete; the
leftover of a killed build (its process gone) is removed by the next build to the same ``out``.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glocal import methods
from glocal.errors import BadInputError, BadOptionError
from glocal.extract.batch import ExtractionFailure
from glocal.extract.stage import create_extractors, extract_into
from glocal.index.asmk_stage import AsmkStage, codebook_donor, codebook_note, descriptor_sample, train_asmk_stage
from glocal.index.collection import Collection
from glocal.index.collection_manifest import manifest_options, new_manifest, read_manifest, write_manifest
from glocal.index.global_stage import check_ivfpq_size
from glocal.io.atomic import fsync_after_commit, fsync_dir, storage_errors
from glocal.io.feature_file import FeatureFile
from glocal.io.sources import SourceLog
from glocal.methods.spec import MethodOptions
from glocal.methods.stages import AsmkIndexOptions
from glocal.progress import Progress, as_progress
from glocal.records import ImageFeatures


@dataclass
class BuildResult:
    """A new collection (open for writing: close it), the files that could not be indexed, and the names of
    the indexed images that yielded no features (searchable by name only: nothing can match them)."""

    collection: Collection
    failures: list[ExtractionFailure] = field(default_factory=list)
    no_features: list[str] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """Lines the user should read: a codebook smaller than requested (:func:`codebook_note`)."""
        note = codebook_note(self.collection.manifest.get("codebook", {}))
        return [note] if note else []


def has_no_features(features: ImageFeatures, asmk: bool) -> bool:
    """Whether an image's features give its first stage nothing to match: no local descriptors (ASMK
    methods) or no global descriptor (global methods)."""
    if asmk:
        return len(features.descriptors) == 0
    g = features.global_descriptor
    return g is None or g.size == 0


def build_index(
    paths: Sequence[Path],
    names: Sequence[str],
    out: Path,
    method: str | None = None,
    settings: Mapping[str, Any] | None = None,
    options: MethodOptions | None = None,
    codebook_paths: Sequence[Path] | None = None,
    codebook_from: Path | None = None,
    progress: bool | Progress = True,
    workers: int = 2,
) -> BuildResult:
    """Index ``paths`` into a new collection at ``out``.

    :param method: a registered method (default: the weight-free default).
    :param settings: ``--set`` values, routed to the method's option groups (:meth:`MethodSpec.configure`).
    :param options: typed options to start from (default: the method's defaults).
    :param codebook_paths: ASMK methods: train the codebook on these images (the papers' protocol: another
        dataset than the one searched) instead of the indexed ones.
    :param codebook_from: ASMK methods: reuse this index's codebook and fast quantizer (same method).
    :raises BadInputError: ``out`` exists and is not empty, or no image could be indexed.
    :raises BadOptionError: bad settings or a codebook donor that cannot serve.
    """
    out = Path(out)
    spec = methods.get(method or methods.default_method())
    settings = dict(settings or {})
    opts = spec.configure(settings, base=options)
    _check_new(out)
    if getattr(opts.index, "index", None) == "ivfpq":  # say so before extracting a single image
        check_ivfpq_size(len(paths))
    donor = _donor(codebook_from, codebook_paths, settings, spec.name)
    query_extractor, db_extractor = create_extractors(spec, opts)

    empty: list[str] = []
    asmk = isinstance(opts.index, AsmkIndexOptions)

    def fill(out: Path, progress: Progress) -> list[ExtractionFailure]:
        return _extract_database(out, db_extractor, paths, names, progress, workers, empty, asmk)

    result = _build(out, spec, opts, fill, lambda: query_extractor, donor, codebook_paths, progress, workers)
    result.no_features = empty
    return result


def build_from_features(features: Path, out: Path, settings: Mapping[str, Any] | None = None,
                        codebook_paths: Sequence[Path] | None = None, codebook_from: Path | None = None,
                        progress: bool | Progress = True, workers: int = 2) -> BuildResult:
    """Index the features folder written by ``glocal extract`` (:mod:`glocal.extract.shards`) into a new
    collection at ``out``; nothing is extracted again. ``settings`` may change the index, search and
    re-ranking options, not the extractor's (the features fix them).

    :raises BadInputError: not a features folder, or it holds no image.
    :raises BadOptionError: an extractor option in ``settings``, or a codebook donor that cannot serve.
    """
    from glocal.extract.shards import FeatureShards

    shards = FeatureShards.open(Path(features))
    spec, settings = shards.spec, dict(settings or {})
    opts = spec.configure(settings, base=shards.options)
    if opts.extractor != shards.options.extractor or getattr(opts.index, "regions", None) != getattr(
            shards.options.index, "regions", None):
        raise BadOptionError(f"{features}: the extractor options and regions are those the features were extracted "
                             "with; extract again to change them")
    if len(shards) == 0:
        raise BadInputError(f"{features}: holds no extracted image")
    out = Path(out)
    _check_new(out)
    donor = _donor(codebook_from, codebook_paths, settings, spec.name)

    def fill(out: Path, progress: Progress) -> list[ExtractionFailure]:
        target = FeatureFile(out / "features.glf", writable=True)
        advance = progress("copying features", len(shards))
        try:
            batch: list = []
            for f in shards:
                batch.append(f)
                if len(batch) >= 64:
                    target.append(batch, shadow=False)
                    advance(len(batch))
                    batch = []
            if batch:
                target.append(batch, shadow=False)
                advance(len(batch))
        finally:
            target.close()
        log = Path(features) / "sources.jsonl"
        if log.is_file():
            shutil.copyfile(log, out / "sources.jsonl")
        return []

    return _build(out, spec, opts, fill, lambda: spec.create_extractor(opts.extractor), donor, codebook_paths,
                  progress, workers)


def _check_new(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: already exists and is not empty (use 'glocal index add' to extend it)")


def _donor(codebook_from: Path | None, codebook_paths: Sequence[Path] | None, settings: Mapping[str, Any],
           method: str) -> Any:
    """The codebook donor of ``--codebook-from`` (or None), checked against the new index's method."""
    if codebook_from is None:
        return None
    if codebook_paths or "codebook_size" in settings:
        raise BadOptionError("a reused codebook (--codebook-from) excludes codebook images and a codebook size")
    donor_manifest = read_manifest(Path(codebook_from))
    donor_spec, donor_opts = manifest_options(donor_manifest, Path(codebook_from))
    return codebook_donor(Path(codebook_from), donor_spec.name, isinstance(donor_opts.index, AsmkIndexOptions),
                          donor_manifest.get("codebook", {}), method)


#: a build in progress writes into ``<out>`` + BUILDING_SUFFIX + ``<pid>``, a sibling of ``out``
BUILDING_SUFFIX = ".building-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def remove_stale_builds(out: Path) -> list[Path]:
    """Delete the ``<out>.building-<pid>`` folders left by builds whose process is gone (killed); a build
    still running (its pid alive, another process) is left alone. Returns the folders removed."""
    removed = []
    parent = out.parent
    if not parent.is_dir():
        return removed
    prefix = out.name + BUILDING_SUFFIX
    for p in parent.iterdir():
        if not p.name.startswith(prefix) or not p.is_dir():
            continue
        tail = p.name[len(prefix):]
        if not tail.isdigit():
            continue
        pid = int(tail)
        if pid == os.getpid() or not _pid_alive(pid):  # our own pid: an earlier build of this process
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _build(out: Path, spec: Any, opts: MethodOptions, fill: Callable[[Path, Progress], list[ExtractionFailure]],
           extractor: Callable[[], Any], donor: Any, codebook_paths: Sequence[Path] | None,
           progress: bool | Progress, workers: int) -> BuildResult:
    """The steps every build shares: fill ``features.glf``, make the first stage (codebook), write the
    manifest, index the features, then rename the finished folder to ``out`` and open it there. Everything is
    built in ``<out>.building-<pid>`` (same parent, so the rename is atomic): a failure removes it, a kill
    leaves it for the next build to remove, and ``out`` only ever appears complete."""
    prog = as_progress(progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(out)
    work = out.with_name(out.name + BUILDING_SUFFIX + str(os.getpid()))
    with storage_errors(out, "building the index", f"nothing committed was lost: the partial build was removed "
                        f"and {out} was not created"):
        work.mkdir()
        failures = _build_in(work, out, spec, opts, fill, extractor, donor, codebook_paths, prog, workers)
    return BuildResult(Collection.open(out, writable=True, progress=prog), failures)


def _build_in(work: Path, out: Path, spec: Any, opts: MethodOptions,
              fill: Callable[[Path, Progress], list[ExtractionFailure]], extractor: Callable[[], Any], donor: Any,
              codebook_paths: Sequence[Path] | None, prog: Progress, workers: int) -> list[ExtractionFailure]:
    """:func:`_build`'s steps in the folder ``work``, renamed to ``out`` at the end (removed on failure)."""
    try:
        failures = fill(work, prog)
        extra: dict[str, Any] = {}
        if isinstance(opts.index, AsmkIndexOptions):
            extra["codebook"] = _create_asmk_stage(work, opts.index, donor, extractor, codebook_paths, prog, workers)
            if donor is not None:
                opts = opts.replace(index=dataclasses.replace(opts.index, codebook_size=donor[0].size))
        write_manifest(work, new_manifest(spec, opts, **extra))
        Collection.open(work, writable=True, progress=prog).close()  # indexes the features
        fsync_dir(work)  # the entries of everything made in it (features, sources, ivf/ or global/)
        _check_new(out)  # nobody made it meanwhile
        os.rename(work, out)  # replaces an empty folder the user made
        fsync_after_commit(out.parent, out, "the index is built and complete")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return failures


def _extract_database(out: Path, extractor: Any, paths: Sequence[Path], names: Sequence[str], progress: Progress,
                      workers: int, empty: list[str] | None = None, asmk: bool = True) -> list[ExtractionFailure]:
    """Extract into ``out/features.glf``; the names of images with no features go to ``empty``."""
    features = FeatureFile(out / "features.glf", writable=True)
    sources = SourceLog(out)

    def sink(batch: list, origin: list) -> None:
        features.append(batch, shadow=False)
        sources.append(origin)
        if empty is not None:
            empty.extend(f.name for f in batch if has_no_features(f, asmk))

    try:
        failures = extract_into(sink, extractor, paths, names, progress, "extracting database", workers)
        if len(features) == 0:
            shown = "; ".join(f"{f.path}: {f.reason}" for f in failures[:3])
            raise BadInputError(f"nothing to index: all {len(failures)} images failed ({shown}"
                                f"{'; ...' if len(failures) > 3 else ''})")
    finally:
        features.close()
    return failures


def _create_asmk_stage(out: Path, options: AsmkIndexOptions, donor: Any, extractor: Callable[[], Any],
                       codebook_paths: Sequence[Path] | None, progress: Progress, workers: int) -> dict:
    """The empty ASMK stage of the new index (donor's codebook, or one trained on the database or on
    ``codebook_paths``); returns the codebook's provenance record for the manifest."""
    if donor is not None:
        codebook, quantizer, provenance = donor
        AsmkStage.create(out, options, codebook, quantizer=quantizer).close()
        return provenance
    per_image = options.codebook_descriptors_per_image
    if codebook_paths:
        with tempfile.TemporaryDirectory() as tmp:
            cb = FeatureFile(Path(tmp) / "codebook.glf", writable=True)
            try:
                names = [f"cb{i}:{Path(p).name}" for i, p in enumerate(codebook_paths)]
                extract_into(lambda batch, _: cb.append(batch, shadow=False), extractor(), codebook_paths, names,
                             progress, "extracting codebook set", workers)
                sample = descriptor_sample(cb, per_image, options.codebook_seed, source="codebook images")
            finally:
                cb.close()
        trained_on = "codebook_paths"
    else:
        features = FeatureFile(out / "features.glf")
        try:
            sample = descriptor_sample(features, per_image, options.codebook_seed, source=str(out / "features.glf"))
        finally:
            features.close()
        trained_on = "database"
    stage, info = train_asmk_stage(out, options, sample, progress)
    stage.close()
    return info | {"trained_on": trained_on}


def add_images(collection: Collection, paths: Sequence[Path], names: Sequence[str],
               progress: bool | Progress = True, workers: int = 2, extractor: Any = None,
               no_features: list[str] | None = None) -> list[ExtractionFailure]:
    """Extract and index more images into a writable collection. Names already searchable are skipped
    (reported); a removed name can be added again (a new image under the old name).

    :param extractor: the database extractor to use (default: made from the collection's options).
    :param no_features: if given, the names of the added images that yielded no features are appended.
    """
    db_extractor = extractor or create_extractors(collection.spec, collection.options)[1]
    prog = as_progress(progress)
    asmk = isinstance(collection.options.index, AsmkIndexOptions)

    def sink(batch: list, origin: list) -> None:
        collection.append(batch, origin)
        if no_features is not None:
            no_features.extend(f.name for f in batch if has_no_features(f, asmk))

    failures = extract_into(sink, db_extractor, paths, names, prog, "extracting", workers,
                            taken=set(collection.live_names().values()))
    collection.index_pending(prog)
    return failures
