"""A persistent, memory-mapped ASMK / ASMK* / R-ASMK inverted file.

Folder layout::

    index/
      MANIFEST.json        format, version, settings, committed files with their sizes and CRC32
      codebook.gls         visual words (+ the coarse cells of the fast quantizer), see segment_file
      seg-00000001.gls     one segment per ``add`` (or per merge): entries sorted by visual word
      tomb-00000004.gls    ids of removed images (tombstones), if any
      LOCK                 flock'ed by the one writer

A segment holds ``words`` (W,) int32 (its non-empty words, sorted), ``bounds`` (W + 1,) int64, and per
entry a code and an item id: ASMK* records ``postings`` (E, d / 8 + 4) uint8 (code, then uint32 id; index
version 2, :mod:`glocal.index.layout`; version 1: two arrays, still read, :meth:`InvertedFile.upgrade`
rewrites them), ASMK ``items`` (E,) uint32 and ``codes`` (E, d) float32: 16 + 4 = 20
bytes per (image, non-empty word) for 128-D ASMK*, the word id being implied by the list. It also holds its
items' owning image and size |C(item)|. Items are images, or regions in regional search (D2R eq. 3-4).
Search maps segments read-only: only the posting lists of the query's words are touched.

This module keeps the files, commits and locking; scoring a query against the stored items is the mixin in
:mod:`glocal.index.posting_search`, and the array work on posting lists (building a segment's arrays, IDF
weights, scoring, top-k) is :mod:`glocal.index.postings`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glocal.errors import MissingDependencyError
from glocal.index import manifest as mf
from glocal.index import scan
from glocal.index.asmk import AggregatedImage
from glocal.index.codebook import Codebook
from glocal.index.kernel import selectivity_table
from glocal.index.layout import IndexSettings, Segment
from glocal.index.merge import merge_segments
from glocal.index.posting_search import PostingSearch
from glocal.index.postings import posting_arrays
from glocal.index.quantizer import CoarseQuantizer
from glocal.index.regional import split_items
from glocal.index.segment_file import ArrayFile, SegmentFileError, file_crc32, write_arrays

VERIFY = ("full", "lazy", "size")
#: ASMK* scoring: numba (:mod:`glocal.index.scan`), the vectorised numpy reference, or the first where usable
KERNELS = ("auto", "compiled", "numpy")


class InvertedFile(PostingSearch):
    """Persistent ASMK inverted file. Use :meth:`create` or :meth:`open`, not the constructor."""

    def __init__(self, root: Path, writable: bool = False, verify: str = "full", threads: int = 2,
                 kernel: str = "auto", budget: float = 1.0) -> None:
        if verify not in VERIFY:
            raise ValueError(f"verify must be one of {VERIFY}, got {verify!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "compiled" and not scan.AVAILABLE:
            raise MissingDependencyError("the compiled ASMK* kernel needs numba: pip install numba")
        self.kernel = kernel
        self.budget = budget  # < 1: approximate ASMK* search (opt-in), see PostingSearch.item_scores
        self.root = Path(root)
        self.writable = writable
        self.threads = threads
        self._verify = verify
        self._lock = mf.WriterLock(self.root) if writable else None
        try:
            self._manifest = mf.read_manifest(self.root)
            if writable:
                mf.remove_orphans(self.root, self._manifest)
            self.settings = IndexSettings(**self._manifest["settings"])
            self._load_codebook()
            self._segments = [Segment(self.root, e, verify == "full") for e in self._manifest["segments"]]
            self._refresh()
        except BaseException:
            self.close()
            raise

    # -- creation / opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, codebook: Codebook, settings: IndexSettings | None = None,
               quantizer: CoarseQuantizer | None = None) -> InvertedFile:
        """Create an empty index at ``root`` (a new or empty folder) and open it for writing."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if (root / mf.MANIFEST).exists():
            raise FileExistsError(f"{root}: an index already exists here")
        settings = settings or IndexSettings()
        if settings.binary and codebook.dim % 8:
            raise ValueError(f"ASMK* packs sign bits: descriptor dimension {codebook.dim} is not a multiple of 8")
        lock = mf.WriterLock(root)
        try:
            arrays = {"centroids": codebook.centroids}
            meta: dict = {"info": codebook.info}
            if quantizer is not None:
                arrays |= {"coarse": quantizer.coarse, "order": quantizer.order, "bounds": quantizer.bounds}
                meta["quantizer"] = {"nprobe": quantizer.nprobe, "nprobe_multi": quantizer.nprobe_multi,
                                     "threads": quantizer.threads, "info": quantizer.info}
            crc = write_arrays(root / "codebook.gls", arrays, meta)
            manifest = {
                "format": mf.FORMAT, "version": mf.VERSION, "settings": asdict(settings),
                "codebook": {"file": "codebook.gls", "bytes": (root / "codebook.gls").stat().st_size, "crc32": crc,
                             "size": codebook.size, "dim": codebook.dim},
                "images": 0, "items": 0, "next_file": 1, "segments": [], "tombstones": None,
            }
            mf.write_manifest(root, manifest)
        finally:
            lock.release()
        return cls(root, writable=True)

    @classmethod
    def open(cls, root: str | Path, writable: bool = False, verify: str = "full", threads: int = 2,
             kernel: str = "auto", budget: float = 1.0) -> InvertedFile:
        """Open an existing index. ``verify``: ``full`` checks every file's CRC32 now, ``lazy`` checks every
        segment before the first query, ``size`` only checks sizes and headers (fast open of huge indexes).
        ``threads`` score in parallel; ``kernel``: one of :data:`KERNELS`; ``budget``: 1 scores exactly, less
        is the opt-in approximate search (a fraction of the query's posting entries, shortest lists first)."""
        return cls(Path(root), writable=writable, verify=verify, threads=threads, kernel=kernel, budget=budget)

    def _load_codebook(self) -> None:
        e = self._manifest["codebook"]
        f = ArrayFile(self.root / e["file"], expected_size=e["bytes"])
        try:
            if file_crc32(f.path) != e["crc32"]:
                raise SegmentFileError(f"{f.path}: checksum mismatch: the codebook file is damaged")
            self.codebook = Codebook(np.array(f["centroids"]), dict(f.meta.get("info", {})))
            self.quantizer: CoarseQuantizer | None = None
            if "coarse" in f.arrays:
                q = f.meta["quantizer"]
                self.quantizer = CoarseQuantizer(self.codebook, np.array(f["coarse"]), np.array(f["order"]),
                                                 np.array(f["bounds"]), nprobe=int(q["nprobe"]),
                                                 threads=int(q["threads"]), info=q["info"],
                                                 nprobe_multi=q.get("nprobe_multi"))
        finally:
            f.close()

    def _refresh(self) -> None:
        """Rebuild the small in-memory tables (per item: owner, normalisation; per image: removed)."""
        m = self._manifest
        expected = 0
        for s in self._segments:
            if s.item_start != expected:
                raise mf.IndexFormatError(f"{self.root / mf.MANIFEST}: segment {s.entry['file']} starts at item "
                                          f"{s.item_start}, expected {expected}")
            expected += s.n_items
        self.n_items, self.n_images = int(m["items"]), int(m["images"])
        if expected != self.n_items:
            raise mf.IndexFormatError(f"{self.root / mf.MANIFEST}: segments hold {expected} items, manifest says {self.n_items}")
        cat = (lambda key: np.concatenate([getattr(s, key) for s in self._segments])) if self._segments else None
        self._item_image = cat("item_image").astype(np.int64) if cat else np.zeros(0, np.int64)
        self._item_size = cat("item_size").astype(np.float64) if cat else np.zeros(0)
        self._first_item = np.searchsorted(self._item_image, np.arange(self.n_images + 1)).astype(np.int64)
        self._removed = np.zeros(self.n_images, bool)
        t = m.get("tombstones")
        if t:
            f = ArrayFile(self.root / t["file"], expected_size=t["bytes"])
            try:
                if file_crc32(f.path) != t["crc32"]:
                    raise SegmentFileError(f"{f.path}: checksum mismatch: the tombstone file is damaged")
                self._removed[np.asarray(f["images"], np.int64)] = True
            finally:
                f.close()
        self._idf_cache: tuple[np.ndarray, np.ndarray] | None = None
        self._gamma_cache: np.ndarray | None = None
        self._table = selectivity_table(self.codebook.dim, self.settings.alpha, self.settings.tau)

    # -- writing -----------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.root}: index opened read-only")

    def _new_file(self, manifest: dict, prefix: str) -> str:
        n = int(manifest["next_file"])
        manifest["next_file"] = n + 1
        return f"{prefix}-{n:08d}.gls"

    def _commit(self, manifest: dict, drop: Sequence[str] = ()) -> None:
        """Swap in ``manifest`` (files it names are already durable), reopen, delete files no longer named."""
        manifest["version"] = mf.VERSION  # new segments are in this version's layout (older glocal: refused)
        mf.write_manifest(self.root, manifest)
        old = self._segments
        self._manifest = manifest
        keep = {s.entry["file"]: s for s in old}
        self._segments = [keep.get(e["file"]) or Segment(self.root, e, verify=False) for e in manifest["segments"]]
        for s in old:
            if s.entry["file"] not in {e["file"] for e in manifest["segments"]}:
                s.file.close()
        for name in drop:
            (self.root / name).unlink(missing_ok=True)
        self._refresh()

    def add(self, images: Sequence[AggregatedImage | Sequence[AggregatedImage]]) -> npt.NDArray[np.int64]:
        """Append images (each an :class:`AggregatedImage`, or a sequence of region items with the full image
        first) as one durable segment. Returns their new image ids."""
        items, per_image = split_items(images)
        for it in items:
            if it.binary != self.settings.binary:
                raise ValueError(f"{self.root}: an item is binary={it.binary} but the index is binary={self.settings.binary}")
        width = self.codebook.dim // 8 if self.settings.binary else self.codebook.dim
        dtype = np.uint8 if self.settings.binary else np.float32
        words = np.concatenate([it.words for it in items]) if items else np.zeros(0, np.int32)
        codes = np.concatenate([it.codes for it in items]) if items else np.zeros((0, width), dtype)
        return self.add_arrays(np.array([len(it) for it in items], np.int64), words, codes, np.array(per_image))

    def add_arrays(self, item_sizes: npt.NDArray, words: npt.NDArray, codes: npt.NDArray,
                   items_per_image: npt.NDArray | None = None) -> npt.NDArray[np.int64]:
        """Bulk :meth:`add` from flat arrays: item i owns the next ``item_sizes[i]`` (word, code) rows.

        Words of one item must be unique. Written as one segment, committed atomically.
        """
        self._require_writable()
        sizes = np.asarray(item_sizes, np.int64)
        per_image = np.ones(len(sizes), np.int64) if items_per_image is None else np.asarray(items_per_image, np.int64)
        words = np.asarray(words)
        width = self.codebook.dim // 8 if self.settings.binary else self.codebook.dim
        dtype = np.uint8 if self.settings.binary else np.float32
        if codes.dtype != dtype or codes.ndim != 2 or codes.shape[1] != width:
            raise ValueError(f"{self.root}: codes must be ({len(words)}, {width}) {np.dtype(dtype).name}, got "
                             f"{codes.shape} {codes.dtype}")
        if sizes.sum() != len(words) or len(codes) != len(words) or per_image.sum() != len(sizes) or np.any(per_image < 1):
            raise ValueError(f"{self.root}: inconsistent sizes: {sizes.sum()} words listed, {len(words)} words, "
                             f"{len(codes)} codes, {per_image.sum()} items for {len(sizes)} items")
        if len(words) and (words.min() < 0 or words.max() >= self.codebook.size):
            raise ValueError(f"{self.root}: word ids must lie in [0, {self.codebook.size})")
        if len(per_image) == 0:
            return np.zeros(0, np.int64)
        m = {**self._manifest, "segments": list(self._manifest["segments"])}
        item0, image0 = int(m["items"]), int(m["images"])
        try:
            arrays = posting_arrays(sizes, words, codes, per_image, item0, image0, self.codebook.size)
        except ValueError as e:
            raise ValueError(f"{self.root}: {e}") from None
        name = self._new_file(m, "seg")
        crc = write_arrays(self.root / name, arrays, {"item_start": item0, "image_start": image0})
        m["segments"].append({"file": name, "bytes": (self.root / name).stat().st_size, "crc32": crc,
                              "item_start": item0, "items": len(sizes), "image_start": image0,
                              "images": len(per_image), "entries": len(words), "words": len(arrays["words"])})
        m["items"], m["images"] = item0 + len(sizes), image0 + len(per_image)
        self._commit(m)
        if len(self._segments) > self.settings.max_segments:
            self.compact(first=self._merge_start())
        return np.arange(image0, image0 + len(per_image), dtype=np.int64)

    def _merge_start(self) -> int:
        """Size-tiered merge policy: the longest run of recent segments that, together, are not much smaller
        than the segment before them is merged, so large old segments are rewritten only O(log n) times."""
        sizes = [int(s.entry["entries"]) + 1 for s in self._segments]
        i, total = len(sizes) - 1, sizes[-1]
        while i > 0 and (len(sizes) - i < 2 or sizes[i - 1] <= total):
            i -= 1
            total += sizes[i]
        return i

    def remove(self, image_ids: Sequence[int] | npt.NDArray) -> None:
        """Mark images as removed (tombstones, committed atomically); :meth:`compact` drops their entries."""
        self._require_writable()
        ids = np.unique(np.asarray(image_ids, np.int64))
        if len(ids) and (ids[0] < 0 or ids[-1] >= self.n_images):
            raise IndexError(f"{self.root}: image ids must lie in [0, {self.n_images}), got {ids[0]}..{ids[-1]}")
        dead = np.union1d(np.flatnonzero(self._removed), ids).astype(np.uint32)
        m = {**self._manifest}
        name = self._new_file(m, "tomb")
        crc = write_arrays(self.root / name, {"images": dead})
        old = m.get("tombstones")
        m["tombstones"] = {"file": name, "bytes": (self.root / name).stat().st_size, "crc32": crc, "count": len(dead)}
        self._commit(m, drop=[old["file"]] if old else [])

    def compact(self, first: int = 0) -> None:
        """Merge segments ``first..`` into one, dropping entries of removed images (streamed by word range)."""
        self._require_writable()
        run = self._segments[first:]
        if not run or (len(run) == 1 and not self._removed[self._item_image[run[0].item_start:run[0].item_start + run[0].n_items]].any()):
            return
        m = {**self._manifest}
        name = self._new_file(m, "seg")
        dead_items = self._removed[self._item_image]
        entry = merge_segments(run, dead_items, self.root / name)
        entry["file"] = name
        m["segments"] = list(m["segments"][:first]) + [entry]
        self._commit(m, drop=[s.entry["file"] for s in run])

    def upgrade(self) -> int:
        """Rewrite every ASMK* segment of the version-1 layout (codes and item ids in two arrays) as records
        (:mod:`glocal.index.layout`), one segment at a time, each committed atomically; scores are unchanged.
        Entries of removed images are dropped on the way. Returns the number of segments rewritten."""
        self._require_writable()
        done = 0
        for i, s in enumerate(list(self._segments)):
            s = self._segments[i]
            if s.postings is not None or not self.settings.binary:
                continue
            m = {**self._manifest}
            name = self._new_file(m, "seg")
            entry = merge_segments([s], self._removed[self._item_image], self.root / name)
            entry["file"] = name
            m["segments"] = [*m["segments"][:i], entry, *m["segments"][i + 1:]]
            self._commit(m, drop=[s.entry["file"]])
            done += 1
        return done

    # -- reading -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of images in the index (removed ones excluded)."""
        return int(self.n_images - self._removed.sum())

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    @property
    def removed(self) -> npt.NDArray[np.bool_]:
        return self._removed.copy()

    def verify(self) -> None:
        """Check every segment's CRC32 against the manifest (raises :class:`SegmentFileError`)."""
        for s in self._segments:
            s.verify()

    def close(self) -> None:
        for s in getattr(self, "_segments", []):
            s.file.close()
        self._segments = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> InvertedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

