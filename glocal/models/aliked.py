"""ALIKED (Zhao, Wu, Chen, Chen, Xu & Li, "ALIKED: A Lighter Keypoint and Descriptor Extraction Network via
Deformable Transformation", IEEE TIM 2023): the network, in plain PyTorch, with the parameter names of the
authors' release (``aliked-{t16,n16,n16rot,n32}.pth``, plain state dicts, BSD-3-Clause), so those files load
with ``strict=True``.

Network (:class:`Aliked`), input RGB in [0, 1], padded (edge replication, centred) to a multiple of 32:

* encoder: ``block1`` two 3x3 conv + BN + SELU at full resolution; 2x2 average pool; ``block2`` a residual
  block (3x3 convs, 1x1 shortcut with bias) at 1/2; 4x4 pool; ``block3`` a residual block of deformable 3x3
  convs (:mod:`glocal.models.layers.deformable`) at 1/8; 4x4 pool; ``block4`` the same at 1/32;
* aggregation: ``conv1..4`` 1x1 (no bias) + SELU to ``dim / 4`` channels each, bilinearly upsampled
  (corners aligned) to full resolution and concatenated: ``dim`` channels;
* score head: 1x1 (dim -> 8), SELU, 3x3 (8 -> 4), SELU, 3x3 (4 -> 4), SELU, 3x3 (4 -> 1), sigmoid;
  the feature map is the concatenation, L2-normalised per pixel;
* SDDH descriptor head (:class:`SparseDeformableHead`, sec. III-C): for each keypoint, the K x K feature
  patch around it gives M offsets (K x K conv, SELU, 1x1 conv); the map is sampled bilinearly at the keypoint
  plus each offset, each sample goes through a 1x1 conv (``sf_conv``) and SELU, and the M samples are
  aggregated by M learned (dim x dim) matrices (``agg_weights``): ``d = sum_m W_m^T selu(S f(p + dp_m))``,
  then L2-normalised.

Keypoints (:mod:`glocal.models.aliked_detect`): score-map maxima after non-maximum suppression, above a
threshold, strongest ``max_keypoints`` kept, refined by a soft-argmax in the NMS window (DKD, sec. III-B).

Variants (c1, c2, c3, c4, dim, K, M): t16 (8, 16, 32, 64, 64, 3, 16), n16 and n16rot (16, 32, 64, 128, 128,
3, 16), n32 (16, 32, 64, 128, 128, 3, 32).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.errors import BadCheckpointError
from glocal.io.images import LoadedImage
from glocal.models.aliked_config import AlikedConfig
from glocal.models.aliked_detect import detect_keypoints
from glocal.models.checkpoints import CheckpointMismatchError, load_checkpoint, read_tensors
from glocal.models.extractor_base import seeded_init
from glocal.models.layers.deformable import DeformableConv2d
from glocal.records import ImageFeatures

#: side of the square a keypoint stands for, in loaded-image pixels (what ``ImageFeatures.scales`` holds,
#: divided by the load scale): the stride of the coarsest map (block 4) every descriptor draws on
FEATURE_SIDE = 32.0
#: the input is padded to a multiple of this (the coarsest map's stride)
STRIDE = 32
RELEASE_URL = "https://github.com/Shiaoming/ALIKED/raw/main/models"


@dataclass(frozen=True)
class AlikedArch:
    """Widths of one ALIKED variant: encoder blocks ``c1..c4``, descriptor ``dim``, SDDH patch ``kernel`` (K)
    and sampling positions ``positions`` (M)."""

    c1: int
    c2: int
    c3: int
    c4: int
    dim: int
    kernel: int
    positions: int


ARCHS: dict[str, AlikedArch] = {
    "t16": AlikedArch(8, 16, 32, 64, 64, 3, 16),
    "n16": AlikedArch(16, 32, 64, 128, 128, 3, 16),
    "n16rot": AlikedArch(16, 32, 64, 128, 128, 3, 16),
    "n32": AlikedArch(16, 32, 64, 128, 128, 3, 32),
}


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by batch norm and SELU (``block1``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.selu(self.bn1(self.conv1(x)))
        return F.selu(self.bn2(self.conv2(x)))


class ResBlock(nn.Module):
    """Residual block: ``selu(bn2(conv2(selu(bn1(conv1(x))))) + downsample(x))``; the convolutions are regular
    or deformable 3x3, ``downsample`` a 1x1 convolution with bias (the widths differ in every ALIKED block)."""

    def __init__(self, cin: int, cout: int, deformable: bool) -> None:
        super().__init__()
        make = (lambda i, o: DeformableConv2d(i, o)) if deformable else _conv3x3
        self.conv1, self.bn1 = make(cin, cout), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = make(cout, cout), nn.BatchNorm2d(cout)
        self.downsample = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.selu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.selu(out + self.downsample(x))


#: ``at(ix, iy)``: the L2-normalised feature vectors (P, dim) at integer map pixels (P,), zeros off the map
FeatureLookup = Callable[[Tensor, Tensor], Tensor]


class SparseDeformableHead(nn.Module):
    """SDDH (ALIKED sec. III-C): descriptors at given keypoints from M deformably placed samples each."""

    def __init__(self, dim: int, kernel: int, positions: int) -> None:
        super().__init__()
        self.kernel, self.positions = kernel, positions
        self.offset_conv = nn.Sequential(nn.Conv2d(dim, 2 * positions, kernel), nn.SELU(),
                                         nn.Conv2d(2 * positions, 2 * positions, 1))
        self.sf_conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.agg_weights = nn.Parameter(torch.empty(positions, dim, dim))
        nn.init.uniform_(self.agg_weights, -(dim ** -0.5), dim ** -0.5)

    def forward(self, at: FeatureLookup, size: tuple[int, int], xy: Tensor) -> Tensor:
        """Descriptors (N, dim), unit length, of the keypoints ``xy`` (N, 2; x, y in map pixels, pixel centres
        at integers) on a feature map of ``size`` (H, W) read through ``at``."""
        h, w = size
        n, k = xy.shape[0], self.kernel
        dim = self.sf_conv.weight.shape[0]
        if n == 0:
            return xy.new_zeros((0, dim))
        # the K x K patch around each keypoint's pixel (zeros beyond the map)
        taps = torch.arange(k, device=xy.device) - k // 2
        cx, cy = xy[:, 0].long().clamp(0, w - 1), xy[:, 1].long().clamp(0, h - 1)
        ix = (cx[:, None, None] + taps[None, None, :]).expand(n, k, k)
        iy = (cy[:, None, None] + taps[None, :, None]).expand(n, k, k)
        patches = at(ix.reshape(-1), iy.reshape(-1)).view(n, k, k, dim).permute(0, 3, 1, 2)
        limit = max(h, w) / 4.0
        offsets = self.offset_conv(patches).clamp(-limit, limit).view(n, 2, self.positions).transpose(1, 2)
        pos = (xy[:, None, :] + offsets).reshape(-1, 2)  # (N*M, 2): the first M channels move x, the next M y
        sampled = _bilinear(at, pos).view(n, self.positions, dim).permute(0, 2, 1)  # (N, dim, M)
        sampled = F.selu(self.sf_conv(sampled[..., None]))[..., 0]
        desc = torch.einsum("ncm,mcd->nd", sampled, self.agg_weights)
        return F.normalize(desc, p=2.0, dim=1)


def _bilinear(at: FeatureLookup, pos: Tensor) -> Tensor:
    """Bilinear interpolation (P, dim) of the map read by ``at`` at real positions ``pos`` (P, 2) from its four
    integer neighbours; neighbours off the map count as zeros (``grid_sample`` with zero padding)."""
    x0, y0 = pos[:, 0].floor(), pos[:, 1].floor()
    fx, fy = (pos[:, 0] - x0)[:, None], (pos[:, 1] - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    ix = torch.cat((x0, x0 + 1, x0, x0 + 1))
    iy = torch.cat((y0, y0, y0 + 1, y0 + 1))
    v = at(ix, iy).view(4, pos.shape[0], -1)
    return (v[0] * (1 - fx) + v[1] * fx) * (1 - fy) + (v[2] * (1 - fx) + v[3] * fx) * fy


def dense_lookup(features: Tensor) -> FeatureLookup:
    """``at`` over a full feature map (dim, H, W)."""
    _, h, w = features.shape

    def at(ix: Tensor, iy: Tensor) -> Tensor:
        inside = ((ix >= 0) & (ix < w) & (iy >= 0) & (iy < h))[:, None]
        return features[:, iy.clamp(0, h - 1), ix.clamp(0, w - 1)].t() * inside

    return at


@dataclass
class EncodedImage:
    """The encoder's outputs for one image: the full-resolution part ``x1`` and the three coarser parts
    (after their 1x1 convolution and SELU, before upsampling), all on the padded grid; ``pad`` (left, right,
    top, bottom) and the unpadded ``size`` (H, W)."""

    x1: Tensor
    coarse: tuple[tuple[Tensor, int], ...]
    pad: tuple[int, int, int, int]
    size: tuple[int, int]


class Aliked(nn.Module):
    """The ALIKED network (module docstring); parameter names as in the authors' release.

    :meth:`dense` computes the release's full maps; extraction uses the cheaper, equal :meth:`encode` +
    :meth:`score_map` + :meth:`lookup`: the score head's first 1x1 convolution is linear, so it is applied to
    each part before the (linear) upsampling, and descriptors read the concatenated, normalised features only
    at the pixels they sample (an upsampled value at a pixel is one bilinear read of the coarse part)."""

    checkpoint_family = "aliked"

    def __init__(self, arch: AlikedArch) -> None:
        super().__init__()
        self.arch = arch
        self.block1 = ConvBlock(3, arch.c1)
        self.block2 = ResBlock(arch.c1, arch.c2, deformable=False)
        self.block3 = ResBlock(arch.c2, arch.c3, deformable=True)
        self.block4 = ResBlock(arch.c3, arch.c4, deformable=True)
        q = arch.dim // 4
        self.conv1 = nn.Conv2d(arch.c1, q, 1, bias=False)
        self.conv2 = nn.Conv2d(arch.c2, q, 1, bias=False)
        self.conv3 = nn.Conv2d(arch.c3, q, 1, bias=False)
        self.conv4 = nn.Conv2d(arch.c4, q, 1, bias=False)
        self.score_head = nn.Sequential(nn.Conv2d(arch.dim, 8, 1, bias=False), nn.SELU(), _conv3x3(8, 4), nn.SELU(),
                                        _conv3x3(4, 4), nn.SELU(), _conv3x3(4, 1))
        self.desc_head = SparseDeformableHead(arch.dim, arch.kernel, arch.positions)

    def encode(self, image: Tensor) -> EncodedImage:
        """Encoder and per-part 1x1 convolutions of RGB ``image`` (1, 3, H, W) in [0, 1], padded (edge
        replication, centred) to a multiple of 32."""
        h, w = image.shape[-2:]
        ph, pw = -h % STRIDE, -w % STRIDE
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = F.pad(image, pad, mode="replicate") if ph or pw else image
        x1 = self.block1(x)
        x2 = self.block2(F.avg_pool2d(x1, 2))
        x3 = self.block3(F.avg_pool2d(x2, 4))
        x4 = self.block4(F.avg_pool2d(x3, 4))
        coarse = ((F.selu(self.conv2(x2)), 2), (F.selu(self.conv3(x3)), 8), (F.selu(self.conv4(x4)), 32))
        return EncodedImage(F.selu(self.conv1(x1)), coarse, pad, (int(h), int(w)))

    def _crop(self, enc: EncodedImage, x: Tensor) -> Tensor:
        (left, _, top, _), (h, w) = enc.pad, enc.size
        return x[..., top:top + h, left:left + w]

    def score_map(self, enc: EncodedImage) -> Tensor:
        """Score map (1, 1, H, W) in [0, 1]: the score head on the concatenated parts, its first (linear)
        layer applied to each part before upsampling."""
        first = self.score_head[0].weight
        q = enc.x1.shape[1]
        s = F.conv2d(enc.x1, first[:, :q])
        size = enc.x1.shape[-2:]
        for i, (part, _) in enumerate(enc.coarse, start=1):
            s = s + F.interpolate(F.conv2d(part, first[:, i * q:(i + 1) * q]), size=size, mode="bilinear",
                                  align_corners=True)
        return self._crop(enc, torch.sigmoid(self.score_head[1:](s)))

    def lookup(self, enc: EncodedImage) -> FeatureLookup:
        """``at`` over the feature map :meth:`dense` would return, computing only the pixels asked for."""
        (left, _, top, _), (h, w) = enc.pad, enc.size
        hp, wp = enc.x1.shape[-2:]

        def at(ix: Tensor, iy: Tensor) -> Tensor:
            inside = ((ix >= 0) & (ix < w) & (iy >= 0) & (iy < h))[:, None]
            px, py = ix.clamp(0, w - 1) + left, iy.clamp(0, h - 1) + top
            parts = [enc.x1[0][:, py, px]]
            # align_corners upsampling: output pixel p reads the coarse part at p * (n_in - 1) / (n_out - 1)
            grid = torch.stack((2 * px / (wp - 1) - 1, 2 * py / (hp - 1) - 1), dim=-1).to(enc.x1.dtype)
            for part, _ in enc.coarse:
                parts.append(F.grid_sample(part, grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)[0, :, 0])
            return F.normalize(torch.cat(parts).t(), p=2.0, dim=1) * inside

        return at

    def dense(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The release's maps: (L2-normalised feature map (1, dim, H, W), score map (1, 1, H, W)) of RGB
        ``image`` (1, 3, H, W) in [0, 1]."""
        enc = self.encode(image)
        parts = [enc.x1] + [F.interpolate(p, scale_factor=f, mode="bilinear", align_corners=True)
                            for p, f in enc.coarse]  # the padded side is a multiple of 32: sizes agree
        x1234 = torch.cat(parts, dim=1)
        scores = torch.sigmoid(self.score_head(x1234))
        return self._crop(enc, F.normalize(x1234, p=2.0, dim=1)), self._crop(enc, scores)


