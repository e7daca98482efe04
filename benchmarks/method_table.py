"""Methods side by side in one run (issue 15, item 4): every set of ``benchmarks/retrieval_sets.py`` x every
method named, and the Oxford affine pairs.

    nice -n 10 python benchmarks/method_table.py [--methods sift,gem,aliked,xfeat,gem-aliked] [--sets ...]
        [--settings JSON|FILE] [--weights DIR] [--cache DIR] [--reuse] [--markdown out.md] [--json out.json]

Per set and method: mAP Easy / Medium / Hard (revisited protocol, queries cropped, whole database ranked),
milliseconds per query split into extraction, first stage and verification (means over the set's queries,
measured by ``default_selection.run_candidates``: query features extracted once, timed; the first stage run
alone, then with verification, the difference counted as verification), and index bytes per image (every file
of the index folder over its number of images). Indexes are built once per set and setting and kept in
``--cache`` (``default_selection.index_for``: a ``+d`` set copies its twin's features); database features are
extracted once per extractor setting across methods (``benchmarks/feature_cache.py``: ``gem`` and
``gem-aliked``'s GeM stage, ``aliked`` and ``gem-aliked``'s ALIKED stage share them). A method that is not
registered is skipped with the reason printed.

Settings: each method runs with its defaults plus ``--settings`` (JSON ``{"method": {"key": value}}``; a value
that is itself a mapping keyed by set group (``roxf``, ``rpar``, ``affine``, ``demo``) or ``"*"`` gives per-set
settings, e.g. a leave-one-set-out choice). Methods needing ALIKED weights get ``checkpoint`` from ``--weights``
for their ``variant``; ``aliked`` runs at ``max_side=640`` (its measured setting) unless told otherwise.

Oxford affine pairs: ``benchmarks/local_features.py``'s pairs and count (mutual nearest neighbours, correct
within 3 px under the ground-truth homography), here with each method's own extractor and settings (images
loaded at the method's ``max_side``, keypoints in original pixels); global-only methods have none.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import default_selection as sel  # noqa: E402
import feature_cache  # noqa: E402
import local_features as lf  # noqa: E402
from retrieval_sets import DATA, GROUPS, SETS, load_set  # noqa: E402

from glocal import methods  # noqa: E402
from glocal.errors import BadOptionError  # noqa: E402

DEFAULT_METHODS = ("sift", "gem", "aliked", "xfeat", "gem-aliked")
WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "aliked"
STAGES = ("extract", "first stage", "verify")
#: settings a method runs with unless --settings says otherwise
BASE = {"aliked": {"max_side": 640}}


def settings_for(method: str, set_name: str, given: dict[str, Any], weights: Path) -> dict[str, Any]:
    """The ``--set`` mapping of ``method`` on ``set_name`` (module docstring)."""
    raw = dict(BASE.get(method, {})) | dict(given.get(method, {}))
    per_set = {k: v for k, v in raw.items() if isinstance(v, dict)}
    out = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    out |= per_set.get("*", {}) | per_set.get(GROUPS[set_name], {})
    spec = methods.get(method)
    if "checkpoint" in spec.group_keys()["extractor"] and "variant" in spec.group_keys()["extractor"] \
            and "checkpoint" not in out and spec.needs_weights:
        out["checkpoint"] = str(weights / f"aliked-{out.get('variant', spec.extractor.variant)}.pth")
    return out


def index_bytes(index: Path) -> int:
    return sum(p.stat().st_size for p in index.rglob("*") if p.is_file())


def measure(method: str, set_name: str, settings: dict[str, Any], cache: Path, data: Path, reuse: bool
            ) -> dict[str, Any]:
    """One method on one set: mAP E / M / H (%), ms per query by stage, index bytes per image."""
    sel.METHOD = method
    ds = load_set(set_name, cache, data)
    index = sel.index_for(set_name, ds, sel.split_settings(settings)[0], cache, data)
    # today's search and re-ranking defaults where an index kept in the cache recorded others when it was built
    today = methods.get(method).defaults.to_dict()
    built = json.loads((index / "manifest.json").read_text())["options"]
    stale = {k: v for g in ("search", "rerank") for k, v in today[g].items() if built.get(g, {}).get(k, v) != v}
    run = sel.run_candidates(set_name, ds, [stale | settings], cache, data, reuse)[0]
    row = {"set": set_name, "method": method, "queries": ds.n_queries, "database": ds.n_database,
           "settings": settings, **{k: round(100 * float(run.setups[k]), 2) for k in sel.SETUPS},
           "ms": {k: round(float(np.mean(run.ms[k])), 1) for k in STAGES},
           "index bytes per image": round(index_bytes(index) / max(ds.n_database, 1)), "load (1-min)": round(run.load, 1)}
    print(f"  {set_name:<7} {method:<11} E/M/H {row['easy']:5.1f} {row['medium']:5.1f} {row['hard']:5.1f}  ms "
          + " / ".join(f"{row['ms'][k]:.0f}" for k in STAGES) + f"  {row['index bytes per image']} B/image",
          file=sys.stderr, flush=True)
    return row


def pairs(method: str, settings: dict[str, Any], affine: Path) -> list[dict[str, Any]]:
    """Tentative and correct matches per Oxford affine pair with ``method``'s local features."""
    from glocal.io.images import load_image

    spec = methods.get(method)
    ex = spec.create_extractor(spec.configure(settings).extractor)
    rows = []
    for name, p1, p2, h in lf.affine_pairs(affine):  # counts, not timings: the feature cache may serve them
        f1 = ex.extract(load_image(p1, max_side=ex.max_side), p1.name)
        f2 = ex.extract(load_image(p2, max_side=ex.max_side), p2.name)
        if len(f1.descriptors) == 0:
            return []
        matches = lf.mutual_nn(f1.descriptors.astype(np.float32), f2.descriptors.astype(np.float32))
        rows.append({"pair": name, "tentative": len(matches),
                     "correct": lf.correct_matches(f1.keypoints, f2.keypoints, matches, h)})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["| set | method | E | M | H | ms extract | ms first stage | ms verify | ms total | index bytes / image "
             "| load (1-min) when timed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ms = [r["ms"][k] for k in STAGES]
        lines.append(f"| {r['set']} ({r['queries']} q, {r['database']} db) | `{r['method']}` | {r['easy']:.1f} | "
                     f"{r['medium']:.1f} | {r['hard']:.1f} | {ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} | {sum(ms):.0f} | "
                     f"{r['index bytes per image']:,} | {r['load (1-min)']} |")
    with_pairs = [m for m, rows in result["pairs"].items() if rows]
    if with_pairs:
        lines += ["", "Oxford affine pairs, correct / tentative matches (mutual NN; correct within 3 px under the "
                  "ground-truth homography):", "", "| pair | " + " | ".join(f"`{m}`" for m in with_pairs) + " |",
                  "|---|" + "---|" * len(with_pairs)]
        for i, row in enumerate(result["pairs"][with_pairs[0]]):
            cells = [f"{result['pairs'][m][i]['correct']} / {result['pairs'][m][i]['tentative']}" for m in with_pairs]
            lines.append(f"| {row['pair']} | " + " | ".join(cells) + " |")
    for m, why in result["skipped"].items():
        lines.append(f"\nSkipped `{m}`: {why}")
    lines += ["", f"Load average at start {result['load average']['start']}, at end {result['load average']['end']}; "
              f"wall {result['wall s']} s; command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--settings", default="{}", help="JSON {method: {key: value}} or a file holding it")
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="folder of the ALIKED release files")
    ap.add_argument("--cache", type=Path, default=sel.bf.DEFAULT_CACHE, help="indexes and features (outside the repo)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-pairs", action="store_true", help="skip the Oxford affine pairs")
    ap.add_argument("--reuse", action="store_true", help="reuse results kept in the cache by an earlier run")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("GLOCAL_PROGRESS", "0")
    feature_cache.install(args.cache)
    given = json.loads(Path(args.settings).read_text() if Path(args.settings).is_file() else args.settings)
    load_start, t_start = os.getloadavg(), time.time()
    result: dict[str, Any] = {"rows": [], "pairs": {}, "skipped": {}}
    for m in args.methods.split(","):
        try:
            methods.get(m)
        except BadOptionError as exc:
            result["skipped"][m] = f"not registered ({exc})"
            print(f"skipping {m}: {result['skipped'][m]}", file=sys.stderr, flush=True)
            continue
        for s in args.sets.split(","):
            result["rows"].append(measure(m, s, settings_for(m, s, given, args.weights), args.cache, args.data,
                                          args.reuse))
        if not args.no_pairs:
            result["pairs"][m] = pairs(m, settings_for(m, "affine", given, args.weights), args.data / "oxford-affine")
    result["load average"] = {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]}
    result["wall s"] = round(time.time() - t_start)
    result["command"] = " ".join(["python", *sys.argv])
    sel.print_and_save(markdown(result), result, args.markdown, args.json)


if __name__ == "__main__":
    main()
