"""The retrieval engine: a persistent collection (``*.glx`` folder) that indexes images and answers queries.

Pipeline of the default ``sift`` method: RootSIFT features -> ASMK* shortlist -> RANSAC spatial
verification of the top ``rerank_top`` (100) candidates, ordered by (inliers, ASMK score).

Folder layout::

    my.glx/
      manifest.json   format version, method, extraction / index / re-ranking settings, codebook info
      features.glf    local features of every database image (append-only record file)
      codebook.npy    visual words (float32, loaded without pickle)
      asmk.glf        ASMK* aggregated representation of every database image, in database order

Appends go to ``features.glf`` first and ``asmk.glf`` second, each record fsync'ed; an image whose
features were written but not its aggregation (a crash in between) is aggregated again on open, so
nothing committed is lost.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from glocal.extract.batch import ExtractionFailure, extract_many, extract_one
from glocal.index.asmk import AggregatedImage, AsmkIndex, aggregate
from glocal.index.codebook import Codebook, train_codebook
from glocal.io.feature_file import FeatureFile, RecordFile
from glocal.models import create_extractor
from glocal.progress import Progress, as_progress, no_progress
from glocal.records import ImageFeatures, SearchHit
from glocal.rerank.matching import MatcherOptions
from glocal.rerank.shortlist import rerank
from glocal.rerank.verification import VerifierOptions

#: Re-ranking settings of the ``sift`` method: mutual nearest neighbours with Lowe's ratio test 0.9 (tuned on
#: mini-ROxf/RPar, benchmarks/RESULTS.md; RootSIFT is not calibrated for DELG's
#: absolute distance threshold) and an affine model with 20 px / 1,000 trials / seed 0 as DELG, estimated with
#: USAC_FAST (on mini-ROxf/RPar Medium it beat plain RANSAC: 48.0 vs 46.7 and 38.9 vs 38.7).
SIFT_MATCHER = {"ratio": 0.9, "max_distance": None, "mutual": True}
SIFT_VERIFIER = {"model": "affine", "method": "usac_fast", "threshold_px": 20.0, "max_iters": 1000, "seed": 0}
INDEX_FORMAT = "glocal-index"
INDEX_VERSION = 1
DEFAULTS = {
    "codebook_size": 4096,
    "db_assignments": 1,
    "query_assignments": 5,
    "binary": True,
    "rerank_top": 100,
    "codebook_descriptors_per_image": 1000,
}



class IndexError_(Exception):
    """An index folder is missing, not a glocal index, or of an unknown version."""


class Engine:
    """A searchable collection of images stored in a ``.glx`` folder."""

    def __init__(self, root: Path, manifest: dict, codebook: Codebook, progress: Progress | None = None) -> None:
        self._progress = progress or no_progress
        self.root = Path(root)
        self.manifest = manifest
        self.codebook = codebook
        self.extractor = create_extractor(manifest["method"], **manifest["extractor"])
        self.features = FeatureFile(self.root / "features.glf", writable=True)
        self._asmk_file = RecordFile(self.root / "asmk.glf", writable=True)
        s = manifest["index"]
        self.index = AsmkIndex(codebook, binary=s["binary"])
        self.failures: list[ExtractionFailure] = []
        self.workers = 2  # threads for re-ranking
        self.index.add([AggregatedImage(a["words"], a["codes"]) for _, _, a in self._asmk_file])
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
        **extractor_conf: object,
    ) -> Engine:
        """Index ``paths`` into a new collection at ``out``.

        The codebook is trained on the database images themselves unless ``codebook_paths`` names other
        images (the protocol of the papers: train on a different dataset than the one searched).
        Unreadable images are reported in ``engine.failures`` and skipped.
        """
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out}: already exists and is not empty (use 'glocal index add' to extend it)")
        out.mkdir(parents=True, exist_ok=True)
        prog = as_progress(progress)
        extractor = create_extractor(method, **extractor_conf)
        settings = dict(DEFAULTS)
        if codebook_size:
            settings["codebook_size"] = int(codebook_size)
        features = FeatureFile(out / "features.glf", writable=True)
        failures = _extract_into(features, extractor, paths, names, prog, "extracting database", workers)
        if codebook_paths:
            with tempfile.TemporaryDirectory() as tmp:
                cb_feats = FeatureFile(Path(tmp) / "codebook.glf", writable=True)
                cb_names = [f"cb{i}:{Path(p).name}" for i, p in enumerate(codebook_paths)]
                _extract_into(cb_feats, extractor, codebook_paths, cb_names, prog, "extracting codebook set", workers)
                sample = _descriptor_sample(cb_feats, settings["codebook_descriptors_per_image"], seed)
                cb_feats.close()
        else:
            sample = _descriptor_sample(features, settings["codebook_descriptors_per_image"], seed)
        features.close()
        advance = prog("training codebook", 1)
        codebook = train_codebook(sample, settings["codebook_size"], seed=seed)
        advance(1)
        np.save(out / "codebook.npy", codebook.centroids, allow_pickle=False)
        manifest = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "method": method,
            "extractor": asdict(extractor.config),
            "index": {k: settings[k] for k in ("db_assignments", "query_assignments", "binary")}
            | {"kind": "asmk*" if settings["binary"] else "asmk", "alpha": 3.0, "tau": 0.0},
            "codebook": codebook.info | {"trained_on": "codebook_paths" if codebook_paths else "database"},
            "rerank": {"top": settings["rerank_top"], "matcher": dict(SIFT_MATCHER), "verifier": dict(SIFT_VERIFIER)},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        engine = cls._open(out, progress=prog)
        engine.failures = failures
        return engine

    @classmethod
    def open(cls, path: Path, progress: bool | Progress = False) -> Engine:
        return cls._open(Path(path), as_progress(progress))

    @classmethod
    def _open(cls, path: Path, progress: Progress) -> Engine:
        mf = path / "manifest.json"
        if not mf.exists():
            raise IndexError_(f"{path}: not a glocal index (no manifest.json)")
        manifest = json.loads(mf.read_text())
        if manifest.get("format") != INDEX_FORMAT:
            raise IndexError_(f"{path}: manifest.json is not a glocal index manifest")
        if manifest.get("version", 0) > INDEX_VERSION:
            raise IndexError_(f"{path}: index version {manifest['version']} is newer than this glocal reads")
        centroids = np.load(path / "codebook.npy", allow_pickle=False)
        return cls(path, manifest, Codebook(centroids, manifest["codebook"]), progress)

    def _repair(self) -> None:
        """Aggregate images whose features were committed but whose ASMK record was not."""
        done = len(self._asmk_file)
        missing = self.features.names[done:] if done < len(self.features) else []
        if not missing:
            return
        advance = self._progress("aggregating (ASMK*)", len(missing))
        batch: list[tuple[str, dict, None]] = []
        aggs = []
        for name in missing:
            agg = aggregate(self.features.get(name).descriptors, self.codebook,
                            self.manifest["index"]["db_assignments"], self.manifest["index"]["binary"])
            batch.append((name, {"words": agg.words, "codes": agg.codes}, None))
            aggs.append(agg)
            advance(1)
            if len(batch) >= 64:
                self._asmk_file.append_many(batch)
                batch = []
        if batch:
            self._asmk_file.append_many(batch)
        self.index.add(aggs)

    # -- growing ---------------------------------------------------------------------------------
    def add(self, paths: Sequence[Path], names: Sequence[str], progress: bool | Progress = True,
            workers: int = 2) -> list[ExtractionFailure]:
        """Extract and index more images. Names already in the collection are skipped (reported)."""
        prog = as_progress(progress)
        fresh_paths, fresh_names, failures = [], [], []
        seen = set(self.features.names)
        for p, n in zip(paths, names):
            if n in seen:
                failures.append(ExtractionFailure(str(p), n, "already in the index (skipped)"))
            else:
                seen.add(n)
                fresh_paths.append(p)
                fresh_names.append(n)
        failures += _extract_into(self.features, self.extractor, fresh_paths, fresh_names, prog,
                                  "extracting", workers)
        self._progress = prog
        self._repair()
        return failures

    # -- reading ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self._asmk_file.names

    def __len__(self) -> int:
        return len(self._asmk_file)

    @property
    def settings(self) -> dict:
        """Everything needed to reproduce a result obtained with this index."""
        m = self.manifest
        return {
            "method": m["method"],
            "max_side": m["extractor"].get("max_side"),
            "extractor": m["extractor"],
            "index": m["index"],
            "codebook": {"size": self.codebook.size, **{k: v for k, v in m["codebook"].items() if k != "size"}},
            "rerank": m["rerank"],
            "images": len(self),
        }

    def query_features(self, query_path: Path, box: tuple[float, float, float, float] | None = None) -> ImageFeatures:
        return extract_one(self.extractor, Path(query_path), Path(query_path).name, box=box)

    def search(
        self,
        query_path: Path,
        box: tuple[float, float, float, float] | None = None,
        top: int = 100,
        rerank_top: int | None = None,
    ) -> list[SearchHit]:
        """Search the collection with an image file (optionally cropped to ``box`` = x1, y1, x2, y2).

        :param rerank_top: number of shortlisted images verified with RANSAC (default from the index,
            100); 0 disables re-ranking.
        :raises glocal.io.ImageReadError: the query image cannot be read.
        """
        return self.search_features(self.query_features(query_path, box), top=top, rerank_top=rerank_top)

    def search_features(self, query: ImageFeatures, top: int = 100, rerank_top: int | None = None) -> list[SearchHit]:
        """Search with already extracted query features."""
        m = self.manifest
        q = aggregate(query.descriptors, self.codebook, m["index"]["query_assignments"], m["index"]["binary"])
        n_verify = m["rerank"]["top"] if rerank_top is None else rerank_top
        idx, scores = self.index.search(q, top=max(top, n_verify))
        names = self.names
        hits = [SearchHit(int(i), names[i], float(s), float(s)) for i, s in zip(idx, scores)]
        if n_verify > 0 and len(hits) > 0:
            head, tail = hits[:n_verify], hits[n_verify:]
            candidates = _LazyFeatures(self.features, [h.name for h in head])
            verified = rerank(
                query, candidates, np.array([h.shortlist_score for h in head], np.float32),
                matcher=MatcherOptions(**m["rerank"]["matcher"]), verifier=VerifierOptions(**m["rerank"]["verifier"]),
                workers=self.workers,
            )
            head = [
                SearchHit(head[r.position].index, head[r.position].name, r.score, head[r.position].shortlist_score,
                          r.inliers, r.matches)
                for r in verified
            ]
            hits = head + tail
        return hits[:top]

    def close(self) -> None:
        self.features.close()
        self._asmk_file.close()


class _LazyFeatures(Sequence[ImageFeatures]):
    """Features of named images, read from the feature file only when indexed (thread-safe reads)."""

    def __init__(self, features: FeatureFile, names: list[str]) -> None:
        self._features = features
        self._names = names

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i):  # type: ignore[override]
        return self._features.get(self._names[i])


def _extract_into(features: FeatureFile, extractor: object, paths: Sequence[Path], names: Sequence[str],
                  progress: Progress, description: str, workers: int) -> list[ExtractionFailure]:
    """Extract images into a feature file in committed batches; returns the failures."""
    failures: list[ExtractionFailure] = []
    batch: list[ImageFeatures] = []
    advance = progress(description, len(paths))
    for item in extract_many(extractor, list(paths), list(names), workers=workers, on_done=advance):
        if isinstance(item, ExtractionFailure):
            failures.append(item)
            continue
        batch.append(item)
        if len(batch) >= 16:
            features.append(batch)
            batch = []
    if batch:
        features.append(batch)
    return failures


def _descriptor_sample(features: FeatureFile, per_image: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = []
    for f in features:
        d = f.descriptors
        if len(d) > per_image:
            d = d[np.sort(rng.choice(len(d), per_image, replace=False))]
        parts.append(np.asarray(d, np.float32))
    if not parts or sum(len(p) for p in parts) == 0:
        raise ValueError(f"{features.path}: no local features to train a codebook on (all images failed?)")
    return np.concatenate(parts)
