"""The landmark detector's network in pure torch (:class:`glocal.models.detector.LandmarkDetector`).

* :mod:`~glocal.models.detection.trunk`: backbones as feature trunks (EfficientNet-Lite taps at strides 16 and
  32, or any module with ``features`` / ``out_channels`` / ``stride``) and their input normalisation.
* :mod:`~glocal.models.detection.head`: a one-level FPN neck and the FCOS head (Tian et al., ICCV 2019).
* :mod:`~glocal.models.detection.losses`: FCOS target assignment, focal, GIoU and centerness losses.
* :mod:`~glocal.models.detection.decode`: locations, box decoding, greedy non-maximum suppression.
"""
