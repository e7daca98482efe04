"""First stage ASMK / ASMK* / R-ASMK over local descriptors (sift, HOW, FIRe, Detect-to-Retrieve).

Files: ``ivf/``, a persistent :class:`glocal.index.inverted_file.InvertedFile` (codebook, word-sorted
memory-mapped segments, checksummed manifest swapped atomically). Image ids are database positions.

A new stage needs a codebook: trained by k-means on a descriptor sample (:func:`descriptor_sample`,
:func:`train_asmk_stage`) or taken with its fast quantizer from another index of the same method
(:func:`codebook_donor`: train once, build many, e.g. ROxf and ROxf + R1M on one codebook).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glocal.errors import BadOptionError, DamagedIndexError
from glocal.index.asmk import aggregate, assign_many
from glocal.index.codebook import Codebook
from glocal.index.inverted_file import InvertedFile
from glocal.index.kmeans import train_codebook
from glocal.index.layout import IndexSettings
from glocal.index.quantizer import CoarseQuantizer, fast_quantizer
from glocal.index.stats import index_stats
from glocal.index.word_store import WordStore, residual_signs
from glocal.methods.stages import AsmkIndexOptions, SearchOptions
from glocal.progress import Progress, no_progress
from glocal.records import ImageFeatures

#: Lloyd iterations of codebook training
KMEANS_ITERATIONS = 10
#: held-out descriptors on which the fast quantizer is calibrated
CALIBRATION_DESCRIPTORS = 5000
#: codebooks from this size on get the fast two-level quantizer
FAST_QUANTIZER_FROM = 16384

Donor = tuple[Codebook, CoarseQuantizer | None, dict]


class AsmkStage:
    """The ASMK first stage of one index (see module docstring)."""

    def __init__(self, index: InvertedFile, options: AsmkIndexOptions, words: WordStore | None = None) -> None:
        self.index = index
        self.options = options
        #: per-feature words and geometry for fast spatial verification (None: an index older than it)
        self.words = words

    @classmethod
    def create(cls, root: Path, options: AsmkIndexOptions, codebook: Codebook, held_out: npt.NDArray | None = None,
               quantizer: CoarseQuantizer | None = None) -> AsmkStage:
        """A new, empty stage at ``root/ivf``. Codebooks of 16k words or more get the fast two-level
        quantizer, calibrated to agree with exact assignment on 99 % of ``held_out`` descriptors for the
        database's and the query's number of assignments (or ``quantizer``, e.g. a reused codebook's)."""
        if quantizer is None and codebook.size >= FAST_QUANTIZER_FROM:
            quantizer = fast_quantizer(codebook, held_out, seed=options.codebook_seed, k=options.db_assignments,
                                       query_k=options.query_assignments)
        settings = IndexSettings(
            binary=options.binary, aggregation=options.resolved_aggregation, alpha=options.alpha, tau=options.tau,
            db_assignments=options.db_assignments, query_assignments=min(options.query_assignments, codebook.size),
        )
        ivf = InvertedFile.create(Path(root) / "ivf", codebook, settings, quantizer=quantizer)
        return cls(ivf, options, WordStore.open(Path(root), codebook.size, create=True))

    @classmethod
    def open(cls, root: Path, options: AsmkIndexOptions, writable: bool = False) -> AsmkStage:
        ivf = InvertedFile.open(Path(root) / "ivf", writable=writable, verify="lazy")
        try:
            return cls(ivf, options, WordStore.open(Path(root), ivf.codebook.size, writable=writable))
        except BaseException:
            ivf.close()
            raise

    def create_empty_like(self, root: Path) -> AsmkStage:
        """A new, empty stage at ``root`` with this one's codebook, fast quantizer and settings (compaction)."""
        ivf = self.index
        new = InvertedFile.create(Path(root) / "ivf", ivf.codebook, ivf.settings, quantizer=ivf.quantizer)
        return type(self)(new, self.options, WordStore.open(Path(root), ivf.codebook.size, create=True))

    @property
    def codebook(self) -> Codebook:
        return self.index.codebook

    @property
    def count(self) -> int:
        """Images added so far, removed ones included (ids are positions)."""
        return self.index.n_images

    def __len__(self) -> int:
        return len(self.index)

    def add(self, features: Sequence[ImageFeatures]) -> None:
        """Quantise the batch's descriptors together (:func:`assign_many`: larger products, faster), then
        aggregate and add each image."""
        ivf = self.index
        nearest = assign_many(ivf.quantizer or ivf.codebook, [f.descriptors for f in features],
                              k=ivf.settings.db_assignments)
        if self.words is not None:  # first: an image indexed again after a crash gets a record that shadows
            self.words.append(ivf.n_images, features, nearest, ivf.codebook.centroids)
        ivf.add([ivf.aggregate_database(f, nearest=n) for f, n in zip(features, nearest)])

    def remove(self, positions: Sequence[int]) -> None:
        self.index.remove(positions)

    def removed(self) -> npt.NDArray[np.bool_]:
        """(count,) True at the positions of removed images."""
        return self.index.removed

    def search(self, query: ImageFeatures, top: int, options: SearchOptions, nearest: npt.NDArray | None = None
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(positions, scores) of the ``top`` best images; ``nearest``: the query's words from
        :meth:`query_words` (computed here when None)."""
        if options.qe > 1 or options.dba > 1:
            raise BadOptionError("query expansion (qe) and database augmentation (dba) apply to global "
                                 "descriptors, not to an ASMK index")
        ivf = self.index
        if nearest is None:
            nearest = self.query_words(query)
        agg = aggregate(query.descriptors, ivf.codebook, ivf.settings.query_assignments, ivf.settings.binary,
                        nearest=nearest)
        return ivf.search(agg, top=top, budget=options.asmk_budget)

    @property
    def query_assignments(self) -> int:
        """Visual words per query descriptor in the first stage."""
        return int(self.index.settings.query_assignments)

    def query_words(self, query: ImageFeatures, k: int | None = None) -> npt.NDArray[np.int64]:
        """(N, k) nearest words of the query's descriptors, nearest first (``k``: default query_assignments;
        more words serve verification, the first stage uses the first query_assignments)."""
        ivf = self.index
        x = np.asarray(query.descriptors, np.float32)
        k = min(k or ivf.settings.query_assignments, ivf.codebook.size)
        if len(x) == 0:
            return np.zeros((0, k), np.int64)
        return (ivf.quantizer or ivf.codebook).assign(x, k=k)

    def query_signs(self, query: ImageFeatures, nearest: npt.NDArray) -> npt.NDArray[np.uint8]:
        """(N, k, d / 8) residual sign bits of the query's descriptors to each of its ``nearest`` words."""
        return residual_signs(query.descriptors, nearest, self.index.codebook.centroids)

    def word_features(self, position: int) -> dict[str, npt.NDArray] | None:
        """The stored words and geometry of the image at ``position`` (None without a word store)."""
        if self.words is None:
            return None
        try:
            return self.words.read(position)
        except KeyError:
            raise DamagedIndexError(f"{self.words.records.path}: no record for image {position}; 'glocal index "
                                    "verify' checks the index, a rebuild restores the file") from None

    def stats(self) -> dict:
        return index_stats(self.index).as_dict()

    @property
    def settings(self) -> dict:
        return {"kind": "asmk*" if self.options.binary else "asmk", "codebook_size": self.codebook.size,
                "quantizer": "fast (two-level)" if self.index.quantizer is not None else "exact"}

    def close(self) -> None:
        self.index.close()
        if self.words is not None:
            self.words.close()


def descriptor_sample(features: Iterable[ImageFeatures], per_image: int, seed: int,
                      source: str = "features") -> npt.NDArray[np.float32]:
    """At most ``per_image`` local descriptors of every image (seeded random choice), concatenated."""
    rng = np.random.default_rng(seed)
    parts = []
    for f in features:
        d = f.descriptors
        if len(d) > per_image:
            d = d[np.sort(rng.choice(len(d), per_image, replace=False))]
        parts.append(np.asarray(d, np.float32))
    if not parts or sum(len(p) for p in parts) == 0:
        raise BadOptionError(f"{source}: no local features to train a codebook on (all images failed?)")
    return np.concatenate(parts)


def train_asmk_stage(root: Path, options: AsmkIndexOptions, sample: npt.NDArray,
                     progress: Progress = no_progress) -> tuple[AsmkStage, dict]:
    """A new stage at ``root`` with a codebook trained on ``sample`` (k-means, ``options.codebook_seed``) and a
    quantizer calibrated on a held-out part of it; returns the stage and the codebook's record."""
    advance = progress("training codebook (k-means iterations)", KMEANS_ITERATIONS)
    codebook = train_codebook(sample, options.codebook_size, iterations=KMEANS_ITERATIONS, seed=options.codebook_seed,
                              on_iteration=lambda: advance(1))
    held_out = np.random.default_rng(options.codebook_seed + 1).permutation(sample)[:CALIBRATION_DESCRIPTORS]
    info = dict(codebook.info) | {"codebook_size_requested": int(options.codebook_size),
                                  "codebook_size": codebook.size}
    return AsmkStage.create(root, options, codebook, held_out=held_out), info


def codebook_note(record: dict) -> str | None:
    """One line when the codebook has fewer words than asked for (the training sample was too small: k-means
    needs 39 descriptors per word), else None."""
    asked, got = record.get("requested_size"), record.get("size")
    if asked is None or got is None or got >= asked:
        return None
    return (f"codebook: requested {asked:,} words, trained {got:,} because only {record.get('sample', 0):,} "
            f"training descriptors were available (39 per word); give more images (--codebook-images) or a "
            f"smaller --codebook-size")


def codebook_donor(index: Path, donor_method: str, donor_is_asmk: bool, donor_codebook: dict, method: str) -> Donor:
    """(codebook, fast quantizer or None, provenance record) of the ASMK index at ``index`` for a new index of
    ``method``; :class:`BadOptionError` when it cannot serve (another method, not ASMK), :class:`DamagedIndexError`
    when its codebook file is damaged. The codebook file is CRC-checked; the segments are not read."""
    if not donor_is_asmk or donor_method != method:
        raise BadOptionError(f"{index}: its codebook is for method {donor_method!r} "
                             f"({'ASMK' if donor_is_asmk else 'global'} index), not for an ASMK index of {method!r}")
    try:
        with InvertedFile.open(Path(index) / "ivf", verify="lazy") as ivf:
            provenance = dict(donor_codebook) | {"trained_on": f"reused from {Path(index).resolve()}"}
            return ivf.codebook, ivf.quantizer, provenance
    except DamagedIndexError as exc:
        raise DamagedIndexError(f"{index}: cannot reuse its codebook ({exc})") from None
    except OSError as exc:
        raise DamagedIndexError(f"{index}: cannot reuse its codebook ({exc})") from None
