"""Typed options of the stages after extraction: the first stage (index), the search and the re-ranking.

A method spec (:mod:`glocal.methods.spec`) holds one instance of each group as its defaults; ``--set`` and
the manifest replace fields through :func:`glocal.methods.options.with_values`. The index and re-ranking
code read these records; nothing here imports them (rooms import leftwards).
"""
from __future__ import annotations

from dataclasses import dataclass

from glocal.methods.options import option

ASMK_AGGREGATIONS = ("auto", "asmk", "r-asmk", "regions")
REGION_SOURCES = ("none", "rmac", "detector")
GLOBAL_INDEX_KINDS = ("auto", "exact", "ivfpq")
#: index=auto: a collection whose float32 global vectors (images x dimension x 4 bytes) reach this size at its
#: first build gets IVF-PQ, a smaller one exact search: 97,657 images of 2048-D, 390,625 of 512-D (the rule
#: and the measurements behind it: benchmarks/RESULTS.md, "IVF-PQ at scale")
AUTO_IVFPQ_BYTES = 800_000_000
#: rescore=: IVF-PQ candidates re-ranked exactly by default (chosen on a development set, not the reported
#: one: benchmarks/RESULTS.md, "IVF-PQ at a million images")
IVFPQ_RESCORE = 200
VERIFIER_MODELS = ("affine", "homography")
MATCHERS = ("descriptors", "words")
RERANK_ORDERS = ("inliers", "verified")
DESCRIPTOR_PICKS = ("shortlist", "unverified")
ESTIMATORS = ("ransac", "usac_default", "usac_fast", "usac_accurate", "usac_magsac", "usac_prosac")


