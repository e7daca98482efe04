"""Searching a collection: first stage, then spatial verification of the shortlist.

A :class:`Searcher` reads a :class:`~glocal.index.collection.Collection` (it never writes it) with the
options the index was built with. The extractor is created lazily, the first time a query image must
become features, so opening a searcher costs no model. Search with a file (:meth:`Searcher.search`) or
with features already extracted (:meth:`Searcher.search_features`).

Re-ranking (DELG, Cao et al., ECCV 2020, appendix): putative matches between the query's and each
shortlisted image's local features, a robust affine fit, and the final order by (inliers, first-stage
score) for the verified top ``rerank_top``; the rest keep their first-stage order.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from glocal.errors import BadOptionError
from glocal.extract.batch import extract_one
from glocal.extract.stage import create_extractors, with_regions
from glocal.index.collection import Collection
from glocal.methods.stages import RerankOptions, SearchOptions
from glocal.progress import Progress
from glocal.records import ImageFeatures, SearchHit
from glocal.rerank.hybrid import add_descriptor_checks, descriptor_positions
from glocal.rerank.matching import MatcherOptions
from glocal.rerank.ordering import reorder
from glocal.rerank.shortlist import rerank
from glocal.rerank.verification import VerifierOptions
from glocal.rerank.word_matching import QueryWords, WordFeatures
from glocal.rerank.word_rerank import WordVerifierOptions, rerank_words

Box = tuple[float, float, float, float]


def matcher_options(options: RerankOptions) -> MatcherOptions:
    return MatcherOptions(max_distance=options.max_distance, ratio=options.ratio, mutual=options.mutual)


def verifier_options(options: RerankOptions) -> VerifierOptions:
    return VerifierOptions(model=options.model, estimator=options.estimator, threshold_px=options.threshold_px,
                           max_iters=options.max_iters, confidence=options.confidence, seed=options.ransac_seed)


def word_verifier_options(options: RerankOptions) -> WordVerifierOptions:
    return WordVerifierOptions(assignments=options.word_assignments, max_hamming=options.max_hamming,
                               hypotheses=options.hypotheses, lo_iterations=options.lo_iterations,
                               threshold_px=options.threshold_px, lo_hypotheses=options.lo_hypotheses)


def order_min_inliers(options: RerankOptions) -> int:
    """The ``min_inliers`` of the final order: 0 (DELG) or, with order ``verified``, the decision threshold."""
    return options.verify_min_inliers if options.order == "verified" else 0


def word_features(arrays: Mapping[str, Any]) -> WordFeatures:
    return WordFeatures(arrays["words"], arrays.get("signs"), arrays["keypoints"], arrays["scales"],
                        arrays.get("orientations"))


class Searcher:
    """Answers queries against one collection (see module docstring)."""

    def __init__(self, collection: Collection, workers: int = 2, settings: Mapping[str, Any] | None = None) -> None:
        """:param settings: ``--set`` values for this searcher's search and re-ranking options (the extractor and
            index options are fixed by the index: changing them is refused)."""
        self.collection = collection
        self.workers = workers  # threads for re-ranking
        self._extractor: Any = None
        self._query_extractor: Any = None
        #: seconds of the last query's stages: extract (file queries), first_stage, verification; the same with
        #: ``_cpu``: CPU seconds of this process (all its threads) over the stage
        self.last_timings: dict[str, float] = {}
        self._warned_no_words = False
        self.options = collection.options
        if settings:
            self.options = collection.spec.configure(settings, base=collection.options)
            if self.options.extractor != collection.options.extractor or self.options.index != collection.options.index:
                raise BadOptionError("--set: extractor and index options are fixed when the index is built; at search "
                                     "time only search and rerank options can change (see 'glocal methods show "
                                     f"{collection.spec.name}')")

    @classmethod
    def open(cls, path: Path, progress: bool | Progress = False, workers: int = 2,
             settings: Mapping[str, Any] | None = None) -> Searcher:
        """A searcher over the index at ``path``, opened read-only (``settings``: see :meth:`__init__`)."""
        collection = Collection.open(path, writable=False, progress=progress)
        try:
            return cls(collection, workers=workers, settings=settings)
        except BaseException:
            collection.close()
            raise

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def extractor(self) -> Any:
        """The method's query extractor, created on first use (this is where PyTorch is imported)."""
        if self._extractor is None:
            self._extractor = create_extractors(self.collection.spec, self.collection.options)[0]
        return self._extractor

    @property
    def query_extractor(self) -> Any:
        """The extractor for query images: the index's, or one loading at ``query_max_side`` when set."""
        side = self.options.search.query_max_side
        if side is None or not hasattr(self.options.extractor, "max_side"):
            return self.extractor
        if self._query_extractor is None:
            config = dataclasses.replace(self.options.extractor, max_side=side)
            self._query_extractor = self.collection.spec.create_extractor(config)
        return self._query_extractor

    @property
    def database_extractor(self) -> Any:
        """The extractor for images added to the collection (with regions when the index uses them)."""
        return with_regions(self.extractor, self.collection.options)

    @property
    def names(self) -> list[str]:
        return self.collection.names

    def __len__(self) -> int:
        return len(self.collection)

    def query_features(self, query_path: Path, box: Box | None = None) -> ImageFeatures:
        """Features of a query image (cropped to ``box`` = x1, y1, x2, y2 in original pixels).

        :raises glocal.io.images.ImageReadError: the file cannot be read as an image.
        """
        return extract_one(self.query_extractor, Path(query_path), Path(query_path).name, box=box)

    def search(self, query_path: Path, box: Box | None = None, top: int = 100, rerank_top: int | None = None,
               qe: int | None = None, dba: int | None = None) -> list[SearchHit]:
        """Search with an image file; see :meth:`search_features`."""
        t0, c0 = time.perf_counter(), time.process_time()
        query = self.query_features(query_path, box)
        extract = {"extract": time.perf_counter() - t0, "extract_cpu": time.process_time() - c0}
        hits = self.search_features(query, top=top, rerank_top=rerank_top, qe=qe, dba=dba)
        self.last_timings = extract | self.last_timings
        return hits

    def search_features(self, query: ImageFeatures, top: int = 100, rerank_top: int | None = None,
                        qe: int | None = None, dba: int | None = None) -> list[SearchHit]:
        """The best ``top`` images for already extracted query features.

        :param rerank_top: shortlisted images verified (default: the index's; 0 turns re-ranking off).
        :param qe: alpha-QE with this many vectors, the query included (global methods).
        :param dba: alpha-DBA of the database with this many vectors each (global methods; computed at the
            first search that asks for it and kept while the searcher is open).
        """
        opts = self.options
        search_options: SearchOptions = opts.search
        changes = {k: v for k, v in (("qe", qe), ("dba", dba)) if v is not None}
        if changes:
            search_options = dataclasses.replace(search_options, **changes)
        n_verify = opts.rerank.rerank_top if rerank_top is None else rerank_top
        t0, c0 = time.perf_counter(), time.process_time()
        stage = self.collection.stage
        words = n_verify > 0 and query.num_features > 0 and self._use_words()
        nearest = stage.query_words(query, k=max(stage.query_assignments, opts.rerank.word_assignments)) \
            if words else None
        kwargs = {"nearest": nearest[:, :stage.query_assignments]} if nearest is not None else {}
        idx, scores = stage.search(query, top=max(top, n_verify), options=search_options, **kwargs)
        names = self.collection.features.names
        hits = [SearchHit(int(i), names[i], float(s), float(s)) for i, s in zip(idx, scores)]
        t1, c1 = time.perf_counter(), time.process_time()
        if n_verify > 0 and hits and query.num_features > 0:
            head, tail = hits[:n_verify], hits[n_verify:]
            shortlist = np.array([h.shortlist_score for h in head], np.float32)
            ro = opts.rerank
            if nearest is not None:
                a = min(ro.word_assignments, nearest.shape[1])
                signs = stage.query_signs(query, nearest[:, :a]) if ro.max_hamming is not None else None
                qw = QueryWords(nearest[:, :a], signs, query.keypoints, query.scales, query.orientations)
                cands = [word_features(stage.word_features(h.index)) for h in head]
                verified = rerank_words(qw, cands, shortlist, word_verifier_options(ro),
                                        min_inliers=order_min_inliers(ro), verify_min_inliers=ro.verify_min_inliers)
                if ro.descriptor_top > 0:  # hybrid: descriptor matching for a few images (glocal.rerank.hybrid)
                    verified = add_descriptor_checks(
                        verified, query, lambda ps: self.collection.features.view([head[p].index for p in ps]),
                        descriptor_positions(verified, ro.descriptor_top, ro.descriptor_pick, ro.verify_min_inliers),
                        matcher=matcher_options(ro), verifier=verifier_options(ro), workers=self.workers,
                        min_inliers=order_min_inliers(ro), verify_min_inliers=ro.verify_min_inliers)
            else:
                verified = rerank(
                    query, self.collection.features.view([h.index for h in head]), shortlist,
                    matcher=matcher_options(ro), verifier=verifier_options(ro), workers=self.workers,
                    min_inliers=order_min_inliers(ro), verify_min_inliers=ro.verify_min_inliers,
                )
            verified = reorder(verified, cell_px=ro.inlier_cell_px, shortlist_weight=ro.shortlist_weight,
                               min_inliers=order_min_inliers(ro))
            head = [SearchHit(head[r.position].index, head[r.position].name, r.score,
                              head[r.position].shortlist_score, r.inliers, r.matches, r.is_match) for r in verified]
            hits = head + tail
        self.last_timings = {"first_stage": t1 - t0, "verification": time.perf_counter() - t1,
                             "first_stage_cpu": c1 - c0, "verification_cpu": time.process_time() - c1}
        return hits[:top]

    def _use_words(self) -> bool:
        """Whether verification uses visual words: asked for (``matcher=words``) and the index stores them;
        an older index without a word store falls back to descriptor matching, with one warning."""
        if self.options.rerank.matcher != "words":
            return False
        if getattr(self.collection.stage, "words", None) is not None:
            return True
        if not self._warned_no_words:
            warnings.warn(f"{self.collection.root}: this index stores no visual words per feature (built before "
                          "they were kept); verifying with descriptor matching instead, rebuild it for the fast "
                          "matcher=words", stacklevel=3)
            self._warned_no_words = True
        return False

    def settings(self) -> dict[str, Any]:
        """The collection's settings (what reproduces a result), with the checkpoint's digest when one is set."""
        options = self.options.to_dict()
        out = self.collection.settings() | {"search": options["search"], "rerank": options["rerank"]}
        checkpoint = getattr(self.collection.options.extractor, "checkpoint", None)
        if checkpoint:
            from glocal.io.atomic import sha256_file

            out["checkpoint_sha256"] = sha256_file(Path(checkpoint)) if Path(checkpoint).is_file() else None
        return out

    def close(self) -> None:
        self.collection.close()
