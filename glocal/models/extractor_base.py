"""Plumbing shared by the deep-model extractors.

:class:`ModelExtractor` is the common part of the DELG, DOLG and ViTGaL extractors: the device, the network
built with the config's seed (torch's global generator untouched), its checkpoint or a loud warning about
random weights, eval mode on the device, the preprocessing, and loaded images -> pyramid levels ->
``model_fn``, the network run by torch or, with ``config.runtime == "onnx"``, by ONNX Runtime
(:meth:`ModelExtractor._run_model`, :mod:`glocal.models.onnx_runtime`). :class:`GlobalLocalExtractor` adds
the global + local extraction of DELG and ViTGaL (local features on ``config.scales``, global on
``config.global_scales``, one record per image).
:func:`seeded_init` also builds the HOW / FIRe networks; :func:`torch_threads` pins torch's thread count.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from glocal.io.images import LoadedImage
from glocal.models.checkpoints import load_checkpoint
from glocal.models.configs import backbone_weights_source, resolved_preprocessing
from glocal.models.geometry.pyramid import (
    LocalCandidates,
    PyramidLevel,
    SelectedFeatures,
    as_float32,
    fuse_global,
    image_to_tensor,
    inference_context,
    preprocessing_by_name,
    run_pyramid,
    select_top_features,
)
from glocal.records import ImageFeatures

ModelFn = Callable[[Tensor, PyramidLevel], dict[str, Tensor]]


def scale_key(s: float) -> float:
    """A scale rounded to 4 decimals, to match a pyramid level's scale with a config's scale lists."""
    return round(float(s), 4)


@contextlib.contextmanager
def seeded_init(seed: int, quiet: bool = False) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded with ``seed``, the generator restored after.

    :param quiet: hide the block's ``UserWarning`` (the backbone's "no pretrained weights"; the extractor
        issues its own, clearer one).
    """
    with torch.random.fork_rng(devices=[]), (warnings.catch_warnings() if quiet else contextlib.nullcontext()):
        torch.manual_seed(seed)
        if quiet:
            warnings.simplefilter("ignore", UserWarning)
        yield


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, the previous number restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); else it is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_if_bf16_is_slow(device: torch.device, what: str) -> None:
    """Warn when ``runtime="torch-bf16"`` runs on a CPU without native bfloat16 (emulated: slower than fp32)."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"{what}.py: runtime='torch-bf16' on a CPU without native bfloat16 support is emulated and "
                      "slower than runtime='torch'", stacklevel=4)


class ModelExtractor:
    """Common part of the DELG / DOLG / ViTGaL extractors; subclasses call :meth:`_setup` from ``__init__``
    (after setting ``self.config``) and define ``extract_batch``.

    The config needs ``device``, ``seed``, ``checkpoint``, ``preprocessing``, ``max_side`` and
    ``batch_size``; the default :meth:`_random_init` also ``backbone`` and ``backbone_weights``.
    """

    #: model name in messages (``"DELG"``); they start with ``"<label in lower case>.py: "``
    label = ""
    config: Any
    model: nn.Module

    def _setup(self, build: Callable[[], nn.Module], quiet_build: bool = True, channels_last: bool = True) -> None:
        """``self.device``; ``self.model = build()`` seeded with ``config.seed`` (:func:`seeded_init`); its
        weights from ``config.checkpoint`` (:meth:`_load_checkpoint`) or else :meth:`_random_init` and a
        warning; eval mode on the device (channels_last on CUDA when ``channels_last``); ``self._prep``."""
        cfg = self.config
        self.device = torch.device(cfg.device)
        with seeded_init(cfg.seed, quiet=quiet_build):
            self.model = build()
        if cfg.checkpoint:
            self._load_checkpoint(cfg.checkpoint)
        elif which := self._random_init():
            warnings.warn(f"{self.label.lower()}.py: no {self.label} checkpoint given: {which}; the features are "
                          "meaningless", stacklevel=4)
        self.model.eval().to(self.device)
        # channels_last: on CUDA, and for PyTorch on CPU too (oneDNN convolutions; ResNet-50 at 1024 px took
        # 1.0 s instead of 1.5 s here); the ONNX path exports the model as built
        runtime = getattr(cfg, "runtime", "torch")
        self._channels_last = channels_last and (self.device.type == "cuda" or runtime != "onnx")
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._prep = preprocessing_by_name(resolved_preprocessing(cfg))
        self._bf16 = runtime == "torch-bf16"
        if self._bf16:
            warn_if_bf16_is_slow(self.device, self.label.lower())
        self._onnx = None
        if runtime == "onnx":
            from glocal.models.onnx_runtime import OnnxModel

            self._onnx = OnnxModel(self.model, type(self)._outputs)

    @staticmethod
    def _outputs(model: nn.Module, x: Tensor, flags: tuple[bool, ...]) -> dict[str, Tensor]:
        """The torch path: ``model``'s outputs on a batch, for the output combination ``flags`` (what
        :mod:`glocal.models.onnx_runtime` exports)."""
        raise NotImplementedError

    def _run_model(self, x: Tensor, flags: tuple[bool, ...] = ()) -> dict[str, Tensor]:
        """:meth:`_outputs` of ``self.model`` on a batch, by ONNX Runtime when ``config.runtime == "onnx"``."""
        if self._onnx is not None:
            return self._onnx(x, flags)
        with inference_context(self.device, bf16=self._bf16):
            return as_float32(self._outputs(self.model, x, flags))

    def _load_checkpoint(self, path: str) -> None:
        load_checkpoint(self.model, path)

    def _random_init(self) -> str:
        """Without a checkpoint: load what partial weights there are and say what stays random (an empty
        string when nothing does: the network came with meaningful weights, e.g. ``gem``'s ImageNet trunk)."""
        source = backbone_weights_source(self.config.backbone, self.config.backbone_weights)
        if source:
            return f"the heads use RANDOM weights (ImageNet backbone from {source})"
        return "backbone and heads use RANDOM weights"

    @property
    def max_side(self) -> int | None:
        return self.config.max_side

    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        """Features of one image (:meth:`extract_batch` of one)."""
        return self.extract_batch([image], [name])[0]

    def extract_batch(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[ImageFeatures]:
        raise NotImplementedError

    def _run_pyramid(self, images: Sequence[LoadedImage], scales: Sequence[float], model_fn: ModelFn
                     ) -> list[list[tuple[PyramidLevel, dict[str, Tensor]]]]:
        """``model_fn`` over every pyramid level of every image (levels of equal size as one batch)."""
        tensors = [image_to_tensor(im.pixels, self._prep, self.device) for im in images]
        return run_pyramid(tensors, scales, model_fn, self.config.batch_size, channels_last=self._channels_last)


class GlobalLocalExtractor(ModelExtractor):
    """Global + local features (DELG, ViTGaL). ``model(x, with_global, with_local)`` returns a dataclass of
    ``global_descriptor`` (B, D), ``attention`` (B, h, w) and ``local_descriptors`` (B, h, w, d), ``None``
    where not asked; subclasses place the local features (:meth:`_centres`) and finish their descriptors
    (:meth:`_descriptors`). The config also needs ``scales``, ``global_scales``, ``max_keypoints`` and
    ``attention_threshold``."""

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[ImageFeatures]:
        """Features of several images; pyramid levels of equal size run as one batch."""
        cfg = self.config
        local_keys = {scale_key(s) for s in cfg.scales}
        global_keys = {scale_key(s) for s in cfg.global_scales}
        scales = sorted({scale_key(s) for s in cfg.scales + cfg.global_scales})

        def model_fn(x: Tensor, level: PyramidLevel) -> dict[str, Tensor]:
            s = scale_key(level.scale)
            return self._run_model(x, (s in global_keys, s in local_keys))

        results = self._run_pyramid(images, scales, model_fn)
        return [self._assemble(im, nm, res) for im, nm, res in zip(images, names, results)]

    @staticmethod
    def _outputs(model: nn.Module, x: Tensor, flags: tuple[bool, ...]) -> dict[str, Tensor]:
        """``flags = (with_global, with_local)``; the keys of the outputs that were asked."""
        out = model(x, with_global=flags[0], with_local=flags[1])
        return {k: v for k, v in vars(out).items() if v is not None}

    def _centres(self, level: PyramidLevel, h: int, w: int) -> tuple[npt.NDArray[np.float64], float]:
        """((h * w, 2) (x, y) centres of the level's local features in level pixels, row-major; the side of
        one local-feature cell in level pixels)."""
        raise NotImplementedError

    def _descriptors(self, sel: SelectedFeatures) -> np.ndarray:
        """The record's descriptors from the selected ones ((0, descriptor_dim) when none)."""
        raise NotImplementedError

    def _assemble(self, image: LoadedImage, name: str, levels: list) -> ImageFeatures:
        """One record: fused global descriptor, selected local features in original-image pixels; ``scales``
        = side of one local-feature cell in original-image pixels."""
        globals_ = [out["global_descriptor"] for _, out in levels if "global_descriptor" in out]
        candidates, cell = [], 1.0
        for level, out in levels:
            if "attention" not in out:
                continue
            h, w = out["attention"].shape
            xy, cell = self._centres(level, h, w)
            candidates.append(LocalCandidates(
                descriptors=out["local_descriptors"].reshape(h * w, -1), strengths=out["attention"].reshape(-1),
                xy=xy, level=level,
            ))
        sel = select_top_features(candidates, self.config.max_keypoints, self.config.attention_threshold)
        keypoints = sel.xy / np.float32(image.scale) + np.asarray(image.offset, np.float32)
        return ImageFeatures(
            name=name,
            image_size=image.original_size,
            descriptors=self._descriptors(sel),
            keypoints=keypoints.astype(np.float32),
            scales=(sel.scales * np.float32(cell / image.scale)).astype(np.float32),
            strengths=sel.strengths.astype(np.float32),
            global_descriptor=fuse_global(torch.stack(globals_)) if globals_ else None,
        )
