"""Local feature Integration Transformer (LIT): FIRe eq. 3-5 (Weinzaepfel et al., ICLR 2022, sec. 3.1).

LIT maps a *set* of L local features U = {u_l} (any L) to an *ordered* set of N Super-features:

* eq. 3: Phi(U) = Q^T, Q^t = phi(U; Q^{t-1}); Q^0 = N learned templates (N x d); the same phi (same
  weights) is applied T times.
* eq. 4: M_ln = K(u_l) . Q(q_n) / sqrt(d); alpha^_l = softmax over the N templates of M_l; then every
  template's map is l1-normalised over the L locations, alpha_ln = alpha^_ln / sum_i alpha^_in (an
  ``eps`` = 1e-8 is added to alpha^ first, as the reference code does, so no map is all zeros).
* eq. 5: psi(U; Q) = V(U) alpha + Q, phi(U; Q) = MLP(psi) + psi.

Keys and values come from layer-normalised local features, queries from layer-normalised templates
(K, V, Q are bias-free linear maps to d); the MLP (footnote 3) is layer norm, FC to d/2, ReLU, FC back
to d. Every operation is per location or a sum over locations, so the output does not depend on the
order of the locations, and always has N rows whatever the image size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LitConfig:
    """LIT hyper-parameters (FIRe sec. 4: N = 256, T = 6, d = D = 1024).

    :param num_templates: N, the number of Super-features.
    :param iterations: T, applications of the shared core function phi.
    :param input_dim: D, channels of the local features.
    :param dim: d = d_k = d_q = d_v, dimension of the Super-features.
    :param attention_eps: added to the softmax output before the l1 normalisation of eq. 4.
    """

    num_templates: int = 256
    iterations: int = 6
    input_dim: int = 1024
    dim: int = 1024
    attention_eps: float = 1e-8

    def __post_init__(self) -> None:
        for name in ("num_templates", "iterations", "input_dim", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"lit.py: {name} must be >= 1, got {getattr(self, name)}")
        if self.dim < 2:
            raise ValueError(f"lit.py: dim must be >= 2 (the MLP has d/2 hidden units), got {self.dim}")


@dataclass(frozen=True)
class LitOutput:
    """What LIT returns for a batch.

    :param features: (B, N, d) raw Super-features Phi(U) (before whitening and normalisation).
    :param attention: eq. 4 alpha of the last iteration, one map per template: (B, N, H, W) for a
        feature-map input, (B, N, L) for a set input; every map sums to 1 over the locations.
    :param responsibility: alpha^ of the last iteration (softmax over templates, before the l1
        normalisation), same shape; sums to 1 over the N templates at every location.
    """

    features: Tensor
    attention: Tensor
    responsibility: Tensor


class LocalFeatureIntegrationTransformer(nn.Module):
    """FIRe's LIT (module docstring); ``forward`` takes a (B, D, H, W) map, ``forward_set`` a (B, L, D) set."""

    def __init__(self, config: LitConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LitConfig()
        d = config.dim
        self.templates = nn.Parameter(torch.randn(config.num_templates, d))
        self.norm_input = nn.LayerNorm(config.input_dim)
        self.norm_query = nn.LayerNorm(d)
        self.to_key = nn.Linear(config.input_dim, d, bias=False)
        self.to_value = nn.Linear(config.input_dim, d, bias=False)
        self.to_query = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d // 2), nn.ReLU(), nn.Linear(d // 2, d))
        self.scale = 1.0 / math.sqrt(d)

    def attention(self, keys: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """FIRe eq. 4 for keys K(U) (B, L, d) and queries Q(Q) (B, N, d).

        :returns: ``(alpha, alpha_hat)``, both (B, L, N): alpha_hat sums to 1 over N (softmax over
            templates), alpha sums to 1 over L (l1 normalisation over locations).
        """
        logits = torch.bmm(keys, queries.transpose(1, 2)) * self.scale
        alpha_hat = logits.softmax(dim=-1)
        shifted = alpha_hat + self.config.attention_eps
        return shifted / shifted.sum(dim=1, keepdim=True), alpha_hat

    def step(self, keys: Tensor, values: Tensor, templates: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One application of the core function phi (FIRe eq. 4-5): Q^{t-1} (B, N, d) -> Q^t."""
        queries = self.to_query(self.norm_query(templates))
        alpha, alpha_hat = self.attention(keys, queries)
        psi = torch.bmm(alpha.transpose(1, 2), values) + templates
        return self.mlp(psi) + psi, alpha, alpha_hat

    def forward_set(self, local_features: Tensor) -> LitOutput:
        """FIRe eq. 3 on a set of local features (B, L, D) -> Super-features (B, N, d); maps are (B, N, L)."""
        if local_features.ndim != 3 or local_features.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"lit.py: expected (B, L, {self.config.input_dim}) local features, got {tuple(local_features.shape)}"
            )
        if local_features.shape[1] == 0:
            raise ValueError("lit.py: the set of local features is empty (L = 0)")
        u = self.norm_input(local_features)
        keys, values = self.to_key(u), self.to_value(u)
        templates = self.templates.unsqueeze(0).expand(u.shape[0], -1, -1)
        alpha = alpha_hat = keys.new_zeros(0)
        for _ in range(self.config.iterations):
            templates, alpha, alpha_hat = self.step(keys, values, templates)
        return LitOutput(templates, alpha.transpose(1, 2), alpha_hat.transpose(1, 2))

    def forward(self, feature_map: Tensor) -> LitOutput:
        """FIRe eq. 3 on a CNN feature map (B, D, H, W): locations are the H x W cells (row-major);
        attention maps come back as (B, N, H, W)."""
        if feature_map.ndim != 4:
            raise ValueError(f"lit.py: expected a (B, D, H, W) feature map, got {tuple(feature_map.shape)}")
        b, c, h, w = feature_map.shape
        out = self.forward_set(feature_map.flatten(2).transpose(1, 2))
        n = self.config.num_templates
        return LitOutput(out.features, out.attention.reshape(b, n, h, w), out.responsibility.reshape(b, n, h, w))

    def extra_repr(self) -> str:
        c = self.config
        return f"N={c.num_templates}, T={c.iterations}, input_dim={c.input_dim}, dim={c.dim}"
