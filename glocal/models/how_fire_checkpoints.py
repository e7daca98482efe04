"""Checkpoints of HOW and FIRe: the official PyTorch releases and our own format, loaded safely.

Official layouts (read from the reference repositories gtolias/how and naver/fire):

* File: a dict ``{'epoch', 'meta', 'state_dict', 'optimizer', 'best_score', 'scores', 'net_params',
  '_version'}`` with ``_version`` ``'how/2020'`` or ``'fire/2021'``. Older HOW files have no
  ``_version`` / ``net_params``; their ``meta`` holds ``architecture, skip_layer, dim, feat_pool_k, mean,
  std`` and their whitening is named ``whiten.*`` instead of ``dim_reduction.*``.
* Backbone: ``features`` = ``nn.Sequential`` of torchvision ResNet children without ``avgpool, fc``
  and without the last block (``skip_layer = 1``): ``features.0`` conv1, ``features.1`` bn1 (2 relu and
  3 max-pool have no parameters), ``features.4/5/6`` = ``layer1/2/3``.
* Whitening o(.): ``dim_reduction.weight`` (128, 1024, 1, 1) and ``dim_reduction.bias`` (128,), a 1x1
  convolution; HOW's attention (L2 norm) and smoothing (3x3 average pooling) have no parameters.
* FIRe LIT (``lit.py``): ``lit.templates_init`` (1, N, d); ``lit.project_q/k/v.weight`` (d, d) without
  bias; ``lit.norm_inputs``, ``lit.norm_templates``, ``lit.norm_mlp`` layer norms (``.weight``, ``.bias``);
  ``lit.mlp.0`` (d/2, d) and ``lit.mlp.2`` (d, d/2) linear layers with bias.

Our format: ``{'_version': 'glocal-how-fire/1', 'method', 'config', 'state_dict'}`` with our own names; the
file ``glocal train how|fire`` exports, ``{'format': 'glocal/how/N' | 'glocal/fire/N', 'config', 'state_dict',
'card'}`` (:mod:`glocal.train.export`), is read the same way, its method being the family in ``format``.

Files are read with ``torch.load(..., weights_only=True)``; the official files also pickle a few
harmless non-tensor objects (``collections.defaultdict`` of validation scores, numpy scalars,
``pathlib`` paths), which are allowed through ``torch.serialization.safe_globals`` (a defaultdict comes
back as a plain dict). Anything else is refused with the list of the globals the file asks for.
"""
from __future__ import annotations

import builtins
import pathlib
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glocal.models.checkpoints import CheckpointError

GLOCAL_VERSION = "glocal-how-fire/1"

#: official prefix -> our prefix, for the R50- backbone (``features`` Sequential -> ResNetBackbone)
BACKBONE_PREFIXES: dict[str, str] = {
    "features.0.": "backbone.conv1.",
    "features.1.": "backbone.bn1.",
    "features.4.": "backbone.layer1.",
    "features.5.": "backbone.layer2.",
    "features.6.": "backbone.layer3.",
}
#: official whitening names (new HOW / FIRe, then old HOW) -> ours
WHITEN_NAMES: dict[str, str] = {
    "dim_reduction.weight": "whiten.weight",
    "dim_reduction.bias": "whiten.bias",
    "whiten.weight": "whiten.weight",
    "whiten.bias": "whiten.bias",
}
#: official FIRe LIT names -> ours (glocal.models.layers.lit)
LIT_NAMES: dict[str, str] = {
    "lit.templates_init": "lit.templates",
    "lit.project_q.weight": "lit.to_query.weight",
    "lit.project_k.weight": "lit.to_key.weight",
    "lit.project_v.weight": "lit.to_value.weight",
    "lit.norm_inputs.weight": "lit.norm_input.weight",
    "lit.norm_inputs.bias": "lit.norm_input.bias",
    "lit.norm_templates.weight": "lit.norm_query.weight",
    "lit.norm_templates.bias": "lit.norm_query.bias",
    "lit.norm_mlp.weight": "lit.mlp.0.weight",
    "lit.norm_mlp.bias": "lit.mlp.0.bias",
    "lit.mlp.0.weight": "lit.mlp.1.weight",
    "lit.mlp.0.bias": "lit.mlp.1.bias",
    "lit.mlp.2.weight": "lit.mlp.3.weight",
    "lit.mlp.2.bias": "lit.mlp.3.bias",
}
#: parameters a checkpoint may lack without harm
_OPTIONAL_SUFFIXES = (".num_batches_tracked",)
_OPTIONAL_KEYS = ("whiten.fitted",)


def _plain_dict(default_factory: Any = None) -> dict:
    """Stand-in for ``collections.defaultdict`` while unpickling: the data come back as a plain dict."""
    return {}


