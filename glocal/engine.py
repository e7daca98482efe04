"""The retrieval engine: a persistent collection (``*.glx`` folder) that indexes images and answers queries.

A method's pipeline (``glocal.pipelines``) says how it searches. The default ``sift``: RootSIFT features ->
ASMK* shortlist -> spatial verification of the top 100 candidates, ordered by (inliers, ASMK score).
DELG: global descriptor shortlist -> the same verification with DELG's matcher; DOLG, HOW, FIRe: one stage.

Folder layout::

    my.glx/
      manifest.json   format version, method, extraction / shortlist / re-ranking settings, codebook info
      features.glf    features of every database image, in database order (append-only record file)
      ivf/                       ASMK methods: the persistent inverted file (codebook included)
      global/                    global methods: the global-descriptor index

Appends go to ``features.glf`` first and to the shortlist second, each committed (fsync); an image whose
features were written but not its shortlist entry (a crash in between) is added again on open, so
nothing committed is lost.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from glocal.asmk_setup import codebook_donor, create_asmk_shortlist, descriptor_sample
from glocal.extract.batch import ExtractionFailure, extract_many, extract_one
from glocal.io.atomic import FileLock, sha256_file
from glocal.io.feature_file import FeatureFile
from glocal.io.sources import SourceLog
from glocal.models import create_extractor
from glocal.pipelines import pipeline_for
from glocal.progress import Progress, as_progress, no_progress
from glocal.records import ImageFeatures, SearchHit
from glocal.rerank.matching import MatcherOptions
from glocal.rerank.shortlist import rerank
from glocal.rerank.verification import VerifierOptions
from glocal.shortlists import AsmkShortlist, GlobalShortlist, Shortlist

INDEX_FORMAT = "glocal-index"
INDEX_VERSION = 2
_BATCH = 16


class IndexError_(Exception):
    """An index folder is missing, not a glocal index, or of an unknown version."""


class Engine:
    """A searchable collection of images stored in a ``.glx`` folder. Create with :meth:`build`/:meth:`open`."""

    def __init__(self, root: Path, manifest: dict, shortlist: Shortlist, progress: Progress | None = None,
                 writable: bool = False) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.shortlist = shortlist
        self.writable = writable
        self._writer: FileLock | None = None
        if writable:  # one writer at a time, whatever the shortlist (the ASMK one also locks its own folder)
            try:
                self._writer = FileLock(self.root / "WRITER.LOCK")
            except BlockingIOError:
                shortlist.close()
                raise IndexError_(f"{self.root}: another process is writing to this index (add, remove or "
                                  "compact); open it read-only or try again later") from None
        self.extractor = create_extractor(manifest["method"], **manifest["extractor"])
        self.db_extractor = _database_extractor(self.extractor, manifest.get("regions"))
        self.features = FeatureFile(self.root / "features.glf", writable=writable)
        self.sources = SourceLog(self.root)  # name -> image file, for drawing matches
        self.failures: list[ExtractionFailure] = []
        self.workers = 2  # threads for extraction and re-ranking
        self._progress = progress or no_progress
        self._repair()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        paths: Sequence[Path],
        names: Sequence[str],
        out: Path,
        method: str = "sift",
        codebook_paths: Sequence[Path] | None = None,
        progress: bool | Progress = True,
        codebook_size: int | None = None,
        workers: int = 2,
        seed: int = 0,
        regions: str = "none",
        region_detector: str | None = None,
        aggregation: str | None = None,
        codebook_from: Path | None = None,
        **extractor_conf: object,
    ) -> Engine:
        """Index ``paths`` into a new collection at ``out``.

        :param regions: region source for database images: ``none``, ``rmac`` (R-MAC grid, levels 1-3) or
            ``detector`` (landmark detector, weights ``region_detector``); ASMK methods only.
        :param aggregation: ``asmk``, ``r-asmk`` (D2R eq. 8-9, default with regions) or ``regions``
            (regional search, each region stored, scored by max, D2R eq. 3-4).

        For ASMK methods the codebook is trained on the database images themselves unless
        ``codebook_paths`` names other images (the papers' protocol: train on a different dataset than the
        one searched), or taken with its fast quantizer from the index at ``codebook_from`` (same method:
        train once, build many). Unreadable images are reported in ``engine.failures`` and skipped.
        """
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out}: already exists and is not empty (use 'glocal index add' to extend it)")
        pipeline = pipeline_for(method)
        donor = None
        if codebook_from is not None:
            try:
                donor_manifest = read_index_manifest(Path(codebook_from))
            except IndexError_ as exc:
                raise ValueError(f"{codebook_from}: cannot reuse its codebook, not a readable glocal index ({exc})"
                                 ) from None
            donor = codebook_donor(Path(codebook_from), donor_manifest, method, codebook_paths, codebook_size)
        if regions != "none" and pipeline["shortlist"] != "asmk":
            raise ValueError(f"--regions applies to ASMK methods (sift, how, fire), not to {method!r}")
        region_settings = {"source": regions, "detector": region_detector} if regions != "none" else None
        if pipeline["shortlist"] == "asmk":
            pipeline["asmk"]["aggregation"] = aggregation or ("r-asmk" if region_settings else "asmk")
        extractor = create_extractor(method, **extractor_conf)
        out.mkdir(parents=True, exist_ok=True)
        prog = as_progress(progress)
        features = FeatureFile(out / "features.glf", writable=True)
        db_extractor = _database_extractor(extractor, region_settings)
        failures = _extract_into(features, db_extractor, paths, names, prog, "extracting database", workers,
                                 sources=SourceLog(out))
        if len(features) == 0:
            features.close()
            shown = "; ".join(f"{f.path}: {f.reason}" for f in failures[:3])
            raise ValueError(f"nothing to index: all {len(failures)} images failed ({shown}"
                             f"{'; ...' if len(failures) > 3 else ''})")
        manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "method": method,
                    "extractor": asdict(extractor.config), "regions": region_settings} | pipeline
        if pipeline["shortlist"] == "asmk":
            if codebook_size:
                manifest["asmk"]["codebook_size"] = int(codebook_size)
            sample = None
            if donor is None and codebook_paths:
                with tempfile.TemporaryDirectory() as tmp:
                    cb_feats = FeatureFile(Path(tmp) / "codebook.glf", writable=True)
                    cb_names = [f"cb{i}:{Path(p).name}" for i, p in enumerate(codebook_paths)]
                    _extract_into(cb_feats, extractor, codebook_paths, cb_names, prog, "extracting codebook set",
                                  workers)
                    sample = descriptor_sample(cb_feats, manifest["asmk"]["codebook_descriptors_per_image"], seed)
                    cb_feats.close()
            elif donor is None:
                sample = descriptor_sample(features, manifest["asmk"]["codebook_descriptors_per_image"], seed)
            create_asmk_shortlist(out, manifest, sample, donor, bool(codebook_paths), seed, prog)
        features.close()
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        engine = cls._open(out, progress=prog, writable=True)
        engine.failures = failures
        return engine

    @classmethod
    def open(cls, path: Path, progress: bool | Progress = False, writable: bool = False) -> Engine:
        """Open an index; ``writable`` for :meth:`add` / :meth:`remove` (one writer at a time, any readers)."""
        return cls._open(Path(path), as_progress(progress), writable)

    @classmethod
    def _open(cls, path: Path, progress: Progress, writable: bool = False) -> Engine:
        manifest = read_index_manifest(path)
        shortlist: Shortlist
        if manifest["shortlist"] == "asmk":
            shortlist = AsmkShortlist.open(path, manifest["asmk"], writable=writable)
        else:
            shortlist = GlobalShortlist.open(path, manifest["global"])
        return cls(path, manifest, shortlist, progress, writable)

    def _repair(self) -> None:
        """Add to the shortlist the images whose features were committed but whose entry was not."""
        done = self.shortlist.count
        if done > len(self.features):
            raise IndexError_(f"{self.root}: the shortlist holds {done} images but features.glf only "
                              f"{len(self.features)}; the index is damaged, rebuild it")
        missing = range(done, len(self.features))
        if not missing or not self.writable:  # a reader serves what the shortlist has committed
            return
        advance = self._progress("indexing", len(missing))
        for start in range(missing.start, missing.stop, 64):
            batch = [self.features[i] for i in range(start, min(start + 64, missing.stop))]
            self.shortlist.add(batch)
            advance(len(batch))

    # -- growing ---------------------------------------------------------------------------------
    def add(self, paths: Sequence[Path], names: Sequence[str], progress: bool | Progress = True,
            workers: int = 2) -> list[ExtractionFailure]:
        """Extract and index more images. Names already searchable are skipped (reported); a removed name can
        be added again (a new image under the old name)."""
        self._require_writable()
        prog = as_progress(progress)
        failures = _extract_into(self.features, self.db_extractor, paths, names, prog, "extracting", workers,
                                 taken=set(self.live_names().values()), sources=self.sources)
        self._progress = prog
        self._repair()
        return failures

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexError_(f"{self.root}: opened read-only; use Engine.open(path, writable=True)")

    # -- reading ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.features.names[: self.shortlist.count]

    def __len__(self) -> int:
        """Searchable images (removed ones excluded)."""
        return len(self.shortlist)

    def live_names(self) -> dict[int, str]:
        """Position -> name of every searchable image (removed ones excluded)."""
        dead = self.shortlist.removed()
        return {i: n for i, n in enumerate(self.names) if i >= len(dead) or not dead[i]}

    def remove(self, names: Sequence[str]) -> list[str]:
        """Remove images by name from search results (committed at once); returns the names not found.

        Their features stay in ``features.glf`` (positions are ids) and are never returned again; the name
        can be added again with :meth:`add`.
        """
        self._require_writable()
        known = {n: i for i, n in self.live_names().items()}
        self.shortlist.remove([known[n] for n in names if n in known])
        return [n for n in names if n not in known]

    @property
    def settings(self) -> dict:
        """Everything needed to reproduce a result obtained with this index."""
        m = self.manifest
        out = {"method": m["method"], "max_side": m["extractor"].get("max_side"), "extractor": m["extractor"],
               "index": self.shortlist.settings, "rerank": m["rerank"], "regions": m.get("regions"),
               "images": len(self)}
        checkpoint = m["extractor"].get("checkpoint")
        if checkpoint:
            out["checkpoint_sha256"] = _sha256(Path(checkpoint))
        if "codebook" in m:
            out["codebook"] = m["codebook"]
        return out

    def query_features(self, query_path: Path, box: tuple[float, float, float, float] | None = None) -> ImageFeatures:
        return extract_one(self.extractor, Path(query_path), Path(query_path).name, box=box)

    def search(
        self,
        query_path: Path,
        box: tuple[float, float, float, float] | None = None,
        top: int = 100,
        rerank_top: int | None = None,
        query_expansion: int | None = None,
        database_augmentation: int | None = None,
    ) -> list[SearchHit]:
        """Search the collection with an image file (optionally cropped to ``box`` = x1, y1, x2, y2).

        :param rerank_top: number of shortlisted images verified with RANSAC (default from the index,
            100 for sift and DELG); 0 disables re-ranking.
        :param query_expansion: alpha-QE with this many vectors, the query included (global methods only).
        :param database_augmentation: alpha-DBA of the database with this many vectors each, itself included
            (global methods only; computed at the first search of an opened index).
        :raises glocal.io.ImageReadError: the query image cannot be read.
        """
        return self.search_features(self.query_features(query_path, box), top=top, rerank_top=rerank_top,
                                    query_expansion=query_expansion, database_augmentation=database_augmentation)

    def search_features(self, query: ImageFeatures, top: int = 100, rerank_top: int | None = None,
                        query_expansion: int | None = None, database_augmentation: int | None = None
                        ) -> list[SearchHit]:
        """Search with already extracted query features."""
        settings = self.manifest["rerank"]
        n_verify = settings["top"] if rerank_top is None else rerank_top
        idx, scores = self.shortlist.search(query, top=max(top, n_verify), query_expansion=query_expansion,
                                            database_augmentation=database_augmentation)
        names = self.features.names
        hits = [SearchHit(int(i), names[i], float(s), float(s)) for i, s in zip(idx, scores)]
        if n_verify > 0 and hits and query.num_features > 0:
            head, tail = hits[:n_verify], hits[n_verify:]
            verified = rerank(
                query, self.features.view([h.index for h in head]),
                np.array([h.shortlist_score for h in head], np.float32),
                matcher=MatcherOptions(**settings.get("matcher", {})),
                verifier=VerifierOptions(**settings.get("verifier", {})),
                workers=self.workers,
            )
            head = [SearchHit(head[r.position].index, head[r.position].name, r.score,
                              head[r.position].shortlist_score, r.inliers, r.matches) for r in verified]
            hits = head + tail
        return hits[:top]

    def close(self) -> None:
        self.features.close()
        self.shortlist.close()
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def read_index_manifest(path: Path) -> dict:
    """The ``manifest.json`` of the index at ``path``, checked (format and version); :class:`IndexError_` names
    the problem (and how to finish an interrupted compaction)."""
    mf = path / "manifest.json"
    if not mf.exists():
        done = path.with_name(path.name + ".compacting")
        if not path.exists() and (done / "manifest.json").exists():
            raise IndexError_(f"{path}: a 'glocal index compact' was interrupted after moving the old index to "
                              f"{path.name}.old; its complete result is {done}: rename that to {path}")
        raise IndexError_(f"{path}: not a glocal index (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise IndexError_(f"{mf}: not valid JSON ({exc})") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise IndexError_(f"{path}: manifest.json is not a glocal index manifest")
    if manifest.get("version", 0) > INDEX_VERSION:
        raise IndexError_(f"{path}: index version {manifest['version']} is newer than this glocal reads")
    if manifest.get("version", 0) < INDEX_VERSION:
        raise IndexError_(f"{path}: index version {manifest.get('version')} is older than {INDEX_VERSION}; "
                          "rebuild it with 'glocal index build'")
    return manifest


def _extract_into(features: FeatureFile, extractor: object, paths: Sequence[Path], names: Sequence[str],
                  progress: Progress, description: str, workers: int, taken: set[str] | None = None,
                  sources: SourceLog | None = None) -> list[ExtractionFailure]:
    """Extract images into a feature file in committed batches; returns the failures.

    Names in ``taken`` (default: every name in the file) or repeated in ``names`` are skipped and reported,
    not extracted twice. ``sources`` records each committed image's file.
    """
    failures: list[ExtractionFailure] = []
    fresh_paths, fresh_names = [], []
    seen = set(features.names) if taken is None else set(taken)
    for p, n in zip(paths, names):
        if n in seen:
            failures.append(ExtractionFailure(str(p), n, "already in the index (skipped)"))
        else:
            seen.add(n)
            fresh_paths.append(p)
            fresh_names.append(n)
    batch: list[ImageFeatures] = []
    path_of = dict(zip(fresh_names, fresh_paths))
    advance = progress(description, len(fresh_paths))
    for item in extract_many(extractor, fresh_paths, fresh_names, workers=workers, on_done=advance):
        if isinstance(item, ExtractionFailure):
            failures.append(item)
            continue
        batch.append(item)
        if len(batch) >= _BATCH:
            _commit_batch(features, batch, taken is not None, sources, path_of)
            batch = []
    if batch:
        _commit_batch(features, batch, taken is not None, sources, path_of)
    return failures


def _commit_batch(features: FeatureFile, batch: list[ImageFeatures], shadow: bool, sources: SourceLog | None,
                  path_of: dict[str, Path]) -> None:
    features.append(batch, shadow=shadow)
    if sources is not None:
        sources.append((f.name, path_of[f.name]) for f in batch)


def _database_extractor(extractor: object, regions: dict | None) -> object:
    """The extractor for database images: with regions attached when the index uses them."""
    if not regions:
        return extractor
    from glocal.extract.regions import RegionExtractor, region_source

    overrides = {"checkpoint": regions["detector"]} if regions["source"] == "detector" and regions.get("detector") else {}
    return RegionExtractor(extractor, region_source(regions["source"], **overrides))


def _sha256(path: Path) -> str | None:
    """SHA-256 of a checkpoint file (None when the file is gone), for reproducibility records."""
    return sha256_file(path) if path.is_file() else None
