"""What every backbone module offers the heads: :class:`FeatureBackbone` (named stage maps, their channels,
the layers on the way to each for the receptive-field walk) and reading a weights file into one."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from glocal.errors import BadCheckpointError
from glocal.models.backbones.catalog import STRIDE16, STRIDE32


class FeatureBackbone(nn.Module):
    """A network cut into stages; ``forward(x, outputs)`` returns the maps named in ``outputs`` and stops
    after the deepest. Subclasses set ``stages`` (in order, shallow to deep; they include :data:`STRIDE16` and,
    unless cut after it, :data:`STRIDE32`), ``channels`` and ``strides`` (per stage), and implement
    :meth:`stage_modules` (the modules of one stage, in order)."""

    stages: tuple[str, ...] = ()
    channels: dict[str, int]
    strides: dict[str, int]
    name = ""

    def stage_modules(self, stage: str) -> list[nn.Module]:
        raise NotImplementedError

    def stem_modules(self) -> list[nn.Module]:
        """Modules before the first stage."""
        return []

    def _check(self, outputs: Sequence[str]) -> None:
        unknown = [s for s in outputs if s not in self.stages]
        if unknown:
            raise ValueError(f"{self.name or type(self).__name__}: unknown or dropped stages {unknown}; "
                             f"available {self.stages}")

    def path_to(self, stage: str) -> list[nn.Module]:
        """The modules from the input to ``stage``'s output, in order (for receptive-field walks)."""
        self._check([stage])
        path = list(self.stem_modules())
        for s in self.stages[: self.stages.index(stage) + 1]:
            path.extend(self.stage_modules(s))
        return path

    def forward(self, x: Tensor, outputs: Sequence[str] = (STRIDE16, STRIDE32)) -> dict[str, Tensor]:
        """(B, 3, H, W) normalised images -> ``{stage: map}`` for the stages in ``outputs``."""
        self._check(outputs)
        last = max(self.stages.index(s) for s in outputs)
        for m in self.stem_modules():
            x = m(x)
        out: dict[str, Tensor] = {}
        for s in self.stages[: last + 1]:
            for m in self.stage_modules(s):
                x = m(x)
            if s in outputs:
                out[s] = x
        return out


def read_state_dict(path: str | Path, what: str) -> dict[str, Tensor]:
    """A state dict from ``path`` (``weights_only=True``; a ``{"state_dict": ...}`` wrapper and DataParallel's
    ``module.`` prefixes are removed); :class:`BadCheckpointError` names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise BadCheckpointError(f"{what}: weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise BadCheckpointError(f"{what}: {path} is not a readable weights file ({' '.join(str(exc).split())[:200]})"
                                 ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BadCheckpointError(f"{what}: {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching(model: nn.Module, state: dict[str, Tensor], what: str, path: str | Path,
                  ignore_prefixes: tuple[str, ...] = (), optional: frozenset[str] = frozenset()) -> None:
    """Load ``state`` into ``model``: every model key but ``optional`` must be in the file with its shape; file
    keys under ``ignore_prefixes`` (a classifier, stages the model dropped) are skipped; anything else is a
    :class:`BadCheckpointError` listing the missing / unexpected / mis-shaped names."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        raise BadCheckpointError(
            f"{what}: {path} does not fit the network: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}, mis-shaped {misshaped[:4]}")
    model.load_state_dict(state, strict=False)
