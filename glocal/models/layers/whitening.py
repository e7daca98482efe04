"""Frozen PCA-whitening o(.) of local features (HOW sec. 3; FIRe sec. 2 and eq. 6).

HOW and FIRe reduce 1024-D activations (HOW) or LIT outputs (FIRe) to 128-D with a PCA-whitening
learned once from a sample of training features and kept frozen during training. With the sample
``X`` (n, D), its mean ``m`` and covariance ``C = (X - m)^T (X - m) / n`` (symmetrised), eigenvalues
``lambda_1 >= ... >= lambda_D`` (clipped below at ``eps``) and eigenvectors ``e_i``:

    o(x) = P (x - m),   P = diag(lambda_1 .. lambda_k)^(-s/2) [e_1 .. e_k]^T

``k`` is the output dimension and ``s`` the shrinkage: ``s = 1`` is full whitening (unit variance in
every kept direction, the HOW / FIRe default), ``s = 0`` plain PCA rotation, values in between shrink
the whitening of small-variance directions. ``eps = 1e-14`` as in the reference HOW code.

The layer stores the affine form ``o(x) = W x + b`` (``W = P``, ``b = -P m``) as *buffers*, so it travels
in the model's state dict, is never touched by an optimiser, and maps one to one onto the official
checkpoints' 1x1 convolution (``dim_reduction.weight`` (k, D, 1, 1), ``dim_reduction.bias`` (k,)).
Each eigenvector's sign is fixed (largest-magnitude component positive) so a fit is reproducible.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn


def fit_pca_whitening(
    features: npt.ArrayLike | Tensor, out_dim: int, shrinkage: float = 1.0, eps: float = 1e-14
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Learn the PCA-whitening of the module docstring from ``features`` (n, D).

    :param features: (n, D) sample of un-whitened features (n >= 2).
    :param out_dim: number of leading principal directions kept (k <= D).
    :param shrinkage: power ``s`` of the eigenvalues (1 = full whitening).
    :param eps: floor of the eigenvalues (avoids dividing by zero for rank-deficient samples).
    :returns: ``(mean (D,), projection (k, D))`` in float64 with ``o(x) = projection @ (x - mean)``.
    """
    x = torch.as_tensor(features).detach().cpu().double().numpy() if isinstance(features, Tensor) \
        else np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening.py: need an (n >= 2, D) feature sample, got shape {x.shape}")
    n, dim = x.shape
    if not 1 <= out_dim <= dim:
        raise ValueError(f"whitening.py: out_dim must be in [1, {dim}], got {out_dim}")
    if not np.isfinite(x).all():
        raise ValueError("whitening.py: the feature sample holds NaN or infinite values")
    if n <= out_dim:
        warnings.warn(f"whitening.py: only {n} features to learn a {out_dim}-D whitening; directions beyond the "
                      "sample's rank are amplified noise (the reference uses ~1,000 features x 5,000 images)",
                      stacklevel=2)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred
    cov = (cov + cov.T) / (2.0 * n)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(-eigval, kind="stable")[:out_dim]
    eigval = np.clip(eigval[order], eps, None)
    eigvec = eigvec[:, order]
    # fix the sign ambiguity: the largest-magnitude component of every eigenvector is positive
    pivot = np.abs(eigvec).argmax(axis=0)
    eigvec = eigvec * np.sign(eigvec[pivot, np.arange(out_dim)])
    projection = (eigvec / np.power(eigval, 0.5 * shrinkage)).T
    return mean, projection


class PCAWhitening(nn.Module):
    """o(.): a frozen affine map ``x -> W x + b`` from ``in_dim`` to ``out_dim`` (last axis).

    Until fitted (or loaded) the map is a truncation to the first ``out_dim`` coordinates and
    ``fitted`` is False; :meth:`fit` learns it from a feature sample (module docstring).

    :param in_dim: input dimension D (1024 for R50-).
    :param out_dim: output dimension k (128 in HOW and FIRe).
    """

    weight: Tensor
    bias: Tensor
    fitted: Tensor

    def __init__(self, in_dim: int = 1024, out_dim: int = 128) -> None:
        super().__init__()
        if not 1 <= out_dim <= in_dim:
            raise ValueError(f"whitening.py: out_dim must be in [1, {in_dim}], got {out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("weight", torch.eye(out_dim, in_dim))
        self.register_buffer("bias", torch.zeros(out_dim))
        self.register_buffer("fitted", torch.tensor(False))

    def set_affine(self, weight: Tensor | npt.ArrayLike, bias: Tensor | npt.ArrayLike) -> PCAWhitening:
        """Set ``W`` (k, D) and ``b`` (k,) directly (e.g. from a checkpoint); marks the layer fitted."""
        w = torch.as_tensor(np.asarray(weight) if not isinstance(weight, Tensor) else weight).float()
        b = torch.as_tensor(np.asarray(bias) if not isinstance(bias, Tensor) else bias).float()
        if tuple(w.shape) != (self.out_dim, self.in_dim) or tuple(b.shape) != (self.out_dim,):
            raise ValueError(
                f"whitening.py: expected weight ({self.out_dim}, {self.in_dim}) and bias ({self.out_dim},), "
                f"got {tuple(w.shape)} and {tuple(b.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(b)
            self.fitted.fill_(True)
        return self

    def fit(self, features: npt.ArrayLike | Tensor, shrinkage: float = 1.0, eps: float = 1e-14) -> PCAWhitening:
        """Learn the whitening from ``features`` (n, in_dim) with :func:`fit_pca_whitening`; returns self."""
        mean, projection = fit_pca_whitening(features, self.out_dim, shrinkage=shrinkage, eps=eps)
        if projection.shape[1] != self.in_dim:
            raise ValueError(f"whitening.py: features have {projection.shape[1]} dims, layer expects {self.in_dim}")
        return self.set_affine(projection, -(projection @ mean))

    def forward(self, x: Tensor) -> Tensor:
        """Apply o(.) on the last axis: (..., in_dim) -> (..., out_dim)."""
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    def warn_if_unfitted(self, where: str) -> None:
        """Warn that descriptors are only truncated, not whitened, when the layer was never fitted."""
        if not bool(self.fitted):
            warnings.warn(
                f"{where}: the PCA-whitening o(.) is NOT fitted (no checkpoint, no `glocal whiten`): descriptors "
                "are the first coordinates of the raw features, not whitened ones",
                stacklevel=3,
            )

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, fitted={bool(self.fitted)}"


def stack_feature_sample(batches: Iterable[Tensor | npt.ArrayLike], max_features: int | None = None,
                         seed: int = 0) -> npt.NDArray[np.float32]:
    """Concatenate per-image (n_i, D) feature batches into one sample, optionally sub-sampled at random
    (seeded) down to ``max_features`` rows, ready for :meth:`PCAWhitening.fit`."""
    parts = [np.asarray(b.detach().cpu().numpy() if isinstance(b, Tensor) else b, dtype=np.float32) for b in batches]
    parts = [p for p in parts if p.size]
    if not parts:
        raise ValueError("whitening.py: no features to fit the whitening on")
    sample = np.concatenate(parts, axis=0)
    if max_features is not None and len(sample) > max_features:
        keep = np.sort(np.random.default_rng(seed).choice(len(sample), size=max_features, replace=False))
        sample = sample[keep]
    return sample
