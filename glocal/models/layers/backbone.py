"""The ResNet backbone, kept importable from here: it lives in :mod:`glocal.models.backbones.resnet`."""
from glocal.models.backbones.resnet import STAGE_CHANNELS, STAGES, BackboneConfig, ResNetBackbone, SamePad2d

__all__ = ["STAGES", "STAGE_CHANNELS", "BackboneConfig", "ResNetBackbone", "SamePad2d"]
