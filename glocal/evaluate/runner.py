"""Evaluating a method on a benchmark: load the dataset, build (or open) an index, rank every query, score
with the revisited protocol (Radenovic et al., CVPR 2018: mAP and mP@k for Easy / Medium / Hard).

The ranking of a query is the searcher's hit list mapped to the dataset's database order by image name;
database images the searcher did not return are unranked (missed), as the protocol allows for truncated
rankings. ``glocal eval`` is a thin wrapper around :func:`run_evaluation`.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from glocal.errors import BadInputError
from glocal.evaluate.datasets import RetrievalDataset, add_distractors, load_dataset
from glocal.evaluate.protocol import SetupResult, evaluate_setups
from glocal.extract.batch import ExtractionFailure
from glocal.progress import Progress, as_progress
from glocal.records import SearchHit

Box = tuple[float, float, float, float]


class IndexUnderTest(Protocol):
    """What the runner needs of an index: a :class:`glocal.search.Searcher` provides it."""

    @property
    def names(self) -> list[str]: ...

    def search(self, query_path: Path, box: Box | None = None, top: int = 100, rerank_top: int | None = None,
               qe: int | None = None, dba: int | None = None) -> Sequence[SearchHit]: ...

    def settings(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class EvalRequest:
    """One evaluation, as ``glocal eval`` takes it.

    :param dataset: ``roxford5k``, ``rparis6k`` or ``custom``.
    :param data: the dataset folder.
    :param index: search this existing index instead of building one.
    :param method: method of the index built for the evaluation (default: the default method).
    :param settings: ``--set`` values for the built index.
    :param top: ranking length per query (default: the whole database, as the protocol ranks every image).
    """

    dataset: str
    data: Path
    index: Path | None = None
    method: str | None = None
    crop: bool = True
    distractors: Path | None = None
    gnd: Path | None = None
    codebook_images: Path | None = None
    codebook_from: Path | None = None
    save_index: Path | None = None
    top: int | None = None
    rerank_top: int | None = None
    qe: int | None = None
    dba: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    keep_regions: bool = False


@dataclass
class EvalOutcome:
    """Scores and what produced them."""

    dataset: RetrievalDataset
    setups: dict[str, SetupResult]
    ranks: npt.NDArray[np.int64]
    settings: dict[str, Any]
    query_failures: list[str]
    index_failures: list[ExtractionFailure]
    missing: int
    db_regions: list[Any] | None = None


def load_evaluation_dataset(request: EvalRequest) -> RetrievalDataset:
    ds = load_dataset(request.dataset, request.data, crop=request.crop, gnd_path=request.gnd)
    if request.distractors is not None:
        ds = add_distractors(ds, request.distractors)
    return ds


def open_or_build(request: EvalRequest, ds: RetrievalDataset, folder: Path, progress: bool | Progress
                  ) -> tuple[IndexUnderTest, list[ExtractionFailure]]:
    """The searcher of ``request.index``, or of a new index of the dataset's database at ``folder``."""
    from glocal.index.builder import build_index
    from glocal.io.images import list_images
    from glocal.search import Searcher

    if request.index is not None:  # its extractor and index options are fixed; --set may change the rest
        return Searcher.open(request.index, settings=request.settings), []
    cb_paths = list_images([request.codebook_images]) if request.codebook_images is not None else None
    built = build_index(ds.db_paths, ds.db_names, folder, method=request.method, settings=request.settings,
                        codebook_paths=cb_paths, codebook_from=request.codebook_from, progress=progress)
    return Searcher(built.collection), built.failures


