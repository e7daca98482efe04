"""``gem``: one global descriptor per image, GeM-pooled (Radenovic, Tolias & Chum, Fine-tuning CNN image
retrieval with no human annotation, TPAMI 2019) from the stride-32 map of an ImageNet backbone
(:mod:`glocal.models.backbones`; by default EfficientNet-Lite2, weights from the ``pretrained`` extra).

Per image and scale: the stride-32 map (1280 channels for EfficientNet-Lite) -> GeM ``(mean x^p)^(1/p)``; the scales' L2-normalised
vectors are summed and L2-normalised (:func:`~glocal.models.geometry.pyramid.fuse_global`) into the
(1, 1280) ``global_descriptor``. No local features. With ``config.checkpoint`` (a glocal weights file of a
fine-tuned network) the trunk's weights come from it instead of the package.

Learned whitening, without labels (``config.whitening``; the unsupervised PCA-whitening of Jegou & Chum,
ECCV 2012, in place of the supervised whitening from matching pairs of Radenovic et al., TPAMI 2019). From the
descriptors ``x_1 .. x_n`` (D = 1280, as above) of a set of images: the mean ``m``, the covariance
``C = sum_j (x_j - m)(x_j - m)^T / n``, its eigenvalues ``lambda_1 >= .. >= lambda_D`` and unit eigenvectors
``e_i`` (each one's largest-magnitude component made positive, so a fit is reproducible; eigenvalues below
``1e-10 lambda_1`` are round-off and count as 0); then

    P = diag((lambda_1 + eps)^-1/2 .. (lambda_k + eps)^-1/2) [e_1 .. e_k]^T          (k, D)
    w(x) = P (x - m) / ||P (x - m)||

``k <= D`` is the output dimension (default ``min(D, n - 1)``: the sample's rank; directions beyond it have
``lambda = 0`` and would be pure noise scaled by ``eps^-1/2``), ``eps`` a floor against tiny eigenvalues
(default 1e-6; the descriptors have unit norm, so the eigenvalues sum to at most 1). Before the final L2
normalisation the whitened training vectors have covariance ``diag(lambda_i / (lambda_i + eps))`` ~ identity.
The file (:func:`save_global_whitening`) is an ``.npz`` of ``mean`` (D,), ``projection`` (k, D) and
``eigenvalues`` (k,), read with ``allow_pickle=False``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from glocal.errors import BadCheckpointError, BadInputError
from glocal.io.images import LoadedImage
from glocal.models import backbones
from glocal.models.backbones.catalog import STRIDE32
from glocal.models.configs import RANDOM_WEIGHTS, GemConfig, backbone_weights_source
from glocal.models.extractor_base import ModelExtractor
from glocal.models.geometry.pyramid import PyramidLevel, fuse_global
from glocal.models.layers.gem import GeM
from glocal.records import ImageFeatures

Whitening = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


def fit_global_whitening(descriptors: npt.ArrayLike, dim: int | None = None, eps: float = 1e-6
                         ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The PCA-whitening of the module docstring from ``descriptors`` (n, D), n >= 2.

    :param dim: output dimension k (None: ``min(D, n - 1)``).
    :param eps: added to every eigenvalue before the inverse square root.
    :returns: ``(mean (D,), projection (k, D), eigenvalues (k,))``, float64, ``w(x) ~ projection @ (x - mean)``.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise BadInputError(f"gem.py: need descriptors of at least 2 images to learn a whitening, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise BadInputError("gem.py: the descriptors to learn the whitening from hold NaN or infinite values")
    n, d = x.shape
    k = min(d, n - 1) if dim is None else int(dim)
    if not 1 <= k <= d:
        raise BadInputError(f"gem.py: whitening dimension must be in [1, {d}], got {k}")
    if eps < 0:
        raise BadInputError(f"gem.py: whitening eps must be >= 0, got {eps}")
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / n
    eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2.0)
    order = np.argsort(-eigval, kind="stable")[:k]
    eigval, eigvec = eigval[order], eigvec[:, order]
    eigval = np.where(eigval > 1e-10 * max(float(eigval[0]), 0.0), eigval, 0.0)  # round-off below rank: 0
    pivot = np.abs(eigvec).argmax(axis=0)
    eigvec = eigvec * np.sign(eigvec[pivot, np.arange(k)])
    if not eps and (eigval <= 0).any():
        raise BadInputError(f"gem.py: {int((eigval <= 0).sum())} of the {k} kept eigenvalues are 0 and eps is 0; "
                            f"lower the dimension (the sample's rank is at most {n - 1}) or give eps > 0")
    projection = (eigvec / np.sqrt(eigval + eps)).T
    return mean, projection, eigval


def apply_global_whitening(descriptors: npt.ArrayLike, whitening: Whitening) -> npt.NDArray[np.float32]:
    """``w(x)`` of the module docstring, row by row: (n, D) -> (n, k), unit rows."""
    mean, projection = whitening
    y = (np.asarray(descriptors, dtype=np.float32) - mean) @ projection.T
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def save_global_whitening(path: str | Path, mean: npt.ArrayLike, projection: npt.ArrayLike,
                          eigenvalues: npt.ArrayLike | None = None) -> Path:
    """Write a whitening file (``.npz``: mean, projection, eigenvalues); returns the path written."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    projection = np.asarray(projection, dtype=np.float32)
    eig = np.zeros(len(projection), np.float32) if eigenvalues is None else np.asarray(eigenvalues, np.float32)
    with open(path, "wb") as fh:  # a file handle: np.savez would append ".npz" to another suffix
        np.savez(fh, mean=np.asarray(mean, dtype=np.float32), projection=projection, eigenvalues=eig)
    return path


