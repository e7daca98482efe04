"""Image pyramids for CNN feature extraction: normalisation, resizing, batching by size, fusion, selection.

Shared by the deep extractors (DELG, DOLG, HOW, FIRe, ViTGaL): everything here is model-agnostic. A model is a
function from a (B, 3, h, w) batch to a dict of (B, ...) tensors; :func:`run_pyramid` feeds it every
pyramid level of every image, grouping levels of equal size into one batch, and hands back the outputs
per image and per level.

The papers' scales are the defaults of the extractor configs (:mod:`glocal.models.configs`, which also
names the :data:`PREPROCESSING` presets without importing torch).

Resizing is bilinear with half-pixel centres and no anti-aliasing, to ``round(side * scale)``, as both
official pipelines do (``tf.image.resize`` in DELG, ``cv2.resize(INTER_LINEAR)`` in DOLG).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from glocal.models.configs import PREPROCESSING_NAMES


@dataclass(frozen=True)
class Preprocessing:
    """Pixel normalisation: ``(pixels[..., order] / divisor - mean) / std`` per channel.

    :param mean: per-channel mean, in the channel order given by ``bgr``.
    :param std: per-channel standard deviation.
    :param divisor: 255 for [0, 1] statistics, 1 for raw-pixel statistics.
    :param bgr: feed channels in B, G, R order (pycls / OpenCV-trained weights).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    divisor: float = 255.0
    bgr: bool = False


PREPROCESSING: dict[str, Preprocessing] = {
    # torchvision ImageNet statistics, RGB (our default for torchvision weights and random init)
    "imagenet": Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # the DOLG PyTorch port (pycls): OpenCV BGR images with the same statistics in BGR order
    "imagenet-bgr": Preprocessing((0.406, 0.456, 0.485), (0.225, 0.224, 0.229), bgr=True),
    # TensorFlow DELF/DELG export: (pixel - 128) / 128, RGB
    "tf": Preprocessing((128.0, 128.0, 128.0), (128.0, 128.0, 128.0), divisor=1.0),
    # TensorFlow EfficientNet-Lite: (pixel - 127) / 128, RGB
    "tf-127": Preprocessing((127.0, 127.0, 127.0), (128.0, 128.0, 128.0), divisor=1.0),
}
if tuple(PREPROCESSING) != PREPROCESSING_NAMES:  # the configs check names against the torch-free list
    raise RuntimeError(f"pyramid.py: PREPROCESSING presets {tuple(PREPROCESSING)} differ from "
                       f"glocal.models.configs.PREPROCESSING_NAMES {PREPROCESSING_NAMES}")


def preprocessing_by_name(name: str) -> Preprocessing:
    """Look up a :data:`PREPROCESSING` preset; the error lists the known names."""
    try:
        return PREPROCESSING[name]
    except KeyError:
        raise ValueError(f"pyramid.py: unknown preprocessing {name!r}; known: {sorted(PREPROCESSING)}") from None


def image_to_tensor(pixels: npt.NDArray[np.uint8], prep: Preprocessing, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 normalised tensor on ``device``."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pyramid.py: expected (H, W, 3) pixels, got shape {pixels.shape}")
    arr = np.ascontiguousarray(pixels)
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch.from_numpy warns on those
        arr = arr.copy()
    x = torch.from_numpy(arr).to(device)
    x = x.permute(2, 0, 1).unsqueeze(0).float()
    if prep.bgr:
        x = x.flip(1)
    mean = torch.tensor(prep.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=x.device).view(1, 3, 1, 1)
    return (x / prep.divisor - mean) / std


@dataclass(frozen=True)
class PyramidLevel:
    """One resized copy of one image.

    :param image: index of the image in the call.
    :param level: index of the scale in the scale list.
    :param scale: nominal scale factor.
    :param size: (height, width) of the resized image.
    :param factor: actual (y, x) resize factors ``size / original size`` (rounding makes them differ
        slightly from ``scale``); level pixel ``u`` maps back to ``u / factor``.
    """

    image: int
    level: int
    scale: float
    size: tuple[int, int]
    factor: tuple[float, float]


