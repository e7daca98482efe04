"""Loading model weights: our own files, the official TensorFlow DELG release, the PyTorch DOLG port.

Every file is read without executing code: ``torch.load(..., weights_only=True)`` or ``np.load(...,
allow_pickle=False)``. A checkpoint that does not fit raises :class:`CheckpointMismatchError` listing the
missing, unexpected and mis-shaped parameters and naming the file. Sources (``source=``):

``glocal``
    ``{"format": "glocal/<family>/1", "config": {...}, "state_dict": {...}}`` written by
    :func:`save_checkpoint`, or a bare state dict with our parameter names.

``tf-delg``
    The TF2 DELG model of ``tensorflow/models`` ``research/delf`` (``delg_model.Delg``, ResNet-50 from
    ``training/model/resnet50.py``), as an ``.npz`` of its variables. TF cannot be imported here; convert
    once with TensorFlow::

        r = tf.train.load_checkpoint("r50delg_gld_20200814/variables/variables")  # or a training ckpt
        np.savez("r50delg.npz", **{n: r.get_tensor(n) for n in r.get_variable_to_shape_map()})

    Names are the object paths of the Keras model (``[_model/]backbone/l4c/conv2b/kernel[/.ATTRIBUTES/
    VARIABLE_VALUE]``); Keras layer names (``res4c_branch2b/kernel``, ``bn4c_branch2b/gamma``,
    ``attn_conv1``, ``autoenc_conv1``, ``att_fc``) are accepted too. Mapping (ours <- TF):

    ==========================================  =============================================
    ``backbone.conv1`` / ``backbone.bn1``       ``backbone/conv1``, ``backbone/bn_conv1``
    ``backbone.layer{s-1}.{b}.conv1|2|3``       ``backbone/l{s}{a,b,..}/conv2a|conv2b|conv2c``
    ``backbone.layer{s-1}.{b}.bn1|2|3``         ``backbone/l{s}{a,b,..}/bn2a|bn2b|bn2c``
    ``backbone.layer{s-1}.0.downsample.0|1``    ``backbone/l{s}a/conv_shortcut|bn_shortcut``
    ``whiten`` (2048 -> 2048 FC)                ``backbone/embedding_layer``
    ``attention.conv1|bn|conv2``                ``attention/conv1|bn_conv1|conv2``
    ``autoencoder.encoder|decoder``             ``autoencoder/conv1|conv2``
    ``arcface.weight`` (C, 2048)                ``cosine_weights`` (2048, C), transposed
    ``attention_classifier`` (1024 -> C)        ``attn_classification``
    ==========================================  =============================================

    Values: conv ``kernel`` HWIO -> OIHW (``permute(3, 2, 0, 1)``), dense ``kernel`` (in, out) ->
    (out, in); batch norm ``gamma, beta, moving_mean, moving_variance`` -> ``weight, bias, running_mean,
    running_var``. ``scale_factor`` (ArcFace scale, 45.25) is not a weight here and is ignored. The
    model must be built with ``backbone_style="tf"`` (Keras layer layout), ``block3_strides=True`` and
    ``attention_batchnorm=True``, and fed ``preprocessing="tf"`` to reproduce the official features.

``dolg-port``
    The public PyTorch DOLG port (``feymanpriv/DOLG``, pycls ResNet), a ``.pyth`` dict with
    ``model_state``. Mapping (ours <- port): ``backbone.conv1|bn1`` <- ``globalmodel.stem.conv|bn``;
    ``backbone.layer{k}.{j-1}.conv1|bn1|conv2|bn2|conv3|bn3|downsample.0|downsample.1`` <-
    ``globalmodel.s{k}.b{j}.f.a|f.a_bn|f.b|f.b_bn|f.c|f.c_bn|proj|bn``; ``local_conv|local_bn|
    attention_conv`` <- ``localmodel.conv1|bn|conv2``; ``multi_atrous.pointwise|dilated.{0,1,2}|
    image_pool|fuse`` <- ``localmodel.aspp.aspp.0|aspp.{1,2,3}|im_pool.1|conv_after.0``; ``global_pool.p``
    <- ``pool_g.p``; ``global_fc`` <- ``fc_t``; ``fusion_fc`` <- ``fc``; ``arcface.weight`` <-
    ``desc_cls.weight`` (``desc_cls.t`` ignored). The port's released code has the multi-atrous module
    commented out: build with ``multi_atrous=False`` (the error says so) and ``preprocessing=
    "imagenet-bgr"``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from glocal.errors import BadCheckpointError
from glocal.io.versions import current

FORMAT_VERSION = current("glocal-checkpoint")
_HEADS = ("arcface.", "attention_classifier.")


class CheckpointError(BadCheckpointError):
    """A checkpoint file that cannot be read safely, or of an unknown kind."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose parameters do not fit the model."""

    def __init__(self, path: Path | str, source: str, missing: list[str], unexpected: list[str],
                 misshaped: list[str], hint: str = "") -> None:
        self.path, self.source = str(path), source
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped

        def show(items: list[str]) -> str:
            return ", ".join(items[:25]) + (f", ... ({len(items)} in all)" if len(items) > 25 else "") or "none"

        super().__init__(
            f"{path}: checkpoint ({source}) does not fit the model: {len(missing)} missing [{show(missing)}]; "
            f"{len(unexpected)} unexpected [{show(unexpected)}]; {len(misshaped)} mis-shaped [{show(misshaped)}]"
            + (f". Hint: {hint}" if hint else "")
        )


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did: the source kind, tensors loaded, names deliberately ignored."""

    path: str
    source: str
    loaded: int
    ignored: tuple[str, ...]


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` in our versioned format (its ``config`` dataclass is stored beside the weights)."""
    family = getattr(model, "checkpoint_family", type(model).__name__.lower())
    config = asdict(model.config) if hasattr(model, "config") else {}
    torch.save({"format": f"glocal/{family}/{FORMAT_VERSION}", "config": config,
                "state_dict": model.state_dict()}, Path(path))


