"""First-stage search backends of the engine: ASMK on local features, or a global-descriptor index.

Both speak the same small interface so the engine does not care which one a method uses:
``count`` (images indexed), ``add(features)`` (aggregate / store and commit), ``search(query, top)``
-> (database positions, scores), ``settings`` (what to record for reproducibility) and ``close()``.
Database positions are the order in which images were added, the order of the engine's feature file.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from glocal.index.asmk import AggregatedImage, AsmkIndex, aggregate
from glocal.index.codebook import Codebook
from glocal.index.global_files import MANIFEST
from glocal.index.global_index import GlobalIndex
from glocal.io.feature_file import RecordFile
from glocal.records import ImageFeatures


class Shortlist(Protocol):
    @property
    def count(self) -> int: ...

    def add(self, features: Sequence[ImageFeatures]) -> None: ...

    def search(self, query: ImageFeatures, top: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...

    @property
    def settings(self) -> dict: ...

    def close(self) -> None: ...


class AsmkShortlist:
    """ASMK / ASMK* over local descriptors (HOW, FIRe, and the default ``sift``).

    Files: ``codebook.npy`` (float32 centroids, loaded without pickle) and ``asmk.glf`` (one record of
    aggregated words + codes per image, append-only, checksummed).
    """

    def __init__(self, root: Path, settings: dict, codebook: Codebook) -> None:
        self.root = Path(root)
        self._settings = settings
        self.codebook = codebook
        self._file = RecordFile(self.root / "asmk.glf", writable=True)
        self.index = AsmkIndex(codebook, binary=settings["binary"], alpha=settings["alpha"], tau=settings["tau"])
        self.index.add([AggregatedImage(a["words"], a["codes"]) for _, _, a in self._file])

    @classmethod
    def create(cls, root: Path, settings: dict, codebook: Codebook) -> AsmkShortlist:
        np.save(Path(root) / "codebook.npy", codebook.centroids, allow_pickle=False)
        return cls(root, settings, codebook)

    @classmethod
    def open(cls, root: Path, settings: dict, codebook_info: dict) -> AsmkShortlist:
        centroids = np.load(Path(root) / "codebook.npy", allow_pickle=False)
        return cls(root, settings, Codebook(centroids, codebook_info))

    @property
    def count(self) -> int:
        return len(self._file)

    def add(self, features: Sequence[ImageFeatures]) -> None:
        aggs = [aggregate(f.descriptors, self.codebook, self._settings["db_assignments"], self._settings["binary"])
                for f in features]
        self._file.append_many([(f.name, {"words": a.words, "codes": a.codes}, None) for f, a in zip(features, aggs)])
        self.index.add(aggs)

    def search(self, query: ImageFeatures, top: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        k = min(self._settings["query_assignments"], self.codebook.size)  # tiny codebooks have fewer words
        q = aggregate(query.descriptors, self.codebook, k, self._settings["binary"])
        return self.index.search(q, top=top)

    @property
    def words_per_image(self) -> npt.NDArray[np.float32]:
        return self.index.words_per_image

    @property
    def settings(self) -> dict:
        return {"kind": "asmk*" if self._settings["binary"] else "asmk", **self._settings,
                "codebook_size": self.codebook.size}

    def close(self) -> None:
        self._file.close()


class GlobalShortlist:
    """Inner-product search over each image's global descriptor (DELG, DOLG, ViTGaL).

    Files: ``global/`` (a :class:`glocal.index.global_index.GlobalIndex` folder); ids are database positions.
    """

    def __init__(self, root: Path, settings: dict, index: GlobalIndex | None) -> None:
        self.root = Path(root)
        self._settings = settings
        self.index = index

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

    def search(self, query: ImageFeatures, top: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if self.index is None or self.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ids, scores = self.index.search(self._vector(query)[None], top=min(top, self.count))
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    @property
    def words_per_image(self) -> npt.NDArray[np.float32]:
        return np.zeros(self.count, np.float32)

    @property
    def settings(self) -> dict:
        return {"kind": "global-" + self._settings.get("kind", "exact")}

    def close(self) -> None:
        pass