def level_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size of a pyramid level: ``round(side * scale)``, at least 1 pixel."""
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, C, H, W) to ``size`` (half-pixel centres, no anti-aliasing)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def plan_pyramid(sizes: Sequence[tuple[int, int]], scales: Sequence[float]) -> list[PyramidLevel]:
    """All levels of all images (image-major order)."""
    levels = []
    for i, (h, w) in enumerate(sizes):
        for j, s in enumerate(scales):
            size = level_size(h, w, s)
            levels.append(PyramidLevel(i, j, float(s), size, (size[0] / h, size[1] / w)))
    return levels


def batch_by_size(levels: Sequence[PyramidLevel], batch_size: int) -> list[list[PyramidLevel]]:
    """Group levels of equal size *and* scale index into batches of at most ``batch_size`` (input order
    kept within a group), so that every level of a batch asks the model for the same outputs."""
    if batch_size < 1:
        raise ValueError(f"pyramid.py: batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[tuple[int, int], int], list[PyramidLevel]] = defaultdict(list)
    for lv in levels:
        groups[(lv.size, lv.level)].append(lv)
    return [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def inference_context(device: torch.device, bf16: bool = False) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA (bf16 with ``bf16``); on the CPU plain fp32, or bf16 autocast with ``bf16``
    (convolutions and matrix products in bfloat16 through oneDNN: AMX where the CPU has it)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if bf16 else torch.float16)
    if bf16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def as_float32(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Floating outputs of a reduced-precision forward pass back in float32 (others unchanged)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}


def run_pyramid(
    images: Sequence[Tensor],
    scales: Sequence[float],
    model_fn: Callable[[Tensor, PyramidLevel], dict[str, Tensor]],
    batch_size: int = 4,
    channels_last: bool | None = None,
) -> list[list[tuple[PyramidLevel, dict[str, Tensor]]]]:
    """Run ``model_fn`` over every pyramid level of every image, batching levels of equal size.

    :param images: normalised (1, 3, H, W) tensors, already on the model's device.
    :param scales: pyramid scales.
    :param model_fn: ``(batch, level) -> {name: (B, ...) tensor}``; ``level`` is the batch's first level
        (all levels of a batch share their size and scale index).
    :param batch_size: largest batch.
    :param channels_last: batches in channels_last memory format (default: on CUDA only).
    :returns: ``out[image][level] = (PyramidLevel, {name: tensor without batch dim, on CPU, float32})``.
    """
    levels = plan_pyramid([tuple(t.shape[-2:]) for t in images], scales)
    results: list[list[tuple[PyramidLevel, dict[str, Tensor]]] | list] = [[None] * len(scales) for _ in images]
    if channels_last is None:
        channels_last = any(t.is_cuda for t in images)
    for batch in batch_by_size(levels, batch_size):
        x = torch.cat([resize(images[lv.image], lv.size) for lv in batch])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = model_fn(x, batch[0])
        for b, lv in enumerate(batch):
            results[lv.image][lv.level] = (lv, {k: v[b].float().cpu() for k, v in outputs.items()})
    return results


def fuse_global(descriptors: Tensor | npt.NDArray, eps: float = 1e-12) -> npt.NDArray[np.float32]:
    """Multi-scale global descriptor: L2-normalise each scale's row, sum, L2-normalise (1, D).

    DELG sums and DOLG averages the normalised rows; after the final normalisation both are the same.
    """
    d = torch.as_tensor(np.asarray(descriptors, dtype=np.float32))
    if d.ndim != 2 or len(d) == 0:
        raise ValueError(f"pyramid.py: fuse_global expects (S, D) with S >= 1, got {tuple(d.shape)}")
    fused = F.normalize(F.normalize(d, dim=1, eps=eps).sum(0, keepdim=True), dim=1, eps=eps)
    return fused.numpy().astype(np.float32)


@dataclass(frozen=True)
class LocalCandidates:
    """Local features of one pyramid level, flattened row-major.

    :param descriptors: (n, d) descriptors.
    :param strengths: (n,) attention (or other) scores.
    :param xy: (n, 2) centres in the *level's* pixel coordinates.
    :param level: the pyramid level.
    """

    descriptors: Tensor
    strengths: Tensor
    xy: npt.NDArray[np.float64]
    level: PyramidLevel


@dataclass(frozen=True)
class SelectedFeatures:
    """Selected local features, strongest first; ``xy`` in the pyramid's base-image pixels, ``scales`` =
    1 / level scale (DELF's convention, "size of a level pixel in base-image pixels")."""

    descriptors: npt.NDArray[np.float32]
    xy: npt.NDArray[np.float32]
    scales: npt.NDArray[np.float32]
    strengths: npt.NDArray[np.float32]


def select_top_features(candidates: Sequence[LocalCandidates], max_keypoints: int, threshold: float) -> SelectedFeatures:
    """Keep features with strength >= ``threshold`` over all levels, then the ``max_keypoints`` strongest.

    Ties are broken by level order, then row-major position, so the result is deterministic (DELG's
    official extraction: threshold on attention, then the top 1,000 by attention across scales).
    Level coordinates are mapped back with the level's actual resize factor: ``x / factor_x``.
    """
    descs, xys, scales, strengths = [], [], [], []
    for c in candidates:
        keep = (c.strengths >= threshold).cpu().numpy()
        if not keep.any():
            continue
        descs.append(c.descriptors[torch.from_numpy(keep)].float().cpu().numpy())
        fy, fx = c.level.factor
        xys.append(c.xy[keep] / np.array([fx, fy]))
        strengths.append(c.strengths.cpu().numpy()[keep])
        scales.append(np.full(int(keep.sum()), 1.0 / c.level.scale))
    if not descs:
        d = candidates[0].descriptors.shape[-1] if candidates else 0
        empty = np.zeros(0, np.float32)
        return SelectedFeatures(np.zeros((0, d), np.float32), np.zeros((0, 2), np.float32), empty, empty.copy())
    strength = np.concatenate(strengths).astype(np.float32)
    order = np.argsort(-strength, kind="stable")[:max_keypoints]
    return SelectedFeatures(
        descriptors=np.concatenate(descs)[order].astype(np.float32),
        xy=np.concatenate(xys)[order].astype(np.float32),
        scales=np.concatenate(scales)[order].astype(np.float32),
        strengths=strength[order],
    )