def read_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(name -> tensor, metadata) from ``.npz`` or a torch file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.array(z[k])) for k in z.files}, {}
        except (OSError, ValueError, TypeError, EOFError) as exc:  # a torch file named .npz: TypeError
            raise CheckpointError(f"{path}: not a readable .npz of arrays ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle / runtime errors of several kinds
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    meta: dict = {}
    if isinstance(obj.get("format"), str):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj.get("state_dict", {})
    elif isinstance(obj.get("model_state"), dict):  # pycls (DOLG port)
        obj = obj["model_state"]
    elif isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors, meta


# -- TensorFlow DELG names ---------------------------------------------------------------------------
_TF_ROOTS = ("backbone", "attention", "autoencoder", "cosine_weights", "attn_classification", "scale_factor")
_TF_SKIP = (".OPTIMIZER_SLOT", "optimizer/", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH", "global_step")
_KERAS_CONV = re.compile(r"^res(\d)([a-z])_branch(2a|2b|2c|1)$")
_KERAS_BN = re.compile(r"^bn(\d)([a-z])_branch(2a|2b|2c|1)$")
_KERAS_ALIASES = {"attn_conv1": "attention/conv1", "attn_conv2": "attention/conv2",
                  "autoenc_conv1": "autoencoder/conv1", "autoenc_conv2": "autoencoder/conv2",
                  "embedding_layer": "backbone/embedding_layer", "att_fc": "attn_classification"}
_TF_ATTR = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
            "moving_mean": "running_mean", "moving_variance": "running_var"}
_RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def canonical_tf_name(name: str) -> str | None:
    """Object-path form ``backbone/l2a/conv2a/kernel`` of a TF variable name; ``None`` for optimizer
    state and bookkeeping variables. Unknown names come back unchanged (reported as unexpected)."""
    if any(s in name for s in _TF_SKIP):
        return None
    name = name.removesuffix("/.ATTRIBUTES/VARIABLE_VALUE").split(":")[0]
    parts = [p for p in name.split("/") if p]
    for p in parts[:-1]:
        for pattern, kind in ((_KERAS_CONV, "conv"), (_KERAS_BN, "bn")):
            m = pattern.match(p)
            if m:
                layer = {"2a": f"{kind}2a", "2b": f"{kind}2b", "2c": f"{kind}2c", "1": f"{kind}_shortcut"}[m[3]]
                return f"backbone/l{m[1]}{m[2]}/{layer}/{parts[-1]}"
        if p in _KERAS_ALIASES:
            return f"{_KERAS_ALIASES[p]}/{parts[-1]}"
    if len(parts) == 2 and parts[0] in ("conv1", "bn_conv1"):
        return f"backbone/{parts[0]}/{parts[1]}"
    for i, p in enumerate(parts):
        if p in _TF_ROOTS:
            return "/".join(parts[i:])
    return name


def tf_delg_layer_map(depth: int = 50) -> dict[str, str]:
    """TF DELG layer path -> our module path (without the weight attribute)."""
    layers = {"backbone/conv1": "backbone.conv1", "backbone/bn_conv1": "backbone.bn1",
              "backbone/embedding_layer": "whiten", "attention/conv1": "attention.conv1",
              "attention/bn_conv1": "attention.bn", "attention/conv2": "attention.conv2",
              "autoencoder/conv1": "autoencoder.encoder", "autoencoder/conv2": "autoencoder.decoder",
              "attn_classification": "attention_classifier"}
    for stage, blocks in zip((2, 3, 4, 5), _RESNET_BLOCKS[depth]):
        for b in range(blocks):
            tf, ours = f"backbone/l{stage}{chr(ord('a') + b)}", f"backbone.layer{stage - 1}.{b}"
            for i, part in enumerate("abc", start=1):
                layers[f"{tf}/conv2{part}"] = f"{ours}.conv{i}"
                layers[f"{tf}/bn2{part}"] = f"{ours}.bn{i}"
            if b == 0:
                layers[f"{tf}/conv_shortcut"] = f"{ours}.downsample.0"
                layers[f"{tf}/bn_shortcut"] = f"{ours}.downsample.1"
    return layers


def convert_tf_delg(tensors: dict[str, Tensor], depth: int = 50) -> tuple[dict[str, Tensor], dict[str, str], list[str], list[str]]:
    """TF DELG variables -> (our state, our name -> TF name, unexpected TF names, ignored TF names)."""
    if depth != 50:
        raise CheckpointError(f"checkpoints.py: the TF DELG release defines ResNet-50 only, asked for ResNet-{depth}")
    layers = tf_delg_layer_map(depth)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unexpected, ignored = [], []
    for raw, value in tensors.items():
        name = canonical_tf_name(raw)
        if name is None or name == "scale_factor":
            ignored.append(raw)
            continue
        if name == "cosine_weights":
            out["arcface.weight"], origin["arcface.weight"] = value.t().contiguous(), raw
            continue
        layer, _, attr = name.rpartition("/")
        if layer not in layers or attr not in _TF_ATTR:
            unexpected.append(raw)
            continue
        if attr == "kernel":
            value = value.permute(3, 2, 0, 1) if value.ndim == 4 else value.t()
        ours = f"{layers[layer]}.{_TF_ATTR[attr]}"
        out[ours], origin[ours] = value.contiguous(), raw
    return out, origin, unexpected, ignored


# -- PyTorch DOLG port names -------------------------------------------------------------------------
_DOLG_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(p), f) for p, f in [
        (r"^globalmodel\.stem\.conv\.(.+)$", lambda m: f"backbone.conv1.{m[1]}"),
        (r"^globalmodel\.stem\.bn\.(.+)$", lambda m: f"backbone.bn1.{m[1]}"),
        (r"^globalmodel\.s(\d)\.b(\d+)\.f\.(a|b|c)(_bn)?\.(.+)$",
         lambda m: f"backbone.layer{m[1]}.{int(m[2]) - 1}.{'bn' if m[4] else 'conv'}{'abc'.index(m[3]) + 1}.{m[5]}"),
        (r"^globalmodel\.s(\d)\.b(\d+)\.proj\.(.+)$", lambda m: f"backbone.layer{m[1]}.{int(m[2]) - 1}.downsample.0.{m[3]}"),
        (r"^globalmodel\.s(\d)\.b(\d+)\.bn\.(.+)$", lambda m: f"backbone.layer{m[1]}.{int(m[2]) - 1}.downsample.1.{m[3]}"),
        (r"^localmodel\.conv1\.(.+)$", lambda m: f"local_conv.{m[1]}"),
        (r"^localmodel\.bn\.(.+)$", lambda m: f"local_bn.{m[1]}"),
        (r"^localmodel\.conv2\.(.+)$", lambda m: f"attention_conv.{m[1]}"),
        (r"^localmodel\.aspp\.aspp\.0\.(.+)$", lambda m: f"multi_atrous.pointwise.{m[1]}"),
        (r"^localmodel\.aspp\.aspp\.([1-9])\.(.+)$", lambda m: f"multi_atrous.dilated.{int(m[1]) - 1}.{m[2]}"),
        (r"^localmodel\.aspp\.im_pool\.1\.(.+)$", lambda m: f"multi_atrous.image_pool.{m[1]}"),
        (r"^localmodel\.aspp\.conv_after\.0\.(.+)$", lambda m: f"multi_atrous.fuse.{m[1]}"),
        (r"^pool_g\.p$", lambda m: "global_pool.p"),
        (r"^fc_t\.(.+)$", lambda m: f"global_fc.{m[1]}"),
        (r"^fc\.(.+)$", lambda m: f"fusion_fc.{m[1]}"),
        (r"^desc_cls\.weight$", lambda m: "arcface.weight"),
    ]
]


