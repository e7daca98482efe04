"""ALIKED: the release's parameter layout, the deformable convolution, keypoint detection, the fast extraction
path against the release's dense maps, the extractor's records and its refusals (random weights only: no
shared files in tests)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from glocal.errors import BadCheckpointError  # noqa: E402
from glocal.io.images import load_image  # noqa: E402
from glocal.models.aliked import ARCHS, FEATURE_SIDE, Aliked, AlikedExtractor, dense_lookup, guess_variant  # noqa: E402
from glocal.models.aliked_config import AlikedConfig  # noqa: E402
from glocal.models.aliked_detect import detect_keypoints, simple_nms  # noqa: E402
from glocal.models.layers.deformable import deform_conv2d  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: names and shapes of the n16 release file (aliked-n16.pth, 76 tensors), a sample of each kind
N16_SHAPES = {
    "block1.conv1.weight": (16, 3, 3, 3), "block1.bn2.num_batches_tracked": (),
    "block2.downsample.weight": (32, 16, 1, 1), "block2.downsample.bias": (32,),
    "block3.conv1.offset_conv.weight": (18, 32, 3, 3), "block3.conv1.offset_conv.bias": (18,),
    "block3.conv1.regular_conv.weight": (64, 32, 3, 3), "block4.conv2.regular_conv.weight": (128, 128, 3, 3),
    "block4.bn2.running_var": (128,), "conv1.weight": (32, 16, 1, 1), "conv4.weight": (32, 128, 1, 1),
    "score_head.0.weight": (8, 128, 1, 1), "score_head.2.weight": (4, 8, 3, 3), "score_head.6.weight": (1, 4, 3, 3),
    "desc_head.agg_weights": (16, 128, 128), "desc_head.offset_conv.0.weight": (32, 128, 3, 3),
    "desc_head.offset_conv.0.bias": (32,), "desc_head.offset_conv.2.weight": (32, 32, 1, 1),
    "desc_head.sf_conv.weight": (128, 128, 1, 1),
}


def _net(variant: str = "n16", seed: int = 0) -> Aliked:
    torch.manual_seed(seed)
    net = Aliked(ARCHS[variant]).eval()
    # non-trivial batch-norm statistics, so a load that skipped them would show
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def _photo(rng: np.random.Generator, h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth random image with blobs and edges (keypoints to find)."""
    base = rng.random((h // 8, w // 8, 3)).astype(np.float32)
    img = F.interpolate(torch.from_numpy(base).permute(2, 0, 1)[None], size=(h, w), mode="bicubic")[0]
    img = img.permute(1, 2, 0).numpy()
    img[h // 3: h // 2, w // 4: w // 2] = 1.0
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def test_parameter_layout_is_the_releases_and_a_saved_state_dict_loads_strict(tmp_path: Path) -> None:
    net = _net("n16")
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(own) == 76
    assert {k: own[k] for k in N16_SHAPES} == N16_SHAPES
    assert guess_variant(net.state_dict()) == "n16"
    assert own == {k: tuple(v.shape) for k, v in Aliked(ARCHS["n16rot"]).state_dict().items()}
    t16 = {k: tuple(v.shape) for k, v in Aliked(ARCHS["t16"]).state_dict().items()}
    n32 = {k: tuple(v.shape) for k, v in Aliked(ARCHS["n32"]).state_dict().items()}
    assert t16["block1.conv1.weight"] == (8, 3, 3, 3) and t16["desc_head.agg_weights"] == (16, 64, 64)
    assert n32["desc_head.agg_weights"] == (32, 128, 128) and n32["desc_head.offset_conv.2.weight"] == (64, 64, 1, 1)
    path = tmp_path / "aliked-n16.pth"
    torch.save(net.state_dict(), path)  # a plain state dict, as the release ships
    other = Aliked(ARCHS["n16"])
    other.load_state_dict(torch.load(path, weights_only=True), strict=True)
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(RuntimeError, match="size mismatch"):
        Aliked(ARCHS["n32"]).load_state_dict(torch.load(path, weights_only=True), strict=True)


def test_deformable_convolution_with_zero_and_integer_offsets_is_a_shifted_convolution() -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 7, 9), torch.randn(6, 5, 3, 3), torch.randn(6)
    zero = torch.zeros(2, 18, 7, 9)
    assert torch.allclose(deform_conv2d(x, zero, weight, bias), F.conv2d(x, weight, bias, padding=1), atol=1e-5)
    # every tap moved one pixel right and two down (dy = 2, dx = 1): the convolution of the shifted input
    shift = zero.clone()
    shift[:, 0::2], shift[:, 1::2] = 2.0, 1.0
    # out[y, x] = sum_ab w[a, b] x[y - 1 + a + 2, x - 1 + b + 1], zeros beyond the map
    shifted = F.pad(x, (1, 2, 1, 3))[:, :, 2:, 1:]
    assert torch.allclose(deform_conv2d(x, shift, weight, bias), F.conv2d(shifted, weight, bias), atol=1e-5)
    # half a pixel right on every tap: the average of the two neighbours (bilinear)
    half = zero.clone()
    half[:, 1::2] = 0.5
    padded = F.pad(x, (1, 1, 1, 1))
    avg = (padded + F.pad(padded, (0, 1))[:, :, :, 1:]) / 2
    assert torch.allclose(deform_conv2d(x, half, weight), F.conv2d(avg, weight), atol=1e-5)


def test_deformable_convolution_equals_torchvisions_operator() -> None:
    """Where torchvision is installed, its ``deform_conv2d`` (the operator the release was trained with) gives
    the same output for random offsets, reads beyond the map included."""
    ops = pytest.importorskip("torchvision.ops")
    torch.manual_seed(1)
    x, weight, bias = torch.randn(2, 4, 11, 13), torch.randn(3, 4, 3, 3), torch.randn(3)
    offset = torch.randn(2, 18, 11, 13) * 3
    want = ops.deform_conv2d(x, offset, weight, bias, padding=1)
    assert torch.allclose(deform_conv2d(x, offset, weight, bias, padding=1), want, atol=1e-4)


def test_nms_and_keypoints_find_subpixel_peaks() -> None:
    h, w = 40, 50
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    peaks = [(12.3, 10.0, 0.9), (30.0, 25.6, 0.7), (40.4, 8.2, 0.5)]  # (x, y, height)
    scores = torch.zeros(h, w)
    for px, py, a in peaks:
        scores = torch.maximum(scores, a * torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / 0.8))
    scores[1, 1] = 1.0  # on the border: never a keypoint
    kept = simple_nms(scores[None, None], 2)[0, 0]
    assert kept[10, 12] == scores[10, 12] and kept[10, 13] == 0 and kept[11, 12] == 0
    xy, strength = detect_keypoints(scores, radius=2, threshold=0.2, max_keypoints=10)
    assert xy.shape == (3, 2) and strength.shape == (3,)
    assert torch.all(strength[:-1] >= strength[1:])  # strongest first
    for (px, py, _), (x, y), s in zip(peaks, xy.tolist(), strength.tolist()):
        # the soft-argmax moves the integer maximum towards the true peak (and no further than half a pixel)
        for true, found in ((px, x), (py, y)):
            start = round(true)
            assert abs(found - start) < 0.5 and (found - start) * (true - start) >= 0
            assert (found != start) == (true != start)
        # the score is the map read bilinearly at the refined position
        x0, y0 = int(x), int(y)
        fx, fy = x - x0, y - y0
        want = ((1 - fx) * (1 - fy) * scores[y0, x0] + fx * (1 - fy) * scores[y0, x0 + 1]
                + (1 - fx) * fy * scores[y0 + 1, x0] + fx * fy * scores[y0 + 1, x0 + 1])
        assert abs(s - float(want)) < 1e-5
    xy2, _ = detect_keypoints(scores, radius=2, threshold=0.2, max_keypoints=2)
    assert torch.equal(xy2, xy[:2])
    assert detect_keypoints(scores, radius=2, threshold=0.8, max_keypoints=10)[0].shape == (1, 2)
    # nothing above the threshold: maxima above the map's mean instead (the release's fallback)
    assert detect_keypoints(scores, radius=2, threshold=2.0, max_keypoints=10)[0].shape == (3, 2)


@pytest.mark.parametrize("variant", ["t16", "n32"])
def test_fast_path_equals_the_releases_dense_maps(variant: str) -> None:
    net = _net(variant, seed=1)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(_photo(rng, 70, 100)).permute(2, 0, 1)[None].float() / 255  # padded to 96 x 128
    with torch.no_grad():
        features, scores = net.dense(image)
        enc = net.encode(image)
        assert features.shape == (1, ARCHS[variant].dim, 70, 100) and scores.shape == (1, 1, 70, 100)
        assert torch.allclose(net.score_map(enc), scores, atol=1e-5)
        xy = torch.tensor([[10.0, 10.0], [50.3, 33.7], [97.5, 68.2], [0.4, 69.0]])
        ix, iy = torch.tensor([0, 5, 99, -1, 100]), torch.tensor([0, 60, 69, 3, 3])
        fast, ref = net.lookup(enc)(ix, iy), dense_lookup(features[0])(ix, iy)
        assert torch.allclose(fast, ref, atol=1e-5) and torch.all(ref[3:] == 0)  # off the map: zeros
        desc = net.desc_head(net.lookup(enc), enc.size, xy)
        assert torch.allclose(desc, net.desc_head(dense_lookup(features[0]), enc.size, xy), atol=1e-4)
    # the head's bilinear reads equal grid_sample on the dense map (pixel centres at integers)
    from glocal.models.aliked import _bilinear

    pos = torch.tensor([[3.25, 4.5], [98.9, 0.1], [-0.5, 10.0]])
    grid = (2 * pos / torch.tensor([99.0, 69.0]) - 1).view(1, 1, -1, 2)
    want = F.grid_sample(features, grid, mode="bilinear", align_corners=True)[0, :, 0].t()
    assert torch.allclose(_bilinear(dense_lookup(features[0]), pos), want, atol=1e-5)


def _extractor(tmp_path: Path, variant: str = "n16", **kw) -> AlikedExtractor:
    path = tmp_path / f"aliked-{variant}.pth"
    torch.save(_net(variant, seed=2).state_dict(), path)
    return AlikedExtractor(AlikedConfig(checkpoint=str(path), variant=variant, **kw))


@pytest.mark.parametrize("variant", ["n16", "t16"])
def test_extraction_records(tmp_path: Path, variant: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    img = tmp_path / "im.png"
    Image.fromarray(_photo(rng, 120, 160)).save(img)
    ex = _extractor(tmp_path, variant, max_side=80, score_threshold=0.0, max_keypoints=50)
    loaded = load_image(img, max_side=ex.max_side)
    assert loaded.pixels.shape == (60, 80, 3)
    f = ex.extract(loaded, "im")
    dim = ARCHS[variant].dim
    assert ex.descriptor_dim == dim and f.descriptors.shape == (len(f.keypoints), dim)
    assert 0 < len(f.keypoints) <= 50 and f.keypoints.dtype == np.float32
    # original-image pixels (the image was loaded at half size), inside the image
    assert np.all(f.keypoints >= 0) and np.all(f.keypoints[:, 0] <= 159) and np.all(f.keypoints[:, 1] <= 119)
    assert f.keypoints[:, 0].max() > 80  # beyond the loaded width: scaled back
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(f.strengths) <= 0) and np.all((f.strengths >= 0) & (f.strengths <= 1))
    np.testing.assert_allclose(f.scales, FEATURE_SIDE * 2)
    again = ex.extract(loaded, "im")
    np.testing.assert_array_equal(again.descriptors, f.descriptors)  # deterministic


def test_refusals_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadCheckpointError, match="needs the ALIKED weights.*--checkpoint aliked-n16") as exc:
        AlikedExtractor(AlikedConfig())
    assert "\n" not in str(exc.value)
    with pytest.raises(BadCheckpointError, match="not found"):
        AlikedExtractor(AlikedConfig(checkpoint=str(tmp_path / "missing.pth")))
    torch.save(_net("t16").state_dict(), tmp_path / "t16.pth")
    with pytest.raises(BadCheckpointError, match="fits variant=t16: add --set variant=t16") as exc:
        AlikedExtractor(AlikedConfig(checkpoint=str(tmp_path / "t16.pth"), variant="n16"))
    assert "\n" not in str(exc.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AlikedExtractor(AlikedConfig(random_weights=True))
    assert any("RANDOM weights" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="variant must be one of"):
        AlikedConfig(variant="n64")