def _benign_globals() -> list[Any]:
    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    reconstruct = np._core.multiarray._reconstruct  # type: ignore[attr-defined]
    allowed: list[Any] = [
        (_plain_dict, "collections.defaultdict"), builtins.list, pathlib.PosixPath, pathlib.WindowsPath,
        pathlib.PurePosixPath, pathlib.PureWindowsPath, scalar, (scalar, "numpy.core.multiarray.scalar"),
        reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
    ]
    allowed += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                                 "Int32DType", "BoolDType", "UInt8DType") if hasattr(np.dtypes, n)]
    return allowed


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file with ``torch.load(weights_only=True)`` (plus the benign globals of the
    module docstring). A bare state dict is wrapped as ``{'state_dict': ...}``.

    :raises CheckpointError: missing file, unreadable file, or a pickle asking for other globals.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"how_fire_checkpoints.py: checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_benign_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - only used to improve the message
            wanted = []
        raise CheckpointError(
            f"how_fire_checkpoints.py: {path} cannot be read with weights_only=True; it pickles objects "
            f"beyond tensors ({', '.join(wanted) or 'see below'}). Re-save only its 'state_dict' "
            f"where you trust the file. Details: {str(exc).splitlines()[-1] if str(exc) else exc!r}"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"how_fire_checkpoints.py: {path} is not a readable PyTorch file ({exc})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"how_fire_checkpoints.py: {path} holds a {type(obj).__name__}, not a dict")
    obj = dict(obj)
    if not any(k in obj for k in ("state_dict", "model_state", "model")):
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            obj = {"state_dict": obj}
        else:
            raise CheckpointError(
                f"how_fire_checkpoints.py: {path} has no 'state_dict' / 'model_state' entry; top-level keys: "
                f"{sorted(map(str, obj))[:20]}"
            )
    return obj


def raw_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint (``state_dict``, else ``model_state``, else ``model``), with any
    DataParallel ``module.`` prefix removed."""
    for key in ("state_dict", "model_state", "model"):
        if key in ckpt and isinstance(ckpt[key], Mapping):
            return {str(k).removeprefix("module."): v for k, v in ckpt[key].items()}
    raise CheckpointError("how_fire_checkpoints.py: checkpoint has no state dict")


def detect_format(ckpt: Mapping[str, Any]) -> str:
    """``'glocal'``, ``'fire-official'`` or ``'how-official'`` (from the version tag, else the keys)."""
    version = str(ckpt.get("_version", ""))
    if version.startswith("glocal") or _exported_method(ckpt):
        return "glocal"
    keys = raw_state_dict(ckpt).keys()
    if version.startswith("fire") or any(k.startswith("lit.templates_init") for k in keys):
        return "fire-official"
    if version.startswith("how") or any(k.startswith("features.") for k in keys):
        return "how-official"
    return "unknown"


def _exported_method(ckpt: Mapping[str, Any]) -> str | None:
    """``how`` / ``fire`` for a file ``glocal train`` exported (``format`` ``glocal/<method>/N``), else None."""
    parts = str(ckpt.get("format", "")).split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "glocal" and parts[1] in ("how", "fire") else None


def convert_official_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official HOW / FIRe state dict to our parameter names (module docstring tables).

    The whitening's 1x1-convolution weight (k, D, 1, 1) becomes (k, D) and the templates (1, N, d)
    become (N, d). ``whiten.fitted`` is set. Returns the converted dict and the keys nobody knows.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key in WHITEN_NAMES:
            new = WHITEN_NAMES[key]
            if new == "whiten.weight" and value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value.flatten(1)
            out[new] = value
        elif key in LIT_NAMES:
            if key == "lit.templates_init" and value.ndim == 3 and value.shape[0] == 1:
                value = value[0]
            out[LIT_NAMES[key]] = value
        else:
            prefix = next((p for p in BACKBONE_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                unknown.append(key)
            else:
                out[BACKBONE_PREFIXES[prefix] + key[len(prefix):]] = value
    if "whiten.weight" in out:
        out["whiten.fitted"] = torch.tensor(True)
    return out, unknown


def official_hyper_parameters(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """Architecture facts an official checkpoint records: ``depth``, ``skip_layer``, ``output_dim``,
    ``smoothing_kernel`` (HOW), ``num_templates`` / ``iterations`` / ``lit_dim`` (FIRe), ``mean_std``.
    Absent facts are left out."""
    found: dict[str, Any] = {}
    params = ckpt.get("net_params") if isinstance(ckpt.get("net_params"), Mapping) else None
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    arch = (params or {}).get("architecture", meta.get("architecture"))
    if isinstance(arch, str) and arch.startswith("resnet") and arch[6:].isdigit():
        found["depth"] = int(arch[6:])
    if params is not None:
        if "skip_layer" in params:
            found["skip_layer"] = int(params["skip_layer"])
        if isinstance(params.get("dim_reduction"), Mapping) and "dim" in params["dim_reduction"]:
            found["output_dim"] = int(params["dim_reduction"]["dim"])
        smoothing = params.get("smoothing")
        if "smoothing" in params:
            found["smoothing_kernel"] = int(smoothing["kernel_size"]) if isinstance(smoothing, Mapping) else 0
        lit = params.get("lit")
        if isinstance(lit, Mapping):
            for ours, theirs in (("num_templates", "N"), ("iterations", "T"), ("lit_dim", "dim")):
                if theirs in lit:
                    found[ours] = int(lit[theirs])
        runtime = params.get("runtime")
        if isinstance(runtime, Mapping) and "mean_std" in runtime:
            found["mean_std"] = [list(map(float, v)) for v in runtime["mean_std"]]
    else:  # old HOW format
        for ours, theirs in (("skip_layer", "skip_layer"), ("output_dim", "dim"), ("smoothing_kernel", "feat_pool_k")):
            if theirs in meta:
                found[ours] = int(meta[theirs])
        if "mean" in meta and "std" in meta:
            found["mean_std"] = [list(map(float, meta["mean"])), list(map(float, meta["std"]))]
    return found


def check_against_model(state: Mapping[str, Tensor], model: nn.Module, path: str | Path) -> None:
    """Raise :class:`CheckpointError` listing missing / unexpected / mis-shaped parameters."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state)
                     if not k.endswith(_OPTIONAL_SUFFIXES) and k not in _OPTIONAL_KEYS)
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        def show(items: list[str]) -> str:
            return f"{len(items)} {items[:12]}{' ...' if len(items) > 12 else ''}"
        raise CheckpointError(
            f"how_fire_checkpoints.py: {path} does not fit the {type(model).__name__} model: "
            f"missing {show(missing)}; unexpected {show(unexpected)}; mis-shaped {show(misshaped)}"
        )


