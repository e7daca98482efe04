"""First-stage search backends of the engine: ASMK on local features, or a global-descriptor index.

Both speak the same small interface so the engine does not care which one a method uses:
``count`` (images added, removed ones included), ``len()`` (searchable images), ``add(features)``
(aggregate / store and commit), ``remove(positions)``, ``search(query, top)`` -> (database positions,
scores), ``stats()`` (sizes a user can read), ``settings`` (what to record for reproducibility), ``close()``.
Database positions are the order in which images were added, the order of the engine's feature file.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from glocal.index.asmk import assign_many
from glocal.index.codebook import Codebook
from glocal.index.global_files import MANIFEST
from glocal.index.global_index import GlobalIndex
from glocal.index.inverted_file import InvertedFile
from glocal.index.layout import IndexSettings
from glocal.index.quantizer import CoarseQuantizer, fast_quantizer
from glocal.index.stats import index_stats
from glocal.index.topk import exact_top_k
from glocal.records import ImageFeatures
from glocal.rerank.query_expansion import alpha_dba, alpha_qe, expand_with_index


class Shortlist(Protocol):
    @property
    def count(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, features: Sequence[ImageFeatures]) -> None: ...

    def remove(self, positions: Sequence[int]) -> None: ...

    def removed(self) -> npt.NDArray[np.bool_]: ...

    def stats(self) -> dict: ...

    def search(self, query: ImageFeatures, top: int, query_expansion: int | None = None,
               database_augmentation: int | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...

    @property
    def settings(self) -> dict: ...

    def close(self) -> None: ...


class AsmkShortlist:
    """ASMK / ASMK* / R-ASMK over local descriptors (HOW, FIRe, and the default ``sift``).

    Files: ``ivf/``, a persistent :class:`glocal.index.inverted_file.InvertedFile` (codebook, word-sorted
    memory-mapped segments, checksummed manifest swapped atomically). Image ids are database positions.
    """

    def __init__(self, index: InvertedFile, settings: dict) -> None:
        self.index = index
        self._settings = settings

    @classmethod
    def create(cls, root: Path, settings: dict, codebook: Codebook, held_out: npt.NDArray | None = None,
               seed: int = 0, quantizer: CoarseQuantizer | None = None) -> AsmkShortlist:
        """A new, empty index. Codebooks of 16k words or more get the fast two-level quantizer, calibrated
        to agree with exact assignment on 99 % of ``held_out`` descriptors, for the database's and the
        query's number of assignments (or ``quantizer``, e.g. the one stored with a reused codebook)."""
        if quantizer is None and codebook.size >= 16384:
            quantizer = fast_quantizer(codebook, held_out, seed=seed, k=settings["db_assignments"],
                                       query_k=settings["query_assignments"])
        index_settings = IndexSettings(
            binary=settings["binary"], aggregation=settings.get("aggregation", "asmk"), alpha=settings["alpha"],
            tau=settings["tau"], db_assignments=settings["db_assignments"],
            query_assignments=min(settings["query_assignments"], codebook.size),
        )
        return cls(InvertedFile.create(Path(root) / "ivf", codebook, index_settings, quantizer=quantizer), settings)

    @classmethod
    def open(cls, root: Path, settings: dict, writable: bool = False) -> AsmkShortlist:
        return cls(InvertedFile.open(Path(root) / "ivf", writable=writable, verify="lazy"), settings)

    def create_empty_like(self, root: Path) -> AsmkShortlist:
        """A new, empty index at ``root`` with this one's codebook, fast quantizer and settings (compaction)."""
        ivf = self.index
        return type(self)(InvertedFile.create(Path(root) / "ivf", ivf.codebook, ivf.settings, quantizer=ivf.quantizer),
                          self._settings)

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
        ivf.add([ivf.aggregate_database(f, nearest=n) for f, n in zip(features, nearest)])

    def remove(self, positions: Sequence[int]) -> None:
        self.index.remove(positions)

    def removed(self) -> npt.NDArray[np.bool_]:
        """(count,) True at the positions of removed images."""
        return self.index.removed

    def search(self, query: ImageFeatures, top: int, query_expansion: int | None = None,
               database_augmentation: int | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if query_expansion and query_expansion > 1:
            raise ValueError("query expansion (alpha-QE) applies to global descriptors, not to ASMK")
        if database_augmentation and database_augmentation > 1:
            raise ValueError("database-side augmentation (alpha-DBA) applies to global descriptors, not to ASMK")
        return self.index.search(self.index.aggregate_query(query.descriptors), top=top)

    def stats(self) -> dict:
        return index_stats(self.index).as_dict()

    @property
    def settings(self) -> dict:
        return {"kind": "asmk*" if self._settings["binary"] else "asmk", **self._settings,
                "codebook_size": self.codebook.size,
                "quantizer": "fast (two-level)" if self.index.quantizer is not None else "exact"}

    def close(self) -> None:
        self.index.close()


class GlobalShortlist:
    """Inner-product search over each image's global descriptor (DELG, DOLG, ViTGaL).

    Files: ``global/`` (a :class:`glocal.index.global_index.GlobalIndex` folder); ids are database positions.
    """

    def __init__(self, root: Path, settings: dict, index: GlobalIndex | None) -> None:
        self.root = Path(root)
        self._settings = settings
        self.index = index
        self._dba: dict = {}

    @classmethod
    def create(cls, root: Path, settings: dict) -> GlobalShortlist:
        return cls(root, settings, None)

    @classmethod
    def open(cls, root: Path, settings: dict) -> GlobalShortlist:
        folder = Path(root) / "global"
        return cls(root, settings, GlobalIndex.open(folder) if (folder / MANIFEST).exists() else None)

    @property
    def count(self) -> int:
        return 0 if self.index is None else self.index.rows

    @staticmethod
    def _vector(f: ImageFeatures) -> npt.NDArray[np.float32]:
        if f.global_descriptor is None or len(f.global_descriptor) == 0:
            raise ValueError(f"{f.name}: the method produced no global descriptor")
        return np.asarray(f.global_descriptor[0], np.float32)

    def add(self, features: Sequence[ImageFeatures]) -> None:
        if not features:
            return
        vectors = np.stack([self._vector(f) for f in features])
        ids = np.arange(self.count, self.count + len(features))
        if self.index is None:
            self.index = GlobalIndex.build(vectors, ids, kind=self._settings.get("kind", "exact"))
        else:
            self.index.add(vectors, ids)
        self.index.save(self.root / "global")

    def search(self, query: ImageFeatures, top: int, query_expansion: int | None = None,
               database_augmentation: int | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top images by inner product.

        With ``query_expansion`` = n > 1 the query is first replaced by its alpha-QE with the n - 1 best
        database vectors; with ``database_augmentation`` = k > 1 every database vector is replaced by its
        alpha-DBA with its k - 1 best neighbours (computed once per open index and kept in memory; QE then
        runs against the augmented vectors). alpha from the settings, default 3 for both.
        """
        if self.index is None or self.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = self._vector(query)[None]
        n = self._settings.get("qe", 1) if query_expansion is None else query_expansion
        k = self._settings.get("dba", 1) if database_augmentation is None else database_augmentation
        if k > 1:
            ids, vectors = self._augmented(k)
            if n > 1:
                q = alpha_qe(q, vectors, n=n, alpha=self._settings.get("qe_alpha", 3.0))
            rows, scores = exact_top_k(q, vectors, min(top, len(ids)))
            keep = rows[0] >= 0
            return ids[rows[0][keep]], scores[0][keep]
        if n > 1:
            q = expand_with_index(self.index, q, n=n, alpha=self._settings.get("qe_alpha", 3.0))
        ids, scores = self.index.search(q, top=min(top, self.count))
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def _augmented(self, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(live ids, their alpha-DBA vectors) for ``k``, cached until the index changes."""
        assert self.index is not None
        if self.index.kind != "exact":
            raise ValueError("database-side augmentation (alpha-DBA) needs the stored vectors of an exact "
                             f"global index; this one is {self.index.kind!r}")
        key = (k, float(self._settings.get("dba_alpha", 3.0)), self.index.rows, len(self.index))
        if self._dba.get("key") != key:
            ids = self.index.ids
            vectors = alpha_dba(self.index.vectors(ids), k=k, alpha=key[1])
            self._dba = {"key": key, "ids": ids, "vectors": vectors}
        return self._dba["ids"], self._dba["vectors"]

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    def removed(self) -> npt.NDArray[np.bool_]:
        """(count,) True at the positions of removed images."""
        dead = np.ones(self.count, bool)
        if self.index is not None:
            dead[self.index.ids] = False
        return dead

    def remove(self, positions: Sequence[int]) -> None:
        if self.index is not None:
            self.index.remove(positions)
            self.index.save(self.root / "global")

    def stats(self) -> dict:
        return {"kind": self.settings["kind"], "images": len(self)} | (
            self.index.stats().as_dict() if self.index is not None else {})

    @property
    def settings(self) -> dict:
        return {"kind": "global-" + self._settings.get("kind", "exact")}

    def close(self) -> None:
        pass
