"""Checkpoints of a training run, shared by every regime: ``RUN/checkpoints/step-NNNNNNN.pt``, each written
under a temporary name and renamed, holding the regime's own state plus the optimiser, scheduler, gradient
scaler and every random state, so that a resumed run continues bit for bit (``--resume RUN``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from glocal.errors import BadInputError


def checkpoints(run: Path) -> list[Path]:
    """A run's checkpoint files, oldest first."""
    return sorted((Path(run) / "checkpoints").glob("step-*.pt"))


def save_state(run: Path, step: int, state: dict) -> Path:
    """Write ``state`` as the checkpoint of ``step`` (atomic: a crash leaves the previous checkpoints only)."""
    folder = Path(run) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:07d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def latest_state(run: Path, state_format: str, what: str) -> dict:
    """The newest checkpoint of ``run`` (``weights_only``), refused in one line when there is none or it is not
    a ``state_format`` state (``what`` names it in the message)."""
    found = checkpoints(run)
    if not found:
        raise BadInputError(f"{run}: no checkpoint to resume from (expected checkpoints/step-*.pt)")
    state = torch.load(found[-1], map_location="cpu", weights_only=True)
    if state.get("format") != state_format:
        raise BadInputError(f"{found[-1]}: not a {what} ({state_format})")
    return state


def optimisation_state(optimizer: Any, scheduler: Any, scaler: Any, generator: Any, device: torch.device) -> dict:
    """The optimiser, scheduler, scaler and random states (the regime adds its network and position)."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}}


def restore_optimisation(state: dict, optimizer: Any, scheduler: Any, scaler: Any, generator: Any,
                         device: torch.device) -> tuple[int, int, int]:
    """Load what :func:`optimisation_state` saved; returns the checkpoint's (step, epoch, position)."""
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    generator.set_state(state["rng"]["generator"])
    torch.set_rng_state(state["rng"]["torch"])
    if device.type == "cuda" and state["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), int(state["epoch"]), int(state["position"])