def load_into(model: nn.Module, path: str | Path, method: str, expected: Mapping[str, Any]) -> dict[str, Any]:
    """Load an official or glocal HOW / FIRe checkpoint into ``model`` (in place).

    :param model: a ``HowNet`` or ``FireNet`` (parameter names as in the module docstring).
    :param path: the checkpoint file.
    :param method: ``'how'`` or ``'fire'``; a FIRe file refused for HOW and vice versa.
    :param expected: our configuration's architecture facts (same keys as
        :func:`official_hyper_parameters`) checked against what the file records.
    :returns: a small info dict (``format``, ``version``, ``hyper_parameters``).
    :raises CheckpointError: unreadable file, wrong method, disagreeing hyper-parameters, or
        missing / unexpected / mis-shaped parameters.
    """
    ckpt = read_checkpoint(path)
    fmt = detect_format(ckpt)
    if fmt == "glocal":
        own_method = ckpt.get("method") or _exported_method(ckpt)
        if own_method != method:
            raise CheckpointError(f"how_fire_checkpoints.py: {path} is a glocal {own_method!r} checkpoint, "
                                  f"not {method!r}")
        state = raw_state_dict(ckpt)
        found = {k: v for k, v in dict(ckpt.get("config") or {}).items() if k in expected}
    elif fmt in ("how-official", "fire-official"):
        if fmt.split("-")[0] != method:
            raise CheckpointError(f"how_fire_checkpoints.py: {path} is an official {fmt.split('-')[0].upper()} "
                                  f"checkpoint; use method {fmt.split('-')[0]!r}, not {method!r}")
        raw = raw_state_dict(ckpt)
        state, unknown = convert_official_state_dict(raw)
        state.update({k: raw[k] for k in unknown})  # reported as unexpected below
        found = official_hyper_parameters(ckpt)
        if found.get("skip_layer", 1) != 1:
            raise CheckpointError(f"how_fire_checkpoints.py: {path} drops {found['skip_layer']} ResNet stages; "
                                  "only R50- / R101- (skip_layer = 1) is supported")
    else:
        raise CheckpointError(f"how_fire_checkpoints.py: {path} is neither an official HOW / FIRe checkpoint "
                              "nor a glocal one (no '_version', no 'features.*' / 'lit.*' parameters)")
    clashes = [f"{k} = {expected[k]!r} in the config but {found[k]!r} in the file"
               for k in expected if k in found and k != "mean_std" and found[k] != expected[k]]
    if clashes:
        raise CheckpointError(f"how_fire_checkpoints.py: {path} was trained with other settings: "
                              f"{'; '.join(clashes)}. Set those config fields to the file's values.")
    whitening_missing = not any(k.startswith("whiten.") for k in state)
    if whitening_missing:  # e.g. FIRe's ImageNet pre-training file: o(.) is fitted later
        own = model.state_dict()
        state.update({k: v for k, v in own.items() if k.startswith("whiten.")})
        warnings.warn(f"how_fire_checkpoints.py: {path} has no whitening (dim_reduction); o(.) must be fitted "
                      "before the descriptors mean anything", stacklevel=2)
    check_against_model(state, model, path)
    model.load_state_dict(state, strict=False)
    return {"format": fmt, "version": str(ckpt.get("_version", "")), "hyper_parameters": found}


def save_glocal_checkpoint(path: str | Path, model: nn.Module, method: str, config: Mapping[str, Any]) -> Path:
    """Write ``model`` in our format (``_version``, ``method``, ``config``, ``state_dict``); the config
    must hold plain values only (it is read back with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"_version": GLOCAL_VERSION, "method": method, "config": plain, "state_dict": state}, path)
    return path
