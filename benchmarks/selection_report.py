"""Tables of ``benchmarks/default_selection.py``: the collected result as JSON-able data, and as markdown."""
from __future__ import annotations

from typing import Any

import numpy as np

SETUPS = ("easy", "medium", "hard")
STAGES = ("extract", "first stage", "verify")


def _name(settings: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "(method defaults)"


def _row(setups: dict[str, float], ms: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {s: round(100 * float(setups[s]), 2) for s in SETUPS}
    row["ms"] = {k: round(float(np.mean(v)), 1) for k, v in ms.items()}
    return row


def collect(sets: list[str], candidates: list[dict[str, Any]], runs: dict[str, list[Any]], chosen: dict[str, Any],
            brute: dict[str, Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """Everything the tables show, percentages rounded to 2 decimals, ms as means over a set's queries."""
    final = chosen["final"]
    table = {}
    for s in sets:
        r = runs[s][final]
        no_verify = {"extract": r.ms["extract"], "first stage": r.ms["first stage"],
                     "verify": [0.0] * len(r.ms["verify"])}
        table[s] = {
            "queries": datasets[s].n_queries, "database": datasets[s].n_database,
            "brute force": _row({k: v.map for k, v in brute[s].setups.items()}, brute[s].ms),
            "default": _row(r.setups, r.ms),
            "default without verification": _row(r.shortlist_setups, no_verify),
        }
        table[s]["default >= brute force"] = all(table[s]["default"][k] >= table[s]["brute force"][k] for k in SETUPS)
    folds = {}
    for g, f in chosen["folds"].items():
        folds[g] = {"held out": f["held_out"], "chosen on": f["train"], "candidate": _name(candidates[f["chosen"]]),
                    "held-out figures": {s: _row(runs[s][f["chosen"]].setups, runs[s][f["chosen"]].ms)
                                         for s in f["held_out"]},
                    "selection score (mean Medium, %)": round(100 * f["scores"][f["chosen"]], 2)}
    return {
        "sets": sets,
        "candidates": [{"settings": c, "name": _name(c)} for c in candidates],
        "every candidate": {s: {_name(c): _row(runs[s][i].setups, runs[s][i].ms) for i, c in enumerate(candidates)}
                            for s in sets},
        "folds": folds,
        "votes": {_name(candidates[c]): v for c, v in chosen["votes"].items()},
        "final default": {"settings": candidates[final], "name": _name(candidates[final])},
        "table": table,
    }


def markdown(result: dict[str, Any]) -> str:
    """The issue's table, then the folds and every candidate's Medium mAP."""
    lines = [f"Final default (chosen by {max(result['votes'].values())} of {len(result['folds'])} folds): "
             f"`{result['final default']['name']}`", "",
             "| set | ranking | E | M | H | ms extract | ms first stage | ms verify | ms total |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, t in result["table"].items():
        for label in ("brute force", "default", "default without verification"):
            r = t[label]
            ms = [r["ms"][k] for k in STAGES]
            lines.append(f"| {s} ({t['queries']} q, {t['database']} db) | {label} | {r['easy']:.1f} "
                         f"| {r['medium']:.1f} | {r['hard']:.1f} | {ms[0]:.0f} | {ms[1]:.0f} | {ms[2]:.0f} "
                         f"| {sum(ms):.0f} |")
    below = [s for s, t in result["table"].items() if not t["default >= brute force"]]
    lines += ["", "Default at least brute force on E, M and H of every set: "
              + ("yes" if not below else f"**no** ({', '.join(below)})"), "",
              "Leave-one-set-out (a set and its +d twin held out together; Medium mAP of the other sets chooses):", "",
              "| held out | chosen on | candidate chosen | mean M on the others | held-out E / M / H |",
              "|---|---|---|---|---|"]
    for g, f in result["folds"].items():
        held = "; ".join(f"{s} {v['easy']:.1f} / {v['medium']:.1f} / {v['hard']:.1f}"
                         for s, v in f["held-out figures"].items())
        lines.append(f"| {g} | {', '.join(f['chosen on'])} | `{f['candidate']}` | "
                     f"{f['selection score (mean Medium, %)']:.1f} | {held} |")
    sets = result["sets"]
    lines += ["", "Medium mAP of every candidate (E / H and timings in the JSON):", "",
              "| candidate | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for c in result["candidates"]:
        lines.append(f"| `{c['name']}` | " + " | ".join(f"{result['every candidate'][s][c['name']]['medium']:.1f}"
                                                         for s in sets) + " |")
    measured = result.get("measured at load (1-min)")
    if measured:
        lines += ["", "Results reused from the cache (--reuse); 1-minute load average when each was measured: "
                  f"{measured}"]
    load = result.get("load average")
    if load:
        lines += ["", f"Load average at start {load['start']}, at end {load['end']}; wall {result.get('wall s')} s; "
                  f"command: `{result.get('command')}`"]
    return "\n".join(lines) + "\n"
