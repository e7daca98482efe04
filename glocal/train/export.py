"""Export of a trained network: one weights file the method loads, and its model card.

``RUN/model.pt``: ``{"format": "glocal/<family>/<version>", "config": {...}, "state_dict": {...},
"card": "<json>"}`` written with ``torch.save`` and read back with ``torch.load(weights_only=True)``
(:func:`glocal.models.checkpoints.read_tensors`), so ``--set checkpoint=RUN/model.pt`` (or ``--checkpoint``)
gives the method's extractor the trained weights. ``<family>`` is the network's ``checkpoint_family`` (else its
class name in lower case), as :func:`glocal.models.checkpoints.save_checkpoint` writes it.

``RUN/model_card.json`` and ``RUN/MODEL_CARD.md``: the method and its options, the data (source, images,
classes, skipped files), the training settings and steps, the held-out evaluations, the command.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glocal.io.atomic import write_json_atomic
from glocal.models.checkpoints import FORMAT_VERSION


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, paths -> str, containers recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def export_model(network: nn.Module, run: str | Path, card: dict[str, Any],
                 save: Callable[[Path, dict[str, Any]], None] | None = None) -> Path:
    """Write ``RUN/model.pt`` and the model card (module docstring); returns the weights file.

    :param save: writes the weights file itself, given its path and the card, for a network with a file format
        of its own (the landmark detector's, :func:`glocal.models.detector.save_detector`)."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    card = _clean(card)
    family = getattr(network, "checkpoint_family", type(network).__name__.lower())
    config = card.get("options", {}).get("extractor", {})
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    path = run / "model.pt"
    tmp = path.with_name(path.name + ".tmp")
    if save is not None:
        save(tmp, card)
    else:
        torch.save({"format": f"glocal/{family}/{FORMAT_VERSION}", "config": config, "state_dict": state,
                    "card": json.dumps(card)}, tmp)
    os.replace(tmp, path)
    card["weights"] = str(path)
    write_json_atomic(run / "model_card.json", card)
    (run / "MODEL_CARD.md").write_text(card_markdown(card), encoding="utf-8")
    return path


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as a short markdown page (``metrics``: the names of the evaluations' values, mAP by
    default; ``load_with``: how the weights are loaded)."""
    data = card.get("data", {})
    evals = card.get("evaluations", [])
    metrics = card.get("metrics", ["mAP"])
    held = card.get("held_out", {})
    if "boxes" in data:  # a box file (detector regime)
        what = f"{data.get('images', '?')} images, {data.get('boxes', '?')} boxes, {data.get('skipped', 0)} files skipped"
    else:
        skipped = len(card.get("skipped_files", ())) or data.get("skipped", 0)
        what = (f"{data.get('images', '?')} images, {data.get('classes', '?')} classes, {skipped} "
                f"files skipped, {data.get('single_image_classes', 0)} single-image classes")
    lines = [f"# {card.get('method', '?')} fine-tuned with glocal train", "",
             f"- weights: `{card.get('weights', '')}` (load with `{card.get('load_with', '--set checkpoint=FILE')}`)",
             f"- regime: {card.get('regime', '?')}; steps: {card.get('steps', '?')}; "
             f"started from: {card.get('init') or 'the method defaults'}",
             f"- data: {data.get('source', '?')}: {what}",
             f"- held out: {held['images']} images" if "images" in held and "classes" not in held
             else f"- held out: {held.get('classes', 0)} classes",
             f"- command: `{card.get('command', '')}`", "", f"## Held-out {', '.join(metrics)}", ""]
    if evals:
        lines += ["| step | " + " | ".join(metrics) + " |", "|---:|" + "---:|" * len(metrics)]
        lines += ["| " + " | ".join([str(s)] + ["n/a" if m is None else f"{100 * m:.2f}" for m in ms]) + " |"
                  for s, *ms in evals]
    else:
        lines.append("no evaluation (nothing held out, or --eval-every 0)")
    lines += ["", "## Training settings", "", "```json", json.dumps(card.get("train", {}), indent=1), "```", ""]
    return "\n".join(lines)
