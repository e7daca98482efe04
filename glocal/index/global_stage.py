"""First stage over one global descriptor per image (DELG, DOLG, ViTGaL): exact inner products or IVF-PQ,
with alpha-QE / alpha-DBA (Radenovic et al., TPAMI 2019) at query time.

Files: ``global/`` (a :class:`glocal.index.global_index.GlobalIndex` folder); ids are database positions.
An IVF-PQ stage is trained once, on the global descriptors of the images present when it is first filled
(:meth:`GlobalStage.prepare`), then grows by adding codes. ``index=auto`` chooses exact or IVF-PQ at that
moment from the number of images (:func:`choose_kind`); the choice then stays (the folder's manifest holds
the kind; the collection records it, see :meth:`glocal.index.collection.Collection.index_pending`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glocal.errors import BadInputError, BadOptionError
from glocal.index.global_files import MANIFEST
from glocal.index.global_index import GlobalIndex
from glocal.index.global_params import IvfPqParams
from glocal.index.query_expansion import alpha_dba, alpha_qe, expand_with_index
from glocal.index.topk import exact_top_k
from glocal.methods import stages
from glocal.methods.stages import GlobalIndexOptions, SearchOptions
from glocal.records import ImageFeatures


def global_vector(f: ImageFeatures) -> npt.NDArray[np.float32]:
    """The image's global descriptor; :class:`BadInputError` when the method produced none."""
    if f.global_descriptor is None or len(f.global_descriptor) == 0:
        raise BadInputError(f"{f.name}: the method produced no global descriptor")
    return np.asarray(f.global_descriptor[0], np.float32)


def check_ivfpq_size(images: int, expected_size: int | None = None) -> None:
    """Refuse an IVF-PQ index over fewer images than its product quantizer needs to train (256 codes per
    sub-quantizer, and ``nlist`` cells; neither depends on the vector's dimension).

    :raises BadOptionError: one line saying to use the exact index.
    """
    params = IvfPqParams.for_size(max(expected_size or images, 1), 4)
    needed = max(params.nlist, 2 ** params.nbits)
    if images < needed:
        raise BadOptionError(f"index=ivfpq needs at least {needed} images to train its product quantizer; this "
                             f"collection has {images}: use index=exact (or auto, the default, which picks "
                             "exact at this size), exact and fast here")


def choose_kind(requested: str, images: int, dim: int) -> str:
    """The global index built for ``images`` vectors of dimension ``dim`` when ``requested`` (``index=``) is
    asked: ``auto`` gives ``ivfpq`` once their float32 bytes reach :data:`glocal.methods.stages.AUTO_IVFPQ_BYTES`
    (and never below the images IVF-PQ needs to train), else ``exact``; ``exact`` and ``ivfpq`` are taken as
    they are."""
    if requested != "auto":
        return requested
    params = IvfPqParams.for_size(max(images, 1), 4)
    trainable = max(params.nlist, 2 ** params.nbits)
    return "ivfpq" if images >= trainable and 4 * images * dim >= stages.AUTO_IVFPQ_BYTES else "exact"


