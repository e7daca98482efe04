"""Choose the ``sift`` defaults by leave-one-set-out and report every set with them, against brute force.

    nice -n 10 python benchmarks/default_selection.py [--sets ...] [--candidates FILE|JSON] [--cache DIR]
        [--method NAME] [--feature-cache] [--markdown out.md] [--json out.json]

``--method`` runs the same selection for another registered method (default: the default method); its
candidates are ``--set`` mappings of that method. ``--feature-cache`` extracts each database image once per
extractor setting across indexes, candidates and methods (``benchmarks/feature_cache.py``; queries are always
extracted and timed for real).

Sets: ``benchmarks/retrieval_sets.py`` (mini-ROxf, mini-RPar, each also with the other city as distractors,
the Oxford-affine set, the demo set). Candidates: a JSON list of ``--set`` mappings of the default method
(``{"ratio": 0.8, "rerank_top": 50}``), from ``--candidates`` (a file or inline JSON) or the built-in grid
(:func:`default_grid`). Options of the extractor and index groups make their own index (built once per set
and kept in ``--cache``); search and re-ranking options are applied per run on the same index.

Selection rule (never tuned on the set reported): a set and its ``+d`` twin form one group. For each held-out
group, the candidate with the best mean Medium mAP over the sets of the *other* groups is chosen and its
figures on the held-out sets are reported (ties: the first candidate in the list). The final default is the candidate chosen by most folds (tie: the
best mean, over the folds, of the fold's selection score). Every set is then reported with it, with the same
candidate without verification (``rerank_top=0``) and with brute-force verification of every pair
(``benchmarks/bruteforce_sift.py``), all measured in this run; ms per query split into extraction, first
stage and verification (mean over the set's queries).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bruteforce_sift as bf  # noqa: E402
import feature_cache  # noqa: E402
import selection_report  # noqa: E402
from retrieval_sets import DATA, GROUPS, OTHER, SETS, codebook_images, load_set  # noqa: E402

from glocal import methods  # noqa: E402
from glocal.evaluate.datasets import RetrievalDataset  # noqa: E402
from glocal.evaluate.protocol import evaluate_setups  # noqa: E402
from glocal.evaluate.runner import hits_to_ranking, name_map, pad_rankings  # noqa: E402
from glocal.index.builder import build_index  # noqa: E402
from glocal.index.collection import Collection  # noqa: E402
from glocal.search import Searcher  # noqa: E402

SETUPS = ("easy", "medium", "hard")
#: the method whose settings are chosen (``--method``)
METHOD = methods.default_method()


def _spec() -> methods.MethodSpec:
    return methods.get(METHOD)


def default_grid() -> list[dict[str, Any]]:
    """Ratio 0.8 / 0.85 / 0.9 x verified shortlist 50 / 100; x matcher words / descriptors when the
    method's re-ranking has a ``matcher`` option."""
    spec = methods.get(methods.default_method())
    grid = [{"ratio": r, "rerank_top": k} for r in (0.8, 0.85, 0.9) for k in (50, 100)]
    if "matcher" in spec.group_keys()["rerank"]:
        grid = [c | {"matcher": m} for m in ("descriptors", "words") for c in grid]
    # the method's current defaults first: measured first, and they win ties (a change must do better)
    current = {k: getattr(spec.rerank, k) for k in grid[0]}
    return sorted(grid, key=lambda c: c != current)