def load_global_whitening(path: str | Path, dim: int) -> Whitening:
    """``(mean (D,), projection (k, D))`` from a file of :func:`save_global_whitening`, checked against the
    descriptor dimension ``dim``; a one-line :class:`BadCheckpointError` for anything else."""
    where = f"whitening file {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mean" not in data or "projection" not in data:
                raise BadCheckpointError(f"{where}: not a gem whitening (needs the arrays mean and projection, "
                                         f"has {', '.join(sorted(data.files)) or 'none'})")
            mean, projection = np.asarray(data["mean"]), np.asarray(data["projection"])
    except BadCheckpointError:
        raise
    except FileNotFoundError:
        raise BadCheckpointError(f"{where}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BadCheckpointError(f"{where}: not a readable .npz ({reason})") from None
    if mean.shape != (dim,) or projection.ndim != 2 or projection.shape[1] != dim or not 1 <= len(projection) <= dim:
        raise BadCheckpointError(f"{where}: shapes mean {mean.shape}, projection {projection.shape} do not fit "
                                 f"{dim}-D descriptors (expected ({dim},) and (k <= {dim}, {dim}))")
    if not (np.issubdtype(mean.dtype, np.floating) and np.issubdtype(projection.dtype, np.floating)):
        raise BadCheckpointError(f"{where}: mean and projection must be floating point arrays")
    if not (np.isfinite(mean).all() and np.isfinite(projection).all()):
        raise BadCheckpointError(f"{where}: holds NaN or infinite values")
    return mean.astype(np.float32), projection.astype(np.float32)


class GemNetwork(nn.Module):
    """Backbone + GeM of its stride-32 map: (B, 3, H, W) -> (B, C), not normalised.

    :param backbone: a name of :data:`glocal.models.backbones.BACKBONE_NAMES`.
    :param p: the GeM power.
    :param weights: the backbone's weights (:func:`glocal.models.backbones.build`: None, its package's where it
        has them; ``"random"``; or a file).
    """

    def __init__(self, backbone: str = "efficientnet-lite2", p: float = 3.0, weights: str | None = None) -> None:
        super().__init__()
        self.backbone = backbones.build(backbone, weights)
        self.pool = GeM(p)

    @property
    def dim(self) -> int:
        return self.backbone.channels[STRIDE32]

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.backbone(x, (STRIDE32,))[STRIDE32])


