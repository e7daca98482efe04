"""XCiT backbone: cross-covariance image transformer (El-Nouby et al., NeurIPS 2021), as ViTGaL uses it.

Layers (XCiT paper sec. 3 and Fig. 1), (B, 3, H, W) -> tokens (B, h * w, C) with h = ceil(H / 16),
w = ceil(W / 16):

* convolutional patch embedding: four 3x3 stride-2 convolutions (no bias) + batch norm, GELU between
  them, channels C/8 -> C/4 -> C/2 -> C (patch 16). Inputs whose sides are not multiples of 16 are
  zero-padded (in normalised pixel space) at the bottom and right, so token (i, j) is exactly the
  16 x 16 patch whose top-left pixel is (16 i, 16 j); padding never shifts coordinates.
* Fourier positional encoding (XCiT sec. 3, after DETR): for grid row y and column x (1-based) divided by
  the grid height / width (+ 1e-6) and times 2 pi, features ``sin(u / T^(2k/d)), cos(u / T^(2k/d))``
  (k = 0 .. d/2 - 1, d = 32, T = 10000) for u = y then x (64 channels), projected by a 1x1 conv to C.
* XCA blocks (XCiT eq. 2-3): ``x += g1 * XCA(LN(x)); x += g3 * LPI(LN(x)); x += g2 * MLP(LN(x))``.
  XCA: per head, q and k (d_h x N) L2-normalised along the tokens, attention ``softmax(tau_h * q k^T)``
  over channels (d_h x d_h), output ``attn @ v``. LPI (local patch interaction): depthwise 3x3 conv,
  GELU, batch norm, depthwise 3x3 conv on the (C, h, w) token map. g1, g2, g3: layer scale.

Presets (XCiT Table 1): S12/16 = (C 384, depth 12, 8 heads, layer scale 1.0), S24/16 = (C 384, depth
24, 8 heads, layer scale 1e-5). Layer norms use eps 1e-6, batch norms the PyTorch default.

Parameter names are those of timm / the official XCiT release, so their state dicts load as they are
(:func:`load_xcit_weights`). Mapping (ours = file):

=============================================  ==============================================
``patch_embed.proj.{0,2,4,6}.0.weight``        the four stem convolutions (C_out, C_in, 3, 3)
``patch_embed.proj.{0,2,4,6}.1.*``             their batch norms (weight, bias, running stats)
``pos_embed.token_projection.weight|bias``     Fourier projection (C, 64, 1, 1); the ViTGaL
                                               release spells it ``pos_embeder.`` (renamed)
``blocks.N.norm1|norm2|norm3.weight|bias``     layer norms before XCA, MLP, LPI
``blocks.N.attn.qkv.weight|bias``              (3C, C) / (3C,)
``blocks.N.attn.temperature``                  (heads, 1, 1)
``blocks.N.attn.proj.weight|bias``             (C, C) / (C,)
``blocks.N.local_mp.conv1|conv2.weight|bias``  depthwise (C, 1, 3, 3) / (C,)
``blocks.N.local_mp.bn.*``                     LPI batch norm
``blocks.N.mlp.fc1|fc2.weight|bias``           (4C, C) / (C, 4C)
``blocks.N.gamma1|gamma2|gamma3``              layer scales (C,) of XCA, MLP, LPI
=============================================  ==============================================

The classification parts of a timm file (``cls_token``, ``cls_attn_blocks.*``, ``norm.*``, ``head.*``)
are not part of the backbone; they are ignored and listed in the load report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.models.checkpoints import CheckpointError, CheckpointMismatchError, LoadReport


@dataclass(frozen=True)
class XcitConfig:
    """XCiT architecture.

    :param embed_dim: token channels C (divisible by 8 and by ``num_heads``).
    :param depth: number of XCA blocks.
    :param num_heads: attention heads.
    :param mlp_ratio: hidden width of the MLPs / C.
    :param layer_scale: initial value of the layer-scale vectors (eta; XCiT sec. 3).
    :param patch_size: 16 (the only stem built here).
    :param pos_hidden_dim: Fourier features per axis (32).
    :param pos_temperature: Fourier temperature T (10000).
    """

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    layer_scale: float = 1.0
    patch_size: int = 16
    pos_hidden_dim: int = 32
    pos_temperature: float = 10000.0

    def __post_init__(self) -> None:
        if self.patch_size != 16:
            raise ValueError(f"xcit.py: only patch size 16 is implemented, got {self.patch_size}")
        if self.embed_dim % 8 or self.embed_dim % self.num_heads:
            raise ValueError(f"xcit.py: embed_dim {self.embed_dim} must be divisible by 8 and by "
                             f"num_heads {self.num_heads}")
        if self.pos_hidden_dim % 2:
            raise ValueError(f"xcit.py: pos_hidden_dim must be even, got {self.pos_hidden_dim}")


XCIT_PRESETS: dict[str, XcitConfig] = {
    "s12": XcitConfig(embed_dim=384, depth=12, num_heads=8, layer_scale=1.0),
    "s24": XcitConfig(embed_dim=384, depth=24, num_heads=8, layer_scale=1e-5),
}


def xcit_preset(variant: str) -> XcitConfig:
    """``"s12"`` (XCiT-S12/16) or ``"s24"`` (XCiT-S24/16)."""
    try:
        return XCIT_PRESETS[variant.lower()]
    except KeyError:
        raise ValueError(f"xcit.py: unknown XCiT variant {variant!r}; known: {sorted(XCIT_PRESETS)}") from None


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out))


class ConvPatchEmbed(nn.Module):
    """Four stride-2 3x3 conv + BN stages with GELU between them: (B, 3, H, W) -> (B, C, H/16, W/16)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        c = embed_dim
        self.proj = nn.Sequential(_conv_bn(3, c // 8), nn.GELU(), _conv_bn(c // 8, c // 4), nn.GELU(),
                                  _conv_bn(c // 4, c // 2), nn.GELU(), _conv_bn(c // 2, c))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class FourierPositionalEncoding(nn.Module):
    """Fourier-feature positional encoding of an h x w token grid (XCiT sec. 3), (B, C, h, w)."""

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim, self.temperature = hidden_dim, float(temperature)
        self.token_projection = nn.Conv2d(2 * hidden_dim, dim, 1)

    def features(self, h: int, w: int, device: torch.device) -> Tensor:
        """The 2 * hidden_dim raw Fourier channels (1, 2 d, h, w): y features, then x features."""
        eps, two_pi = 1e-6, 2.0 * math.pi
        ys = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * two_pi
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * two_pi
        k = torch.arange(self.hidden_dim // 2, dtype=torch.float32, device=device)
        freqs = self.temperature ** (2.0 * k / self.hidden_dim)

        def encode(u: Tensor) -> Tensor:  # (n,) -> (n, d): sin(a0), cos(a0), sin(a1), cos(a1), ...
            angles = u[:, None] / freqs[None, :]
            return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)

        fy = encode(ys)[:, None, :].expand(h, w, -1)
        fx = encode(xs)[None, :, :].expand(h, w, -1)
        return torch.cat((fy, fx), dim=-1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, batch: int, h: int, w: int) -> Tensor:
        weight = self.token_projection.weight
        pos = self.token_projection(self.features(h, w, weight.device).to(weight.dtype))
        return pos.expand(batch, -1, -1, -1)


class XCA(nn.Module):
    """Cross-covariance attention (XCiT eq. 2-3): attention between channels, linear in tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(attention (B, heads, d_h, d_h), rows softmax-normalised; values (B, heads, d_h, N))."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # (B, heads, d_h, N)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1), v

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        attn, v = self.attention(x)
        return self.proj((attn @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3, GELU, BN, depthwise 3x3 on the (C, h, w) token map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        # contiguous: torch.export cannot prove the size guards of a convolution on the strided view
        y = x.transpose(1, 2).reshape(b, c, h, w).contiguous()
        y = self.conv2(self.bn(self.act(self.conv1(y))))
        return y.reshape(b, c, n).transpose(1, 2)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (the transformer feed-forward network)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class XCABlock(nn.Module):
    """One XCiT layer: XCA, LPI and MLP, each pre-normed, layer-scaled and residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), XCA(dim, num_heads)
        self.norm3, self.local_mp = nn.LayerNorm(dim, eps=1e-6), LPI(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.gamma3 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = x + self.gamma3 * self.local_mp(self.norm3(x), h, w)
        return x + self.gamma2 * self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) linear weights, zero biases, unit layer norms (timm / DeiT init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Xcit(nn.Module):
    """XCiT trunk without its classification head: images -> patch tokens on a stride-16 grid."""

    def __init__(self, config: XcitConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or XcitConfig()
        self.patch_embed = ConvPatchEmbed(config.embed_dim)
        self.pos_embed = FourierPositionalEncoding(config.embed_dim, config.pos_hidden_dim, config.pos_temperature)
        self.blocks = nn.ModuleList(
            XCABlock(config.embed_dim, config.num_heads, config.mlp_ratio, config.layer_scale)
            for _ in range(config.depth)
        )
        init_transformer_weights(self)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @staticmethod
    def grid_size(height: int, width: int, patch: int = 16) -> tuple[int, int]:
        """Token grid of an input: (ceil(H / 16), ceil(W / 16)). Written for ``torch.export`` (the ONNX path,
        :mod:`glocal.models.onnx_runtime`): no ``int()``, so symbolic sizes stay symbolic, and no floor
        division of a negative number (the ONNX exporter lowers it as a truncating division)."""
        return (height + patch - 1) // patch, (width + patch - 1) // patch

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> (tokens (B, h * w, C) row-major, (h, w)); see the module notes on padding."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"xcit.py: expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        h, w = self.grid_size(x.shape[-2], x.shape[-1], self.config.patch_size)
        # padded unconditionally (a zero pad is a cheap copy): a branch on the size would be frozen into an
        # exported graph
        x = F.pad(x, (0, w * 16 - x.shape[-1], 0, h * 16 - x.shape[-2]))
        fmap = self.patch_embed(x)
        fmap = fmap + self.pos_embed(fmap.shape[0], h, w).to(fmap.dtype)
        tokens = fmap.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, h, w)
        return tokens, (h, w)


# -- timm / official XCiT weights -----------------------------------------------------------------------
_TIMM_HEAD_PREFIXES = ("cls_token", "cls_attn_blocks.", "norm.", "head.", "dist_token", "head_dist.")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a torch file (``torch.load(weights_only=True)``), unwrapping ``model`` / ``state_dict`` /
    ``model_state`` and stripping ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"xcit.py: checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / runtime errors of several kinds
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {exc}") from exc
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors


def convert_timm_xcit(tensors: dict[str, Tensor], prefix: str = "") -> tuple[dict[str, Tensor], list[str]]:
    """timm / official XCiT (or ViTGaL release) names -> our backbone names: (state, ignored names).

    ``prefix`` is stripped first (e.g. ``"backbone."``); ``pos_embeder.`` becomes ``pos_embed.``; the
    classification parts (``cls_token``, ``cls_attn_blocks``, ``norm``, ``head``) are ignored."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for name, value in tensors.items():
        key = name.removeprefix(prefix) if prefix else name
        if key.startswith(_TIMM_HEAD_PREFIXES):
            ignored.append(name)
            continue
        if key.startswith("pos_embeder."):
            key = "pos_embed." + key.removeprefix("pos_embeder.")
        out[key] = value
    return out, ignored


def load_xcit_weights(model: Xcit, path: str | Path, prefix: str = "") -> LoadReport:
    """Load timm / official XCiT weights into ``model`` (strict except the ignored classification parts).

    :raises CheckpointMismatchError: missing, unexpected or mis-shaped parameters, naming the file.
    """
    tensors = read_state_dict(path)
    mapped, ignored = convert_timm_xcit(tensors, prefix)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in mapped and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in mapped if k not in own)
    misshaped = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                       for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    if missing or unexpected or misshaped:
        c = model.config
        hint = (f"the model is XCiT with C={c.embed_dim}, depth={c.depth}, heads={c.num_heads} "
                "(presets: s12 = 384/12/8, s24 = 384/24/8)")
        raise CheckpointMismatchError(path, "timm-xcit", missing, unexpected, misshaped, hint)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=False)
    return LoadReport(str(path), "timm-xcit", len(mapped), tuple(sorted(ignored)))
