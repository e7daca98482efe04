"""The query half of :class:`glocal.index.inverted_file.InvertedFile`: ASMK(*) scoring of the stored items.

Similarity of a query X to a stored item Y (D2R eq. 1, ASMK* of Tolias et al.)::

    K(X, Y) = gamma(X) gamma(Y) sum_{c in C(X) & C(Y)} w_c sigma_alpha(<b_X(c), b_Y(c)>)

with ``w_c`` the IDF weight log(N / n_c)^2 (or 1), ``sigma_alpha`` the thresholded power selectivity and
``gamma`` the per-item normalisation 1 / sqrt(sum of its words' weights). Two paths give the same scores: the
compiled scan (:mod:`glocal.index.scan`, 64-bit popcount, fused top-k) and the numpy reference
(:mod:`glocal.index.postings`). The mixin reads the state that :class:`InvertedFile` keeps (segments, codebook,
settings, per-item tables); it never writes files.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from glocal.errors import BadOptionError, MissingDependencyError
from glocal.index import scan
from glocal.index.asmk import AggregatedImage, aggregate
from glocal.index.postings import idf_weights, item_scores, top_images
from glocal.index.regional import aggregate_rasmk, aggregate_regions, feature_boxes, pool
from glocal.records import ImageFeatures


class PostingSearch:
    """Scoring and aggregation methods of an opened inverted file (mixed into ``InvertedFile``)."""

    # -- scoring -----------------------------------------------------------------------------------
    def _idf(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(word weight log(N / n_c)^2, per-item sum of its words' weights), computed once per state."""
        if self._idf_cache is None:
            self._idf_cache = idf_weights(self._segments, self.codebook.size, self.n_items)
        return self._idf_cache

    def _check_query(self, query: AggregatedImage) -> None:
        width = self.codebook.dim // 8 if self.settings.binary else self.codebook.dim
        if query.binary != self.settings.binary or (len(query) and query.codes.shape[1] != width):
            raise ValueError(f"{self.root}: query codes {query.codes.shape} {query.codes.dtype} do not match the "
                             f"index (binary={self.settings.binary}, {width} per word)")

    def _compiled(self, kernel: str | None) -> bool:
        """Whether ``kernel`` (default: this index's) scores with :mod:`glocal.index.scan`."""
        kernel = kernel or self.kernel  # "auto": compiled if numba is installed and codes are 64-bit multiples
        if kernel == "numpy":
            return False
        ok = self.settings.binary and scan.AVAILABLE and (self.codebook.dim // 8) % 8 == 0
        if kernel == "compiled" and not ok:
            raise MissingDependencyError("the compiled ASMK* kernel needs numba and binary codes of a multiple of "
                                         "64 bits")
        return ok

    def _prepare(self, query: AggregatedImage) -> tuple[np.ndarray | None, np.ndarray]:
        """(IDF weights or None, per-item normalisation), after checking the query and lazy verification."""
        self._check_query(query)
        if self._verify == "lazy":
            for s in self._segments:
                if not s.verified:
                    s.verify()
        return self._idf() if self.settings.idf else (None, self._item_size)

    def _budget(self, budget: float | None, compiled: bool) -> float:
        budget = float(self.budget if budget is None else budget)
        if not 0 < budget <= 1:
            raise BadOptionError(f"{self.root}: budget must lie in (0, 1] (1: exact scoring), got {budget}")
        if budget < 1 and not compiled:
            raise BadOptionError(f"{self.root}: approximate search (budget {budget} < 1) needs the compiled kernel "
                                 "(numba, binary codes)")
        return budget

    def _accumulate(self, query: AggregatedImage, budget: float = 1.0) -> tuple[np.ndarray, np.ndarray, float]:
        """Compiled scan: (unnormalised sums per item, gamma per item, query norm) (see :func:`item_scores`);
        ``budget`` < 1: only the words :func:`scan.budget_words` keeps are scanned (approximate)."""
        weight, item_norm = self._prepare(query)
        qwords = np.asarray(query.words, np.int64)
        keep = scan.budget_words(self._segments, qwords, budget) if budget < 1 else slice(None)
        acc = scan.accumulate(self._segments, qwords[keep], query.codes[keep], self.n_items, self._table, weight,
                              self.threads)
        if self._gamma_cache is None:
            self._gamma_cache = np.divide(1.0, np.sqrt(item_norm), out=np.zeros_like(item_norm), where=item_norm > 0)
        q_norm = float(weight[qwords].sum()) if weight is not None else float(len(query))
        return acc, self._gamma_cache, q_norm

    def item_scores(self, query: AggregatedImage, kernel: str | None = None, budget: float | None = None
                    ) -> npt.NDArray[np.float64]:
        """K(X, Y) for every stored item Y (image or region), normalisation included (D2R eq. 1); ``budget``
        (default: the index's, 1 = exact) < 1 scans part of the query's lists (:func:`scan.budget_words`)."""
        budget = self._budget(budget, self._compiled(kernel))
        if len(query) == 0 or self.n_items == 0:
            self._check_query(query)
            return np.zeros(self.n_items, np.float64)
        if self._compiled(kernel):
            acc, gamma, q_norm = self._accumulate(query, budget)
            return acc * gamma / np.sqrt(q_norm) if q_norm > 0 else acc * 0.0
        weight, item_norm = self._prepare(query)
        return item_scores(self._segments, query, self.n_items, self.codebook.dim, self.settings, self._table,
                           weight, item_norm, self.threads)

    def scores(self, query: AggregatedImage, pooling: str | None = None, kernel: str | None = None,
               budget: float | None = None) -> npt.NDArray[np.float32]:
        """Similarity of the query to every image id (removed images: -inf); regions pooled by ``pooling``."""
        s = self.item_scores(query, kernel, budget)
        if self.n_items != self.n_images:
            s = pool(s, self._first_item, pooling or self.settings.pooling)
        out = s.astype(np.float32)
        out[self._removed] = -np.inf
        return out

    def search(self, query: AggregatedImage, top: int = 100, pooling: str | None = None, kernel: str | None = None,
               budget: float | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(image ids, scores) of the ``top`` best images, best first, ties by id (compiled, one item per image:
        one fused pass, :func:`glocal.index.scan.finish_top`; else full scores and ``argpartition``).
        ``budget`` < 1: approximate, see :meth:`item_scores`."""
        compiled = self._compiled(kernel)
        budget = self._budget(budget, compiled)
        if len(query) and self.n_items and self.n_items == self.n_images and compiled:
            acc, gamma, q_norm = self._accumulate(query, budget)
            _, ids, vals = scan.finish_top(acc, gamma, q_norm, self._removed, min(int(top), len(self)))
            return ids, vals
        return top_images(self.scores(query, pooling, kernel, budget), top, len(self))

    # -- aggregation with this index's codebook and settings ---------------------------------------
    def aggregate_query(self, descriptors: npt.NDArray, exact: bool = False) -> AggregatedImage:
        """ASMK(*) of query descriptors with ``query_assignments`` words each (fast quantizer unless ``exact``)."""
        return aggregate(descriptors, self.codebook, self.settings.query_assignments, self.settings.binary,
                         None if exact else self.quantizer)

    def aggregate_database(self, features: ImageFeatures, exact: bool = False, nearest: npt.NDArray | None = None
                           ) -> AggregatedImage | list[AggregatedImage]:
        """Database representation of one image as this index's ``aggregation`` builds it (``nearest``: its
        descriptors' ``db_assignments`` words, if assigned already, e.g. by :func:`assign_many`)."""
        s, q = self.settings, (None if exact else self.quantizer)
        if s.aggregation == "asmk":
            return aggregate(features.descriptors, self.codebook, s.db_assignments, s.binary, q, nearest=nearest)
        fn = aggregate_rasmk if s.aggregation == "r-asmk" else aggregate_regions
        return fn(features.descriptors, features.keypoints, feature_boxes(features), self.codebook,
                  s.db_assignments, s.binary, q, nearest=nearest)
