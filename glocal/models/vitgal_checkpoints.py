"""Checkpoints of ViTGaL: the names of the ViTGaL release converted to ours, and loading with exact checks.

The release has two model classes: ``XCiTRetrievalv2`` (the ViTGaL network; XCiT trunk at the top level,
``local_atrous`` the multi-atrous block, ``cls_attn_blocks.0`` / ``norm`` / ``head`` the class attention,
final norm and ArcFace weights) and ``XCiTRetrievalLocalReductionAE`` (the autoencoder, with the ViTGaL
network under ``retrieval_back_bone.``; there the top-level ``cls_token`` / ``cls_attn_blocks.0`` /
``norm`` / ``head`` are the autoencoder's). Our own files are :func:`glocal.models.checkpoints.save_checkpoint`
outputs or bare state dicts of :class:`glocal.models.vitgal.Vitgal`. This module knows the network only
through its state dict (any ``nn.Module`` with ViTGaL's parameter names), so the dependency runs one way:
:mod:`glocal.models.vitgal` imports the loader, never the reverse.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor, nn

from glocal.models.checkpoints import CheckpointMismatchError, LoadReport
from glocal.models.layers.class_attention import fuse_qkv
from glocal.models.layers.xcit import read_state_dict

_RELEASE_RULES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    (r"^(?:retrieval_back_bone\.)?(patch_embed|blocks)\.", r"backbone.\1."),
    (r"^(?:retrieval_back_bone\.)?pos_embeder\.", "backbone.pos_embed."),
    (r"^(?:retrieval_back_bone\.)?local_atrous\.", "multi_atrous."),
    (r"^retrieval_back_bone\.cls_token$", "cls_token"),
    (r"^retrieval_back_bone\.cls_attn_blocks\.0\.", "class_attention."),
    (r"^retrieval_back_bone\.norm\.", "norm."),
    (r"^retrieval_back_bone\.head\.weight$", "arcface.weight"),
    (r"^whitening_layer\.", "autoencoder.encoder."),
    (r"^ae_decoder_layer\.", "autoencoder.decoder."),
    (r"^cls_token$", "@cls_token"),
    (r"^cls_attn_blocks\.0\.", "@class_attention."),
    (r"^norm\.", "@norm."),
    (r"^head\.", "@head."),
]]


def convert_vitgal_release(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Names of the ViTGaL release (``XCiTRetrievalv2``, or ``XCiTRetrievalLocalReductionAE`` with the
    model under ``retrieval_back_bone.``) -> ours. In an autoencoder file the top-level ``cls_token``,
    ``cls_attn_blocks.0``, ``norm``, ``head`` are the autoencoder's; in a ViTGaL file the model's."""
    is_ae = any(k.startswith("retrieval_back_bone.") for k in tensors)
    out: dict[str, Tensor] = {}
    for name, value in fuse_qkv(tensors).items():
        new = name
        for pattern, repl in _RELEASE_RULES:
            if pattern.match(name):
                new = pattern.sub(repl, name, count=1)
                break
        if new.startswith("@"):
            new = new[1:]
            if is_ae:
                new = "autoencoder." + new.replace("head.", "classifier.")
            elif new.startswith("head."):
                new = "arcface." + new.removeprefix("head.")
        out[new] = value
    return out


def load_vitgal_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Load our ViTGaL checkpoint (``save_checkpoint`` / bare state dict) or the ViTGaL release's into
    ``model`` (a :class:`glocal.models.vitgal.Vitgal`, or any module with its parameter names).

    Classifier heads absent from an inference model are ignored; anything else must fit exactly.
    :raises CheckpointMismatchError: missing / unexpected / mis-shaped parameters, naming the file.
    """
    tensors = read_state_dict(path)
    release = any(k.startswith(("local_atrous.", "retrieval_back_bone.", "pos_embeder.")) for k in tensors)
    source = "vitgal-release" if release else "glocal"
    mapped = convert_vitgal_release(tensors) if release else fuse_qkv(tensors)
    own = model.state_dict()
    heads = ("arcface.", "autoencoder.classifier.")
    ignored = sorted(k for k in mapped if k not in own and k.startswith(heads))
    mapped = {k: v for k, v in mapped.items() if k not in ignored}
    missing = sorted(k for k in own if k not in mapped and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in mapped if k not in own)
    misshaped = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        hint = ""
        if missing and all(k.startswith("autoencoder.") for k in missing):
            hint = "the file has no autoencoder: train one (Vitgal.autoencoder_losses) or load both parts"
        raise CheckpointMismatchError(path, source, missing, unexpected, misshaped, hint)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=False)
    return LoadReport(str(path), source, len(mapped), tuple(ignored))
