"""Building blocks shared by the CNN models: backbones, pooling, classifier heads, multi-atrous."""
from glocal.models.layers.arcface import ArcFace
from glocal.models.layers.backbone import STAGE_CHANNELS, BackboneConfig, ResNetBackbone, SamePad2d
from glocal.models.layers.gem import GeM, average_pool, gem
from glocal.models.layers.multi_atrous import MultiAtrous

__all__ = [
    "STAGE_CHANNELS", "ArcFace", "BackboneConfig", "GeM", "MultiAtrous", "ResNetBackbone", "SamePad2d",
    "average_pool", "gem",
]
