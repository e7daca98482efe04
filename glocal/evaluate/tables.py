"""Results tables in the papers' format and the evaluation JSON file.

Table: one row per method, columns ``ROxf M``, ``ROxf H``, ``RPar M``, ``RPar H``, then the ``+1M``
columns when any row has them (optionally each followed by mP@10). Values are percentages with one
decimal; a missing result prints as ``-``.

JSON (``results_json``): ``{"easy": {"map": 81.2, "mp": {"1": .., "5": .., "10": ..}}, "medium": ..,
"hard": .., "settings": {...}}`` with percentages (the dataclasses hold fractions).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glocal.evaluate.protocol import SetupResult

#: Short names used by the papers, and the column order.
DATASET_LABELS: dict[str, str] = {
    "roxford5k": "ROxf", "rparis6k": "RPar", "roxford5k+1m": "ROxf+1M", "rparis6k+1m": "RPar+1M",
}
SETUP_LETTERS: dict[str, str] = {"easy": "E", "medium": "M", "hard": "H", "all": "all"}
Results = Mapping[str, Mapping[str, Mapping[str, SetupResult]]]  # method -> dataset -> setup -> result


def dataset_label(key: str) -> str:
    """``roxford5k`` -> ``ROxf``, ``rparis6k+1m`` -> ``RPar+1M``; other names keep their spelling."""
    if key in DATASET_LABELS:
        return DATASET_LABELS[key]
    base, plus, rest = key.partition("+")
    return DATASET_LABELS.get(base, base) + (plus + ("1M" if rest == "1m" else rest) if plus else "")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def table_rows(results: Results, setups: Sequence[str] = ("medium", "hard"),
               with_mp10: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings, percentages) of the results table; shared by text, markdown and rich."""
    datasets: list[str] = []
    for per_dataset in results.values():
        for key in per_dataset:
            if key not in datasets:
                datasets.append(key)
    order = list(DATASET_LABELS)
    first_seen = {k: i for i, k in enumerate(datasets)}
    datasets.sort(key=lambda k: (order.index(k) if k in order else len(order), first_seen[k]))
    columns: list[tuple[str, str, str]] = []  # dataset, setup, "map" | "mp10"
    for key in datasets:
        present = {s for per in results.values() for s in per.get(key, {})}
        chosen = [s for s in setups if s in present] or sorted(present)
        for s in chosen:
            columns.append((key, s, "map"))
            if with_mp10:
                columns.append((key, s, "mp10"))
    header = ["Method"] + [
        f"{dataset_label(d)} {SETUP_LETTERS.get(s, s)}" + (" mP@10" if what == "mp10" else "")
        for d, s, what in columns
    ]
    rows = []
    for method, per_dataset in results.items():
        cells = [method]
        for d, s, what in columns:
            r = per_dataset.get(d, {}).get(s)
            if r is None:
                cells.append("-")
            else:
                cells.append(_pct(r.map if what == "map" else r.mp.get(10)))
        rows.append(cells)
    return header, rows


def format_table(results: Results, setups: Sequence[str] = ("medium", "hard"),
                 with_mp10: bool = False, style: str = "markdown") -> str:
    """The results table as ``markdown`` (pipes) or ``text`` (aligned columns)."""
    header, rows = table_rows(results, setups, with_mp10)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: list[str], sep: str) -> str:
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return sep.join(parts)

    if style == "markdown":
        rule = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]
        body = [line(header, " | "), " | ".join(rule), *(line(r, " | ") for r in rows)]
        return "\n".join(f"| {b} |" for b in body)
    if style == "text":
        body = [line(header, "  "), "  ".join("-" * w for w in widths), *(line(r, "  ") for r in rows)]
        return "\n".join(body)
    raise ValueError(f"unknown table style {style!r}; expected 'markdown' or 'text'")


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(100.0 * value, 4)


def results_dict(setups: Mapping[str, SetupResult], settings: Mapping[str, Any],
                 query_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON document as a dict: percentages, ``null`` for undefined values.

    :param query_names: when given, each setup also gets ``"ap"``: per-query AP (percent) by name.
    """
    out: dict[str, Any] = {}
    for name, r in setups.items():
        entry: dict[str, Any] = {"map": _json_number(r.map), "mp": {str(k): _json_number(v) for k, v in r.mp.items()},
                                 "n_queries": r.n_valid}
        if query_names is not None:
            entry["ap"] = {q: _json_number(float(a)) for q, a in zip(query_names, r.aps, strict=True)}
        out[name] = entry
    out["settings"] = dict(settings)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def results_json(path: str | Path, setups: Mapping[str, SetupResult], settings: Mapping[str, Any],
                 query_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the results JSON (percentages plus ``settings``) to ``path`` and return the dict."""
    doc = results_dict(setups, settings, query_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_jsonable, allow_nan=False) + "\n", encoding="utf-8")
    return doc


def load_results_json(path: str | Path) -> tuple[dict[str, SetupResult], dict[str, Any]]:
    """Read a file written by :func:`results_json` back into fractions (for tables of several runs).

    Per-query values come back only when the file has them (``aps``), else ``aps`` and ``prs`` are empty.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read results JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise TypeError(f"{path}: expected a JSON object of setups, found {type(doc).__name__}")
    setups: dict[str, SetupResult] = {}
    for name, entry in doc.items():
        if name == "settings":
            continue
        if not isinstance(entry, dict) or "map" not in entry:
            raise ValueError(f"{path}: setup {name!r} has no 'map'")

        def frac(v: Any) -> float:
            return float("nan") if v is None else float(v) / 100.0

        mp = {int(k): frac(v) for k, v in entry.get("mp", {}).items()}
        aps = np.array([frac(v) for v in entry.get("ap", {}).values()], dtype=np.float64)
        setups[name] = SetupResult(map=frac(entry["map"]), aps=aps, mp=mp,
                                   prs=np.zeros((0, len(mp))), kappas=tuple(mp))
    return setups, dict(doc.get("settings", {}))
