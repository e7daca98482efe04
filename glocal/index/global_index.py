"""Persistent nearest-neighbour index of global descriptors (inner product), exact or IVF-PQ.

- ``kind="exact"`` (default): the vectors, stored float32 or float16, scored by a float32 numpy matrix
  product in row chunks (float16 rows converted a chunk at a time) with a running top-k by
  ``np.argpartition``; committed vectors are memory-mapped. Not faiss: on the shared 2-core machine a
  flat faiss search (``IndexFlatIP``, 100,000 unit vectors, 70 queries, top 100) took 184-224 ms at
  128-D and 0.9-1.5 s at 512-D against 122-149 ms and 167-227 ms for ``Q @ X.T`` + ``argpartition``
  (one 512-D query: 57 vs 19 ms).
- ``kind="ivfpq"``: faiss ``IndexIVFPQ`` (``nlist`` k-means cells, vectors coded by a product quantizer
  of ``m`` sub-vectors of ``nbits`` bits, ``nprobe`` cells scanned per query), trained on a sample; for
  collections whose float vectors do not fit in memory. The faiss calls: :mod:`glocal.index.ivfpq`; the
  training: :mod:`glocal.index.ivfpq_train`. With ``rescore=K`` the full vectors are kept too (``storage``,
  memory-mapped segments like the exact kind's) and IVF-PQ's top ``K`` is re-ranked by the exact inner
  product (:mod:`glocal.index.global_rescore`).

Rows carry the caller's int64 ids; removal writes *tombstones* (rows stay stored, never returned, until
:meth:`GlobalIndex.compact`).

Folder layout, commit protocol and file helpers: :mod:`glocal.index.global_files`; parameter and size
records: :mod:`glocal.index.global_params`; top-k scoring: :mod:`glocal.index.topk`.
"""
from __future__ import annotations

import os  # noqa: F401  (tests reach os.replace as ``global_index.os.replace`` to simulate a crash)
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from glocal.index import global_rescore, ivfpq
from glocal.index.global_files import (
    FORMAT,
    MANIFEST,
    VERSION,
    GlobalIndexError,
    commit_lock,
    read_manifest,
    remove_unnamed,
    verify_files,
    write_file,
    write_manifest,
)
from glocal.index.global_params import GlobalIndexStats, IvfPqParams
from glocal.index.topk import CHUNK_BYTES, QUERY_BATCH, TopK, exact_top_k, limit_threads, score_chunks

__all__ = ["GlobalIndex", "GlobalIndexError", "GlobalIndexStats", "IvfPqParams", "exact_top_k"]

Kind = Literal["exact", "ivfpq"]
_CHUNK_BYTES = CHUNK_BYTES  # float32 bytes of rows scored at once by search(); tests shrink it


@dataclass
class _Segment:
    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray | None  # None for "ivfpq" without re-scoring
    committed: bool = False


