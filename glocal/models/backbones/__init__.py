"""Backbone networks shipped with their own weights (:mod:`glocal.models.backbones.efficientnet_lite`)."""