def convert_dolg_port(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], list[str], list[str]]:
    """DOLG port state -> (our state, our name -> port name, unexpected port names, ignored port names)."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unexpected, ignored = [], []
    for raw, value in tensors.items():
        if raw == "desc_cls.t":
            ignored.append(raw)
            continue
        for pattern, rename in _DOLG_RULES:
            m = pattern.match(raw)
            if m:
                ours = rename(m)
                out[ours], origin[ours] = value, raw
                break
        else:
            unexpected.append(raw)
    return out, origin, unexpected, ignored


def detect_source(tensors: dict[str, Tensor], meta: dict) -> str:
    """``glocal``, ``tf-delg`` or ``dolg-port`` from the names in the file."""
    if str(meta.get("format", "")).startswith("glocal/"):
        return "glocal"
    names = list(tensors)
    if any(n.startswith("globalmodel.") for n in names):
        return "dolg-port"
    if any("/" in n for n in names):  # TF variable paths; our names use dots only
        return "tf-delg"
    return "glocal"


def _hint(model: nn.Module, source: str, missing: list[str], unexpected: list[str]) -> str:
    cfg = getattr(model, "config", None)
    hints = []
    if source == "tf-delg" and getattr(cfg, "backbone_style", "tf") != "tf":
        hints.append("TF DELG weights need backbone_style='tf' (and block3_strides=True, preprocessing='tf')")
    if source == "dolg-port" and any(k.startswith("multi_atrous.") for k in missing):
        hints.append("the file has no multi-atrous module (the port's is commented out): build with multi_atrous=False")
    if any(k.startswith("multi_atrous.pointwise") for k in unexpected):
        hints.append("the file's multi-atrous has a 1x1 branch: build with atrous_pointwise_branch=True")
    if any(k.startswith("attention.bn.") for k in missing + unexpected):
        hints.append("attention batch norm present in one side only: check attention_batchnorm")
    return "; ".join(hints)


def load_checkpoint(model: nn.Module, path: str | Path, source: str = "auto") -> LoadReport:
    """Load ``path`` into ``model`` (in place) after converting names and layouts; strict otherwise.

    Classifier heads present in the file but absent from an inference model are ignored (listed in
    the report); ``num_batches_tracked`` and the names in ``model.optional_checkpoint_keys`` may be
    absent from the file.

    :raises CheckpointMismatchError: missing / unexpected / mis-shaped parameters, naming the file.
    """
    path = Path(path)
    tensors, meta = read_tensors(path)
    if source == "auto":
        source = detect_source(tensors, meta)
    family = getattr(model, "checkpoint_family", None)
    if source == "glocal":
        fmt = str(meta.get("format", ""))
        if fmt and family and not fmt.startswith(f"glocal/{family}/"):
            raise CheckpointError(f"{path}: a {fmt!r} checkpoint cannot be loaded into a {family} model")
        mapped, origin, unexpected, ignored = dict(tensors), {k: k for k in tensors}, [], []
    elif source == "tf-delg":
        mapped, origin, unexpected, ignored = convert_tf_delg(tensors, getattr(model.config, "depth", 50))
    elif source == "dolg-port":
        mapped, origin, unexpected, ignored = convert_dolg_port(tensors)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint source {source!r} (glocal, tf-delg, dolg-port)")
    own = model.state_dict()
    for k in [k for k in mapped if k not in own and k.startswith(_HEADS)]:
        ignored.append(origin[k])
        del mapped[k]
    optional = {k for k in own if k.endswith("num_batches_tracked")} | set(getattr(model, "optional_checkpoint_keys", ()))
    missing = sorted(set(own) - set(mapped) - optional)
    unexpected = sorted(unexpected + [origin[k] for k in mapped if k not in own])
    misshaped = sorted(f"{origin[k]} -> {k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(path, source, missing, unexpected, misshaped, _hint(model, source, missing, unexpected))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=False)
    return LoadReport(str(path), source, len(mapped), tuple(sorted(ignored)))
