"""Receptive fields from the layer walk, checked against a brute-force gradient probe.

The probe back-propagates from one output location to the input and takes the centre of the region of
non-zero input gradient. To make that region the whole receptive field, the probe runs a "geometry
twin" of the network: every convolution replaced by a 1-channel one with the same kernel, stride,
padding and dilation and positive weights, batch norms by identities and max-pools by average-pools of
the same geometry (a max-pool's gradient reaches only its arg-max). One probe also runs the real
ResNet-50 up to res3 with all its channels.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from glocal.models.extractor_base import torch_threads
from glocal.models.geometry.receptive_field import ReceptiveFieldError, feature_centers_xy, receptive_field
from glocal.models.layers.backbone import BackboneConfig, ResNetBackbone, SamePad2d


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads are many times slower."""
    with torch_threads(1):
        yield


def _twin(module: nn.Module) -> nn.Module:
    """Same geometry, one channel, positive weights, no max-pools, no batch norm."""
    if isinstance(module, nn.Conv2d):
        conv = nn.Conv2d(1, 1, module.kernel_size, module.stride, module.padding, module.dilation, bias=False)
        nn.init.constant_(conv.weight, 1.0 / conv.weight.numel())
        return conv
    if isinstance(module, nn.MaxPool2d):
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if isinstance(module, nn.BatchNorm2d):
        return nn.Identity()
    twin = copy.copy(module)
    twin._modules = {k: _twin(m) if m is not None else None for k, m in module._modules.items()}
    return twin


def _probe(net: nn.Module, channels: int, size: tuple[int, int], index: tuple[int, int] | None
           ) -> tuple[tuple[int, int], float, float]:
    """(index, cy, cx): centre of the input region whose gradient is non-zero for output ``index``
    (default: the middle of the output map)."""
    x = torch.ones(1, channels, *size, dtype=torch.float64, requires_grad=True)
    y = net(x)
    index = index or (y.shape[2] // 2, y.shape[3] // 2)
    y[0, :, index[0], index[1]].sum().backward()
    nz = (x.grad[0].abs().sum(0) > 0).numpy()
    rows, cols = np.nonzero(nz.any(1))[0], np.nonzero(nz.any(0))[0]
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < size[0] - 1 and cols.max() < size[1] - 1, \
        "receptive field clipped by the border: pick another index"
    return index, (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2


def _check(path: list[nn.Module], size: tuple[int, int], index: tuple[int, int] | None = None,
           channels: int = 1) -> None:
    net = nn.Sequential(*path) if channels > 1 else nn.Sequential(*[_twin(m) for m in path])
    net = net.double().eval()
    index, cy, cx = _probe(net, channels, size, index)
    rf_y, rf_x = receptive_field(path, 0, size[0]), receptive_field(path, 1, size[1])
    assert rf_y.centers(index[0] + 1)[-1] == pytest.approx(cy)
    assert rf_x.centers(index[1] + 1)[-1] == pytest.approx(cx)


@pytest.mark.parametrize("size", [(87, 90), (91, 86)])
def test_toy_chains_match_probe(size: tuple[int, int]) -> None:
    path = [
        nn.Conv2d(1, 1, 3, stride=2, padding=1),
        nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True),
        nn.Conv2d(1, 1, (3, 5), stride=1, padding=(2, 1), dilation=(2, 1)),
        SamePad2d(4, 2),
        nn.Conv2d(1, 1, 4, stride=2),
        nn.AvgPool2d(2, stride=1),
    ]
    _check(path, size)


@pytest.fixture(scope="module")
def backbones() -> dict[str, ResNetBackbone]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return {
            "torchvision": ResNetBackbone(BackboneConfig()),
            "tf": ResNetBackbone(BackboneConfig(style="tf", decimate_res4=True)),
        }


@pytest.mark.parametrize("stage,size,index", [("res3", (160, 160), (10, 9)), ("res4", (288, 290), (9, 9)),
                                              ("res5", (480, 480), (7, 8))])
def test_resnet50_torchvision_matches_probe(backbones, stage, size, index) -> None:
    _check(backbones["torchvision"].path_to(stage), size, index)


@pytest.mark.parametrize("size", [(320, 321), (321, 322)])
def test_resnet50_tf_style_decimated_res4_matches_probe(backbones, size) -> None:
    """TF layout: stride on the 1x1 convs, 'same' stem padding (size dependent), res4 decimated."""
    path = backbones["tf"].path_to("res4")
    _check(path, size)
    rf = receptive_field(path, 0, size[0])
    assert rf.stride == 32 and rf.size == 291  # TF DELF/DELG's hard-coded (rf, stride) = (291, 32)


def test_full_width_resnet50_res3_matches_probe(backbones) -> None:
    """The real network (all channels, positive weights), not a twin."""
    bb = copy.deepcopy(backbones["torchvision"]).double().eval()
    for m in bb.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
    path = [_twin(m) if isinstance(m, nn.MaxPool2d) else m for m in bb.path_to("res3")]
    _check(path, (112, 112), (7, 7), channels=3)


def test_centres_grid_and_errors() -> None:
    rf = receptive_field([nn.Conv2d(1, 1, 3, stride=2, padding=1)], 0, 9)
    xy = feature_centers_xy(rf, rf, 2, 3)
    assert xy.tolist() == [[0, 0], [2, 0], [4, 0], [0, 2], [2, 2], [4, 2]]
    with pytest.raises(ReceptiveFieldError, match="LSTM"):
        receptive_field([nn.LSTM(2, 2)])
    with pytest.raises(ReceptiveFieldError, match="input_length"):
        receptive_field([SamePad2d(3, 2), nn.Conv2d(1, 1, 3, 2)])