class GlobalIndex:
    """Inner-product index of global descriptors with int64 ids, tombstones and a folder to commit to.

    :param dim: vector dimension D.
    :param kind: ``"exact"`` (numpy matrix product) or ``"ivfpq"`` (faiss, needs :meth:`train`).
    :param storage: ``"float32"`` or ``"float16"`` stored vectors (``"exact"``, or ``"ivfpq"`` with
        ``rescore``; scores are float32).
    :param params: IVF-PQ parameters (``"ivfpq"``); default :meth:`IvfPqParams.for_size` at training.
    :param rescore: ``"ivfpq"``: keep the full vectors and re-rank the top ``rescore`` IVF-PQ candidates
        (at least the number asked for) by the exact inner product; 0: codes only.
    :param threads: OpenBLAS and faiss threads for training, adding and searching (None: the libraries'
        defaults). On the loaded 2-core machine one thread was faster: exact search 84 vs 122 ms (70
        queries, 100,000 x 128-D); IVF-PQ training on 4,000 x 32-D 1.9 s vs 16 s (OpenMP threads spin).
    """

    def __init__(self, dim: int, kind: Kind = "exact", *, storage: str = "float32",
                 params: IvfPqParams | None = None, threads: int | None = None, rescore: int = 0) -> None:
        if kind not in ("exact", "ivfpq"):
            raise ValueError(f"kind must be 'exact' or 'ivfpq', got {kind!r}")
        if storage not in ("float32", "float16"):
            raise ValueError(f"storage must be 'float32' or 'float16', got {storage!r}")
        if dim <= 0 or rescore < 0:
            raise ValueError(f"dim must be positive and rescore >= 0, got {dim} and {rescore}")
        self.dim, self.kind, self.storage, self.params, self.threads = int(dim), kind, storage, params, threads
        self.rescore = int(rescore) if kind == "ivfpq" else 0
        self.training: dict[str, Any] | None = None  # the IVF-PQ training record (samples, iterations, seconds)
        self._segments: list[_Segment] = []
        self._dead = np.zeros(0, bool)
        self._faiss: Any = None
        self._faiss_dirty = False
        self._root: Path | None = None
        self._manifest: dict[str, Any] | None = None
        self._cache: dict[str, Any] = {}

    # -- contents --------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Stored rows, removed ones included."""
        return len(self._dead)

    def __len__(self) -> int:
        return int(self.rows - self._dead.sum())

    def _all_ids(self) -> npt.NDArray[np.int64]:
        if "ids" not in self._cache:
            parts = [s.ids for s in self._segments]
            self._cache["ids"] = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._cache["ids"]

    def _live_lookup(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(sorted live ids, their rows) for id -> row lookups by ``np.searchsorted``."""
        if "lookup" not in self._cache:
            rows = np.flatnonzero(~self._dead)
            ids = self._all_ids()[rows]
            order = np.argsort(ids, kind="stable")
            self._cache["lookup"] = (ids[order], rows[order])
        return self._cache["lookup"]

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        """Ids of the live rows, in insertion order."""
        return self._all_ids()[~self._dead]

    @property
    def keeps_vectors(self) -> bool:
        """Whether the full vectors are stored (exact search, or IVF-PQ with re-scoring)."""
        return self.kind == "exact" or self.rescore > 0

    @property
    def is_trained(self) -> bool:
        return self.kind == "exact" or (self._faiss is not None and self._faiss.is_trained)

    def train(self, sample: npt.ArrayLike, *, expected_size: int | None = None, seed: int = 0) -> None:
        """Train the IVF-PQ quantizers (k-means cells, then PQ on residuals) on a sample of vectors.

        :param sample: (S, D) training vectors, ideally drawn from the collection.
        :param expected_size: collection size used for default parameters (default: ``len(sample)``).
        :param seed: seed of the subsample and of faiss' k-means.
        """
        if self.kind != "ivfpq":
            raise GlobalIndexError("train() is for kind='ivfpq'; an exact index needs no training")
        x = self._check_vectors(sample, "training sample")
        params = self.params or IvfPqParams.for_size(expected_size or len(x), self.dim)
        index, self.training = ivfpq.train(x, self.dim, params, seed=seed, threads=self.threads)
        self.params, self._faiss, self._faiss_dirty = params, index, True

    def _check_vectors(self, vectors: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must be (N, {self.dim}), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return x

    def add(self, vectors: npt.ArrayLike, ids: npt.ArrayLike) -> None:
        """Add rows (kept in memory until :meth:`save`). Ids must be new among the live rows."""
        x = self._check_vectors(vectors, "vectors")
        new = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(new) != len(x):
            raise ValueError(f"got {len(x)} vectors but {len(new)} ids")
        if len(np.unique(new)) != len(new) or np.isin(new, self._live_lookup()[0]).any():
            raise ValueError("ids must be unique and not already in the index (remove them first)")
        if not self.is_trained:
            raise GlobalIndexError("an IVF-PQ index must be trained before add(): call train(sample)")
        if self.storage == "float16" and np.abs(x).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError("vectors exceed the float16 range; use storage='float32'")
        if self.kind == "ivfpq":
            ivfpq.add_rows(self._faiss, x, self.rows, threads=self.threads)
            self._faiss_dirty = True
        vec = x.astype(self.storage) if self.keeps_vectors else None
        self._segments.append(_Segment(new, vec))
        self._dead = np.concatenate([self._dead, np.zeros(len(x), bool)])
        self._cache.clear()

    def remove(self, ids: npt.ArrayLike, *, missing_ok: bool = False) -> int:
        """Tombstone the live rows with these ids; returns how many were removed."""
        rows = self._rows_of(np.unique(np.asarray(ids, dtype=np.int64).reshape(-1)), missing_ok=missing_ok)
        self._dead[rows] = True
        self._cache.clear()
        return len(rows)

    def _rows_of(self, want: npt.NDArray[np.int64], *, missing_ok: bool) -> npt.NDArray[np.int64]:
        """Rows of the live ids ``want`` (unknown ids: KeyError, or skipped with ``missing_ok``)."""
        live, rows = self._live_lookup()
        if not len(live):
            found = np.zeros(len(want), bool)
            pos = np.zeros(len(want), np.int64)
        else:
            pos = np.minimum(np.searchsorted(live, want), len(live) - 1)
            found = live[pos] == want
        if not missing_ok and not found.all():
            raise KeyError(f"ids not in the index: {want[~found][:5].tolist()}")
        return rows[pos[found]] if len(live) else np.zeros(0, np.int64)

    def vectors(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """(K, D) float32 stored vectors of live ids (exact, or IVF-PQ with re-scoring), e.g. for query
        expansion."""
        if not self.keeps_vectors:
            raise GlobalIndexError("this IVF-PQ index keeps only PQ codes (rescore=0); keep the vectors elsewhere")
        rows = self._rows_of(np.asarray(ids, dtype=np.int64).reshape(-1), missing_ok=False)
        return global_rescore.gather([s.vectors for s in self._segments], rows)  # type: ignore[misc]

    # -- search ----------------------------------------------------------------------------------
    def search(self, queries: npt.ArrayLike, top: int, *, nprobe: int | None = None, rescore: int | None = None
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top ``top`` live rows by inner product for each query.

        :param queries: (Q, D) query vectors (a single (D,) vector is treated as Q = 1).
        :param nprobe: IVF-PQ cells scanned per query (default ``params.nprobe``).
        :param rescore: IVF-PQ candidates re-ranked exactly (default ``self.rescore``; 0: PQ scores; more
            than 0 needs the vectors, i.e. an index built with ``rescore``).
        :return: (ids (Q, top) int64, scores (Q, top) float32), best first; id -1 and score -inf where
            the index holds fewer than ``top`` live rows.
        """
        q = self._check_vectors(np.atleast_2d(queries), "queries")
        if top <= 0:
            raise ValueError(f"top must be positive, got {top}")
        out_rows = np.full((len(q), top), -1, np.int64)
        out_scores = np.full((len(q), top), -np.inf, np.float32)
        alive = ~self._dead if self._dead.any() else None
        rescore = self.rescore if rescore is None else int(rescore)
        if rescore and self.kind == "ivfpq" and not self.keeps_vectors:
            raise GlobalIndexError("re-scoring needs the full vectors: build the index with rescore > 0")
        with limit_threads(self.threads):
            for b in range(0, len(q) if self.rows else 0, QUERY_BATCH):
                qb = q[b : b + QUERY_BATCH]
                if self.kind == "ivfpq":
                    rows, scores = ivfpq.search(self._faiss, qb, max(top, rescore), nprobe or self.params.nprobe,  # type: ignore[union-attr]
                                                np.flatnonzero(self._dead))
                    if rescore:
                        rows, scores = global_rescore.rescore(qb, rows, [s.vectors for s in self._segments], top)  # type: ignore[misc]
                else:
                    acc, first = TopK(len(qb), top), 0
                    for seg in self._segments:
                        seg_alive = None if alive is None else alive[first : first + len(seg.ids)]
                        score_chunks(acc, qb, seg.vectors, seg_alive, first,  # type: ignore[arg-type]
                                     chunk_bytes=_CHUNK_BYTES)
                        first += len(seg.ids)
                    rows, scores = acc.result()
                out_rows[b : b + len(qb)], out_scores[b : b + len(qb)] = rows, scores
        ids = np.full_like(out_rows, -1)
        found = out_rows >= 0
        ids[found] = self._all_ids()[out_rows[found]]
        return ids, out_scores

    def compact(self) -> None:
        """Drop removed rows for good (one segment; the faiss index loses the removed codes)."""
        keep = ~self._dead
        ids = self._all_ids()[keep]
        if self.kind == "ivfpq":
            ivfpq.remove_rows(self._faiss, np.flatnonzero(self._dead))
            ivfpq.renumber_rows(self._faiss, np.flatnonzero(keep))  # faiss ids are rows: the kept ones become 0..n-1
            self._faiss_dirty = True
        vec = None
        if self.keeps_vectors and self._segments:
            vec = np.concatenate([np.asarray(s.vectors) for s in self._segments])[keep]
        self._segments = [_Segment(ids, vec)] if len(ids) else []
        self._dead = np.zeros(len(ids), bool)
        self._cache.clear()

    # -- statistics ------------------------------------------------------------------------------
    def stats(self) -> GlobalIndexStats:
        """Images, removed rows, bytes per image and total bytes (see :class:`GlobalIndexStats`)."""
        n = self.rows
        extra = 8 * n + 8 * int(self._dead.sum())  # ids, tombstones
        if self.kind == "exact":
            code = self.dim * np.dtype(self.storage).itemsize
            total = n * code + extra
        else:
            code, quantizers = ivfpq.size_bytes(self.params, self.dim)
            total = n * (code + 8) + extra + quantizers  # faiss keeps an int64 id per code
        mapped = n * self.dim * np.dtype(self.storage).itemsize if self.kind == "ivfpq" and self.rescore else 0
        live = len(self)
        return GlobalIndexStats(self.kind, self.dim, live, n - live, n, code, (total + mapped) / max(live, 1),
                                total + mapped, self.rescore, mapped)

    # -- persistence -----------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, *, verify: bool = True, threads: int | None = None) -> GlobalIndex:
        """Open the last committed state of an index folder (vectors memory-mapped).

        :param verify: check every data file's size and crc32 against the manifest (reads the files once).
        """
        root = Path(folder)
        m = read_manifest(root)
        verify_files(root, m, verify=verify)
        try:
            params = IvfPqParams(**m["params"]) if m.get("params") else None
            index = cls(m["dim"], m["kind"], storage=m["storage"], params=params, threads=threads,
                        rescore=m.get("rescore", 0))
            index.training = m.get("training")
            for seg in m["segments"]:
                ids = np.load(root / seg["ids"], allow_pickle=False)
                vec = np.load(root / seg["vectors"], mmap_mode="r", allow_pickle=False) if seg.get("vectors") else None
                if len(ids) != seg["rows"] or (vec is not None and vec.shape != (len(ids), index.dim)):
                    raise GlobalIndexError(f"{root / seg['ids']}: segment shapes disagree with {MANIFEST}")
                index._segments.append(_Segment(ids, vec, committed=True))
        except (KeyError, TypeError, ValueError) as e:
            raise GlobalIndexError(f"{root / MANIFEST}: incomplete or inconsistent manifest ({e!r})") from None
        index._dead = np.zeros(sum(len(s.ids) for s in index._segments), bool)
        if m.get("tombstones"):
            index._dead[np.load(root / m["tombstones"], allow_pickle=False)] = True
        if m.get("faiss"):
            index._faiss = ivfpq.deserialize(np.fromfile(root / m["faiss"], dtype=np.uint8))
        index._root, index._manifest = root, m
        return index

    def save(self, folder: str | Path | None = None) -> Path:
        """Commit the current state to ``folder`` (default: the folder it was opened from or saved to).

        New rows, tombstones and the faiss index (when changed) go to new files, then the manifest is
        swapped in atomically; see the module docstring. Returns the folder.
        """
        root = Path(folder) if folder is not None else self._root
        if root is None:
            raise GlobalIndexError("save() needs a folder for an index that was never saved")
        root.mkdir(parents=True, exist_ok=True)
        same = self._root is not None and root.resolve() == self._root.resolve()
        with commit_lock(root):
            on_disk = read_manifest(root) if (root / MANIFEST).exists() else None
            if on_disk is not None and (not same or on_disk["generation"] != self._manifest["generation"]):  # type: ignore[index]
                raise GlobalIndexError(f"{root / MANIFEST}: the folder holds another index or a newer commit "
                                       f"(generation {on_disk['generation']}); open it again")
            self._commit(root, same, 1 + (on_disk["generation"] if on_disk else 0))
        return root

    def _commit(self, root: Path, same: bool, gen: int) -> None:
        old = self._manifest if same else None
        files: dict[str, dict[str, int]] = {}
        segments: list[dict[str, Any]] = []
        done = [s for s in self._segments if s.committed and same]
        for _seg, entry in zip(done, old["segments"] if old else []):
            segments.append(entry)
            files.update({entry[k]: old["files"][entry[k]] for k in ("ids", "vectors") if entry.get(k)})  # type: ignore[index]
        pending = self._segments[len(done):]
        new_segment: dict[str, Any] | None = None
        if pending:
            new_segment = {"ids": f"seg-{gen:06d}.ids.npy", "rows": sum(len(s.ids) for s in pending)}
            files[new_segment["ids"]] = write_file(root / new_segment["ids"], np.concatenate([s.ids for s in pending]))
            if self.keeps_vectors:
                new_segment["vectors"] = f"seg-{gen:06d}.vec.npy"
                vec = np.concatenate([np.asarray(s.vectors) for s in pending])
                files[new_segment["vectors"]] = write_file(root / new_segment["vectors"], vec)
            segments.append(new_segment)
        tomb = None
        if self._dead.any():
            dead = np.flatnonzero(self._dead).astype(np.int64)
            if old and old.get("tombstones") and np.array_equal(np.load(root / old["tombstones"]), dead):
                tomb = old["tombstones"]
                files[tomb] = old["files"][tomb]
            else:
                tomb = f"tomb-{gen:06d}.npy"
                files[tomb] = write_file(root / tomb, dead)
        faiss_file = None
        if self._faiss is not None:
            if old and old.get("faiss") and not self._faiss_dirty:
                faiss_file = old["faiss"]
                files[faiss_file] = old["files"][faiss_file]
            else:
                faiss_file = f"ivfpq-{gen:06d}.faiss"
                files[faiss_file] = write_file(root / faiss_file, ivfpq.serialize(self._faiss))
        manifest = {"format": FORMAT, "version": VERSION, "generation": gen, "kind": self.kind, "dim": self.dim,
                    "storage": self.storage, "params": asdict(self.params) if self.params else None,
                    "rescore": self.rescore, "training": self.training,
                    "rows": self.rows, "segments": segments, "tombstones": tomb, "faiss": faiss_file, "files": files}
        write_manifest(root, manifest)
        # committed: memory-map the new vectors and forget files no manifest names
        if new_segment is not None:
            vec = np.load(root / new_segment["vectors"], mmap_mode="r") if self.keeps_vectors else None
            ids = np.concatenate([s.ids for s in pending])
            self._segments = self._segments[: len(done)] + [_Segment(ids, vec, committed=True)]
        for s in self._segments:
            s.committed = True
        self._root, self._manifest, self._faiss_dirty = root, manifest, False
        self._cache.clear()
        remove_unnamed(root, files)

    @classmethod
    def build(cls, vectors: npt.ArrayLike, ids: npt.ArrayLike, kind: Kind = "exact", *, storage: str = "float32",
              params: IvfPqParams | None = None, seed: int = 0, threads: int | None = None, rescore: int = 0
              ) -> GlobalIndex:
        """An index of ``vectors``; for ``"ivfpq"`` trained first on a seeded sample of them."""
        x = np.asarray(vectors, dtype=np.float32)
        index = cls(x.shape[1], kind, storage=storage, params=params, threads=threads, rescore=rescore)
        if kind == "ivfpq":
            index.train(x, expected_size=len(x), seed=seed)
        index.add(x, ids)
        return index


