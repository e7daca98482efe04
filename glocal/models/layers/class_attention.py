"""Class attention (CaiT, Touvron et al. 2021, sec. 3; XCiT sec. 3; ViTGaL sec. 3, Fig. 2 and 3).

One layer: a CLS token (the query) attends to the patch tokens (keys and values); only the CLS token is
updated by the attention and the MLP:

    z = [cls, x_1 .. x_N];   a_h = softmax(q_h(LN1 z)_0 . k_h(LN1 z)^T / sqrt(d_h))      (per head h)
    cls <- cls + g1 * proj(concat_h a_h v_h);   z <- LN2(z) (all tokens: XCiT's ``tokens_norm``)
    cls <- cls + g2 * MLP(cls)

As in the XCiT / ViTGaL releases (what their weights were trained with), the patch tokens take the same
residual path as the CLS token with the attention / MLP output replaced by their own input: after the
attention ``x_i + g1 * LN1(x_i)``, after the MLP step ``2 LN2(.)``; ViTGaL's final layer norm removes
the factor 2.

ViTGaL reads the CLS token as the global feature, the patch tokens as local features and the
head-averaged attention of the CLS query over the patches as keypoint scores (sec. 3.1).

``cls_as_key``: CaiT / XCiT (and the ViTGaL release) let the CLS query also attend to itself, so the
softmax runs over N + 1 keys and the patch part of a row sums to slightly less than 1. The ViTGaL paper's
text describes keys = patch tokens only (``cls_as_key=False``: patch rows sum to 1). The default follows
the released weights (True).

Names follow the XCiT / ViTGaL releases: ``norm1, attn.qkv, attn.proj, gamma1, norm2, mlp.fc1, mlp.fc2,
gamma2`` (timm's newer XCiT splits ``qkv`` into ``q, k, v``: :func:`fuse_qkv` converts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glocal.models.layers.xcit import Mlp


@dataclass
class ClassAttentionOutput:
    """:param tokens: (B, 1 + N, C) updated CLS token then the (normalised) patch tokens.
    :param attention: (B, heads, N) attention of the CLS query over the patch tokens."""

    tokens: Tensor
    attention: Tensor

    @property
    def cls(self) -> Tensor:
        return self.tokens[:, 0]

    @property
    def patches(self) -> Tensor:
        return self.tokens[:, 1:]

    def scores(self) -> Tensor:
        """(B, N) keypoint scores: attention averaged over heads (ViTGaL sec. 3.1)."""
        return self.attention.mean(dim=1)


class ClassAttention(nn.Module):
    """Multi-head attention with a single query, the CLS token."""

    def __init__(self, dim: int, num_heads: int, cls_as_key: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"class_attention.py: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.cls_as_key = num_heads, cls_as_key
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, 1 + N, C) -> (new CLS (B, 1, C), full attention (B, heads, keys)); keys = 1 + N with
        ``cls_as_key`` (CLS first), else N."""
        b, n, c = z.shape
        qkv = self.qkv(z).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, 1 + N, d_h)
        if not self.cls_as_key:
            k, v = k[:, :, 1:], v[:, :, 1:]
        attn = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, keys)
        cls = (attn @ v).transpose(1, 2).reshape(b, 1, c)
        return self.proj(cls), attn[:, :, 0]


class ClassAttentionBlock(nn.Module):
    """One class-attention layer (see the module notes).

    :param dim: token channels.
    :param num_heads: heads.
    :param mlp_ratio: MLP hidden width / dim.
    :param layer_scale: initial layer-scale value (XCiT: 1.0 for S12, 1e-5 for S24).
    :param cls_as_key: the CLS token is also a key (CaiT / XCiT / ViTGaL release).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float = 1.0,
                 cls_as_key: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttention(dim, num_heads, cls_as_key)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, z: Tensor) -> ClassAttentionOutput:
        """z (B, 1 + N, C), CLS first -> tokens and the CLS attention over the N patches."""
        normed = self.norm1(z)
        new_cls, attn = self.attn(normed)
        z = z + self.gamma1 * torch.cat((new_cls, normed[:, 1:]), dim=1)
        z = self.norm2(z)
        z = z + torch.cat((self.gamma2 * self.mlp(z[:, :1]), z[:, 1:]), dim=1)
        patch_attn = attn[:, :, 1:] if self.attn.cls_as_key else attn
        return ClassAttentionOutput(z, patch_attn)


def fuse_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm's split ``*.attn.q|k|v.weight|bias`` -> our ``*.attn.qkv.weight|bias`` (concatenated q, k, v)."""
    out = dict(state)
    for name in list(state):
        if not name.endswith((".attn.q.weight", ".attn.q.bias")):
            continue
        stem, kind = name.rsplit(".attn.q.", 1)
        parts = [f"{stem}.attn.{p}.{kind}" for p in "qkv"]
        if all(p in state for p in parts):
            out[f"{stem}.attn.qkv.{kind}"] = torch.cat([state[p] for p in parts], dim=0)
            for p in parts:
                del out[p]
    return out