def guess_variant(tensors: dict[str, Tensor]) -> str | None:
    """The release variant whose parameter names and shapes a state dict has (n16 and n16rot share one
    architecture: ``n16`` is returned for both), else None."""
    for name in ("t16", "n16", "n32"):
        with seeded_init(0):
            own = Aliked(ARCHS[name]).state_dict()
        if set(own) <= set(tensors) and all(tuple(tensors[k].shape) == tuple(v.shape) for k, v in own.items()):
            return name
    return None


class AlikedExtractor:
    """ALIKED keypoints and descriptors of one image; keypoints in original-image pixels, ``scales`` the
    constant :data:`FEATURE_SIDE` in original pixels, ``strengths`` the keypoint scores (strongest first)."""

    name = "aliked"

    def __init__(self, config: AlikedConfig | None = None) -> None:
        self.config = cfg = config or AlikedConfig()
        arch = ARCHS[cfg.variant]
        self.descriptor_dim = arch.dim
        self.device = torch.device(cfg.device)
        with seeded_init(cfg.seed):
            self.net = Aliked(arch)
        if cfg.checkpoint:
            self._load(Path(cfg.checkpoint))
        elif cfg.random_weights:
            warnings.warn("aliked.py: random_weights=True: ALIKED runs on RANDOM weights; the features are "
                          "meaningless", stacklevel=2)
        else:
            raise BadCheckpointError(
                "method 'aliked' needs the ALIKED weights: pass --checkpoint aliked-n16 (downloads the "
                f"BSD-3-Clause release from {RELEASE_URL}) or --set checkpoint=PATH/aliked-{cfg.variant}.pth")
        self.net.eval().to(self.device)

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise BadCheckpointError(f"{path}: ALIKED checkpoint not found (the release files are "
                                     f"{RELEASE_URL}/aliked-<t16|n16|n16rot|n32>.pth)")
        try:
            load_checkpoint(self.net, path)
        except CheckpointMismatchError as exc:
            fits = guess_variant(read_tensors(path)[0])
            hint = (f" The file fits variant={fits}: add --set variant={fits}." if fits and fits != self.config.variant
                    else "")
            raise BadCheckpointError(f"{exc} (variant={self.config.variant}).{hint}") from None

    @property
    def max_side(self) -> int:
        return self.config.max_side

    def _tensor(self, pixels: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).to(self.device)
        return x.permute(2, 0, 1)[None].float() / 255.0

    @torch.inference_mode()
    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        """Features of one loaded image (keypoints, scales in original-image pixels)."""
        cfg = self.config
        enc = self.net.encode(self._tensor(image.pixels))
        xy, strengths = detect_keypoints(self.net.score_map(enc)[0, 0], cfg.nms_radius, cfg.score_threshold,
                                         cfg.max_keypoints)
        desc = self.net.desc_head(self.net.lookup(enc), enc.size, xy)
        inv = 1.0 / image.scale
        keypoints = xy.cpu().numpy().astype(np.float32) * np.float32(inv) + np.asarray(image.offset, np.float32)
        return ImageFeatures(
            name=name,
            image_size=image.original_size,
            descriptors=desc.float().cpu().numpy().astype(np.float32).reshape(-1, self.descriptor_dim),
            keypoints=keypoints.reshape(-1, 2).astype(np.float32),
            scales=np.full(len(keypoints), FEATURE_SIDE * inv, np.float32),
            strengths=strengths.cpu().numpy().astype(np.float32),
        )