@dataclass(frozen=True)
class AsmkIndexOptions:
    """First stage ASMK / ASMK* (Tolias et al., ICCV 2013) over local descriptors; with regions, R-ASMK or
    regional search (Detect-to-Retrieve, Teichmann et al., CVPR 2019, eq. 3-4 and 8-9)."""

    binary: bool = option(True, "ASMK*: residuals binarised to sign bits (False: float ASMK)")
    alpha: float = option(3.0, "selectivity exponent of the kernel sigma_alpha(u) = sign(u)|u|^alpha")
    tau: float = option(0.0, "selectivity threshold: similarities below it count as 0")
    db_assignments: int = option(1, "visual words per database descriptor")
    query_assignments: int = option(5, "visual words per query descriptor (multiple assignment)")
    codebook_size: int = option(65536, "visual words (clipped to training descriptors / 39)")
    codebook_descriptors_per_image: int = option(1000, "descriptors per image sampled to train the codebook")
    codebook_seed: int = option(0, "seed of the codebook sample, k-means and quantizer calibration")
    aggregation: str = option("auto", "asmk; r-asmk (regions aggregated per image, D2R eq. 8-9); regions "
                              "(each region stored, image scored by its best region, D2R eq. 3-4); auto: "
                              "r-asmk with regions, else asmk", choices=ASMK_AGGREGATIONS)
    regions: str = option("none", "database regions: none, rmac (R-MAC grid) or detector (landmark boxes)",
                          choices=REGION_SOURCES)
    detector: str | None = option(None, "landmark detector weights for regions=detector")

    def __post_init__(self) -> None:
        for name in ("db_assignments", "query_assignments", "codebook_size", "codebook_descriptors_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.aggregation not in ("auto", "asmk") and self.regions == "none":
            raise ValueError(f"aggregation={self.aggregation!r} needs regions (regions=rmac or detector)")
        if self.regions == "detector" and not self.detector:
            raise ValueError("regions=detector needs detector=PATH (landmark detector weights)")

    @property
    def resolved_aggregation(self) -> str:
        """The aggregation used: ``auto`` is R-ASMK with regions, plain ASMK without."""
        if self.aggregation != "auto":
            return self.aggregation
        return "asmk" if self.regions == "none" else "r-asmk"


@dataclass(frozen=True)
class GlobalIndexOptions:
    """First stage over one global descriptor per image: exact inner products or faiss IVF-PQ."""

    index: str = option("auto", "exact (every vector scored), ivfpq (product-quantised, approximate) or auto: "
                        f"exact while the float32 vectors of the first build stay below {AUTO_IVFPQ_BYTES / 1e6:,.0f} "
                        "MB (97,657 images of 2048-D), ivfpq from there (the choice is recorded in the manifest and "
                        "kept as the index grows)", choices=GLOBAL_INDEX_KINDS)
    ivfpq_nprobe: int | None = option(None, "IVF-PQ cells scanned per query (None: chosen by collection size)")
    rescore: int = option(IVFPQ_RESCORE, "IVF-PQ: keep the full vectors on disk (memory-mapped) and re-rank the "
                          "top K candidates by the exact inner product (K = this, at least the shortlist asked for); "
                          "0: PQ codes only, approximate scores")
    rescore_storage: str = option("float16", "IVF-PQ with rescore: precision of the kept vectors",
                                  choices=("float16", "float32"))

    def __post_init__(self) -> None:
        if self.rescore < 0:
            raise ValueError(f"rescore must be >= 0, got {self.rescore}")


@dataclass(frozen=True)
class SearchOptions:
    """Query-time settings of the first stage: query expansion and database augmentation (global methods,
    Radenovic et al., TPAMI 2019: alpha-QE and alpha-DBA, weights sim^alpha)."""

    qe: int = option(1, "alpha-QE: average the query with this many vectors, itself included (1: off)")
    qe_alpha: float = option(3.0, "alpha of alpha-QE")
    dba: int = option(1, "alpha-DBA: each database vector averaged with this many, itself included (1: off)")
    dba_alpha: float = option(3.0, "alpha of alpha-DBA")
    query_max_side: int | None = option(None, "query images loaded with their longest side at most this many "
                                        "pixels (None: the index's max_side); smaller extracts faster")
    asmk_budget: float = option(1.0, "ASMK* indexes: 1 scores exactly; less is the opt-in approximate search that "
                                     "scans the query's shortest posting lists up to this fraction of its entries "
                                     "(faster, lower recall: benchmarks/RESULTS.md, approximate ASMK* search)")

    def __post_init__(self) -> None:
        if self.qe < 1 or self.dba < 1:
            raise ValueError("qe and dba count vectors, the query itself included: >= 1")
        if not 0 < self.asmk_budget <= 1:
            raise ValueError(f"asmk_budget must lie in (0, 1] (1: exact), got {self.asmk_budget}")
        if self.query_max_side is not None and self.query_max_side < 16:
            raise ValueError(f"query_max_side must be >= 16 pixels, got {self.query_max_side}")


@dataclass(frozen=True)
class RerankOptions:
    """Spatial verification of the shortlist (DELG, Cao et al., ECCV 2020, appendix: putative matches ->
    robust affine fit -> inlier count), ordered by (inliers, shortlist score).

    ``matcher=descriptors``: nearest-neighbour descriptor matching and an OpenCV estimator (``ratio``,
    ``mutual``, ``max_distance``, ``estimator``, ``max_iters``, ``confidence``, ``ransac_seed``).
    ``matcher=words`` (ASMK indexes): fast spatial matching (Philbin et al., CVPR 2007): same-word pairs
    filtered by residual codes (``word_assignments``, ``max_hamming``), single-correspondence similarity
    hypotheses (``hypotheses``) and least-squares affine local optimisation (``lo_iterations``), no descriptor
    read. Both count inliers within ``threshold_px``; ``verify_min_inliers`` makes the yes/no decision.
    The order can count spatially distinct inliers (``inlier_cell_px``) and add a share of the first-stage
    score (``shortlist_weight``): :mod:`glocal.rerank.ordering`.
    Hybrid (``matcher=words`` with ``descriptor_top`` > 0): after the words verifier, ``descriptor_top`` images
    (picked by ``descriptor_pick``) are verified again with descriptor matching and keep the larger inlier
    count: descriptor nearest neighbours are not limited to the query's few nearest words."""

    rerank_top: int = option(0, "shortlisted images verified (0: no re-ranking)")
    matcher: str = option("descriptors", "descriptors (nearest neighbours + OpenCV estimator) or words (shared "
                          "visual words + similarity hypotheses; ASMK indexes, else descriptors)", choices=MATCHERS)
    verify_min_inliers: int = option(0, "an image is a verified match (yes/no) from this many inliers on "
                                     "(0: no decision, every verified image says no)")
    order: str = option("inliers", "inliers: every verified image by (inliers, shortlist score) (DELG); verified: "
                        "images reaching verify_min_inliers first by inliers, the others in shortlist order",
                        choices=RERANK_ORDERS)
    word_assignments: int = option(1, "words: query words per feature used for pairs (more than the index's "
                                   "query_assignments: the extra words serve verification only)")
    max_hamming: int | None = option(None, "words: keep a same-word pair when its residual sign codes differ in "
                                     "at most this many bits (None: all pairs)")
    descriptor_top: int = option(0, "words: also verify this many shortlisted images with descriptor matching "
                                 "(ratio, mutual, estimator, ...) and keep the larger inlier count (0: words only)")
    descriptor_pick: str = option("shortlist", "words + descriptor_top: which images: shortlist (the best by "
                                  "first-stage score) or unverified (the best by first-stage score among those "
                                  "the words left below verify_min_inliers)", choices=DESCRIPTOR_PICKS)
    inlier_cell_px: float = option(0.0, "order verified images by spatially distinct inliers: each cell of this "
                                   "many original pixels counts once, in the query and in the image, the smaller "
                                   "count kept (0: every inlier counts); the yes/no decision stays on inliers")
    shortlist_weight: float = option(0.0, "order verified images by (distinct) inliers + this weight x shortlist "
                                     "score / the best shortlist score (0: the shortlist score only breaks ties)")
    hypotheses: int = option(32, "words: similarity hypotheses per image (its best same-word pairs)")
    lo_iterations: int = option(3, "words: least-squares affine refits of the best hypothesis (local optimisation)")
    lo_hypotheses: int = option(1, "words: best hypotheses per image refined by local optimisation (best kept)")
    max_distance: float | None = option(None, "keep a match only below this descriptor distance "
                                        "(L2; Hamming bits for binary codes)")
    ratio: float | None = option(None, "Lowe's ratio test: keep a match if d1 < ratio * d2")
    mutual: bool = option(False, "keep only mutual nearest neighbours")
    model: str = option("affine", "geometric model fitted to the matches", choices=VERIFIER_MODELS)
    estimator: str = option("usac_fast", "robust estimator (OpenCV)", choices=ESTIMATORS)
    threshold_px: float = option(20.0, "largest reprojection error of an inlier, in original pixels")
    max_iters: int = option(1000, "largest number of RANSAC trials")
    confidence: float = option(0.999, "early-stop confidence of the estimator")
    ransac_seed: int = option(0, "seed of the order in which matches reach the estimator")

    def __post_init__(self) -> None:
        if self.rerank_top < 0:
            raise ValueError(f"rerank_top must be >= 0, got {self.rerank_top}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        for name in ("verify_min_inliers", "lo_iterations", "descriptor_top", "inlier_cell_px", "shortlist_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("word_assignments", "hypotheses", "lo_hypotheses"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.order == "verified" and self.verify_min_inliers < 1:
            raise ValueError("order=verified needs verify_min_inliers >= 1")
        if self.descriptor_pick == "unverified" and self.descriptor_top > 0 and self.verify_min_inliers < 1:
            raise ValueError("descriptor_pick=unverified needs verify_min_inliers >= 1")