def run_evaluation(request: EvalRequest, ds: RetrievalDataset | None = None, progress: bool | Progress = False,
                   open_index: Callable[..., tuple[IndexUnderTest, list[ExtractionFailure]]] | None = None,
                   ) -> EvalOutcome:
    """Rank every query of the dataset and score it (module docstring).

    :param open_index: ``(request, dataset, folder, progress) -> (index, failures)``, default
        :func:`open_or_build`; tests pass a fake.
    :raises BadInputError: the dataset cannot be loaded, or no indexed image belongs to it.
    """
    ds = ds or load_evaluation_dataset(request)
    open_index = open_index or open_or_build
    with tempfile.TemporaryDirectory(prefix="glocal-eval-") as tmp:
        index, index_failures = open_index(request, ds, request.save_index or Path(tmp) / "index", progress)
        try:
            mapping = name_map(index.names, ds.db_names)
            if not (mapping >= 0).any():
                raise BadInputError(f"no image of the index {request.index or ''} is in the {ds.name} database "
                                    "(names differ)")
            missing = ds.n_database - len(set(mapping[mapping >= 0].tolist()))
            length = request.top if request.top is not None else len(index.names)

            def search(path: Path, box: Box | None) -> Sequence[SearchHit]:
                return index.search(path, box=box, top=length, rerank_top=request.rerank_top, qe=request.qe,
                                    dba=request.dba)

            advance = as_progress(progress)("searching queries", ds.n_queries)
            ranks, failures = rank_dataset(ds, search, mapping, advance)
            settings = dict(index.settings())
            db_regions = _regions(index, mapping, ds.n_database) if request.keep_regions else None
        finally:
            index.close()
    index_top = int((settings.get("rerank") or {}).get("rerank_top", 0) or 0)
    verified = request.rerank_top if request.rerank_top is not None else index_top
    settings.update({
        "dataset": ds.name, "data": str(request.data), "crop": ds.query_boxes is not None, "top": length,
        "distractors": str(request.distractors) if request.distractors is not None else None,
        "n_database": ds.n_database, "n_queries": ds.n_queries,
        "index_path": str(request.index) if request.index is not None else None,
        "rerank_on": bool(verified), "rerank_top": verified, "query_expansion": request.qe,
        "database_augmentation": request.dba,
    })
    settings.setdefault("method", request.method)
    return EvalOutcome(ds, evaluate_setups(ranks, ds.gnd), ranks, settings, failures, index_failures, missing,
                       db_regions)


def _regions(index: Any, mapping: npt.NDArray[np.int64], n_database: int) -> list[Any] | None:
    """Per database image its indexed regions (drawn in reports), when the index stores regions."""
    collection = getattr(index, "collection", None)
    if collection is None or getattr(collection.options.index, "regions", "none") == "none":
        return None
    regions: list[Any] = [None] * n_database
    for pos, di in enumerate(mapping):
        if di >= 0:
            regions[di] = collection.features[pos].regions
    return regions


def _strip_suffix(name: str) -> str:
    p = Path(name)
    return p.with_suffix("").as_posix() if p.suffix else p.as_posix()


def name_map(index_names: Sequence[str], db_names: Sequence[str]) -> npt.NDArray[np.int64]:
    """Map each indexed image to its dataset database index (-1 when not in the dataset).

    Tries the exact name, then the name without its file suffix (``jpg/a.jpg`` -> ``jpg/a``), then the bare
    file stem when that stem is unique in the dataset (an index built from ``root/jpg`` names images
    ``a.jpg`` while revisited names are ``a``).
    """
    exact = {n: i for i, n in enumerate(db_names)}
    stripped: dict[str, int] = {}
    stems: dict[str, int] = {}
    for i, n in enumerate(db_names):
        stripped.setdefault(_strip_suffix(n), i)
        stem = Path(n).stem
        stems[stem] = -2 if stem in stems else i  # -2 marks an ambiguous stem
    out = np.full(len(index_names), -1, dtype=np.int64)
    for j, n in enumerate(index_names):
        if n in exact:
            out[j] = exact[n]
        elif _strip_suffix(n) in stripped:
            out[j] = stripped[_strip_suffix(n)]
        elif stems.get(Path(n).stem, -1) >= 0:
            out[j] = stems[Path(n).stem]
    return out


def hits_to_ranking(hits: Sequence[SearchHit], mapping: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Database indices of the hits in order, dropping images outside the dataset and repeats."""
    seen: set[int] = set()
    ranking = []
    for h in hits:
        i = int(mapping[h.index]) if 0 <= h.index < len(mapping) else -1
        if i >= 0 and i not in seen:
            seen.add(i)
            ranking.append(i)
    return np.asarray(ranking, dtype=np.int64)


def pad_rankings(rankings: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Stack ragged rankings into a (n_queries, K) array padded with -1 (ignored by the protocol)."""
    width = max((len(r) for r in rankings), default=0)
    arr = np.full((len(rankings), width), -1, dtype=np.int64)
    for i, r in enumerate(rankings):
        arr[i, : len(r)] = r
    return arr


def rank_dataset(dataset: RetrievalDataset, search: Callable[[Path, Box | None], Sequence[SearchHit]],
                 mapping: npt.NDArray[np.int64], on_query: Callable[[int], None] | None = None,
                 ) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Search every query; returns padded rankings and the messages of queries that failed (empty ranking)."""
    from glocal.io.images import ImageReadError

    rankings, failures = [], []
    for i, qpath in enumerate(dataset.query_paths):
        try:
            hits = search(qpath, dataset.query_box(i))
        except ImageReadError as exc:
            failures.append(str(exc))
            hits = []
        rankings.append(hits_to_ranking(hits, mapping))
        if on_query is not None:
            on_query(1)
    return pad_rankings(rankings), failures