class GlobalStage:
    """The global-descriptor first stage of one index (see module docstring)."""

    def __init__(self, root: Path, options: GlobalIndexOptions, index: GlobalIndex | None) -> None:
        self.root = Path(root)
        self.options = options
        self.index = index
        self._dba: dict = {}

    @classmethod
    def create(cls, root: Path, options: GlobalIndexOptions) -> GlobalStage:
        return cls(root, options, None)

    @classmethod
    def open(cls, root: Path, options: GlobalIndexOptions, writable: bool = False) -> GlobalStage:
        folder = Path(root) / "global"
        return cls(root, options, GlobalIndex.open(folder) if (folder / MANIFEST).exists() else None)

    @property
    def count(self) -> int:
        return 0 if self.index is None else self.index.rows

    def __len__(self) -> int:
        return 0 if self.index is None else len(self.index)

    def prepare(self, sample: npt.NDArray[np.float32], expected_size: int) -> None:
        """Train an empty IVF-PQ index on ``sample`` (all or part of the collection's vectors); a no-op for an
        exact index or one that exists already."""
        if self.index is not None or choose_kind(self.options.index, expected_size, sample.shape[1]) != "ivfpq":
            return
        params = IvfPqParams.for_size(max(expected_size, 1), sample.shape[1])
        check_ivfpq_size(len(sample), max(expected_size, 1))
        if self.options.ivfpq_nprobe is not None:
            params = dataclasses.replace(params, nprobe=self.options.ivfpq_nprobe)
        index = GlobalIndex(sample.shape[1], "ivfpq", params=params, rescore=self.options.rescore,
                            storage=self.options.rescore_storage)
        index.train(sample, expected_size=expected_size)
        self.index = index

    def add(self, features: Sequence[ImageFeatures]) -> None:
        if not features:
            return
        vectors = np.stack([global_vector(f) for f in features])
        ids = np.arange(self.count, self.count + len(features))
        if self.index is None:
            if choose_kind(self.options.index, len(vectors), vectors.shape[1]) == "ivfpq":
                self.prepare(vectors, len(vectors))
                assert self.index is not None
                self.index.add(vectors, ids)
            else:
                self.index = GlobalIndex.build(vectors, ids, kind="exact")
        else:
            self.index.add(vectors, ids)
        self.index.save(self.root / "global")

    def search(self, query: ImageFeatures, top: int, options: SearchOptions
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top images by inner product.

        With ``options.qe`` = n > 1 the query is first replaced by its alpha-QE with the n - 1 best database
        vectors; with ``options.dba`` = k > 1 every database vector is replaced by its alpha-DBA with its
        k - 1 best neighbours (computed once per open index and kept in memory; QE then runs against the
        augmented vectors).
        """
        if self.index is None or self.count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = global_vector(query)[None]
        if options.dba > 1:
            ids, vectors = self._augmented(options.dba, options.dba_alpha)
            if options.qe > 1:
                q = alpha_qe(q, vectors, n=options.qe, alpha=options.qe_alpha)
            rows, scores = exact_top_k(q, vectors, min(top, len(ids)))
            keep = rows[0] >= 0
            return ids[rows[0][keep]], scores[0][keep]
        if options.qe > 1:
            q = expand_with_index(self.index, q, n=options.qe, alpha=options.qe_alpha)
        ids, scores = self.index.search(q, top=min(top, self.count))
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def _augmented(self, k: int, alpha: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(live ids, their alpha-DBA vectors) for ``k``, cached until the index changes."""
        assert self.index is not None
        if self.index.kind != "exact":
            raise BadOptionError("database-side augmentation (dba) needs the stored vectors of an exact "
                                 f"global index; this one is {self.index.kind!r}")
        key = (k, float(alpha), self.index.rows, len(self.index))
        if self._dba.get("key") != key:
            ids = self.index.ids
            self._dba = {"key": key, "ids": ids, "vectors": alpha_dba(self.index.vectors(ids), k=k, alpha=alpha)}
        return self._dba["ids"], self._dba["vectors"]

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
        """Settings, images and :class:`GlobalIndexStats`; for IVF-PQ also its training record (coarse and PQ
        samples, points per cell, iterations, seconds)."""
        out = self.settings | {"images": len(self)}
        if self.index is not None:
            out |= self.index.stats().as_dict() | ({"training": self.index.training} if self.index.training else {})
        return out

    @property
    def settings(self) -> dict:
        """The first stage's kind: the index built (``global-exact`` / ``global-ivfpq``), and what was asked for
        when that was ``auto``; before anything is indexed, what was asked for."""
        built = self.index.kind if self.index is not None else self.options.index
        return {"kind": "global-" + built} | ({"requested": "auto"} if self.options.index == "auto" else {})

    def close(self) -> None:
        pass