def candidate_name(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "(method defaults)"


def split_settings(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(extractor + index options: fixed by the index, search + rerank options: per run)."""
    keys = _spec().group_keys()
    build = {k: v for k, v in settings.items()
             if k.partition(".")[0] in ("extractor", "index") or k in keys["extractor"] + keys["index"]}
    return build, {k: v for k, v in settings.items() if k not in build}


@dataclass
class Run:
    """One candidate on one set: scores (fractions) and per-query ms, with and without verification."""

    setups: dict[str, float]
    shortlist_setups: dict[str, float]
    ms: dict[str, list[float]]
    load: float  # 1-minute load average when measured


def index_path(name: str, ds: RetrievalDataset, build: dict[str, Any], cache: Path) -> Path:
    key = json.dumps({"set": name, "db": ds.db_names, "build": build,
                      "method": _spec().defaults.to_dict()} | ({"name": METHOD} if METHOD != methods.default_method()
                                                                 else {}), sort_keys=True,
                     default=str)
    return cache / "indexes" / f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def index_for(name: str, ds: RetrievalDataset, build: dict[str, Any], cache: Path, data: Path,
              wait_s: float = 1800) -> Path:
    """The cached index of a set for these build options (built when missing). A ``+d`` set reuses the
    codebook of its plain twin's index (trained on the same other-city images) and copies the features of
    the images that both plain indexes hold (the same extractor and options give the same features), so
    only the rest is extracted. Waits up to ``wait_s`` for an index another process is building."""
    from glocal.index.builder import _pid_alive

    path, t0 = index_path(name, ds, build, cache), time.perf_counter()
    while not (path / "manifest.json").is_file() and time.perf_counter() - t0 < wait_s and any(
            _pid_alive(int(p.name.rpartition("-")[2])) for p in path.parent.glob(path.name + ".building-*")):
        time.sleep(20)  # another process is building it
    if (path / "manifest.json").is_file():
        return path
    print(f"  building the index of {name} ({ds.n_database} images) -> {path}", file=sys.stderr, flush=True)
    if name.endswith("+d"):
        base = name.removesuffix("+d")
        donor = index_for(base, load_set(base, cache, data), build, cache, data)
        other = index_for(OTHER[base], load_set(OTHER[base], cache, data), build, cache, data)
        build_by_copying(ds, build, path, donor, [donor, other])
    else:
        built = build_index(ds.db_paths, ds.db_names, path, method=METHOD, settings=build, progress=False,
                            codebook_paths=codebook_images(name, data))
        built.collection.close()
    print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return path


def build_by_copying(ds: RetrievalDataset, build: dict[str, Any], out: Path, donor: Path,
                     sources: list[Path]) -> None:
    """An index of ``ds`` with ``donor``'s codebook whose features are copied from ``sources`` (indexes
    built with the same options) where they hold the image's name, extracted otherwise. Uses the builder's
    internal steps (``glocal.index.builder._build``): a benchmark shortcut, not a library feature."""
    from glocal.extract.batch import extract_one
    from glocal.extract.stage import create_extractors
    from glocal.index import builder
    from glocal.io.feature_file import FeatureFile

    spec = _spec()
    opts = spec.configure(build)
    cols = [Collection.open(p) for p in sources if (p / "manifest.json").is_file()]
    where: dict[str, tuple[Collection, int]] = {}
    for c in cols:
        for pos, n in enumerate(c.names):
            where.setdefault(n, (c, pos))
    extracted = []

    def fill(work: Path, progress: Any) -> list:
        target, extractor = FeatureFile(work / "features.glf", writable=True), None
        try:
            for path, name in zip(ds.db_paths, ds.db_names, strict=True):
                if name in where:
                    c, pos = where[name]
                    feats = c.features[pos]
                else:
                    extractor = extractor or create_extractors(spec, opts)[1]
                    feats = extract_one(extractor, path, name)
                    extracted.append(name)
                target.append([feats], shadow=False)
        finally:
            target.close()
        return []

    try:
        donated = builder._donor(donor, None, build, spec.name) if spec.first_stage == "asmk" else None
        result = builder._build(out, spec, opts, fill, lambda: create_extractors(spec, opts)[0], donated, None,
                                False, 2)
        result.collection.close()
    finally:
        for c in cols:
            c.close()
    print(f"  {len(ds.db_names) - len(extracted)} features copied, {len(extracted)} extracted", file=sys.stderr)


def _run_file(index: Path, settings: dict[str, Any], ds: RetrievalDataset) -> Path:
    key = json.dumps({"settings": settings, "queries": ds.query_names, "boxes": ds.query_boxes}, sort_keys=True)
    return index.parent.parent / "runs" / f"{index.name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def run_candidates(name: str, ds: RetrievalDataset, candidates: list[dict[str, Any]], cache: Path,
                   data: Path, reuse: bool = False) -> list[Run]:
    """Every candidate on one set; query features extracted once per index (timed), shared by candidates.
    ``reuse``: a candidate's result (scores, per-query ms, load average when measured) is kept in the cache
    and read back by later runs instead of being measured again."""
    runs: list[Run | None] = [None] * len(candidates)
    by_build: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        by_build.setdefault(json.dumps(split_settings(c)[0], sort_keys=True), []).append(i)
    for build_json, members in by_build.items():
        index = index_for(name, ds, json.loads(build_json), cache, data)
        files = {ci: _run_file(index, split_settings(candidates[ci])[1], ds) for ci in members}
        if reuse:
            for ci, file in files.items():
                if file.is_file():
                    stored = json.loads(file.read_text())
                    runs[ci] = Run(stored["setups"], stored["shortlist_setups"], stored["ms"], stored["load"])
            members = [ci for ci in members if runs[ci] is None]
            if not members:
                continue
        collection = Collection.open(index)
        try:
            extractor = Searcher(collection)
            mapping = name_map(collection.names, ds.db_names)
            queries, t_extract = [], []
            with feature_cache.disabled():
                for i, qpath in enumerate(ds.query_paths):
                    t0 = time.perf_counter()
                    queries.append(extractor.query_features(qpath, ds.query_box(i)))
                    t_extract.append(1000 * (time.perf_counter() - t0))
            for ci in members:
                searcher = Searcher(collection, settings=split_settings(candidates[ci])[1])
                full, short, t_fs, t_ver = [], [], [], []
                for q in queries:
                    t0 = time.perf_counter()
                    first = searcher.search_features(q, top=len(collection), rerank_top=0)
                    t1 = time.perf_counter()
                    hits = searcher.search_features(q, top=len(collection))
                    t2 = time.perf_counter()
                    t_fs.append(1000 * (t1 - t0))
                    t_ver.append(max(0.0, 1000 * ((t2 - t1) - (t1 - t0))))
                    full.append(hits_to_ranking(hits, mapping))
                    short.append(hits_to_ranking(first, mapping))
                runs[ci] = Run(_maps(full, ds), _maps(short, ds),
                               {"extract": t_extract, "first stage": t_fs, "verify": t_ver}, os.getloadavg()[0])
                if reuse:
                    files[ci].parent.mkdir(parents=True, exist_ok=True)
                    files[ci].write_text(json.dumps(dataclasses.asdict(runs[ci])))
                print(f"  {name:<7} {candidate_name(candidates[ci]):<40} M {100 * runs[ci].setups['medium']:5.1f}",
                      file=sys.stderr, flush=True)
        finally:
            collection.close()
    return [r for r in runs if r is not None]


def _maps(rankings: list[np.ndarray], ds: RetrievalDataset) -> dict[str, float]:
    return {k: v.map for k, v in evaluate_setups(pad_rankings(rankings), ds.gnd).items()}


def select(medium: dict[str, list[float]], sets: list[str]) -> dict[str, Any]:
    """Leave-one-group-out selection on Medium mAP (module docstring). ``medium[set][candidate]``."""
    n = len(next(iter(medium.values())))
    groups = list(dict.fromkeys(GROUPS[s] for s in sets))
    folds = {}
    for g in groups:
        train = [s for s in sets if GROUPS[s] != g]
        scores = [float(np.mean([medium[s][c] for s in train])) for c in range(n)] if train else [0.0] * n
        folds[g] = {"held_out": [s for s in sets if GROUPS[s] == g], "train": train, "scores": scores,
                    "chosen": int(np.argmax(scores))}
    votes = Counter(f["chosen"] for f in folds.values())
    top = max(votes.values())
    tied = [c for c, v in votes.items() if v == top]
    final = max(tied, key=lambda c: (np.mean([f["scores"][c] for f in folds.values()]), -c))
    return {"folds": folds, "votes": dict(votes), "final": final}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--candidates", default=None, help="JSON list of --set mappings, or a file holding one")
    ap.add_argument("--cache", type=Path, default=bf.DEFAULT_CACHE, help="indexes and features (outside the repo)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--method", default=None, help="the method whose settings are chosen (default: the default)")
    ap.add_argument("--feature-cache", action="store_true", help="extract each database image once per extractor "
                    "setting (benchmarks/feature_cache.py)")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep results in the cache and reuse them (timings then "
                    "come from the run that measured them; default: everything measured in this run)")
    ap.add_argument("--only-candidates", action="store_true", help="with --reuse: only run the candidates on the "
                    "sets (fills the cache; several such runs on disjoint sets can share a machine), no tables")
    args = ap.parse_args()
    global METHOD
    METHOD = args.method or METHOD
    if args.feature_cache:
        feature_cache.install(args.cache)
    os.environ.setdefault("GLOCAL_PROGRESS", "0")
    sets = args.sets.split(",")
    if args.candidates is None:
        candidates = default_grid()
    else:
        text = Path(args.candidates).read_text() if Path(args.candidates).is_file() else args.candidates
        candidates = json.loads(text)
    load_start, t_start = os.getloadavg(), time.time()
    datasets = {s: load_set(s, args.cache, args.data) for s in sets}
    runs = {s: run_candidates(s, datasets[s], candidates, args.cache, args.data, args.reuse) for s in sets}
    if args.only_candidates:
        return
    chosen = select({s: [r.setups["medium"] for r in runs[s]] for s in sets}, sets)
    brute, forcer = {}, bf.BruteForce(bf.FeatureCache(args.cache), reuse=args.reuse)
    for s in sets:  # a +d twin reuses the pairs its plain set computed
        print(f"  brute force on {s}", file=sys.stderr, flush=True)
        brute[s] = forcer.run(datasets[s])
    result = selection_report.collect(sets, candidates, runs, chosen, brute, datasets)
    result["load average"] = {"start": [round(v, 2) for v in load_start],
                              "end": [round(v, 2) for v in os.getloadavg()]}
    result["wall s"] = round(time.time() - t_start)
    result["command"] = " ".join(["python", *sys.argv])
    if args.reuse:
        result["measured at load (1-min)"] = {
            "default and shortlist": {s: round(runs[s][chosen["final"]].load, 1) for s in sets},
            "brute force (per query, reused)": [round(v, 1) for v in forcer.loads]}
    print_and_save(selection_report.markdown(result), result, args.markdown, args.json)


def print_and_save(text: str, result: dict, markdown: Path | None, json_path: Path | None) -> None:
    """Print a benchmark's markdown table and write it, and its result as JSON, where asked."""
    print(text)
    if markdown:
        markdown.write_text(text)
    if json_path:
        json_path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