class GemExtractor(ModelExtractor):
    """GeM global descriptors (the backbone's stride-32 channels, 1280-D for EfficientNet-Lite, or k-D with
    ``config.whitening``) of an ImageNet backbone; the records carry no local features."""

    name = "gem"
    descriptor_dim = 0
    label = "GeM"
    config: GemConfig
    model: GemNetwork

    def __init__(self, config: GemConfig | None = None) -> None:
        self.config = config = config or GemConfig()
        weights = RANDOM_WEIGHTS if config.checkpoint else config.backbone_weights  # the checkpoint replaces them
        self._setup(lambda: GemNetwork(config.backbone, config.gem_p, weights))
        dim = self.model.dim
        self._whitening: Whitening | None = load_global_whitening(config.whitening, dim) if config.whitening \
            else None
        self._fitted: tuple[npt.NDArray[np.float64], ...] | None = None

    # -- learned whitening (``glocal whiten``) -----------------------------------------------------------
    def fit_whitening(self, images: Iterable[LoadedImage], dim: int | None = None, eps: float = 1e-6) -> int:
        """Learn the PCA-whitening of the module docstring from the raw (un-whitened) descriptors of
        ``images``; from then on this extractor applies it. Returns the number of images used."""
        raw = [self._descriptors([image])[0] for image in images]
        if len(raw) < 2:
            raise BadInputError(f"gem.py: need at least 2 readable images to learn a whitening, got {len(raw)}")
        mean, projection, eigval = fit_global_whitening(np.concatenate(raw), dim=dim, eps=eps)
        self._fitted = (mean, projection, eigval)
        self._whitening = (mean.astype(np.float32), projection.astype(np.float32))
        return len(raw)

    def save_whitening(self, path: str | Path) -> Path:
        """Write the whitening learned by :meth:`fit_whitening` (the file ``config.whitening`` takes)."""
        if self._fitted is None:
            raise BadInputError("gem.py: no whitening learned yet (fit_whitening first)")
        return save_global_whitening(path, *self._fitted)

    def trainable_network(self) -> nn.Module:
        """The network ``glocal train`` fine-tunes: (1, 3, H, W) preprocessed pixels -> (1, 1280) un-normalised
        GeM descriptor (no whitening); its state dict is what ``config.checkpoint`` loads."""
        return self.model

    def _random_init(self) -> str:
        if backbone_weights_source(self.config.backbone, self.config.backbone_weights) is None:
            return "the backbone uses RANDOM weights"
        return ""  # the trunk has its ImageNet weights (GemNetwork loaded them)

    @staticmethod
    def _outputs(model: nn.Module, x: Tensor, flags: tuple[bool, ...]) -> dict[str, Tensor]:
        return {"global_descriptor": model(x)}

    @torch.inference_mode()
    def _descriptors(self, images: Sequence[LoadedImage]) -> list[npt.NDArray[np.float32]]:
        """The un-whitened (1, 1280) descriptor of every image."""

        def model_fn(x: Tensor, level: PyramidLevel) -> dict[str, Tensor]:
            return self._run_model(x)

        results = self._run_pyramid(images, self.config.scales, model_fn)
        return [fuse_global(torch.stack([out["global_descriptor"] for _, out in levels])) for levels in results]

    def extract_batch(self, images: Sequence[LoadedImage], names: Sequence[str]) -> list[ImageFeatures]:
        """Descriptors (1, 1280), or (1, k) whitened, of several images, no local features; pyramid levels
        of equal size run as one batch."""
        feats = []
        for image, name, descriptor in zip(images, names, self._descriptors(images)):
            if self._whitening is not None:
                descriptor = apply_global_whitening(descriptor, self._whitening)
            empty = np.zeros(0, np.float32)
            feats.append(ImageFeatures(
                name=name, image_size=image.original_size, descriptors=np.zeros((0, 0), np.float32),
                keypoints=np.zeros((0, 2), np.float32), scales=empty, strengths=empty.copy(),
                global_descriptor=descriptor,
            ))
        return feats
