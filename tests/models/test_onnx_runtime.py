"""ONNX Runtime path of the deep extractors: same outputs as torch at several input sizes, the cache."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from glocal.errors import MissingDependencyError
from glocal.io.images import LoadedImage  # noqa: E402
from glocal.methods import create_extractor  # noqa: E402
from glocal.models.delg import DelgConfig  # noqa: E402
from glocal.models.dolg import DolgConfig  # noqa: E402
from glocal.models.onnx_runtime import MIN_SIDE, OnnxModel, cache_dir  # noqa: E402
from glocal.models.vitgal import VitgalConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DELG = dict(scales=(1.0,), global_scales=(1.0,), attention_threshold=0.0, max_keypoints=30, max_side=128)
VITGAL = dict(embed_dim=48, depth=1, num_heads=4, local_dim=16, scales=(1.0,), global_scales=(1.0,),
              max_keypoints=30, max_side=128)
SIZES = [(128, 96), (80, 128)]  # two input sizes: the graph's height and width are dynamic


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOCAL_CACHE", str(tmp_path_factory.mktemp("glocal-cache")))
        yield cache_dir()


def _image(h: int, w: int, seed: int = 0) -> LoadedImage:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return LoadedImage(pixels, (2 * h, 2 * w), 0.5, (3.0, 5.0))


@pytest.fixture(scope="module")
def delg_pair(quiet) -> tuple:
    return quiet(create_extractor, "delg", **DELG), quiet(create_extractor, "delg", **DELG, runtime="onnx")


def _same_features(a, b) -> None:
    assert np.allclose(a.global_descriptor, b.global_descriptor, atol=1e-4)
    assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.scales, b.scales)
    assert np.allclose(a.strengths, b.strengths, rtol=1e-4, atol=1e-4)
    assert np.allclose(a.descriptors, b.descriptors, atol=1e-4)


@pytest.mark.parametrize("size", SIZES)
def test_delg_onnx_matches_torch(delg_pair: tuple, size: tuple[int, int]) -> None:
    torch_ext, onnx_ext = delg_pair
    image = _image(*size)
    _same_features(torch_ext.extract(image, "a"), onnx_ext.extract(image, "a"))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want, got = torch_ext._run_model(x, (True, True)), onnx_ext._run_model(x, (True, True))
    assert set(got) == set(want) == {"global_descriptor", "attention", "local_descriptors"}
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == torch.float32
        assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-4), k
    assert len(onnx_ext._onnx.exported) == 1  # one graph serves both sizes


def test_cache_reused_and_keyed_by_weights(delg_pair: tuple, onnx_cache: Path, quiet) -> None:
    _, first = delg_pair
    path = first._onnx.cache_path((True, True))
    assert path.parent == onnx_cache and path.is_file() and first._onnx.exported == [path]
    again = quiet(create_extractor, "delg", **DELG, runtime="onnx")
    image = _image(96, 112)
    _same_features(first.extract(image, "a"), again.extract(image, "a"))
    assert again._onnx.exported == [] and again._onnx.cache_path((True, True)) == path
    assert again._onnx.cache_path((True, False)) != path
    other = quiet(create_extractor, "delg", **DELG, runtime="onnx", seed=1)
    assert other._onnx.cache_path((True, True)) != path
    assert sorted(p.name for p in onnx_cache.iterdir()) == [path.name]  # no temporary file left


def test_small_levels_run_on_torch(delg_pair: tuple) -> None:
    torch_ext, onnx_ext = delg_pair
    image = _image(MIN_SIDE - 8, 100)
    _same_features(torch_ext.extract(image, "a"), onnx_ext.extract(image, "a"))


def test_dolg_onnx_matches_torch(quiet) -> None:
    conf = dict(scales=(1.0,), max_side=128)
    torch_ext, onnx_ext = quiet(create_extractor, "dolg", **conf), quiet(create_extractor, "dolg", **conf, runtime="onnx")
    for size in SIZES:
        image = _image(*size)
        want, got = torch_ext.extract(image, "a"), onnx_ext.extract(image, "a")
        assert np.allclose(want.global_descriptor, got.global_descriptor, atol=1e-4)
    assert len(onnx_ext._onnx.exported) == 1


def test_vitgal_onnx_matches_torch(quiet) -> None:
    torch_ext = quiet(create_extractor, "vitgal", **VITGAL)
    onnx_ext = quiet(create_extractor, "vitgal", **VITGAL, runtime="onnx")
    for size in [*SIZES, (99, 70)]:  # 99 x 70: padded to the 16-pixel patch grid
        image = _image(*size)
        _same_features(torch_ext.extract(image, "a"), onnx_ext.extract(image, "a"))
    assert len(onnx_ext._onnx.exported) == 1


def test_runtime_validated() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        DelgConfig(runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        DolgConfig(runtime="onnx", device="cuda")
    with pytest.raises(ValueError, match="runtime must be one of"):
        VitgalConfig(runtime="ONNX")
    assert DelgConfig(runtime="onnx").runtime == "onnx"


def test_missing_onnxruntime_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'glocal\[onnx\]'"):
        OnnxModel(torch.nn.Identity(), lambda model, x, flags: {"y": model(x)})
