"""gem: the EfficientNet-Lite trunk classifies ImageNet photos with the packaged weights, GeM is its formula,
the extractor's descriptors are unit 1280-D vectors that rank a crop of an image above another image, and a
missing weights package names the extra."""
from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glocal.errors import BadCheckpointError, MissingDependencyError
from glocal.io.images import LoadedImage
from glocal.models.backbones import efficientnet_lite as enl
from glocal.models.configs import GemConfig, resolved_preprocessing
from glocal.models.layers.gem import gem

pytestmark = pytest.mark.usefixtures("torch_one_thread")

skimage_data = pytest.importorskip("skimage.data")

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_OR_CUP = {967, 968}


def _needs(name: str) -> None:
    pytest.importorskip(enl.variant(name).module)


def _centre_crop(pixels: np.ndarray, side: int) -> torch.Tensor:
    """Shorter side resized to ``side``, centre crop, (x - 127) / 128: the EfficientNet-Lite evaluation input."""
    x = (torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    h, w = x.shape[-2:]
    s = side / min(h, w)
    x = F.interpolate(x, size=(max(side, round(h * s)), max(side, round(w * s))), mode="bilinear",
                      align_corners=False)
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    return x[..., top:top + side, left:left + side]


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_imagenet_head_recognises_a_cat_and_an_espresso(name: str) -> None:
    _needs(name)
    model = enl.efficientnet_lite(name).eval()  # loads with strict=True
    side = enl.variant(name).resolution
    x = torch.cat([_centre_crop(skimage_data.chelsea(), side), _centre_crop(skimage_data.coffee(), side)])
    with torch.inference_mode():
        top5 = model(x).topk(5, dim=1).indices.tolist()
    assert CATS & set(top5[0]), top5[0]
    assert ESPRESSO_OR_CUP & set(top5[1]), top5[1]
    assert top5[0][0] in CATS and top5[1][0] == 967  # (lite0/1/2 all put them first)


def test_layout_matches_the_state_dict_shapes() -> None:
    model = enl.EfficientNetLite("lite2")
    blocks = enl.block_layout(1.1, 1.2)
    assert len(blocks) == len(model._blocks) == 21
    assert [b.out_channels for b in blocks if b.stride == 2] == [24, 48, 88, 208]
    assert blocks[-1].out_channels == 352 and len(enl.block_layout(1.0, 1.0)) == 16
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 65, 100)).shape == (1, 1280, 3, 4)  # SAME padding: ceil(side / 32)


def test_same_padding_matches_tensorflow() -> None:
    conv = enl.SameConv2d(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        y = conv(torch.ones(1, 1, 4, 4))
    # TF SAME, stride 2, side 4: total padding 1, all of it at the bottom / right
    assert y[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_gem_is_the_formula() -> None:
    x = torch.arange(1, 25, dtype=torch.float32).view(1, 2, 3, 4) / 7.0
    for p in (1.0, 3.0, 4.5):
        expected = (x.pow(p).mean(dim=(2, 3))).pow(1.0 / p)
        assert torch.allclose(gem(x, p), expected, rtol=1e-6)
    assert torch.allclose(gem(x, 1.0), x.mean(dim=(2, 3)))
    assert (gem(x, 50.0) <= x.amax(dim=(2, 3)) + 1e-6).all() and (gem(x, 50.0) > gem(x, 3.0)).all()


def _image(pixels: np.ndarray, max_side: int = 224) -> LoadedImage:
    from PIL import Image

    h, w = pixels.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = np.asarray(Image.fromarray(pixels).resize((round(w * s), round(h * s)), Image.BILINEAR))
    return LoadedImage(pixels=small, original_size=(h, w), scale=s)


@pytest.fixture(scope="module")
def extractor():
    _needs("lite0")
    from glocal.models.gem import GemExtractor

    return GemExtractor(GemConfig(backbone="efficientnet-lite0", max_side=224, scales=(1.0, 0.7071)))


def test_descriptors_are_unit_1280d_and_a_crop_matches_its_image(extractor) -> None:
    cat = skimage_data.chelsea()
    f_cat = extractor.extract(_image(cat), "cat")
    f_crop = extractor.extract(_image(cat[20:280, 30:420]), "crop")
    f_cup = extractor.extract(_image(skimage_data.coffee()), "cup")
    for f in (f_cat, f_crop, f_cup):
        d = f.global_descriptor
        assert d.shape == (1, 1280) and d.dtype == np.float32
        assert abs(float(np.linalg.norm(d)) - 1.0) < 1e-5
        assert f.descriptors.shape == (0, 0) and f.keypoints.shape == (0, 2) and len(f.strengths) == 0
    same = float((f_cat.global_descriptor @ f_crop.global_descriptor.T)[0, 0])
    other = float((f_cat.global_descriptor @ f_cup.global_descriptor.T)[0, 0])
    assert same > other + 0.1, (same, other)
    assert extractor.name == "gem" and extractor.max_side == 224


def test_no_random_weights_warning(recwarn) -> None:
    _needs("lite0")
    from glocal.models.gem import GemExtractor

    GemExtractor(GemConfig(backbone="efficientnet-lite0"))
    assert not [w for w in recwarn if "meaningless" in str(w.message)]


def test_missing_package_names_the_extra(monkeypatch) -> None:
    module = enl.variant("lite2").module

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name == module or name.startswith(module + "."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(sys, "meta_path", [Blocked(), *sys.meta_path])
    with pytest.raises(MissingDependencyError) as err:
        enl.efficientnet_lite("lite2")
    message = str(err.value)
    assert "\n" not in message and "pip install 'glocal[pretrained]'" in message and module in message

    from glocal import methods

    with pytest.raises(MissingDependencyError, match=r"glocal\[pretrained\]"):
        methods.get("gem").check_installed()


def test_a_changed_weights_file_is_refused(monkeypatch) -> None:
    _needs("lite0")
    monkeypatch.setitem(enl.VARIANTS, "lite0", dataclasses.replace(enl.VARIANTS["lite0"], sha256="0" * 64))
    with pytest.raises(BadCheckpointError, match="sha256"):
        enl.efficientnet_lite("lite0")


def test_config_checks() -> None:
    assert resolved_preprocessing(GemConfig()) == "tf-127" and GemConfig().backbone == "efficientnet-lite2"
    assert resolved_preprocessing(GemConfig(backbone="resnet50")) == "imagenet"
    with pytest.raises(ValueError, match="backbone"):
        GemConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="gem_p"):
        GemConfig(gem_p=0)
    with pytest.raises(ValueError, match="runtime"):
        GemConfig(runtime="onnx")
    assert GemConfig(scales=[1, 0.5]).scales == (1.0, 0.5)
