"""The pieces of the landmark detector: IoU, greedy NMS, decoding, FCOS targets and losses, trunks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glocal.errors import MissingDependencyError
from glocal.models.backbones.efficientnet_lite import EfficientNetLite
from glocal.models.detection.decode import box_iou, decode, locations, nms
from glocal.models.detection.head import FcosHead, TopDownNeck
from glocal.models.detection.losses import assign, centerness_target, fcos_loss, focal_loss, giou_loss
from glocal.models.detection.trunk import TRUNKS, FeatureTrunk, RegistryTrunk, as_trunk

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_box_iou_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 1.0, 0.0, 25 / 100]]))


def test_greedy_nms_keeps_the_best_of_each_cluster_best_first():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9], [52, 50, 62, 60]])
    scores = torch.tensor([0.8, 0.9, 0.3, 0.95, 0.2])
    # 3 (0.95) suppresses 1 (IoU 72 / 118 = 0.61) and 0 (IoU 0.9); 2 suppresses 4 (IoU 80 / 120 = 0.67)
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    # at IoU 0.7 only 0 goes (0.9 with 3)
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2, 4]
    assert nms(boxes, scores, 0.7, limit=2).tolist() == [3, 1]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_locations_are_cell_centres():
    p = locations(2, 3, 16)
    assert p.tolist() == [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]


def test_decode_thresholds_clips_and_suppresses():
    points = locations(2, 3, 16)  # 6 locations
    big = 10.0
    cls = torch.tensor([big, big, -big, -big, -big, big])  # locations 0, 1, 5 fire
    ctr = torch.full((6,), big)
    d = torch.tensor([[8.0, 8, 20, 20]] * 6)  # location 0 -> (0, 0, 28, 28); 1 -> (16, 0, 44, 28); 5 -> (32, 16, 60, 44)
    boxes, scores = decode(cls, d, ctr, points, (40, 48), score_threshold=0.5, nms_iou=0.3)
    # 0 and 1 overlap by IoU 12 * 28 / (2 * 784 - 336) = 0.27 < 0.3: all three kept; 5 clipped to 48 x 40
    assert len(boxes) == 3 and torch.all(scores > 0.99)
    assert [40.0, 48.0] == [float(boxes[:, 3].max()), float(boxes[:, 2].max())]
    boxes, _ = decode(cls, d, ctr, points, (40, 48), score_threshold=0.5, nms_iou=0.2)
    assert len(boxes) == 2
    # a location outside the image (the input was padded) never gives a box; the threshold applies
    boxes, _ = decode(cls, d, ctr, points, (20, 48), score_threshold=0.5, nms_iou=0.3)
    assert len(boxes) == 2
    assert len(decode(cls - 2 * big, d, ctr, points, (40, 48), score_threshold=0.1)[0]) == 0


def test_focal_loss_is_eq_5_of_lin_et_al():
    logits = torch.tensor([0.3, -1.2])
    targets = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(logits)
    expected = -0.25 * (1 - p[0]) ** 2 * torch.log(p[0]) - 0.75 * p[1] ** 2 * torch.log(1 - p[1])
    torch.testing.assert_close(focal_loss(logits, targets), expected)
    # gamma = 0, alpha = 0.5: half the cross-entropy
    torch.testing.assert_close(focal_loss(logits, targets, alpha=0.5, gamma=0.0),
                               0.5 * F.binary_cross_entropy_with_logits(logits, targets, reduction="sum"))


def test_giou_loss_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10]])
    # identical: 0; half overlap: 1 - 1/3 (hull = union); disjoint: IoU 0, hull 300, union 200 -> 1 + 1/3
    torch.testing.assert_close(giou_loss(a, b), torch.tensor([0.0, 2 / 3, 4 / 3]))


def test_centerness_target_is_eq_3():
    t = centerness_target(torch.tensor([[5.0, 5, 5, 5], [2, 3, 8, 6], [0, 1, 1, 1]]))
    torch.testing.assert_close(t, torch.tensor([1.0, math.sqrt(2 / 8 * 3 / 6), 0.0]))


def test_assign_prefers_the_smaller_box_and_gives_tiny_boxes_a_location():
    points = locations(4, 4, 16)  # centres 8, 24, 40, 56
    boxes = torch.tensor([[0.0, 0, 64, 64], [16, 16, 48, 48], [50, 2, 54, 6]])  # whole, middle, tiny (no centre)
    positive, target = assign(points, boxes)
    assert bool(positive.all())  # every location is inside the whole box
    middle = [5, 6, 9, 10]  # (24, 24), (40, 24), (24, 40), (40, 40)
    assert all(target[i].tolist() == [16, 16, 48, 48] for i in middle)
    assert target[3].tolist() == [50, 2, 54, 6]  # (56, 8) is nearest to the tiny box's centre (52, 4)
    assert target[0].tolist() == [0, 0, 64, 64]
    none, _ = assign(points, torch.zeros(0, 4))
    assert not none.any()


def test_fcos_loss_is_small_for_a_perfect_prediction_and_large_otherwise():
    points = locations(4, 4, 16)
    box = torch.tensor([[4.0, 4, 36, 36]])
    positive, target = assign(points, box)
    ltrb = torch.cat([points - target[:, :2], target[:, 2:] - points], dim=1)
    ctr = centerness_target(ltrb)
    good_cls = torch.where(positive, 12.0, -12.0)[None]
    good_ctr = torch.logit(ctr.clamp(1e-4, 1 - 1e-4))[None]
    good = fcos_loss(good_cls, ltrb.clamp(min=0.1)[None], good_ctr, points, [box])
    bad = fcos_loss(-good_cls, torch.full((1, 16, 4), 3.0), torch.zeros(1, 16), points, [box])
    assert float(good["classification"]) < 1e-3 and float(good["box"]) < 1e-4
    assert float(bad["classification"]) > 1.0 and float(bad["box"]) > 0.5
    assert float(good["centerness"]) < float(bad["centerness"])
    empty = fcos_loss(good_cls, ltrb[None], good_ctr, points, [torch.zeros(0, 4)])
    assert float(empty["box"]) == 0.0 and float(empty["classification"]) > 1.0


def test_head_and_neck_shapes_and_prior():
    neck = TopDownNeck((8, 16), 32)
    out = neck([torch.rand(2, 8, 6, 8), torch.rand(2, 16, 3, 4)])
    assert out.shape == (2, 32, 6, 8)
    cls, dist, ctr = FcosHead(32, 2, stride=16)(out)
    assert cls.shape == (2, 1, 6, 8) and dist.shape == (2, 4, 6, 8) and ctr.shape == (2, 1, 6, 8)
    assert torch.all(dist > 0)
    torch.testing.assert_close(torch.sigmoid(cls).mean(), torch.tensor(0.01), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name", TRUNKS)
def test_every_registry_backbone_is_a_trunk_with_strides_16_and_32(name: str):
    trunk = RegistryTrunk(name, pretrained=False).eval()
    assert trunk.strides == (16, 32) and len(trunk.channels) == 2
    with torch.no_grad():
        maps = trunk(trunk.normalize(torch.rand(1, 3, 64, 96)))
    assert [tuple(m.shape[1:]) for m in maps] == [(trunk.channels[0], 4, 6), (trunk.channels[1], 2, 3)]
    assert as_trunk(trunk) is trunk


def test_efficientnet_trunk_keeps_the_package_names_and_input():
    trunk = RegistryTrunk("efficientnet-lite0", pretrained=False)
    assert trunk.channels == (112, 1280)
    package = {f"net.{k}" for k in EfficientNetLite("lite0").state_dict() if not k.startswith("_fc.")}
    assert set(trunk.state_dict()) == package  # files of the former EfficientNet-only trunk load as they are
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(trunk.normalize(x), (255 * x - 127) / 128)


def test_a_backbone_without_package_weights_is_refused_as_pretrained():
    with pytest.raises(MissingDependencyError, match="ships no ImageNet weights"):
        RegistryTrunk("resnet50", pretrained=True)


def test_any_features_backbone_becomes_a_trunk():
    class Plain(nn.Module):
        out_channels, stride = 4, 8

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(x, 8).repeat(1, 2, 1, 1)[:, :4]

    trunk = as_trunk(Plain())
    assert isinstance(trunk, FeatureTrunk) and trunk.strides == (8,) and trunk.channels == (4,)
    x = torch.full((1, 3, 16, 16), 0.485)
    assert float(trunk.normalize(x)[0, 0].abs().max()) < 1e-6  # ImageNet mean -> 0
    assert trunk(x)[0].shape == (1, 4, 2, 2)
